"""Keras's input rules for a (y_true, y_pred[, sample_weight]) call, in one place.

These are Keras's rules, not ours; the kernels' dispatch (`fastcustom.ops.huber`)
applies them before any path runs, so every path sees the same shapes:

- ranks: when the ranks of y_true and y_pred differ by one and the larger ends
  in an axis of size 1, a rank-1 partner gets that axis, else the 1 is squeezed
  (keras/src/losses/loss.py, `squeeze_or_expand_to_same_rank`);
- shapes: y_true and y_pred must be equal or broadcastable; a scalar counts as
  one sample of one element (shape [1]);
- sample weights: trailing axes of size 1 beyond y_pred's rank are dropped, a
  lower rank weighs whole rows and broadcasts (keras/src/losses/loss.py,
  `reduce_weighted_values`; keras/src/metrics/reduction_metrics.py,
  `reduce_to_samplewise_values`);
- masks: a Keras mask on y_pred is a weight of 0 or 1, multiplied into the
  sample weights after their ranks are matched as above (keras/src/losses/loss.py,
  `apply_mask`, as Keras's metrics call it).

Each rule also holds when a rank is known only when the graph runs.

>>> import tensorflow as tf
>>> [t.shape.as_list() for t in prepare_pair(tf.zeros([4, 1]), tf.zeros([4]))]
[[4, 1], [4, 1]]
>>> [t.shape.as_list() for t in prepare_pair(tf.zeros([2, 3]), tf.zeros([2, 3, 1]))]
[[2, 3], [2, 3]]
"""

import keras
import tensorflow as tf


def _same_rank(y_true, y_pred):
    """Keras's convention: when ranks differ by one and the larger ends in 1,
    expand a rank-1 partner, else squeeze that trailing 1."""
    true_rank, pred_rank = y_true.shape.rank, y_pred.shape.rank
    if true_rank is None or pred_rank is None or abs(true_rank - pred_rank) != 1:
        return y_true, y_pred
    if true_rank > pred_rank and y_true.shape[-1] == 1:
        if pred_rank == 1:
            return y_true, tf.expand_dims(y_pred, -1)
        return tf.squeeze(y_true, -1), y_pred
    if pred_rank > true_rank and y_pred.shape[-1] == 1:
        if true_rank == 1:
            return tf.expand_dims(y_true, -1), y_pred
        return y_true, tf.squeeze(y_pred, -1)
    return y_true, y_pred


def _trailing_ones(count):
    return tf.ones([tf.maximum(count, 0)], tf.int32)


def _at_least_1d(x):
    """A scalar as shape [1], whether its rank is known now or only when it runs."""
    if x.shape.rank is None:
        return tf.reshape(x, tf.concat([tf.shape(x), _trailing_ones(1 - tf.rank(x))], 0))
    return tf.reshape(x, [1]) if x.shape.rank == 0 else x


def prepare_pair(y_true, y_pred):
    """y_pred as a floating tensor, y_true cast to its dtype, ranks matched, shapes checked.

    A scalar counts as one sample of one element (shape [1]), also when its rank
    is unknown until the graph runs.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    if not y_pred.dtype.is_floating:
        y_pred = tf.cast(y_pred, keras.backend.floatx())
    y_true = tf.convert_to_tensor(y_true)
    if y_true.dtype != y_pred.dtype:   # tf.cast would return it as is, after its dispatch
        y_true = tf.cast(y_true, y_pred.dtype)
    if y_true.shape == y_pred.shape and y_pred.shape.rank and y_pred.shape.is_fully_defined():
        return y_true, y_pred   # the common case: one known shape, nothing to match
    y_true, y_pred = _same_rank(y_true, y_pred)
    try:
        tf.broadcast_static_shape(y_true.shape, y_pred.shape)
    except ValueError:
        raise ValueError(
            f"y_true shape {y_true.shape} and y_pred shape {y_pred.shape} are "
            "incompatible: they must be equal or broadcastable."
        ) from None
    if y_pred.shape.rank is None or y_true.shape.rank is None:
        return _at_least_1d(y_true), _at_least_1d(y_pred)
    if y_pred.shape.rank == 0:
        y_true, y_pred = tf.reshape(y_true, [1]), tf.reshape(y_pred, [1])
    return y_true, y_pred


def broadcast_pair(y_true, y_pred):
    """Materialize broadcasting, for ops that take two tensors of one shape."""
    if y_true.shape.is_fully_defined() and y_true.shape == y_pred.shape:
        return y_true, y_pred
    shape = tf.broadcast_dynamic_shape(tf.shape(y_true), tf.shape(y_pred))
    return tf.broadcast_to(y_true, shape), tf.broadcast_to(y_pred, shape)


def standardize_weights(sample_weight, y_pred):
    """(weights, per_row): weights per element (y_pred's shape, per_row False) or
    per row (y_pred.shape[:-1], per_row True), like Keras.

    Trailing axes of size 1 beyond y_pred's rank are dropped; a lower rank gets
    trailing axes of size 1 and broadcasts. When either rank is unknown until the
    graph runs, the same rule is applied then, per element.
    """
    weights = tf.cast(tf.convert_to_tensor(sample_weight), y_pred.dtype)
    rank, pred_rank = weights.shape.rank, y_pred.shape.rank
    if rank is None or pred_rank is None:
        return _weights_per_element_at_run_time(weights, y_pred), False
    given_shape = weights.shape
    while rank > pred_rank and weights.shape[-1] == 1:
        weights, rank = tf.squeeze(weights, -1), rank - 1
    if rank > pred_rank:
        raise ValueError(f"sample_weight shape {given_shape} has a higher rank than "
                         f"y_pred shape {y_pred.shape}.")
    per_row = rank < pred_rank
    if per_row:
        weights = tf.reshape(weights, tf.concat(
            [tf.shape(weights), tf.ones([pred_rank - 1 - rank], tf.int32)], 0))
    target = y_pred.shape[:-1] if per_row else y_pred.shape
    try:
        tf.broadcast_static_shape(weights.shape, target)
    except ValueError:
        raise ValueError(f"sample_weight shape {given_shape} cannot be broadcast to "
                         f"y_pred shape {y_pred.shape}.") from None
    full = tf.shape(y_pred)[:-1] if per_row else tf.shape(y_pred)
    return tf.broadcast_to(weights, full), per_row


def _weights_per_element_at_run_time(weights, y_pred):
    """`standardize_weights`'s rule with ranks known only at run time: keep the first
    min(rank, pred_rank) axes (reshape fails unless the rest are 1s), pad with 1s."""
    rank, pred_rank = tf.rank(weights), tf.rank(y_pred)
    shape = tf.concat([tf.shape(weights)[:tf.minimum(rank, pred_rank)],
                       _trailing_ones(pred_rank - rank)], 0)
    return tf.broadcast_to(tf.reshape(weights, shape), tf.shape(y_pred))


def apply_mask(sample_weight, mask, dtype):
    """`sample_weight` with a Keras mask applied, in `dtype`: the mask as 0/1 weights when
    there are no weights, else mask * weights with ranks matched first (a mask [B] and
    weights [B, 1] give [B, 1], not [B, B]); `sample_weight` itself when `mask` is None.
    Keras's `apply_mask` with the reduction its metrics use ("sum")."""
    if mask is None:
        return sample_weight
    mask = tf.cast(mask, dtype)
    if sample_weight is None:
        return mask
    mask, sample_weight = _same_rank(mask, tf.cast(sample_weight, dtype))
    return mask * sample_weight
