"""`fastcustom launch`: N worker processes of one training job on this machine.

Starts `command` N times, each with a `TF_CONFIG` naming all N workers on free
loopback ports and its own index (the cluster `MultiWorkerMirroredStrategy`
reads), streams each worker's output with a `[worker i]` prefix, and watches
them. When one fails (a non-zero exit; an exit with 0 in the middle of training;
no progress for `timeout` seconds), it stops the others and, up to
`max_restarts` times, starts the whole job again on fresh ports (`torchrun`'s
convention: the job resumes from its own checkpoints, e.g.
`keras.callbacks.BackupAndRestore`). When restarts run out it says so in a last
line naming the worker that failed first and why.

Each worker runs under a guard (`guard.py`, a small process of its own): however
the launcher ends, SIGKILL included, and however the command wraps the training
process (a shell, redirections, `env`, a script), no process of the worker
outlives it. The launcher also reads which addresses the workers' TensorFlow
servers listen on and warns when one is not loopback (TensorFlow's gRPC server
listens on every interface, whatever the cluster spec says).

Exit codes: 0 when every worker exits 0; else the code of the worker that failed
first (128 + N for a signal N); EXIT_TIMED_OUT (124) when a worker made no progress
for `timeout` seconds; EXIT_LEFT_EARLY (1) when a worker exited with 0 in the middle of
training; EXIT_NOT_RESTARTABLE (65), without restarting, when the failing worker said
a restart cannot fix its error (fastcustom.fit does for a BackupAndRestore folder it
cannot use).

It only starts, watches and restarts processes: the training talks through
TensorFlow's collectives, never through the launcher. Standard library only, so
the command starts without importing TensorFlow.

    $ fastcustom launch --workers 2 --max-restarts 1 --timeout 600 -- python train.py
    [worker 0] Epoch 1/10 ...
"""

import collections
import contextlib
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from fastcustom.distributed import progress
from fastcustom.distributed.guard import process_stats

GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guard.py")
# Seconds a worker gets to exit after SIGTERM; then its guard kills whatever is left.
GRACE_SECONDS = 5.0
# Seconds a guard gets to kill its worker's processes and exit before it is killed too.
GUARD_SECONDS = 15.0
# Lines of a worker's output kept to repeat in the launcher's error message.
TAIL_LINES = 20
# What a worker prints when another process took its port between the pick and its bind;
# the job then starts again on new ports, up to PORT_RETRIES times, not counted as restarts.
PORT_TAKEN = ("Could not start gRPC server", "Address already in use")
PORT_RETRIES = 3
EXIT_LEFT_EARLY = 1
EXIT_NOT_RESTARTABLE = 65
EXIT_TIMED_OUT = 124
POLL_SECONDS = 0.05
# How often the launcher reads /proc/net/tcp for the workers' listening addresses.
LISTEN_CHECK_SECONDS = 0.5

