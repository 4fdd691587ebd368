"""The Huber kernels' single dispatch point, and their XLA-friendly TF math.

    h as stated in `fastcustom.reference.huber`, computed as q (|e| - q/2),
    e = y_true - y_pred, q = min(|e|, threshold)

`huber_per_sample` is the mean of h over the last axis (the `keras.losses.huber`
convention); `huber_weighted_total` is (sum of w * h, sum of w) in float64 for
the streaming metric. Both follow the edge rules written in
`fastcustom.reference.huber` (exact float64 value rounded once; inf stays inf;
NaN only where the math is NaN). Each one picks, in this order:

0. the path forced by `fastcustom.use_path("xla" | "op")`, if any;
1. inside an XLA compilation: plain TF ops that XLA fuses;
2. the fused custom op, when its library is loaded and supports the input, and
   the op runs where the library has kernels: a library built without CUDA
   kernels takes only tensors that run on the CPU (placed there, or not placed
   while TensorFlow sees no GPU), not ones TensorFlow would copy from a GPU;
3. otherwise the same TF ops compiled with XLA as a `tf.function`.

The TF ops compute in float64 whatever the input dtype, and round once at the
end: memory-bound, so on a CPU this is as fast as the float32 formula (see
bench/test_bench_huber.py) and exact to the output dtype at any row length.

>>> import tensorflow as tf
>>> round(float(huber_per_sample(tf.constant([[0.0, 1.0]]), tf.constant([[0.6, 0.4]]), 1.0)[0]), 6)
0.18
"""

import keras
import tensorflow as tf
from tensorflow.python.eager import record

from fastcustom.ops import library
from fastcustom.ops.path import forced_path
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
    y_true = tf.cast(tf.convert_to_tensor(y_true), y_pred.dtype)
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


def _broadcast_pair(y_true, y_pred):
    """Materialize broadcasting for the op, which takes two tensors of one shape."""
    if y_true.shape.is_fully_defined() and y_true.shape == y_pred.shape:
        return y_true, y_pred
    shape = tf.broadcast_dynamic_shape(tf.shape(y_true), tf.shape(y_pred))
    return tf.broadcast_to(y_true, shape), tf.broadcast_to(y_pred, shape)


def _why_not_fused(tensor):
    """None when the fused op may take `tensor`, else the reason it may not."""
    if library.huber_ops() is None:
        return f"the op library is not loaded ({library.status()['reason']})"
    if in_xla_context():
        return "inside an XLA compilation custom ops cannot run"
    if tensor.dtype not in _OP_DTYPES:
        return f"no fused kernel for {tensor.dtype.name}"
    if not (library.status()["gpu"] or _runs_on_cpu(tensor)):
        return "the tensor runs on a GPU and the library has no usable GPU kernels"
    return None


def _fused_ops_for(tensor):
    """The op module when the fused path takes `tensor`, else None (`use_path` first)."""
    forced = forced_path()
    if forced == "xla":
        return None
    reason = _why_not_fused(tensor)
    if reason is None:
        return library.huber_ops()
    if forced == "op":
        raise RuntimeError(f"fastcustom.use_path('op'): the fused op cannot serve this call: "
                           f"{reason}.")
    return None


def _runs_on_cpu(tensor):
    """Whether an op on `tensor` runs on the CPU: placed there, or unplaced (a graph
    tensor outside any device scope) while TensorFlow sees no GPU to place it on."""
    device_type = tf.DeviceSpec.from_string(getattr(tensor, "device", "") or "").device_type
    if device_type:
        return device_type == "CPU"
    return not library.tensorflow_sees_a_gpu()


# ----------------------------------------------------------------------------
# The XLA-friendly math, in float64 for every input dtype
# ----------------------------------------------------------------------------
def huber_elementwise_tf(y_true, y_pred, threshold):
    """h(y_true - y_pred) per element in float64, as q (|e| - q/2), q = min(|e|, t).

    Autodiff gives the reference's gradient, clip(y_pred - y_true, -t, t), also
    at an infinite error (+-t: the minimum's gradient is a select, not a product).
    """
    error = tf.cast(y_true, tf.float64) - tf.cast(y_pred, tf.float64)
    abs_error = tf.abs(error)
    clipped = tf.minimum(abs_error, tf.cast(threshold, tf.float64))
    return clipped * (abs_error - 0.5 * clipped)


def huber_per_sample_tf(y_true, y_pred, threshold):
    """Mean of h over the last axis, in TF ops (float64 inside); returns the input dtype."""
    values = huber_elementwise_tf(y_true, y_pred, threshold)
    return tf.cast(tf.reduce_mean(values, axis=-1), y_pred.dtype)


def huber_weighted_total_tf(y_true, y_pred, threshold, weights, per_row=False):
    """(sum w*h, sum w) in float64; `weights` is None, one per row ([...], `per_row`)
    or one per element (y_pred's shape)."""
    values = huber_elementwise_tf(y_true, y_pred, threshold)
    if weights is None:
        return tf.reduce_sum(values), tf.cast(tf.size(values), tf.float64)
    weights = tf.cast(weights, tf.float64)
    if not per_row:
        return tf.reduce_sum(values * weights), tf.reduce_sum(weights)
    depth = tf.cast(tf.shape(values)[-1], tf.float64)
    return (tf.reduce_sum(tf.reduce_sum(values, axis=-1) * weights),
            tf.reduce_sum(weights) * depth)


