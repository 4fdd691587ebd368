"""Keras's input rules (`fastcustom.ops.inputs`), each against what Keras itself does.

    ranks: keras/src/losses/loss.py `squeeze_or_expand_to_same_rank`
    masks: keras/src/losses/loss.py `apply_mask` (reduction "sum", as Keras's metrics use it)
"""

import numpy as np
import pytest
import tensorflow as tf
from keras.src.losses.loss import apply_mask as keras_apply_mask
from keras.src.losses.loss import squeeze_or_expand_to_same_rank

from fastcustom.ops import inputs


@pytest.mark.parametrize("true_shape, pred_shape", [
    ((4, 1), (4,)), ((4,), (4, 1)), ((2, 3, 1), (2, 3)), ((2, 3), (2, 3, 1)), ((2, 3), (2, 3)),
    ((5,), (5,))])
def test_ranks_are_matched_as_keras_matches_them(true_shape, pred_shape):
    y_true, y_pred = inputs.prepare_pair(tf.zeros(true_shape), tf.zeros(pred_shape))
    want = squeeze_or_expand_to_same_rank(tf.zeros(true_shape), tf.zeros(pred_shape))
    assert [y_true.shape, y_pred.shape] == [w.shape for w in want]


def test_a_scalar_pair_is_one_sample_of_one_element():
    y_true, y_pred = inputs.prepare_pair(1.0, 2.0)
    assert y_true.shape == y_pred.shape == (1,)


def test_shapes_that_do_not_broadcast_are_refused():
    with pytest.raises(ValueError, match=r"y_true shape \(3, 2\) and y_pred shape \(3, 4\) "
                                         "are incompatible"):
        inputs.prepare_pair(tf.zeros([3, 2]), tf.zeros([3, 4]))


@pytest.mark.parametrize("weight_shape, per_row", [((3,), True), ((3, 1), False),
                                                   ((3, 2), False), ((3, 2, 1), False)])
def test_sample_weights_per_row_or_per_element(weight_shape, per_row):
    # y_pred [3, 2]: a rank below y_pred's weighs rows; y_pred's rank (after dropping trailing
    # 1s beyond it) weighs elements, broadcast
    weights, got_per_row = inputs.standardize_weights(tf.ones(weight_shape), tf.zeros([3, 2]))
    assert got_per_row is per_row
    assert weights.shape == ((3,) if per_row else (3, 2))


@pytest.mark.parametrize("mask_shape, weight_shape", [((3,), (3, 1)), ((3,), (3,)),
                                                      ((3, 1), (3,)), ((3,), None)])
def test_a_mask_weighs_as_keras_weighs_it(rng, mask_shape, weight_shape):
    mask = tf.constant(rng.integers(0, 2, mask_shape).astype(bool))
    weights = None if weight_shape is None else tf.constant(rng.uniform(size=weight_shape))
    got = inputs.apply_mask(weights, mask, tf.float64)
    want = keras_apply_mask(weights, mask, dtype="float64", reduction="sum")
    assert got.shape == want.shape  # a mask [3] and weights [3, 1]: [3, 1], not [3, 3]
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_no_mask_leaves_the_weights_as_they_are():
    weights = tf.ones([3])
    assert inputs.apply_mask(weights, None, tf.float32) is weights
