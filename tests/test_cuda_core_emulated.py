"""The Huber CUDA core (csrc/cuda), run on the CPU through tests/cuda_emulation.

No GPU is needed: the core's own source is compiled by the host compiler
against the CUDA headers, with each block's threads run as fibers (see
cuda_emulation.h), and bench/gpu/harness.py's correctness checks run on it as
they would on a GPU:

    per_sample[r]   = mean_c h[r, c]
    grad_pred[r, c] = grad[r] / D * d h[r, c] / d y_pred[r, c]
    (total, count)  = (sum w h, sum w),  w: none, per row or per element

(h and its gradient as `fastcustom.reference` states them)

against a NumPy float64 reference on fresh random data, with poisoned outputs,
NaN/inf, inputs off 16-byte alignment and bit-identical repeats. The emulation
builds the core with tiny grid caps (3 blocks, 5 partials, 8 row segments), so
these small shapes go through every grid-stride loop and both stages of every
reduction. Every load is checked against the buffers' bounds; every buffer is
fenced by guard bytes that must survive each call. The rest of what
bench/gpu/run.sh does on a GPU (checks at scale, the bandwidth table) runs
here too, on small shapes, so that its one GPU run is not lost to a bug there.

Tolerances are the harness's: float32 outputs 1e-6 relative, float64 1e-12,
float16/bfloat16 1e-3 (+ 2^-8 for bfloat16 outputs, its own rounding); totals
come back in float64 and must be within each dtype's `rtol`.

Skipped where g++ or the CUDA headers are missing, unless
FASTCUSTOM_REQUIRE_NVCC=1 (CI), which makes that a failure.
"""

import contextlib
import ctypes
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EMULATION = ROOT / "tests" / "cuda_emulation"
sys.path.insert(0, str(ROOT / "bench" / "gpu"))
import harness  # noqa: E402

# (rows, depth) and the path each takes in the emulation build (float32; the
# other dtypes have 8 or 2 elements per 16-byte vector instead of 4).
SHAPES = [
    (1000, 1),     # one lane per row, scalar loads
    (1000, 3),     # one lane per row, rows off 16-byte alignment
    (4096, 16),    # short aligned rows: 4 lanes a row, one vector each, many grid strides
    (777, 24),     # short aligned rows: 4 lanes, two vectors on some
    (300, 96),     # short aligned rows: 16 lanes, two vectors on some
    (200, 128),    # short aligned rows: 32 lanes
    (999, 17),     # lanes per row with scalar head, vectors and tail
    (40, 999),     # a warp per row, unaligned rows
    (33, 1000),    # a warp per row
    (10, 5000),    # a block per row, one segment
    (3, 20000),    # rows in 2 segments, then the combine kernel
    (2, 50000),    # rows in 4 segments
    (1, 1),
    (0, 16),       # nothing to do: totals 0
    (5, 0),        # D = 0: per-sample NaN, totals 0
]
UNALIGNED = [(4096, 16), (999, 17), (3, 20000)]
OTHER_THRESHOLDS = [(4096, 16), (999, 17)]


