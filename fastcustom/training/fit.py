"""`fit`: train a Keras model with many optimizer steps per compiled call.

The same training as `model.compile(...); model.fit(...)` (the loss plus
`model.losses`, layers called with `training=True`, metrics reset per epoch,
the epoch-mean loss weighted by batch size, a smaller last batch), but each
call of the compiled function runs a whole epoch (or `steps_per_call` steps)
in an XLA-compiled `tf.while_loop` over batches already on the device, instead
of one step per call. For the small models of the notes, where a step's
arithmetic takes microseconds, that overhead is most of the time.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from fastcustom.training import data
from fastcustom.training.components import (as_list, resolve_loss, resolve_metrics,
                                             resolve_optimizer)
from fastcustom.training.loop import TrainingLoop


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _build(model, x, batch_size):
    """Build `model` by calling it on the first batch of x; ValueError if that fails."""
    if model.built:
        return
    sample = data.first_rows(x, batch_size)
    shapes = [tuple(t.shape) for t in tf.nest.flatten(x)]
    try:
        model(sample, training=False)
    except Exception as err:  # noqa: BLE001 -- any failure here means "cannot build from x"
        raise ValueError(f"The model is not built and could not be built from x "
                         f"(shapes {shapes}): {type(err).__name__}: {err}") from err


def _identity(obj):
    """What makes a `fit` argument "the same" next time: a name by value, an object by id."""
    return obj if isinstance(obj, str) else id(obj)


def _training_loop(model, loss, optimizer, metrics, strategy, jit_compile):
    """The model's previous `TrainingLoop` if this `fit` gets the same arguments, else a new one.

    Like the train function `model.fit` keeps, this spares a second call with
    the same loss, optimizer and metrics the tracing and XLA compilation. A
    name (or config) for the optimizer means a new optimizer, so a new loop. The cache is
    one entry on the model, set past Keras's attribute tracking.
    """
    metrics = as_list(metrics)
    key = (_identity(loss), id(optimizer), tuple(_identity(m) for m in metrics),
           jit_compile, id(strategy), tuple(id(v) for v in model.trainable_variables))
    cached = getattr(model, "_fastcustom_training_loop", None)
    if (cached is not None and cached[0] == key
            and isinstance(optimizer, keras.optimizers.Optimizer)):
        return cached[1]
    optimizer = resolve_optimizer(optimizer)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    loop = TrainingLoop(model, resolve_loss(loss), optimizer, resolve_metrics(metrics),
                        strategy, jit_compile)
    object.__setattr__(model, "_fastcustom_training_loop", (key, loop))
    return loop


def fit(model, x, y, *, loss, optimizer, metrics=(), batch_size=32, epochs=1,
        validation_data=None, shuffle=True, seed=None, steps_per_call=None, verbose=1,
        jit_compile="auto"):
    """Train `model` on (x, y) like `model.fit`, with many steps per compiled call.

    Args:
        model: a `keras.Model` (built, or buildable by calling it on x).
        x, y: arrays or tensors (or nests of them) with the samples on axis 0.
        loss: a `keras.losses.Loss`, a per-sample function or a name ("mse").
        optimizer: a `keras.optimizers.Optimizer` or a name ("nadam").
        metrics: metric objects, functions or names, logged under the names
            `model.fit` uses.
        batch_size: samples per step; the last step of an epoch takes the rest.
        epochs: passes over the data (0 trains nothing).
        validation_data: `(x_val, y_val)`, evaluated after each epoch.
        shuffle: a new permutation each epoch, drawn with
            `np.random.default_rng(seed).permutation(n)` (one generator per run).
        seed: makes the shuffling reproducible.
        steps_per_call: optimizer steps per compiled call; None: a whole epoch.
        verbose: 0 silent, 1 a progress bar per epoch (updated once per call),
            2 one line per epoch.
        jit_compile: "auto" (XLA, falling back to a plain graph with a warning
            if XLA cannot compile the model), True or False.

    Returns:
        A `keras.callbacks.History` whose `.history` has `loss`, one entry per
        metric name, and `val_loss` / `val_<name>` with validation data;
        `.params["compiled_with"]` is "xla" or "graph".

    Under a `tf.distribute` strategy (the model's variables created in its
    scope) each step runs on all replicas with `strategy.run`.

    Example:

    >>> import keras, numpy as np, fastcustom
    >>> x = np.random.default_rng(0).normal(size=(1000, 8)).astype("float32")
    >>> y = x.sum(axis=1, keepdims=True)
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(30, "selu"),
    ...                           keras.layers.Dense(1)])
    >>> history = fastcustom.fit(model, x, y, loss=fastcustom.HuberLoss(), optimizer="nadam",
    ...                          metrics=[fastcustom.HuberMetric()], epochs=3, seed=0, verbose=0)
    >>> sorted(history.history), len(history.history["loss"])
    (['huber_metric', 'loss'], 3)
    """
    batch_size = _check_int(batch_size, "batch_size", 1)
    epochs = _check_int(epochs, "epochs", 0)
    if steps_per_call is not None:
        steps_per_call = _check_int(steps_per_call, "steps_per_call", 1)
    if verbose == "auto":
        verbose = 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 0, 1, 2 or 'auto', got {verbose!r}.")
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()

    with strategy.scope():
        train = data.FitData(x, y, batch_size, strategy)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("`validation_data` must be a tuple (x_val, y_val).")
            val = data.FitData(*validation_data, batch_size, strategy, validation=True)
        _build(model, train.x, batch_size)
        loop = _training_loop(model, loss, optimizer, metrics, strategy, jit_compile)

    history = keras.callbacks.History()
    history.set_model(model)
    history.on_train_begin()
    rng = np.random.default_rng(seed)
    log_names = ["loss", *(m.name for m in loop.metrics)]
    log_names += [f"val_{name}" for name in log_names] if val is not None else []
    for epoch in range(epochs):
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs}")
        progbar = keras.utils.Progbar(train.steps, verbose=verbose, stateful_metrics=log_names)
        order = data.epoch_order(rng, train.num_samples, shuffle)
        logs = _train_epoch(loop, train, order, steps_per_call, progbar)
        if val is not None:
            logs.update({f"val_{name}": value for name, value in _evaluate(loop, val).items()})
        progbar.update(train.steps, list(logs.items()), finalize=True)
        history.on_epoch_end(epoch, logs)
    history.set_params({"verbose": verbose, "epochs": epochs, "steps": train.steps,
                        "compiled_with": loop.compiled_with})
    return history


def _train_epoch(loop, train, order, steps_per_call, progbar):
    """One epoch in `order`, `steps_per_call` steps per compiled call; the epoch's logs."""
    if train.strategy.num_replicas_in_sync == 1 and (steps_per_call or train.steps) >= train.steps:
        logs = loop.train_epoch((train.x, train.y), order, train.batch_size)
        return {name: float(value) for name, value in logs.items()}
    full, tail = train.batches(order)
    loop.reset()
    for start, stop, with_tail in train.call_ranges(steps_per_call):
        logs = loop.train(full, start, stop, tail if with_tail else None)
        logs = {name: float(value) for name, value in logs.items()}
        done = stop + int(with_tail)
        if done < train.steps:
            progbar.update(done, list(logs.items()))
    return logs


def _evaluate(loop, val):
    """The loss and metrics on the validation data, in one compiled call."""
    full, tail = val.batches()
    logs = loop.evaluate(full, val.full_steps, tail)
    return {name: float(value) for name, value in logs.items()}
