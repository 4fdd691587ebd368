"""ReconstructingRegressor: the notes' model whose loss includes reconstructing its inputs."""

import keras
import tensorflow as tf

from fastcustom._validation import non_negative_finite, positive_int
from fastcustom.layers.dense import MyDense


@keras.saving.register_keras_serializable(package="fastcustom")
class ReconstructingRegressor(keras.Model):
    """Five selu layers of 30 (lecun_normal), an output layer, and a reconstruction head.

    Each call adds `reconstruction_weight * mean((reconstruct(z) - inputs)^2)`
    with `add_loss`, so `fit` minimises it along with the compiled loss.

    >>> import numpy as np
    >>> model = ReconstructingRegressor(output_dim=1)
    >>> model(np.ones((4, 8), "float32")).shape, len(model.losses)
    (TensorShape([4, 1]), 1)
    """

    def __init__(self, output_dim, reconstruction_weight=0.05, input_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = positive_int(output_dim, "output_dim")
        self.reconstruction_weight = non_negative_finite(reconstruction_weight,
                                                         "reconstruction_weight")
        self.hidden = [MyDense(30, activation="selu", kernel_initializer="lecun_normal")
                       for _ in range(5)]
        self.out = MyDense(self.output_dim)
        self.reconstruct = None
        self.input_dim = None
        if input_dim is not None:  # from a config: built now, so .h5 weights find their layers
            self.build((None, positive_int(input_dim, "input_dim")))

    def build(self, input_shape):
        if self.reconstruct is not None:  # built from the config already
            return
        n_inputs = self.input_dim = int(input_shape[-1])
        self.reconstruct = MyDense(n_inputs)
        shape = tuple(input_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.reconstruct.build(shape)
        self.out.build(shape)

    def call(self, inputs, training=None):
        z = inputs
        for layer in self.hidden:
            z = layer(z)
        reconstruction = self.reconstruct(z)
        error = tf.cast(reconstruction, "float32") - tf.cast(inputs, "float32")
        self.add_loss(self.reconstruction_weight * tf.reduce_mean(tf.square(error)))
        return self.out(z)

    def get_config(self):
        return {**super().get_config(), "output_dim": self.output_dim,
                "reconstruction_weight": self.reconstruction_weight, "input_dim": self.input_dim}


# The legacy .h5 loader looks classes up by their bare name, not the registered
# "fastcustom>ReconstructingRegressor" the .keras format uses.
keras.saving.get_custom_objects().setdefault("ReconstructingRegressor", ReconstructingRegressor)
