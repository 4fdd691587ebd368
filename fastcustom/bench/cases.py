"""What one benchmark case records in pytest-benchmark's `extra_info`, and the known names.

A case is one implementation of one kernel at one size on one device. Its
`work` is what one call must move or compute: bytes (`unit="B"`, judged
against the measured memory-read bandwidth) or floating-point operations
(`unit="FLOP"`, judged against the measured matmul peak). A ceiling case
measures that roof itself, on the same machine in the same run.
"""

# Kernels, in report order, with the roof each is judged against.
KERNELS = ("Huber forward", "Huber forward + gradient", "HuberMetric update",
           "MyDense forward", "MyDense forward + gradient")
SIZES = ("small", "medium", "large")

# Implementations, in report order; the first is the baseline every speed-up divides.
BASELINE = "notes (eager)"
IMPLEMENTATIONS = (BASELINE, "notes Mean-based (eager)", "keras built-in", "tf.function",
                   "tf.function + XLA", "XLA path (eager)", "best XLA form (float32)",
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
