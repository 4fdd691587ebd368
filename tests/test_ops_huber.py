"""The fused Huber ops (csrc/) against the NumPy float64 reference, and their loader.

    HuberPerSample = mean_j h;  HuberPerSampleGrad = grad / D * d h / d y_pred;
    HuberWeightedTotal = (sum w h, sum w);  HuberMeanWithGrad = (mean h, d mean / d y_pred),
    with h and its gradient as `fastcustom.reference` states them.

Values, gradients, shapes that break kernels, NaN/inf, weights, the same bits with
1 and 2 threads, model.fit against the XLA path, and the loader's fallbacks. Tests
of the ops themselves skip when the library is not built; the loader's do not.
"""

import os
import textwrap
import types
import warnings

import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom import reference
from fastcustom.ops import huber, library

# The reference warns about means over nothing and NaN arithmetic, as NumPy does.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:fastcustom.reference")

OPS = library.huber_ops()
needs_ops = pytest.mark.needs_ops   # conftest: skipped where the library is not loaded

@pytest.mark.skipif(os.environ.get("FASTCUSTOM_REQUIRE_OPS") != "1",
                    reason="set FASTCUSTOM_REQUIRE_OPS=1 where the op library must be built (CI)")
def test_op_library_is_built_and_loaded():
    assert library.status()["path"] == "fused-op", library.status()["reason"]


DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
# Relative tolerances against the float64 reference computed on the same (rounded)
# inputs. The kernels accumulate in float32 (float64 for float64), so a value
# returned in `dtype` is off by its final rounding -- 2^-11 for float16, 2^-8 for
# bfloat16 -- plus float32 rounding (~1e-7 per element, ~1e-6 over a long sum).
ELEMENT_RTOL = {tf.float16: 2e-3, tf.bfloat16: 1e-2, tf.float32: 1e-6, tf.float64: 1e-13}
MEAN_RTOL = {tf.float16: 2e-3, tf.bfloat16: 1e-2, tf.float32: 1e-5, tf.float64: 1e-12}
# Totals come back in float64: only the float32 accumulation remains.
TOTAL_RTOL = {tf.float16: 1e-5, tf.bfloat16: 1e-5, tf.float32: 1e-5, tf.float64: 1e-12}
# float16 gradients of long rows are subnormal (grad / D < 2^-14): absolute error <= 2^-25.
ELEMENT_ATOL = {tf.float16: 2.0**-24, tf.bfloat16: 0.0, tf.float32: 0.0, tf.float64: 0.0}

SHAPES = [(1, 1), (0, 4), (4, 0), (7,), (5, 1), (33, 3), (300, 16), (41, 8), (9, 17),
          (2, 3, 8), (2, 2, 3, 5), (2, 1_000_003)]


def f64(x):
    return tf.cast(x, tf.float64).numpy()


def make_pair(rng, shape, dtype):
    """y_true, y_pred in `dtype`, spread over both Huber branches."""
    return (tf.cast(rng.standard_normal(shape) * 2.0, dtype),
            tf.cast(rng.standard_normal(shape) * 2.0, dtype))


def threshold_of(value):
    return tf.constant(value, tf.float64)


def reference_totals(y_true, y_pred, threshold, weights=None):
    metric = reference.StreamingHuberMean(threshold)
    metric.update(y_true, y_pred, weights)
    return metric.total, metric.count


def dtype_id(dtype):
    return dtype.name


# ----------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------
@needs_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_per_sample_matches_reference(rng, shape, dtype):
    y_true, y_pred = make_pair(rng, shape, dtype)
    loss = OPS.huber_per_sample(y_true, y_pred, threshold_of(1.5))
    assert loss.dtype == dtype and loss.shape == shape[:-1]
    expected = reference.huber(f64(y_true), f64(y_pred), 1.5)
    np.testing.assert_allclose(f64(loss), expected, rtol=MEAN_RTOL[dtype])


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradient_matches_reference(rng, shape, dtype):
    y_true, y_pred = make_pair(rng, shape, dtype)
    upstream = tf.cast(rng.standard_normal(shape[:-1]), dtype)
    grad = OPS.huber_per_sample_grad(y_true, y_pred, threshold_of(0.5), upstream)
    assert grad.dtype == dtype and grad.shape == shape
    expected = reference.huber_grad_pred(f64(y_true), f64(y_pred), f64(upstream), 0.5)
    np.testing.assert_allclose(f64(grad), expected, rtol=ELEMENT_RTOL[dtype],
                               atol=ELEMENT_ATOL[dtype])


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("weighting", ["none", "per-row", "per-element"])
@pytest.mark.parametrize("shape", [(6, 5), (0, 3), (4, 0), (1, 1), (5, 1), (513, 16),
                                   (70, 4099), (2, 1_000_003)], ids=str)