# One trace per input signature (relaxed), not per threshold: it arrives as a tensor.
_huber_per_sample_xla = tf.function(huber_per_sample_tf, jit_compile=True,
                                    reduce_retracing=True)
_huber_weighted_total_xla = tf.function(huber_weighted_total_tf, jit_compile=True,
                                        reduce_retracing=True)


def _threshold(threshold):
    return tf.constant(threshold, tf.float64)


# ----------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------
def huber_per_sample(y_true, y_pred, threshold=1.0):
    """Per-sample Huber loss `mean(h(y_true - y_pred), axis=-1)`, shape `y_pred.shape[:-1]`."""
    y_true, y_pred = prepare_pair(y_true, y_pred)
    ops = _fused_ops_for(y_pred)
    if ops is not None:
        y_true, y_pred = _broadcast_pair(y_true, y_pred)
        return ops.huber_per_sample(y_true, y_pred, _threshold(threshold))
    if in_xla_context():
        return huber_per_sample_tf(y_true, y_pred, threshold)
    return _huber_per_sample_xla(y_true, y_pred, _threshold(threshold))


_MEAN_WITH_GRAD_DTYPES = (tf.float32, tf.float64)


def huber_mean_for_tape(y_true, y_pred, threshold=1.0):
    """The mean of h over every element, with d mean / d y_pred written in the same pass;
    or None when that op does not serve the call.

    It serves when the fused op would (see `huber_per_sample`), on the CPU, for float32
    and float64, and only while a `tf.GradientTape` records y_pred or y_true (eagerly or
    while a `tf.function` is traced, as in `model.fit`'s train step): a forward pass
    nobody differentiates takes `huber_per_sample` and writes no gradient. The
    registered gradient then only scales that stored gradient by the upstream scalar
    (`fastcustom.ops.huber_gradients`): inputs read once, gradient written once, where
    per-sample values and their gradient take two passes. Elsewhere (`tf.gradients`
    in a graph, a `tf.function` differentiated from outside) the per-sample path and
    its one-pass gradient kernel serve.
    """
    y_true, y_pred = prepare_pair(y_true, y_pred)
    if (y_pred.dtype not in _MEAN_WITH_GRAD_DTYPES or y_pred.shape.rank is None
            or y_pred.shape.rank < 2 or 0 in y_pred.shape
            or not record.should_record_backprop([y_true, y_pred])):
        return None
    ops = _fused_ops_for(y_pred)
    if ops is None or not _runs_on_cpu(y_pred):
        return None
    y_true, y_pred = _broadcast_pair(y_true, y_pred)
    return _mean_with_recorded_gradient(ops, y_true, y_pred, _threshold(threshold))


def _mean_with_recorded_gradient(ops, y_true, y_pred, threshold):
    """HuberMeanWithGrad's mean, recorded on the tapes with only that output.

    Recorded as the op itself, its second output (the stored gradient) would be
    an output the tape fills with zeros of y_pred's shape on every eager backward
    pass (a full write); recorded by hand, the backward pass reads `stored` and
    writes nothing (HuberMeanGrad returns it as is when the upstream is 1). The
    op's registered gradient still serves `tf.gradients` in a graph.
    """
    with record.stop_recording():
        mean, stored = ops.huber_mean_with_grad(y_true, y_pred, threshold)
    watched = [i for i, x in enumerate((y_true, y_pred)) if record.should_record_backprop([x])]

    def backward(grad):
        grad_pred = ops.huber_mean_grad(y_true, y_pred, threshold, stored, grad)
        return [grad_pred if i == 1 else -grad_pred for i in watched]

    record.record_operation("FastCustom>HuberMeanWithGrad", [mean],
                            [(y_true, y_pred)[i] for i in watched], backward)
    return mean


def _standardize_weights(sample_weight, y_pred):
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
    """`_standardize_weights`'s rule with ranks known only at run time: keep the first
    min(rank, pred_rank) axes (reshape fails unless the rest are 1s), pad with 1s."""
    rank, pred_rank = tf.rank(weights), tf.rank(y_pred)
    shape = tf.concat([tf.shape(weights)[:tf.minimum(rank, pred_rank)],
                       _trailing_ones(pred_rank - rank)], 0)
    return tf.broadcast_to(tf.reshape(weights, shape), tf.shape(y_pred))


def huber_weighted_total(y_true, y_pred, threshold=1.0, sample_weight=None):
    """(sum of w * h, sum of w) over every element, both float64 scalars.

    A weight per sample (rank below y_pred's) counts once per element of that
    sample, so total / count is the weighted mean of the per-element values.
    """
    y_true, y_pred = _broadcast_pair(*prepare_pair(y_true, y_pred))
    weights, per_row = None, False
    if sample_weight is not None:
        weights, per_row = _standardize_weights(sample_weight, y_pred)
    ops = _fused_ops_for(y_pred)
    if ops is not None:
        flat = tf.zeros([0], y_pred.dtype) if weights is None else tf.reshape(weights, [-1])
        return ops.huber_weighted_total(y_true, y_pred, _threshold(threshold), flat)
    if in_xla_context():
        return huber_weighted_total_tf(y_true, y_pred, threshold, weights, per_row)
    return _huber_weighted_total_xla(y_true, y_pred, _threshold(threshold), weights, per_row)


def active_path():
    """The path a call would take now: the `use_path` choice inside such a block,
    else 'fused-op' when the custom op serves eager and graph calls, else 'xla'."""
    forced = forced_path()
    if forced is not None:
        return {"xla": "xla", "op": "fused-op"}[forced]
    return library.status()["path"]
