"""Loss, optimizer and metrics from what `model.compile` accepts: objects, strings, functions.

>>> resolve_loss("mse").name, resolve_metrics(["mae"])[0].name
('mean_squared_error', 'mae')
"""

import keras
import tensorflow as tf


def _match_ranks(y_true, y_pred):
    """Squeeze a trailing axis of size 1 from the higher-rank one, as Keras's losses do."""
    true_rank, pred_rank = y_true.shape.rank, y_pred.shape.rank
    if true_rank is None or pred_rank is None:
        return y_true, y_pred
    if true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        return tf.squeeze(y_true, -1), y_pred
    if pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        return y_true, tf.squeeze(y_pred, -1)
    return y_true, y_pred


class PerSampleLoss(keras.losses.Loss):
    """A per-sample loss function as a `keras.losses.Loss` (mean over the batch)."""

    def __init__(self, fn, name=None):
        super().__init__(name=name or getattr(fn, "__name__", type(fn).__name__))
        self.fn = fn

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.cast(tf.convert_to_tensor(y_true), y_pred.dtype)
        return self.fn(*_match_ranks(y_true, y_pred))


def resolve_loss(loss):
    """A `keras.losses.Loss` for `loss`: a Loss, a per-sample function, or a name ("mse")."""
    if loss is None:
        raise ValueError("`loss` is required: pass a keras.losses.Loss, a function or a name.")
    resolved = keras.losses.get(loss)
    if isinstance(resolved, keras.losses.Loss):
        return resolved
    if callable(resolved):
        return PerSampleLoss(resolved)
    raise ValueError(f"Could not interpret `loss`: {loss!r}.")


def resolve_optimizer(optimizer):
    """A `keras.optimizers.Optimizer` for `optimizer`: an optimizer or a name ("nadam")."""
    if optimizer is None:
        raise ValueError("`optimizer` is required: pass a keras optimizer or a name.")
    return keras.optimizers.get(optimizer)


def as_list(metrics):
    """`metrics` as a list: a single metric (object, function or name) becomes `[metric]`."""
    if metrics is None:
        return []
    if isinstance(metrics, (list, tuple)):
        return list(metrics)
    return [metrics]


def resolve_metrics(metrics):
    """A list of `keras.metrics.Metric`, named the way `model.fit` names them in its logs.

    A string keeps its spelling as the name ("mse" logs as "mse"), a metric
    object keeps its own, a function becomes a `MeanMetricWrapper` named after it.
    """
    resolved = []
    for identifier in as_list(metrics):
        metric = keras.metrics.get(identifier)
        if not isinstance(metric, keras.metrics.Metric):
            metric = keras.metrics.MeanMetricWrapper(
                metric, name=getattr(metric, "__name__", type(metric).__name__))
        if isinstance(identifier, str):
            metric.name = identifier
        resolved.append(metric)
    names = [m.name for m in resolved]
    for name in names:
        if name == "loss" or names.count(name) > 1:
            raise ValueError(f"Metric names must be unique and not 'loss'; got {names}.")
    return resolved
