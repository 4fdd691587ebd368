"""L1Regularizer: penalty = factor * sum(|w|)."""

import keras
import tensorflow as tf

from fastcustom._validation import non_negative_finite


@keras.saving.register_keras_serializable(package="fastcustom")
class L1Regularizer(keras.regularizers.Regularizer):
    """L1 weight penalty `factor * sum(|w|)`.

    >>> import numpy as np
    >>> round(float(L1Regularizer(0.01)(np.array([1.0, -2.0, 3.0], "float32"))), 6)
    0.06
    """

    def __init__(self, factor):
        self.factor = non_negative_finite(factor, "factor")

    def __call__(self, weights):
        weights = tf.convert_to_tensor(weights)
        return tf.cast(self.factor, weights.dtype) * tf.reduce_sum(tf.abs(weights))

    def get_config(self):
        return {"factor": self.factor}