def test_weighted_total_matches_reference(rng, shape, weighting, dtype):
    y_true, y_pred = make_pair(rng, shape, dtype)
    weight_shape = {"none": None, "per-row": shape[:-1], "per-element": shape}[weighting]
    weights = None
    flat = tf.zeros([0], dtype)
    if weight_shape is not None:
        weights = tf.cast(rng.uniform(0.0, 2.0, weight_shape) * (rng.random(weight_shape) > 0.2),
                          dtype)
        flat = tf.reshape(weights, [-1])
    total, count = OPS.huber_weighted_total(y_true, y_pred, threshold_of(1.0), flat)
    assert total.dtype == count.dtype == tf.float64
    expected_total, expected_count = reference_totals(
        f64(y_true), f64(y_pred), 1.0, None if weights is None else f64(weights))
    np.testing.assert_allclose(total.numpy(), expected_total, rtol=TOTAL_RTOL[dtype])
    np.testing.assert_allclose(count.numpy(), expected_count, rtol=TOTAL_RTOL[dtype])


@needs_ops
@pytest.mark.parametrize("threshold", [0.3, 1.0, 2.5])
def test_thresholds(rng, threshold):
    y_true, y_pred = make_pair(rng, (64, 16), tf.float32)
    loss = OPS.huber_per_sample(y_true, y_pred, threshold_of(threshold))
    np.testing.assert_allclose(loss.numpy(), reference.huber(f64(y_true), f64(y_pred), threshold),
                               rtol=1e-5)


@needs_ops
def test_sliced_inputs(rng):
    base_true = rng.standard_normal((40, 37)).astype(np.float32) * 2
    base_pred = rng.standard_normal((40, 37)).astype(np.float32) * 2
    slices = [np.s_[:, ::2], np.s_[1:-1, 3:], np.s_[::3, 5:30:4]]
    for index in slices:
        for y_true, y_pred in [(base_true[index], base_pred[index]),  # NumPy views
                               (tf.constant(base_true)[index], tf.constant(base_pred)[index])]:
            t64, p64 = f64(y_true), f64(y_pred)
            np.testing.assert_allclose(OPS.huber_per_sample(y_true, y_pred, threshold_of(1.0)).numpy(),
                                       reference.huber(t64, p64), rtol=1e-5)
            upstream = np.ones(t64.shape[:-1], np.float32)
            np.testing.assert_allclose(
                OPS.huber_per_sample_grad(y_true, y_pred, threshold_of(1.0), upstream).numpy(),
                reference.huber_grad_pred(t64, p64, upstream), rtol=1e-6)
    transposed = (tf.transpose(base_true), tf.transpose(base_pred))
    np.testing.assert_allclose(OPS.huber_per_sample(*transposed, threshold_of(1.0)).numpy(),
                               reference.huber(base_true.T, base_pred.T), rtol=1e-5)


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("depth", [3, 16, 17, 5000])
def test_nan_and_inf_propagate_like_reference(rng, depth, dtype):
    y_true, y_pred = (f64(x) for x in make_pair(rng, (37, depth), dtype))
    for row, (true_value, pred_value) in enumerate(
            [(np.nan, 0.0), (np.inf, 0.0), (-np.inf, 1.0), (np.inf, np.inf), (0.0, -np.inf)]):
        y_true[row * 7, row % depth], y_pred[row * 7, row % depth] = true_value, pred_value
    t, p = tf.cast(y_true, dtype), tf.cast(y_pred, dtype)
    upstream = np.ones(37)
    np.testing.assert_allclose(f64(OPS.huber_per_sample(t, p, threshold_of(1.0))),
                               reference.huber(y_true, y_pred), rtol=MEAN_RTOL[dtype])
    np.testing.assert_allclose(
        f64(OPS.huber_per_sample_grad(t, p, threshold_of(1.0), tf.cast(upstream, dtype))),
        reference.huber_grad_pred(y_true, y_pred, upstream), rtol=ELEMENT_RTOL[dtype],
        atol=ELEMENT_ATOL[dtype])
    total, count = OPS.huber_weighted_total(t, p, threshold_of(1.0), tf.zeros([0], dtype))
    assert np.isnan(total.numpy()) and np.isnan(reference_totals(y_true, y_pred, 1.0)[0])
    assert count.numpy() == 37 * depth


