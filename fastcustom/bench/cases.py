"""What each benchmark row records in pytest-benchmark's `extra_info`: the schema the report reads.

Every row of bench/ stores a dict built here, so the report is a pure function of
the JSON. `extra_info["kind"]` says which schema a row follows:

- "kernel" (`case_info`): one implementation of one kernel at one size on one
  device; its time is pytest-benchmark's own stats of the row; bench/conftest.py's
  `measure` adds `page_faults_per_call` (minor page faults over the timing, per
  call). `work` is what one
  call must do: bytes (`unit="B"`, reads and writes counted once each, stated in
  `bytes_read` / `bytes_written`) or floating-point operations (`unit="FLOP"`).
  Every implementation of a kernel at a size is given the same work: the task's,
  not what a particular implementation happens to move.
- "ceiling" (`ceiling_info`): a roof of the machine, measured in the same run:
  "read" (a memory-bound read on all cores), "read+write" (reads two arrays and
  writes a third on all cores, as forward + gradient does; a device copy on a GPU),
  "matmul" (the fastest large matmul the run found). The report takes the best
  round of every measurement of a roof.
- "interleaved" (`interleaved_info`): fastcustom and its peers (`PEERS`) timed
  alternately, in a shuffled order, round after round in one loop, with the roof in
  the same loop at the large size; it stores the per-round speed-up over each peer
  (the peer's time over fastcustom's) and the per-round share of the roof, each as a
  `spread`. Ratios taken this way hold on a machine that is busy with other work.
- "training" (`training_info`): steps per second of one way to train one model
  (`task`), with its spread over rounds, steps per CPU-second, and a `role` that
  puts the row in the headline.
- "fresh process" (`fresh_process_info`): seconds of each way to do one thing from a
  fresh interpreter (the first call; cold short fits), several processes per way.

Roles (`role`, or the keys of `peers`): "fastcustom" marks the rows the headline
speaks for, and `PEERS` the alternatives it compares them with; the headline takes
the best (fastest) row of each peer role. `targets` on a row map a role, or another
row's `implementation` in the same task, to the least speed-up this row must have
over it (e.g. {"keras": 20}: at least 20x the best model.fit); "fresh process" rows
carry targets per way.

Rows without a "kind" but with a "kernel" are the older shape (and
bench/gpu/harness.py's): "kernel" or "ceiling" by their `ceiling` flag.
bench/gpu/harness.py, which runs without TensorFlow or pytest, writes its rows
through `case_info` / `ceiling_info` / `harness_json`: this module is plain Python.
"""

# Kernels, in report order. "Huber gradient" is the gradient kernel alone
# (HuberPerSampleGrad), which only bench/gpu/harness.py times.
KERNELS = ("Huber forward", "Huber forward + gradient", "Huber gradient", "HuberMetric update",
           "MyDense forward", "MyDense forward + gradient")
SIZES = ("small", "medium", "large")

# Implementations of the kernels, in report order; the first is the notes' code, the
# baseline of the detail tables' "vs notes" column.
BASELINE = "notes (eager)"
IMPLEMENTATIONS = (BASELINE, "notes Mean-based (eager)", "keras built-in", "tf.function",
                   "tf.function + XLA", "XLA path (eager)", "XLA path formula (compiled)",
                   "best XLA form (float32)",
                   "fastcustom", "fastcustom (tf.function)", "fused op (per-sample, then mean)",
                   "fused ops, two passes", "fused op (weighted total)",
                   "numpy float64", "torch", "jax + optax", "jax")

