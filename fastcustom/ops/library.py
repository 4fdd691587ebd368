"""Loads the fused Huber op library once, and says which Huber path is active.

The library (`_huber_ops.so` next to this module, built by setup.py) holds
`FastCustom>HuberPerSample` (mean over the last axis of h(y_true - y_pred), h as
in `fastcustom.reference.huber`), its fused gradient, `FastCustom>HuberMeanWithGrad`
(the mean over every element and its gradient, one pass), `FastCustom>HuberMeanGrad`
and `FastCustom>HuberWeightedTotal`; the loader hands them to
`huber_gradients.register`. When it is missing or fails to load (a
library built for another TensorFlow, say), `huber_ops()` warns once with the
reason and returns None, and dispatch takes the XLA path. A library with CUDA
kernels is also tried once on the first GPU TensorFlow sees; when that call fails
(a driver older than the CUDA toolkit that built it, a GPU its fatbin has no code
for) it warns once and reports `gpu: False`, so that tensors on a GPU take the
XLA path while the CPU kernels stay in use.

Which library: FASTCUSTOM_OPS_LIBRARY=path if set; else the one installed with the
package when it is usable here (below); else the one `fastcustom build-ops` compiled for
this TensorFlow into the per-user cache. A library is never loaded when its record
(`_huber_ops.so.json`, written by the build) names another TensorFlow minor release or
C++ ABI (the package installed, then TensorFlow upgraded or downgraded), nor when
library_check.py finds it damaged, truncated, built for another machine, not the file
its record describes, or compiled for CPU features this CPU lacks: all read from the file
without loading it, since loading such a file kills the process (SIGBUS, SIGILL). The XLA
path is used instead, with one warning that names `fastcustom build-ops`.

Environment: FASTCUSTOM_DISABLE_OPS=1 forces the XLA path (no warning);
FASTCUSTOM_OPS_LIBRARY=path loads that file instead of the built one;
FASTCUSTOM_CPU_ISA=avx2 makes a portable library run its AVX2 kernels on an AVX-512 CPU
(status()["cpu_kernels"] says which run).
"""

import ctypes
import functools
import os
import threading
import types
import warnings

import tensorflow as tf

from fastcustom import build_ops, private_symbols
from fastcustom.ops import huber_gradients, library_check

LIBRARY_NAME = build_ops.LIBRARY_NAME
REBUILD_COMMAND = "fastcustom build-ops"
_OP_NAME = "FastCustom>HuberPerSample"

_lock = threading.Lock()
_loaded = None  # (ops namespace or None, status dict), once a load was tried


def installed_library_path():
    """The library built when the package was installed (or `build_ext --inplace`)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def running_abi():
    """The ABI tag a library must have been built for to load in this TensorFlow."""
    return build_ops.abi_tag(tf.__version__, tf.sysconfig.CXX11_ABI_FLAG)


def library_path():
    """The op library that will be loaded: FASTCUSTOM_OPS_LIBRARY; else the installed one
    if it is usable here (built for the running TensorFlow, whole, runnable on this CPU);
    else the one `fastcustom build-ops` built for this TensorFlow, if any; else the
    installed one's path."""
    return _choose()[0]


def _choose():
    """(library_path(), why it must not be loaded or None), each file checked once."""
    if os.environ.get("FASTCUSTOM_OPS_LIBRARY"):
        path = os.environ["FASTCUSTOM_OPS_LIBRARY"]
        return path, _why_unusable(path)
    installed = installed_library_path()
    why_not_installed = _why_unusable(installed)
    if why_not_installed is None:
        return installed, None
    cached = build_ops.cached_library(running_abi())
    if os.path.exists(cached):
        return cached, _why_unusable(cached)
    return installed, why_not_installed


# The dispatch may run this inside a traced tf.function: the loader runs as plain
# Python (never converted by AutoGraph), and its one kernel call eagerly.
@tf.autograph.experimental.do_not_convert
def huber_ops():
    """The fused ops (`huber_per_sample`, `huber_per_sample_grad`, `huber_mean_with_grad`,
    `huber_mean_grad`, `huber_weighted_total`), or None."""
    return _state()[0]