@needs_ops
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=dtype_id)
@pytest.mark.parametrize("depth", [3, 8, 16, 17])
def test_a_row_gives_the_same_bits_wherever_it_sits(rng, depth, dtype):
    """Rows are reduced in vector batches and one at a time: both in one order."""
    rows = tf.cast(rng.standard_normal((5, depth)) * 2, dtype)
    y_true = tf.tile(rows, [1003, 1])
    y_pred = tf.tile(rows[::-1] * 0.5, [1003, 1])
    loss = OPS.huber_per_sample(y_true, y_pred, threshold_of(1.0)).numpy().reshape(1003, 5)
    np.testing.assert_array_equal(loss, np.broadcast_to(loss[0], loss.shape))


@needs_ops
@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8, 13, 16])
def test_short_rows_are_summed_in_the_documented_tree(rng, depth):
    """float32 rows of D <= 16 (huber_kernels_cpu.cc): h in float32, padded with zeros to
    P = bit_ceil(D) lanes, added pairwise in halves (lane i += lane i + P/2, ..., 1), the
    sum divided by D; the same bits whatever the machine's vector width."""
    y_true = (rng.standard_normal((1001, depth)) * 3).astype(np.float32)
    y_pred = (rng.standard_normal((1001, depth)) * 3).astype(np.float32)
    a = np.abs(y_true - y_pred)
    q = np.minimum(a, np.float32(1.0))
    lanes = q * (a - np.float32(0.5) * q)
    width = 1 << (depth - 1).bit_length()
    lanes = np.pad(lanes, [(0, 0), (0, width - depth)])
    while width > 1:
        width //= 2
        lanes = lanes[:, :width] + lanes[:, width:2 * width]
    loss = OPS.huber_per_sample(tf.constant(y_true), tf.constant(y_pred), threshold_of(1.0))
    np.testing.assert_array_equal(loss.numpy(), lanes[:, 0] / np.float32(depth))


