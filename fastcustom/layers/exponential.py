"""Exponential: the notes' `Lambda(tf.exp)` as a layer that loads in safe mode."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="fastcustom")
class Exponential(keras.layers.Layer):
    """y = exp(x), elementwise.

    >>> import numpy as np
    >>> Exponential()(np.zeros((1, 2), "float32")).numpy()
    array([[1., 1.]], dtype=float32)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        return tf.exp(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape
