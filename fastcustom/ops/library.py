"""Loads the fused Huber op library once, and says which Huber path is active.

The library (`_huber_ops.so` next to this module, built by setup.py) holds
`FastCustom>HuberPerSample` (mean over the last axis of h(y_true - y_pred),
h(e) = e^2/2 if |e| <= delta else delta |e| - delta^2/2), its fused gradient
and `FastCustom>HuberWeightedTotal`. When it is missing or fails to load (a
library built for another TensorFlow, say), `huber_ops()` warns once with the
reason and returns None, and dispatch takes the XLA path.

Environment: FASTCUSTOM_DISABLE_OPS=1 forces the XLA path (no warning);
FASTCUSTOM_OPS_LIBRARY=path loads that file instead of the built one.
"""

import os
import threading
import types
import warnings

import tensorflow as tf
from tensorflow.python.framework import kernels

LIBRARY_NAME = "_huber_ops.so"
_OP_NAME = "FastCustom>HuberPerSample"

_lock = threading.Lock()
_loaded = None  # (ops namespace or None, status dict), once a load was tried


def library_path():
    """The op library that will be loaded: FASTCUSTOM_OPS_LIBRARY, else the built one."""
    return os.environ.get("FASTCUSTOM_OPS_LIBRARY") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


# The dispatch may run this inside a traced tf.function: the loader runs as plain
# Python (never converted by AutoGraph), and its one kernel call eagerly.
@tf.autograph.experimental.do_not_convert
def huber_ops():
    """The fused ops (`huber_per_sample`, `huber_per_sample_grad`, `huber_weighted_total`), or None."""
    return _state()[0]


@tf.autograph.experimental.do_not_convert
def status():
    """Which Huber path is active, and why.

    {"path": "fused-op" | "xla", "library": loaded file or None, "reason": str,
     "gpu": GPU kernels compiled in, "dtypes": dtypes the fused kernels take}
    """
    return dict(_state()[1])


def _state():
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def _disabled():
    return os.environ.get("FASTCUSTOM_DISABLE_OPS", "").strip().lower() not in ("", "0", "false", "no")


def _load():
    if _disabled():
        return None, _status("xla", None, "disabled by FASTCUSTOM_DISABLE_OPS")
    path = library_path()
    if not os.path.exists(path):
        return _fall_back(f"op library not built ({path} is missing: fastcustom was installed "
                          "without TensorFlow importable; reinstall it, or run "
                          "`python setup.py build_ext --inplace` in a checkout)")
    try:
        ops = _smoke_tested(tf.load_op_library(path))
    except Exception as error:  # NotFoundError for undefined symbols, a bad ELF file, ...
        return _fall_back(f"op library {path} failed to load: {error}".strip())
    from fastcustom.ops import huber_gradients  # noqa: F401  (registers the fused gradient)

    registered = kernels.get_registered_kernels_for_op(_OP_NAME).kernel
    dtypes = sorted({tf.dtypes.as_dtype(t).name for k in registered if k.device_type == "CPU"
                     for c in k.constraint for t in c.allowed_values.list.type})
    gpu = any(k.device_type == "GPU" for k in registered)
    return ops, _status("fused-op", path, "op library loaded", gpu, dtypes)


def _smoke_tested(module):
    """The ops of a loaded library, after one eager CPU call (h(1) = 0.5) works."""
    ops = types.SimpleNamespace(
        huber_per_sample=module.fast_custom_huber_per_sample,
        huber_per_sample_grad=module.fast_custom_huber_per_sample_grad,
        huber_weighted_total=module.fast_custom_huber_weighted_total,
    )
    with tf.init_scope(), tf.device("/CPU:0"):
        value = ops.huber_per_sample([[0.0]], [[1.0]], tf.constant(1.0, tf.float64)).numpy()
    if value.tolist() != [0.5]:
        raise ValueError(f"its HuberPerSample computed h(1) = {value}, not 0.5")
    return ops


def _fall_back(reason):
    warnings.warn(f"fastcustom: fused Huber ops unavailable, using the XLA path: {reason}",
                  RuntimeWarning, stacklevel=5)
    return None, _status("xla", None, reason)


def _status(path, library, reason, gpu=False, dtypes=()):
    return {"path": path, "library": library, "reason": reason, "gpu": gpu, "dtypes": list(dtypes)}
