"""MyMultiLayer: two inputs in, their sum and product out."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="fastcustom")
class MyMultiLayer(keras.layers.Layer):
    """(x1, x2) -> (x1 + x2, x1 * x2), broadcasting like NumPy.

    >>> import numpy as np
    >>> total, product = MyMultiLayer()((np.full((1, 2), 2.0), np.full((1, 2), 3.0)))
    >>> total.numpy().tolist(), product.numpy().tolist()
    ([[5.0, 5.0]], [[6.0, 6.0]])
    """

    def call(self, inputs):
        x1, x2 = self._pair(inputs)
        return x1 + x2, x1 * x2

    def compute_output_shape(self, input_shape):
        shape1, shape2 = self._pair(input_shape)
        try:
            shape = tf.broadcast_static_shape(tf.TensorShape(shape1), tf.TensorShape(shape2))
        except ValueError:
            raise ValueError(f"MyMultiLayer inputs of shapes {tuple(shape1)} and "
                             f"{tuple(shape2)} do not broadcast.") from None
        return tuple(shape.as_list()), tuple(shape.as_list())

    @staticmethod
    def _pair(inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"MyMultiLayer takes exactly two inputs (x1, x2), got {inputs!r}.")
        return inputs
