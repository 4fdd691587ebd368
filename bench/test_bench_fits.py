"""Whole fits as a user runs them, accelerated and not, side by side.

    pytest bench/test_bench_fits.py --benchmark-json=bench/out/fits.json

- `test_cold_short_fit`: the wall time of a `model.fit` call in a fresh process (trace,
  compile and run included), accelerated and plain, the processes alternating, 3 each:
  an 8 -> 30 selu -> 30 selu -> 1 MLP on 512 samples for 2 epochs, an LSTM(16) on
  512 x 20 x 4 for 2 epochs, and the notes' model on 20,640 samples for 1 epoch (Nadam,
  Huber loss, `validation_split=0.1`). Target: accelerated within 1.1x of plain.
- `test_stream_at_the_pipeline_rate`: the notes' model on two tf.data pipelines (batched
  and prefetched; parsed from serialized rows, augmented and shuffled), an accelerated
  fit (once its loop is XLA) and a plain one, interleaved in one process with the
  pipeline drained alone in a `tf.function`: the accelerated fit's share of the
  pipeline's own rate (target >= 80%), in 15 rounds: a round of the batched pipeline
  is 40-90 ms, and its spread here is wide. `test_stream_reads_at_the_pipeline_rate`:
  the fit's reads alone (`read_window`) against the same drain: the rest of an epoch's
  time is its steps'.
- `test_peak_memory_on_large_arrays`: the peak resident memory of a process that fits one
  epoch on 2,000,000 x 64 float32 (512 MB) at batch 1024, accelerated and plain
  (target: accelerated <= 1.05x plain).
- `test_profiling_callback_outside_its_window` and `test_data_checks`: what a
  TensorBoard profile window the fit does not reach, and fastcustom's data checks (on a
  model with a sparse loss, where there are some: the notes' model has none), cost in
  steady state, timed in turn with the same fit without them (targets: within 3%).
"""

import os
import statistics
import subprocess
import sys
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom.bench.cases import fresh_process_info, spread
from fastcustom.training.sources import read_window

HERE = os.path.dirname(os.path.abspath(__file__))
NOTES = "notes' model"

COLD_FIT = """
import sys, time
import numpy as np, keras
import fastcustom
case, way = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
keras.utils.set_random_seed(0)
if case == "lstm":
    x = rng.normal(size=(512, 20, 4)).astype("float32"); y = x[:, -1, :1]; epochs = 2
    layers = [keras.Input((20, 4)), keras.layers.LSTM(16), keras.layers.Dense(1)]
else:
    n, epochs = (512, 2) if case == "mlp" else (20_640, 1)
    x = rng.normal(size=(n, 8)).astype("float32"); y = np.tanh(x[:, :1])
    layers = [keras.Input((8,)), keras.layers.Dense(30, "selu"), keras.layers.Dense(30, "selu"),
              keras.layers.Dense(1)]
model = keras.Sequential(layers)
model.compile("nadam", fastcustom.HuberLoss())
if way == "accelerated":
    fastcustom.accelerate(model)
start = time.perf_counter()
history = model.fit(x, y, epochs=epochs, verbose=0, validation_split=0.1)
print(time.perf_counter() - start, history.params.get("compiled_with"))
"""
COLD_FITS = {"mlp": "MLP 8-30-30-1, 512 samples, 2 epochs",
             "lstm": "LSTM(16), 512 x 20 x 4, 2 epochs",
             "notes": "the notes' model, 20,640 samples, 1 epoch"}
WAYS = {"accelerated model.fit": "accelerated", "model.fit": "plain"}
ROLES = {"accelerated model.fit": "fastcustom", "model.fit": "keras"}


def _fresh(script, *argv, env=None):
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                          timeout=900, cwd=HERE,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1].split()


