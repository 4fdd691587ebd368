"""The Huber CPU core (csrc/cpu) on its own: no TensorFlow, through ctypes (bench/cpu/core.py).

The core is built as the op library builds it (fastcustom/build_ops.py: portable x86-64-v3
code with an AVX-512 variant of the kernels, chosen at run time) with its C API, and

    per_sample[r]   = mean_j h[r, j]
    grad_pred[r, j] = grad[r] / D * d h[r, j] / d y_pred[r, j]
    (total, count)  = (sum w h, sum w),  w: none, per row or per element
    mean_with_grad  = (mean h, d mean / d y_pred)      (float32, float64)

(h and its gradient as `fastcustom.reference` states them) are checked against the NumPy
float64 reference on shapes that reach every path of the kernels (rows of 1 to 16
elements summed by vector shuffles, rows of one chunk, rows of many chunks, many parallel
blocks, nothing to do), with NaN and inf inputs, with bench/gpu/harness.py's comparisons and
tolerances. Then the promise the op's digests rest on: the same bits on 1 or 3 threads and
in every variant this CPU can run (on a CPU without AVX-512 that is the AVX2 variant alone;
between variants, a NaN is a NaN where the other has one, its sign and payload aside),
and the variants' instruction sets in the machine code: AVX-512 registers in the AVX-512
variant's functions only. Where qemu-user is installed (`apt-get install qemu-user`), the
library also runs on an emulated AVX2-only EPYC: its AVX2 kernels, the same bits.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "cpu"))
sys.path.insert(0, str(ROOT / "bench" / "gpu"))
import core  # noqa: E402
import harness  # noqa: E402  (its top half: NumPy only)

SHAPES = [
    (1000, 1), (1000, 3), (33, 5), (4096, 16), (70001, 16),  # short rows: shuffled sums, many blocks
    (999, 17), (777, 24), (300, 999), (40, 4096),             # rows of one chunk
    (10, 5000), (3, 70001),                                   # rows of many chunks, many blocks
    (1, 1), (0, 16), (5, 0),                                  # one element, nothing, D == 0
]
THREADS = 3
# The reference warns about means over nothing and NaN arithmetic, as NumPy does.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:fastcustom.reference")
WEIGHTS = ("none", "row", "elem")


@pytest.fixture(scope="module")
def built(tmp_path_factory, require):
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        require("no C++ compiler (g++)")
    return core.build(tmp_path_factory.mktemp("cpu_core"))


@pytest.fixture(scope="module")
def cores(built):
    """The core with the dispatch's own choice, and a copy asked for the AVX2 variant."""
    return core.CpuCore(built), core.CpuCore(built, isa="avx2")


def weights_of(values, stored, mode):
    return {"none": (None, np.zeros(0)), "row": (stored["w_row"], values["w_row"]),
            "elem": (stored["w_elem"], values["w_elem"])}[mode]


def outputs(lib, stored, shape, threshold=1.0, threads=1):
    """Every kernel's result on one case, by name."""
    t, p = stored["y_true"].reshape(shape), stored["y_pred"].reshape(shape)
    out = {"per_sample": lib.per_sample(t, p, threshold, threads),
           "grad": lib.per_sample_grad(t, p, stored["grad"], threshold, threads)}
    for mode in WEIGHTS:
        w = weights_of(stored, stored, mode)[0]
        out[f"total[{mode}]"] = np.array(lib.weighted_total(t, p, w, threshold, threads))
    if p.dtype in (np.float32, np.float64):
        mean, grad = lib.mean_with_grad(t, p, threshold, threads)
        out["mean_with_grad"] = np.concatenate([[mean], grad.reshape(-1)])
    return out


