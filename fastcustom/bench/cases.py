"""What one benchmark case records in pytest-benchmark's `extra_info`, and the known names.

A case is one implementation of one kernel at one size on one device. Its
`work` is what one call must move or compute: bytes (`unit="B"`, judged
against the measured memory bandwidth) or floating-point operations
(`unit="FLOP"`, judged against the measured matmul peak). A ceiling case
measures that roof itself, on the same machine in the same run: on a CPU a
read of both inputs on all cores, on a GPU (bench/gpu/harness.py) a
device-to-device copy, bytes read plus bytes written as for the kernels.

The CPU suites store these dicts in pytest-benchmark's `extra_info`;
bench/gpu/harness.py, which runs without TensorFlow or pytest, writes its rows
into a JSON file of the same shape (`harness_json`), so that one report reads both.
"""

# Kernels, in report order, with the roof each is judged against. "Huber gradient" is the
# gradient kernel alone (HuberPerSampleGrad), which only bench/gpu/harness.py times.
KERNELS = ("Huber forward", "Huber forward + gradient", "Huber gradient", "HuberMetric update",
           "MyDense forward", "MyDense forward + gradient")
SIZES = ("small", "medium", "large")

# Implementations, in report order; the first is the baseline every speed-up divides.
BASELINE = "notes (eager)"
IMPLEMENTATIONS = (BASELINE, "notes Mean-based (eager)", "keras built-in", "tf.function",
                   "tf.function + XLA", "XLA path (eager)", "XLA path formula (compiled)",
                   "best XLA form (float32)",
                   "fastcustom", "fastcustom (tf.function)", "fused op",
                   "numpy float64", "torch", "jax + optax")

# The roof of each unit, and how the report names and scales its throughput.
ROOFS = {"B": ("memory read bandwidth", "GB/s"), "FLOP": ("matmul peak", "GFLOP/s")}


def case_info(kernel, size, shape, implementation, device, *, work, unit, elements):
    """`extra_info` of a measured case: `work` bytes or FLOPs per call, `elements` per input."""
    if kernel not in KERNELS or size not in SIZES or unit not in ROOFS:
        raise ValueError(f"unknown kernel/size/unit: {kernel!r}, {size!r}, {unit!r}")
    return {"kernel": kernel, "size": size, "shape": shape, "implementation": implementation,
            "device": device, "work": int(work), "unit": unit, "elements": int(elements),
            "baseline": implementation == BASELINE, "ceiling": False}


def ceiling_info(unit, implementation, device, *, work, shape):
    """`extra_info` of a ceiling case: a memory-bound read on all cores (unit "B") or matmul (unit "FLOP")."""
    if unit not in ROOFS:
        raise ValueError(f"unknown unit {unit!r}")
    return {"kernel": ROOFS[unit][0], "size": "large", "shape": shape,
            "implementation": implementation, "device": device, "work": int(work),
            "unit": unit, "elements": 0, "baseline": False, "ceiling": True}


def harness_json(rows, machine_info, datetime):
    """A pytest-benchmark-shaped JSON document (as a dict) holding timed rows written
    outside pytest: `rows` are (extra_info, median seconds, rounds), each `extra_info`
    from `case_info` or `ceiling_info`. `results.load` reads it like pytest-benchmark's."""
    benchmarks = []
    for info, median, rounds in rows:
        name = f"{info['kernel']} | {info['implementation']} | {info['shape']} | {info['device']}"
        benchmarks.append({"name": name, "fullname": name, "group": None, "params": None,
                           "extra_info": info,
                           "stats": {"median": float(median), "rounds": int(rounds)}})
    return {"machine_info": machine_info, "datetime": datetime, "benchmarks": benchmarks}
