"""Checks and times the Huber CUDA core (csrc/cuda) without TensorFlow.

    python bench/gpu/harness.py --lib /tmp/libfastcustom_huber_cuda.so

The library is huber_cuda.cu + huber_capi.cu built as a shared object (see
bench/gpu/run.sh); it is called through ctypes with device memory from CuPy
(if importable) or PyTorch. The kernels on [N, D] inputs, with h as in
`fastcustom.reference` (the reference every output is checked against):

    per_sample[r]     = reference.huber: the mean of h over row r (NaN when D == 0)
    grad_pred[r, c]   = reference.huber_grad_pred, with upstream grad[r]
    (total, count)    = reference.StreamingHuberMean's (sum w * h, sum w), with
                        w: none, per row or per element

1. Correctness, per kernel and dtype, on fresh random data: against a NumPy
   float64 reference computed from the exact (rounded) inputs the GPU sees,
   with every output poisoned before each run; NaN/inf inputs; inputs one
   element off 16-byte alignment; bit-identical results over repeated runs.
2. Bandwidth: each kernel timed with CUDA events (warm-up, median of many
   runs, rotating over several input sets) at 2^28 elements and a few other
   shapes, against a cudaMemcpyAsync device-to-device copy of 1 GiB; bytes are
   those read plus those written, once each. With `--json PATH` the rows are
   also written as the benchmark report's JSON (`benchmark_json`), the device
   named by the GPU's name, so that

       python -m fastcustom.bench report bench/out/results.json PATH

   puts them in one table and one plot with the CPU suites' rows.

Exits 1 on any correctness failure. Everything above the `main` section
needs only NumPy, so the reference and the comparisons can be tested on a
machine without a GPU.
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from fastcustom import reference  # noqa: E402  (NumPy only: no TensorFlow)
from fastcustom.bench.cases import case_info, ceiling_info, harness_json  # noqa: E402  (plain Python)

# ----------------------------------------------------------------------------
# Dtypes: how inputs are rounded and stored, and the tolerances that follow.
# ----------------------------------------------------------------------------


def bf16_bits(x):
    """float64/float32 values -> bfloat16 bit patterns (uint16), round to nearest even."""
    with np.errstate(over="ignore"):
        f32 = np.asarray(x, dtype=np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f32), np.uint16(0x7FC0), rounded)


def bf16_to_f64(bits):
    """bfloat16 bit patterns (uint16) -> float64 values."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


class DType:
    """One input dtype of the kernels: its C API code, storage and tolerances.

    rtol is the allowed relative error of a float64 output (totals) against the
    float64 reference; out_rtol that of an output stored in this dtype, which
    adds the final rounding (bfloat16 keeps 8 significant bits: half an ulp is
    up to 2^-8 relative); atol is the dtype's smallest subnormal, the resolution
    of outputs near 0.
    """

    def __init__(self, name, code, storage, rtol, out_rtol, atol):
        self.name, self.code, self.storage = name, code, np.dtype(storage)
        self.rtol, self.out_rtol, self.atol = rtol, out_rtol, atol
        self.itemsize = self.storage.itemsize

    def encode(self, x):
        """float64 values -> the array of stored elements (rounded to this dtype)."""
        if self.name == "bfloat16":
            return bf16_bits(x)
        return np.asarray(x, dtype=np.float64).astype(self.storage)

    def decode(self, stored):
        """Stored elements -> their exact float64 values."""
        if self.name == "bfloat16":
            return bf16_to_f64(stored)
        return np.asarray(stored).astype(np.float64)


DTYPES = {
    "float16": DType("float16", 0, np.float16, 1e-3, 1e-3, 2.0**-24),
    "bfloat16": DType("bfloat16", 1, np.uint16, 1e-3, 1e-3 + 2.0**-8, 2.0**-133),
    "float32": DType("float32", 2, np.float32, 1e-6, 1e-6, 2.0**-149),
    "float64": DType("float64", 3, np.float64, 1e-12, 1e-12, 0.0),
}

# ----------------------------------------------------------------------------
# The NumPy float64 reference: fastcustom.reference (NumPy only), in the
# harness's layout ([N, D] inputs, weights of size 0, N or N*D).
# ----------------------------------------------------------------------------


def ref_per_sample(y_true, y_pred, threshold):
    """[N, D] -> [N]: the mean of h over each row (0/0 = NaN when D == 0)."""
    return reference.huber(y_true, y_pred, threshold=threshold)


def ref_grad(y_true, y_pred, grad, threshold):
    """[N, D], [N] -> [N, D]: grad[r] / D * clip(y_pred - y_true, -threshold, threshold)."""
    with np.errstate(divide="ignore"):  # D == 0: an empty result
        return reference.huber_grad_pred(y_true, y_pred, grad, threshold=threshold)