def check(dtype, stored, values, shape, lib, threshold=1.0):
    """Failures of every kernel against the float64 reference on one case."""
    got = outputs(lib, stored, shape, threshold, THREADS)
    yt, yp = values["y_true"].reshape(shape), values["y_pred"].reshape(shape)
    want = {"per_sample": (harness.ref_per_sample(yt, yp, threshold), dtype.out_rtol, dtype.atol),
            "grad": (harness.ref_grad(yt, yp, values["grad"], threshold), dtype.out_rtol, dtype.atol)}
    for mode in WEIGHTS:
        w = weights_of(values, stored, mode)[1]
        want[f"total[{mode}]"] = (np.array(harness.ref_weighted_total(yt, yp, w, threshold)),
                                  dtype.rtol, 0.0)
    if "mean_with_grad" in got:
        size = yt.size
        mean = (np.sum(harness.ref_per_sample(yt, yp, threshold)) / shape[0] if size
                else (0.0 if shape[0] == 0 else np.nan))
        grad = harness.ref_grad(yt, yp, np.full(shape[0], 1.0 / max(shape[0], 1)), threshold)
        want["mean_with_grad"] = (np.concatenate([[mean], grad.reshape(-1)]), dtype.out_rtol,
                                  dtype.atol)
    failures = []
    for kernel, (reference, rtol, atol) in want.items():
        result = got[kernel] if kernel.startswith("total") else dtype.decode(got[kernel])
        ok, _, detail = harness.compare(result, reference, rtol, atol)
        if not ok:
            failures.append(f"{kernel} {dtype.name} {shape} threshold={threshold}: {detail}")
    return failures


@pytest.mark.parametrize("dtype", list(harness.DTYPES))
def test_core_matches_the_float64_reference(cores, dtype, rng):
    dtype = harness.DTYPES[dtype]
    failures = []
    for lib in cores:
        for rows, depth in SHAPES:
            stored, values = harness.random_case(rng, dtype, rows, depth)
            failures += check(dtype, stored, values, (rows, depth), lib)
        for threshold in (0.25, 3.0, 1e30):
            stored, values = harness.random_case(rng, dtype, 999, 17)
            failures += check(dtype, stored, values, (999, 17), lib, threshold)
        for rows, depth in harness.SPECIAL_SHAPES:  # NaN and inf in rows 1 to 5
            stored, values = harness.special_values_case(rng, dtype, rows, depth)
            failures += check(dtype, stored, values, (rows, depth), lib)
    assert not failures, "\n".join(failures)


def nan_as_one_nan(dtype, result):
    """The result's bits with every NaN made the same NaN: which of two NaNs an add returns
    (x86: its first operand) follows the order the compiler gave a commutative add, which
    may differ between variants; the NaN's place may not."""
    values = result if result.dtype == np.float64 else dtype.decode(result)
    return np.where(np.isnan(values), np.nan, values).tobytes()


@pytest.mark.parametrize("dtype", list(harness.DTYPES))
def test_the_same_bits_on_any_threads_in_every_variant(cores, dtype, rng):
    """Blocks and lanes depend on the shape only: 1 or 3 threads, AVX-512 or AVX2, one answer."""
    dtype = harness.DTYPES[dtype]
    default, avx2 = cores
    assert avx2.isa == "avx2" and default.isa in ("avx2", "avx512")
    special = [(8, 19), (6, 5000)]  # NaN and inf in rows 1 to 5
    for rows, depth in [(70001, 16), (4099, 9), (999, 17), (3, 70001)] + special:
        case = harness.special_values_case if (rows, depth) in special else harness.random_case
        stored, _ = case(rng, dtype, rows, depth)
        first = outputs(default, stored, (rows, depth), threads=1)
        for lib, threads in [(default, THREADS), (avx2, 1), (avx2, THREADS)]:
            again = outputs(lib, stored, (rows, depth), threads=threads)
            if lib is default:
                differ = [k for k in first if first[k].tobytes() != again[k].tobytes()]
            else:
                differ = [k for k in first
                          if nan_as_one_nan(dtype, first[k]) != nan_as_one_nan(dtype, again[k])]
            assert not differ, f"{lib.isa} on {threads} threads, [{rows}, {depth}]: {differ} differ"


def test_bad_arguments_are_refused(cores):
    lib = cores[0]
    x = np.ones((4, 3), np.float32)
    with pytest.raises(core.CoreError):
        lib.weighted_total(x, x, np.ones(5, np.float32))  # neither 0, N nor N*D weights
    with pytest.raises(core.CoreError):
        lib.mean_with_grad(x.astype(np.float16), x.astype(np.float16))  # float32/64 only
    with pytest.raises(core.CoreError):
        lib.per_sample(x, x, threads=0)
    with pytest.raises(TypeError):
        lib.per_sample(x, x.astype(np.float64))


