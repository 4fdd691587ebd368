"""`fit`, `evaluate` and `predict`: Keras's, with many steps per compiled call.

Everything but the loop is Keras's: the step (`model.train_step`, `test_step`,
`predict_step`, so the compiled loss and metrics and any override), the
callbacks (`keras.callbacks.CallbackList`, with the `History` and progress bar
`model.fit` adds), the data adapters, `validation_split`, `class_weight` and
`BackupAndRestore`'s resumed epoch. The loop is ours: the data sit on the
device (or arrive `steps_per_call` batches at a time from a stream) and one
XLA-compiled call runs a whole epoch, or `steps_per_call` steps when a
callback wants to see batches. Batch hooks run once per call with that call's
logs and first and last step, as Keras does with `steps_per_execution`;
`model.stop_training` is honoured at the next call.

What the loop cannot do (run eagerly, `shuffle="batch"`, arrays with a
`steps_per_epoch`, streams whose batches change shape past the batch axis,
several workers) goes to Keras's own method, with a warning saying why, once.
"""

import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from fastcustom.distributed.callbacks import LaunchProgress, for_this_worker, with_launch_progress
from fastcustom.training import keras_internals
from fastcustom.training.data import ArrayData, StreamData, epoch_order, window_steps
from fastcustom.training.loop import compiled_loops

# Steps per call when a callback has batch hooks and the model's `steps_per_execution` is 1.
DEFAULT_STEPS_PER_CALL = 32

# Callbacks whose batch hooks are bookkeeping (Keras's; the launcher's progress), not a
# user's: they don't need calls shorter than an epoch.
_EPOCH_LEVEL = (keras.callbacks.History, keras.callbacks.ProgbarLogger, LaunchProgress)

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


def _has_batch_hooks(callback, kind):
    """Whether `callback` does anything in its `kind` ("train", "test") batch hooks."""
    if isinstance(callback, _EPOCH_LEVEL):
        return False
    if getattr(callback, "save_freq", None) == "epoch":  # ModelCheckpoint, BackupAndRestore
        return False
    if isinstance(callback, keras.callbacks.TensorBoard):
        return callback.update_freq != "epoch" or keras_internals.profiles_batches(callback)
    hooks = [f"on_{kind}_batch_begin", f"on_{kind}_batch_end"]
    if kind == "train":
        hooks += ["on_batch_begin", "on_batch_end"]
    return not all(keras_internals.is_default(getattr(callback, hook)) for hook in hooks)


def _steps_per_call(model, steps_per_call, callbacks, kind):
    """Steps per call: as asked; else the epoch, or 32 (or `steps_per_execution`) when a
    callback has batch hooks."""
    if steps_per_call is not None:
        return _check_int(steps_per_call, "steps_per_call", 1)
    if any(_has_batch_hooks(cb, kind) for cb in callbacks.callbacks):
        return max(model.steps_per_execution, DEFAULT_STEPS_PER_CALL) \
            if model.steps_per_execution > 1 else DEFAULT_STEPS_PER_CALL
    return None


def _why_not(model, x, shuffle=False, steps=None):
    """Why the compiled loop can't run this call (a string), or None when it can."""
    if model.run_eagerly:
        return "the model runs eagerly (compile(run_eagerly=True))"
    if shuffle == "batch":
        return "shuffle='batch'"
    is_array = keras_internals.can_convert_arrays((x,))
    if keras_internals.multi_worker(model.distribute_strategy) and not is_array:
        # Keras's own fit fails under several workers (keras-team/keras#20585): no hand-back.
        raise ValueError("fastcustom trains on several workers (MultiWorkerMirroredStrategy) "
                         "from NumPy arrays or tensors, each worker reading its own rows; got "
                         f"{type(x).__name__}. Pass the arrays (the same on every worker).")
    if is_array and steps is not None:
        return "arrays with `steps` / `steps_per_epoch` (Keras continues across epochs)"
    if any(isinstance(t, (tf.SparseTensor, tf.RaggedTensor)) for t in tf.nest.flatten(x)):
        return "sparse or ragged inputs"
    return None


def _data(x, y, sample_weight, batch_size, steps, shuffle, class_weight, window, what):
    """ArrayData for arrays, StreamData for the rest; with the reason a stream can't run."""
    if batch_size is not None:
        _check_int(batch_size, "validation_batch_size" if what == "validation data"
                   else "batch_size", 1)
    if keras_internals.can_convert_arrays((x, y, sample_weight)):
        data = ArrayData(x, y, sample_weight, batch_size, class_weight, what)
        if data.num_samples == 0:
            raise ValueError(f"The {what} is empty: it has 0 samples.")
        return data
    return StreamData(x, y, sample_weight, batch_size, steps, shuffle, class_weight,
                      window or DEFAULT_STEPS_PER_CALL)


def _chunks(source, rng, shuffle, strategy, steps_per_call):
    """One epoch of `source` as compiled calls: (full, start, stop, tail)."""
    if isinstance(source, ArrayData):
        return source.chunks(epoch_order(rng, source.num_samples, shuffle), strategy,
                             steps_per_call)
    return source.epoch_chunks()


