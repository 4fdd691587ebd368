"""Huber at one shape, every row side by side in one process: rounds interleaved (each in a
shuffled order), medians.

    python bench/side_by_side_huber.py [--rows 500000] [--depth 16] [--rounds 25] [--only NAME ...]

The cases are bench/test_bench_huber.py's (same builders, same inputs); the roof is
its memory-bound read on all cores. Prints ms, GB/s (bytes each path moves) and the
fraction of the roof, and the page faults per call: a row that reads about 2x slower in
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
# (kernel table, implementation, bytes moved in units of one input array)
ROWS = [("read", name, 2) for name in suite.READS] + [
    ("forward", "fastcustom", 2), ("forward", "fused op", 2), ("forward", "XLA path (eager)", 2),
    ("forward", "XLA path formula (compiled)", 2),
    ("forward", "best XLA form (float32)", 2), ("forward", "torch", 2),
    ("forward + gradient", "fastcustom (tf.function)", 3),
    ("forward + gradient", "fastcustom", 3),
    ("forward + gradient", "fused op", 5),   # forward reads 2; gradient reads 2, writes 1
    ("forward + gradient", "tf.function + XLA", 3),
    ("forward + gradient", "XLA path (eager)", 3),
    ("forward + gradient", "XLA path formula (compiled)", 3),
    ("forward + gradient", "best XLA form (float32)", 3),
    ("forward + gradient", "torch", 3)]
TABLES = {"read": suite.READS, "forward": suite.FORWARD,
          "forward + gradient": suite.FORWARD_GRADIENT}


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
    for kernel, name, arrays in ROWS:
        if args.only and kernel != "read" and name not in args.only:
            continue
        try:
            call, _ = TABLES[kernel][name](inputs)
        except BaseException as error:  # pytest.skip (torch missing) is a BaseException
            print(f"skipped {kernel} / {name}: {error}", file=sys.stderr)
            continue
        call()
        calls[(kernel, name)] = (call, arrays * inputs.np_true.nbytes)
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
    roof = max(calls[k][1] / statistics.median(times[k]) for k in calls if k[0] == "read")
    print(f"shape [{args.rows}, {args.depth}] float32, {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()}, "
          f"TF_CPU_ALLOCATOR_USE_BFC={os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', '')!r}")
    print("| kernel | implementation | median ms | MB moved | GB/s | of roof | page faults / call |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (kernel, name), (call, moved) in calls.items():
        median = statistics.median(times[(kernel, name)])
        print(f"| {kernel} | {name} | {median * 1e3:.3f} | {moved / MB:.0f} | "
              f"{moved / median / 1e9:.1f} | {moved / median / roof:.0%} | "
              f"{faults[(kernel, name)] / args.rounds:,.0f} |")


if __name__ == "__main__":
    main()
