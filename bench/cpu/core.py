"""The Huber CPU core (csrc/cpu) through ctypes, without TensorFlow.

    core = CpuCore(build(folder))              # portable: AVX2 + AVX-512 variants
    core = CpuCore(build(folder, native=True))  # -march=native
    loss = core.per_sample(y_true, y_pred, threshold=1.0, threads=2)   # out=: write in place

`functions_using_zmm(path)` lists the functions of a library (the op library too) whose
machine code uses AVX-512's zmm registers: in a portable build, the AVX-512 variant's only.

`build` compiles the core with fastcustom/build_ops.py's flags and variants (the op
library's CPU code, less TensorFlow) and its C API (csrc/cpu/huber_cpu_capi.cc). Arrays
are NumPy: float16, float32, float64, or uint16 holding bfloat16 bits (bench/gpu/harness.py's
`bf16_bits` / `bf16_to_f64` convert). The variant that runs is chosen once per loaded
library, at its first call: `isa="avx2"` loads a copy of the file with
FASTCUSTOM_CPU_ISA=avx2 set for that first call, so both variants can run in one process.
"""

import ctypes
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
CODES = {np.dtype(np.float16): 0, np.dtype(np.uint16): 1, np.dtype(np.float32): 2,
         np.dtype(np.float64): 3}


