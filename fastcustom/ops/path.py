"""`use_path`: choose the Huber kernels' path for a block of code.

    with fastcustom.use_path("xla"):   # the XLA path, even where the fused op could run
        ...
    with fastcustom.use_path("op"):    # the fused op, or a RuntimeError saying why not
        ...

Next to FASTCUSTOM_DISABLE_OPS=1 (the XLA path for the whole process), this is
for tests and for users comparing the two paths in one process. The choice is
made when a call is traced: a `tf.function` traced inside the block keeps its
path when it is called again outside it (trace a fresh function per path).
Blocks nest; each thread (and asyncio task) has its own choice.

>>> import numpy as np
>>> import fastcustom
>>> with fastcustom.use_path("xla"):
...     float(fastcustom.huber(np.array([[0.0]]), np.array([[3.0]]))[0])
2.5
"""

import contextlib
import contextvars

PATHS = ("xla", "op")

_forced = contextvars.ContextVar("fastcustom_forced_path", default=None)


@contextlib.contextmanager
def use_path(path):
    """Inside the block every Huber call takes `path`: "xla" or "op" (the fused op).

    Under "op", a call the fused op cannot serve (library not loaded, a dtype or
    device it has no kernel for, inside a `jit_compile=True` function) raises
    RuntimeError instead of falling back.
    """
    if path not in PATHS:
        raise ValueError(f"`path` must be one of {PATHS}, got {path!r}.")
    token = _forced.set(path)
    try:
        yield path
    finally:
        _forced.reset(token)


def forced_path():
    """The path chosen by the innermost `use_path` block, or None outside any."""
    return _forced.get()
