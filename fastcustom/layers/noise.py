"""AddGaussianNoise: x + N(0, stddev^2) noise while training, x otherwise."""

import keras
import tensorflow as tf

from fastcustom._validation import non_negative_finite


@keras.saving.register_keras_serializable(package="fastcustom")
class AddGaussianNoise(keras.layers.Layer):
    """y = x + n with n ~ N(0, stddev^2) when `training`, y = x at inference.

    With a `seed` the sequence of noise draws is reproducible.

    >>> import numpy as np
    >>> layer = AddGaussianNoise(0.1, seed=0)
    >>> x = np.zeros((2, 3), "float32")
    >>> bool((layer(x, training=False).numpy() == x).all())
    True
    """

    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.stddev = non_negative_finite(stddev, "stddev")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.stddev == 0.0:
            return inputs
        noise = keras.random.normal(tf.shape(inputs), stddev=self.stddev, dtype=inputs.dtype,
                                    seed=self.seed_generator)
        return inputs + noise

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}
