"""The Huber kernels' single dispatch point, and their XLA-friendly TF math.

    h as stated in `fastcustom.reference.huber`, computed as q (|e| - q/2),
    e = y_true - y_pred, q = min(|e|, threshold)

`huber_per_sample` is the mean of h over the last axis (the `keras.losses.huber`
convention); `huber_mean` the mean over every element (HuberLoss's default
reduction); `huber_weighted_total` is (sum of w * h, sum of w) in float64 for
the streaming metric. All follow the edge rules written in
`fastcustom.reference.huber` (exact float64 value rounded once; inf stays inf;
NaN only where the math is NaN). Each first applies Keras's input rules
(`fastcustom.ops.inputs`), then `_path_for` picks one path, the same way for all three:

1. `fastcustom.use_path("xla")` skips the fused op; under `use_path("op")` a call the
   fused op cannot serve raises RuntimeError saying why (inside XLA included);
2. the fused custom op, when its library is loaded and supports the input, outside an
   XLA compilation, and where the op runs on a device the library has kernels for: a
   library built without CUDA kernels takes only tensors that run on the CPU
   (`fastcustom.ops.device`), not ones TensorFlow would copy from a GPU;
3. inside an XLA compilation (a `jit_compile=True` function): plain TF ops, inline,
   that XLA fuses;
4. otherwise the same TF ops as an XLA-compiled `tf.function`.

The TF ops compute the value in float64 whatever the input dtype and round once at
the end (memory-bound, so on a CPU as fast as the float32 formula, and exact to the
output dtype at any row length); the gradient of the mean is computed in float32 for
float32 and narrower inputs, in float64 where that overflows (`huber_mean_grad_tf`).

>>> import tensorflow as tf
>>> round(float(huber_per_sample(tf.constant([[0.0, 1.0]]), tf.constant([[0.6, 0.4]]), 1.0)[0]), 6)
0.18
"""

import functools

import tensorflow as tf

from fastcustom import private_symbols
from fastcustom.ops import library
from fastcustom.ops.device import runs_on_cpu
from fastcustom.ops.inputs import broadcast_pair, prepare_pair, standardize_weights
from fastcustom.ops.path import forced_path

_OP_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


# ----------------------------------------------------------------------------
# Which path serves a call
# ----------------------------------------------------------------------------
# Where a call runs: the fused op, TF ops inline in an XLA compilation, or those TF ops
# as an XLA-compiled tf.function.
OP, INLINE, COMPILED = "op", "inline", "compiled"


def _why_not_fused(tensor):
    """None when the fused op may take `tensor`, else the reason it may not."""
    if library.huber_ops() is None:
        return f"the op library is not loaded ({library.status()['reason']})"
    if private_symbols.in_xla_context():
        return "inside an XLA compilation custom ops cannot run"
    if tensor.dtype not in _OP_DTYPES:
        return f"no fused kernel for {tensor.dtype.name}"
    if not (runs_on_cpu(tensor) or library.status()["gpu"]):
        return "the tensor runs on a GPU and the library has no usable GPU kernels"
    return None


def _path_for(tensor):
    """(OP, the op module) when the fused op serves a call on `tensor`, else (INLINE or
    COMPILED, None); under `use_path("op")` a RuntimeError when the op cannot serve it."""
    forced = forced_path()
    if forced != "xla":
        reason = _why_not_fused(tensor)
        if reason is None:
            return OP, library.huber_ops()
        if forced == "op":
            raise RuntimeError(f"fastcustom.use_path('op'): the fused op cannot serve this "
                               f"call: {reason}.")
    return (INLINE if private_symbols.in_xla_context() else COMPILED), None


# ----------------------------------------------------------------------------
# The XLA-friendly math: values in float64 for every input dtype
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


# Whole-tensor reductions go over the last axis first, then the rest: XLA:CPU adds a
# whole tensor into one scalar in a single serial loop, while row sums vectorize.
def _sum_all(values):
    return tf.reduce_sum(tf.reduce_sum(values, axis=-1))


def huber_mean_tf(y_true, y_pred, threshold):
    """Mean of h over every element (of rank >= 2 with no zero-sized axis: the mean of
    the per-sample means), in TF ops (float64 inside); returns the input dtype."""
    values = huber_elementwise_tf(y_true, y_pred, threshold)
    return tf.cast(tf.reduce_mean(tf.reduce_mean(values, axis=-1)), y_pred.dtype)


def _clipped_over_size(error, threshold, size):
    """clip(error, -t, t) * (1 / size) in error's dtype."""
    threshold = tf.cast(threshold, error.dtype)
    inverse = tf.cast(1 / tf.cast(size, tf.float64), error.dtype)
    return tf.clip_by_value(error, -threshold, threshold) * inverse


