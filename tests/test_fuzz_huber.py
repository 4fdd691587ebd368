"""Differential fuzzer: `huber`, `HuberLoss`, `HuberMetric` and their gradients, on the
fused-op path and the XLA path in one process, against `fastcustom.reference`.

Hypothesis draws the dtype (f16, bf16, f32, f64), the shape (rank 1-4 from a fixed pool, zero-sized
axes, sometimes long rows up to 2,000,000), the threshold (1e-30 to 1e30), the
values (normal at scales 1e-30..1e30, with +-0, NaN, +-inf, huge and tiny values
planted), the weights (none, per row, per element, broadcast, zero, negative) and
the mode (eager, or inside a shared `tf.function(reduce_retracing=True)` whose
shapes relax to unknown dims and ranks as examples arrive). The edge rules are the
reference's (`fastcustom.reference.huber`'s docstring).

Profiles (registered in tests/conftest.py): `pytest tests` runs "fastcustom-quick", 60
examples per test, derandomized; `pytest tests --long` (CI) "fastcustom-ci", 1,000 per test,
derandomized, so CI is reproducible (FUZZ_EXAMPLES changes either count);
HYPOTHESIS_PROFILE=nightly runs 5,000 per test with fresh randomness and prints the seed of
any failure.

Tolerances, relative to the float64 reference on the inputs as given, and why:
  per-sample values (returned in the input dtype): one rounding to the dtype plus the
  op's float32 accumulation -- float16 2e-3 (2^-11 rounding), bfloat16 1e-2 (2^-8),
  float32 1e-6, float64 1e-12; values below the dtype's normal range are compared
  absolutely (twice its smallest normal: TensorFlow runs its CPU kernels with
  denormals flushed to zero, see the reference's rules);
  gradients: the same per element;
  metric totals (float64): 1e-6 of sum(|w| h) (weights may cancel, so not of |total|);
  HuberLoss: the per-sample values as above, then Keras's float32 reduction: 1e-5.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given
from hypothesis import strategies as st

import fastcustom
from fastcustom import reference
from fastcustom.ops import library

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.skipif(library.huber_ops() is None,
                       reason=f"the fused op is needed to compare paths: "
                              f"{library.status()['reason']}"),
]

PATHS = ("op", "xla")
DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
RTOL = {tf.float16: 2e-3, tf.bfloat16: 1e-2, tf.float32: 1e-6, tf.float64: 1e-12}
TOTAL_RTOL = 1e-6
LOSS_RTOL = 1e-5
THRESHOLDS = (1e-30, 1e-7, 0.1, 0.5, 1.0, 1.5, 3.0, 1e4, 1.9e19, 1e30)
SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 3e38, -3e38, 2.5e19, 1e-30,
            1e-42, 60000.0, -60000.0)
# A fixed pool of shapes: the XLA path compiles once per shape (about a second here),
# so examples reuse them; a long row now and then.
SMALL_SHAPES = ((1,), (5,), (0,), (1, 1), (3, 5), (4, 0), (0, 3), (7, 16), (2, 17),
                (2, 3, 5), (2, 0, 3), (2, 1, 3, 4))
LONG_SHAPES = ((2_000_000,), (1, 2_000_000), (4, 100_003), (3, 4097))


# ----------------------------------------------------------------------------
# What hypothesis draws
# ----------------------------------------------------------------------------
@st.composite
def shapes(draw, min_rank=1):
    pool = LONG_SHAPES if draw(st.integers(0, 29)) == 0 else SMALL_SHAPES
    return draw(st.sampled_from([s for s in pool if len(s) >= min_rank]))


@st.composite
def cases(draw, min_rank=1, non_empty=False):
    """(dtype, y_true, y_pred as float64 arrays holding dtype values, threshold)."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(shapes(min_rank))
    if non_empty:
        assume(np.prod(shape[:-1]) > 0)
    threshold = draw(st.sampled_from(THRESHOLDS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from((1e-30, 1e-3, 1.0, 1.0, 1e3, 1e19, 1e30)))
    y_true = rng.standard_normal(shape) * scale
    kind = draw(st.sampled_from(("independent", "close", "at-threshold")))
    if kind == "close":
        y_pred = y_true + rng.standard_normal(shape) * threshold
    elif kind == "at-threshold":
        y_pred = y_true + threshold * rng.choice([-1.0, 1.0], shape)
    else:
        y_pred = rng.standard_normal(shape) * scale
    size = y_true.size
    for _ in range(draw(st.integers(0, 4)) if size else 0):
        where = draw(st.integers(0, size - 1))
        target = draw(st.sampled_from((y_true, y_pred)))
        target.reshape(-1)[where] = draw(st.sampled_from(SPECIALS))
    return dtype, as_dtype(y_true, dtype), as_dtype(y_pred, dtype), threshold


@st.composite
def weights_for(draw, shape, per_element=True):
    """None, or float32 weights of a shape Keras broadcasts against `shape`."""
    kinds = ["none", "per-row", "zero", "negative", "row-column"]
    if per_element:
        kinds += ["per-element", "broadcast"]
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "per-element":
        weight_shape = shape
    elif kind == "broadcast":  # per element, broadcast along axes of size 1
        weight_shape = tuple(d if draw(st.booleans()) else 1 for d in shape)
    elif kind == "row-column":  # per row, with a trailing axis of 1
        weight_shape = shape[:-1] + (1,)
    else:
        weight_shape = shape[:-1]
    low = -2.0 if kind == "negative" else 0.0
    values = rng.uniform(low, 3.0, weight_shape)
    if kind == "zero":
        values = np.zeros(weight_shape)
    return values.astype(np.float32)


def as_dtype(values, dtype):
    """float64 values holding exactly what `dtype` holds (the inputs as given)."""
    return tf.cast(tf.cast(values, dtype), tf.float64).numpy()


# ----------------------------------------------------------------------------
# Comparison by the reference's rules
# ----------------------------------------------------------------------------
def assert_matches(got, expected, dtype, rtol, what, atol=None):
    """`got` (any dtype) against the float64 reference rounded to `dtype`: NaN exactly
    where it is NaN, the same infinities (a finite value within rtol of the largest
    finite one may stand for an overflow), else within rtol (atol near underflow)."""
    got = tf.cast(got, tf.float64).numpy()
    expected = np.asarray(expected, np.float64)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    rounded = as_dtype(expected, dtype)
    info = tf.experimental.numpy.finfo(dtype.as_numpy_dtype) if dtype == tf.bfloat16 \
        else np.finfo(dtype.as_numpy_dtype)
    top = float(info.max) * (1 - rtol)
    atol = 2 * float(info.smallest_normal) + (atol or 0.0)
    bad = np.isnan(got) != np.isnan(rounded)
    for a, b in ((got, rounded), (rounded, got)):
        inf = np.isinf(a) & ~np.isnan(b)
        bad |= inf & ~((b == a) | ((np.sign(b) == np.sign(a)) & (np.abs(b) >= top)))
    finite = np.isfinite(got) & np.isfinite(rounded)
    bad |= finite & ~(np.abs(got - expected) <= atol + rtol * np.abs(expected))
    assert not bad.any(), (
        f"{what}: {np.count_nonzero(bad)} of {bad.size} differ; first at "
        f"{np.argwhere(bad)[0]}: got {got[bad][0]!r}, reference {expected[bad][0]!r}")


def f32_smallest_normal(n=2):
    return n * float(np.finfo(np.float32).smallest_normal)


# ----------------------------------------------------------------------------
# The same call on a chosen path, eagerly or in a shared relaxed tf.function
# ----------------------------------------------------------------------------
_FUNCTIONS = {}


def in_mode(mode, path, name, fn):
    """`fn` eagerly, or as the one reduce_retracing tf.function for (path, name): its
    traces relax to unknown dims and ranks as differently shaped examples arrive."""
    if mode == "eager":
        return fn
    key = (path, name)
    if key not in _FUNCTIONS:
        _FUNCTIONS[key] = tf.function(fn, reduce_retracing=True)
    return _FUNCTIONS[key]


def huber_and_gradient(y_true, y_pred, upstream, threshold):
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = fastcustom.huber(y_true, y_pred, threshold=threshold)
        weighted = tf.reduce_sum(tf.cast(loss, tf.float64) * upstream)
    return loss, tape.gradient(weighted, y_pred)


def huber_alone(y_true, y_pred, upstream, threshold):
    """The forward pass with no tape recording (the eager op path takes other kernels)."""
    return fastcustom.huber(y_true, y_pred, threshold=threshold), None


modes = st.sampled_from(("eager", "function"))
tapes = st.sampled_from(("tape", "no tape"))


# ----------------------------------------------------------------------------
# The fuzz tests
# ----------------------------------------------------------------------------
@given(case=cases(), mode=modes, tape=tapes, data=st.data())
def test_huber_and_its_gradient_follow_the_reference(case, mode, tape, data):
    dtype, y_true, y_pred, threshold = case
    rows = y_pred.shape[:-1]
    upstream = as_dtype(np.random.default_rng(y_true.size).uniform(-2, 2, rows), dtype)
    expected = reference.huber(y_true, y_pred, threshold)
    expected_grad = reference.huber_grad_pred(y_true, y_pred, upstream, threshold)
    for path in PATHS:
        t, p = tf.constant(y_true, dtype), tf.constant(y_pred, dtype)
        with fastcustom.use_path(path):
            fn = in_mode(mode, path, f"huber-{tape}",
                         huber_and_gradient if tape == "tape" else huber_alone)
            loss, grad = fn(t, p, tf.constant(upstream, tf.float64), threshold)
        assert loss.dtype == dtype
        assert_matches(loss, expected, dtype, RTOL[dtype], f"{path} huber ({mode}, {tape})")
        if tape == "tape":
            assert grad is not None and grad.dtype == dtype, f"{path} gradient ({mode}) dropped"
            assert_matches(grad, expected_grad, dtype, RTOL[dtype], f"{path} gradient ({mode})")


_METRICS = {}


def metric_updater(mode, path, threshold, dtype, weighted):
    """A fresh-state HuberMetric's update (returning total, count, result), eager or as
    a shared relaxed tf.function: one metric object per (path, threshold, dtype)."""
    key = (mode, path, threshold, dtype, weighted)
    if key not in _METRICS:
        metric = fastcustom.HuberMetric(threshold=threshold, dtype=dtype)

        def update(y_true, y_pred, weights):
            metric.update_state(y_true, y_pred, sample_weight=weights)
            return tf.identity(metric.total), tf.identity(metric.count), metric.result()
        _METRICS[key] = (metric, update if mode == "eager" else
                         tf.function(update, reduce_retracing=True))
    metric, update = _METRICS[key]
    metric.reset_state()
    return update


@given(case=cases(), mode=modes, data=st.data())
def test_huber_metric_follows_the_reference(case, mode, data):
    dtype, y_true, y_pred, threshold = case
    weights = data.draw(weights_for(y_pred.shape))
    metric_dtype = data.draw(st.sampled_from(("float32", dtype.name)))
    # The metric casts inputs and weights to its dtype: the reference sees them so.
    m_dtype = tf.as_dtype(metric_dtype)
    t, p = as_dtype(y_true, m_dtype), as_dtype(y_pred, m_dtype)
    w = None if weights is None else as_dtype(weights, m_dtype)
    ref = reference.StreamingHuberMean(threshold)
    ref.update(t, p, w)
    scale_w = np.ones(np.shape(t)) if w is None else np.abs(w)
    with np.errstate(all="ignore"):
        mass = float(np.sum(reference.huber_elementwise(t, p, threshold) *
                            np.broadcast_to(scale_w.reshape(scale_w.shape + (1,) * (
                                t.ndim - scale_w.ndim)), t.shape)))
    for path in PATHS:
        fn = metric_updater(mode, path, threshold, metric_dtype, weights is not None)
        with fastcustom.use_path(path):
            args = (tf.constant(y_true, dtype), tf.constant(y_pred, dtype))
            total, count, result = fn(*args, None if weights is None else tf.constant(weights))
        what = f"{path} HuberMetric ({mode}, weights {None if w is None else w.shape})"
        # The op sums float inputs in float32: each h below float32's normal range may
        # count as 0 (flush to zero), invisible in the float32 result.
        flushed = f32_smallest_normal() * float(np.sum(scale_w)) * t.shape[-1] \
            if m_dtype != tf.float64 and t.ndim else 0.0
        assert_matches(total, ref.total, tf.float64, TOTAL_RTOL, what + " total",
                       atol=(TOTAL_RTOL * mass if np.isfinite(mass) else 0.0) + flushed)
        assert_matches(count, ref.count, tf.float64, 1e-6, what + " count",
                       atol=1e-6 * float(np.sum(np.abs(w))) if w is not None else 0.0)
        expected = np.divide(float(total), float(count)) if float(count) else 0.0
        assert_matches(result, expected, m_dtype, RTOL[m_dtype], what + " result")


_LOSSES = {}


def loss_and_gradient(threshold, loss_dtype, tape):
    """(HuberLoss(threshold, dtype=loss_dtype)(y_true, y_pred, w), its gradient or None)
    for one loss object per (threshold, dtype), with a tape recording or none."""
    key = (threshold, loss_dtype, tape)
    if key not in _LOSSES:
        loss_fn = fastcustom.HuberLoss(threshold=threshold, dtype=loss_dtype)

        def call(y_true, y_pred, weights):
            if tape == "no tape":
                return loss_fn(y_true, y_pred, sample_weight=weights), None
            with tf.GradientTape() as recorder:
                recorder.watch(y_pred)
                value = loss_fn(y_true, y_pred, sample_weight=weights)
            return value, recorder.gradient(value, y_pred)
        _LOSSES[key] = call
    return _LOSSES[key]


@given(case=cases(min_rank=2, non_empty=True), mode=modes, tape=tapes, data=st.data())
def test_huber_loss_follows_the_reference(case, mode, tape, data):
    # The loss computes in its own dtype: float32 (the default) or the inputs' dtype.
    # Without weights: the exact mean of the per-sample values, rounded once to it.
    # With weights, Keras's own rules apply around them: its reduction in the loss's
    # dtype (sum(w * loss) / number of per-sample values: inf where that sum overflows,
    # NaN where partial sums of both signs do; in float16 / bfloat16 a rounding per
    # product and per level of the sum's tree) and its weight broadcasting (weights per
    # row here).
    dtype, y_true, y_pred, threshold = case
    weights = data.draw(weights_for(y_pred.shape, per_element=False))
    loss_dtype = tf.as_dtype(data.draw(st.sampled_from(("float32", dtype.name))))
    t, p = as_dtype(y_true, loss_dtype), as_dtype(y_pred, loss_dtype)
    exact = reference.huber(t, p, threshold)
    per_sample = as_dtype(exact, loss_dtype)  # Keras weighs these
    w = np.ones(per_sample.shape) if weights is None else np.broadcast_to(
        weights.reshape(weights.shape[:per_sample.ndim]), per_sample.shape)
    with np.errstate(all="ignore"):
        if weights is None:   # the float64 mean, rounded once (finite where it is, even
            expected = np.mean(exact)            # when a per-sample value is not)
            mass = np.mean(np.abs(exact))
        else:
            expected = np.sum(per_sample * w) / per_sample.size
            mass = np.sum(np.abs(per_sample * w)) / per_sample.size
        upstream = w / per_sample.size
    if weights is None:
        rtol = RTOL[loss_dtype] if loss_dtype != tf.float32 else LOSS_RTOL
    else:
        rtol = {tf.float32: LOSS_RTOL, tf.float64: 1e-12}.get(
            loss_dtype, RTOL[loss_dtype] * (3 + np.log2(per_sample.size)))
    expected_grad = reference.huber_grad_pred(t, p, upstream, threshold)
    top = float(tf.experimental.numpy.finfo(loss_dtype.as_numpy_dtype).max)
    for path in PATHS:
        # One function per rank of y_pred and of the weights: Keras's weighting (loss.py
        # squeeze_or_expand_to_same_rank) cannot take per-sample losses or weights of
        # unknown rank; ours keep dims relaxed.
        ranks = f"{y_pred.ndim}-{None if weights is None else weights.ndim}"
        fn = in_mode(mode, path, f"loss-{threshold}-{loss_dtype.name}-{tape}-{ranks}",
                     loss_and_gradient(threshold, loss_dtype, tape))
        with fastcustom.use_path(path):
            value, grad = fn(tf.constant(y_true, dtype), tf.constant(y_pred, dtype),
                             None if weights is None else tf.constant(weights))
        what = f"{path} HuberLoss({loss_dtype.name}) on {dtype.name} ({mode}, {tape})"
        assert value.dtype == loss_dtype, what
        keras_overflow = weights is not None and not (mass * per_sample.size < top)
        if not (keras_overflow and not np.isfinite(value.numpy())):   # inf, or inf - inf
            assert_matches(value, expected, loss_dtype, rtol, what,
                           atol=rtol * mass if np.isfinite(mass) else None)
        if tape == "no tape":
            continue
        assert grad is not None and grad.dtype == dtype, f"{what}: the gradient was dropped"
        if np.isfinite(expected):
            grad_dtype = dtype if dtype.size <= loss_dtype.size else loss_dtype
            assert_matches(grad, expected_grad, grad_dtype, max(rtol, RTOL[grad_dtype], 1e-6),
                           what + " grad",
                           atol=1e-6 * np.max(np.abs(upstream) * threshold, initial=0.0)
                           + f32_smallest_normal())
