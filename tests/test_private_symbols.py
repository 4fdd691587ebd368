"""The core on public APIs: the private TensorFlow / Keras symbols it uses are listed in
`fastcustom.private_symbols`, found in the versions under test, and each fallback gives the
same answers; importing fastcustom, using a component and `load_model` never import the
accelerated loop (whose private Keras uses sit behind `fastcustom.training.keras_internals`)."""

import importlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom import private_symbols
from fastcustom.ops import library

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
PATHS = ["xla", pytest.param("op", marks=pytest.mark.skipif(
    library.huber_ops() is None, reason="fused op not built"))]


def _resolve(dotted):
    """The object a dotted name names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            value = getattr(value, name)
        return value
    raise ImportError(dotted)


@pytest.mark.parametrize("symbol", private_symbols.PRIVATE_SYMBOLS)
def test_every_private_symbol_exists_in_the_versions_under_test(symbol):
    assert _resolve(symbol) is not None
    assert private_symbols.missing() == []


def _loss_value_and_gradient(y_true, y_pred, mode):
    loss = fastcustom.HuberLoss(threshold=0.7)

    def run(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            value = loss(t, p)
        return value, tape.gradient(value, p), loss(t, p)

    if mode != "eager":
        run = tf.function(run, jit_compile=mode == "xla")
    return [t.numpy() for t in run(y_true, y_pred)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_the_fallbacks_give_the_same_loss_and_gradient(rng, path, mode):
    if path == "op" and mode == "xla":
        pytest.skip("custom ops cannot run inside XLA")
    y_true = tf.constant(rng.normal(size=(64, 5)), tf.float32)
    y_pred = tf.constant(rng.normal(size=(64, 5)) * 2, tf.float32)
    with fastcustom.use_path(path):
        expected = _loss_value_and_gradient(y_true, y_pred, mode)
    with private_symbols.without("xla", "record", "kernels", "keras_mask"):
        # Without the XLA-context query every graph takes the TF ops: not the fused op.
        with fastcustom.use_path("xla" if mode != "eager" else path):
            got = _loss_value_and_gradient(y_true, y_pred, mode)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_the_mask_fallback_reads_the_mask_keras_attached():
    inputs = keras.Input((3, 2))
    outputs = keras.layers.Masking(0.0)(inputs)
    model = keras.Model(inputs, outputs)
    x = np.array([[[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]]], "float32")
    masked = model(x)
    with private_symbols.without("keras_mask"):
        fallback = private_symbols.keras_mask(masked)
    np.testing.assert_array_equal(private_symbols.keras_mask(masked).numpy(), [[True, False, True]])
    np.testing.assert_array_equal(fallback.numpy(), [[True, False, True]])


def test_without_names_only_known_symbols():
    with pytest.raises(ValueError, match="unknown private symbols"):
        with private_symbols.without("record", "nothing"):
            pass


# A component's use, a fit with Keras's own model.fit and load_model: fastcustom.training
# (the accelerated loop and its private Keras adapter) is never imported.
_COMPONENTS_ONLY = """
import json, os, sys, tempfile
import keras, numpy as np
import fastcustom
model = keras.Sequential([keras.Input((4,)), fastcustom.MyDense(3, activation="selu"),
                          fastcustom.MyDense(1)])
model.compile("adam", fastcustom.HuberLoss(2.0), metrics=[fastcustom.HuberMetric(2.0)])
model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=1, verbose=0)
with tempfile.TemporaryDirectory() as scratch:
    path = os.path.join(scratch, "m.keras")
    model.save(path)
    keras.models.load_model(path)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("fastcustom"))))
"""


def test_components_and_load_model_never_import_the_loop(run_python):
    result = run_python("-c", _COMPONENTS_ONLY, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert "fastcustom.losses" in modules
    assert not [m for m in modules if m.startswith("fastcustom.training")], modules
