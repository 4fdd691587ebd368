"""The fused gradient of `FastCustom>HuberPerSample`, registered with TensorFlow on import.

    loss[r] = (1/D) sum_j h(y_true[r, j] - y_pred[r, j])
    d loss / d y_pred[r, j] = grad[r] / D * clamp(y_pred - y_true, -delta, delta)[r, j]
    d loss / d y_true = -(d loss / d y_pred);  delta gets none.

The loader imports this module after the op library loads, so GradientTape,
tf.function and model.fit all differentiate the op with one fused kernel.
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
