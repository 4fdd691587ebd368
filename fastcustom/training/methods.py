"""`fit`, `evaluate` and `predict`: Keras's, with many steps per compiled call.

Everything but the loop is Keras's: the step (`model.train_step`, `test_step`,
`predict_step`, so the compiled loss and metrics and any override), the callbacks
(`keras.callbacks.CallbackList`, with the `History` and progress bar `model.fit`
adds), the data adapters and their epoch bookkeeping, `validation_split`,
`class_weight` and `BackupAndRestore`'s resumed epoch. The loop is ours: the data
sit on the device (or arrive a window of batches at a time from a stream, read as
Keras reads it) and one compiled call runs a whole epoch (or window), or
`steps_per_call` steps when a callback wants to see batches. Batch hooks run once per
call with that call's logs and first and last step, as Keras does with
`steps_per_execution`; `model.stop_training` is honoured at the next call.

Each method first decides whether the loop can run the call (else Keras's own
method runs it, with a warning saying why, once: eager models, `shuffle="batch"`,
arrays with `steps_per_epoch`, streams whose batches change shape past the batch
axis or under several replicas, sparse or ragged inputs), then prepares the data
and callbacks, then runs the epochs.
"""

import contextlib
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from fastcustom.callbacks import StepMarkers
from fastcustom.distributed.callbacks import LaunchProgress, for_this_worker, with_launch_progress
from fastcustom.training import keras_internals
from fastcustom.training.loop import compiled_loops
from fastcustom.training import profiling
from fastcustom.training.sources import ArraySource, StreamSource, epoch_order, shuffle_rng

# Steps per call when a callback has batch hooks and the model's `steps_per_execution` is 1.
DEFAULT_STEPS_PER_CALL = 32

# Callbacks whose batch hooks are bookkeeping (Keras's; the launcher's progress), not a
# user's: they don't need calls shorter than an epoch.
_EPOCH_LEVEL = (keras.callbacks.History, keras.callbacks.ProgbarLogger, LaunchProgress,
                StepMarkers)

_said = set()


def _say_once(message):
    if message not in _said:
        _said.add(message)
        warnings.warn(message, UserWarning, stacklevel=4)


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _compile_if_asked(model, loss, optimizer, metrics):
    """`model.compile` with what `fit` was given, unless it compiled with the same objects.

    Given arguments mean what they mean in `model.compile`; ones left out keep
    what the model was compiled with (optimizer "rmsprop" and no loss if never).
    """
    if loss is None and optimizer is None and metrics is None:
        return
    names = [m for m in (metrics if isinstance(metrics, (list, tuple)) else [metrics])
             if isinstance(m, str)]
    if len(set(names)) < len(names):
        raise ValueError(f"`metrics` names must be unique, got {metrics}.")
    key = tuple(x if isinstance(x, str) else id(x) for x in
                (loss, optimizer, *(metrics if isinstance(metrics, (list, tuple)) else [metrics])))
    compiled = getattr(model, "compiled", False)
    current = id(model.optimizer) if compiled else None
    if getattr(model, "_fastcustom_compiled_for", None) == (key, current):
        return
    if optimizer is None:
        optimizer = model.optimizer if compiled else "rmsprop"
    if loss is None and compiled:
        loss = model.loss
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    object.__setattr__(model, "_fastcustom_compiled_for", (key, id(model.optimizer)))


# -- deciding: run here, or hand back to Keras ------------------------------------------
def _is_arrays(*data):
    return keras_internals.can_convert_arrays(data)