@pytest.mark.parametrize("case", list(COLD_FITS))
def test_cold_short_fit(benchmark, case):
    seconds = {way: [] for way in WAYS}
    compiled_with = []

    def alternate():
        for _ in range(3):
            for way, arg in WAYS.items():
                value, form = _fresh(COLD_FIT, case, arg)
                seconds[way].append(float(value))
                if arg == "accelerated":
                    compiled_with.append(form)

    benchmark.pedantic(alternate, rounds=1, iterations=1)
    benchmark.group = "cold short fits"
    benchmark.extra_info.update(fresh_process_info(
        "cold short fit", COLD_FITS[case], seconds, roles=ROLES,
        targets={"accelerated model.fit": {"keras": 1 / 1.1}}, compiled_with=compiled_with))
    print(f"\n{COLD_FITS[case]}: " + ", ".join(
        f"{way} {statistics.median(v):.2f} s" for way, v in seconds.items())
        + f" ({compiled_with[0]})")


def notes_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(30, "selu"),
                              keras.layers.Dense(30, "selu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Nadam(), fastcustom.HuberLoss())
    return model


def notes_data(n=20_640):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 8)).astype("float32")
    return x, np.tanh(x[:, :1] + 0.5 * x[:, 1:2]).astype("float32")


def pipeline(kind):
    """The notes' data as a tf.data pipeline of batches of 32."""
    x, y = notes_data()
    if kind == "batched":
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(32).prefetch(2)
    rows = tf.data.Dataset.from_tensor_slices(np.concatenate([x, y], axis=1)).map(
        tf.io.serialize_tensor)
    serialized = list(rows.as_numpy_iterator())

    def parse_and_augment(record):
        row = tf.ensure_shape(tf.io.parse_tensor(record, tf.float32), [9])
        noise = tf.random.stateless_normal([8], seed=[tf.strings.length(record), 7]) * 0.01
        return row[:8] + noise, row[8:]

    return (tf.data.Dataset.from_tensor_slices(serialized).shuffle(4096, seed=3)
            .map(parse_and_augment, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(32).prefetch(2))


DRAINED = "the pipeline drained in a tf.function"


def drained(data):
    """A maker of `data` drained alone, as fast as a tf.function reads it."""
    def make():
        @tf.function
        def drain(iterator):
            count = tf.constant(0)
            for _ in tf.range(10**9):
                batch = iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                count += 1
            return count

        return (lambda: drain(iter(data))), "tf"

    return make


def until_xla(fit, most=30):
    """`fit()` (a History) until the accelerated loop's training ran as XLA."""
    for _ in range(most):
        if fit().params["compiled_with"] == "xla":
            return
    raise AssertionError(f"the loop did not move to XLA in {most} fits")


@pytest.mark.parametrize("kind", ["batched", "parsed, augmented, shuffled"])
def test_stream_at_the_pipeline_rate(interleave, kind):
    data = pipeline(kind)
    steps = int(data.cardinality())

    def accelerated():
        model = fastcustom.accelerate(notes_model())
        fit = lambda: model.fit(data, epochs=1, verbose=0)   # noqa: E731
        until_xla(fit)
        return fit, "tf"

    def plain():
        model = notes_model()
        return (lambda: model.fit(data, epochs=1, verbose=0)), "tf"

    interleave(f"{NOTES} on tf.data ({kind})", None, "batch 32",
               {"accelerated model.fit": accelerated, "model.fit": plain},
               {"keras": "model.fit"}, ours="accelerated model.fit",
               roofs=[(DRAINED, drained(data), steps)],
               work=steps, unit="steps", rounds=15, iterations=1, targets={"roof": 0.8})


def test_stream_reads_at_the_pipeline_rate(interleave):
    """The accelerated fit's reads alone (`read_window`, the epoch in one window, as a
    fit without batch hooks reads it), against the same pipeline drained: what is left
    of an epoch's time is the steps'."""
    data = pipeline("batched")
    steps = int(data.cardinality())

    def reads():
        everything = tf.constant(2**31 - 1)
        return (lambda: read_window(iter(data), tf.constant(steps), everything, True)), "tf"

    interleave(f"{NOTES} on tf.data (batched): the fit's reads", None, "batch 32",
               {"read_window": reads}, {}, ours="read_window",
               roofs=[(DRAINED, drained(data), steps)],
               work=steps, unit="steps", rounds=15, iterations=1)


MEMORY = """
import resource, sys
import numpy as np, keras
import fastcustom
rng = np.random.default_rng(0)
x = rng.standard_normal((2_000_000, 64), dtype=np.float32)
y = x[:, :1] * 0.5
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(30, "selu"),
                          keras.layers.Dense(30, "selu"), keras.layers.Dense(1)])
model.compile("nadam", "mse")
if sys.argv[1] == "accelerated":
    fastcustom.accelerate(model)
model.fit(x, y, batch_size=1024, epochs=1, verbose=0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def test_peak_memory_on_large_arrays(benchmark):
    peaks = {way: [] for way in WAYS}

    def alternate():
        for _ in range(3):
            for way, arg in WAYS.items():
                peaks[way].append(float(_fresh(MEMORY, arg)[0]))

    benchmark.pedantic(alternate, rounds=1, iterations=1)
    benchmark.group = "peak memory"
    benchmark.extra_info.update(fresh_process_info(
        "peak memory", "one epoch on 2,000,000 x 64 float32 (512 MB), batch 1024", peaks,
        roles=ROLES, targets={"accelerated model.fit": {"keras": 1 / 1.05}}, unit="MB"))
    print("\npeak RSS: " + ", ".join(f"{way} {statistics.median(v):.0f} MB"
                                     for way, v in peaks.items()))


def cost(benchmark, with_name, with_fit, without_name, without_fit, rounds=9, target=0.97):
    """`with_fit` and `without_fit` timed in turn, `rounds` times (one warm-up of each
    first); `extra_info["cost"]`: the speed of the first over the second per round."""
    times = {with_name: [], without_name: []}
    order = [(with_name, with_fit), (without_name, without_fit)]

    def alternate():
        for name, fit in order:
            start = time.perf_counter()
            fit()
            times[name].append(time.perf_counter() - start)
        order.reverse()

    benchmark.group = "costs in steady state"
    benchmark.pedantic(alternate, rounds=rounds, iterations=1, warmup_rounds=1)
    if benchmark.disabled:
        return
    pairs = zip(times[with_name][1:], times[without_name][1:])
    benchmark.extra_info["cost"] = {"with": with_name, "without": without_name,
                                    "ratio": spread([theirs / mine for mine, theirs in pairs]),
                                    "target": target}


def test_profiling_callback_outside_its_window(benchmark, tmp_path):
    """A TensorBoard profile window past every fit's end: no step is profiled, and the
    loop's calls stay whole (3 epochs of the notes' model a round), against the same
    TensorBoard callback with no profile window (its summaries cost the same in both)."""
    x, y = notes_data()
    window = keras.callbacks.TensorBoard(str(tmp_path / "window"),
                                         profile_batch=(10**6, 10**6 + 5))
    no_window = keras.callbacks.TensorBoard(str(tmp_path / "plain"), profile_batch=0)

    def fit_of(callbacks):
        model = fastcustom.accelerate(notes_model())
        fit = lambda: model.fit(x, y, epochs=3, verbose=0, callbacks=callbacks)  # noqa: E731
        until_xla(fit)
        return fit

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*profiled nothing")
        cost(benchmark, "TensorBoard(profile_batch) outside the fit", fit_of([window]),
             "TensorBoard(profile_batch=0)", fit_of([no_window]))


def test_data_checks(benchmark, monkeypatch):
    """A softmax classifier with a sparse loss (its labels are checked once per fit, before
    the steps), against the same fit with the checks switched off (one epoch a round)."""
    from fastcustom.training import checks

    rng = np.random.default_rng(3)
    x = rng.standard_normal((20_640, 32), np.float32)
    labels = rng.integers(0, 10, len(x))

    def fit_of(checked):
        keras.utils.set_random_seed(7)
        model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, "relu"),
                                  keras.layers.Dense(10, "softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        fastcustom.accelerate(model, jit_compile=True)
        fit = lambda: model.fit(x, labels, epochs=1, verbose=0)   # noqa: E731
        with monkeypatch.context() as off:
            if not checked:   # traced without checks; later fits reuse that trace
                off.setattr(checks.Precheck, "of", classmethod(lambda cls, trace: None))
                off.setattr(checks, "step_report", lambda ops: checks.ok_report())
            fit()
        return fit

    cost(benchmark, "data checks (sparse labels)", fit_of(True), "checks off", fit_of(False))