@needs_ops
def test_bad_inputs_raise():
    threshold = threshold_of(1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[2,3\].*\[2,4\]"):
        OPS.huber_per_sample(tf.zeros([2, 3]), tf.zeros([2, 4]), threshold)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank >= 1"):
        OPS.huber_per_sample(tf.constant(1.0), tf.constant(2.0), threshold)
    with pytest.raises(tf.errors.InvalidArgumentError, match="scalar"):
        OPS.huber_per_sample(tf.zeros([2, 3]), tf.zeros([2, 3]), tf.ones([2], tf.float64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="weights"):
        OPS.huber_weighted_total(tf.zeros([2, 3]), tf.zeros([2, 3]), threshold, tf.ones([5]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="grad"):
        OPS.huber_per_sample_grad(tf.zeros([2, 3]), tf.zeros([2, 3]), threshold, tf.ones([3]))


@needs_ops
def test_shape_functions():
    threshold = threshold_of(1.0)
    spec = tf.TensorSpec([None, 5, 16], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def shapes(y_true, y_pred):
        loss = OPS.huber_per_sample(y_true, y_pred, threshold)
        grad = OPS.huber_per_sample_grad(y_true, y_pred, threshold, loss)
        total, count = OPS.huber_weighted_total(y_true, y_pred, threshold, tf.zeros([0]))
        return loss, grad, total, count

    loss, grad, total, count = shapes.get_concrete_function().structured_outputs
    assert loss.shape.as_list() == [None, 5] and grad.shape.as_list() == [None, 5, 16]
    assert total.shape.rank == count.shape.rank == 0
    with pytest.raises(ValueError, match="must be equal"):
        tf.function(lambda: OPS.huber_per_sample(tf.zeros([2, 3]), tf.zeros([2, 4]), threshold)
                    ).get_concrete_function()


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------
@needs_ops
def test_tape_gradient_is_the_fused_gradient(rng):
    y_true = tf.Variable(rng.standard_normal((12, 6)) * 2, dtype=tf.float32)
    y_pred = tf.Variable(rng.standard_normal((12, 6)) * 2, dtype=tf.float32)
    upstream = rng.standard_normal(12)
    with tf.GradientTape() as tape:
        loss = huber.huber_per_sample(y_true, y_pred, 0.7)
        weighted = tf.reduce_sum(loss * upstream.astype(np.float32))
    grad_true, grad_pred = tape.gradient(weighted, [y_true, y_pred])
    expected = reference.huber_grad_pred(y_true.numpy(), y_pred.numpy(), upstream, 0.7)
    np.testing.assert_allclose(grad_pred.numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(grad_true.numpy(), -grad_pred.numpy())

    @tf.function
    def gradient(y_true, y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            loss = huber.huber_per_sample(y_true, y_pred, 0.7)
        return tape.gradient(loss, y_pred)

    graph = gradient.get_concrete_function(y_true.read_value(), y_pred.read_value()).graph
    assert "FastCustom>HuberPerSampleGrad" in {op.type for op in graph.get_operations()}


@needs_ops
def test_gradient_of_y_true_only_when_requested(rng):
    from fastcustom.ops import huber_gradients

    y_true, y_pred = make_pair(rng, (4, 3), tf.float32)
    op = types.SimpleNamespace(inputs=[y_true, y_pred, threshold_of(1.0)], skip_input_indices=(0,))
    grad_true, grad_pred, grad_delta = huber_gradients._huber_per_sample_grad(op, tf.ones([4]))
    assert grad_true is None and grad_delta is None
    op.skip_input_indices = None
    grad_true, grad_pred, grad_delta = huber_gradients._huber_per_sample_grad(op, tf.ones([4]))
    np.testing.assert_array_equal(grad_true.numpy(), -grad_pred.numpy())
    assert grad_delta is None


@needs_ops
def test_gradient_agrees_with_finite_differences(rng):
    y_true = rng.standard_normal((3, 5)) * 2
    y_pred = y_true + rng.choice([-1, 1], (3, 5)) * rng.uniform(0.05, 3.0, (3, 5))
    # Keep the finite differences away from the kink at |e| = threshold.
    y_pred = np.where(np.abs(np.abs(y_pred - y_true) - 1.0) < 0.01, y_true + 0.5, y_pred)
    threshold = threshold_of(1.0)
    for wrt in ("y_true", "y_pred"):
        def loss(x):
            return OPS.huber_per_sample(*((x, y_pred) if wrt == "y_true" else (y_true, x)), threshold)

        theoretical, numerical = tf.test.compute_gradient(
            loss, [y_true if wrt == "y_true" else y_pred], delta=1e-6)
        np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-7)


@needs_ops
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=dtype_id)
def test_second_derivatives_match_the_xla_path(rng, dtype):
    # d/d(y_true, y_pred, weights) of <d loss/d y_pred, sin(y_pred)>, through the fused
    # gradient op's own gradient, against autodiff of the TF-ops formula; with errors
    # exactly at +-threshold (the quadratic branch holds there) and a NaN.
    y_true, y_pred = (rng.standard_normal((6, 5)) * 2 for _ in range(2))
    y_pred[0, :2] = y_true[0, :2] + [0.75, -0.75]
    y_pred[1, 2] = np.nan

    def second_derivatives(per_sample):
        variables = [tf.Variable(tf.constant(v, dtype)) for v in
                     (y_true, y_pred, rng.standard_normal(6))]
        true_var, pred_var, weights = variables
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = tf.reduce_sum(per_sample(true_var, pred_var, 0.75) * weights)
            slope = inner.gradient(loss, pred_var)
            directional = tf.reduce_sum(slope * tf.sin(pred_var))
        return [g.numpy() for g in outer.gradient(directional, variables)]

    state = rng.bit_generator.state
    fused = second_derivatives(huber.huber_per_sample)
    rng.bit_generator.state = state  # the same weights for both
    xla = second_derivatives(huber.huber_per_sample_tf)
    for got, expected, name in zip(fused, xla, ("y_true", "y_pred", "weights")):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=name)
    assert np.isnan(fused[1][1, 2]) and np.count_nonzero(fused[1]) > 10


# ----------------------------------------------------------------------------
# The mean with its gradient in one pass (HuberLoss under a tape)
# ----------------------------------------------------------------------------
@needs_ops
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=dtype_id)
@pytest.mark.parametrize("shape", [(1, 1), (0, 4), (4, 0), (33, 3), (300, 16), (9, 17),
                                   (2, 3, 8), (3, 70_001)], ids=str)
def test_mean_with_grad_matches_reference(rng, shape, dtype):
    y_true, y_pred = make_pair(rng, shape, dtype)
    mean, grad = OPS.huber_mean_with_grad(y_true, y_pred, threshold_of(0.8))
    assert mean.dtype == grad.dtype == dtype and mean.shape == () and grad.shape == shape
    rows = int(np.prod(shape[:-1]))
    if rows == 0:   # Keras's sum_over_batch_size of no sample
        assert mean.numpy() == 0
    else:
        np.testing.assert_allclose(f64(mean), reference.huber(f64(y_true), f64(y_pred), 0.8).mean(),
                                   rtol=MEAN_RTOL[dtype])
    upstream = np.full(shape[:-1], 1.0 / max(rows, 1))
    np.testing.assert_allclose(f64(grad), reference.huber_grad_pred(f64(y_true), f64(y_pred),
                                                                    upstream, 0.8),
                               rtol=2 * ELEMENT_RTOL[dtype])
    if rows and shape[-1]:  # the same chunks in the same order as the unweighted total
        total, count = OPS.huber_weighted_total(y_true, y_pred, threshold_of(0.8), tf.zeros([0], dtype))
        assert mean.numpy() == tf.cast(total / count, dtype).numpy()


@needs_ops
def test_mean_grad_scales_the_stored_gradient(rng):
    y_true, y_pred = make_pair(rng, (50, 7), tf.float32)
    mean, stored = OPS.huber_mean_with_grad(y_true, y_pred, threshold_of(1.0))
    for scale in (1.0, -2.5, 0.0):
        got = OPS.huber_mean_grad(y_true, y_pred, threshold_of(1.0), stored, tf.constant(scale))
        np.testing.assert_array_equal(got.numpy(), scale * stored.numpy())
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        OPS.huber_mean_grad(y_true, y_pred, threshold_of(1.0), stored, tf.ones([2]))


def op_types(fn, *args):
    return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


@needs_ops
def test_loss_under_a_tape_is_one_pass_and_the_forward_alone_writes_no_gradient(rng):
    y_true, y_pred = make_pair(rng, (64, 16), tf.float32)
    loss = fastcustom.HuberLoss(1.3)

    def loss_and_grad(y_true, y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            value = loss(y_true, y_pred)
        return value, tape.gradient(value, y_pred)

    graph_ops = op_types(loss_and_grad, y_true, y_pred)
    assert {"FastCustom>HuberMeanWithGrad", "FastCustom>HuberMeanGrad"} <= graph_ops
    assert not {"FastCustom>HuberPerSample", "FastCustom>HuberPerSampleGrad"} & graph_ops
    forward_ops = op_types(lambda t, p: loss(t, p), y_true, y_pred)
    assert "FastCustom>HuberPerSample" in forward_ops
    assert "FastCustom>HuberMeanWithGrad" not in forward_ops

    with fastcustom.use_path("xla"):
        expected = loss_and_grad(y_true, y_pred)
    for got in (loss_and_grad(y_true, y_pred), tf.function(loss_and_grad)(y_true, y_pred)):
        np.testing.assert_allclose(got[0].numpy(), expected[0].numpy(), rtol=1e-6)
        np.testing.assert_allclose(got[1].numpy(), expected[1].numpy(), rtol=1e-6, atol=1e-12)


@needs_ops
def test_loss_under_a_tape_with_weights_or_scaled_matches_the_xla_path(rng):
    y_true = tf.Variable(make_pair(rng, (20, 5), tf.float32)[0])
    y_pred = tf.Variable(make_pair(rng, (20, 5), tf.float32)[1])
    weights = tf.constant(rng.uniform(0, 2, 20), tf.float32)
    loss = fastcustom.HuberLoss(0.9)

    def grads():
        with tf.GradientTape() as tape:
            value = 3.0 * loss(y_true, y_pred) + loss(y_true, y_pred, sample_weight=weights)
        return [value] + tape.gradient(value, [y_true, y_pred])

    fused = grads()
    with fastcustom.use_path("xla"):
        xla = grads()
    for got, expected in zip(fused, xla):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-9)


@needs_ops
def test_tf_gradients_of_mean_with_grad_in_a_graph_is_its_stored_gradient(rng):
    y_true, y_pred = make_pair(rng, (30, 4), tf.float32)

    @tf.function
    def symbolic(y_true, y_pred):
        mean, stored = OPS.huber_mean_with_grad(y_true, y_pred, threshold_of(1.0))
        return tf.gradients(2.0 * mean, [y_true, y_pred]) + [stored]

    grad_true, grad_pred, stored = symbolic(y_true, y_pred)
    np.testing.assert_array_equal(grad_pred.numpy(), 2.0 * stored.numpy())
    np.testing.assert_array_equal(grad_true.numpy(), -grad_pred.numpy())


@needs_ops
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=dtype_id)
def test_second_derivatives_of_the_mean_match_the_xla_path(rng, dtype):
    y_true, y_pred = (rng.standard_normal((6, 5)) * 2 for _ in range(2))
    y_pred[0, :2] = y_true[0, :2] + [0.75, -0.75]   # at +-threshold: the quadratic branch
    loss = fastcustom.HuberLoss(0.75, dtype=dtype.name)

    def second_derivatives():
        true_var, pred_var = (tf.Variable(tf.constant(v, dtype)) for v in (y_true, y_pred))
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = 2.0 * loss(true_var, pred_var)
            slope = inner.gradient(value, pred_var)
            directional = tf.reduce_sum(slope * tf.sin(pred_var))
        return [g.numpy() for g in outer.gradient(directional, [true_var, pred_var])]

    fused = second_derivatives()
    with fastcustom.use_path("xla"):
        xla = second_derivatives()
    for got, expected, name in zip(fused, xla, ("y_true", "y_pred")):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9, err_msg=name)
    assert np.count_nonzero(fused[1]) > 10


