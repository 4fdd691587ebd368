"""`accelerate(model)`: the model's own `fit`, `evaluate` and `predict` run fastcustom's loops.

>>> model.compile(optimizer="nadam", loss="mse", metrics=["mae"])
>>> fastcustom.accelerate(model)
>>> model.fit(x, y, epochs=20, callbacks=[keras.callbacks.EarlyStopping()])  # unchanged

The methods are set on the instance, past Keras's attribute tracking: the class,
its config and what `model.save` writes stay those of the model as it was, and
a loaded or cloned model is not accelerated unless asked. A call the compiled
loops can't run goes to Keras's own method, with a warning saying why, once.
Each method's signature and help are Keras's, plus fastcustom's keyword arguments.
"""

import inspect

import keras

from fastcustom.training import methods

_METHODS = ("fit", "evaluate", "predict")


def accelerate(model, *, jit_compile="auto", steps_per_call=None):
    """Make `model.fit`, `model.evaluate` and `model.predict` run many steps per compiled call.

    Args:
        model: a `keras.Model` (compiled before `fit` / `evaluate`, as usual;
            `predict` needs no `compile`).
        jit_compile: "auto" (XLA when Keras says the model supports it, falling
            back once to a graph if XLA can't compile the step), True or False.
            Keras's own "auto" never uses XLA on a CPU, so a model compiled with
            `jit_compile=False` looks the same there: pass False here to run
            without XLA.
        steps_per_call: steps per compiled call; default the whole epoch, or 32
            when a callback has batch-level hooks.

    Returns:
        `model`. A second call changes the settings and nothing else.
    """
    if jit_compile not in ("auto", True, False):
        raise ValueError(f"`jit_compile` must be 'auto', True or False, got {jit_compile!r}.")
    if steps_per_call is not None:
        methods._check_int(steps_per_call, "steps_per_call", 1)
    settings = {"jit_compile": jit_compile, "steps_per_call": steps_per_call}
    for name in _METHODS:
        object.__setattr__(model, name, _method(model, name, settings))
    object.__setattr__(model, "_fastcustom_accelerated", True)
    return model


def is_accelerated(model):
    """Whether `accelerate(model)` was called on this model object."""
    return "_fastcustom_accelerated" in vars(model)


def _method(model, name, settings):
    """fastcustom's `name` for `model`, with Keras's signature and help plus our keywords."""
    ours = getattr(methods, name)

    def method(*args, **kwargs):
        for key, value in settings.items():
            kwargs.setdefault(key, value)
        return ours(model, *args, **kwargs)

    keras_method = getattr(keras.Model, name)
    keras_parameters = [p for p in inspect.signature(keras_method).parameters.values()
                        if p.name != "self" and p.kind != inspect.Parameter.VAR_KEYWORD]
    extra = [p.replace(default=settings.get(p.name, p.default))
             for p in inspect.signature(ours).parameters.values()
             if p.kind == inspect.Parameter.KEYWORD_ONLY]
    method.__signature__ = inspect.Signature(keras_parameters + extra)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = (f"{inspect.getdoc(keras_method) or ''}\n\nAccelerated by fastcustom: many steps "
                      f"per compiled call (fastcustom.training.methods.{name}).\n\n"
                      f"fastcustom's own arguments:\n{_own_arguments(ours)}")
    return method


def _own_arguments(function):
    """The `Args:` paragraphs of `function`'s docstring after Keras's arguments."""
    doc = inspect.getdoc(function) or ""
    start = doc.find("Args:")
    end = doc.find("Returns:")
    return doc[start + len("Args:"):end if end >= 0 else None].rstrip()
