"""Several workers on this machine: `fastcustom launch` + `fastcustom.fit` under
MultiWorkerMirroredStrategy, TensorFlow's collectives between real processes on loopback.

Training workers run tests/multi_worker_train.py (the notes' regressor, fastcustom's
components) with one intra-op thread. The launcher's own contract (no worker outlives it,
--timeout, the progress channel, exit codes) is also checked with workers that are plain
Python loops, without TensorFlow, which take a second. Each test bounds its time, ends
every process it started by its id (`launched` kills the launcher, then any process found
below it that outlived it, and fails the test if there was one), and leaves nothing in
the temporary folder. Runs of twenty seconds and more are marked `long` (pytest --long).
"""

import collections
import contextlib
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from fastcustom import cli
from fastcustom.distributed import launch

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = [sys.executable, os.path.join(HERE, "multi_worker_train.py")]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
       "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), *sys.path])}
# The first line of a plain Python worker: its index in the cluster.
INDEX = "import json, os, sys, time\nindex = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
# What a plain worker imports to send progress events as fastcustom.fit does (no TensorFlow).
SEND = "from fastcustom.distributed import progress\n"


def python_worker(code):
    """The command of a worker that runs `code` (after INDEX and SEND) in a plain Python
    process."""
    return [sys.executable, "-c", INDEX + SEND + textwrap.dedent(code)]


# What reads processes and sockets from /proc: Linux.
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")


def process_table():
    """{pid: (parent pid, state letter)} of every process now, from /proc ({} without it)."""
    table = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc/self") else []:
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                table[int(entry)] = (int(fields[1]), fields[0].decode())
    return table


def descendants(root):
    """The processes below `root` now: {pid}."""
    children = collections.defaultdict(list)
    for pid, (parent, _) in process_table().items():
        children[parent].append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children[todo.pop()]:
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids):
    """Those of `pids` still running (a zombie has ended)."""
    table = process_table()
    return sorted(pid for pid in pids if pid in table and table[pid][1] != "Z")


def wait_until(condition, seconds, step=0.05):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(step)
    return condition()


def training_workers(root):
    """The processes below `root` that run multi_worker_train.py (not their guard or shell)."""
    found = []
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if any(a.endswith(b"multi_worker_train.py") for a in argv[:2]):
                found.append(pid)
    return found


def environment_of(pid):
    """The environment of process `pid`: {name: value} ({} when it is gone)."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = (item.partition(b"=") for item in f.read().split(b"\0") if item)
            return {k.decode(): v.decode(errors="replace") for k, _, v in pairs}
    return {}


class Launch:
    """`fastcustom launch ARGS` in a process of its own; its output lines as they come."""

    def __init__(self, args, env=ENV):
        self.started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", "fastcustom", "launch", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env, start_new_session=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self):
        return "\n".join(self.lines)

    def wait_for(self, text, seconds, count=1):
        """Whether `text` appeared `count` times in the output within `seconds`."""
        return wait_until(lambda: self.output.count(text) >= count
                          or (self.process.poll() is not None and not self._reader.is_alive()),
                          seconds) and self.output.count(text) >= count

    def finish(self, seconds):
        """(exit code, output, seconds since the start) once it exits, within `seconds`."""
        self.process.wait(timeout=seconds)
        self._reader.join(10)
        return self.process.returncode, self.output, time.monotonic() - self.started

    def close(self):
        """SIGKILL the launcher; the processes that outlived it (each then SIGKILLed)."""
        below = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        wait_until(lambda: not alive(below), 10)
        left = alive(below)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(10)
        self.process.stdout.close()
        return left


@contextlib.contextmanager
def launched(args, env=ENV):
    """A Launch, closed at the end; the test fails if one of its processes outlived it."""
    process = Launch(args, env)
    try:
        yield process
    finally:
        left = process.close()
    assert not left, f"processes outlived the launcher: {left}\n{process.output[-3000:]}"


def run_launcher(args, timeout):
    """`fastcustom launch ARGS` to its end: (exit code, output, seconds)."""
    with launched(args) as process:
        return process.finish(timeout)


def assert_none_left(marker):
    """No process whose command line holds `marker` (ended by its id if there is one)."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    assert found == [], f"processes left running: {found}"


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


# --- the launcher with plain Python workers: seconds each --------------------------------

