"""The Huber kernels' single dispatch point, and their XLA-friendly TF math.

    e = y_true - y_pred
    h(e) = e^2 / 2                              if |e| <= threshold
         = threshold |e| - threshold^2 / 2     otherwise

`huber_per_sample` is the mean of h over the last axis (the `keras.losses.huber`
convention); `huber_weighted_total` is (sum of w * h, sum of w) in float64 for
the streaming metric. Each one picks, in this order:

1. inside an XLA compilation: plain TF ops that XLA fuses;
2. the fused custom op, when its library is loaded and supports the input, and
   the op runs where the library has kernels: a library built without CUDA
   kernels takes only tensors that run on the CPU (placed there, or not placed
   while TensorFlow sees no GPU), not ones TensorFlow would copy from a GPU;
3. otherwise the same TF ops compiled with XLA as a `tf.function`.

>>> import tensorflow as tf
>>> round(float(huber_per_sample(tf.constant([[0.0, 1.0]]), tf.constant([[0.6, 0.4]]), 1.0)[0]), 6)
0.18
"""

import keras
import tensorflow as tf

from fastcustom.ops import library
from fastcustom.ops.xla_context import in_xla_context

_OP_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------
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


def prepare_pair(y_true, y_pred):
    """y_pred as a floating tensor, y_true cast to its dtype, ranks matched, shapes checked."""
    y_pred = tf.convert_to_tensor(y_pred)
    if not y_pred.dtype.is_floating:
        y_pred = tf.cast(y_pred, keras.backend.floatx())
    y_true = tf.cast(tf.convert_to_tensor(y_true), y_pred.dtype)
    y_true, y_pred = _same_rank(y_true, y_pred)
    try:
        tf.broadcast_static_shape(y_true.shape, y_pred.shape)
    except ValueError:
        raise ValueError(
            f"y_true shape {y_true.shape} and y_pred shape {y_pred.shape} are "
            "incompatible: they must be equal or broadcastable."
        ) from None
    if y_pred.shape.rank == 0:
        y_true, y_pred = tf.reshape(y_true, [1]), tf.reshape(y_pred, [1])
    return y_true, y_pred


def _broadcast_pair(y_true, y_pred):
    """Materialize broadcasting for the op, which takes two tensors of one shape."""
    if y_true.shape.is_fully_defined() and y_true.shape == y_pred.shape:
        return y_true, y_pred
    shape = tf.broadcast_dynamic_shape(tf.shape(y_true), tf.shape(y_pred))
    return tf.broadcast_to(y_true, shape), tf.broadcast_to(y_pred, shape)


def _fused_ops_for(tensor):
    """The op module when the fused path may take `tensor`, else None."""
    ops = library.huber_ops()
    if ops is None or in_xla_context() or tensor.dtype not in _OP_DTYPES:
        return None
    if not (library.status()["gpu"] or _runs_on_cpu(tensor)):
        return None
    return ops


def _runs_on_cpu(tensor):
    """Whether an op on `tensor` runs on the CPU: placed there, or unplaced (a graph
    tensor outside any device scope) while TensorFlow sees no GPU to place it on."""
    device_type = tf.DeviceSpec.from_string(getattr(tensor, "device", "") or "").device_type
    if device_type:
        return device_type == "CPU"
    return not library.tensorflow_sees_a_gpu()


def _accumulation_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


# ----------------------------------------------------------------------------
# The XLA-friendly math
# ----------------------------------------------------------------------------
def huber_elementwise_tf(y_true, y_pred, threshold):
    """h(y_true - y_pred) per element, in float32 (float64 for float64 inputs)."""
    acc = _accumulation_dtype(y_pred.dtype)
    error = tf.cast(y_true, acc) - tf.cast(y_pred, acc)
    abs_error = tf.abs(error)
    threshold = tf.constant(threshold, acc)
    return tf.where(abs_error <= threshold, 0.5 * tf.square(error),
                    threshold * abs_error - 0.5 * tf.square(threshold))


def huber_per_sample_tf(y_true, y_pred, threshold):
    """Mean of h over the last axis, in TF ops; returns the input dtype."""
    values = huber_elementwise_tf(y_true, y_pred, threshold)
    return tf.cast(tf.reduce_mean(values, axis=-1), y_pred.dtype)