# The worker that failed first, why (words after "worker i"), the job's exit code, its last
# lines, and the workers that said a restart cannot fix their failure.
Failure = collections.namedtuple("Failure", "index reason code tail unfixable")


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
    """A Popen return code in words: "exited with code 3", "was killed by SIGKILL"."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def listening(ports, tables=("/proc/net/tcp", "/proc/net/tcp6")):
    """{port: [address, ...]} of the sockets listening on `ports` now, from Linux's /proc
    tables ("0.0.0.0", "127.0.0.1", "::" ...); None where the tables cannot be read."""
    found, read_any = {}, False
    for table in tables:
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        read_any = True
        for row in rows:
            fields = row.split()
            address, _, port = fields[1].partition(":")
            if fields[3] == "0A" and int(port, 16) in ports:   # 0A: TCP_LISTEN
                found.setdefault(int(port, 16), []).append(_proc_address(address))
    return found if read_any else None


def _proc_address(hex_address):
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host order) in text."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(struct.pack("=I", struct.unpack(">I", raw[i:i + 4])[0])
                     for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def is_loopback(address):
    """Whether only this machine can reach `address` (127.0.0.0/8, ::1, ::ffff:127.x)."""
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def only_loopback_interfaces():
    """Whether every network interface this process sees is a loopback one (a network
    namespace of its own, `unshare --net`): then a wildcard listener is reachable from this
    machine only. False where it cannot tell."""
    try:
        import fcntl
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                request = struct.pack("16sh22x", name.encode()[:15], 0)
                flags = struct.unpack("16sh22x", fcntl.ioctl(s.fileno(), 0x8913, request))[1]
                if not flags & 0x8:   # SIOCGIFFLAGS; IFF_LOOPBACK
                    return False
        return True
    except (OSError, ImportError, AttributeError):
        return False


def stopped_processes(session):
    """The processes of session `session` (a worker's guard) stopped by a signal: [pid]."""
    return [pid for pid, state, _, in_session in process_stats()
            if in_session == session and state in (b"T", b"t")]


class Worker:
    """One worker: its guard process (a session of its own), the thread that streams its
    output, and the one that reads its progress channel."""

    def __init__(self, index, command, env, out, lock):
        self.index = index
        self.tail = collections.deque(maxlen=TAIL_LINES)
        self.started = self.last_progress = time.monotonic()
        self.in_fit, self.in_call, self.fits_done, self.restartable = False, False, 0, True
        lifeline, self._lifeline = os.pipe()
        progress_read, progress_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", GUARD, str(lifeline), "--", *command],
                env=dict(env, **{progress.ENV: progress.channel_value(progress_write)}),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True, pass_fds=(lifeline, progress_write))
        except BaseException:
            os.close(self._lifeline)
            os.close(progress_read)
            raise
        finally:
            os.close(lifeline)
            os.close(progress_write)
        self._threads = [threading.Thread(target=self._stream, args=(out, lock), daemon=True),
                         threading.Thread(target=self._listen, args=(progress_read,), daemon=True)]
        for thread in self._threads:
            thread.start()

    def _stream(self, out, lock):
        prefix = f"[worker {self.index}] "
        for raw in iter(self.process.stdout.readline, b""):
            self.last_progress = time.monotonic()
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            with lock:
                out.write(prefix + line + "\n")
                out.flush()
        self.process.stdout.close()

    def _listen(self, fd):
        """Progress events (fastcustom.distributed.progress) until every writer has exited."""
        with os.fdopen(fd, "rb", buffering=0) as channel:
            for chunk in iter(lambda: channel.read(4096), b""):
                self.last_progress = time.monotonic()
                for event in (chunk[i:i + 1] for i in range(len(chunk))):
                    self.in_call = event == progress.CALL
                    if event == progress.BEGIN:
                        self.in_fit, self.restartable = True, True
                    elif event == progress.END:
                        self.in_fit, self.fits_done = False, self.fits_done + 1
                    elif event in (progress.CALL, progress.STEP):
                        self.restartable = True
                    elif event == progress.UNRECOVERABLE:
                        self.restartable = False

    def settle(self, seconds=2.0):
        """After the guard exited: wait for the last output lines and progress events."""
        for thread in self._threads:
            thread.join(seconds)

    def terminate(self):
        """SIGTERM to the guard, which passes it on to every process of the worker."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            self.process.send_signal(signal.SIGTERM)

    def cut_lifeline(self):
        """Close the lifeline: the guard kills every process of the worker and exits."""
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None

    def kill_guard(self):
        """The last resort, for a guard that did not exit: SIGKILL to its process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def stop_all(workers, grace=GRACE_SECONDS):
    """Stop every worker still running: SIGTERM, `grace` seconds, then its guard kills what
    is left; reap every guard and read the workers' last output."""
    for w in workers:
        if w.process.poll() is None:
            w.terminate()
    deadline = time.monotonic() + grace
    for w in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.process.wait(max(deadline - time.monotonic(), 0))
    for w in workers:
        w.cut_lifeline()
    deadline = time.monotonic() + GUARD_SECONDS
    for w in workers:
        try:
            w.process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            w.kill_guard()
            w.process.wait()
    for w in workers:
        w.settle()