def huber_mean_grad_tf(y_true, y_pred, threshold):
    """d `huber_mean_tf` / d y_pred = clip(y_pred - y_true, -t, t) / size; returns the
    input dtype.

    In float32 for float32 and narrower inputs (the difference, t and 1 / size each
    rounded once: within 2e-7 of float64), in float64 where that difference overflows
    float32 (|e| > 3.4e38) and for float64 inputs. XLA:CPU fuses the select of the two
    into one pass: with it the XLA path's forward + gradient read 92-103% of the best XLA
    form's speed at [500000, 16] (bench/archive/RESULTS-2026-11-to-2026-12-07.md, "#15").

    >>> huber_mean_grad_tf(tf.constant([[0.0, 0.0]]), tf.constant([[0.5, -3.0]]), 1.0)
    <tf.Tensor: shape=(1, 2), dtype=float32, numpy=array([[ 0.25, -0.5 ]], dtype=float32)>
    """
    size = tf.size(y_pred)
    wide = _clipped_over_size(tf.cast(y_pred, tf.float64) - tf.cast(y_true, tf.float64),
                              threshold, size)
    if y_pred.dtype == tf.float64:
        return wide
    error = tf.cast(y_pred, tf.float32) - tf.cast(y_true, tf.float32)
    grad = tf.where(tf.math.is_inf(error), tf.cast(wide, tf.float32),
                    _clipped_over_size(error, threshold, size))
    return tf.cast(grad, y_pred.dtype)


def huber_mean_with_grad_tf(y_true, y_pred, threshold):
    """(`huber_mean_tf`, `huber_mean_grad_tf`) from one read of the inputs: XLA fuses both
    into one pass."""
    return (huber_mean_tf(y_true, y_pred, threshold),
            huber_mean_grad_tf(y_true, y_pred, threshold))


def huber_weighted_total_tf(y_true, y_pred, threshold, weights, per_row=False):
    """(sum w*h, sum w) in float64; `weights` is None, one per row ([...], `per_row`)
    or one per element (y_pred's shape)."""
    values = huber_elementwise_tf(y_true, y_pred, threshold)
    if weights is None:
        return _sum_all(values), tf.cast(tf.size(values), tf.float64)
    weights = tf.cast(weights, tf.float64)
    if not per_row:
        return _sum_all(values * weights), _sum_all(weights)
    depth = tf.cast(tf.shape(values)[-1], tf.float64)
    return (tf.reduce_sum(tf.reduce_sum(values, axis=-1) * weights),
            tf.reduce_sum(weights) * depth)


# One trace per input signature (relaxed), not per threshold: it arrives as a tensor.
_huber_per_sample_xla = tf.function(huber_per_sample_tf, jit_compile=True,
                                    reduce_retracing=True)
_huber_mean_xla = tf.function(huber_mean_tf, jit_compile=True, reduce_retracing=True)
_huber_mean_with_grad_xla = tf.function(huber_mean_with_grad_tf, jit_compile=True,
                                        reduce_retracing=True)
_huber_weighted_total_xla = tf.function(huber_weighted_total_tf, jit_compile=True,
                                        reduce_retracing=True)


def _threshold(threshold):
    """The threshold as the float64 scalar every path takes; a Python number's made once
    in eager mode (not captured into graphs)."""
    if isinstance(threshold, (int, float)) and tf.executing_eagerly():
        return _eager_threshold(float(threshold).hex())   # hex: -0.0 is not 0.0
    return tf.constant(threshold, tf.float64)


@functools.lru_cache(maxsize=64)
def _eager_threshold(hex_value):
    return tf.constant(float.fromhex(hex_value), tf.float64)


# ----------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------
def huber_per_sample(y_true, y_pred, threshold=1.0):
    """Per-sample Huber loss `mean(h(y_true - y_pred), axis=-1)`, shape `y_pred.shape[:-1]`."""
    y_true, y_pred = prepare_pair(y_true, y_pred)
    path, ops = _path_for(y_pred)
    if path == OP:
        y_true, y_pred = broadcast_pair(y_true, y_pred)
        return ops.huber_per_sample(y_true, y_pred, _threshold(threshold))
    if path == INLINE:
        return huber_per_sample_tf(y_true, y_pred, threshold)
    return _huber_per_sample_xla(y_true, y_pred, _threshold(threshold))


_MEAN_WITH_GRAD_DTYPES = (tf.float32, tf.float64)


def _no_weights(dtype):
    """HuberWeightedTotal's weights for "none": made once per dtype in eager mode (not
    captured into graphs)."""
    if tf.executing_eagerly():
        return _eager_no_weights(dtype)
    return tf.zeros([0], dtype)


@functools.lru_cache(maxsize=None)
def _eager_no_weights(dtype):
    return tf.zeros([0], dtype)


