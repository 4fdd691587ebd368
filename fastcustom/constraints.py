"""PositiveWeights: a constraint that sets negative weights to 0."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="fastcustom")
class PositiveWeights(keras.constraints.Constraint):
    """w -> where(w < 0, 0, w); NaN stays NaN.

    >>> import numpy as np
    >>> PositiveWeights()(np.array([-1.0, 0.5], "float32")).numpy()
    array([0. , 0.5], dtype=float32)
    """

    def __call__(self, w):
        w = tf.convert_to_tensor(w)
        return tf.where(w < 0, tf.zeros_like(w), w)

    def get_config(self):
        return {}