# What each kernel implementation is, in a line, for the report's legend.
DESCRIPTIONS = {
    BASELINE: "the notes' classes, run eagerly: the code this package replaces",
    "notes Mean-based (eager)": "the notes' second metric, a keras.metrics.Mean subclass",
    "keras built-in": "keras.losses.Huber, keras.metrics.Mean over keras.losses.huber, "
                      "keras.layers.Dense",
    "tf.function": "fastcustom's TF math in a plain tf.function",
    "tf.function + XLA": "the same with jit_compile=True (the best XLA peer of the metric "
                         "and of MyDense)",
    "XLA path (eager)": "what fastcustom runs where the fused op is not built",
    "XLA path formula (compiled)": "the XLA path's compiled function called directly "
                                   "(a check: >= 90% of the best XLA form)",
    "best XLA form (float32)": "the fastest XLA formulation of the Huber mean, in float32 "
                               "(the best XLA peer of the loss)",
    "fastcustom": "the public API called eagerly: HuberLoss, HuberMetric, MyDense",
    "fastcustom (tf.function)": "HuberLoss under a tape inside a tf.function",
    "fused op (per-sample, then mean)": "the custom op called directly, then TF's mean",
    "fused ops, two passes": "the per-sample op, then its gradient op: two passes where "
                             "HuberLoss makes one",
    "fused op (weighted total)": "the custom op HuberWeightedTotal called directly",
    "numpy float64": "fastcustom.reference, the float64 truth (slow on purpose)",
    "torch": "torch.nn.functional.huber_loss, torch.nn.Linear + selu",
    "jax + optax": "optax.losses.huber_loss under jax.jit",
    "jax": "jax.nn.selu(x @ kernel + bias) under jax.jit (gradients by jax.vjp)",
}

# The alternatives fastcustom is compared with, in headline order: role -> column title.
FASTCUSTOM = "fastcustom"
PEERS = {"notes": "the notes", "keras": "Keras", "xla": "best XLA", "torch": "PyTorch",
         "jax": "JAX"}

# Roofs: kind -> (name, unit of work). Each kernel is judged against one of them.
ROOFS = {"read": ("memory read", "B"), "read+write": ("memory read + write", "B"),
         "matmul": ("matmul", "FLOP")}
KERNEL_ROOFS = {"Huber forward": "read", "Huber forward + gradient": "read+write",
                "Huber gradient": "read+write", "HuberMetric update": "read",
                "MyDense forward": "matmul", "MyDense forward + gradient": "matmul"}
RATE_UNITS = {"B": "GB/s", "FLOP": "GFLOP/s", "steps": "steps/s"}

# The headline's training tasks (kind "training") and fresh-process tasks (kind "fresh
# process"), in order; shown as "not in this run" when a run has no row of them.
TRAINING_TASKS = ("notes' model", "wide MLP")
FRESH_PROCESS_TASKS = ("first call", "cold short fit")


def _check(kernel=None, size=None, unit=None, roof=None, role=None):
    problems = [f"{what} {value!r}" for what, value, known in (
        ("kernel", kernel, KERNELS), ("size", size, SIZES), ("unit", unit, RATE_UNITS),
        ("roof", roof, ROOFS), ("role", role, (FASTCUSTOM, *PEERS)))
        if value is not None and value not in known]
    if problems:
        raise ValueError("unknown " + ", ".join(problems))


def _bytes(work, unit, read, written):
    """`bytes_read` / `bytes_written` of a row (None for FLOP rows or when not split)."""
    if read is None:
        return {}
    if unit != "B" or int(read) + int(written or 0) != int(work):
        raise ValueError(f"work {work} {unit} is not bytes read {read} + written {written}")
    return {"bytes_read": int(read), "bytes_written": int(written or 0)}


def case_info(kernel, size, shape, implementation, device, *, work, unit, elements,
              read=None, written=None):
    """`extra_info` of a kernel row: `work` bytes or FLOPs per call (for bytes, `read` and
    `written` say how they split), `elements` per input."""
    _check(kernel=kernel, size=size, unit=unit)
    if ROOFS[KERNEL_ROOFS[kernel]][1] != unit:
        raise ValueError(f"{kernel!r} is measured in {ROOFS[KERNEL_ROOFS[kernel]][1]}, not {unit}")
    return {"kind": "kernel", "kernel": kernel, "size": size, "shape": shape,
            "implementation": implementation, "device": device, "work": int(work),
            "unit": unit, **_bytes(work, unit, read, written), "elements": int(elements),
            "roof": KERNEL_ROOFS[kernel], "baseline": implementation == BASELINE,
            "ceiling": False}


def ceiling_info(unit, implementation, device, *, work, shape, roof=None, read=None,
                 written=None):
    """`extra_info` of a roof row. `roof` is a kind of `ROOFS`; by default "matmul" for
    FLOP and "read+write" for bytes (a copy, what bench/gpu/harness.py measures)."""
    roof = roof or ("matmul" if unit == "FLOP" else "read+write")
    _check(unit=unit, roof=roof)
    if ROOFS[roof][1] != unit:
        raise ValueError(f"roof {roof!r} is measured in {ROOFS[roof][1]}, not {unit}")
    return {"kind": "ceiling", "kernel": ROOFS[roof][0], "roof": roof, "size": "large",
            "shape": shape, "implementation": implementation, "device": device,
            "work": int(work), "unit": unit, **_bytes(work, unit, read, written),
            "elements": 0, "baseline": False, "ceiling": True}