# ----------------------------------------------------------------------------
# Where the fused op is taken
# ----------------------------------------------------------------------------
def fused_in_graph(fn, *args):
    """Whether tracing `fn` put a FastCustom op in its graph (not the XLA path's call)."""
    graph = tf.function(fn).get_concrete_function(*args).graph
    return any(op.type.startswith("FastCustom>") for op in graph.get_operations())


@needs_ops
@pytest.mark.parametrize("gpu_kernels", [False, True], ids=["cpu-only-library", "cuda-library"])
@pytest.mark.parametrize("sees_gpu", [False, True], ids=["no-gpu", "gpu-visible"])
def test_fused_op_only_where_the_library_has_kernels(monkeypatch, rng, gpu_kernels, sees_gpu):
    # As if the library had (not) been built with CUDA kernels and TF saw (no) GPU.
    real_status = library.status()
    monkeypatch.setattr(library, "status", lambda: dict(real_status, gpu=gpu_kernels))
    monkeypatch.setattr(library, "tensorflow_sees_a_gpu", lambda: sees_gpu)
    y_true, y_pred = make_pair(rng, (16, 4), tf.float32)

    def unplaced(y_true, y_pred):
        return huber.huber_per_sample(y_true, y_pred), huber.huber_weighted_total(y_true, y_pred)

    def on_cpu(y_true, y_pred):
        with tf.device("/CPU:0"):
            return unplaced(tf.identity(y_true), tf.identity(y_pred))

    # Unplaced graph tensors go wherever TF puts the op: on a visible GPU, where a
    # CPU-only library would have TF copy them to the host and back, so XLA takes them.
    assert fused_in_graph(unplaced, y_true, y_pred) == (gpu_kernels or not sees_gpu)
    assert fused_in_graph(on_cpu, y_true, y_pred)
    with fastcustom.use_path("op"):  # eager tensors on the CPU: the fused op, or it raises
        huber.huber_per_sample(y_true, y_pred), huber.huber_weighted_total(y_true, y_pred)
    for fn in (unplaced, on_cpu):
        per_sample, (total, count) = tf.function(fn)(y_true, y_pred)
        expected = reference.huber(f64(y_true), f64(y_pred))
        np.testing.assert_allclose(per_sample.numpy(), expected, rtol=MEAN_RTOL[tf.float32])
        np.testing.assert_allclose(total.numpy() / count.numpy(), expected.mean(), rtol=1e-5)