def op_library():
    """The op library of the fastcustom under test, when it was built portable."""
    import fastcustom  # lazy: no TensorFlow
    path = pathlib.Path(fastcustom.__file__).parent / "ops" / "_huber_ops.so"
    record = core.build_ops_module().read_record(str(path))
    if not path.exists() or not record or record.get("cpu_target") != "x86-64-v3":
        pytest.skip(f"no portable op library at {path} (record: {record})")
    return path


@pytest.mark.skipif(core.build_ops_module().CpuTarget(native=False).name != "x86-64-v3",
                    reason="the AVX2 + AVX-512 variants are x86-64's")
@pytest.mark.parametrize("which", ["core", "op library"])
def test_avx512_instructions_only_in_the_avx512_variant(built, which):
    """Every CPU that runs x86-64-v3 runs the library: the AVX-512 variant's functions are the
    only ones with AVX-512 registers (the standard library's inline code included)."""
    zmm = core.functions_using_zmm(built if which == "core" else op_library())
    if zmm is None:
        pytest.skip("no objdump (binutils)")
    assert zmm, "no AVX-512 code at all: the AVX-512 variant was not compiled for AVX-512"
    outside = sorted(f for f in zmm if "fastcustom::cpu::avx512::" not in f)
    assert not outside, f"AVX-512 code outside the AVX-512 variant: {outside[:5]}"


# Every kernel on a few cases (NaN and inf among them) in the variant the dispatch picks, as
# digests with every NaN made one NaN: `python -c DIGESTS <library>`.
DIGESTS = f"""
import hashlib, json, sys
sys.path[:0] = [{str(ROOT / "bench" / "cpu")!r}, {str(ROOT / "bench" / "gpu")!r}]
import numpy as np
import core, harness
lib = core.CpuCore(sys.argv[1])
rng = np.random.default_rng(3)
digests = {{}}
for name, dtype in harness.DTYPES.items():
    for shape in [(4096, 16), (999, 17), (3, 20001), (8, 19)]:
        case = harness.special_values_case if shape == (8, 19) else harness.random_case
        stored, _ = case(rng, dtype, *shape)
        t, p = stored["y_true"].reshape(shape), stored["y_pred"].reshape(shape)
        results = [lib.per_sample(t, p, 1.0, 2), lib.per_sample_grad(t, p, stored["grad"], 1.0, 2),
                   np.array(lib.weighted_total(t, p, None, 1.0, 2)),
                   np.array(lib.weighted_total(t, p, stored["w_row"], 1.0, 2))]
        values = [r if r.dtype == np.float64 else dtype.decode(r) for r in results]
        digest = hashlib.sha256(b"".join(np.where(np.isnan(v), np.nan, v).tobytes() for v in values))
        digests[f"{{name}}{{shape}}"] = digest.hexdigest()
print(json.dumps({{"isa": lib.isa, "digests": digests}}))
"""


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None or
                    core.build_ops_module().CpuTarget(native=False).name != "x86-64-v3",
                    reason="needs qemu-user (qemu-x86_64) to emulate a CPU without AVX-512")
def test_a_cpu_without_avx512_runs_the_avx2_variant(built):
    """Under qemu-user as an AVX2-only EPYC (Zen 2: no AVX-512; qemu stops a program with
    SIGILL at the first instruction that CPU lacks), the library picks its AVX2 kernels and
    gives the bits it gives on this machine (AVX-512 here, where there is AVX-512)."""
    here, emulated = (subprocess.run([*prefix, sys.executable, "-c", DIGESTS, str(built)],
                                     capture_output=True, text=True, timeout=600)
                      for prefix in ([], ["qemu-x86_64", "-cpu", "EPYC-Rome"]))
    assert here.returncode == 0, here.stderr[-3000:]
    assert emulated.returncode == 0, emulated.stderr[-3000:]
    here, emulated = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (here, emulated))
    assert emulated["isa"] == "avx2"
    assert emulated["digests"] == here["digests"]
