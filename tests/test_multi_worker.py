"""Several workers on this machine: `fastcustom launch` + `fastcustom.fit` under
MultiWorkerMirroredStrategy, TensorFlow's collectives between real processes on loopback.

Every worker runs tests/multi_worker_train.py (the notes' regressor, fastcustom's
components) with one intra-op thread; each test bounds its time and ends every
process it started (the launcher's process group; the workers die with it).
"""

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fastcustom import cli
from fastcustom.distributed import launch

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = [sys.executable, os.path.join(HERE, "multi_worker_train.py")]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
       "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), *sys.path])}


def run_launcher(args, timeout):
    """`fastcustom launch ARGS` in its own process group: (exit code, output, seconds)."""
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "fastcustom", "launch", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=ENV, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)   # the workers die with it (PDEATHSIG)
        process.wait()
    return process.returncode, output, time.monotonic() - start


def results(folder, workers):
    return [json.load(open(os.path.join(folder, f"{i}.json"))) for i in range(workers)]


def assert_same_training(run, reference, epochs=None):
    epochs = epochs or reference["epochs"]
    assert run["epochs"] == epochs
    for name, values in reference["history"].items():
        np.testing.assert_allclose(run["history"][name], [values[e] for e in epochs],
                                   rtol=1e-5, err_msg=name)
    for a, b in zip(run["weights"], reference["weights"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """The job on one device, no TF_CONFIG: the reference."""
    out = tmp_path_factory.mktemp("one")
    env = {k: v for k, v in ENV.items() if k != "TF_CONFIG"}
    subprocess.run([*SCRIPT, "--out", str(out)], env=env, check=True, timeout=300,
                   capture_output=True)
    return results(out, 1)[0]


def test_two_workers_match_one_even_when_a_port_is_taken(one_worker, tmp_path):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    picks = iter([[held.getsockname()[1], *launch.free_ports(1)]])   # then fresh ones
    out, err = io.StringIO(), io.StringIO()
    try:
        code = launch.run([*SCRIPT, "--out", str(tmp_path)], workers=2, out=out, err=err,
                          pick_ports=lambda n: next(picks, None) or launch.free_ports(n))
    finally:
        held.close()
    assert code == 0, err.getvalue() + out.getvalue()[-3000:]
    assert "a port was taken" in err.getvalue()
    for run in results(tmp_path, 2):
        assert run["replicas"] == 2
        assert_same_training(run, one_worker)


def test_three_workers_match_one_in_calls_of_four_steps(one_worker, tmp_path):
    code, output, _ = run_launcher(["--workers", "3", "--", *SCRIPT, "--out", str(tmp_path),
                                    "--steps-per-call", "4"], timeout=400)
    assert code == 0, output[-3000:]
    for run in results(tmp_path, 3):
        assert run["replicas"] == 3
        assert_same_training(run, one_worker)


def test_killed_worker_resumes_to_the_same_weights(one_worker, tmp_path):
    """Worker 1 SIGKILLs itself in epoch 2 (of 0..2); the relaunched job restores epoch 2
    from the chief's BackupAndRestore and ends where the uninterrupted run ends."""
    backup = tmp_path / "backup"
    code, output, _ = run_launcher(
        ["--workers", "2", "--max-restarts", "1", "--", *SCRIPT, "--out", str(tmp_path / "out"),
         "--steps-per-call", "4", "--backup-dir", str(backup),
         "--kill-once", str(tmp_path / "killed")], timeout=400)
    assert code == 0, output[-3000:]
    assert "worker 1 was killed by SIGKILL" in output
    assert "restarting the job (1 of 1 restarts)" in output
    for run in results(tmp_path / "out", 2):
        assert_same_training(run, one_worker, epochs=[2])
    assert not backup.exists()   # removed by the chief at the end (delete_checkpoint)


def test_worker_failing_at_start_fails_the_job_fast(tmp_path):
    """Worker 1 exits with 3; worker 0, waiting for it in the strategy's start-up, is stopped."""
    code, output, seconds = run_launcher(
        ["--workers", "2", "--max-restarts", "0", "--", *SCRIPT, "--out", str(tmp_path),
         "--fail-on-worker", "1"], timeout=120)
    assert code == 3, output[-3000:]
    assert "worker 1 exited with code 3" in output
    assert "cannot read the training data: /no/such/file" in output
    assert seconds < 60
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout == "", "a worker outlived the launcher"


def test_launcher_exit_codes_and_restarts_without_tensorflow():
    """A worker killed by a signal gives 128 + N, restarts run the whole job again, and the
    launcher process never imports TensorFlow."""
    child = ("import json, os, signal; i = json.loads(os.environ['TF_CONFIG'])['task']['index'];"
             " print('attempt'); os.kill(os.getpid(), signal.SIGKILL) if i == 1 else None")
    check = (f"import sys; from fastcustom import cli; code = cli.main(['launch', '--workers', '2',"
             f" '--max-restarts', '2', '--', sys.executable, '-c', {child!r}]);"
             " print('tensorflow' in sys.modules, code)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=60, env=ENV)
    assert result.stdout.splitlines()[-1] == "False 137", result.stdout + result.stderr
    assert result.stdout.count("[worker 1] attempt") == 3
    assert "restarting the job (2 of 2 restarts)" in result.stderr


def test_launch_needs_a_command():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["launch", "--workers", "2", "--"])
    assert exit_info.value.code == 2
