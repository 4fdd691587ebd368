"""What a TensorBoard profile says about training, read with xprof's own converters.

`summarize(path)` reads one trace (an `.xplane.pb` file, or the newest under a log
folder) and returns a `TraceSummary`: the steps xprof's Overview page found (their
count and time: mean, min, max), the capture's wall time, the share of the step time
spent waiting for input, where the op time went grouped by what it belongs to (a Keras
layer, the loss, the optimizer, the metrics, the loop around the steps), and the Huber
kernel's time and share.

What each op belongs to: TensorFlow ops by their name's scopes
(`sequential/my_dense/MatMul` -> layer `my_dense`); XLA ops (fusions, dots, copies: on a
CPU xprof knows only their HLO names) by the TensorFlow op names XLA kept in the
compiled module's metadata, which the trace holds (a fusion belongs to what most of the
ops it fused belong to). The Huber kernel is the fused op (`FastCustom>Huber...`) or the
XLA ops made from `huber` ops (HuberLoss's `huber_loss` scope, HuberMetric's).

Needs `tensorboard-plugin-profile` (xprof); the HLO metadata is read with the protos
TensorFlow ships (`tensorflow.compiler.xla.service.hlo_pb2`, TSL's `xplane_pb2`).
"""

import collections
import contextlib
import glob
import json
import os
import re
import tempfile
from dataclasses import dataclass, field

# Scope names that say what an op belongs to, past the model's own name.
_LOOP_SCOPES = ("while", "body", "StatefulPartitionedCall", "PartitionedCall", "cond",
                "then", "else", "cond_true", "cond_false")
_HUBER = re.compile(r"huber", re.IGNORECASE)
# XLA instructions whose time is that of the ops they run (counted there).
_CONTAINERS = ("while", "conditional", "call")


@contextlib.contextmanager
def native_stderr_held():
    """Hold back what C++ code writes to stderr (xprof's logs); replay it on error."""
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


def newest_trace(path):
    """`path` if it is a trace file, else the newest `.xplane.pb` anywhere under it."""
    if os.path.isfile(path):
        return path
    traces = glob.glob(os.path.join(path, "**", "*.xplane.pb"), recursive=True)
    if not traces:
        raise FileNotFoundError(f"no profile (*.xplane.pb) under {path}")
    return max(traces, key=os.path.getmtime)


def tool_data(trace, tool):
    """xprof's `tool` ("overview_page", "trace_viewer", "framework_op_stats") for `trace`."""
    from xprof.convert import raw_to_tool_data

    with native_stderr_held():
        data, _ = raw_to_tool_data.xspace_to_tool_data([trace], tool, {})
    if data is None:
        raise RuntimeError(f"xprof could not build its {tool!r} tool from {trace}")
    return json.loads(data)


@dataclass(frozen=True)
class TraceSummary:
    """Where a profile's training time went."""

    trace: str
    steps: list                     # [(step name, milliseconds)] as the Overview lists them
    wall_ms: float                  # from the first to the last event of the capture
    input_percent: float            # of the step time, in the input pipeline
    owners: list                    # [(what, microseconds, share of op time)], largest first
    ops: list                       # [(op, what it belongs to, occurrences, microseconds)]
    huber_us: float                 # the Huber kernel's time
    huber_ops: list = field(default_factory=list)   # [(op, occurrences, microseconds)]
    op_us: float = 0.0              # every op's time (XLA ops and TensorFlow ops)

    @property
    def step_ms(self):
        """(mean, min, max) step time in ms, or None without steps."""
        times = [ms for _, ms in self.steps]
        return (sum(times) / len(times), min(times), max(times)) if times else None


def _steps(overview):
    """[(step, ms)] of the Overview's step-time graph, and the input share of step time."""
    for table in overview:
        if isinstance(table, dict) and any(c["id"] == "stepnum" for c in table.get("cols", [])):
            columns = [c["id"] for c in table["cols"]]
            rows = [dict(zip(columns, (cell.get("v") for cell in row["c"])))
                    for row in table["rows"]]
            steps = [(row["stepnum"], float(row["stepTimeMs"])) for row in rows]
            total = sum(ms for _, ms in steps)
            waiting = sum(float(row.get("infeedTimeMs") or 0) for row in rows)
            return steps, (100.0 * waiting / total if total else 0.0)
    return [], 0.0


