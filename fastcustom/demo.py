"""The README's demo: the notes' regression model, built from fastcustom parts.

8 inputs -> 30 selu -> 30 selu -> 1, trained on generated data with HuberLoss,
HuberMetric, L1Regularizer and GlorotNormalInitializer; prints the loss per epoch
and the time, saves the model in `.keras` format and loads it back with plain
`keras.models.load_model` (no custom_objects).
"""

import os
import tempfile
import time

import keras
import numpy as np

import fastcustom


def make_data(n=20_640, n_features=8, seed=0):
    """A smooth nonlinear regression problem the size of California housing."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype("float32")
    w = rng.normal(size=(n_features,)).astype("float32")
    y = np.tanh(x @ w / 2.0) + 0.3 * np.sin(x[:, 0] * 2.0) + rng.normal(0, 0.1, n)
    return x, y.astype("float32")[:, None]


def build_model(n_features=8, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((n_features,)),
        fastcustom.MyDense(30, activation="selu",
                           kernel_initializer=fastcustom.GlorotNormalInitializer(seed=seed),
                           kernel_regularizer=fastcustom.L1Regularizer(1e-5)),
        fastcustom.MyDense(30, activation="selu"),
        fastcustom.MyDense(1),
    ])


def main(epochs=5):
    x, y = make_data()
    model = build_model()
    model.compile(optimizer="nadam", loss=fastcustom.HuberLoss(threshold=2.0),
                  metrics=[fastcustom.HuberMetric(threshold=2.0)])
    print(f"fastcustom Huber path: {fastcustom.path_info()['path']}")
    start = time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        print(f"epoch {epoch + 1}/{epochs}: loss {history.history['loss'][0]:.5f}  "
              f"huber_metric {history.history['huber_metric'][0]:.5f}  "
              f"{time.perf_counter() - t0:.2f} s")
    print(f"trained {epochs} epochs in {time.perf_counter() - start:.2f} s")

    path = os.path.join(tempfile.mkdtemp(), "demo_model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    same = np.allclose(model.predict(x[:256], verbose=0), loaded.predict(x[:256], verbose=0))
    print(f"saved to {path}; reloaded with threshold {loaded.loss.threshold}, "
          f"same predictions: {same}")
    if not same:
        raise SystemExit("the reloaded model computes differently")


if __name__ == "__main__":
    main()
