"""The Huber loss as a function, a saveable closure and a `keras.losses.Loss`.

    huber(y_true, y_pred) = mean(h(y_true - y_pred), axis=-1)      (one value per sample)

with h, the Huber function of the error, as `fastcustom.reference.huber` states it.
"""

import keras
import tensorflow as tf

from fastcustom import private_symbols
from fastcustom._validation import positive_finite
from fastcustom.ops.huber import huber_mean, huber_per_sample

_register = keras.saving.register_keras_serializable(package="fastcustom")


@_register
def huber(y_true, y_pred, threshold=1.0):
    """Per-sample Huber loss: `mean(h(y_true - y_pred), axis=-1)`.

    The convention of `keras.losses.huber`, whose `delta` is our `threshold`.
    Runs the fused op when it is built, else an XLA-compiled graph.

    >>> import numpy as np
    >>> huber(np.array([[0.0, 1.0]]), np.array([[0.6, 0.4]])).numpy().round(4)
    array([0.18])
    """
    return huber_per_sample(y_true, y_pred, positive_finite(threshold, "threshold"))


@_register
class HuberFunction:
    """`huber` with its threshold bound: what `create_huber` returns.

    Unlike the notes' closure it has a config, so a model compiled with it
    saves and loads *with* its threshold.

    >>> import numpy as np
    >>> loss_fn = HuberFunction(2.0)
    >>> loss_fn(np.array([[0.0]]), np.array([[3.0]])).numpy()
    array([4.])
    """

    def __init__(self, threshold=1.0):
        self.threshold = positive_finite(threshold, "threshold")
        self.__name__ = f"huber_{self.threshold:g}"

    def __call__(self, y_true, y_pred):
        return huber_per_sample(y_true, y_pred, self.threshold)

    def get_config(self):
        return {"threshold": self.threshold}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def create_huber(threshold=1.0):
    """A per-sample Huber loss callable with `threshold` bound, that survives saving.

    >>> import keras
    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss=create_huber(2.0))
    """
    return HuberFunction(threshold)


@_register
class HuberLoss(keras.losses.Loss):
    """Huber loss: `mean(h(y_true - y_pred), axis=-1)` per sample, then `reduction`.

    Sample weights, masks and every Keras reduction come from
    `keras.losses.Loss`; `threshold` comes back from `get_config`. The default
    reduction without weights or masks is the exact mean of every element's h,
    rounded once to the loss's dtype (`fastcustom.ops.huber.huber_mean`: under a
    `tf.GradientTape`, as in `model.fit`, one fused pass that also writes the
    gradient), where Keras sums the per-sample values in that dtype (inf in
    float32 where the mean itself is finite).

    >>> import numpy as np
    >>> loss = HuberLoss(threshold=1.0)
    >>> round(float(loss(np.array([[0.0, 1.0]]), np.array([[0.6, 0.4]]))), 4)
    0.18
    """

    def __init__(self, threshold=1.0, reduction="sum_over_batch_size", name="huber_loss",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.threshold = positive_finite(threshold, "threshold")

    def __call__(self, y_true, y_pred, sample_weight=None):
        if (sample_weight is None and self.reduction in ("sum_over_batch_size", "mean")
                and private_symbols.keras_mask(y_pred) is None
                and not tf.distribute.has_strategy()):
            with tf.name_scope(self.name):
                mean = huber_mean(keras.ops.convert_to_tensor(y_true, dtype=self.dtype),
                                  keras.ops.convert_to_tensor(y_pred, dtype=self.dtype),
                                  self.threshold)
            if mean is not None:
                return mean
        return super().__call__(y_true, y_pred, sample_weight)

    def call(self, y_true, y_pred):
        return huber_per_sample(y_true, y_pred, self.threshold)

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype, "threshold": self.threshold}