def owner_of(op_name):
    """What a TensorFlow op name belongs to: a layer (the scope under the model's),
    "loss: NAME", "metrics", the optimizer's name, "(gradient)" appended for the backward
    pass, or "loop" (the ops around the steps: fastcustom's loop, Keras's step)."""
    scopes = [s for s in op_name.split("/")[:-1] if s and s not in _LOOP_SCOPES
              and not s.startswith(("_", "body_", "while_"))]
    gradient = bool(scopes) and scopes[0] == "gradient_tape"
    scopes = scopes[1:] if gradient else scopes
    if not scopes:
        owner = "loop"
    elif scopes[0] == "compile_loss":
        owner = "loss: " + (scopes[1] if len(scopes) > 1 else "compiled")
    elif scopes[0] == "compile_metrics" or "metric" in scopes[0]:
        owner = "metrics"
    elif len(scopes) > 1:
        owner = scopes[1]
    else:   # one scope: an optimizer's ("nadam"), or an op's own ("Add_2": Keras's step)
        owner = "loop" if scopes[0][:1].isupper() else scopes[0]
    return f"{owner} (gradient)" if gradient and owner != "loop" else owner


def _hlo_owners(trace):
    """{(module, instruction): [TensorFlow op names it computes]} from the HLO protos the
    trace holds (empty when it holds none)."""
    try:
        from tensorflow.compiler.xla.service import hlo_pb2
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError:   # a TensorFlow without these protos: no attribution
        return {}
    space = xplane_pb2.XSpace()
    with open(trace, "rb") as file:
        space.ParseFromString(file.read())
    names = {}
    for plane in space.planes:
        if plane.name != "/host:metadata":
            continue
        for metadata in plane.event_metadata.values():
            for stat in metadata.stats:
                if not stat.bytes_value:
                    continue
                proto = hlo_pb2.HloProto()
                proto.ParseFromString(stat.bytes_value)
                computations = {c.id: c for c in proto.hlo_module.computations}
                for computation in proto.hlo_module.computations:
                    for instruction in computation.instructions:
                        if instruction.opcode in _CONTAINERS:
                            continue
                        inner = [i.metadata.op_name for cid in instruction.called_computation_ids
                                 for i in computations[cid].instructions if i.metadata.op_name]
                        module = re.sub(r"\(\d+\)$", "", metadata.name)   # "(program id)"
                        names[(module, instruction.name)] = inner or \
                            ([instruction.metadata.op_name] if instruction.metadata.op_name else [])
    return names


# TensorFlow ops whose time is that of what they run (XLA's launch, a function call, a
# loop): left out of the op time, which counts what they run.
_TF_CONTAINERS = ("XlaLaunch", "_XlaRun", "_XlaCompile", "StatefulPartitionedCall",
                  "PartitionedCall", "While", "StatelessWhile", "If", "StatelessIf")


def _framework_ops(trace):
    """Rows of xprof's framework_op_stats (TensorFlow ops by self time), as dicts."""
    tables = tool_data(trace, "framework_op_stats")
    table = tables[-1] if isinstance(tables, list) else tables
    columns = [column["id"] for column in table["cols"]]
    return [dict(zip(columns, (cell.get("v") if cell else None for cell in row["c"])))
            for row in table["rows"]]


