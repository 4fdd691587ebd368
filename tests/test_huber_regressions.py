"""Regressions: each defect found in the Huber components (by hand or by
tests/test_fuzz_huber.py), by name, checked on both paths against the reference."""

import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom import reference
from fastcustom.ops import library

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
PATHS = ["xla", pytest.param("op", marks=pytest.mark.skipif(
    library.huber_ops() is None, reason="fused op not built"))]


@pytest.mark.parametrize("path", PATHS)
def test_metric_per_row_then_per_element_weights(path):
    # The XLA path gave 1.4167 (weights relaxed to unknown rank were taken per element).
    y_true, y_pred = tf.constant([[0.0, 1.0], [2.0, 3.0]]), tf.zeros([2, 2])
    metric, ref = fastcustom.HuberMetric(), reference.StreamingHuberMean()
    with fastcustom.use_path(path):
        for weights in (tf.constant([1.0, 3.0]), tf.constant([[1.0, 0.0], [0.0, 1.0]])):
            metric.update_state(y_true, y_pred, sample_weight=weights)
            ref.update(y_true.numpy(), y_pred.numpy(), weights.numpy())
    assert float(metric.result()) == pytest.approx(ref.result(), rel=1e-6) == 1.5


@pytest.mark.parametrize("path", PATHS)
def test_metric_per_row_weights_after_per_element_of_another_shape(path):
    # The XLA path raised "Incompatible shapes: [3] vs. [3,2]".
    metric, ref = fastcustom.HuberMetric(), reference.StreamingHuberMean()
    with fastcustom.use_path(path):
        for weights in (np.array([1.0, 2.0, 3.0], "float32"), np.ones((3, 2), "float32")):
            metric.update_state(np.zeros((3, 2)), np.ones((3, 2)), sample_weight=weights)
            ref.update(np.zeros((3, 2)), np.ones((3, 2)), weights)
    assert float(metric.result()) == pytest.approx(ref.result(), rel=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("weights", [[1.0, 3.0], [[1.0], [3.0]], [[1.0, 0.0], [0.0, 1.0]]],
                         ids=["per-row", "per-row-column", "per-element"])
def test_metric_weights_of_unknown_rank_in_a_tf_function(path, weights):
    # TypeError: '>' not supported between 'NoneType' and 'int' (both paths).
    metric = fastcustom.HuberMetric()
    y_true, y_pred = np.array([[0.0, 1.0], [2.0, 3.0]], "float32"), np.zeros((2, 2), "float32")

    @tf.function(input_signature=[tf.TensorSpec([None, 2]), tf.TensorSpec([None, 2]),
                                  tf.TensorSpec(None)])
    def update(t, p, w):
        metric.update_state(t, p, sample_weight=w)

    with fastcustom.use_path(path):
        update(y_true, y_pred, np.array(weights, "float32"))
    ref = reference.StreamingHuberMean()
    ref.update(y_true, y_pred, np.array(weights))
    assert float(metric.result()) == pytest.approx(ref.result(), rel=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(1, 2_000_000), (4, 100_000)], ids=str)