def spread(values):
    """median, q1, q3, iqr, min, max and rounds of `values`, by pytest-benchmark's `Stats`
    (the statistics it stores for every row)."""
    from pytest_benchmark.stats import Stats   # the bench extra; harness.py never calls this

    stats = Stats()
    for value in values:
        stats.update(float(value))
    return {name: getattr(stats, name) for name in
            ("median", "q1", "q3", "iqr", "min", "max", "rounds")}


def interleaved_info(task, size, shape, device, *, work, unit, read=None, written=None,
                     peers, seconds, speedups, fastcustom=FASTCUSTOM, roof_share=None,
                     roof=None, missing=None, iterations=1, targets=None,
                     page_faults_per_call=None):
    """`extra_info` of an interleaved row.

    `task` is a kernel of `KERNELS` (work in bytes or FLOPs per call) or a training task
    (`unit="steps"`: `work` steps per round, the same for every way). `fastcustom`: the
    implementation that speaks for fastcustom; `peers`: role ->
    implementation timed; `seconds`: implementation -> `spread` of its time per call;
    `speedups`: role -> `spread` of the per-round speed-up (the peer's time over
    fastcustom's); `roof_share`: `spread` of the per-round share of the roof `roof` (an
    implementation name), or None; `missing`: role -> why that peer did not run;
    `targets`: role (or "roof") -> least speed-up (share of the roof);
    `page_faults_per_call`: implementation -> minor page faults per call.
    """
    if unit != "steps":
        _check(kernel=task, size=size, unit=unit)
    for role in (*peers, *(missing or {})):
        _check(role=role)
    return {"kind": "interleaved", "task": task, "size": size, "shape": shape,
            "device": device, "work": int(work), "unit": unit,
            **_bytes(work, unit, read, written),
            "roof_kind": KERNEL_ROOFS.get(task), "fastcustom": fastcustom,
            "peers": dict(peers), "seconds": dict(seconds), "speedups": dict(speedups),
            "roof": roof, "roof_share": roof_share, "missing": dict(missing or {}),
            "iterations": int(iterations), "targets": dict(targets or {}),
            "page_faults_per_call": dict(page_faults_per_call or {})}


def training_info(task, implementation, *, steps_per_round, round_seconds, role=None,
                  cpu_seconds=None, targets=None, **details):
    """`extra_info` of a training row: `round_seconds` are the timed rounds of
    `steps_per_round` steps each; `cpu_seconds` their process times (all threads), if
    measured. Steps/s is the steps over the median round; its range the steps over the
    rounds' third and first quartiles. `details` (e.g. `xla_flags`) are kept as given."""
    _check(role=role)
    time = spread(round_seconds)
    cpu = spread(cpu_seconds)["median"] if cpu_seconds else None
    return {"kind": "training", "suite": "training", "task": task,
            "implementation": implementation, "role": role,
            "steps_per_round": int(steps_per_round), "rounds": time["rounds"],
            "steps_per_second": steps_per_round / time["median"],
            "steps_per_second_iqr": [steps_per_round / time["q3"], steps_per_round / time["q1"]],
            "steps_per_cpu_second": steps_per_round / cpu if cpu else None,
            "targets": dict(targets or {}), **details}


def fresh_process_info(task, label, seconds, *, roles, targets=None, **details):
    """`extra_info` of a fresh-process row: `seconds` maps each way to the seconds each
    of its fresh processes took; `roles` maps ways to roles; `targets` maps a way to its
    {role or way: least speed-up} (speed-up: the other's seconds over this way's). With
    `unit="MB"` in `details` the amounts are megabytes (peak memory) instead, lower better
    all the same."""
    for role in roles.values():
        _check(role=role)
    ways = {way: {"role": roles.get(way), "seconds": spread(values),
                  "values": [float(v) for v in values],
                  "targets": dict((targets or {}).get(way, {}))}
            for way, values in seconds.items()}
    return {"kind": "fresh process", "suite": "training", "task": task, "label": label,
            "ways": ways, **details}


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
