"""Shared test set-up: quiet TensorFlow logs, fresh random data per test, the one builder of
each shared model and data set, and the one way tests run Python in a fresh interpreter.

Test modules get them as fixtures (`regression_data`, `everything_model`, `small_regressor`,
`run_python`, `run_scripts`, `op_hash_script`, `require`, `mirrored_fit`), each a function
to call or a value, and the `needs_ops` marker; scripts that tests run in a
subprocess import the plain functions from here (`from conftest import make_regression_data`).
"""

import json
import os
import subprocess
import sys
import textwrap
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

import fastcustom  # noqa: E402  (lazy: no TensorFlow yet)

# Where the fastcustom under test lives (an install, or this checkout), found before any
# test module puts the checkout on sys.path (bench/gpu/harness.py does): fresh processes
# import this one first, or a checkout without the built op would shadow an install.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastcustom.__file__)))


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


def _start(argv, python=sys.executable, cwd=HERE, env=None):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([PACKAGE_ROOT, *sys.path]),
                   **(env or {})}
    environment = {name: value for name, value in environment.items() if value is not None}
    return subprocess.Popen([str(python), *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=environment)


def _finish(process, timeout):
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def python_process(*argv, python=sys.executable, cwd=HERE, env=None, timeout=600):
    """Run `python *argv` (a script and its arguments, or "-c", code, ...) in a fresh process
    that imports what this one imports (PYTHONPATH: the fastcustom under test, then this
    sys.path), from tests/ by default.

    `env` adds to or, with None as a value, removes from this process's environment. Returns
    the finished `subprocess.CompletedProcess`, its output as text.
    """
    return _finish(_start(argv, python, cwd, env), timeout)


def script_results(*runs, timeout=600):
    """Each run (script, args, env) as `python -c script *args` in its own fresh process, all
    at once, with the fused op allowed (FASTCUSTOM_DISABLE_OPS unset unless `env` sets it) and
    TensorFlow quiet; each script's last output line, parsed as JSON. Fails on an error."""
    processes = [_start(["-c", script, *args],
                        env={"FASTCUSTOM_DISABLE_OPS": None, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
                 for script, args, env in runs]
    results = []
    for process in processes:
        done = _finish(process, timeout)
        assert done.returncode == 0, done.stderr[-4000:]
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def missing(what):
    """Skip the test for lack of `what` (a tool, headers), or fail it where
    FASTCUSTOM_REQUIRE_NVCC=1 says the CUDA toolchain must be there (CI)."""
    if os.environ.get("FASTCUSTOM_REQUIRE_NVCC") == "1":
        pytest.fail(f"{what}, and FASTCUSTOM_REQUIRE_NVCC=1")
    pytest.skip(what)


# Digests of every fused op's outputs over shapes that span many parallel blocks (short
# rows, rows of one chunk, long rows) for every dtype: `python -c OP_HASH_SCRIPT <threads>`.
OP_HASH_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np, tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
    from fastcustom.ops import library
    ops, threshold = library.huber_ops(), tf.constant(1.0, tf.float64)
    rng = np.random.default_rng(11)
    data = rng.standard_normal((3, 4_200_000)) * 2
    digests = {"threads": tf.config.threading.get_intra_op_parallelism_threads()}
    for shape in [(262147, 16), (16411, 255), (4, 1000003)]:
        size = int(np.prod(shape))
        for dtype in ["float16", "bfloat16", "float32", "float64"]:
            t, p = (tf.cast(data[i, :size].reshape(shape), dtype) for i in (0, 1))
            rows = tf.cast(data[2, :shape[0]], dtype)
            elements = tf.cast(tf.reshape(tf.abs(t), [-1]), dtype)
            outputs = [ops.huber_per_sample(t, p, threshold),
                       ops.huber_per_sample_grad(t, p, threshold, rows)]
            for weights in [tf.zeros([0], dtype), rows, elements]:
                outputs += ops.huber_weighted_total(t, p, threshold, weights)
            digest = hashlib.sha256(b"".join(o.numpy().tobytes() for o in outputs))
            digests[f"{shape}{dtype}"] = digest.hexdigest()
    print(json.dumps(digests))
""")


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="also run the tests marked `long` (minutes each: the fuzzer's CI "
                          "profile, the wheel and CUDA builds, multi-worker faults); "
                          ".ci/run runs them after the quick suite")


def _load_hypothesis_profile(config):
    """The fuzzer's examples (tests/test_fuzz_huber.py): a quick derandomized run, 1,000 per
    test with --long (CI), or HYPOTHESIS_PROFILE=nightly's 5,000 with fresh randomness."""
    from hypothesis import HealthCheck, settings

    common = dict(deadline=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    examples = os.environ.get("FUZZ_EXAMPLES")
    settings.register_profile("fastcustom-quick", max_examples=int(examples or 60),
                              derandomize=True, **common)
    settings.register_profile("fastcustom-ci", max_examples=int(examples or 1000),
                              derandomize=True, **common)
    settings.register_profile("nightly", max_examples=5000, **common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or (
        "fastcustom-ci" if config.getoption("--long") else "fastcustom-quick"))


def pytest_configure(config):
    _load_hypothesis_profile(config)
    config.addinivalue_line("markers", "needs_ops: skipped where the fused op library is not "
                                       "loaded (library.status() says why)")
    config.addinivalue_line("markers", "long: minutes of work (builds, worker faults): run "
                                       "with --long, as .ci/run does")
    config.addinivalue_line("markers", "fuzz: the differential fuzzer: a quick profile, or "
                                       "the CI profile with --long")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--long"):
        skip_long = pytest.mark.skip(reason="a long test: run with --long (.ci/run does)")
        for item in items:
            if item.get_closest_marker("long"):
                item.add_marker(skip_long)
    marked = [item for item in items if item.get_closest_marker("needs_ops")]
    if marked:
        from fastcustom.ops import library
        if library.huber_ops() is None:
            skip = pytest.mark.skip(
                reason=f"fused Huber ops unavailable: {library.status()['reason']}")
            for item in marked:
                item.add_marker(skip)


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
def run_scripts():
    """`script_results(*runs)`: (script, args, env) runs at once, their last lines as JSON."""
    return script_results


@pytest.fixture(scope="session")
def op_hash_script():
    """`OP_HASH_SCRIPT`: the digests of every fused op's outputs (argument: threads)."""
    return OP_HASH_SCRIPT


@pytest.fixture(scope="session")
def require():
    """`missing(what)`: skip for lack of `what`, or fail where FASTCUSTOM_REQUIRE_NVCC=1."""
    return missing


@pytest.fixture(scope="session")
def mirrored_fit():
    """`mirrored_fit_report(method)`: (single, mirrored) runs of tests/mirrored_fit_check.py."""
    return mirrored_fit_report