def test_long_rows_within_1e6_of_float64(rng, path, shape):
    # The XLA path summed rows in float32: 2.0e-5 off at (1, 2e6), 5.5e-7 at (4, 1e5).
    y_true, y_pred = (rng.standard_normal(shape).astype("float32") * 2 for _ in range(2))
    with fastcustom.use_path(path):
        got = fastcustom.huber(y_true, y_pred).numpy().astype(np.float64)
    np.testing.assert_allclose(got, reference.huber(y_true, y_pred), rtol=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_threshold_1e30_overflows_to_inf_not_nan(path):
    # threshold**2 / 2 overflowed: the op gave NaN, the XLA path -inf; float32's answer is inf.
    with fastcustom.use_path(path):
        got = fastcustom.huber(np.array([[1e30]], "float32"), np.array([[-1e30]], "float32"),
                               threshold=1e30)
    assert got.numpy().tolist() == [np.inf]


@pytest.mark.parametrize("path", PATHS)
def test_float32_overflow_inside_does_not_change_a_finite_answer(path):
    # e = 3e38 - (-3e38) overflows float32, h = 1e-30 * 6e38 = 6e8 does not (the op now
    # recomputes such rows in double; the XLA path computes in float64).
    y_true, y_pred = np.array([[3e38, 0.0]], "float32"), np.array([[-3e38, 0.0]], "float32")
    with fastcustom.use_path(path):
        got = fastcustom.huber(y_true, y_pred, threshold=1e-30).numpy()
        metric = fastcustom.HuberMetric(threshold=1e-30)
        metric.update_state(y_true, y_pred, sample_weight=[[10.0, 1.0]])
    np.testing.assert_allclose(got, reference.huber(y_true, y_pred, 1e-30), rtol=1e-6)
    ref = reference.StreamingHuberMean(1e-30)
    ref.update(y_true, y_pred, [[10.0, 1.0]])
    np.testing.assert_allclose(float(metric.result()), ref.result(), rtol=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [tf.float16, tf.float32])
def test_metric_total_of_equal_values_at_2m_elements_within_1e6(path, dtype):
    # Found by the fuzzer: the op summed 256 values per float lane, so 2,000,000 equal
    # values (|e| = threshold = 1e4, weight 1.9108851) came out 2e-6 off in total and count.
    n, weight = 2_000_000, np.float32(1.9108851)
    y_true, y_pred = tf.zeros([n], dtype), tf.fill([n], tf.constant(1e4, dtype))
    weights = tf.fill([n], weight)
    with fastcustom.use_path(path):
        total, count = fastcustom.ops.huber.huber_weighted_total(y_true, y_pred, 1e4, weights)
    w = float(tf.cast(weight, dtype))
    expected = reference.huber_elementwise(np.zeros(1), np.array([1e4]), 1e4)[0] * w * n
    assert float(total) == pytest.approx(expected, rel=1e-6)
    assert float(count) == pytest.approx(w * n, rel=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_loss_mean_near_float32_max_is_finite(path):
    # Found by the fuzzer: Keras sums the per-sample values in float32, so the XLA path
    # gave inf where the mean is 1.5e38 (the op's fused mean was right).
    y_true, y_pred = tf.zeros([4, 16]), tf.fill([4, 16], -1.5e38)
    with fastcustom.use_path(path), tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = fastcustom.HuberLoss(threshold=1.0)(y_true, y_pred)
    assert float(loss) == pytest.approx(1.5e38 - 0.5, rel=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, y_pred).numpy(), -1.0 / 64, rtol=1e-6)
    assert float(fastcustom.HuberLoss(threshold=1.0)(y_true, y_pred)) == pytest.approx(1.5e38)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_loss_gradient_where_the_difference_overflows_float32(path, dtype):
    # The XLA path's gradient is computed in float32 for these dtypes; e = 3e38 - (-3e38)
    # overflows there, and with t above float32's range the answer is e / size, finite.
    y_true, y_pred = tf.constant([[3e38, 0.0]], dtype), tf.constant([[-3e38, -3.0]], dtype)
    with fastcustom.use_path(path), tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = fastcustom.HuberLoss(threshold=1e39)(y_true, y_pred)
    expected = reference.huber_grad_pred(tf.cast(y_true, tf.float64).numpy(),
                                         tf.cast(y_pred, tf.float64).numpy(), [1.0], 1e39)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(tf.cast(tape.gradient(loss, y_pred), tf.float64).numpy(),
                               expected, rtol=1e-6 if dtype == tf.float32 else 1e-2)


@pytest.mark.parametrize("path", PATHS)
def test_gradient_at_infinite_prediction_is_the_clamped_limit(path):
    # The op gave threshold / D, the XLA path NaN; the reference's rule is the limit.
    y_true, y_pred = tf.constant([[0.0, 0.0]]), tf.constant([[np.inf, -np.inf]])
    with fastcustom.use_path(path), tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = fastcustom.huber(y_true, y_pred, threshold=0.25)
    grad = tape.gradient(loss, y_pred).numpy()
    assert loss.numpy().tolist() == [np.inf]
    np.testing.assert_array_equal(grad, reference.huber_grad_pred(
        y_true.numpy(), y_pred.numpy(), [1.0], 0.25))
    np.testing.assert_array_equal(grad, [[0.125, -0.125]])


@pytest.mark.parametrize("path", PATHS)
def test_scalars_of_unknown_rank_in_a_tf_function(path):
    # The two paths failed differently; a scalar is one sample of one element.
    @tf.function(input_signature=[tf.TensorSpec(None), tf.TensorSpec(None)])
    def loss(t, p):
        return fastcustom.huber(t, p)

    with fastcustom.use_path(path):
        assert loss(tf.constant(0.0), tf.constant(3.0)).numpy().tolist() == 2.5  # as eager
        np.testing.assert_allclose(loss(tf.zeros([2, 2]), tf.ones([2, 2])).numpy(), [0.5, 0.5])


def test_use_path_rejects_an_unknown_path():
    with pytest.raises(ValueError, match="must be one of"):
        with fastcustom.use_path("gpu"):
            pass


@pytest.mark.skipif(library.huber_ops() is None, reason="fused op not built")
@pytest.mark.parametrize("entry", ["huber", "HuberLoss", "HuberMetric"])
def test_use_path_op_inside_xla_raises_for_every_entry_point(entry):
    # HuberLoss ran the XLA path silently: its dispatcher checked XLA before use_path.
    call = {"huber": lambda t, p: fastcustom.huber(t, p),
            "HuberLoss": lambda t, p: fastcustom.HuberLoss()(t, p),
            "HuberMetric": lambda t, p: fastcustom.HuberMetric().update_state(t, p)}[entry]

    @tf.function(jit_compile=True)
    def compiled(t, p):
        call(t, p)
        return tf.constant(0.0)

    with fastcustom.use_path("op"), pytest.raises(RuntimeError, match="XLA compilation"):
        compiled(tf.zeros([3, 2]), tf.ones([3, 2]))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_narrow_huber_loss_keeps_its_gradient_under_an_eager_tape(path, dtype):
    # The op path returned the eager no-gradient mean (HuberWeightedTotal) while a tape
    # recorded: t.gradient(l, p) was None, and in a sum of terms only the others trained.
    y_true = tf.zeros((4, 1), dtype)
    prediction = tf.Variable(tf.ones((4, 1), dtype) * 3)
    other = tf.Variable(1.0)
    with fastcustom.use_path(path), tf.GradientTape() as tape:
        loss = fastcustom.HuberLoss(dtype=dtype)(y_true, prediction)
        total = tf.cast(loss, tf.float32) + other ** 2
    grads = tape.gradient(total, [prediction, other])
    expected = reference.huber_grad_pred(np.zeros((4, 1)), np.full((4, 1), 3.0),
                                         np.full(4, 1 / 4), 1.0)
    assert grads[0] is not None and grads[0].dtype == dtype
    np.testing.assert_allclose(tf.cast(grads[0], tf.float64).numpy(), expected)   # [0.25] x 4
    assert float(grads[1]) == 2.0


def test_mydense_casts_integer_inputs_like_keras_dense():
    layer = fastcustom.MyDense(3, kernel_initializer="ones")
    out = layer(np.ones((2, 4), "int32"))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), np.full((2, 3), 4.0))


def test_glorot_initializer_takes_a_numpy_integer_seed():
    init = fastcustom.GlorotNormalInitializer(seed=np.int64(3))
    assert init.get_config() == {"seed": 3} and type(init.get_config()["seed"]) is int
    np.testing.assert_array_equal(init((4, 5)).numpy(),
                                  fastcustom.GlorotNormalInitializer(seed=3)((4, 5)).numpy())


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_reconstructing_regressor_loads_from_h5_and_keras(tmp_path, suffix):
    import keras
    model = fastcustom.ReconstructingRegressor(1, reconstruction_weight=0.1)
    model.compile("sgd", fastcustom.HuberLoss(2.0))
    x = np.ones((4, 3), "float32")
    model.fit(x, np.ones((4, 1)), verbose=0)
    path = str(tmp_path / f"model{suffix}")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is fastcustom.ReconstructingRegressor
    assert loaded.reconstruction_weight == 0.1 and loaded.loss.threshold == 2.0
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)