class ListenCheck:
    """Reads, until each port was seen, which addresses the workers listen on; says once
    per job which of them are not loopback (`said` holds what was said)."""

    def __init__(self, ports, err, lock, said):
        self.pending = {port: index for index, port in enumerate(ports)}
        self.err, self.lock, self.said = err, lock, said
        self.exposed, self._next = [], 0.0

    def __call__(self, now):
        if not self.pending or now < self._next:
            return
        self._next = now + LISTEN_CHECK_SECONDS
        found = listening(set(self.pending))
        if found is None:
            self.pending = {}
            self._say("unknown", "fastcustom launch: warning: cannot read /proc/net/tcp to check "
                      "where the workers listen; TensorFlow's gRPC server listens on every "
                      "network interface, whatever TF_CONFIG names (see docs/distributed.md)")
            return
        for port, addresses in found.items():
            index = self.pending.pop(port)
            self.exposed += [(index, _host_port(a, port)) for a in addresses if not is_loopback(a)]
        if self.exposed and not self.pending and not only_loopback_interfaces():
            where = ", ".join(f"worker {i} on {name}" for i, name in sorted(self.exposed))
            self._say("exposed", "fastcustom launch: warning: the workers' TensorFlow gRPC "
                      f"servers listen on every network interface ({where}), "
                      "not only on 127.0.0.1 as their TF_CONFIG says (TensorFlow binds its "
                      "server to the wildcard address whatever the cluster spec names). Until "
                      "the job ends, anything that can reach this machine on these ports can "
                      "run TensorFlow operations in the workers, without authentication: keep "
                      "the ports behind a firewall (see docs/distributed.md)")

    def _say(self, key, message):
        if key not in self.said:
            self.said.add(key)
            with self.lock:
                self.err.write(message + "\n")
                self.err.flush()


