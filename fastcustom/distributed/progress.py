"""The progress channel from a worker to `fastcustom launch`: one byte per event on a pipe.

The launcher gives each worker the write end of a pipe, named in its environment as
FASTCUSTOM_LAUNCH_FD="FD:INODE" (the inode tells the pipe apart from whatever file a
child process that inherited the variable but not the descriptor has under that number).
`fastcustom.fit` writes:

- BEGIN when a fit starts and END when it returns: a worker that exits with code 0 between
  the two, or without finishing a fit while another worker is in one, has failed the job
  (under MultiWorkerMirroredStrategy the others would wait for it for ever);
- CALL before each compiled call and STEP after it (and at each epoch's start and end):
  what `--timeout` counts as progress, with the worker's output lines. When no worker made
  progress for that long, the launcher blames one that is in a fit but not inside a call
  (stuck in Python code, a callback) before ones that wait inside a call (a collective);
- UNRECOVERABLE just before an error that a restart cannot fix (a BackupAndRestore folder
  that cannot be used): the launcher does not restart the job when that worker then fails.

Writes never block and never fail: without the launcher, or when its end is gone, they do
nothing. Standard library only (the launcher reads the same constants without TensorFlow).
"""

import os
import stat

ENV = "FASTCUSTOM_LAUNCH_FD"
BEGIN, CALL, STEP, END, UNRECOVERABLE = b"b", b"c", b".", b"e", b"!"


def channel_value(fd):
    """The FASTCUSTOM_LAUNCH_FD value that names pipe end `fd` (for the launcher)."""
    return f"{fd}:{os.fstat(fd).st_ino}"


def _channel():
    """The channel's file descriptor in this process, or None (not launched, or not this pipe)."""
    value = os.environ.get(ENV, "")
    fd, _, inode = value.partition(":")
    try:
        fd, inode = int(fd), int(inode)
        status = os.fstat(fd)
    except (ValueError, OSError):
        return None
    if not stat.S_ISFIFO(status.st_mode) or status.st_ino != inode:
        return None
    return fd


def send(event):
    """Write `event` (one of the bytes above) to the launcher, if this process has one."""
    fd = _channel()
    if fd is None:
        return
    try:
        os.set_blocking(fd, False)
        os.write(fd, event)
    except OSError:   # the pipe is full (the launcher reads it soon) or the launcher is gone
        pass