def summarize(path, top=10):
    """The `TraceSummary` of a trace file (or of the newest trace under a log folder)."""
    trace = newest_trace(path)
    steps, input_percent = _steps(tool_data(trace, "overview_page"))
    events = [e for e in tool_data(trace, "trace_viewer")["traceEvents"] if e.get("ph") == "X"]
    hlo = _hlo_owners(trace)
    per_op = collections.defaultdict(lambda: [0, 0.0, "loop", False])

    def add(key, count, us, owner, huber):
        entry = per_op[key]
        entry[0] += count
        entry[1] += us
        entry[2], entry[3] = owner, entry[3] or huber

    for event in events:   # XLA ops, and custom ops (framework_op_stats leaves those out)
        args, duration = event.get("args", {}), float(event.get("dur", 0.0))
        if "hlo_op" in args and "hlo_module" in args:
            if args["hlo_op"].split(".")[0] in _CONTAINERS:
                continue   # a loop's (a branch's, a call's) time is its body's ops
            names = hlo.get((args["hlo_module"], args["hlo_op"]), [])
            owners = collections.Counter(owner_of(n) for n in names)
            add(args["hlo_op"], 1, duration, owners.most_common(1)[0][0] if owners else "loop",
                any(_HUBER.search(n) for n in names))
        elif ">" in event["name"].rpartition(":")[2]:    # "name:Namespace>Type"
            name, _, op_type = event["name"].rpartition(":")
            add(f"{op_type} ({name})", 1, duration, owner_of(name), True)
    input_us = 0.0
    for row in _framework_ops(trace):
        op_type, name = row["type"] or "", row["operation"] or ""
        if op_type in ("IDLE", *_TF_CONTAINERS) or op_type.startswith("__inference") \
                or ">" in op_type:
            continue
        us = float(row["total_self_time"] or 0.0)
        if op_type.startswith(("Iterator", "Dataset")) or name.startswith("Iterator::"):
            input_us += us
            add(f"{op_type} {name}"[:80], int(row["occurrences"] or 0), us, "input", False)
            continue
        add(f"{op_type} ({name})", int(row["occurrences"] or 0), us, owner_of(name),
            bool(_HUBER.search(name)))
    op_us = sum(entry[1] for entry in per_op.values())
    step_us = 1000 * sum(ms for _, ms in steps)
    if not input_percent and step_us:
        input_percent = min(100.0, 100.0 * input_us / step_us)
    by_owner = collections.Counter()
    for count, us, owner, _ in per_op.values():
        by_owner[owner] += us
    huber_ops = sorted(((op, c, us) for op, (c, us, _, h) in per_op.items() if h),
                       key=lambda row: -row[2])
    times = [float(e["ts"]) for e in events] + [float(e["ts"]) + float(e.get("dur", 0))
                                               for e in events]
    return TraceSummary(
        trace=trace, steps=steps, input_percent=input_percent,
        wall_ms=(max(times) - min(times)) / 1000 if times else 0.0,
        owners=[(owner, us, us / op_us if op_us else 0.0) for owner, us in by_owner.most_common()],
        ops=sorted(((op, owner, c, us) for op, (c, us, owner, _) in per_op.items()),
                   key=lambda row: -row[3])[:top],
        huber_us=sum(us for _, _, us in huber_ops), huber_ops=huber_ops[:top], op_us=op_us)


def format_summary(summary):
    """The summary as plain text: steps first, then where the time went."""
    lines = [f"Trace: {summary.trace}"]
    if summary.step_ms:
        mean, low, high = summary.step_ms
        lines.append(f"Steps: {len(summary.steps)} ({summary.steps[0][0]} .. "
                     f"{summary.steps[-1][0]}), {mean:.3f} ms per step (min {low:.3f}, "
                     f"max {high:.3f}); input {summary.input_percent:.1f}% of step time")
    else:
        lines.append("Steps: none found (no step markers in this trace: "
                     "fastcustom.callbacks.StepMarkers adds them to a plain model.fit)")
    lines.append(f"Wall time of the capture: {summary.wall_ms:.1f} ms; op time "
                 f"{summary.op_us / 1000:.1f} ms")
    share = summary.huber_us / summary.op_us if summary.op_us else 0.0
    lines += ["", f"The Huber kernel: {summary.huber_us:.1f} us, {share:.1%} of op time"]
    lines += [f"  {us:10.1f} us  {count:5d} x  {op}" for op, count, us in summary.huber_ops] \
        or ["  (no Huber op in this trace)"]
    lines += ["", "Op time by what it belongs to:"]
    lines += [f"  {us:10.1f} us  {part:6.1%}  {owner}" for owner, us, part in summary.owners]
    lines += ["", "Top ops:"]
    lines += [f"  {us:10.1f} us  {count:5d} x  {op:40s} [{owner}]"
              for op, owner, count, us in summary.ops] or ["  (none)"]
    return "\n".join(lines)