@needs_ops
def test_a_tf_function_first_traced_inside_xla_takes_the_xla_path(rng):
    # The dispatch asks at trace time: a nested tf.function traced for the first
    # time inside a jit_compile=True function is traced for XLA, so it compiles
    # (with the fused op in it, the call would fail: "Detected unsupported operations").
    @tf.function
    def inner(y_true, y_pred):
        return huber.huber_per_sample(y_true, y_pred), huber.huber_weighted_total(y_true, y_pred)

    y_true, y_pred = make_pair(rng, (16, 4), tf.float32)
    per_sample, (total, count) = tf.function(inner, jit_compile=True)(y_true, y_pred)
    expected = reference.huber(f64(y_true), f64(y_pred))
    np.testing.assert_allclose(per_sample.numpy(), expected, rtol=MEAN_RTOL[tf.float32])
    np.testing.assert_allclose(total.numpy() / count.numpy(), expected.mean(), rtol=1e-5)


# ----------------------------------------------------------------------------
# Runs in fresh interpreters: thread counts, and the XLA path
# ----------------------------------------------------------------------------
FIT_SCRIPT = textwrap.dedent("""
    import json
    import keras, numpy as np
    from fastcustom.ops import huber, library

    def loss(y_true, y_pred):
        return huber.huber_per_sample(y_true, y_pred, 1.0)

    rng = np.random.default_rng(3)
    x = rng.standard_normal((256, 8)).astype("float32")
    y = (x @ rng.standard_normal((8, 3)) * 2).astype("float32")
    result = {"path": library.status()["path"]}
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, jit_compile=jit)
        history = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
        result[f"jit={jit}"] = history.history["loss"]
    print(json.dumps(result))
""")