# A worker that records its pid and scratch folder in the file argv[1], then runs for ever.
FOREVER = ("import os, sys, time\nwith open(sys.argv[1], 'a') as f:\n"
           "    f.write(f\"{os.getpid()} {os.environ['FASTCUSTOM_SCRATCH_DIR']}\\n\")\n"
           "while True:\n    time.sleep(0.1)\n")
WRAPPERS = {
    "a shell with redirections": lambda log: [
        "bash", "-c", '"$0" -c "$1" "$2" >> "$2.out" 2>&1', sys.executable, FOREVER, log],
    "env": lambda log: ["env", "FASTCUSTOM_TEST=1", sys.executable, "-c", FOREVER, log],
    "a script that backgrounds it": lambda log: [
        "sh", os.path.join(os.path.dirname(log), "train.sh"), log],
    "setsid, out of the worker's group": lambda log: [
        "bash", "-c", 'setsid "$0" -c "$1" "$2" & wait', sys.executable, FOREVER, log],
}


@needs_proc
@pytest.mark.parametrize("wrapper, signum", [*((w, signal.SIGKILL) for w in WRAPPERS),
                                             ("a shell with redirections", signal.SIGTERM)])
def test_no_worker_outlives_the_launcher(wrapper, signum, tmp_path):
    """However the command wraps the worker, killing the launcher (SIGKILL too) ends every
    process of every worker and removes their scratch folders."""
    if wrapper.startswith("setsid") and shutil.which("setsid") is None:
        pytest.skip("no setsid(1) here")
    log = str(tmp_path / "workers.log")
    (tmp_path / "train.sh").write_text(f'"{sys.executable}" -c "$FOREVER" "$1" &\nwait\n')
    env = dict(ENV, FOREVER=FOREVER)
    with launched(["--workers", "2", "--", *WRAPPERS[wrapper](log)], env=env) as process:
        assert wait_until(lambda: os.path.exists(log) and len(open(log).readlines()) == 2, 30), \
            process.output
        records = [line.split() for line in open(log)]
        pids, scratch = [int(pid) for pid, _ in records], [folder for _, folder in records]
        assert alive(pids) == sorted(pids) and all(os.path.isdir(f) for f in scratch)
        os.kill(process.process.pid, signum)
        assert wait_until(lambda: not alive(pids), 15), f"workers outlived the launcher: {pids}"
        assert wait_until(lambda: not any(os.path.exists(f) for f in scratch), 5)
        code, output, _ = process.finish(15)
    assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 130), output
    if signum == signal.SIGTERM:
        assert "interrupted; the workers were stopped" in output


def test_a_silent_worker_times_out_is_named_and_the_job_restarts():
    """Worker 1 prints a line and hangs; worker 0 keeps printing. After --timeout seconds
    without progress worker 1 has failed, every time; the last line says so."""
    code, output, seconds = run_launcher(["--workers", "2", "--max-restarts", "1", "--timeout",
                                          "2", "--", *python_worker("""
        print("started", flush=True)
        for step in range(600):
            if index == 0:
                print(step, flush=True)
            time.sleep(0.1)
        """)], timeout=60)
    assert code == launch.EXIT_TIMED_OUT, output
    assert len(re.findall(r"worker 1 made no progress for \d+ s \(--timeout 2", output)) == 2
    assert "restarting the job (1 of 1 restarts)" in output
    assert re.fullmatch(
        r"fastcustom launch: giving up, no restarts left \(--max-restarts 1, 2 attempts\): in "
        r"the last attempt, worker 1 failed first: it made no progress for \d+ s \(--timeout 2: "
        r"no output line and no fastcustom.fit step\); exit code 124", output.splitlines()[-1])
    assert seconds < 30


@needs_proc
def test_a_stopped_worker_is_named_when_every_worker_is_silent():
    """Worker 1 stops itself (SIGSTOP); worker 0 waits, silent, as for a collective. The
    stopped one is the failure; SIGKILL ends it although it is stopped."""
    code, output, _ = run_launcher(["--workers", "2", "--timeout", "2", "--",
                                    *python_worker("""
        print("started", flush=True)
        if index == 1:
            os.kill(os.getpid(), 19)   # SIGSTOP
        time.sleep(60)
        """)], timeout=60)
    assert code == launch.EXIT_TIMED_OUT, output
    assert re.search(r"worker 1 was stopped \(its process \d+: SIGSTOP or a debugger\) while "
                     r"the job made no progress for 2 s \(--timeout\)", output), output