def broadcast_weights(weights, shape):
    """Weights of size 0 (none), N (per row) or N*D (per element) -> [N, D]."""
    rows, depth = shape
    w = np.asarray(weights, np.float64).reshape(-1)
    if w.size == rows * depth:
        return w.reshape(rows, depth)
    if w.size == 0:
        return np.ones(shape)
    if w.size == rows:
        return np.broadcast_to(w[:, None], shape)
    raise ValueError(f"weights of size {w.size} for shape {shape}")


def ref_weighted_total(y_true, y_pred, weights, threshold):
    """(sum w * h, sum w) in float64, per-row weights counted D times."""
    metric = reference.StreamingHuberMean(threshold=threshold)
    metric.update(y_true, y_pred, broadcast_weights(weights, np.shape(y_true)))
    return metric.total, metric.count


# ----------------------------------------------------------------------------
# Comparison.
# ----------------------------------------------------------------------------


def compare(got, ref, rtol, atol):
    """(ok, worst relative error, detail): NaN where the reference has NaN, the
    same infinities, and |got - ref| <= atol + rtol |ref| elsewhere."""
    got = np.asarray(got, np.float64).reshape(-1)
    ref = np.asarray(ref, np.float64).reshape(-1)
    if got.shape != ref.shape:
        return False, np.inf, f"shape {got.shape} != {ref.shape}"
    nan_ref, nan_got = np.isnan(ref), np.isnan(got)
    if np.any(nan_ref != nan_got):
        i = int(np.argmax(nan_ref != nan_got))
        return False, np.inf, f"NaN mismatch at {i}: got {got[i]!r}, want {ref[i]!r}"
    inf_ref = np.isinf(ref)
    if np.any(got[inf_ref] != ref[inf_ref]) or np.any(np.isinf(got[~inf_ref])):
        i = int(np.argmax((np.isinf(got) | inf_ref) & (got != ref)))
        return False, np.inf, f"inf mismatch at {i}: got {got[i]!r}, want {ref[i]!r}"
    finite = ~(nan_ref | inf_ref)
    if not np.any(finite):
        return True, 0.0, ""
    g, r = got[finite], ref[finite]
    err = np.abs(g - r)
    bad = err > atol + rtol * np.abs(r)
    # The reported error is relative, over the values well above atol (for
    # float16 the normal range; nearer 0 only atol is meaningful).
    big = (np.abs(r) >= 1024 * atol) & (r != 0)
    worst = float(np.max(err[big] / np.abs(r[big]))) if np.any(big) else 0.0
    if np.any(bad):
        i = int(np.argmax(bad))
        where = int(np.flatnonzero(finite)[i])
        return False, worst, f"at {where}: got {g[i]!r}, want {r[i]!r} (rtol {rtol:g})"
    return True, worst, ""


# ----------------------------------------------------------------------------
# Random inputs (host side).
# ----------------------------------------------------------------------------


def random_case(rng, dtype, rows, depth):
    """Stored inputs (encoded) and their exact float64 values.

    y_true and y_pred are independent N(0, 1): with threshold = 1 about half of
    the errors take each Huber branch. grad ~ N(0, 1); weights U(0.5, 1.5).
    """
    shape = (rows, depth)
    stored = {
        "y_true": dtype.encode(rng.standard_normal(shape)),
        "y_pred": dtype.encode(rng.standard_normal(shape)),
        "grad": dtype.encode(rng.standard_normal(rows)),
        "w_row": dtype.encode(rng.uniform(0.5, 1.5, rows)),
        "w_elem": dtype.encode(rng.uniform(0.5, 1.5, rows * depth)),
    }
    return stored, {k: dtype.decode(v) for k, v in stored.items()}