# OP_HASH_SCRIPT (argv[1]) run with the arguments after it, its digests printed with the
# variant of the CPU kernels that computed them.
WITH_CPU_KERNELS = """
import contextlib, io, json, sys
script = sys.argv.pop(1)
with contextlib.redirect_stdout(io.StringIO()) as output:
    exec(script)
from fastcustom.ops import library
digests = json.loads(output.getvalue().strip().splitlines()[-1])
print(json.dumps(dict(digests, cpu_kernels=library.status()["cpu_kernels"])))
"""


@needs_ops
def test_same_bits_with_one_and_two_threads(run_scripts, op_hash_script):
    one, two = run_scripts((op_hash_script, ["1"], {}), (op_hash_script, ["2"], {}))
    assert (one.pop("threads"), two.pop("threads")) == (1, 2)
    assert one == two


@needs_ops
@pytest.mark.long
def test_same_bits_from_the_avx2_and_the_avx512_kernels(run_scripts, op_hash_script):
    """A portable library's AVX2 kernels (FASTCUSTOM_CPU_ISA=avx2) give the AVX-512 kernels'
    bits (tests/test_cpu_core.py checks the same without TensorFlow, in seconds); on a CPU
    without AVX-512 both runs are the AVX2 kernels."""
    chosen, avx2 = run_scripts((WITH_CPU_KERNELS, [op_hash_script, "2"], {}),
                               (WITH_CPU_KERNELS, [op_hash_script, "2"], {"FASTCUSTOM_CPU_ISA": "avx2"}))
    variants = chosen.pop("cpu_kernels"), avx2.pop("cpu_kernels")
    if variants[0] in ("avx2", "avx512"):  # a portable x86-64 library
        assert variants[1] == "avx2"
    assert chosen == avx2


