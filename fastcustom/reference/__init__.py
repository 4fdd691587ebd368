"""Plain NumPy float64 references for every numeric fastcustom component.

The truth the tests and benchmarks compare against. Tiny, obvious and slow on
purpose; it imports NumPy only, never TensorFlow, Keras or the rest of the package
(the notes' own TensorFlow code is `fastcustom.baselines`).

>>> round(float(huber([[0.0, 1.0]], [[0.6, 0.4]])[0]), 6)
0.18
"""

import numpy as np


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def huber_elementwise(y_true, y_pred, threshold=1.0):
    """h(e) = e^2/2 if |e| <= t else t|e| - t^2/2, with e = y_true - y_pred.

    Computed as q (|e| - q/2) with q = min(|e|, t): the same value, without the
    t^2/2 that overflows for t above ~1.8e19 in float32 (an inf - inf).
    """
    error = _f64(y_true) - _f64(y_pred)
    abs_error = np.abs(error)
    with np.errstate(invalid="ignore", over="ignore"):
        clipped = np.minimum(abs_error, threshold)
        return clipped * (abs_error - 0.5 * clipped)


def huber(y_true, y_pred, threshold=1.0):
    """Per-sample Huber loss: the mean of `huber_elementwise` over the last axis.

    The edge rules every fastcustom path follows (the tests check them):

    - Exactness: the value is this float64 result on the inputs as given (already
      rounded to their dtype), rounded once to the output dtype. So a value too
      large for the dtype is +inf there (`huber([[1e30]], [[-1e30]], threshold=1e30)`
      is +inf in float32, never NaN), and an intermediate that would overflow the
      dtype (e = 3e38 - (-3e38), t^2/2, a row sum) must not change the answer.
      For float64 inputs the rule is this float64 arithmetic itself. A result
      below the dtype's smallest normal number may come back as 0 (TensorFlow
      runs its CPU kernels with denormals flushed to zero).
    - Infinities: one infinite input makes |e| = +inf, so h = +inf and the row's
      mean is +inf; the gradient there is the limit, +-t / D (see `huber_grad_pred`).
    - NaN only where the math is NaN: a NaN input, or inf - inf (both inputs
      infinite with one sign), makes h, the row mean and the gradient NaN.
    - Empty inputs: a mean over an empty last axis is NaN (0/0); no rows, no values.
    - Weights (`StreamingHuberMean`) multiply in IEEE arithmetic: a weight of 0
      times an infinite or NaN h is NaN, as in `keras.metrics.Mean`.
    """
    values = huber_elementwise(y_true, y_pred, threshold)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return values.sum(axis=-1) / np.float64(values.shape[-1])


def create_huber(threshold=1.0):
    """The notes' closure: a per-sample Huber loss with `threshold` bound."""
    return lambda y_true, y_pred: huber(y_true, y_pred, threshold)


def huber_grad_pred(y_true, y_pred, upstream, threshold=1.0):
    """d/dy_pred of sum(upstream * huber(...)): upstream / D * clip(y_pred - y_true, -t, t).

    At an infinite error the clip gives the limit, +-t / D times upstream; a NaN
    error (a NaN input, inf - inf) gives NaN. A zero upstream gives 0 there.
    """
    y_true, y_pred = _f64(y_true), _f64(y_pred)
    depth = y_pred.shape[-1]
    with np.errstate(invalid="ignore", over="ignore"):
        clipped = np.clip(y_pred - y_true, -threshold, threshold)
        return (_f64(upstream)[..., None] / depth) * clipped


class StreamingHuberMean:
    """The streaming Huber metric: sum(w * h) / sum(w) over every element seen.

    `sample_weight` broadcasts against the per-element values the way Keras
    does: a weight of rank < rank(y_pred) weighs whole samples (it gets trailing
    axes of size 1), one of rank > rank(y_pred) may only add trailing 1s. The
    result is 0 while the weights seen sum to 0.
    """

    def __init__(self, threshold=1.0):
        self.threshold = threshold
        self.total = 0.0
        self.count = 0.0

    def update(self, y_true, y_pred, sample_weight=None):
        values = huber_elementwise(y_true, y_pred, self.threshold)
        if sample_weight is None:
            weight = np.ones_like(values)
        else:
            weight = _f64(sample_weight)
            while weight.ndim > values.ndim and weight.shape[-1] == 1:
                weight = weight[..., 0]
            weight = weight.reshape(weight.shape + (1,) * (values.ndim - weight.ndim))
            weight = np.broadcast_to(weight, values.shape)
        with np.errstate(invalid="ignore", over="ignore"):
            self.total += float(np.sum(values * weight))
        self.count += float(np.sum(weight))

    def result(self):
        return self.total / self.count if self.count else 0.0


def l1(weights, factor):
    """L1 penalty: factor * sum(|w|)."""
    return factor * np.sum(np.abs(_f64(weights)))


def softplus(x):
    """log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)) so it never overflows."""
    x = _f64(x)
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def glorot_normal_stddev(fan_in, fan_out):
    """The standard deviation GlorotNormalInitializer draws with: sqrt(2 / (fan_in + fan_out))."""
    return float(np.sqrt(2.0 / (fan_in + fan_out)))


def positive_weights(weights):
    """The constraint: negative weights become 0."""
    w = _f64(weights)
    return np.where(w < 0.0, 0.0, w)


def selu(x):
    x = _f64(x)
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return scale * np.where(x > 0.0, x, alpha * np.expm1(np.minimum(x, 0.0)))


ACTIVATIONS = {None: lambda x: x, "linear": lambda x: x, "relu": lambda x: np.maximum(x, 0.0),
               "selu": selu, "softplus": softplus, "exponential": np.exp,
               "tanh": np.tanh, "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x))}


def dense(x, kernel, bias=None, activation=None):
    """activation(x @ kernel + bias), over the last axis of x."""
    z = _f64(x) @ _f64(kernel)
    if bias is not None:
        z = z + _f64(bias)
    return ACTIVATIONS[activation](z)


def dense_grads(x, kernel, upstream):
    """Gradients of sum(upstream * (x @ kernel + b)) (no activation): (dx, dkernel, dbias)."""
    x, kernel, upstream = _f64(x), _f64(kernel), _f64(upstream)
    x2 = x.reshape(-1, x.shape[-1])
    g2 = upstream.reshape(-1, upstream.shape[-1])
    return upstream @ kernel.T, x2.T @ g2, g2.sum(axis=0)


def multi_layer(x1, x2):
    """MyMultiLayer: (x1 + x2, x1 * x2)."""
    x1, x2 = _f64(x1), _f64(x2)
    return x1 + x2, x1 * x2


def reconstruction_loss(inputs, reconstruction, weight=0.05):
    """The loss ReconstructingRegressor adds: weight * mean((reconstruction - inputs)^2)."""
    return weight * float(np.mean((_f64(reconstruction) - _f64(inputs)) ** 2))
