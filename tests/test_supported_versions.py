"""The supported range of Keras and TensorFlow, proved: on the versions installed, the
components, save/load and an accelerated fit work. `.ci/run` runs this file (with
test_components.py and test_serialization.py) a second time in a virtual environment of
the oldest supported pair: pyproject.toml's lower bound of Keras (3.10) with TensorFlow
2.20 (the fused op built there by `fastcustom build-ops`)."""

import importlib.metadata
import pathlib
import re
import tomllib

import keras
import numpy as np
import tensorflow as tf

import fastcustom

ROOT = pathlib.Path(__file__).resolve().parents[1]
OLDEST_TENSORFLOW = (2, 20)


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def test_the_installed_pair_is_in_the_supported_range():
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (keras_range,) = [r for r in requirements if r.startswith("keras")]
    low, high = re.search(r">=\s*([\d.]+)\s*,\s*<\s*([\d.]+)", keras_range).groups()
    installed = _version(importlib.metadata.version("keras"))
    assert _version(low) <= installed < _version(high), (keras_range, installed)
    assert _version(tf.__version__) >= OLDEST_TENSORFLOW


def test_components_save_load_and_an_accelerated_fit(tmp_path, everything_model,
                                                     regression_data):
    x, y = regression_data(n=256)
    plain, ours = everything_model(noise=0.0), everything_model(noise=0.0)
    ours.set_weights(plain.get_weights())
    for model in (plain, ours):
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=fastcustom.HuberLoss(2.0),
                      metrics=[fastcustom.HuberMetric(2.0)])
    fastcustom.accelerate(ours)
    expected = plain.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0).history
    got = ours.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0).history
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-5, err_msg=name)
    path = tmp_path / "everything.keras"
    ours.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.loss.threshold == 2.0
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ours.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    assert fastcustom.path_info()["path"] in ("fused-op", "xla")