@needs_proc
def test_a_failure_names_a_stopped_worker_its_peers_may_have_failed_on():
    """TensorFlow's coordination service fails the peers of a stopped worker (it stops
    sending heartbeats): the launcher's line about the peer's exit names the stopped one."""
    code, output, _ = run_launcher(["--workers", "2", "--", *python_worker("""
        if index == 1:
            os.kill(os.getpid(), 19)   # SIGSTOP
        time.sleep(1)
        sys.exit(1)
        """)], timeout=60)
    assert code == 1, output
    assert re.search(r"worker 0 exited with code 1; worker 1 is stopped \(its process \d+: "
                     r"SIGSTOP or a debugger\), which its peers may have failed on", output), output


@pytest.mark.parametrize("worker_1, failure", [
    ("progress.send(progress.BEGIN); sys.exit(0)",
     "worker 1 exited with code 0 before its fastcustom.fit returned"),
    ("sys.exit(0)", "worker 1 exited with code 0 without finishing a fastcustom.fit while "
                    "worker 0 was in one"),
])
def test_a_worker_that_exits_zero_while_others_train_is_the_failure(worker_1, failure):
    """Worker 0 trains (a fit that lasts a minute); worker 1 exits with 0 in the middle of
    its fit, or without one: it failed the job, at once, and worker 0 is stopped."""
    code, output, seconds = run_launcher(["--workers", "2", "--", *python_worker(f"""
        time.sleep(index)   # worker 0 is in its fit first
        if index == 1:
            {worker_1}
        progress.send(progress.BEGIN)
        time.sleep(60)
        """)], timeout=60)
    assert code == launch.EXIT_LEFT_EARLY, output
    assert f"fastcustom launch: {failure}" in output
    assert seconds < 30


def test_workers_that_end_their_fits_at_different_times_succeed():
    """Worker 1 ends its fit and exits; worker 0 ends its own a second later: no failure."""
    code, output, _ = run_launcher(["--workers", "2", "--", *python_worker("""
        progress.send(progress.BEGIN)
        time.sleep(1.5 if index == 0 else 0.1)
        progress.send(progress.END)
        print("done", flush=True)
        """)], timeout=60)
    assert code == 0, output
    assert output.count("done") == 2 and "fastcustom launch:" not in output


def test_a_failure_a_restart_cannot_fix_is_not_restarted():
    """Worker 1 says its error is not restartable (as fit does for an unusable backup), then
    fails: one attempt, exit code 65, although restarts are left."""
    code, output, _ = run_launcher(["--workers", "2", "--max-restarts", "3", "--",
                                    *python_worker("""
        print("attempt", flush=True)
        if index == 1:
            progress.send(progress.UNRECOVERABLE)
            sys.exit(1)
        time.sleep(60)
        """)], timeout=60)
    assert code == launch.EXIT_NOT_RESTARTABLE, output
    assert output.count("[worker 1] attempt") == 1 and "restarting the job" not in output
    assert "not restarting: worker 1 reported an error that a restart cannot fix" in output
    assert output.splitlines()[-1].endswith("exit code 65")


def test_launcher_exit_codes_and_restarts_without_tensorflow():
    """A worker killed by a signal gives 128 + N, restarts run the whole job again, the last
    line says when they run out, and the launcher process never imports TensorFlow."""
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
    assert result.stderr.splitlines()[-1] == (
        "fastcustom launch: giving up, no restarts left (--max-restarts 2, 3 attempts): in the "
        "last attempt, worker 1 failed first: it was killed by SIGKILL; exit code 137")


def test_a_command_that_cannot_run_exits_as_a_shell_says():
    code, output, _ = run_launcher(["--workers", "1", "--", "/no/such/program"], timeout=30)
    assert code == 127, output
    assert "cannot run '/no/such/program'" in output