def _why_not(model, x, shuffle=False, steps=None):
    """Why the compiled loop can't run a call on `x` (a string), or None when it can."""
    if model.run_eagerly:
        return "the model runs eagerly (compile(run_eagerly=True))"
    if shuffle == "batch":
        return "shuffle='batch'"
    is_array = _is_arrays(x)
    if keras_internals.multi_worker(model.distribute_strategy) and not is_array:
        # Keras's own fit fails under several workers (keras-team/keras#20585): no hand-back.
        raise ValueError("fastcustom trains on several workers (MultiWorkerMirroredStrategy) "
                         "from NumPy arrays or tensors, each worker reading its own rows; got "
                         f"{type(x).__name__}. Pass the arrays (the same on every worker).")
    if is_array and steps is not None:
        return "arrays with `steps` / `steps_per_epoch` (Keras continues across epochs)"
    if not is_array and model.distribute_strategy.num_replicas_in_sync > 1:
        return "a stream under several replicas (Keras splits its batches)"
    if any(isinstance(t, (tf.SparseTensor, tf.RaggedTensor)) for t in tf.nest.flatten(x)):
        return "sparse or ragged inputs"
    return None


def _fit_hand_back(model, arguments):
    """Why `fit` goes to Keras's own (a string), or None."""
    reason = _why_not(model, arguments["x"], arguments["shuffle"], arguments["steps_per_epoch"])
    if reason is None and arguments["validation_data"] is not None:
        val_x = keras_internals.unpack_x_y_sample_weight(arguments["validation_data"])[0]
        reason = _why_not(model, val_x, steps=arguments["validation_steps"])
    return reason


def _keras_fit(model, reason, arguments):
    """Keras's own `fit` for a call the compiled loop can't run, saying why once."""
    _say_once(f"fastcustom: fit runs as Keras's own model.fit: {reason}.")
    return type(model).fit(model, **arguments)


# -- preparing: callbacks, steps per call, data -----------------------------------------
def _has_batch_hooks(callback, kind):
    """Whether `callback` does anything in its `kind` ("train", "test", "predict") batch hooks."""
    if isinstance(callback, _EPOCH_LEVEL):
        return False
    if getattr(callback, "save_freq", None) == "epoch":  # ModelCheckpoint, BackupAndRestore
        return False
    if isinstance(callback, keras.callbacks.TensorBoard):   # its profile: StepMarkers
        return kind == "train" and callback.update_freq != "epoch"
    hooks = [f"on_{kind}_batch_begin", f"on_{kind}_batch_end"]
    if kind == "train":
        hooks += ["on_batch_begin", "on_batch_end"]
    return not all(keras_internals.is_default(getattr(callback, hook)) for hook in hooks)


def _callback_objects(callbacks):
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks.callbacks
    return list(callbacks or [])


def _steps_per_call(model, steps_per_call, callbacks, kind):
    """Steps per call: as asked; else 32 (or `steps_per_execution`) when a callback has
    `kind` batch hooks, or None: a call per epoch of arrays, per window of a stream
    (`sources.WINDOW_BYTES`)."""
    if steps_per_call is not None:
        return _check_int(steps_per_call, "steps_per_call", 1)
    if any(_has_batch_hooks(cb, kind) for cb in _callback_objects(callbacks)):
        return max(model.steps_per_execution, DEFAULT_STEPS_PER_CALL)
    return None


def _source(model, x, y, sample_weight, batch_size, steps, shuffle, class_weight, per_call,
            what):
    """ArraySource for arrays, StreamSource (read `per_call` batches at a time) for the rest."""
    if batch_size is not None:
        _check_int(batch_size, "validation_batch_size" if what == "validation data"
                   else "batch_size", 1)
    if _is_arrays(x, y, sample_weight):
        with model.distribute_strategy.scope():
            return ArraySource(x, y, sample_weight, batch_size, class_weight, what,
                               model.distribute_strategy)
    return StreamSource(x, y, sample_weight, batch_size, steps, shuffle, class_weight, per_call)


def _callback_list(model, callbacks, verbose, steps, add_history=False, epochs=1):
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    return keras.callbacks.CallbackList(callbacks, add_history=add_history,
                                        add_progbar=verbose != 0, verbose=verbose,
                                        epochs=epochs, steps=steps, model=model)


def _build(model, source, compiled=True):
    """Build the model (and its compiled loss, metrics, optimizer) from the first batch of
    `source` (a `Call` or an `ArraySource`), as fit does: Keras's symbolic build reads
    only its shapes and dtypes (`first_spec`, so no op runs when all is built); a model
    never compiled is called on the batch itself."""
    if compiled:
        keras_internals.symbolic_build(model, source.first_spec())
    elif not model.built:
        model(keras_internals.unpack_x_y_sample_weight(source.first_batch())[0], training=False)


