"""The gradients of the fused Huber ops, registered with TensorFlow by `register(ops)`.

h and its derivative are stated in `fastcustom.reference.huber` (and csrc/huber_math.h);
with e = y_pred - y_true, c = clamp(e, -threshold, threshold), D the row length, N the rows:

    HuberPerSample:    d / d y_pred[r, j] = grad[r] / D * c[r, j]   (the HuberPerSampleGrad kernel)
    HuberMeanWithGrad: d / d y_pred       = grad * grad_pred, the gradient the forward
                       pass already wrote (HuberMeanGrad: no copy when grad is 1)
    d / d y_true = -(d / d y_pred);  threshold gets none.

Second derivatives (Hessian-vector products, gradient penalties) are plain TF ops,
rarely run; with upstream u:

    HuberPerSampleGrad: d / d y_pred[r, j] = u[r, j] * grad[r] / D * [|e[r, j]| <= threshold]
                        d / d grad[r]      = (1/D) sum_j u[r, j] * c[r, j]
    HuberMeanGrad:      d / d y_pred[r, j] = u[r, j] * grad / (N D) * [|e[r, j]| <= threshold]
                        d / d grad         = sum u * stored

the values the XLA path's autodiff gives (its quadratic branch holds at |e| = threshold).
HuberMeanGrad's `stored` input gets no gradient: it is HuberMeanWithGrad's second
output, a function of y_true and y_pred whose derivative is the y_pred term above;
so the forward op's gradient ignores the upstream of that output. (Tapes record
HuberMeanWithGrad by hand with its mean only, `fastcustom.ops.huber`; its gradient
here serves `tf.gradients` in a graph.)

The loader (`fastcustom.ops.library`) calls `register` with the ops it loaded: this
module imports nothing of the package.
"""

import tensorflow as tf

_ops = None  # the loaded ops namespace, set by register()


def register(ops):
    """Register the gradients of the fused ops in `ops` (once per process; a later call
    only replaces the ops they call)."""
    global _ops
    first = _ops is None
    _ops = ops
    if not first:
        return
    tf.RegisterGradient("FastCustom>HuberPerSample")(_huber_per_sample_grad)
    tf.RegisterGradient("FastCustom>HuberPerSampleGrad")(_huber_per_sample_grad_grad)
    tf.RegisterGradient("FastCustom>HuberMeanWithGrad")(_huber_mean_with_grad_grad)
    tf.RegisterGradient("FastCustom>HuberMeanGrad")(_huber_mean_grad_grad)


def _skips_y_true(op):
    """Eager backprop says which inputs need no gradient; graphs prune unused ones."""
    return 0 in (getattr(op, "skip_input_indices", None) or ())


def _huber_per_sample_grad(op, grad):
    y_true, y_pred, threshold = op.inputs
    grad_pred = _ops.huber_per_sample_grad(y_true, y_pred, threshold, grad)
    return None if _skips_y_true(op) else -grad_pred, grad_pred, None


def _huber_mean_with_grad_grad(op, grad, _unused_stored_grad):
    y_true, y_pred, threshold = op.inputs
    grad_pred = _ops.huber_mean_grad(y_true, y_pred, threshold, op.outputs[1], grad)
    return None if _skips_y_true(op) else -grad_pred, grad_pred, None


def _inside_and_clamped(y_true, y_pred, threshold):
    """([|e| <= threshold], clamp(e, -threshold, threshold)) in the accumulation type, e = y_pred - y_true."""
    acc = tf.float64 if y_pred.dtype == tf.float64 else tf.float32
    error = tf.cast(y_pred, acc) - tf.cast(y_true, acc)
    threshold = tf.cast(threshold, acc)
    return tf.cast(tf.abs(error) <= threshold, acc), tf.clip_by_value(error, -threshold, threshold)


def _huber_per_sample_grad_grad(op, upstream):
    y_true, y_pred, threshold, grad = op.inputs
    dtype = y_pred.dtype
    inside, clamped = _inside_and_clamped(y_true, y_pred, threshold)
    upstream = tf.cast(upstream, inside.dtype)
    depth = tf.cast(tf.shape(inside)[-1], inside.dtype)
    grad_pred = upstream * (tf.cast(grad, inside.dtype) / depth)[..., None] * inside
    grad_grad = tf.reduce_sum(upstream * clamped, axis=-1) / depth
    grad_pred = tf.cast(grad_pred, dtype)
    return -grad_pred, grad_pred, None, tf.cast(grad_grad, dtype)


def _huber_mean_grad_grad(op, upstream):
    y_true, y_pred, threshold, stored, grad = op.inputs
    inside, _ = _inside_and_clamped(y_true, y_pred, threshold)
    size = tf.cast(tf.size(inside), inside.dtype)
    grad_pred = tf.cast(upstream * tf.cast(grad / size, inside.dtype) * inside, y_pred.dtype)
    return -grad_pred, grad_pred, None, None, tf.reduce_sum(upstream * stored)