def build_ops_module():
    """fastcustom/build_ops.py, loaded by path (no fastcustom or TensorFlow import)."""
    spec = importlib.util.spec_from_file_location("_fastcustom_build_ops",
                                                  ROOT / "fastcustom" / "build_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(folder, native=False):
    """Compiles the core into `folder`/libfastcustom_huber_cpu.so; returns its path."""
    folder = pathlib.Path(folder)
    output = folder / "libfastcustom_huber_cpu.so"
    build_ops_module().build_cpu_core_library(str(output), str(folder / "objects"),
                                              sources=str(ROOT / "csrc"), native=native)
    return output


def functions_using_zmm(library):
    """Demangled names of the functions in the shared library `library` whose code uses
    AVX-512's zmm registers (objdump from binutils; None where it is missing)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    listing = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", str(library)],
                             capture_output=True, text=True, check=True).stdout
    found, function = set(), None
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
        elif function and "%zmm" in line:
            found.add(function)
    return found


class CoreError(RuntimeError):
    """The C API refused its arguments (an unknown dtype, a bad size)."""


class CpuCore:
    """One loaded copy of the core library; `isa`: None (the dispatch's own choice) or a
    FASTCUSTOM_CPU_ISA value for this copy's first call."""

    def __init__(self, path, isa=None):
        path = pathlib.Path(path)
        if isa is not None:  # a file of its own: a fresh dlopen, a fresh choice
            copy = path.with_name(f"{path.stem}.{isa}{path.suffix}")
            shutil.copyfile(path, copy)
            path = copy
        self.lib = ctypes.CDLL(str(path))
        i64, dbl, ptr, c_int = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p, ctypes.c_int
        signatures = {
            "fastcustom_huber_cpu_per_sample": [c_int, ptr, ptr, i64, i64, dbl, ptr, c_int],
            "fastcustom_huber_cpu_per_sample_grad": [c_int, ptr, ptr, ptr, i64, i64, dbl, ptr, c_int],
            "fastcustom_huber_cpu_weighted_total": [c_int, ptr, ptr, ptr, i64, i64, i64, dbl, ptr,
                                                    c_int],
            "fastcustom_huber_cpu_mean_with_grad": [c_int, ptr, ptr, i64, i64, dbl, ptr, ptr, c_int],
        }
        for name, argtypes in signatures.items():
            getattr(self.lib, name).argtypes = argtypes
            getattr(self.lib, name).restype = c_int
        self.lib.fastcustom_huber_cpu_kernel_isa.restype = ctypes.c_char_p
        saved = os.environ.get("FASTCUSTOM_CPU_ISA")
        if isa is not None:
            os.environ["FASTCUSTOM_CPU_ISA"] = isa
        try:
            self.isa = self.lib.fastcustom_huber_cpu_kernel_isa().decode()
        finally:
            if saved is None:
                os.environ.pop("FASTCUSTOM_CPU_ISA", None)
            else:
                os.environ["FASTCUSTOM_CPU_ISA"] = saved

    @staticmethod
    def _inputs(*arrays):
        arrays = [np.ascontiguousarray(a) for a in arrays]
        dtype = arrays[0].dtype
        if dtype not in CODES or any(a.dtype != dtype for a in arrays):
            raise TypeError(f"arrays of one dtype of {sorted(map(str, CODES))}, got "
                            f"{[str(a.dtype) for a in arrays]}")
        return arrays, CODES[dtype]

    @staticmethod
    def _check(code, name):
        if code != 0:
            raise CoreError(f"{name} refused its arguments (code {code})")

    @staticmethod
    def _rows_depth(y):
        if y.ndim < 1:
            raise ValueError("inputs of rank >= 1")
        return int(np.prod(y.shape[:-1], dtype=np.int64)), int(y.shape[-1])

    @staticmethod
    def _output(out, shape, dtype):
        """`out` (a C-contiguous array of that shape and dtype, written in place), or a new one."""
        if out is None:
            return np.empty(shape, dtype)
        if out.shape != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {dtype} array of shape {tuple(shape)}")
        return out

    def per_sample(self, y_true, y_pred, threshold=1.0, threads=1, out=None):
        """[..., D] -> [...]: the mean of h over the last axis."""
        (t, p), code = self._inputs(y_true, y_pred)
        rows, depth = self._rows_depth(p)
        out = self._output(out, p.shape[:-1], p.dtype)
        self._check(self.lib.fastcustom_huber_cpu_per_sample(
            code, t.ctypes.data, p.ctypes.data, rows, depth, threshold, out.ctypes.data, threads),
            "per_sample")
        return out

    def per_sample_grad(self, y_true, y_pred, grad, threshold=1.0, threads=1, out=None):
        """[..., D], [...] -> [..., D]: grad / D * dh/dy_pred."""
        (t, p, g), code = self._inputs(y_true, y_pred, grad)
        rows, depth = self._rows_depth(p)
        out = self._output(out, p.shape, p.dtype)
        self._check(self.lib.fastcustom_huber_cpu_per_sample_grad(
            code, t.ctypes.data, p.ctypes.data, g.ctypes.data, rows, depth, threshold,
            out.ctypes.data, threads), "per_sample_grad")
        return out

    def weighted_total(self, y_true, y_pred, weights=None, threshold=1.0, threads=1):
        """(sum w h, sum w) as floats; weights None, one per row or one per element."""
        if weights is None:
            weights = np.zeros(0, np.asarray(y_pred).dtype)
        (t, p, w), code = self._inputs(y_true, y_pred, weights)
        rows, depth = self._rows_depth(p)
        out = np.empty(2, np.float64)
        self._check(self.lib.fastcustom_huber_cpu_weighted_total(
            code, t.ctypes.data, p.ctypes.data, w.ctypes.data, w.size, rows, depth, threshold,
            out.ctypes.data, threads), "weighted_total")
        return float(out[0]), float(out[1])

    def mean_with_grad(self, y_true, y_pred, threshold=1.0, threads=1, out=None):
        """(mean h over every element, its gradient w.r.t. y_pred); float32 and float64."""
        (t, p), code = self._inputs(y_true, y_pred)
        rows, depth = self._rows_depth(p)
        mean, grad = np.empty(1, p.dtype), self._output(out, p.shape, p.dtype)
        self._check(self.lib.fastcustom_huber_cpu_mean_with_grad(
            code, t.ctypes.data, p.ctypes.data, rows, depth, threshold, mean.ctypes.data,
            grad.ctypes.data, threads), "mean_with_grad")
        return mean[0], grad
