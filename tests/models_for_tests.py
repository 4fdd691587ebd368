"""Small models built from every fastcustom component, shared by the tests."""

import keras
import numpy as np

import fastcustom


def everything_model(seed=0, noise=0.05, n_features=8):
    """A functional model that uses each fastcustom layer, initializer, regularizer,
    constraint and activation once."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((n_features,))
    h = fastcustom.MyDense(30, activation="selu",
                           kernel_initializer=fastcustom.GlorotNormalInitializer(seed=seed),
                           kernel_regularizer=fastcustom.L1Regularizer(1e-4))(inputs)
    h = fastcustom.AddGaussianNoise(noise, seed=seed)(h)
    a = fastcustom.MyDense(10, activation=fastcustom.softplus)(h)
    b = fastcustom.MyDense(10, kernel_constraint=fastcustom.PositiveWeights())(h)
    total, product = fastcustom.MyMultiLayer()((a, b))
    e = fastcustom.Exponential()(fastcustom.MyDense(5, activation="tanh")(total))
    outputs = fastcustom.MyDense(1, dtype="float32")(keras.layers.Concatenate()([product, e]))
    return keras.Model(inputs, outputs)


def regression_data(n=256, n_features=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype("float32")
    y = (np.tanh(x[:, :1] + 0.5 * x[:, 1:2]) + 0.1 * rng.normal(size=(n, 1))).astype("float32")
    return x, y
