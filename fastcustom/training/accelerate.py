"""`accelerate(model)`: the model's own `fit`, `evaluate` and `predict` run fastcustom's loops.

>>> model.compile(optimizer="nadam", loss="mse", metrics=["mae"])
>>> fastcustom.accelerate(model)
>>> model.fit(x, y, epochs=20, callbacks=[keras.callbacks.EarlyStopping()])  # unchanged

The methods are set on the instance, past Keras's attribute tracking: the class,
its config and what `model.save` writes stay those of the model as it was, and
a loaded or cloned model is not accelerated unless asked. A call the compiled
loops can't run goes to Keras's own method, with a warning saying why, once.
"""

import functools

from fastcustom.training import methods

_METHODS = ("fit", "evaluate", "predict")


def accelerate(model, *, jit_compile="auto", steps_per_call=None):
    """Make `model.fit`, `model.evaluate` and `model.predict` run many steps per compiled call.

    Args:
        model: a `keras.Model` (compiled before `fit` / `evaluate`, as usual).
        jit_compile: "auto" (XLA when every layer supports it, falling back once
            to a graph if XLA can't compile the step), True or False.
        steps_per_call: steps per compiled call; default the whole epoch, or 32
            when a callback has batch-level hooks.

    Returns:
        `model`. A second call changes the settings and nothing else.
    """
    for name in _METHODS:
        method = functools.partial(getattr(methods, name), model, jit_compile=jit_compile,
                                   steps_per_call=steps_per_call)
        functools.update_wrapper(method, getattr(methods, name))
        object.__setattr__(model, name, method)
    object.__setattr__(model, "_fastcustom_accelerated", True)
    return model


def is_accelerated(model):
    """Whether `accelerate(model)` was called on this model object."""
    return "_fastcustom_accelerated" in vars(model)
