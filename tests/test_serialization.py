"""Save/load round trips: `.keras` without custom_objects, legacy `.h5` with them."""

import keras
import numpy as np
import pytest

import fastcustom

CUSTOM_OBJECTS = {name: getattr(fastcustom, name) for name in fastcustom.__all__}


def compiled(model, threshold=2.0):
    model.compile(optimizer="adam", loss=fastcustom.HuberLoss(threshold),
                  metrics=[fastcustom.HuberMetric(threshold)])
    return model


def trained_and_reloaded(model, path, data, **load_kwargs):
    """`model` after one epoch on `data`, and its copy loaded back from `path`."""
    x, y = data
    model.fit(x, y, epochs=1, verbose=0)
    model.save(path)
    return model, keras.models.load_model(path, **load_kwargs)


@pytest.fixture
def data(regression_data):
    """The shared (x, y)."""
    return regression_data()


def assert_same_model(original, loaded, x, y):
    np.testing.assert_array_equal(original.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for a, b in zip(original.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(original.evaluate(x, y, verbose=0), loaded.evaluate(x, y, verbose=0),
                               rtol=1e-6)


def test_keras_format_round_trip_without_custom_objects(tmp_path, data, everything_model):
    x, y = data
    # safe mode, no custom_objects
    model, loaded = trained_and_reloaded(compiled(everything_model()), tmp_path / "model.keras",
                                         data)
    assert_same_model(model, loaded, x, y)
    assert loaded.loss.threshold == 2.0
    for a, b in zip(model.layers, loaded.layers):
        assert a.get_config() == b.get_config()
    noise = [layer for layer in loaded.layers if isinstance(layer, fastcustom.AddGaussianNoise)]
    assert noise[0].stddev == 0.05 and noise[0].seed == 0


def test_metric_threshold_survives(tmp_path, data, everything_model):
    x, y = data
    _, loaded = trained_and_reloaded(compiled(everything_model(), threshold=0.3),
                                     tmp_path / "m.keras", data)
    loaded.evaluate(x, y, verbose=0)
    compiled_metrics = loaded.metrics[1].metrics
    assert [type(m) for m in compiled_metrics] == [fastcustom.HuberMetric]
    assert compiled_metrics[0].threshold == 0.3


def test_create_huber_threshold_survives(tmp_path, data, everything_model):
    x, y = data
    model = everything_model(noise=0.0)
    model.compile(optimizer="sgd", loss=fastcustom.create_huber(0.25))
    model, loaded = trained_and_reloaded(model, tmp_path / "m.keras", data)
    assert loaded.loss.threshold == 0.25
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0),
                               rtol=1e-6)


def test_legacy_h5_round_trip(tmp_path, data, everything_model):
    x, y = data
    model, loaded = trained_and_reloaded(compiled(everything_model()), tmp_path / "model.h5",
                                         data, custom_objects=CUSTOM_OBJECTS)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert loaded.loss.threshold == 2.0


def test_reconstructing_regressor_round_trip(tmp_path, data):
    x, y = data
    model = fastcustom.ReconstructingRegressor(1, reconstruction_weight=0.3)
    model.compile(optimizer="nadam", loss=fastcustom.HuberLoss(1.5))
    model, loaded = trained_and_reloaded(model, tmp_path / "r.keras", data)
    assert (loaded.output_dim, loaded.reconstruction_weight) == (1, 0.3)
    assert_same_model(model, loaded, x, y)
    model(x), loaded(x)
    np.testing.assert_allclose(float(loaded.losses[-1]), float(model.losses[-1]), rtol=1e-6)
