"""The CPU core built for this machine (-march=native) and built portable (x86-64-v3, its
kernels also for AVX-512), side by side in one process, without TensorFlow: rounds
interleaved (each in a shuffled order), medians.

    python bench/cpu/side_by_side_isa.py [--rows 500000] [--depth 16] [--rounds 25]
                                         [--threads N] [--dtypes float32 ...] [--kernels ...]

Rows per kernel and dtype: "native" (the build `FASTCUSTOM_NATIVE=1` makes), "portable"
(the default build: its AVX-512 kernels where the CPU has them) and "portable, avx2" (the
same file's AVX2 kernels, FASTCUSTOM_CPU_ISA=avx2), each a ctypes library (bench/cpu/core.py)
on the same inputs, on `--threads` std::threads (default: every core). Prints ms, GB/s
(bytes read and written once) and each build's speed relative to native (native's median
over this one's, and the same of the fastest calls: 100% is as fast). Outputs are written
into buffers made once. Ratios on a shared machine mean something only with the
other cores quiet; the header prints the load average.
"""

import argparse
import os
import pathlib
import random
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "gpu"))
import core  # noqa: E402
import harness  # noqa: E402  (its top half: NumPy only)

# kernel -> (call(lib, inputs, threads), arrays moved in units of one input array: read + written).
# Outputs go to buffers made once (x["out"]): each call times the kernel, not the page faults
# of a fresh 32 MB output.
KERNELS = {
    "per_sample": (lambda lib, x, n: lib.per_sample(x["y_true"], x["y_pred"], 1.0, n,
                                                    out=x["row_out"]), 2),
    "grad": (lambda lib, x, n: lib.per_sample_grad(x["y_true"], x["y_pred"], x["grad"], 1.0, n,
                                                   out=x["out"]), 3),
    "total": (lambda lib, x, n: lib.weighted_total(x["y_true"], x["y_pred"], None, 1.0, n), 2),
    "total[elem]": (lambda lib, x, n: lib.weighted_total(x["y_true"], x["y_pred"], x["w_elem"],
                                                         1.0, n), 3),
    "mean_with_grad": (lambda lib, x, n: lib.mean_with_grad(x["y_true"], x["y_pred"], 1.0, n,
                                                            out=x["out"]), 3),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500000)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64", "float16", "bfloat16"],
                        choices=list(harness.DTYPES))
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--build-dir", help="build the libraries here (default: a temporary folder)")
    args = parser.parse_args()

    folder = pathlib.Path(args.build_dir or tempfile.mkdtemp(prefix="fastcustom_isa_"))
    started = time.time()
    libraries = {"native": core.CpuCore(core.build(folder / "native", native=True))}
    portable = core.build(folder / "portable", native=False)
    libraries["portable"] = core.CpuCore(portable)
    libraries["portable, avx2"] = core.CpuCore(portable, isa="avx2")
    print(f"built in {time.time() - started:.0f} s: " +
          ", ".join(f"{name} runs {lib.isa}" for name, lib in libraries.items()), file=sys.stderr)

    rng = np.random.default_rng(0)
    cases = {}
    for dtype_name in args.dtypes:
        dtype = harness.DTYPES[dtype_name]
        stored, _ = harness.random_case(rng, dtype, args.rows, args.depth)
        inputs = {k: v.reshape(args.rows, args.depth) if k in ("y_true", "y_pred") else v
                  for k, v in stored.items()}
        inputs["out"] = np.zeros_like(inputs["y_true"])
        inputs["row_out"] = np.zeros(args.rows, inputs["y_true"].dtype)
        for kernel in args.kernels:
            call, arrays = KERNELS[kernel]
            if kernel == "mean_with_grad" and dtype_name not in ("float32", "float64"):
                continue
            for name, lib in libraries.items():
                calls = (lambda lib=lib, call=call, x=inputs: call(lib, x, args.threads))
                calls()  # first call: pages touched, the variant chosen
                cases[(kernel, dtype_name, name)] = (calls, arrays * inputs["y_true"].nbytes)

    times = {key: [] for key in cases}
    order, shuffle = list(cases), random.Random(0).shuffle
    for _ in range(args.rounds):
        shuffle(order)
        for key in order:
            start = time.perf_counter()
            cases[key][0]()
            times[key].append(time.perf_counter() - start)

    print(f"shape [{args.rows}, {args.depth}], {args.rounds} interleaved rounds, {args.threads} "
          f"threads, {os.cpu_count()} cores, load average {os.getloadavg()}")
    print("| kernel | dtype | build (kernels) | median ms | fastest ms | GB/s (median) | "
          "speed vs native: median | fastest |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (kernel, dtype_name, name), (_, moved) in cases.items():
        own, native = times[(kernel, dtype_name, name)], times[(kernel, dtype_name, "native")]
        median = statistics.median(own)
        print(f"| {kernel} | {dtype_name} | {name} ({libraries[name].isa}) | {median * 1e3:.3f} | "
              f"{min(own) * 1e3:.3f} | {moved / median / 1e9:.1f} | "
              f"{statistics.median(native) / median:.1%} | {min(native) / min(own):.1%} |")


if __name__ == "__main__":
    main()
