"""Shared test set-up: quiet TensorFlow logs, fresh random data per test, the one builder of
each shared model and data set, and the one way tests run Python in a fresh interpreter.

Test modules get them as fixtures (`regression_data`, `everything_model`, `small_regressor`,
`run_python`, `mirrored_fit`), each a function to call; scripts that tests run in a
subprocess import the plain functions from here (`from conftest import make_regression_data`).
"""

import json
import os
import subprocess
import sys
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def make_regression_data(n=256, n_features=8, seed=0):
    """`n` samples of `n_features` standard normal features and a smooth target, float32."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype("float32")
    y = (np.tanh(x[:, :1] + 0.5 * x[:, 1:2]) + 0.1 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def make_small_regressor(seed=0):
    """8 -> Dense(16, selu) -> Dense(1), Keras's own layers; the same seed, the same weights."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)),
                             keras.layers.Dense(16, "selu", kernel_initializer="lecun_normal"),
                             keras.layers.Dense(1)])


def make_everything_model(seed=0, noise=0.05, n_features=8):
    """A functional model that uses each fastcustom layer, initializer, regularizer,
    constraint and activation once (not compiled)."""
    import keras

    import fastcustom

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((n_features,))
    h = fastcustom.MyDense(30, activation="selu",
                           kernel_initializer=fastcustom.GlorotNormalInitializer(seed=seed),
                           kernel_regularizer=fastcustom.L1Regularizer(1e-4))(inputs)
    h = fastcustom.AddGaussianNoise(noise, seed=seed)(h)
    a = fastcustom.MyDense(10, activation=fastcustom.softplus)(h)
    b = fastcustom.MyDense(10, kernel_constraint=fastcustom.PositiveWeights())(h)
    total, product = fastcustom.MyMultiLayer()((a, b))
    e = fastcustom.Exponential()(fastcustom.MyDense(5, activation="tanh")(total))
    outputs = fastcustom.MyDense(1, dtype="float32")(keras.layers.Concatenate()([product, e]))
    return keras.Model(inputs, outputs)


def python_process(*argv, python=sys.executable, cwd=HERE, env=None, timeout=600):
    """Run `python *argv` (a script and its arguments, or "-c", code, ...) in a fresh process
    that imports what this one imports (PYTHONPATH is this sys.path), from tests/ by default.

    `env` adds to or, with None as a value, removes from this process's environment. Returns
    the finished `subprocess.CompletedProcess`, its output as text.
    """
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    environment = {name: value for name, value in environment.items() if value is not None}
    return subprocess.run([str(python), *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=environment, timeout=timeout)


def mirrored_fit_report(method):
    """tests/mirrored_fit_check.py run with `method` ("model.fit" or "fastcustom.fit"): its
    runs on one device and under a MirroredStrategy over two logical CPUs, (single, mirrored),
    each {"history", "weights", "compiled_with"}; fails unless it ran on two devices."""
    result = python_process("mirrored_fit_check.py", method, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["devices"]) == 2
    return report["single"], report["mirrored"]


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name: fresh data per test, reproducible runs
    (crc32, not hash(): str hashes are salted per process)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def regression_data():
    """`make_regression_data(n=256, n_features=8, seed=0)`: the shared (x, y)."""
    return make_regression_data


@pytest.fixture(scope="session")
def small_regressor():
    """`make_small_regressor(seed=0)`: a small Keras regressor."""
    return make_small_regressor


@pytest.fixture(scope="session")
def everything_model():
    """`make_everything_model(seed=0, noise=0.05, ...)`: every fastcustom component once."""
    return make_everything_model


@pytest.fixture(scope="session")
def run_python():
    """`python_process(*argv, python=..., cwd=..., env=..., timeout=...)`."""
    return python_process


@pytest.fixture(scope="session")
def mirrored_fit():
    """`mirrored_fit_report(method)`: (single, mirrored) runs of tests/mirrored_fit_check.py."""
    return mirrored_fit_report