@tf.autograph.experimental.do_not_convert
def status():
    """Which Huber path is active, and why.

    {"path": "fused-op" | "xla", "library": loaded file or None, "reason": str,
     "gpu": GPU kernels compiled in, "dtypes": dtypes the fused kernels take,
     "cpu_kernels": the variant of the CPU kernels that runs ("avx512", "avx2", "native",
     "generic") or None}
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
    try:
        return _load_library(*_choose())
    except Exception as error:  # never an import or a first Huber call that crashes
        return _fall_back(f"the op library could not be checked or loaded "
                          f"({type(error).__name__}: {error}); run `{REBUILD_COMMAND}`", stacklevel=5)


def _why_unusable(path):
    """Why the library at `path` is not loaded (missing, built for another TensorFlow,
    damaged, not for this CPU), or None."""
    explicit = bool(os.environ.get("FASTCUSTOM_OPS_LIBRARY"))
    if not os.path.exists(path):
        if explicit:
            return f"op library not built or not found: FASTCUSTOM_OPS_LIBRARY={path} does not exist"
        return (f"op library not built ({path} is missing: fastcustom was installed with "
                f"FASTCUSTOM_BUILD_OPS=0 or its compiler failed; run `{REBUILD_COMMAND}`)")
    record = build_ops.read_record(path)
    if record is not None and record.get("abi") != running_abi():
        return (f"op library {path} was built for TensorFlow {record.get('tensorflow')} "
                f"({record.get('abi')}) and TensorFlow {tf.__version__} ({running_abi()}) is "
                f"running; run `{REBUILD_COMMAND}` to build it for this TensorFlow")
    problem = library_check.problem(path, record)
    if problem:
        return f"op library {path} is not loaded: {problem}; run `{REBUILD_COMMAND}` to rebuild it"
    return None


def _load_library(path, unusable):
    if unusable:
        return _fall_back(unusable)
    try:
        ops = _smoke_tested(tf.load_op_library(path))
    except Exception as error:  # NotFoundError for undefined symbols, a bad ELF file, ...
        return _fall_back(f"op library {path} failed to load: {error}; "
                          f"run `{REBUILD_COMMAND}` to rebuild it".strip())
    huber_gradients.register(ops)

    dtypes = private_symbols.registered_kernel_dtypes(_OP_NAME, "CPU")
    if dtypes is None:     # this TensorFlow does not say: the op's declared dtypes
        dtypes = ["bfloat16", "float16", "float32", "float64"]
    gpu_dtypes = private_symbols.registered_kernel_dtypes(_OP_NAME, "GPU")
    gpu = bool(gpu_dtypes) if gpu_dtypes is not None \
        else bool((build_ops.read_record(path) or {}).get("cuda"))
    failure = _gpu_failure(ops) if gpu and tensorflow_sees_a_gpu() else None
    isa = _cpu_kernel_isa(path)
    if failure:
        warnings.warn(f"fastcustom: the op library's GPU kernels failed on this GPU; tensors on "
                      f"a GPU take the XLA path: {failure}", RuntimeWarning, stacklevel=6)
        return ops, _status("fused-op", path, f"op library loaded; GPU kernels unusable: {failure}",
                            False, dtypes, isa)
    return ops, _status("fused-op", path, "op library loaded", gpu, dtypes, isa)


def _cpu_kernel_isa(path):
    """Which variant of the CPU kernels the loaded library runs ("avx512", "avx2", "native",
    "generic"), asked of the library itself (the same loaded file), or None if it cannot say."""
    try:
        query = ctypes.CDLL(path).fastcustom_huber_cpu_kernel_isa
    except (OSError, AttributeError):
        return None
    query.restype = ctypes.c_char_p
    return query().decode()


@functools.cache
def tensorflow_sees_a_gpu():
    """Whether TensorFlow has a logical GPU to place ops on (asked once per process)."""
    return bool(tf.config.list_logical_devices("GPU"))


def _huber_of_one(ops, device):
    """HuberPerSample of y_true = 0, y_pred = 1 (h(1) = 0.5), run eagerly on `device`:
    (the values, the device it ran on)."""
    with tf.init_scope(), tf.device(device):
        value = ops.huber_per_sample(tf.constant([[0.0]]), tf.constant([[1.0]]),
                                     tf.constant(1.0, tf.float64))
    return value.numpy().tolist(), value.device


def _smoke_tested(module):
    """The ops of a loaded library, after one eager CPU call (h(1) = 0.5) works."""
    ops = types.SimpleNamespace(
        huber_per_sample=module.fast_custom_huber_per_sample,
        huber_per_sample_grad=module.fast_custom_huber_per_sample_grad,
        huber_weighted_total=module.fast_custom_huber_weighted_total,
        huber_mean_with_grad=module.fast_custom_huber_mean_with_grad,
        huber_mean_grad=module.fast_custom_huber_mean_grad,
    )
    value, _ = _huber_of_one(ops, "/CPU:0")
    if value != [0.5]:
        raise ValueError(f"its HuberPerSample computed h(1) = {value}, not 0.5")
    return ops


def _gpu_failure(ops):
    """Why the GPU kernels fail one eager call on GPU:0 (h(1) = 0.5), or None when it works."""
    try:
        value, device = _huber_of_one(ops, "/GPU:0")
    except Exception as error:  # InternalError from the launch, NotFoundError, ...
        return f"{type(error).__name__}: {error}".strip()
    if tf.DeviceSpec.from_string(device).device_type != "GPU":
        return f"TensorFlow ran the call on {device}, not on GPU:0"
    if value != [0.5]:
        return f"HuberPerSample computed h(1) = {value} on GPU:0, not 0.5"
    return None


def _fall_back(reason, stacklevel=6):
    """The XLA path, with the one warning that says why (stacklevel: the user's call of status())."""
    warnings.warn(f"fastcustom: fused Huber ops unavailable, using the XLA path: {reason}",
                  RuntimeWarning, stacklevel=stacklevel)
    return None, _status("xla", None, reason)


def _status(path, library, reason, gpu=False, dtypes=(), cpu_kernels=None):
    return {"path": path, "library": library, "reason": reason, "gpu": gpu, "dtypes": list(dtypes),
            "cpu_kernels": cpu_kernels}