def huber_mean(y_true, y_pred, threshold=1.0):
    """The mean of h over every element (the mean of the per-sample values), rounded once
    to y_pred's dtype; None for a y_pred of rank < 2 or with a zero-sized axis (Keras
    returns those per-sample values unreduced, or divides no value by none).

    While a `tf.GradientTape` records y_pred or y_true (eagerly, or while a
    `tf.function` is traced, as in `model.fit`'s train step), one pass reads the
    inputs once and writes d mean / d y_pred beside the mean: the fused op
    HuberMeanWithGrad (float32 and float64 on the CPU), else one XLA-compiled
    function. The tape's backward pass then only scales that stored gradient by the
    upstream scalar. Other dtypes and devices on the op path take the per-sample op,
    whose registered gradient the tape runs. A forward pass nobody differentiates
    writes no gradient (eagerly on the op path: HuberWeightedTotal's float64
    total / count). Elsewhere (`tf.gradients` in a graph, a `tf.function`
    differentiated from outside) the per-sample op and its gradient kernel serve on
    the op path.
    """
    y_true, y_pred = prepare_pair(y_true, y_pred)
    if y_pred.shape.rank is None or y_pred.shape.rank < 2 or 0 in y_pred.shape:
        return None
    path, ops = _path_for(y_pred)
    if path == INLINE:
        return huber_mean_tf(y_true, y_pred, threshold)
    recording = private_symbols.should_record([y_true, y_pred])
    threshold = _threshold(threshold)
    if path == COMPILED:
        if recording:
            return _mean_with_recorded_gradient(
                y_true, y_pred, lambda t, p: _huber_mean_with_grad_xla(t, p, threshold),
                lambda stored, grad: _scaled(y_true, y_pred, threshold, stored, grad))
        return _huber_mean_xla(y_true, y_pred, threshold)
    y_true, y_pred = broadcast_pair(y_true, y_pred)
    if recording and y_pred.dtype in _MEAN_WITH_GRAD_DTYPES and runs_on_cpu(y_pred):
        return _mean_with_recorded_gradient(
            y_true, y_pred, lambda t, p: ops.huber_mean_with_grad(t, p, threshold),
            lambda stored, grad: ops.huber_mean_grad(y_true, y_pred, threshold, stored, grad))
    if not recording and tf.executing_eagerly():
        # HuberWeightedTotal (no gradient), then the mean made here: total / count in
        # Python's float64, as TensorFlow's, then float32 and float64 rounded by
        # tf.constant as by tf.cast: no scalar kernels after the op (each is slow while
        # the op's worker threads still spin)
        total, count = ops.huber_weighted_total(y_true, y_pred, threshold,
                                                _no_weights(y_pred.dtype))
        mean = float(total) / float(count)
        if y_pred.dtype in (tf.float32, tf.float64):
            return tf.constant(mean, y_pred.dtype)
        return tf.cast(tf.constant(mean, tf.float64), y_pred.dtype)
    per_sample = ops.huber_per_sample(y_true, y_pred, threshold)
    return tf.cast(tf.reduce_mean(tf.cast(per_sample, tf.float64)), y_pred.dtype)


def _scaled(y_true, y_pred, threshold, stored, grad):
    """The XLA path's HuberMeanGrad: stored * grad, `stored` itself when grad is 1 (a loss
    differentiated directly); recomputed from the inputs, differentiably, while an
    outer tape records them (second derivatives)."""
    grad = tf.cast(grad, stored.dtype)
    if private_symbols.should_record([y_true, y_pred]):
        return huber_mean_grad_tf(y_true, y_pred, threshold) * grad
    return tf.cond(tf.equal(grad, 1), lambda: stored, lambda: stored * grad)


def _mean_with_recorded_gradient(y_true, y_pred, mean_and_stored, scale):
    """The mean of `mean_and_stored(y_true, y_pred)` = (mean, d mean / d y_pred), run
    unrecorded, then recorded on the tapes as a function of y_true and y_pred whose
    backward pass is `scale(stored, upstream)`.

    Recorded as an op with two outputs, the stored gradient would be an output the
    tape fills with zeros of y_pred's shape on every eager backward pass (a full
    write); recorded by hand, the backward pass reads `stored` and writes nothing
    when the upstream is 1 (HuberMeanGrad and `_scaled` return it as is). The fused op's
    registered gradient still serves `tf.gradients` in a graph.
    """
    mean, stored = private_symbols.unrecorded(mean_and_stored, y_true, y_pred)
    watched = [i for i, x in enumerate((y_true, y_pred)) if private_symbols.should_record([x])]

    def backward(grad):
        grad_pred = scale(stored, grad)
        return [grad_pred if i == 1 else -grad_pred for i in watched]

    return private_symbols.record_gradient("FastCustom>HuberMeanWithGrad", mean,
                                           [(y_true, y_pred)[i] for i in watched], backward)


def huber_weighted_total(y_true, y_pred, threshold=1.0, sample_weight=None):
    """(sum of w * h, sum of w) over every element, both float64 scalars.

    A weight per sample (rank below y_pred's) counts once per element of that
    sample, so total / count is the weighted mean of the per-element values.
    """
    y_true, y_pred = broadcast_pair(*prepare_pair(y_true, y_pred))
    weights, per_row = None, False
    if sample_weight is not None:
        weights, per_row = standardize_weights(sample_weight, y_pred)
    path, ops = _path_for(y_pred)
    if path == OP:
        flat = _no_weights(y_pred.dtype) if weights is None else tf.reshape(weights, [-1])
        return ops.huber_weighted_total(y_true, y_pred, _threshold(threshold), flat)
    if path == INLINE:
        return huber_weighted_total_tf(y_true, y_pred, threshold, weights, per_row)
    return _huber_weighted_total_xla(y_true, y_pred, _threshold(threshold), weights, per_row)