def test_a_network_namespace_with_only_loopback_is_told_apart():
    """Under `unshare --net` (only `lo`) a wildcard listener reaches this machine only, and
    the launcher does not warn there; on this machine's own interfaces it does."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    probe = "from fastcustom.distributed import launch; print(launch.only_loopback_interfaces())"
    inside = subprocess.run(["unshare", "--net", "--map-root-user", sys.executable, "-c", probe],
                            capture_output=True, text=True, timeout=60, env=ENV)
    if inside.returncode != 0:
        pytest.skip(f"no unprivileged network namespace here: {inside.stderr.strip()[-200:]}")
    assert inside.stdout.strip() == "True"
    names = {name for _, name in socket.if_nameindex()}
    assert launch.only_loopback_interfaces() == (names == {"lo"})


def test_launch_needs_a_command():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["launch", "--workers", "2", "--"])
    assert exit_info.value.code == 2


def test_launch_rejects_a_timeout_that_is_not_positive():
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0, got 0"):
        launch.run(["python"], workers=1, timeout=0)


# --- TensorFlow workers ------------------------------------------------------------------

def listening_sockets(pids):
    """The TCP sockets `pids` listen on: [(pid, address, port)], from /proc (its own
    reading, apart from the launcher's)."""
    owner = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owner[target[8:-1]] = pid
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in owner:
                    hex_address, hex_port = fields[1].split(":")
                    raw = b"".join(struct.pack("<I", int(hex_address[i:i + 8], 16))
                                   for i in range(0, len(hex_address), 8))
                    found.append((owner[fields[9]], socket.inet_ntop(family, raw),
                                  int(hex_port, 16)))
    return found


@needs_proc
def test_workers_listen_on_their_port_and_the_launcher_names_every_exposed_one(tmp_path):
    """Each worker's TensorFlow server listens on its TF_CONFIG port only; every listener
    not on loopback is named in the launcher's warning (TensorFlow binds the wildcard
    address: there is one for each worker)."""
    release = tmp_path / "release"
    with launched(["--workers", "2", "--", *SCRIPT, "--out", str(tmp_path),
                   "--hold", str(release)]) as process:
        assert process.wait_for("] ready", 120, count=2), process.output
        workers = {pid: json.loads(environment_of(pid)["TF_CONFIG"])
                   for pid in training_workers(process.process.pid)}
        sockets = listening_sockets(workers)
        assert len(workers) == 2 and len(sockets) >= 2
        for pid, address, port in sockets:
            config = workers[pid]
            assert f"127.0.0.1:{port}" == config["cluster"]["worker"][config["task"]["index"]]
        exposed = [f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for _, a, p in sockets
                   if not (ipaddress.ip_address(a).is_loopback or a.startswith("::ffff:127."))]
        if exposed:
            assert process.wait_for("listen on every network interface", 10), process.output
            warning = next(line for line in process.lines if "every network interface" in line)
            assert all(name in warning for name in exposed), (exposed, warning)
        release.touch()
        code, output, _ = process.finish(60)
    assert code == 0, output


def test_an_unusable_backup_fails_the_job_at_once(tmp_path):
    """A state.json that names epoch 99 of a 3-epoch fit: every worker says which folder
    and why, and the launcher does not restart (exit code 65) though restarts are left."""
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "state.json").write_text(
        json.dumps({"epoch": 99, "batch": 0, "weights": "epoch-99-batch-0.weights.h5"}))
    code, output, _ = run_launcher(
        ["--workers", "2", "--max-restarts", "3", "--", *SCRIPT, "--out", str(tmp_path / "out"),
         "--backup-dir", str(backup)], timeout=300)
    assert code == launch.EXIT_NOT_RESTARTABLE, output[-3000:]
    assert f"BackupError: fastcustom: the BackupAndRestore folder '{backup}' cannot be used: " \
           "state.json: \"epoch\" is 99, past this fit's last epoch (epochs=3)" in output
    assert "restarting the job" not in output and "not restarting" in output
    assert_none_left(str(tmp_path))


def test_worker_failing_at_start_fails_the_job_fast(tmp_path):
    """Worker 1 exits with 3; worker 0, waiting for it in the strategy's start-up, is stopped."""
    code, output, seconds = run_launcher(
        ["--workers", "2", "--max-restarts", "0", "--", *SCRIPT, "--out", str(tmp_path),
         "--fail-on-worker", "1"], timeout=120)
    assert code == 3, output[-3000:]
    assert "worker 1 exited with code 3" in output
    assert "cannot read the training data: /no/such/file" in output
    assert seconds < 60
    assert_none_left(str(tmp_path))


@pytest.mark.long
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


@pytest.mark.long
def test_three_workers_match_one_in_calls_of_four_steps(one_worker, tmp_path):
    code, output, _ = run_launcher(["--workers", "3", "--", *SCRIPT, "--out", str(tmp_path),
                                    "--steps-per-call", "4"], timeout=400)
    assert code == 0, output[-3000:]
    for run in results(tmp_path, 3):
        assert run["replicas"] == 3
        assert_same_training(run, one_worker)


