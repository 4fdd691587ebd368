"""Every component inside `model.fit`: XLA on and off, mixed precision, MirroredStrategy."""

import keras
import numpy as np
import pytest

import fastcustom
from fastcustom import reference


@pytest.fixture
def fit_losses(regression_data, everything_model):
    """fit_losses(jit_compile, noise, epochs): the model of every component after model.fit
    on the shared data, and its history."""
    def fit(jit_compile, noise=0.05, epochs=3):
        x, y = regression_data()
        model = everything_model(noise=noise)
        model.compile(optimizer="nadam", loss=fastcustom.HuberLoss(1.0),
                      metrics=[fastcustom.HuberMetric(1.0)], jit_compile=jit_compile)
        history = model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0)
        return model, history.history
    return fit


@pytest.mark.parametrize("jit_compile", [True, False])
def test_fit_trains_with_every_component(jit_compile, fit_losses, regression_data):
    model, history = fit_losses(jit_compile)
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    x, y = regression_data()
    # the metric streams the same Huber value the loss reports, less the L1 penalty
    predictions = model.predict(x, verbose=0)
    evaluated = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(evaluated["huber_metric"], reference.huber(y, predictions).mean(),
                               rtol=1e-5)


def test_xla_and_graph_fits_agree_without_noise(fit_losses):
    _, with_xla = fit_losses(True, noise=0.0, epochs=2)
    _, without = fit_losses(False, noise=0.0, epochs=2)
    np.testing.assert_allclose(with_xla["loss"], without["loss"], rtol=1e-4)
    np.testing.assert_allclose(with_xla["huber_metric"], without["huber_metric"], rtol=1e-4)


def test_reconstructing_regressor_fit_counts_its_loss(regression_data):
    x, y = regression_data()
    model = fastcustom.ReconstructingRegressor(1, reconstruction_weight=0.5)
    model.compile(optimizer="nadam", loss=fastcustom.HuberLoss(), metrics=[fastcustom.HuberMetric()])
    history = model.fit(x, y, epochs=2, verbose=0).history
    # the reported loss includes the reconstruction term, the metric does not
    assert history["loss"][-1] > history["huber_metric"][-1]


def test_mixed_float16_computes_in_float16_with_float32_weights_and_outputs(regression_data,
                                                                           everything_model):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = regression_data()
        model = everything_model(noise=0.05)
        model.compile(optimizer="adam", loss=fastcustom.HuberLoss(), metrics=[fastcustom.HuberMetric()])
        history = model.fit(x, y, epochs=2, verbose=0).history
        dense = model.layers[1]
        assert dense.compute_dtype == "float16" and dense.kernel.dtype == "float32"
        assert model(x[:4]).dtype == "float32"
        assert np.all(np.isfinite(history["loss"]))
        # float16 activations: compare the metric with the reference within float16 rounding
        predictions = model.predict(x, verbose=0).astype("float64")
        evaluated = model.evaluate(x, y, verbose=0, return_dict=True)
        np.testing.assert_allclose(evaluated["huber_metric"], reference.huber(y, predictions).mean(),
                                   rtol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mirrored_strategy_matches_one_device(mirrored_fit):
    single, mirrored = mirrored_fit("model.fit")
    for name in ("loss", "huber_metric"):
        np.testing.assert_allclose(mirrored["history"][name], single["history"][name], rtol=1e-5)
    # each weight's sum: the replicas' gradient sums may differ in their last bits
    weight_sums = {name: [float(np.sum(w)) for w in run["weights"]]
                   for name, run in (("single", single), ("mirrored", mirrored))}
    np.testing.assert_allclose(weight_sums["mirrored"], weight_sums["single"], rtol=1e-4,
                               atol=1e-5)