def special_values_case(rng, dtype, rows, depth):
    """random_case with NaN and +-inf in rows 1 to 5 (rows >= 6)."""
    stored, values = random_case(rng, dtype, rows, depth)
    yt, yp = values["y_true"], values["y_pred"]
    yt[1, 0] = np.nan                       # row 1: NaN
    yp[2, depth // 2] = np.inf               # row 2: +inf error
    yt[3, -1] = -np.inf                     # row 3: -inf error
    yt[4, 1], yp[4, 1] = np.inf, np.inf     # row 4: inf - inf = NaN
    yp[5, :] = np.inf                       # row 5: all inf
    stored["y_true"], stored["y_pred"] = dtype.encode(yt), dtype.encode(yp)
    return stored, {k: dtype.decode(v) for k, v in stored.items()}


# Shapes (rows, depth) of the correctness checks, with the path each exercises.
CHECK_SHAPES = [
    (1000, 1),        # one lane per row, scalar
    (1000, 3),        # one lane per row, rows not 16-byte aligned
    (4096, 16),       # short aligned rows: 2/4/8 lanes, one vector each
    (777, 24),        # short aligned rows, two vectors on some lanes (float)
    (999, 17),        # lanes per row with head/vector/tail peeling
    (300, 999),       # a warp per row, unaligned rows
    (257, 1000),      # a warp per row
    (10, 5000),       # a block per row (too short to split)
    (100, 20000),     # a block per row segment, 2 segments per row
    (2050, 4099),     # a block per row (enough rows), unaligned
    (3, 1000003),     # huge rows: ~120 segments each, second combine stage
    (1, 1),
    (0, 16),          # empty: nothing written, totals 0
    (5, 0),           # D == 0: per-sample NaN, totals 0
]
QUICK_SHAPES = [(1000, 3), (4096, 16), (999, 17), (257, 1000), (100, 20000), (3, 1000003), (0, 16), (5, 0)]
UNALIGNED_SHAPES = [(4096, 16), (999, 17), (100, 20000)]
OTHER_THRESHOLD_SHAPES = [(4096, 16), (999, 17)]
SPECIAL_SHAPES = [(8, 16), (8, 19), (6, 5000), (6, 20000)]  # with NaN and inf
THRESHOLD = 1.0

# ----------------------------------------------------------------------------
# Device side: backends (CuPy or PyTorch) and the ctypes library.
# ----------------------------------------------------------------------------


class DeviceBuffer:
    """nbytes of device memory at ptr; `owner` keeps the framework array alive."""

    def __init__(self, owner, ptr, nbytes):
        self.owner, self.ptr, self.nbytes = owner, ptr, nbytes


class EventTimer:
    """`with backend.timer() as t: ...; t.ms()`: the region between two device events.

    start and end have record() and synchronize(); elapsed_ms(start, end) reads
    the milliseconds between them once end has completed.
    """

    def __init__(self, start, end, elapsed_ms):
        self.start, self.end, self.elapsed_ms = start, end, elapsed_ms

    def __enter__(self):
        self.start.record()
        return self

    def __exit__(self, *exc):
        self.end.record()
        self.end.synchronize()

    def ms(self):
        return self.elapsed_ms(self.start, self.end)


class CupyBackend:
    name = "cupy"

    def __init__(self):
        import cupy
        self.cp = cupy
        self.device_name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()

    def alloc(self, nbytes):
        a = self.cp.empty(max(int(nbytes), 16), dtype=self.cp.uint8)
        return DeviceBuffer(a, a.data.ptr, int(nbytes))

    def upload(self, host):
        raw = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        buf = self.alloc(raw.size)
        if raw.size:
            buf.owner[: raw.size].set(raw)
        return buf

    def download(self, buf, storage, count, offset=0):
        raw = self.cp.asnumpy(buf.owner[offset: offset + count * storage.itemsize])
        return raw.view(storage)

    def fill(self, buf, byte):
        buf.owner.fill(byte)

    def stream(self):
        return self.cp.cuda.get_current_stream().ptr

    def synchronize(self):
        self.cp.cuda.Device().synchronize()

    def timer(self):
        return EventTimer(self.cp.cuda.Event(), self.cp.cuda.Event(), self.cp.cuda.get_elapsed_time)

    def release(self):
        self.cp.get_default_memory_pool().free_all_blocks()


class TorchBackend:
    name = "torch"

    def __init__(self):
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("PyTorch sees no CUDA device")
        self.torch = torch
        self.device_name = torch.cuda.get_device_name()

    def alloc(self, nbytes):
        t = self.torch.empty(max(int(nbytes), 16), dtype=self.torch.uint8, device="cuda")
        return DeviceBuffer(t, t.data_ptr(), int(nbytes))

    def upload(self, host):
        raw = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        buf = self.alloc(raw.size)
        if raw.size:
            buf.owner[: raw.size].copy_(self.torch.from_numpy(raw.copy()))
        return buf

    def download(self, buf, storage, count, offset=0):
        raw = buf.owner[offset: offset + count * storage.itemsize].cpu().numpy()
        return raw.view(storage)

    def fill(self, buf, byte):
        buf.owner.fill_(byte)

    def stream(self):
        return self.torch.cuda.current_stream().cuda_stream

    def synchronize(self):
        self.torch.cuda.synchronize()

    def timer(self):
        event = self.torch.cuda.Event
        return EventTimer(event(enable_timing=True), event(enable_timing=True),
                          lambda start, end: start.elapsed_time(end))

    def release(self):
        self.torch.cuda.empty_cache()


def make_backend(name="auto"):
    errors = []
    for cls in (CupyBackend, TorchBackend):
        if name not in ("auto", cls.name):
            continue
        try:
            return cls()
        except Exception as e:  # noqa: BLE001 - report every backend's failure
            errors.append(f"{cls.name}: {e}")
    raise RuntimeError("no usable device backend (" + "; ".join(errors) + ")")


class CudaError(RuntimeError):
    pass


class HuberLib:
    """The extern "C" API of csrc/cuda/huber_capi.cu; pointers are ints (0 = null)."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        p, i64, f64, i32, size = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int, ctypes.c_size_t
        sigs = {
            "fastcustom_huber_abi_version": (i32, []),
            "fastcustom_huber_error_string": (ctypes.c_char_p, [i32]),
            "fastcustom_huber_per_sample_workspace_bytes": (size, [i64, i64]),
            "fastcustom_huber_per_sample": (i32, [i32, p, p, i64, i64, f64, p, p, p]),
            "fastcustom_huber_per_sample_grad": (i32, [i32, p, p, p, i64, i64, f64, p, p]),
            "fastcustom_huber_weighted_total_workspace_bytes": (size, [i64, i64]),
            "fastcustom_huber_weighted_total": (i32, [i32, p, p, p, i64, i64, i64, f64, p, p, p, p]),
            "fastcustom_huber_copy_device_to_device": (i32, [p, p, size, p]),
        }
        for name, (res, args) in sigs.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.lib = lib

    def _check(self, code, what):
        if code != 0:
            msg = self.lib.fastcustom_huber_error_string(code).decode()
            raise CudaError(f"{what}: CUDA error {code} ({msg})")

    def per_sample_workspace_bytes(self, rows, depth):
        return self.lib.fastcustom_huber_per_sample_workspace_bytes(rows, depth)

    def weighted_total_workspace_bytes(self, rows, depth):
        return self.lib.fastcustom_huber_weighted_total_workspace_bytes(rows, depth)

    def per_sample(self, dtype, y_true, y_pred, rows, depth, threshold, workspace, out, stream=0):
        self._check(self.lib.fastcustom_huber_per_sample(
            dtype.code, y_true, y_pred, rows, depth, threshold, workspace, out, stream), "per_sample")

    def per_sample_grad(self, dtype, y_true, y_pred, grad, rows, depth, threshold, grad_pred, stream=0):
        self._check(self.lib.fastcustom_huber_per_sample_grad(
            dtype.code, y_true, y_pred, grad, rows, depth, threshold, grad_pred, stream), "per_sample_grad")

    def weighted_total(self, dtype, y_true, y_pred, weights, weights_size, rows, depth, threshold,
                       workspace, total, count, stream=0):
        self._check(self.lib.fastcustom_huber_weighted_total(
            dtype.code, y_true, y_pred, weights, weights_size, rows, depth, threshold, workspace,
            total, count, stream), "weighted_total")

    def copy(self, dst, src, nbytes, stream=0):
        self._check(self.lib.fastcustom_huber_copy_device_to_device(dst, src, nbytes, stream), "copy")


# ----------------------------------------------------------------------------
# Correctness checks.
# ----------------------------------------------------------------------------
POISON = 0xFF  # every output byte 0xFF: NaN in every dtype, so unwritten outputs fail
WEIGHT_MODES = ("none", "row", "elem")


class Report:
    """Collects check results; prints one line per failure and a summary."""

    def __init__(self, verbose=False):
        self.failures, self.passed, self.verbose = [], 0, verbose
        self.worst = {}  # dtype -> kernel -> worst relative error of the passing checks

    def add(self, name, ok, worst=0.0, detail=""):
        kernel, dtype = name.split(" ")[:2]
        if ok and np.isfinite(worst):
            by_kernel = self.worst.setdefault(dtype, {})
            by_kernel[kernel] = max(by_kernel.get(kernel, 0.0), worst)
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"  ok   {name}  (worst rel err {worst:.2e})")
        else:
            self.failures.append(f"{name}: {detail}")
            print(f"  FAIL {name}: {detail}", flush=True)


class Runner:
    """Uploads one case and runs each kernel on it, with every output poisoned first.

    offset: elements by which every pointer is moved off its 256-byte aligned
    allocation; skew: y_pred one element further (so y_true and y_pred are
    not equally aligned either).
    """

    def __init__(self, lib, backend, dtype, stored, rows, depth, offset=0, skew=False, threshold=THRESHOLD):
        self.lib, self.be, self.dtype, self.threshold = lib, backend, dtype, threshold
        self.rows, self.depth, self.offset = rows, depth, offset * dtype.itemsize
        self.offsets = {k: self.offset + (dtype.itemsize if skew and k == "y_pred" else 0) for k in stored}
        self.bufs = {k: self._upload(v, self.offsets[k]) for k, v in stored.items()}
        n = rows * depth
        self.out = backend.alloc(max(rows, 1) * dtype.itemsize + self.offset)
        self.grad_pred = backend.alloc(max(n, 1) * dtype.itemsize + self.offset)
        self.totals = backend.alloc(16)
        self.ws_sample = backend.alloc(lib.per_sample_workspace_bytes(rows, depth))
        self.ws_total = backend.alloc(lib.weighted_total_workspace_bytes(rows, depth))

    def _upload(self, host, offset):
        """Copies `host` to device memory starting `offset` bytes into a fresh buffer."""
        padded = np.zeros(offset + host.nbytes, np.uint8)
        padded[offset:] = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        return self.be.upload(padded)

    def ptr(self, name):
        return self.bufs[name].ptr + self.offsets[name]

    def per_sample(self):
        self.be.fill(self.out, POISON)
        self.lib.per_sample(self.dtype, self.ptr("y_true"), self.ptr("y_pred"), self.rows, self.depth,
                            self.threshold, self.ws_sample.ptr, self.out.ptr + self.offset, self.be.stream())
        self.be.synchronize()
        return self.be.download(self.out, self.dtype.storage, self.rows, self.offset)

    def grad(self):
        self.be.fill(self.grad_pred, POISON)
        self.lib.per_sample_grad(self.dtype, self.ptr("y_true"), self.ptr("y_pred"), self.ptr("grad"),
                                 self.rows, self.depth, self.threshold, self.grad_pred.ptr + self.offset,
                                 self.be.stream())
        self.be.synchronize()
        return self.be.download(self.grad_pred, self.dtype.storage, self.rows * self.depth, self.offset)

    def total(self, mode):
        weights, size = {"none": (0, 0), "row": (self.ptr("w_row"), self.rows),
                         "elem": (self.ptr("w_elem"), self.rows * self.depth)}[mode]
        self.be.fill(self.totals, POISON)
        self.lib.weighted_total(self.dtype, self.ptr("y_true"), self.ptr("y_pred"), weights, size,
                                self.rows, self.depth, self.threshold, self.ws_total.ptr, self.totals.ptr,
                                self.totals.ptr + 8, self.be.stream())
        self.be.synchronize()
        return self.be.download(self.totals, np.dtype(np.float64), 2)


def check_case(report, runner, dtype, values, label, repeats=3, aligned_totals=None):
    """Runs every kernel `repeats` times on one uploaded case and checks each result.

    Returns the totals' bits per weight mode (for the alignment comparison)."""
    yt, yp, threshold = values["y_true"], values["y_pred"], runner.threshold
    refs = {
        "per_sample": (ref_per_sample(yt, yp, threshold), dtype.out_rtol, dtype.atol, runner.per_sample),
        "grad": (ref_grad(yt, yp, values["grad"], threshold), dtype.out_rtol, dtype.atol, runner.grad),
    }
    for mode in WEIGHT_MODES:
        w = {"none": np.zeros(0), "row": values["w_row"], "elem": values["w_elem"]}[mode]
        refs[f"total[{mode}]"] = (np.array(ref_weighted_total(yt, yp, w, threshold)), dtype.rtol, 0.0,
                                  lambda m=mode: runner.total(m))
    totals_bits = {}
    for kernel, (ref, rtol, atol, run) in refs.items():
        name = f"{kernel} {dtype.name} {label}"
        first = run()
        ok, worst, detail = compare(first if kernel.startswith("total") else dtype.decode(first),
                                    ref, rtol, atol)
        for _ in range(repeats - 1):
            again = run()
            if again.tobytes() != first.tobytes():
                ok, detail = False, (detail + "; " if detail else "") + "results differ between runs"
                break
        report.add(name, ok, worst, detail)
        if kernel.startswith("total"):
            totals_bits[kernel] = first.tobytes()
            if aligned_totals is not None and aligned_totals.get(kernel) != first.tobytes():
                print(f"  note {name}: bits differ from the aligned run (within tolerance: {ok})")
    return totals_bits


def run_checks(lib, backend, dtypes, shapes, seed, verbose=False, unaligned=UNALIGNED_SHAPES,
               other_threshold=OTHER_THRESHOLD_SHAPES, special=SPECIAL_SHAPES):
    """Every kernel on every shape and dtype; the shapes in `unaligned` also
    one element off alignment, those in `other_threshold` with threshold 0.25 and 3,
    and `special` shapes with NaN and inf inputs."""
    rng = np.random.default_rng(seed)
    report = Report(verbose)
    for dtype in dtypes:
        t0 = time.time()
        for rows, depth in shapes:
            stored, values = random_case(rng, dtype, rows, depth)
            runner = Runner(lib, backend, dtype, stored, rows, depth)
            aligned = check_case(report, runner, dtype, values, f"[{rows},{depth}]")
            if (rows, depth) in unaligned:
                for skew in (False, True):
                    runner = Runner(lib, backend, dtype, stored, rows, depth, offset=1, skew=skew)
                    label = f"[{rows},{depth}] +1 element{' (y_pred +2)' if skew else ''}"
                    check_case(report, runner, dtype, values, label, repeats=2, aligned_totals=aligned)
            if (rows, depth) in other_threshold:
                for threshold in (0.25, 3.0):
                    check_case(report, Runner(lib, backend, dtype, stored, rows, depth, threshold=threshold),
                               dtype, values, f"[{rows},{depth}] threshold={threshold}", repeats=2)
        for rows, depth in special:
            stored, values = special_values_case(rng, dtype, rows, depth)
            check_case(report, Runner(lib, backend, dtype, stored, rows, depth), dtype, values,
                       f"[{rows},{depth}] NaN/inf", repeats=2)
        backend.release()
        print(f"  {dtype.name}: checks done in {time.time() - t0:.1f} s", flush=True)
    return report


# ----------------------------------------------------------------------------
# Benchmark.
# ----------------------------------------------------------------------------
BENCH_ELEMENTS = 1 << 28
BENCH_SHAPES = [(1 << 24, 16), (1 << 18, 1024), (1 << 8, 1 << 20), (BENCH_ELEMENTS // 17, 17)]
BENCH_KERNELS = ("per_sample", "grad", "total", "total[row]", "total[elem]")
COPY_BYTES = 1 << 30
TARGET_PERCENT = 85.0  # of the copy, for per_sample and grad at BENCH_SHAPES[0]


def bytes_moved(kernel, rows, depth, itemsize):
    """Bytes a kernel must read plus write, each once."""
    n = rows * depth
    inputs = 2 * n * itemsize
    return {
        "per_sample": inputs + rows * itemsize,
        "grad": inputs + rows * itemsize + n * itemsize,
        "total": inputs + 16,
        "total[row]": inputs + rows * itemsize + 16,
        "total[elem]": inputs + n * itemsize + 16,
    }[kernel]


def median_ms(backend, launch, reps, warmup, sets):
    """Median time of launch(k) over `reps` runs (k cycling over `sets` input sets)."""
    for i in range(warmup):
        launch(i % sets)
    backend.synchronize()
    times = []
    for i in range(reps):
        with backend.timer() as t:
            launch(i % sets)
        times.append(t.ms())
    return statistics.median(times)


def fill_random(lib, backend, buf, nbytes, dtype, rng, chunk_elems=1 << 22):
    """Fills buf with random dtype values: one random host chunk, repeated on the device."""
    chunk = backend.upload(dtype.encode(rng.standard_normal(chunk_elems)))
    chunk_bytes = chunk_elems * dtype.itemsize
    for start in range(0, nbytes, chunk_bytes):
        lib.copy(buf.ptr + start, chunk.ptr, min(chunk_bytes, nbytes - start), backend.stream())
    backend.synchronize()


def run_bench(lib, backend, dtypes, shapes, reps, seed, sets=3, copy_bytes=COPY_BYTES):
    """Times every kernel; returns (copy GB/s, rows of the table)."""
    rng = np.random.default_rng(seed)
    src, dst = backend.alloc(copy_bytes), backend.alloc(copy_bytes)
    backend.fill(src, 0x3C)
    copy_ms = median_ms(backend, lambda k: lib.copy(dst.ptr, src.ptr, copy_bytes, backend.stream()),
                        reps, 3, 1)
    copy_gbs = 2 * copy_bytes / copy_ms / 1e6
    del src, dst
    backend.release()
    table = []
    for dtype in dtypes:
        n_max = max(r * c for r, c in shapes)
        rows_max = max(r for r, _ in shapes)
        nbytes = n_max * dtype.itemsize
        ins = [(backend.alloc(nbytes), backend.alloc(nbytes)) for _ in range(sets)]
        for yt, yp in ins:
            fill_random(lib, backend, yt, nbytes, dtype, rng)
            fill_random(lib, backend, yp, nbytes, dtype, rng)
        grad = backend.upload(dtype.encode(rng.standard_normal(rows_max)))
        w_row = backend.upload(dtype.encode(rng.uniform(0.5, 1.5, rows_max)))
        w_elem = backend.alloc(nbytes)
        fill_random(lib, backend, w_elem, nbytes, dtype, rng)
        out = backend.alloc(rows_max * dtype.itemsize)
        grad_pred = backend.alloc(nbytes)
        totals = backend.alloc(16)
        for rows, depth in shapes:
            ws_s = backend.alloc(lib.per_sample_workspace_bytes(rows, depth))
            ws_t = backend.alloc(lib.weighted_total_workspace_bytes(rows, depth))
            s = backend.stream()
            launches = {
                "per_sample": lambda k: lib.per_sample(dtype, ins[k][0].ptr, ins[k][1].ptr, rows, depth,
                                                       THRESHOLD, ws_s.ptr, out.ptr, s),
                "grad": lambda k: lib.per_sample_grad(dtype, ins[k][0].ptr, ins[k][1].ptr, grad.ptr,
                                                      rows, depth, THRESHOLD, grad_pred.ptr, s),
                "total": lambda k: lib.weighted_total(dtype, ins[k][0].ptr, ins[k][1].ptr, 0, 0, rows,
                                                      depth, THRESHOLD, ws_t.ptr, totals.ptr, totals.ptr + 8, s),
                "total[row]": lambda k: lib.weighted_total(dtype, ins[k][0].ptr, ins[k][1].ptr, w_row.ptr,
                                                           rows, rows, depth, THRESHOLD, ws_t.ptr, totals.ptr,
                                                           totals.ptr + 8, s),
                "total[elem]": lambda k: lib.weighted_total(dtype, ins[k][0].ptr, ins[k][1].ptr, w_elem.ptr,
                                                            rows * depth, rows, depth, THRESHOLD, ws_t.ptr,
                                                            totals.ptr, totals.ptr + 8, s),
            }
            for kernel in BENCH_KERNELS:
                ms = median_ms(backend, launches[kernel], reps, 3, sets)
                gbs = bytes_moved(kernel, rows, depth, dtype.itemsize) / ms / 1e6
                table.append((kernel, dtype.name, f"[{rows},{depth}]", ms, gbs, 100 * gbs / copy_gbs))
        del ins, grad, w_row, w_elem, out, grad_pred, totals
        backend.release()
    return copy_gbs, table


def check_at_scale(report, lib, backend, dtype, rows, depth, seed):
    """At a benchmark shape: bit-identical repeats, and total == D * sum(per_sample)."""
    rng = np.random.default_rng(seed)
    n = rows * depth
    yt, yp = backend.alloc(n * dtype.itemsize), backend.alloc(n * dtype.itemsize)
    fill_random(lib, backend, yt, n * dtype.itemsize, dtype, rng)
    fill_random(lib, backend, yp, n * dtype.itemsize, dtype, rng, chunk_elems=(1 << 22) - 3)
    out, totals = backend.alloc(rows * dtype.itemsize), backend.alloc(16)
    ws_s = backend.alloc(lib.per_sample_workspace_bytes(rows, depth))
    ws_t = backend.alloc(lib.weighted_total_workspace_bytes(rows, depth))
    results = []
    for _ in range(3):
        backend.fill(out, POISON)
        backend.fill(totals, POISON)
        lib.per_sample(dtype, yt.ptr, yp.ptr, rows, depth, THRESHOLD, ws_s.ptr, out.ptr, backend.stream())
        lib.weighted_total(dtype, yt.ptr, yp.ptr, 0, 0, rows, depth, THRESHOLD, ws_t.ptr, totals.ptr,
                           totals.ptr + 8, backend.stream())
        backend.synchronize()
        results.append((backend.download(out, dtype.storage, rows),
                        backend.download(totals, np.dtype(np.float64), 2)))
    name = f"scale {dtype.name} [{rows},{depth}]"
    same = all(a.tobytes() == results[0][0].tobytes() and b.tobytes() == results[0][1].tobytes()
               for a, b in results[1:])
    report.add(name + " repeats bit-identical", same, 0.0, "results differ between runs")
    per_sample, (total, count) = dtype.decode(results[0][0]), results[0][1]
    want_total = float(np.sum(per_sample, dtype=np.float64)) * depth
    ok, worst, detail = compare([total, count], [want_total, float(n)], max(dtype.rtol, 1e-7), 0.0)
    report.add(name + " total == D * sum(per_sample)", ok, worst, detail)
    del yt, yp
    backend.release()


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def print_table(copy_gbs, table, copy_bytes=COPY_BYTES):
    print(f"\nDevice-to-device copy (cudaMemcpyAsync, {copy_bytes / 2**20:g} MiB): {copy_gbs:.0f} GB/s "
          "(read + write)\n")
    print("| kernel | dtype | shape | median ms | GB/s | % of copy |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for kernel, dtype, shape, ms, gbs, pct in table:
        print(f"| {kernel} | {dtype} | {shape} | {ms:.4f} | {gbs:.0f} | {pct:.1f}% |")


# Each timed kernel as the report names it: (report kernel, implementation suffix).
REPORT_NAMES = {
    "per_sample": ("Huber forward", ""),
    "grad": ("Huber gradient", ""),
    "total": ("HuberMetric update", ""),
    "total[row]": ("HuberMetric update", ", a weight per row"),
    "total[elem]": ("HuberMetric update", ", a weight per element"),
}


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def benchmark_json(device_name, copy_gbs, table, reps, copy_bytes=COPY_BYTES):
    """`run_bench`'s rows as the report's JSON (a dict; pytest-benchmark's shape): one case
    per row, device `device_name`, and the copy as that device's memory-bandwidth ceiling."""
    rows = []
    for kernel, dtype, shape, ms, _, _ in table:
        n_rows, depth = json.loads(shape)
        report_kernel, suffix = REPORT_NAMES[kernel]
        info = case_info(report_kernel, "large", shape, f"CUDA core {dtype}{suffix}", device_name,
                         work=bytes_moved(kernel, n_rows, depth, DTYPES[dtype].itemsize), unit="B",
                         elements=n_rows * depth)
        rows.append((info, ms / 1e3, reps))
    copy = ceiling_info("B", "cudaMemcpyAsync device-to-device copy", device_name,
                        work=2 * copy_bytes, shape=f"[{copy_bytes} bytes]")
    rows.append((copy, 2 * copy_bytes / copy_gbs / 1e9, reps))
    machine = {"gpu": device_name, "node": platform.node(), "python_version": platform.python_version(),
               "cpu": {"brand_raw": _cpu_name(), "count": os.cpu_count()}}
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return harness_json(rows, machine, now)


def target_verdict(table):
    """The target: per_sample and grad at BENCH_SHAPES[0] reach TARGET_PERCENT of the copy."""
    shape = "[{},{}]".format(*BENCH_SHAPES[0])
    rows = [row for row in table if row[0] in ("per_sample", "grad") and row[2] == shape]
    low = [f"{k} {d} {p:.0f}%" for k, d, _, _, _, p in rows if p < TARGET_PERCENT]
    if not rows:
        verdict = "not measured"
    elif low:
        verdict = "missed: " + ", ".join(low)
    else:
        verdict = "met"
    return f"target (per_sample and grad at {shape} >= {TARGET_PERCENT:g}% of copy): {verdict}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lib", required=True, help="shared library built from csrc/cuda")
    parser.add_argument("--backend", choices=("auto", "cupy", "torch"), default="auto")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and timing runs")
    parser.add_argument("--no-bench", action="store_true", help="correctness checks only")
    parser.add_argument("--reps", type=int, default=30, help="timed runs per kernel (median)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--json", help="also write the bandwidth rows here, as the JSON that "
                                       "`python -m fastcustom.bench report` reads")
    args = parser.parse_args(argv)

    dtypes = [DTYPES[name] for name in args.dtypes.split(",")]
    backend = make_backend(args.backend)
    lib = HuberLib(args.lib)
    print(f"device: {backend.device_name}; backend: {backend.name}; seed: {args.seed}", flush=True)

    print("\n== correctness ==", flush=True)
    report = run_checks(lib, backend, dtypes, QUICK_SHAPES if args.quick else CHECK_SHAPES, args.seed,
                        args.verbose)
    if not args.no_bench:
        for dtype in dtypes:
            check_at_scale(report, lib, backend, dtype, *BENCH_SHAPES[0], args.seed)
    print("worst relative error of the passing checks:")
    for dtype, by_kernel in report.worst.items():
        print(f"  {dtype}: " + ", ".join(f"{k} {v:.1e}" for k, v in by_kernel.items() if k != "scale"))
    print(f"{report.passed} passed, {len(report.failures)} failed")

    if not args.no_bench:
        print("\n== bandwidth ==", flush=True)
        shapes = BENCH_SHAPES[:2] if args.quick else BENCH_SHAPES
        reps = 10 if args.quick else args.reps
        copy_gbs, table = run_bench(lib, backend, dtypes, shapes, reps, args.seed,
                                    copy_bytes=COPY_BYTES)
        print_table(copy_gbs, table, COPY_BYTES)
        print("\n" + target_verdict(table))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(benchmark_json(backend.device_name, copy_gbs, table, reps, COPY_BYTES),
                          handle, indent=1)
            print(f"wrote {args.json}")

    if report.failures:
        print(f"\nCORRECTNESS FAILURES ({len(report.failures)}):")
        for f in report.failures:
            print("  " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
