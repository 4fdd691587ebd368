"""HuberMetric: streaming parity with the float64 reference, weights, masks, no drift."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom import reference


def batches(rng, count, shape=(16, 4)):
    return [(rng.normal(0, 2, shape).astype("float32"), rng.normal(0, 2, shape).astype("float32"),
             rng.uniform(0.0, 2.0, shape[0]).astype("float32")) for _ in range(count)]


def test_streams_like_reference_with_sample_weights(rng):
    metric, ref = fastcustom.HuberMetric(threshold=1.5), reference.StreamingHuberMean(1.5)
    for y_true, y_pred, weight in batches(rng, 5):
        metric.update_state(y_true, y_pred, sample_weight=weight)
        ref.update(y_true, y_pred, weight)
    np.testing.assert_allclose(float(metric.result()), ref.result(), rtol=1e-6)
    np.testing.assert_allclose(float(metric.count.numpy()), ref.count, rtol=1e-12)


def test_per_element_weights_and_no_weights_match_reference(rng):
    y_true, y_pred, _ = batches(rng, 1, (8, 3))[0]
    weight = rng.uniform(0, 1, (8, 3)).astype("float32")
    for w in (None, weight):
        metric, ref = fastcustom.HuberMetric(), reference.StreamingHuberMean()
        metric.update_state(y_true, y_pred, sample_weight=w)
        ref.update(y_true, y_pred, w)
        np.testing.assert_allclose(float(metric.result()), ref.result(), rtol=1e-6)


def test_agrees_with_keras_mean_over_keras_huber(rng):
    ours, theirs = fastcustom.HuberMetric(2.0), keras.metrics.Mean()
    for y_true, y_pred, weight in batches(rng, 3):
        ours.update_state(y_true, y_pred, sample_weight=weight)
        theirs.update_state(keras.losses.huber(y_true, y_pred, 2.0), sample_weight=weight)
    np.testing.assert_allclose(float(ours.result()), float(theirs.result()), rtol=1e-5)


def test_mask_zeroes_weights(rng):
    y_true, y_pred, _ = batches(rng, 1, (2, 5, 3))[0]
    mask = np.array([[1, 0, 1, 1, 0], [0, 0, 1, 1, 1]], bool)
    masked = tf.constant(y_pred)
    masked._keras_mask = tf.constant(mask)
    metric, ref = fastcustom.HuberMetric(), reference.StreamingHuberMean()
    metric.update_state(y_true, masked)
    ref.update(y_true, y_pred, mask.astype("float64"))
    np.testing.assert_allclose(float(metric.result()), ref.result(), rtol=1e-6)


def test_mask_with_per_sample_weights_of_a_trailing_axis(rng):
    # A mask [B] with weights [B, 1] is [B, 1] (ranks matched first, as Keras does), not [B, B].
    y_true, y_pred, _ = batches(rng, 1, (3, 2))[0]
    mask, weights = np.array([True, False, True]), np.array([[1.0], [2.0], [3.0]])
    masked = tf.constant(y_pred)
    masked._keras_mask = tf.constant(mask)
    metric, ref = fastcustom.HuberMetric(), reference.StreamingHuberMean()
    metric.update_state(y_true, masked, sample_weight=weights)
    ref.update(y_true, y_pred, weights[:, 0] * mask)
    np.testing.assert_allclose(float(metric.result()), ref.result(), rtol=1e-6)


def test_result_is_zero_when_empty_and_after_reset(rng):
    metric = fastcustom.HuberMetric()
    assert float(metric.result()) == 0.0
    y_true, y_pred, _ = batches(rng, 1)[0]
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) > 0.0
    metric.reset_state()
    assert float(metric.result()) == 0.0 and float(metric.count.numpy()) == 0.0


def test_a_nan_prediction_makes_the_result_nan(rng):
    y_true, y_pred, _ = batches(rng, 1)[0]
    y_pred[3, 1] = np.nan
    metric = fastcustom.HuberMetric()
    metric.update_state(y_true, y_pred)
    assert np.isnan(float(metric.result()))


def test_bad_sample_weight_shape_names_shapes(rng):
    y_true, y_pred, _ = batches(rng, 1, (4, 3))[0]
    with pytest.raises(ValueError, match=r"sample_weight shape \(5,\)"):
        fastcustom.HuberMetric().update_state(y_true, y_pred, sample_weight=np.ones(5))


DRIFT_BOUND = 1e-6  # relative error of the streamed mean after 10^9 elements


def test_mean_of_a_billion_elements_within_relative_1e_6_of_float64(rng):
    """10^9 streamed elements: HuberMetric's result is within a relative 1e-6 (DRIFT_BOUND) of
    the float64 reference; Keras's float32 Mean misses that bound, so the bound can fail."""
    y_true = rng.normal(0, 2, (31_250, 32)).astype("float32")
    y_pred = rng.normal(0, 2, (31_250, 32)).astype("float32")
    repeats = 10**9 // y_true.size
    ref = reference.StreamingHuberMean()
    ref.update(y_true, y_pred)  # every batch is the same, so the exact mean is this one's
    ours, keras_mean = fastcustom.HuberMetric(), keras.metrics.Mean()
    per_sample = keras.losses.huber(y_true, y_pred)
    for _ in range(repeats):
        ours.update_state(y_true, y_pred)
        keras_mean.update_state(per_sample)
    assert float(ours.count.numpy()) == 10**9
    ours_error = abs(float(ours.result()) - ref.result()) / ref.result()
    keras_error = abs(float(keras_mean.result()) - ref.result()) / ref.result()
    assert ours_error < DRIFT_BOUND
    assert keras_error > DRIFT_BOUND, "float32 state was expected to drift here"


def test_config_round_trip_keeps_threshold_name_and_dtype():
    metric = fastcustom.HuberMetric(threshold=2.5, name="hm", dtype="float64")
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(restored, fastcustom.HuberMetric)
    assert (restored.threshold, restored.name, restored.dtype) == (2.5, "hm", "float64")