# -- running: the epochs ------------------------------------------------------------------
def _epoch(model, loops_of, kind, source, calls, callbacks, stop_attribute, build=None,
           markers=None):
    """One epoch of `kind` calls with the batch hooks Keras calls per execution: the
    last call's logs (train, test) or the outputs of each call (predict). `build(call)`
    runs before the first call (a stream's model is built from the first batch read,
    as Keras builds it when its step is traced); `loops_of()`
    gives the model's compiled loops, once it is built. With `markers`
    (`profiling.StepMarkers`, training) the calls are cut where a profile is taken and
    each step there runs in the profiler's step marker."""
    logs, outputs, loops = {}, [], None
    begin = getattr(callbacks, f"on_{kind}_batch_begin")
    end = getattr(callbacks, f"on_{kind}_batch_end")
    marked = markers.calls(calls) if markers is not None else ((call, None) for call in calls)
    with source.catch_stop_iteration():
        for call, step_num in marked:
            if build is not None:
                build(call)
                build = None
            loops = loops or loops_of()
            if markers is not None:
                markers.before_call(call)
            begin(call.step)
            with markers.marker(step_num) if step_num is not None else contextlib.nullcontext():
                result = loops.run(kind, call)
            if markers is not None:
                markers.after_call(call)
            if kind == "predict":
                outputs.append(result)
                end(call.step + call.steps - 1, {"outputs": result})
            else:
                logs = result
                end(call.step + call.steps - 1, logs)
            if getattr(model, stop_attribute, False):
                break
        if getattr(source, "ran_out", False):
            raise StopIteration
    return outputs if kind == "predict" else logs


def _builder(model, source, compiled=True):
    """What builds the model for `source`: now for arrays (None returned), else a function
    of the first call read."""
    def build(first):
        _build(model, first, compiled)

    if isinstance(source, ArraySource):
        build(source)
        return None
    return build