def _cuda_include():
    """The CUDA toolkit's include folder (cuda_runtime_api.h, cuda_fp16.h), or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(pathlib.Path(nvcc).resolve().parents[1]))
    candidates.append("/usr/local/cuda")
    for root in filter(None, candidates):
        include = pathlib.Path(root) / "include"
        if (include / "cuda_runtime_api.h").exists() and (include / "cuda_fp16.h").exists():
            return include
    return None


@pytest.fixture(scope="module")
def emulated_library(tmp_path_factory, require):
    """Path of the core + C API + emulation runtime, built as one shared library."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    include = _cuda_include()
    if compiler is None:
        require("no host C++ compiler (g++)")
    if include is None:
        require("no CUDA headers (CUDA_HOME, nvcc's toolkit or /usr/local/cuda)")
    build = tmp_path_factory.mktemp("cuda_emulation")
    common = [compiler, "-std=c++17", "-O2", "-fPIC", "-Wall", "-Wno-unknown-pragmas",
              f"-I{include}", f"-I{EMULATION}"]
    core = ["-DFASTCUSTOM_CUDA_EMULATION", "-include", "cuda_emulation.h", "-x", "c++"]
    sources = {"huber_cuda.o": core + [str(ROOT / "csrc/cuda/huber_cuda.cu")],
               "huber_capi.o": core + [str(ROOT / "csrc/cuda/huber_capi.cu")],
               "cuda_emulation.o": [str(EMULATION / "cuda_emulation.cc")]}
    jobs = {obj: subprocess.Popen(common + args + ["-c", "-o", str(build / obj)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            for obj, args in sources.items()}
    for obj, job in jobs.items():
        log = job.communicate()[0]
        assert job.returncode == 0, f"compiling {obj} for the emulation failed:\n{log}"
    library = build / "libfastcustom_huber_emulated.so"
    subprocess.run([compiler, "-shared", *(str(build / obj) for obj in sources), "-o", str(library)],
                   check=True)
    return str(library)


class HostBackend:
    """'Device' memory for the emulated core, with harness.CupyBackend's interface.

    Each buffer is a NumPy array: 256-byte aligned like a GPU allocation, filled
    with harness.POISON (NaN in every dtype) when allocated, tracked by the
    emulation (loads outside every tracked buffer fail the launch) and fenced by
    GUARD bytes on each side that `synchronize`, called after every kernel,
    checks: a store out of bounds fails the test.
    """

    name = device_name = "CPU emulation"
    GUARD, FENCE = 64, 0xA5

    def __init__(self, library):
        self.emulation = ctypes.CDLL(library)
        self.emulation.cuda_emulation_track.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.emulation.cuda_emulation_forget.argtypes = [ctypes.c_void_p]
        self.buffers = weakref.WeakSet()

    def alloc(self, nbytes):
        nbytes = int(nbytes)
        raw = np.full(self.GUARD + 256 + nbytes + self.GUARD, self.FENCE, np.uint8)
        start = self.GUARD + (-(raw.ctypes.data + self.GUARD)) % 256
        raw[start: start + nbytes] = harness.POISON
        buf = harness.DeviceBuffer((raw, start), raw.ctypes.data + start, nbytes)
        self.emulation.cuda_emulation_track(buf.ptr, nbytes)
        weakref.finalize(buf, self.emulation.cuda_emulation_forget, buf.ptr)
        self.buffers.add(buf)
        return buf

    def _data(self, buf):
        raw, start = buf.owner
        return raw[start: start + buf.nbytes]

    def upload(self, host):
        data = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        buf = self.alloc(data.size)
        self._data(buf)[:] = data
        return buf

    def download(self, buf, storage, count, offset=0):
        return self._data(buf)[offset: offset + count * storage.itemsize].copy().view(storage)

    def fill(self, buf, byte):
        self._data(buf)[:] = byte

    def stream(self):
        return 0

    def synchronize(self):
        for buf in list(self.buffers):
            raw, start = buf.owner
            before, after = raw[start - self.GUARD: start], raw[start + buf.nbytes:]
            assert np.all(before == self.FENCE) and np.all(after == self.FENCE), (
                f"a store outside a {buf.nbytes}-byte buffer at {buf.ptr:#x}")

    def release(self):
        pass

    def timer(self):
        return harness.EventTimer(_HostEvent(), _HostEvent(), lambda start, end: (end.at - start.at) * 1e3)


class _HostEvent:
    """A CUDA event's record/synchronize, as a host clock (the emulation is synchronous)."""

    def record(self):
        self.at = time.perf_counter()

    def synchronize(self):
        pass


@pytest.fixture(scope="module")
def emulated(emulated_library):
    return harness.HuberLib(emulated_library), HostBackend(emulated_library)


@pytest.mark.parametrize("dtype", list(harness.DTYPES))
def test_emulated_core_matches_the_float64_reference(emulated, dtype, rng):
    lib, backend = emulated
    report = harness.run_checks(lib, backend, [harness.DTYPES[dtype]], SHAPES, int(rng.integers(2**31)),
                                unaligned=UNALIGNED, other_threshold=OTHER_THRESHOLDS)
    assert not report.failures, "\n".join(report.failures)
    # Every kernel of every check: 15 shapes, their variants and 4 NaN/inf cases.
    assert report.passed == 5 * (len(SHAPES) + 2 * len(UNALIGNED) + 2 * len(OTHER_THRESHOLDS) + 4)


def test_the_gpu_run_after_the_checks_works_on_the_emulation(emulated, rng):
    """run.sh's other steps, on small shapes: the checks at scale and the bandwidth table.

    Their numbers mean nothing here; this is so that a bug in them cannot cost a GPU run.
    """
    lib, backend = emulated
    f32 = harness.DTYPES["float32"]
    report = harness.Report()
    harness.check_at_scale(report, lib, backend, f32, 512, 16, int(rng.integers(2**31)))
    assert report.passed == 2 and not report.failures, report.failures
    shapes = [(64, 16), (3, 20000)]
    copy_gbs, table = harness.run_bench(lib, backend, [f32], shapes, reps=2, seed=0, sets=2,
                                        copy_bytes=1 << 16)
    assert [(row[0], row[2]) for row in table] == [
        (kernel, f"[{r},{c}]") for r, c in shapes for kernel in harness.BENCH_KERNELS]
    assert copy_gbs > 0 and all(ms > 0 and gbs > 0 for _, _, _, ms, gbs, _ in table)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        harness.print_table(copy_gbs, table)
    assert printed.getvalue().count("| float32 |") == len(table)


def test_the_harness_command_runs_end_to_end_on_the_emulation(emulated, emulated_library, monkeypatch,
                                                                capsys, tmp_path):
    """`python3 harness.py --lib ... --quick --json ...` as run.sh calls it, with small shapes
    and a small copy: the arguments, the checks, the table, the target line, and the rows in
    the JSON that `python -m fastcustom.bench report` reads."""
    from fastcustom.bench import results

    lib, backend = emulated
    monkeypatch.setattr(harness, "make_backend", lambda name: backend)
    monkeypatch.setattr(harness, "QUICK_SHAPES", [(64, 16), (7, 17), (0, 16)])
    monkeypatch.setattr(harness, "BENCH_SHAPES", [(256, 16), (3, 2000)])
    monkeypatch.setattr(harness, "COPY_BYTES", 1 << 16)
    rows_json = tmp_path / "gpu_results.json"
    argv = ["--lib", emulated_library, "--quick", "--dtypes", "float32,bfloat16", "--seed", "5",
            "--json", str(rows_json)]
    assert harness.main(argv) == 0
    run = results.load(rows_json)
    assert {c.device for c in run.cases} == {backend.device_name}
    assert len(run.cases) == 2 * 2 * len(harness.BENCH_KERNELS)  # 2 dtypes, 2 shapes
    assert {c.shape for c in run.cases} == {"[256,16]", "[3,2000]"}
    assert all(c.median > 0 and c.work > 0 for c in run.cases)
    assert run.ceiling("B", backend.device_name).work == 2 << 16
    out = capsys.readouterr().out
    assert re.search(r"^\d+ passed, 0 failed$", out, re.M), out
    assert "Device-to-device copy (cudaMemcpyAsync, 0.0625 MiB)" in out
    for dtype in ("float32", "bfloat16"):
        assert out.count(f"| {dtype} |") == 2 * len(harness.BENCH_KERNELS)
    assert re.search(r"^target \(per_sample and grad at \[256,16\] >= 85% of copy\): (met|missed: .*)$",
                     out, re.M), out


def test_the_target_verdict():
    shape = "[{},{}]".format(*harness.BENCH_SHAPES[0])
    table = [("per_sample", "float32", shape, 1.0, 1.0, 90.0), ("grad", "float32", shape, 1.0, 1.0, 84.0),
             ("grad", "float32", "[3,17]", 1.0, 1.0, 10.0)]
    assert harness.target_verdict(table).endswith("missed: grad float32 84%")
    assert harness.target_verdict(table[:1]).endswith(": met")
    assert harness.target_verdict(table[2:]).endswith(": not measured")


def test_emulation_fails_a_load_out_of_bounds(emulated):
    """The checks above can fail: a row more than the inputs hold is an illegal address."""
    lib, backend = emulated
    f32 = harness.DTYPES["float32"]
    y = backend.upload(np.ones((10, 16), np.float32))
    out = backend.alloc(11 * 4)
    with pytest.raises(harness.CudaError, match="outside every tracked buffer"):
        lib.per_sample(f32, y.ptr, y.ptr, 11, 16, 1.0, 0, out.ptr)


def test_emulation_fails_a_store_out_of_bounds(emulated):
    """... and a gradient written past its buffer breaks the guard bytes."""
    lib, backend = emulated
    f32 = harness.DTYPES["float32"]
    y = backend.upload(np.arange(160, dtype=np.float32).reshape(10, 16))
    grad = backend.upload(np.ones(10, np.float32))
    grad_pred = backend.alloc(9 * 16 * 4)
    lib.per_sample_grad(f32, y.ptr, y.ptr, grad.ptr, 10, 16, 1.0, grad_pred.ptr)
    with pytest.raises(AssertionError, match="a store outside a 576-byte buffer"):
        backend.synchronize()
    backend.buffers.discard(grad_pred)