def _host_port(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _left_early(worker, others):
    """Why a worker that exited with 0 failed the job, or None: it was in the middle of a
    fastcustom.fit, or never finished one while another worker is in one."""
    if worker.in_fit:
        return "exited with code 0 before its fastcustom.fit returned"
    busy = [o.index for o in others if o.in_fit and o.process.poll() is None]
    if worker.fits_done == 0 and busy:
        return (f"exited with code 0 without finishing a fastcustom.fit while worker {busy[0]} "
                "was in one (it would wait for this worker for ever)")
    return None


def _silent(workers, timeout, now):
    """(the worker to blame, why) once a worker made no progress for `timeout` seconds, else
    (None, None). Under collectives one hung worker soon leaves every worker silent, so the
    blame goes, in this order, to a stopped worker (SIGSTOP); to one in a fit but between
    two compiled calls (stuck in Python code: a callback, the data) while others wait
    inside a call; else to the one silent longest."""
    running = [w for w in workers if w.process.poll() is None]
    if not any(now - w.last_progress > timeout for w in running):
        return None, None
    for w in running:
        stopped = stopped_processes(w.process.pid)
        if stopped:
            return w, (f"was stopped (its process {stopped[0]}: SIGSTOP or a debugger) while "
                       f"the job made no progress for {timeout:g} s (--timeout)")
    between = [w for w in running if w.in_fit and not w.in_call]
    waiting = any(w.in_call for w in running)
    culprit = min(between if between and waiting else running,
                  key=lambda w: (w.last_progress, w.index))
    reason = (f"made no progress for {now - culprit.last_progress:.0f} s (--timeout "
              f"{timeout:g}: no output line and no fastcustom.fit step)")
    if between and waiting:
        reason += "; it was between two compiled calls of its fit while others waited inside one"
    return culprit, reason


def _stopped_note(workers, failed):
    """A note naming the other workers that are stopped (SIGSTOP), or ""."""
    notes = []
    for w in workers:
        if w is not failed and w.process.poll() is None:
            stopped = stopped_processes(w.process.pid)
            if stopped:
                notes.append(f"worker {w.index} is stopped (its process {stopped[0]}: SIGSTOP "
                             "or a debugger), which its peers may have failed on")
    return "".join(f"; {note}" for note in notes)


def watch(workers, timeout, check_listening):
    """Wait until every worker exited with 0 (None) or one failed (a Failure)."""
    ended, left = set(), []
    while True:
        now = time.monotonic()
        for w in workers:
            if w.index in ended or w.process.poll() is None:
                continue
            ended.add(w.index)
            w.settle()
            code = w.process.returncode
            others = [o for o in workers if o is not w]
            reason = describe(code) if code != 0 else _left_early(w, others)
            if reason is None:
                if len(ended) < len(workers):
                    left.append((w.index, now))
                continue
            reason += _stopped_note(workers, w)
            for index, when in left:
                if now - when < 1.0:   # they ended together: nothing to say
                    continue
                reason += (f" (after worker {index} had exited with code 0, {now - when:.0f} s "
                           "earlier, while this one still ran)")
            return Failure(w.index, reason, exit_code(code) if code else EXIT_LEFT_EARLY,
                           list(w.tail), [])
        if len(ended) == len(workers):
            return None
        if timeout:
            culprit, reason = _silent(workers, timeout, now)
            if culprit is not None:
                return Failure(culprit.index, reason, EXIT_TIMED_OUT, list(culprit.tail), [])
        check_listening(now)
        time.sleep(POLL_SECONDS)


def run_once(command, workers, out=sys.stdout, err=sys.stderr, ports=None, env=None,
             timeout=None, said=None):
    """One attempt of the job: (exit code, the Failure or None)."""
    ports = ports or free_ports(workers)
    lock = threading.Lock()
    started = []
    try:
        for index in range(workers):
            worker_env = dict(env if env is not None else os.environ,
                              TF_CONFIG=tf_config(ports, index), PYTHONUNBUFFERED="1")
            started.append(Worker(index, command, worker_env, out, lock))
        check = ListenCheck(ports, err, lock, set() if said is None else said)
        failure = watch(started, timeout, check)
    except BaseException:   # an error here, or KeyboardInterrupt: no worker left behind
        stop_all(started, grace=1.0)
        raise
    stop_all(started)
    if failure is None:
        return 0, None
    # A worker stopped here may have said so before it was stopped: its word holds too.
    failure = failure._replace(unfixable=[w.index for w in started if not w.restartable])
    with lock:
        err.write(f"fastcustom launch: worker {failure.index} {failure.reason}; stopped the "
                  "other workers. Its last lines:\n")
        err.writelines(f"  {line}\n" for line in failure.tail)
        err.flush()
    return failure.code, failure


def run(command, workers, max_restarts=0, out=sys.stdout, err=sys.stderr, pick_ports=None,
        timeout=None):
    """Run the job, restarting all of it up to `max_restarts` times; the exit code.

    `timeout`: seconds without progress (an output line, a fastcustom.fit step) after which
    a worker counts as failed; None waits for ever.
    """
    if workers < 1 or max_restarts < 0:
        raise ValueError("workers must be >= 1 and max_restarts >= 0")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if not command:
        raise ValueError("no command to launch")
    pick_ports = pick_ports or free_ports

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, on_term)
                    for signum in (signal.SIGTERM, signal.SIGHUP)}
    said = set()
    try:
        attempts = restarts = port_retries = 0
        while True:
            attempts += 1
            code, failure = run_once(command, workers, out, err, ports=pick_ports(workers),
                                     timeout=timeout, said=said)
            if failure is None:
                return 0
            if failure.unfixable:
                names = " and ".join(f"worker {i}" for i in failure.unfixable)
                err.write(f"fastcustom launch: not restarting: {names} reported an error that a "
                          "restart cannot fix (their output above says which); exit code "
                          f"{EXIT_NOT_RESTARTABLE}\n")
                return EXIT_NOT_RESTARTABLE
            if port_retries < PORT_RETRIES and any(t in line for line in failure.tail
                                                   for t in PORT_TAKEN):
                port_retries += 1
                err.write("fastcustom launch: a port was taken by another process; starting "
                          "the job again on new ports\n")
            elif restarts < max_restarts:
                restarts += 1
                err.write(f"fastcustom launch: restarting the job "
                          f"({restarts} of {max_restarts} restarts)\n")
            else:
                err.write(f"fastcustom launch: giving up, no restarts left (--max-restarts "
                          f"{max_restarts}, {attempts} attempt{'s' if attempts > 1 else ''}): "
                          f"in the last attempt, worker {failure.index} failed first: it "
                          f"{failure.reason}; exit code {code}\n")
                return code
            err.flush()
    except KeyboardInterrupt:
        err.write("fastcustom launch: interrupted; the workers were stopped\n")
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
