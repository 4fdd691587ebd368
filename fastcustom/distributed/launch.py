"""`fastcustom launch`: N worker processes of one training job on this machine.

Starts `command` N times, each with a `TF_CONFIG` naming all N workers on free
loopback ports and its own index (the cluster `MultiWorkerMirroredStrategy`
reads), streams each worker's output with a `[worker i]` prefix, and watches
them: when one fails, it stops the others (SIGTERM, then SIGKILL after a grace
period, each worker's whole process group) and, up to `max_restarts` times,
starts the whole job again on fresh ports (`torchrun`'s convention: the job
resumes from its own checkpoints, e.g. `keras.callbacks.BackupAndRestore`).
It returns the failing worker's exit code (128 + N for a signal N), or 0.

It only starts, watches and restarts processes: the training talks through
TensorFlow's collectives, never through the launcher. Standard library only, so
the command starts without importing TensorFlow.

    $ fastcustom launch --workers 2 --max-restarts 1 -- python train.py --epochs 10
    [worker 0] Epoch 1/10 ...
"""

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

# Seconds a worker gets to exit after SIGTERM before it is killed.
GRACE_SECONDS = 5.0
# Lines of a worker's output kept to repeat in the launcher's error message.
TAIL_LINES = 20
# What a worker prints when another process took its port between the pick and its bind;
# the job then starts again on new ports, up to PORT_RETRIES times, not counted as restarts.
PORT_TAKEN = ("Could not start gRPC server", "Address already in use")
PORT_RETRIES = 3


def free_ports(count, host="127.0.0.1"):
    """`count` distinct ports free on `host` now (bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                   for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


def tf_config(ports, index, host="127.0.0.1"):
    """The `TF_CONFIG` of worker `index` of a cluster of workers at `host:port` each."""
    return json.dumps({"cluster": {"worker": [f"{host}:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def exit_code(returncode):
    """A process's exit status as a shell reports it: 128 + N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe(returncode):
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _die_with_parent():
    """In the child: get SIGKILL when the launcher dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


class Worker:
    """One worker process (in its own process group) and the thread that streams its output."""

    def __init__(self, index, command, env, out, lock):
        self.index = index
        self.tail = collections.deque(maxlen=TAIL_LINES)
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        self._thread = threading.Thread(target=self._stream, args=(out, lock), daemon=True)
        self._thread.start()

    def _stream(self, out, lock):
        prefix = f"[worker {self.index}] "
        for raw in iter(self.process.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            with lock:
                out.write(prefix + line + "\n")
                out.flush()
        self.process.stdout.close()

    def signal(self, signum):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, grace=GRACE_SECONDS):
        """SIGTERM its process group; SIGKILL after `grace` seconds; reap it."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)   # and whatever it started in its group
        self.process.wait()
        self._thread.join(grace)


def run_once(command, workers, out=sys.stdout, err=sys.stderr, ports=None, env=None):
    """One attempt of the job; (exit code, the failing worker's last lines or None)."""
    ports = ports or free_ports(workers)
    lock = threading.Lock()
    started = []
    try:
        for index in range(workers):
            worker_env = dict(env if env is not None else os.environ,
                              TF_CONFIG=tf_config(ports, index), PYTHONUNBUFFERED="1")
            started.append(Worker(index, command, worker_env, out, lock))
        while True:
            codes = [w.process.poll() for w in started]
            failed = next((w for w, c in zip(started, codes) if c not in (None, 0)), None)
            if failed is not None:
                code = failed.process.returncode
                for w in started:
                    if w is not failed:
                        w.stop()
                failed.stop()
                with lock:
                    err.write(f"fastcustom launch: worker {failed.index} {describe(code)}; "
                              f"stopped the other workers. Its last lines:\n")
                    err.writelines(f"  {line}\n" for line in failed.tail)
                    err.flush()
                return exit_code(code), list(failed.tail)
            if all(c == 0 for c in codes):
                for w in started:
                    w.stop()
                return 0, None
            time.sleep(0.05)
    finally:
        for w in started:   # on any error here, or KeyboardInterrupt: no orphans
            w.stop(grace=1.0)


def run(command, workers, max_restarts=0, out=sys.stdout, err=sys.stderr, pick_ports=None):
    """Run the job, restarting all of it up to `max_restarts` times; the exit code."""
    if workers < 1 or max_restarts < 0:
        raise ValueError("workers must be >= 1 and max_restarts >= 0")
    if not command:
        raise ValueError("no command to launch")
    pick_ports = pick_ports or free_ports

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        restarts = port_retries = 0
        while True:
            code, tail = run_once(command, workers, out, err, ports=pick_ports(workers))
            if code == 0:
                return 0
            if port_retries < PORT_RETRIES and any(t in line for line in tail
                                                   for t in PORT_TAKEN):
                port_retries += 1
                err.write("fastcustom launch: a port was taken by another process; starting "
                          "the job again on new ports\n")
            elif restarts < max_restarts:
                restarts += 1
                err.write(f"fastcustom launch: restarting the job "
                          f"({restarts} of {max_restarts} restarts)\n")
            else:
                return code
            err.flush()
    except KeyboardInterrupt:
        err.write("fastcustom launch: interrupted; the workers were stopped\n")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