def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
        validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
        sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
        validation_batch_size=None, validation_freq=1, *, loss=None, optimizer=None,
        metrics=None, seed=None, steps_per_call=None, jit_compile="auto"):
    """Train `model` as `model.fit(...)` does, with many steps per compiled call.

    Every argument before `*` is `keras.Model.fit`'s, with its meaning. Then:

    Args:
        loss, optimizer, metrics: when given, `model.compile(...)` with them
            (left out: what the model was compiled with); when not, the
            model's compiled loss (per output, `loss_weights`), optimizer
            (loss-scaled under mixed precision), `metrics` and
            `weighted_metrics`.
        seed: makes the shuffling of array data reproducible
            (`np.random.default_rng(seed).permutation(n)` per epoch); without it
            the shuffling draws from Python's `random`, which
            `keras.utils.set_random_seed` seeds.
        steps_per_call: steps per compiled call. Default: the whole epoch, or
            32 when a callback has batch-level hooks (the model's
            `steps_per_execution` when larger).
        jit_compile: "auto" (XLA when Keras says the model supports it, falling
            back once to a graph if XLA can't compile the step), True or False.

    Returns:
        The `keras.callbacks.History`, as `model.fit` returns it.

    >>> history = fastcustom.fit(model, x, y, epochs=10)          # compiled model
    >>> history = fastcustom.fit(model, x, y, loss=fastcustom.HuberLoss(), optimizer="nadam",
    ...                          metrics=[fastcustom.HuberMetric()], epochs=10, seed=0)
    """
    arguments = dict(x=x, y=y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                     callbacks=callbacks, validation_split=validation_split,
                     validation_data=validation_data, shuffle=shuffle,
                     class_weight=class_weight, sample_weight=sample_weight,
                     initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                     validation_steps=validation_steps,
                     validation_batch_size=validation_batch_size,
                     validation_freq=validation_freq)
    _compile_if_asked(model, loss, optimizer, metrics)
    keras_internals.assert_compiled(model, "fit")
    epochs = _check_int(epochs, "epochs", 0)
    reason = _fit_hand_back(model, arguments)
    if reason is not None:
        return _keras_fit(model, reason, arguments)
    if validation_data is not None or validation_split:
        keras_internals.should_eval(model, 0, validation_freq)   # Keras's error, before training
    if validation_split and validation_data is None:
        (x, y, sample_weight), validation_data = keras_internals.train_validation_split(
            (x, y, sample_weight), validation_split)

    strategy = model.distribute_strategy
    if keras_internals.multi_worker(strategy):   # several workers: only the chief writes
        callbacks, verbose = for_this_worker(callbacks, verbose, strategy)
    callbacks = with_launch_progress(callbacks)   # under `fastcustom launch`: its --timeout
    per_call = {kind: _steps_per_call(model, steps_per_call, callbacks, kind)
                for kind in ("train", "test")}
    train = _source(model, x, y, sample_weight, batch_size, steps_per_epoch, shuffle,
                    class_weight, per_call["train"], "training data")
    if getattr(train, "why_not", None):
        return _keras_fit(model, f"a stream where {train.why_not}", arguments)
    validation = _Validation(model, validation_data, validation_batch_size or batch_size,
                             validation_steps, per_call["test"])
    build = _builder(model, train)
    train.reset()
    callbacks = _callback_list(model, callbacks, verbose, train.steps, add_history=True,
                               epochs=epochs)
    markers = profiling.StepMarkers(callbacks.callbacks)
    shuffled = isinstance(train, ArraySource) and shuffle
    rng = shuffle_rng(seed) if shuffled else None
    model.stop_training = False
    callbacks.on_train_begin()
    training_logs, logs = None, {}
    first_epoch = keras_internals.initial_epoch(model, initial_epoch)
    planned = None if train.steps is None else train.steps * max(epochs - first_epoch, 0)

    planned_for = []

    def loops_of():
        """The model's loops (once it is built), planned for this fit once."""
        loops = compiled_loops(model, jit_compile)
        if loops not in planned_for:
            loops.plan(planned)
            planned_for.append(loops)
        return loops

    for _ in range(first_epoch if shuffled else 0):   # a resumed fit shuffles as a whole one
        epoch_order(rng, train.num_samples, shuffle)
    for epoch in range(first_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        calls = train.calls(epoch_order(rng, train.num_samples, shuffle) if shuffled else None,
                            per_call["train"]) if isinstance(train, ArraySource) \
            else train.calls()
        logs = _epoch(model, loops_of, "train", train, calls, callbacks, "stop_training", build,
                      markers)
        build = None
        epoch_logs = dict(keras_internals.metrics_result_or_logs(model, logs))
        if validation.data is not None and keras_internals.should_eval(model, epoch,
                                                                      validation_freq):
            val_logs = validation.run(loops_of, callbacks)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        training_logs = epoch_logs
        if model.stop_training:
            break
    if isinstance(model.optimizer, keras.optimizers.Optimizer) and epochs > 0:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callbacks.on_train_end(logs=training_logs)
    markers.end()
    model.history.params["compiled_with"] = loops_of().compiled_with
    return model.history


class _Validation:
    """`fit`'s validation data: made on first use, as Keras makes its evaluation iterator,
    and kept for the fit."""

    def __init__(self, model, data, batch_size, steps, per_call):
        self.model, self.data, self.batch_size = model, data, batch_size
        self.steps, self.per_call = steps, per_call
        self.source = None
        if data is not None and _is_arrays(data):   # arrays: checked before training
            self.source = self._make()

    def _make(self):
        x, y, sample_weight = keras_internals.unpack_x_y_sample_weight(self.data)
        return _source(self.model, x, y, sample_weight, self.batch_size, self.steps, False,
                       None, self.per_call, "validation data")

    def run(self, loops_of, callbacks):
        if self.source is None:
            self.source = self._make()
        if getattr(self.source, "why_not", None):
            _say_once(f"fastcustom: validation runs as Keras's own evaluate: a stream where "
                      f"{self.source.why_not}.")
            x, y, sample_weight = keras_internals.unpack_x_y_sample_weight(self.data)
            return type(self.model).evaluate(self.model, x, y, batch_size=self.batch_size,
                                             sample_weight=sample_weight, steps=self.steps,
                                             callbacks=callbacks, return_dict=True)
        return _evaluate(self.model, loops_of, self.source, callbacks, self.per_call)


def _evaluate(model, loops_of, source, callbacks, per_call, build=None):
    """The test loop over `source` with the `on_test_*` hooks; the logs as Python numbers."""
    source.reset()
    model.stop_evaluating = False
    callbacks.on_test_begin()
    model.reset_metrics()
    calls = source.calls(None, per_call) if isinstance(source, ArraySource) else source.calls()
    logs = _epoch(model, loops_of, "test", source, calls, callbacks, "stop_evaluating", build)
    logs = keras_internals.pythonify_logs(keras_internals.metrics_result_or_logs(model, logs))
    callbacks.on_test_end(logs)
    return logs


def evaluate(model, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
             steps=None, callbacks=None, return_dict=False, *, steps_per_call=None,
             jit_compile="auto"):
    """`model.evaluate(...)` with many steps per compiled call; the same arguments and result.

    Args:
        steps_per_call, jit_compile: as in `fastcustom.fit`.
    """
    keras_internals.assert_compiled(model, "evaluate")
    reason = _why_not(model, x, steps=steps)
    source = None
    per_call = _steps_per_call(model, steps_per_call, callbacks, "test")
    if reason is None:
        source = _source(model, x, y, sample_weight, batch_size, steps, False, None, per_call,
                         "data")
        reason = getattr(source, "why_not", None)
    if reason is not None:
        _say_once(f"fastcustom: evaluate runs as Keras's own: {reason}.")
        return type(model).evaluate(model, x, y, batch_size=batch_size, verbose=verbose,
                                    sample_weight=sample_weight, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict)
    build = _builder(model, source)
    callbacks = _callback_list(model, callbacks, verbose, source.steps)
    logs = _evaluate(model, lambda: compiled_loops(model, jit_compile), source, callbacks,
                     per_call, build)
    return logs if return_dict else keras_internals.metrics_in_order(model, logs)


def predict(model, x, batch_size=None, verbose="auto", steps=None, callbacks=None, *,
            steps_per_call=None, jit_compile="auto"):
    """`model.predict(...)` in as few compiled calls as fit: NumPy arrays, as Keras returns;
    an uncompiled model predicts too, as in Keras.

    Args:
        steps_per_call, jit_compile: as in `fastcustom.fit`.
    """
    reason = _why_not(model, x, steps=steps)
    source = None
    per_call = _steps_per_call(model, steps_per_call, callbacks, "predict")
    if reason is None:
        source = _source(model, x, None, None, batch_size, steps, False, None, per_call, "x")
        reason = getattr(source, "why_not", None)
    if reason is not None:
        _say_once(f"fastcustom: predict runs as Keras's own: {reason}.")
        return type(model).predict(model, x, batch_size=batch_size, verbose=verbose,
                                   steps=steps, callbacks=callbacks)
    build = _builder(model, source, compiled=False)
    callbacks = _callback_list(model, callbacks, verbose, source.steps)
    model.stop_predicting = False
    callbacks.on_predict_begin()
    calls = source.calls(None, per_call) if isinstance(source, ArraySource) else source.calls()
    outputs = _epoch(model, lambda: compiled_loops(model, jit_compile), "predict", source,
                     calls, callbacks, "stop_predicting", build)
    callbacks.on_predict_end()
    if not outputs:
        raise ValueError("Unexpected result of `predict_function` (Empty batch_outputs). "
                         "Please use `Model.compile(..., run_eagerly=True)`, or "
                         "`tf.config.run_functions_eagerly(True)` for more information of "
                         "where went wrong, or file a issue/bug to `tf.keras`.")
    return tf.nest.map_structure(lambda *parts: np.concatenate([np.asarray(p) for p in parts]),
                                 *outputs)