def _run_chunks(run, chunks, callbacks, kind, stop_attribute, model):
    """Each chunk through `run`, with the batch hooks Keras calls per execution."""
    logs, done = {}, 0
    for full, start, stop, tail in chunks:
        steps = stop - start + (tail is not None)
        getattr(callbacks, f"on_{kind}_batch_begin")(done)
        logs = run(full, start, stop, tail)
        done += steps
        getattr(callbacks, f"on_{kind}_batch_end")(done - 1, logs)
        if getattr(model, stop_attribute, False):
            break
    return logs


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
            (`np.random.default_rng(seed).permutation(n)` per epoch).
        steps_per_call: steps per compiled call. Default: the whole epoch, or
            32 when a callback has batch-level hooks (the model's
            `steps_per_execution` when larger).
        jit_compile: "auto" (XLA when every layer supports it, falling back
            once to a graph if XLA can't compile the step), True or False.

    Returns:
        The `keras.callbacks.History`, as `model.fit` returns it.

    >>> history = fastcustom.fit(model, x, y, epochs=10)          # compiled model
    >>> history = fastcustom.fit(model, x, y, loss=fastcustom.HuberLoss(), optimizer="nadam",
    ...                          metrics=[fastcustom.HuberMetric()], epochs=10, seed=0)
    """
    _compile_if_asked(model, loss, optimizer, metrics)
    keras_internals.assert_compiled(model, "fit")
    epochs = _check_int(epochs, "epochs", 0)
    reason = _why_not(model, x, shuffle, steps_per_epoch)
    if reason is None and validation_data is not None:
        val_x = keras_internals.data_adapter_utils.unpack_x_y_sample_weight(validation_data)[0]
        reason = _why_not(model, val_x, steps=validation_steps)
    if reason is not None:
        return _keras_fit(model, reason, locals())
    if validation_data is not None or validation_split:
        keras_internals.should_eval(model, 0, validation_freq)   # Keras's error, before training
    if validation_split and validation_data is None:
        (x, y, sample_weight), validation_data = keras_internals.array_slicing. \
            train_validation_split((x, y, sample_weight), validation_split=validation_split)

    strategy = model.distribute_strategy
    with strategy.scope():
        train = _data(x, y, sample_weight, batch_size, steps_per_epoch, shuffle, class_weight,
                      steps_per_call, "training data")
    if getattr(train, "why_not", None):
        return _keras_fit(model, f"a stream where {train.why_not}", locals())
    val = None
    if validation_data is not None:
        val_x, val_y, val_w = keras_internals.data_adapter_utils.unpack_x_y_sample_weight(
            validation_data)
        with strategy.scope():
            val = _data(val_x, val_y, val_w, validation_batch_size or batch_size,
                        validation_steps, False, None, steps_per_call, "validation data")
        if getattr(val, "why_not", None):
            return _keras_fit(model, f"validation data where {val.why_not}", locals())

    _build(model, train)
    loops = compiled_loops(model, jit_compile)
    if keras_internals.multi_worker(strategy):   # several workers: only the chief writes
        callbacks, verbose = for_this_worker(callbacks, verbose, strategy)
    callbacks = with_launch_progress(callbacks)   # under `fastcustom launch`: its --timeout
    callbacks = _callback_list(model, callbacks, verbose, train.steps, add_history=True,
                               epochs=epochs)
    per_call = _steps_per_call(model, steps_per_call, callbacks, "train")
    rng = np.random.default_rng(seed)
    model.stop_training = False
    callbacks.on_train_begin()
    training_logs, logs = None, {}
    first_epoch = keras_internals.initial_epoch(model, initial_epoch)
    loops.plan(None if train.steps is None else train.steps * max(epochs - first_epoch, 0))
    if isinstance(train, ArrayData) and shuffle:   # a resumed fit shuffles as an uninterrupted one
        for _ in range(first_epoch):
            epoch_order(rng, train.num_samples, shuffle)
    for epoch in range(first_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        if isinstance(train, ArrayData) and per_call is None and loops.replicas == 1:
            callbacks.on_train_batch_begin(0)
            logs = loops.train_epoch(train.data, epoch_order(rng, train.num_samples, shuffle),
                                     train.batch_size)
            callbacks.on_train_batch_end(train.steps - 1, logs)
        else:
            chunks = _chunks(train, rng, shuffle, strategy, per_call)
            logs = _run_chunks(loops.train, chunks, callbacks, "train", "stop_training", model)
            if getattr(train, "ran_out", False):
                model.stop_training = True
        epoch_logs = dict(logs)
        if val is not None and keras_internals.should_eval(model, epoch, validation_freq):
            val_logs = _evaluate(model, loops, val, callbacks, per_call)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        training_logs = epoch_logs
        if model.stop_training:
            break
    if isinstance(model.optimizer, keras.optimizers.Optimizer) and epochs > 0:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callbacks.on_train_end(logs=training_logs)
    model.history.params["compiled_with"] = loops.compiled_with
    return model.history


def evaluate(model, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
             steps=None, callbacks=None, return_dict=False, *, steps_per_call=None,
             jit_compile="auto"):
    """`model.evaluate(...)` with many steps per compiled call; the same arguments and result."""
    keras_internals.assert_compiled(model, "evaluate")
    reason = _why_not(model, x, steps=steps)
    if reason is None:
        with model.distribute_strategy.scope():
            data = _data(x, y, sample_weight, batch_size, steps, False, None, steps_per_call,
                         "data")
        reason = getattr(data, "why_not", None)
    if reason is not None:
        _say_once(f"fastcustom: evaluate runs as Keras's own: {reason}.")
        return type(model).evaluate(model, x, y, batch_size=batch_size, verbose=verbose,
                                    sample_weight=sample_weight, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict)
    _build(model, data)
    loops = compiled_loops(model, jit_compile)
    callbacks = _callback_list(model, callbacks, verbose, data.steps)
    logs = _evaluate(model, loops, data, callbacks, steps_per_call)
    return logs if return_dict else keras_internals.metrics_in_order(model, logs)


def predict(model, x, batch_size=None, verbose="auto", steps=None, callbacks=None, *,
            steps_per_call=None, jit_compile="auto"):
    """`model.predict(...)` in as few compiled calls as fit: NumPy arrays, as Keras returns."""
    reason = _why_not(model, x, steps=steps)
    if reason is None:
        with model.distribute_strategy.scope():
            data = _data(x, None, None, batch_size, steps, False, None, steps_per_call, "x")
        reason = getattr(data, "why_not", None)
    if reason is not None:
        _say_once(f"fastcustom: predict runs as Keras's own: {reason}.")
        return type(model).predict(model, x, batch_size=batch_size, verbose=verbose,
                                   steps=steps, callbacks=callbacks)
    _build(model, data, compiled=False)
    loops = compiled_loops(model, jit_compile)
    callbacks = _callback_list(model, callbacks, verbose, data.steps)
    per_call = _steps_per_call(model, steps_per_call, callbacks, "predict")
    model.stop_predicting = False
    callbacks.on_predict_begin()
    outputs, done = [], 0
    chunks = _chunks(data, None, False, model.distribute_strategy, per_call)
    for full, start, stop, tail in chunks:
        callbacks.on_predict_batch_begin(done)
        part = None if start == stop else (
            full if (start, stop) == (0, window_steps(full))
            else tf.nest.map_structure(lambda t: t[start:stop], full))
        batch_outputs = loops.predict(part, tail)
        outputs.append(batch_outputs)
        done += stop - start + (tail is not None)
        callbacks.on_predict_batch_end(done - 1, {"outputs": batch_outputs})
        if model.stop_predicting:
            break
    callbacks.on_predict_end()
    return tf.nest.map_structure(lambda *parts: np.concatenate([np.asarray(p) for p in parts]),
                                 *outputs)


def _evaluate(model, loops, data, callbacks, steps_per_call):
    """The test loop over `data` with the `on_test_*` hooks; the logs as Python numbers."""
    per_call = _steps_per_call(model, steps_per_call, callbacks, "test")
    model.stop_evaluating = False
    callbacks.on_test_begin()
    model.reset_metrics()
    chunks = _chunks(data, None, False, model.distribute_strategy, per_call)
    logs = _run_chunks(loops.test, chunks, callbacks, "test", "stop_evaluating", model)
    logs = keras_internals.pythonify_logs(logs)
    callbacks.on_test_end(logs)
    return logs


def _callback_list(model, callbacks, verbose, steps, add_history=False, epochs=1):
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    return keras.callbacks.CallbackList(callbacks, add_history=add_history,
                                        add_progbar=verbose != 0, verbose=verbose,
                                        epochs=epochs, steps=steps, model=model)


def _first_batch(data):
    """One batch of `data`, to build the model from."""
    if isinstance(data, ArrayData):
        return tf.nest.map_structure(lambda t: None if t is None else t[:data.batch_size],
                                     data.data)
    return next(iter(data.adapter.get_tf_dataset()))


def _build(model, data, compiled=True):
    """Build the model (and its compiled loss, metrics, optimizer) from a batch, as fit does."""
    if compiled:
        keras_internals.symbolic_build(model, _first_batch(data))
    elif not model.built:
        x = keras_internals.data_adapter_utils.unpack_x_y_sample_weight(_first_batch(data))[0]
        model(x, training=False)


def _keras_fit(model, reason, arguments):
    """Keras's own `fit` for a call the compiled loop can't run, saying why once."""
    _say_once(f"fastcustom: fit runs as Keras's own model.fit: {reason}.")
    keras_arguments = {name: arguments[name] for name in (
        "x", "y", "batch_size", "epochs", "verbose", "callbacks", "validation_split",
        "validation_data", "shuffle", "class_weight", "sample_weight", "initial_epoch",
        "steps_per_epoch", "validation_steps", "validation_batch_size", "validation_freq")}
    return type(model).fit(model, **keras_arguments)
