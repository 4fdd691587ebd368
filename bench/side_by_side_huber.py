"""Huber at one shape, every row side by side in one process: rounds interleaved (each in a
shuffled order), medians.

    python bench/side_by_side_huber.py [--rows 500000] [--depth 16] [--rounds 25] [--only NAME ...]

The cases are bench/test_bench_huber.py's (same builders, same inputs, the same bytes per
call: `suite.bytes_moved`, the task's reads and writes, whatever an implementation moves);
the roofs are its two, timed in the same rounds: forward against the read of both inputs on
all cores, forward + gradient against `np.add(y_true, y_pred, out=...)` on all cores (the
same reads and writes). Prints ms, MB read and written, GB/s, the share of the roof, and
the page faults per call: a row that reads about 2x slower in
one process than in another (TensorFlow's default CPU allocator is glibc's malloc, whose
per-thread arenas can return a large output to the OS after each call and fault it in
again; `TF_CPU_ALLOCATOR_USE_BFC=true` is TensorFlow's own way out) shows it there.
`--only` keeps the implementations named (and the roof), for a
pair whose ratio matters, with less else between its rounds. For a quick look at ratios
on a shared machine; the pytest suite and `python -m fastcustom.bench report` remain the
record.
"""

import argparse
import os
import pathlib
import random
import resource
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import test_bench_huber as suite  # noqa: E402
from conftest import Device  # noqa: E402

MB = 1e6
FORWARD, FORWARD_GRADIENT = "Huber forward", "Huber forward + gradient"
# (kernel, implementation); the roofs first, each under the kernel it is the roof of.
ROWS = [(FORWARD, suite.READ), (FORWARD_GRADIENT, suite.READ_WRITE)] + [
    (FORWARD, name) for name in ("fastcustom", "fused op (per-sample, then mean)",
                                 "XLA path (eager)", "XLA path formula (compiled)",
                                 "best XLA form (float32)", "torch", "jax + optax")] + [
    (FORWARD_GRADIENT, name) for name in (
        "fastcustom (tf.function)", "fastcustom", "fused ops, two passes", "tf.function + XLA",
        "XLA path (eager)", "XLA path formula (compiled)", "best XLA form (float32)", "torch",
        "jax + optax")]
ROOF_OF = {FORWARD: suite.READ, FORWARD_GRADIENT: suite.READ_WRITE}


def builder(kernel, name):
    """The suite's `make(inputs)` of `name`: a roof, or an implementation of `kernel`."""
    if name in suite.ROOFS:
        return suite.ROOFS[name][1]
    return {FORWARD: suite.FORWARD, FORWARD_GRADIENT: suite.FORWARD_GRADIENT}[kernel][name]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500000)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="an implementation to keep (repeatable); the roof is always kept")
    args = parser.parse_args()
    suite.SHAPES["large"] = (args.rows, args.depth)
    suite._arrays.cache_clear()
    inputs = suite.Inputs("large", Device("cpu"))
    calls = {}
    for kernel, name in ROWS:
        if args.only and name not in suite.ROOFS and name not in args.only:
            continue
        try:
            call, _ = builder(kernel, name)(inputs)
        except BaseException as error:  # pytest.skip (torch missing) is a BaseException
            print(f"skipped {kernel} / {name}: {error}", file=sys.stderr)
            continue
        call()
        calls[(kernel, name)] = (call, suite.bytes_moved(kernel, "large"))
    times = {key: [] for key in calls}
    faults = {key: 0 for key in calls}
    order, shuffle = list(calls), random.Random(0).shuffle
    for _ in range(args.rounds):
        shuffle(order)   # a fixed order would give each row the same predecessor's cache state
        for key in order:
            call = calls[key][0]
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
            faults[key] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # Each roof: its fastest round, as the report takes it.
    roofs = {kernel: sum(calls[(kernel, name)][1]) / min(times[(kernel, name)])
             for kernel, name in ROOF_OF.items()}
    print(f"shape [{args.rows}, {args.depth}] float32, {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()}, "
          f"TF_CPU_ALLOCATOR_USE_BFC={os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', '')!r}")
    print("| kernel | implementation | median ms | MB read + written | GB/s | of roof "
          "| page faults / call |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (kernel, name), (call, (read, written)) in calls.items():
        median = statistics.median(times[(kernel, name)])
        rate = (read + written) / median
        label = f"roof: {name}" if name in suite.ROOFS else name
        print(f"| {kernel} | {label} | {median * 1e3:.3f} | {read / MB:.0f} + {written / MB:.0f} "
              f"| {rate / 1e9:.1f} | {rate / roofs[kernel]:.0%} | "
              f"{faults[(kernel, name)] / args.rounds:,.0f} |")


if __name__ == "__main__":
    main()