def resumed_run(tmp_path, fault, *options):
    """The job with worker 1 hit by `fault` once in epoch 2, one restart allowed:
    (exit code, output, the backup folder)."""
    backup = tmp_path / "backup"
    code, output, _ = run_launcher(
        ["--workers", "2", "--max-restarts", "1", *options, "--", *SCRIPT,
         "--out", str(tmp_path / "out"), "--steps-per-call", "4", "--backup-dir", str(backup),
         f"--{fault}", str(tmp_path / "fault")], timeout=400)
    return code, output, backup


@pytest.mark.long
def test_killed_worker_resumes_to_the_same_weights(one_worker, tmp_path):
    """Worker 1 SIGKILLs itself in epoch 2 (of 0..2); the relaunched job restores epoch 2
    from the chief's BackupAndRestore and ends where the uninterrupted run ends."""
    code, output, backup = resumed_run(tmp_path, "kill-once")
    assert code == 0, output[-3000:]
    assert "worker 1 was killed by SIGKILL" in output
    assert "restarting the job (1 of 1 restarts)" in output
    for run in results(tmp_path / "out", 2):
        assert_same_training(run, one_worker, epochs=[2])
    assert not backup.exists()   # removed by the chief at the end (delete_checkpoint)


@pytest.mark.long
def test_hung_worker_times_out_is_named_and_the_job_resumes_to_the_same_weights(one_worker,
                                                                               tmp_path):
    """Worker 1 hangs in a callback in epoch 2 (TensorFlow's heartbeats go on; worker 0
    waits in its collective for ever). After --timeout the launcher names worker 1, ends
    both, and the restarted job resumes to the uninterrupted weights."""
    code, output, _ = resumed_run(tmp_path, "hang-once", "--timeout", "30")
    assert code == 0, output[-3000:]
    assert re.search(r"worker 1 made no progress for \d+ s \(--timeout 30: no output line and "
                     r"no fastcustom.fit step\); it was between two compiled calls of its fit "
                     r"while others waited inside one", output), \
        "\n".join(line for line in output.splitlines() if line.startswith("fastcustom launch"))
    assert "restarting the job (1 of 1 restarts)" in output
    for run in results(tmp_path / "out", 2):
        assert_same_training(run, one_worker, epochs=[2])


@pytest.mark.long
def test_worker_exiting_zero_mid_training_fails_and_the_job_resumes(one_worker, tmp_path):
    """Worker 1 exits with 0 in the middle of its fit: the failure is worker 1's, found at
    once (worker 0 would wait for it for ever), and the restarted job ends as the
    uninterrupted one."""
    code, output, _ = resumed_run(tmp_path, "exit-zero-once")
    assert code == 0, output[-3000:]
    assert "worker 1 exited with code 0 before its fastcustom.fit returned" in output
    for run in results(tmp_path / "out", 2):
        assert_same_training(run, one_worker, epochs=[2])


@needs_proc
@pytest.mark.long
def test_killed_launcher_leaves_no_worker_no_writer_and_nothing_in_tmp(tmp_path):
    """The issue's case: `bash -c 'python train.py >> log 2>&1'` under the launcher, which
    is SIGKILLed once the chief has written a backup: every worker process ends at once, the
    backup stops changing, and the workers' scratch folders are gone."""
    backup, log = tmp_path / "backup", tmp_path / "train.log"
    wrapped = ["bash", "-c", f'"$0" "$@" >> {log} 2>&1', *SCRIPT, "--out", str(tmp_path / "out"),
               "--epochs", "1000", "--backup-dir", str(backup)]
    with launched(["--workers", "2", "--", *wrapped]) as process:
        assert wait_until(lambda: (backup / "state.json").exists(), 240), \
            process.output + (log.read_text() if log.exists() else "")
        workers = training_workers(process.process.pid)
        scratch = [environment_of(pid)["FASTCUSTOM_SCRATCH_DIR"] for pid in workers]
        assert len(workers) == 2 and all(os.path.isdir(f) for f in scratch)
        os.kill(process.process.pid, signal.SIGKILL)
        assert wait_until(lambda: not alive(workers), 15), "workers outlived the launcher"
        state = (backup / "state.json").read_text()
        time.sleep(2)
        assert (backup / "state.json").read_text() == state
        assert not any(os.path.exists(f) for f in scratch)
    assert_none_left(str(tmp_path))