@needs_ops
def test_model_fit_matches_the_xla_path(run_scripts):
    fused, xla = run_scripts((FIT_SCRIPT, [], {}), (FIT_SCRIPT, [], {"FASTCUSTOM_DISABLE_OPS": "1"}))
    assert (fused.pop("path"), xla.pop("path")) == ("fused-op", "xla")
    for key in ("jit=False", "jit=True"):
        np.testing.assert_allclose(fused[key], xla[key], rtol=1e-5)
        assert np.all(np.diff(fused[key]) < 0)  # it trains


# ----------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------
@pytest.fixture
def fresh_loader(monkeypatch):
    """The loader as if nothing was loaded yet; the real state comes back afterwards."""
    monkeypatch.setattr(library, "_loaded", None)
    monkeypatch.delenv("FASTCUSTOM_DISABLE_OPS", raising=False)
    monkeypatch.delenv("FASTCUSTOM_OPS_LIBRARY", raising=False)
    return monkeypatch


def test_disable_ops_forces_the_xla_path(fresh_loader, rng):
    fresh_loader.setenv("FASTCUSTOM_DISABLE_OPS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert library.huber_ops() is None
        status = library.status()
    assert status["path"] == "xla" and status["library"] is None
    assert "FASTCUSTOM_DISABLE_OPS" in status["reason"]
    y_true, y_pred = make_pair(rng, (8, 5), tf.float32)
    np.testing.assert_allclose(huber.huber_per_sample(y_true, y_pred).numpy(),
                               reference.huber(f64(y_true), f64(y_pred)), rtol=1e-5)


@pytest.mark.parametrize("content", [None, b"not an ELF file"], ids=["missing", "bogus"])
def test_unloadable_library_warns_once_and_falls_back(fresh_loader, tmp_path, content):
    path = tmp_path / "_huber_ops.so"
    if content is not None:
        path.write_bytes(content)
    fresh_loader.setenv("FASTCUSTOM_OPS_LIBRARY", str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert library.huber_ops() is None
        assert library.huber_ops() is None
        status = library.status()
    assert [str(w.message).count(str(path)) > 0 for w in caught] == [True]
    assert status["path"] == "xla" and status["library"] is None and status["dtypes"] == []
    assert ("not built" if content is None else "not an ELF file") in status["reason"]


@needs_ops
def test_first_load_inside_a_traced_function(fresh_loader):
    @tf.function
    def traced():
        assert library.huber_ops() is not None
        return huber.huber_per_sample(tf.ones([2, 3]), tf.zeros([2, 3]))

    np.testing.assert_allclose(traced().numpy(), [0.5, 0.5])
    assert library.status()["path"] == "fused-op"


@needs_ops
@pytest.mark.parametrize("sees_gpu", [False, True], ids=["no-gpu", "gpu-visible"])
def test_a_library_without_gpu_kernels_is_not_tried_on_a_gpu(fresh_loader, sees_gpu):
    if library.status()["gpu"]:
        pytest.skip("this build has CUDA kernels (test_cuda_build tries those)")
    fresh_loader.setattr(library, "tensorflow_sees_a_gpu", lambda: sees_gpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        status = library.status()
    assert status["path"] == "fused-op" and status["gpu"] is False
    assert status["reason"] == "op library loaded"


@needs_ops
def test_status_of_the_loaded_library():
    status = library.status()
    assert status["path"] == "fused-op"
    assert os.path.samefile(status["library"], library.library_path())
    assert status["dtypes"] == ["bfloat16", "float16", "float32", "float64"]
    assert isinstance(status["gpu"], bool)  # GPU kernels compiled in
    assert status["cpu_kernels"] in ("avx512", "avx2", "native", "generic")
