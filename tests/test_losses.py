"""huber, create_huber and HuberLoss against the float64 reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom import reference

# float32: the per-element value carries ~1e-7 relative error; a mean over the last
# axis adds a little more, so 1e-6 relative (with a tiny absolute floor near 0).
F32 = dict(rtol=1e-6, atol=1e-7)
# float16 / bfloat16 results are rounded to 11 / 8 significant bits on output
# (the kernel accumulates in float32), so the tolerance is their half-ulp.
HALF_TOL = {tf.float16: dict(rtol=1e-3, atol=1e-3), tf.bfloat16: dict(rtol=8e-3, atol=8e-3)}


def pair(rng, shape, scale=2.0):
    """Inputs with errors on both sides of the threshold."""
    return (rng.normal(0, scale, shape).astype("float32"),
            rng.normal(0, scale, shape).astype("float32"))


@pytest.mark.parametrize("shape", [(7,), (32, 1), (64, 5), (3, 4, 17), (2, 3, 4, 5)])
@pytest.mark.parametrize("threshold", [0.5, 1.0, 3.0])
def test_huber_matches_reference_float32(rng, shape, threshold):
    y_true, y_pred = pair(rng, shape)
    got = fastcustom.huber(y_true, y_pred, threshold).numpy()
    want = reference.huber(y_true, y_pred, threshold)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, **F32)


def test_huber_float64_is_exact(rng):
    y_true, y_pred = (rng.normal(0, 2, (50, 9)) for _ in range(2))
    got = fastcustom.huber(y_true, y_pred, 0.7).numpy()
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference.huber(y_true, y_pred, 0.7), rtol=1e-13)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_huber_half_precision(rng, dtype):
    y_true, y_pred = pair(rng, (40, 6))
    y_true, y_pred = tf.cast(y_true, dtype), tf.cast(y_pred, dtype)
    got = fastcustom.huber(y_true, y_pred)
    assert got.dtype == dtype
    want = reference.huber(tf.cast(y_true, tf.float64), tf.cast(y_pred, tf.float64))
    np.testing.assert_allclose(tf.cast(got, tf.float64).numpy(), want, **HALF_TOL[dtype])


def test_huber_matches_keras_and_casts_integer_targets(rng):
    y_true = rng.integers(-3, 4, (16, 4))
    y_pred = rng.normal(0, 2, (16, 4)).astype("float32")
    got = fastcustom.huber(y_true, y_pred, 1.5).numpy()
    np.testing.assert_allclose(got, reference.huber(y_true, y_pred, 1.5), **F32)
    np.testing.assert_allclose(got, keras.losses.huber(y_true.astype("float32"), y_pred, 1.5),
                               rtol=1e-6)


def test_huber_squeezes_or_expands_like_keras(rng):
    y_true = rng.normal(size=(8,)).astype("float32")
    y_pred = rng.normal(size=(8, 1)).astype("float32")
    np.testing.assert_allclose(fastcustom.huber(y_true, y_pred).numpy(),
                               keras.losses.huber(y_true, y_pred).numpy(), rtol=1e-6)


def test_huber_broadcasts_compatible_shapes(rng):
    y_true = rng.normal(size=(8, 1)).astype("float32")
    y_pred = rng.normal(size=(8, 3)).astype("float32")
    np.testing.assert_allclose(fastcustom.huber(y_true, y_pred).numpy(),
                               reference.huber(np.broadcast_to(y_true, (8, 3)), y_pred), **F32)


def test_incompatible_shapes_name_both():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 5\)"):
        fastcustom.huber(np.zeros((4, 3)), np.ones((4, 5)))


def test_nan_and_inf_propagate_like_reference(rng):
    y_true, y_pred = pair(rng, (4, 5))
    y_pred[0, 1] = np.nan
    y_true[2, 3] = np.inf
    got = fastcustom.huber(y_true, y_pred).numpy()
    want = reference.huber(y_true, y_pred)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert np.isnan(got[0]) and np.isinf(got[2])
    np.testing.assert_allclose(got[[1, 3]], want[[1, 3]], **F32)


@pytest.mark.parametrize("threshold", [0, -1.0, float("nan"), float("inf"), "1", None])
def test_bad_threshold_is_rejected_naming_it(threshold):
    for make in (lambda: fastcustom.HuberLoss(threshold), lambda: fastcustom.create_huber(threshold),
                 lambda: fastcustom.HuberMetric(threshold),
                 lambda: fastcustom.huber(np.ones((1, 1)), np.ones((1, 1)), threshold)):
        with pytest.raises(ValueError, match="threshold"):
            make()


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean",
                                       "mean_with_sample_weight", "none", None])
def test_huber_loss_reductions_with_sample_weight(rng, reduction):
    y_true, y_pred = pair(rng, (12, 3))
    weight = rng.uniform(0.1, 2.0, 12).astype("float32")
    per_sample = reference.huber(y_true, y_pred, 2.0) * weight
    want = {"sum_over_batch_size": per_sample.sum() / 12, "sum": per_sample.sum(),
            "mean": per_sample.sum() / 12,
            "mean_with_sample_weight": per_sample.sum() / weight.sum(),
            "none": per_sample, None: per_sample}[reduction]
    loss = fastcustom.HuberLoss(2.0, reduction=reduction)
    np.testing.assert_allclose(loss(y_true, y_pred, sample_weight=weight).numpy(), want,
                               rtol=1e-5)
    keras_loss = keras.losses.Huber(2.0, reduction=reduction)
    np.testing.assert_allclose(loss(y_true, y_pred, sample_weight=weight).numpy(),
                               keras_loss(y_true, y_pred, sample_weight=weight).numpy(),
                               rtol=1e-5)


def test_huber_loss_respects_keras_masks(rng):
    y_true, y_pred = pair(rng, (2, 5, 3))
    mask = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 0, 1]], bool)
    masked = tf.constant(y_pred)
    masked._keras_mask = tf.constant(mask)
    got = fastcustom.HuberLoss(reduction="sum")(y_true, masked).numpy()
    want = (reference.huber(y_true, y_pred) * mask).sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_empty_batch_follows_keras(rng):
    y = np.zeros((0, 3), "float32")
    for reduction in ["sum_over_batch_size", "sum", "none"]:
        ours = fastcustom.HuberLoss(reduction=reduction)(y, y).numpy()
        theirs = keras.losses.Huber(reduction=reduction)(y, y).numpy()
        np.testing.assert_array_equal(ours, theirs)


def test_huber_gradient_matches_analytic_reference(rng):
    y_true, y_pred = pair(rng, (20, 7))
    upstream = rng.normal(size=20).astype("float32")
    pred = tf.Variable(y_pred)
    true = tf.Variable(y_true)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(fastcustom.huber(true, pred, 1.3) * upstream)
    d_pred, d_true = tape.gradient(loss, [pred, true])
    want = reference.huber_grad_pred(y_true, y_pred, upstream, 1.3)
    np.testing.assert_allclose(d_pred.numpy(), want, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d_true.numpy(), -want, rtol=1e-6, atol=1e-8)


def test_create_huber_is_the_notes_closure_with_a_config(rng):
    y_true, y_pred = pair(rng, (9, 2))
    loss_fn = fastcustom.create_huber(2.5)
    np.testing.assert_allclose(loss_fn(y_true, y_pred).numpy(),
                               reference.create_huber(2.5)(y_true, y_pred), **F32)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss_fn))
    assert isinstance(restored, fastcustom.HuberFunction) and restored.threshold == 2.5


def test_huber_loss_config_is_complete():
    loss = fastcustom.HuberLoss(threshold=3.0, reduction="sum", name="h", dtype="float64")
    restored = fastcustom.HuberLoss.from_config(loss.get_config())
    assert (restored.threshold, restored.reduction, restored.name, restored.dtype) == (
        3.0, "sum", "h", "float64")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, fastcustom.HuberLoss) and restored.threshold == 3.0
