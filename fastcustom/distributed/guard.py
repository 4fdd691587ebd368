"""The guard of one `fastcustom launch` worker: no process of the worker outlives the launcher.

`fastcustom launch` starts each worker as `python -I guard.py LIFELINE_FD -- COMMAND ...`
in a session of its own. The guard runs COMMAND in a process group of its own and watches:

- the lifeline, a pipe whose only write end the launcher holds. End of file on it means the
  launcher is gone, however it died (SIGKILL included), or wants this worker gone now: the
  guard kills every process of the worker (SIGKILL) and exits.
- COMMAND. When it ends, whatever it left running (a shell's background job, a daemon) is
  killed too, and the guard exits as COMMAND did (the same code, or killed by the same
  signal), so the launcher reads COMMAND's status as its own child's.

A shell, `env`, a script or redirections around the training command change nothing: every
process they start is in COMMAND's group. On Linux the guard is also a child subreaper
(prctl PR_SET_CHILD_SUBREAPER), so a process that leaves the group (setsid) and loses its
parent becomes the guard's child, and is killed with the rest.

SIGTERM (or SIGINT, SIGHUP) to the guard is passed on to COMMAND's group, with a SIGCONT so
that a stopped process can act on it; the launcher closes the lifeline when its grace period
is over. The guard also owns the worker's scratch folder (FASTCUSTOM_SCRATCH_DIR, where
fastcustom writes a non-chief worker's throw-away files): made before COMMAND starts,
removed when the worker is gone.

Standard library only, run with `python -I`: it imports neither fastcustom nor TensorFlow.
"""

import contextlib
import ctypes
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SCRATCH_ENV = "FASTCUSTOM_SCRATCH_DIR"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# How long the guard keeps killing and reaping a worker's processes before it gives up on
# ones that do not die (a process in uninterruptible sleep dies when it wakes).
SWEEP_SECONDS = 10.0
# How often the guard looks for ended processes while COMMAND runs.
POLL_SECONDS = 0.05
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _prctl(option, value):
    if _LIBC is not None:
        _LIBC.prctl(option, value, 0, 0, 0)


def _in_command_before_exec(guard_pid):
    """In COMMAND's process before exec: its own process group, and SIGKILL if the guard dies."""
    os.setpgid(0, 0)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != guard_pid:   # the guard died before the line above
        os._exit(137)


def process_stats():
    """(pid, state, parent pid, session) of every process /proc lists, from its
    /proc/PID/stat; nothing where there is no /proc. A process that ends while it is read
    is left out."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()   # after the command name
                yield int(entry), fields[0], int(fields[1]), int(fields[3])
            except (OSError, ValueError, IndexError):
                continue


def children():
    """The processes whose parent is this one (read from /proc; empty where there is none)."""
    me = os.getpid()
    return [pid for pid, _, parent, _ in process_stats() if parent == me]


def signal_all(group, signum):
    """`signum` to COMMAND's process group and to every child of the guard (adopted ones)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)
    for pid in children():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def reap():
    """Reap the children that have ended: [(pid, wait status)], without waiting."""
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append((pid, status))


def sweep(group):
    """SIGKILL every process of the worker, rounds at a time, until none is left to reap."""
    deadline = time.monotonic() + SWEEP_SECONDS
    while time.monotonic() < deadline:
        signal_all(group, signal.SIGKILL)
        reap()
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            if not children():
                return
        time.sleep(0.01)


def exit_like(status):
    """Exit as a process that ended with wait status `status` did: its code, or its signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    signum = -code
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    with contextlib.suppress(OSError, ValueError):
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)


def start(command):
    """COMMAND in its own process group (the guard's environment: the scratch folder's name)."""
    guard_pid = os.getpid()
    return subprocess.Popen(command, close_fds=False,
                            preexec_fn=lambda: _in_command_before_exec(guard_pid))


def main(argv):
    if len(argv) < 4 or argv[2] != "--":
        print("usage: guard.py LIFELINE_FD -- COMMAND ...", file=sys.stderr)
        return 2
    lifeline = int(argv[1])
    os.set_inheritable(lifeline, False)   # COMMAND keeps the launcher's other fds, not this one
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    group = None
    stop_asked = []

    def on_stop_signal(signum, frame):
        """Passed on to COMMAND's group at once (or as soon as it has started)."""
        stop_asked.append(signum)
        if group is not None:
            signal_all(group, signal.SIGTERM)
            signal_all(group, signal.SIGCONT)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_stop_signal)
    scratch = tempfile.mkdtemp(prefix="fastcustom-launch-")
    os.environ[SCRATCH_ENV] = scratch
    try:
        try:
            command = start(argv[3:])
        except OSError as error:   # as a shell says it: 127 not found, 126 not runnable
            print(f"fastcustom launch: cannot run {argv[3]!r}: {error.strerror}",
                  file=sys.stderr, flush=True)
            return 127 if isinstance(error, FileNotFoundError) else 126
        group = command.pid
        if stop_asked:
            on_stop_signal(signal.SIGTERM, None)
        status = wait_for(command, group, lifeline)
        sweep(group)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    exit_like(status)


def wait_for(command, group, lifeline):
    """COMMAND's wait status; SIGKILL to the whole worker once the lifeline ends. One thread:
    signal handlers run as soon as a signal arrives."""
    watching = True
    while True:
        if watching and select.select([lifeline], [], [], POLL_SECONDS)[0]:
            if not os.read(lifeline, 64):
                watching = False
                signal_all(group, signal.SIGKILL)
        elif not watching:
            time.sleep(POLL_SECONDS)
        for pid, status in reap():
            if pid == command.pid:
                command.returncode = os.waitstatus_to_exitcode(status)
                return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
