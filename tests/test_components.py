"""Regularizer, activation, initializer, constraint and layers against the reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom import reference

F32 = dict(rtol=1e-6, atol=1e-6)


def test_l1_regularizer_matches_reference_and_saves_its_factor(rng):
    w = rng.normal(size=(5, 7)).astype("float32")
    np.testing.assert_allclose(float(fastcustom.L1Regularizer(0.03)(w)), reference.l1(w, 0.03),
                               rtol=1e-5)
    assert fastcustom.L1Regularizer(0.03).get_config() == {"factor": 0.03}


@pytest.mark.parametrize("factor", [-0.1, float("nan"), float("inf"), "0.1"])
def test_l1_rejects_bad_factor(factor):
    with pytest.raises(ValueError, match="factor"):
        fastcustom.L1Regularizer(factor)


def test_softplus_is_stable_and_exact(rng):
    x = np.concatenate([rng.normal(0, 5, 100), [-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    got = fastcustom.softplus(x.astype("float32")).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, reference.softplus(x.astype("float32")), **F32)
    np.testing.assert_allclose(fastcustom.softplus(x).numpy(), reference.softplus(x), rtol=1e-14)
    assert keras.activations.get(keras.activations.serialize(fastcustom.softplus)) is (
        fastcustom.softplus)


def test_glorot_normal_has_the_glorot_stddev_and_is_not_truncated():
    w = fastcustom.GlorotNormalInitializer(seed=3)((400, 600)).numpy()
    expected = reference.glorot_normal_stddev(400, 600)
    assert abs(w.mean()) < 3 * expected / np.sqrt(w.size)
    np.testing.assert_allclose(w.std(), expected, rtol=0.01)
    # not truncated: Keras's glorot_normal never goes past 2 stddev, a normal does
    assert np.abs(w).max() > 3 * expected


def test_glorot_normal_is_seeded_and_uses_conv_fans():
    a = fastcustom.GlorotNormalInitializer(seed=7)((3, 3, 8, 16)).numpy()
    b = fastcustom.GlorotNormalInitializer(seed=7)((3, 3, 8, 16)).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.std(), reference.glorot_normal_stddev(72, 144), rtol=0.1)
    with pytest.raises(ValueError, match="seed"):
        fastcustom.GlorotNormalInitializer(seed=1.5)


def test_positive_weights_zeroes_negatives_like_reference(rng):
    w = rng.normal(size=(6, 6)).astype("float32")
    w[0, 0] = np.nan
    got = fastcustom.PositiveWeights()(w).numpy()
    np.testing.assert_array_equal(got, reference.positive_weights(w).astype("float32"))


def test_exponential_layer_is_exp(rng):
    x = rng.normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(fastcustom.Exponential()(x).numpy(), np.exp(x), rtol=1e-6)


def test_multi_layer_and_its_shapes(rng):
    x1, x2 = (rng.normal(size=(2, 3, 4)).astype("float32") for _ in range(2))
    total, product = fastcustom.MyMultiLayer()((x1, x2))
    want_total, want_product = reference.multi_layer(x1, x2)
    np.testing.assert_allclose(total.numpy(), want_total, rtol=1e-6)
    np.testing.assert_allclose(product.numpy(), want_product, rtol=1e-6)
    assert fastcustom.MyMultiLayer().compute_output_shape(((None, 4), (None, 1))) == (
        (None, 4), (None, 4))
    with pytest.raises(ValueError, match="two inputs"):
        fastcustom.MyMultiLayer()(x1)


def test_gaussian_noise_only_when_training_and_seeded(rng):
    x = rng.normal(size=(500, 40)).astype("float32")
    layer = fastcustom.AddGaussianNoise(0.5, seed=11)
    np.testing.assert_array_equal(layer(x).numpy(), x)
    noise = layer(x, training=True).numpy() - x
    np.testing.assert_allclose(noise.std(), 0.5, rtol=0.02)
    again = fastcustom.AddGaussianNoise(0.5, seed=11)(x, training=True).numpy() - x
    np.testing.assert_allclose(again, noise, atol=1e-6)
    with pytest.raises(ValueError, match="stddev"):
        fastcustom.AddGaussianNoise(-0.1)


@pytest.mark.parametrize("activation", [None, "selu", "softplus", fastcustom.softplus])
@pytest.mark.parametrize("shape", [(16, 8), (4, 5, 8), (2, 3, 4, 8)])
def test_my_dense_forward_matches_reference(rng, activation, shape):
    layer = MyDense = fastcustom.MyDense(30, activation=activation,
                                         bias_initializer="random_normal")
    x = rng.normal(size=shape).astype("float32")
    y = MyDense(x).numpy()
    assert y.shape == shape[:-1] + (30,)
    name = activation if isinstance(activation, (str, type(None))) else "softplus"
    want = reference.dense(x, layer.kernel.numpy(), layer.bias.numpy(), name)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert layer.compute_output_shape((None,) + shape[1:]) == (None,) + shape[1:-1] + (30,)


def test_my_dense_gradients_match_analytic(rng):
    layer = fastcustom.MyDense(6, bias_initializer="random_normal")
    x = tf.constant(rng.normal(size=(3, 4, 5)).astype("float32"))
    upstream = rng.normal(size=(3, 4, 6)).astype("float32")
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        total = tf.reduce_sum(y * upstream)
    dx, dk, db = tape.gradient(total, [x, layer.kernel, layer.bias])
    want_dx, want_dk, want_db = reference.dense_grads(x.numpy(), layer.kernel.numpy(), upstream)
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk.numpy(), want_dk, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db.numpy(), want_db, rtol=1e-5, atol=1e-5)


def test_my_dense_xla_function_matches_plain(monkeypatch, rng):
    from fastcustom.ops import dense, library
    # Where TensorFlow sees a GPU, an unplaced graph tensor takes the XLA-compiled function.
    monkeypatch.setattr(library, "tensorflow_sees_a_gpu", lambda: True)
    x, k, b = (tf.constant(rng.normal(size=s).astype("float32")) for s in [(9, 7), (7, 5), (5,)])
    xla = tf.function(lambda *args: dense.dense_forward(*args, tf.nn.selu))
    np.testing.assert_allclose(xla(x, k, b).numpy(),
                               dense.dense_forward_tf(x, k, b, tf.nn.selu).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_my_dense_regularizer_adds_its_loss_and_optimizer_applies_its_constraint(rng):
    layer = fastcustom.MyDense(4, use_bias=False, kernel_regularizer=fastcustom.L1Regularizer(0.1),
                               kernel_constraint=fastcustom.PositiveWeights())
    layer(rng.normal(size=(2, 3)).astype("float32"))
    assert layer.bias is None and len(layer.trainable_weights) == 1
    np.testing.assert_allclose(float(layer.losses[0]), reference.l1(layer.kernel.numpy(), 0.1),
                               rtol=1e-5)
    # one SGD step of size 1 on a gradient of ones drives most weights below 0: the optimizer
    # applies the constraint after the step, so those come back as 0
    before = layer.kernel.numpy()
    keras.optimizers.SGD(1.0).apply_gradients([(tf.ones_like(layer.kernel), layer.kernel)])
    stepped = before.astype("float64") - 1.0
    assert (stepped < 0).any()
    np.testing.assert_allclose(layer.kernel.numpy(), reference.positive_weights(stepped), atol=1e-7)


def test_my_dense_rejects_bad_units_and_rank_1_inputs():
    for units in (0, -3, 2.5, None):
        with pytest.raises(ValueError, match="units"):
            fastcustom.MyDense(units)
    with pytest.raises(ValueError):
        fastcustom.MyDense(3)(np.ones((4,), "float32"))  # rank 1


def test_reconstructing_regressor_adds_weighted_reconstruction_loss(rng):
    model = fastcustom.ReconstructingRegressor(output_dim=2, reconstruction_weight=0.2)
    x = rng.normal(size=(10, 8)).astype("float32")
    y = model(x)
    assert y.shape == (10, 2)
    z = x
    for layer in model.hidden:
        z = reference.dense(z, layer.kernel.numpy(), layer.bias.numpy(), "selu")
    recon = reference.dense(z, model.reconstruct.kernel.numpy(), model.reconstruct.bias.numpy())
    np.testing.assert_allclose(float(model.losses[0]),
                               reference.reconstruction_loss(x, recon, 0.2), rtol=1e-5)
    with pytest.raises(ValueError, match="reconstruction_weight"):
        fastcustom.ReconstructingRegressor(1, reconstruction_weight=-1.0)
    with pytest.raises(ValueError, match="output_dim"):
        fastcustom.ReconstructingRegressor(0)
