"""Profiling training in TensorBoard: real traces written by the profiler, read back with
xprof's own converters (and once through TensorBoard's profile plugin over HTTP)."""

import gzip
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import keras
import numpy as np
import pytest

from fastcustom import cli, path_info, profile

needs_profiler = pytest.mark.skipif(
    bool(profile.missing_packages()),
    reason=f"profiling packages not installed: {', '.join(profile.missing_packages())}")


def regression(samples=640, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 8)).astype("float32")
    return x, np.tanh(x[:, :1]).astype("float32")


def step_names(trace):
    from fastcustom.trace_summary import summarize
    steps = summarize(trace).steps
    assert all(ms > 0 for _, ms in steps), steps
    return [name for name, _ in steps]


@needs_profiler
def test_an_accelerated_fit_shows_the_window_steps_one_step_each(tmp_path):
    from fastcustom.trace_summary import newest_trace
    x, y = regression()                       # 20 steps of 32 per epoch
    model = profile.build_model()
    calls = []
    counter = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: calls.append(batch))
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False, callbacks=[
        keras.callbacks.TensorBoard(str(tmp_path), profile_batch=(5, 10)), counter])
    assert step_names(newest_trace(str(tmp_path))) == [f"train {n}" for n in range(5, 11)]
    # steps 1-3 in one call, 4..11 one each (xprof drops a capture's first and last), then
    # the rest of the epoch in one call, and the next epoch whole: outside, unchanged
    assert calls == [2, 3, 4, 5, 6, 7, 8, 9, 10, 19, 19]


@needs_profiler
def test_a_window_the_fit_never_reaches_warns(tmp_path):
    x, y = regression(128)
    model = profile.build_model()
    with pytest.warns(UserWarning, match=r"profile_batch=\(50, 60\)\) profiled nothing: the "
                                         r"fit ran 4 training steps"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                  callbacks=[keras.callbacks.TensorBoard(str(tmp_path), profile_batch=(50, 60))])


@needs_profiler
def test_step_markers_give_keras_own_fit_its_steps(tmp_path):
    x, y = regression()
    model = profile.build_model(accelerated=False)
    trace = profile.profile_fit(model, x, y, str(tmp_path), first_step=5, steps=4)
    assert step_names(trace) == ["train 5", "train 6", "train 7", "train 8"]


@needs_profiler
@pytest.mark.parametrize("jit", [True, False])
def test_the_command_profiles_and_summarizes_with_the_huber_kernel(tmp_path, capsys, jit):
    flags = [] if jit else ["--no-jit"]
    assert cli.main(["profile", "--logdir", str(tmp_path), "--steps", "4", *flags]) == 0
    printed = capsys.readouterr().out
    assert "Steps: 4 (train 5 .. train 8)" in printed and "ms per step" in printed
    assert f"tensorboard --logdir {tmp_path}" in printed
    huber = next(line for line in printed.splitlines() if line.startswith("The Huber kernel"))
    assert not huber.endswith(" 0.0% of op time"), printed
    if not jit and path_info()["path"] == "fused-op":
        assert "FastCustom>HuberMeanWithGrad" in printed
    assert "loss: huber_loss" in printed                 # op time attributed to the loss
    assert cli.main(["profile", "--summarize", str(tmp_path)]) == 0
    assert "Steps: 4 (train 5 .. train 8)" in capsys.readouterr().out


def test_profile_needs_a_logdir_or_summarize(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["profile"])
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "one of --logdir or --summarize is required" in line


def test_missing_packages_give_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(profile, "missing_packages", lambda: ["tensorboard-plugin-profile"])
    with pytest.raises(SystemExit) as stopped:
        cli.main(["profile", "--logdir", "unused"])
    assert stopped.value.code == 2
    assert "pip install tensorboard-plugin-profile" in capsys.readouterr().err


def _free_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)


@needs_profiler
def test_tensorboard_serves_the_overview_with_steps(tmp_path):
    x, y = regression()
    model = profile.build_model()
    profile.profile_fit(model, x, y, str(tmp_path), first_step=5, steps=3)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--host",
         "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        base = f"http://127.0.0.1:{port}/data/plugin/profile"
        deadline, runs = time.monotonic() + 120, None
        while runs is None and time.monotonic() < deadline:
            try:
                runs = _get(f"{base}/runs")
            except OSError:
                time.sleep(0.5)
        assert runs, "TensorBoard did not answer within 120 s"
        (run,) = runs
        (host,) = [h["hostname"] for h in _get(f"{base}/hosts?run={run}&tag=overview_page")]
        overview = _get(f"{base}/data?run={run}&tag=overview_page&host={host}")
        table = next(t for t in overview if isinstance(t, dict)
                     and any(c["id"] == "stepnum" for c in t.get("cols", [])))
        assert [row["c"][0]["v"] for row in table["rows"]] == ["train 5", "train 6", "train 7"]
    finally:
        server.kill()
        server.wait(timeout=30)