def huber_weighted_total_tf(y_true, y_pred, threshold, weights):
    """(sum w*h, sum w) in float64; `weights` is None, per row ([...]) or per element."""
    values = tf.cast(huber_elementwise_tf(y_true, y_pred, threshold), tf.float64)
    if weights is None:
        return tf.reduce_sum(values), tf.cast(tf.size(values), tf.float64)
    weights = tf.cast(weights, tf.float64)
    if weights.shape.rank == values.shape.rank:
        return tf.reduce_sum(values * weights), tf.reduce_sum(weights)
    depth = tf.cast(tf.shape(values)[-1], tf.float64)
    return (tf.reduce_sum(tf.reduce_sum(values, axis=-1) * weights),
            tf.reduce_sum(weights) * depth)


_huber_per_sample_xla = tf.function(huber_per_sample_tf, jit_compile=True,
                                    reduce_retracing=True)
_huber_weighted_total_xla = tf.function(huber_weighted_total_tf, jit_compile=True,
                                        reduce_retracing=True)


# ----------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------
def huber_per_sample(y_true, y_pred, threshold=1.0):
    """Per-sample Huber loss `mean(h(y_true - y_pred), axis=-1)`, shape `y_pred.shape[:-1]`."""
    y_true, y_pred = prepare_pair(y_true, y_pred)
    ops = _fused_ops_for(y_pred)
    if ops is not None:
        y_true, y_pred = _broadcast_pair(y_true, y_pred)
        return ops.huber_per_sample(y_true, y_pred, tf.constant(threshold, tf.float64))
    if in_xla_context():
        return huber_per_sample_tf(y_true, y_pred, threshold)
    return _huber_per_sample_xla(y_true, y_pred, threshold)


def _standardize_weights(sample_weight, y_pred):
    """Weights per element (rank of y_pred) or per row (rank of y_pred[:-1]), like Keras."""
    weights = tf.cast(tf.convert_to_tensor(sample_weight), y_pred.dtype)
    rank, pred_rank = weights.shape.rank, y_pred.shape.rank
    while rank > pred_rank and weights.shape[-1] == 1:
        weights, rank = tf.squeeze(weights, -1), rank - 1
    if rank > pred_rank:
        raise ValueError(f"sample_weight shape {weights.shape} has a higher rank than "
                         f"y_pred shape {y_pred.shape}.")
    if rank == pred_rank:
        target = y_pred.shape
    else:
        weights = tf.reshape(weights, tf.concat(
            [tf.shape(weights), tf.ones([pred_rank - 1 - rank], tf.int32)], 0))
        target = y_pred.shape[:-1]
    try:
        tf.broadcast_static_shape(weights.shape, target)
    except ValueError:
        raise ValueError(f"sample_weight shape {sample_weight.shape} cannot be broadcast to "
                         f"y_pred shape {y_pred.shape}.") from None
    full = tf.shape(y_pred) if rank == pred_rank else tf.shape(y_pred)[:-1]
    return tf.broadcast_to(weights, full)


def huber_weighted_total(y_true, y_pred, threshold=1.0, sample_weight=None):
    """(sum of w * h, sum of w) over every element, both float64 scalars.

    A weight per sample (rank below y_pred's) counts once per element of that
    sample, so total / count is the weighted mean of the per-element values.
    """
    y_true, y_pred = prepare_pair(y_true, y_pred)
    weights = None if sample_weight is None else _standardize_weights(sample_weight, y_pred)
    ops = _fused_ops_for(y_pred)
    if ops is not None:
        y_true, y_pred = _broadcast_pair(y_true, y_pred)
        flat = tf.zeros([0], y_pred.dtype) if weights is None else tf.reshape(weights, [-1])
        return ops.huber_weighted_total(y_true, y_pred, tf.constant(threshold, tf.float64), flat)
    if in_xla_context():
        return huber_weighted_total_tf(y_true, y_pred, threshold, weights)
    return _huber_weighted_total_xla(y_true, y_pred, threshold, weights)


def active_path():
    """'fused-op' when the custom op serves eager and graph calls, else 'xla'."""
    return library.status()["path"]
