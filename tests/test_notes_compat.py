"""Models saved with the notes' own classes load with fastcustom's under the notes' names."""

import keras
import numpy as np

import fastcustom
from fastcustom.baselines import notes

NOTES_NAMES_TO_FASTCUSTOM = {
    "Huberloss": fastcustom.HuberLoss, "HuberMetric": fastcustom.HuberMetric,
    "MyDense": fastcustom.MyDense, "L1Regularizer": fastcustom.L1Regularizer,
    "MyMultiLayer": fastcustom.MyMultiLayer, "AddGaussianNoise": fastcustom.AddGaussianNoise,
}


def notes_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8,))
    h = notes.MyDense(30, activation="selu")(inputs)
    h = keras.layers.Dense(30, activation="selu",
                           kernel_regularizer=notes.L1Regularizer(0.001))(h)
    h = notes.AddGaussianNoise(0.01)(h)
    total, product = notes.MyMultiLayer()((h, h))
    outputs = notes.MyDense(1)(keras.layers.Concatenate()([total, product]))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="nadam", loss=notes.Huberloss(2.0),
                  metrics=[notes.HuberMetric(2.0)])
    return model


def test_notes_model_loads_into_fastcustom_classes(tmp_path, regression_data):
    x, y = regression_data()
    model = notes_model()
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "notes.keras")
    loaded = keras.models.load_model(tmp_path / "notes.keras",
                                     custom_objects=NOTES_NAMES_TO_FASTCUSTOM)
    kinds = {type(layer) for layer in loaded.layers}
    assert {fastcustom.MyDense, fastcustom.MyMultiLayer, fastcustom.AddGaussianNoise} <= kinds
    assert isinstance(loaded.loss, fastcustom.HuberLoss) and loaded.loss.threshold == 2.0
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    ours = loaded.evaluate(x, y, verbose=0, return_dict=True)
    theirs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(ours) == set(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5)
