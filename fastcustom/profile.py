"""Profiles a few training steps of a fastcustom model and summarizes the trace with xprof.

`python -m fastcustom profile --logdir DIR` trains MyDense layers with HuberLoss
and HuberMetric under the TensorBoard profiler, writes
`DIR/plugins/profile/<run>/<host>.xplane.pb`, and prints where the time went,
read from the trace by xprof's offline converter (the code behind TensorBoard's
Profile tab): the XLA modules, their ops and the fused custom ops (from the
events of xprof's trace_viewer tool), and the TensorFlow ops by self time (its
framework_op_stats tool). Needs `pip install tensorboard tensorboard-plugin-profile`
(which brings xprof).
"""

import contextlib
import glob
import importlib.util
import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass

PROFILE_PACKAGES = {"tensorboard": "tensorboard",
                    "tensorboard_plugin_profile": "tensorboard-plugin-profile",
                    "xprof": "xprof"}


def missing_packages():
    """The pip names of the profiling packages that are not installed."""
    return [pip for module, pip in PROFILE_PACKAGES.items()
            if importlib.util.find_spec(module) is None]


def require_profile_packages():
    missing = missing_packages()
    if missing:
        raise RuntimeError(
            f"profiling needs {', '.join(missing)}: pip install {' '.join(missing)} "
            "(or pip install 'fastcustom[profile]')")


@contextlib.contextmanager
def native_stderr_captured():
    """Hold back what C++ code writes to stderr (profiler, xprof logs); replay it on error."""
    with tempfile.TemporaryFile(mode="w+b") as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def build_model(jit_compile=True, features=8, hidden=30, seed=0):
    """The notes' regressor from fastcustom parts: MyDense(selu) x 2 -> MyDense(1), Huber."""
    import keras

    from fastcustom import HuberLoss, HuberMetric, MyDense

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((features,)),
                              MyDense(hidden, activation="selu"),
                              MyDense(hidden, activation="selu"),
                              MyDense(1)])
    model.compile(optimizer="sgd", loss=HuberLoss(), metrics=[HuberMetric()],
                  jit_compile=jit_compile)
    return model


def profile_training(logdir, steps=20, batch_size=32, jit_compile=True, warmup_steps=2):
    """Train `steps` batches under the profiler (after `warmup_steps` unprofiled ones).

    Returns the path of the trace the profiler wrote.
    """
    import numpy as np
    import tensorflow as tf

    model = build_model(jit_compile=jit_compile)
    features = model.input_shape[-1]
    rng = np.random.default_rng(0)
    total = warmup_steps + steps
    x = rng.standard_normal((total, batch_size, features)).astype("float32")
    y = (x.sum(-1, keepdims=True) + rng.standard_normal((total, batch_size, 1))).astype("float32")
    for step in range(warmup_steps):          # trace and compile outside the profile
        model.train_on_batch(x[step], y[step])
    pattern = os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")
    before = {path: os.path.getmtime(path) for path in glob.glob(pattern)}
    with native_stderr_captured():
        tf.profiler.experimental.start(logdir)
        try:
            for step in range(warmup_steps, total):
                with tf.profiler.experimental.Trace("train", step_num=step, _r=1):
                    model.train_on_batch(x[step], y[step])
        finally:
            tf.profiler.experimental.stop()
    new = sorted((path for path in glob.glob(pattern)
                  if os.path.getmtime(path) != before.get(path)), key=os.path.getmtime)
    if not new:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}/plugins/profile")
    return new[-1]


@dataclass(frozen=True)
class TraceSummary:
    """Where the time went, largest first: XLA modules and ops, custom ops, TF ops."""

    xla_modules: list   # [(module, microseconds)]
    xla_ops: list       # [(op, module, occurrences, microseconds)]
    custom_ops: list    # [(op type, occurrences, microseconds)]
    tf_ops: list        # [(op type, op name, occurrences, self microseconds, share of host)]


def _tool(xplane_path, tool):
    from xprof.convert import raw_to_tool_data

    with native_stderr_captured():
        data, _ = raw_to_tool_data.xspace_to_tool_data([xplane_path], tool, {})
    if data is None:
        raise RuntimeError(f"xprof could not build its {tool!r} tool from {xplane_path}")
    return json.loads(data)


def short_module_name(module):
    """An XLA module name without TF's `__XlaMustCompile_..._config_proto_...` suffix."""
    return module.split("__XlaMustCompile")[0]


