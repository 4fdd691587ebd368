"""The gradients of the fused Huber ops, registered with TensorFlow on import.

    loss[r] = (1/D) sum_j h(y_true[r, j] - y_pred[r, j])
    d loss / d y_pred[r, j] = grad[r] / D * clamp(y_pred - y_true, -delta, delta)[r, j]
    d loss / d y_true = -(d loss / d y_pred);  delta gets none.

The first derivative is the fused `HuberPerSampleGrad` kernel, so GradientTape,
tf.function and model.fit differentiate the op with one pass. Its own gradient
(for second derivatives: Hessian-vector products, gradient penalties) is plain
TF ops, rarely run; with upstream u[r, j] and e = y_pred - y_true:

    d / d y_pred[r, j] = u[r, j] * grad[r] / D * [|e[r, j]| <= delta]
    d / d grad[r]      = (1/D) sum_j u[r, j] * clamp(e, -delta, delta)[r, j]

the same values the XLA path's autodiff gives (its quadratic branch holds at
|e| = delta). The loader imports this module after the op library loads.
"""

import tensorflow as tf

from fastcustom.ops import library


@tf.RegisterGradient("FastCustom>HuberPerSample")
def _huber_per_sample_grad(op, grad):
    y_true, y_pred, delta = op.inputs
    grad_pred = library.huber_ops().huber_per_sample_grad(y_true, y_pred, delta, grad)
    # Eager backprop says which inputs need no gradient; graphs prune unused ones.
    skipped = getattr(op, "skip_input_indices", None) or ()
    grad_true = None if 0 in skipped else -grad_pred
    return grad_true, grad_pred, None


@tf.RegisterGradient("FastCustom>HuberPerSampleGrad")
def _huber_per_sample_grad_grad(op, upstream):
    y_true, y_pred, delta, grad = op.inputs
    dtype = y_pred.dtype
    acc = tf.float64 if dtype == tf.float64 else tf.float32
    error = tf.cast(y_pred, acc) - tf.cast(y_true, acc)
    delta = tf.cast(delta, acc)
    upstream = tf.cast(upstream, acc)
    depth = tf.cast(tf.shape(error)[-1], acc)
    inside = tf.cast(tf.abs(error) <= delta, acc)
    grad_pred = upstream * (tf.cast(grad, acc) / depth)[..., None] * inside
    grad_grad = tf.reduce_sum(upstream * tf.clip_by_value(error, -delta, delta), axis=-1) / depth
    grad_pred = tf.cast(grad_pred, dtype)
    return -grad_pred, grad_pred, None, tf.cast(grad_grad, dtype)