def _event_totals(xplane_path):
    """From xprof's trace_viewer events: time per XLA module, per XLA op, per custom op.

    XLA ops carry `hlo_op`/`hlo_module` arguments. TF op events are named
    "name:Type"; a namespaced custom type ("FastCustom>HuberPerSample") is
    skipped by xprof's framework_op_stats (its type pattern has no ">"), so
    those are counted here.
    """
    modules = defaultdict(float)
    xla_ops = defaultdict(lambda: [0, 0.0])
    custom_ops = defaultdict(lambda: [0, 0.0])
    for event in _tool(xplane_path, "trace_viewer")["traceEvents"]:
        if event.get("ph") != "X":
            continue
        args, duration = event.get("args", {}), event.get("dur", 0.0)
        if "hlo_op" in args and "hlo_module" in args:
            module = short_module_name(args["hlo_module"])
            modules[module] += duration
            entry = xla_ops[(args["hlo_op"], module)]
        elif ">" in event["name"].rpartition(":")[2]:
            entry = custom_ops[event["name"].rpartition(":")[2]]
        else:
            continue
        entry[0] += 1
        entry[1] += duration
    return modules, xla_ops, custom_ops


def _framework_ops(xplane_path):
    """Rows of xprof's framework_op_stats table (the one without IDLE), as dicts."""
    tables = _tool(xplane_path, "framework_op_stats")
    table = tables[-1] if isinstance(tables, list) else tables
    columns = [column["id"] for column in table["cols"]]
    rows = [dict(zip(columns, (cell.get("v") if cell else None for cell in row["c"])))
            for row in table["rows"]]
    return [row for row in rows if row["type"] != "IDLE"]


def _largest(totals, top):
    entries = [(*key, count, time) if isinstance(key, tuple) else (key, count, time)
               for key, (count, time) in totals.items()]
    return sorted(entries, key=lambda entry: -entry[-1])[:top]


def summarize(xplane_path, top=10):
    """The `TraceSummary` of one trace file, `top` entries per table."""
    require_profile_packages()
    modules, xla_ops, custom_ops = _event_totals(xplane_path)
    tf_rows = sorted(_framework_ops(xplane_path), key=lambda row: -row["total_self_time"])
    return TraceSummary(
        xla_modules=sorted(modules.items(), key=lambda entry: -entry[1]),
        xla_ops=_largest(xla_ops, top),
        custom_ops=_largest(custom_ops, top),
        tf_ops=[(row["type"], row["operation"], int(row["occurrences"]),
                 row["total_self_time"], row.get("host_total_self_time_percent") or 0.0)
                for row in tf_rows[:top]])


def format_summary(summary):
    """The summary as plain-text tables."""
    lines = ["XLA modules (time in their ops):"]
    lines += [f"  {us:10.1f} us  {module}" for module, us in summary.xla_modules] or ["  (none)"]
    lines += ["", "Top XLA ops (fusions, dots, ...) by time:"]
    lines += [f"  {us:10.1f} us  {count:5d} x  {op:32s} [{module}]"
              for op, module, count, us in summary.xla_ops] or ["  (none)"]
    lines += ["", "Custom (namespaced) ops, e.g. fastcustom's fused kernels, by time:"]
    lines += [f"  {us:10.1f} us  {count:5d} x  {op_type}"
              for op_type, count, us in summary.custom_ops] or ["  (none)"]
    lines += ["", "Top TensorFlow ops by self time (host):"]
    lines += [f"  {us:10.1f} us  {share:6.1%}  {count:5d} x  {op_type:24s} {name}"
              for op_type, name, count, us, share in summary.tf_ops] or ["  (none)"]
    return "\n".join(lines)


def run(logdir, steps=20, batch_size=32, jit_compile=True, top=10):
    """The `profile` command: profile, print where the trace is, how to open it, the summary."""
    require_profile_packages()
    trace = profile_training(logdir, steps=steps, batch_size=batch_size, jit_compile=jit_compile)
    mode = "jit_compile=True (XLA)" if jit_compile else "jit_compile=False"
    print(f"Profiled {steps} training steps of MyDense x 3 + HuberLoss + HuberMetric, {mode}.")
    print(f"Trace: {trace}")
    print(f"Open it: tensorboard --logdir {logdir}   (then the Profile tab)")
    print()
    print(format_summary(summarize(trace, top=top)))
    return trace
