"""Reads pytest-benchmark's JSON into the report's rows (the schema is `cases`), and answers
the report's questions: the roof of a kernel, the best row of a peer, a row's speed-ups.

Several files make one run: the CPU suites' `--benchmark-json` and the GPU
harness's `--json` (bench/gpu/harness.py, same shape: `cases.harness_json`) give one
report.
"""

import dataclasses
import json
from dataclasses import dataclass, field

from fastcustom.bench.cases import (FASTCUSTOM, IMPLEMENTATIONS, KERNEL_ROOFS, KERNELS,
                                    PEERS, ROOFS, SIZES, TRAINING_TASKS)

# A row whose IQR is above this share of its median is flagged as noisy.
NOISE_THRESHOLD = 0.20
# A kernel row below this share of its roof is bound by per-call overhead (Python,
# dispatch, launch), not by the machine: the report gives its time per call, not a rate.
OVERHEAD_BOUND_SHARE = 0.01


@dataclass(frozen=True)
class Timing:
    """pytest-benchmark's statistics of a row, in seconds (a round's time per call).
    Rows written outside pytest (bench/gpu/harness.py) have only `median` and `rounds`."""

    median: float
    rounds: int
    q1: float = None
    q3: float = None
    min: float = None
    max: float = None

    @classmethod
    def of(cls, stats):
        return cls(median=stats["median"], rounds=int(stats.get("rounds", 1)),
                   q1=stats.get("q1"), q3=stats.get("q3"), min=stats.get("min"),
                   max=stats.get("max"))

    @property
    def iqr(self):
        return None if self.q1 is None else self.q3 - self.q1

    @property
    def noise(self):
        """The IQR as a share of the median, or None when not known."""
        return None if self.iqr is None or not self.median else self.iqr / self.median

    @property
    def noisy(self):
        return self.noise is not None and self.noise > NOISE_THRESHOLD

    @property
    def best(self):
        """The fastest round (the median when rounds are not known)."""
        return self.median if self.min is None else self.min


@dataclass(frozen=True)
class Case:
    """A kernel row or a ceiling row: its `case_info` / `ceiling_info` fields and timing."""

    kernel: str
    size: str
    shape: str
    implementation: str
    device: str
    unit: str
    work: int
    elements: int
    baseline: bool
    ceiling: bool
    timing: Timing
    roof: str
    bytes_read: int = None
    bytes_written: int = None
    page_faults: float = None   # minor page faults per call, where measured
    # A roof's fastest round over all its measurements in the run (its own rounds and
    # the interleaved loops that timed it too), and how many rounds that was.
    best_seconds: float = None
    measured_rounds: int = None

    @property
    def median(self):
        return self.timing.median

    @property
    def throughput(self):
        """Work per second at the median: bytes/s or FLOP/s."""
        return self.work / self.timing.median

    @property
    def best_throughput(self):
        """Work per second in the fastest round (of every measurement, for a roof): what a
        roof is taken as."""
        return self.work / (self.best_seconds or self.timing.best)

    def sort_key(self):
        order = {name: i for i, name in enumerate(IMPLEMENTATIONS)}
        return (KERNELS.index(self.kernel) if self.kernel in KERNELS else len(KERNELS),
                self.device != "cpu", self.device, SIZES.index(self.size), self.shape,
                order.get(self.implementation, len(order)), self.implementation)


@dataclass(frozen=True)
class Interleaved:
    """An interleaved row (`cases.interleaved_info`): per-round speed-ups over each peer."""

    task: str
    size: str
    shape: str
    device: str
    work: int
    unit: str
    peers: dict
    seconds: dict
    speedups: dict
    roof_share: dict
    roof: str
    missing: dict
    targets: dict
    fastcustom: str = FASTCUSTOM
    bytes_read: int = None
    bytes_written: int = None
    page_faults: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingRow:
    """A training row (`cases.training_info`)."""

    task: str
    implementation: str
    role: str
    steps_per_second: float
    steps_per_second_iqr: tuple
    rounds: int
    steps_per_cpu_second: float
    targets: dict
    info: dict

    @property
    def noise(self):
        low, high = self.steps_per_second_iqr
        return (high - low) / self.steps_per_second if self.steps_per_second else None

    @property
    def noisy(self):
        return self.noise is not None and self.noise > NOISE_THRESHOLD


@dataclass(frozen=True)
class FreshProcess:
    """A fresh-process row (`cases.fresh_process_info`): seconds per way."""

    task: str
    label: str
    ways: dict
    info: dict


@dataclass(frozen=True)
class Other:
    """A benchmark without the report's schema: its name, timing and extra_info."""

    name: str
    timing: Timing
    info: dict


@dataclass(frozen=True)
class Speedup:
    """How many times faster a row is than another: `ratio`, and `low`-`high` (the
    interleaved rounds' IQR, or the two rows' IQRs combined), `interleaved` or not."""

    ratio: float
    low: float = None
    high: float = None
    interleaved: bool = False
    against: str = ""

    @property
    def noisy(self):
        return (self.low is not None and self.ratio > 0
                and (self.high - self.low) / self.ratio > NOISE_THRESHOLD)


@dataclass(frozen=True)
class Results:
    """A run: its rows by kind, the first file's machine, commit and date, and (datetime,
    machine_info) per file in `sources`."""

    cases: list
    ceiling_cases: list
    interleaved: list
    training: list
    fresh: list
    others: list
    machine: dict
    datetime: str
    commit: dict = field(default_factory=dict)
    sources: tuple = ()

    # --- roofs ----------------------------------------------------------------------
    def ceiling(self, roof, device):
        """The best measurement of roof kind `roof` ("read", "read+write", "matmul"; or of
        any roof of a unit, "B" or "FLOP") on `device`: the ceiling case whose fastest
        round did the most work per second; None when the run has none."""
        found = [c for c in self.ceiling_cases if roof in (c.roof, c.unit) and c.device == device]
        return max(found, key=lambda c: c.best_throughput, default=None)

    def roof_for(self, kernel, device):
        """The roof a kernel is judged against on `device`: its own kind, else the best
        roof of the same unit there (a GPU has only its copy)."""
        kind = KERNEL_ROOFS.get(kernel)
        if kind is None:
            return None
        own = self.ceiling(kind, device)
        if own is not None:
            return own
        same_unit = [self.ceiling(k, device) for k, (_, unit) in ROOFS.items()
                     if unit == ROOFS[kind][1]]
        return max((c for c in same_unit if c), key=lambda c: c.best_throughput, default=None)

    def share_of_roof(self, case):
        """The median throughput of `case` over its roof's best, or None."""
        roof = self.roof_for(case.kernel, case.device)
        return None if roof is None else case.throughput / roof.best_throughput

    # --- kernels ----------------------------------------------------------------------
    def baseline(self, case):
        """The baseline (notes') case at the same kernel, size and device, or None."""
        return next((c for c in self.cases if c.baseline and (c.kernel, c.size, c.device)
                     == (case.kernel, case.size, case.device)), None)

    def interleaved_row(self, task, size=None, device="cpu"):
        """The interleaved row of `task` (at `size`, on `device`), or None."""
        return next((r for r in self.interleaved if r.task == task and r.device == device
                     and (size is None or r.size == size)), None)

    def kernel_case(self, kernel, size, implementation, device="cpu"):
        return next((c for c in self.cases if (c.kernel, c.size, c.implementation, c.device)
                     == (kernel, size, implementation, device)), None)

    # --- training -----------------------------------------------------------------------
    def training_rows(self, task):
        return [r for r in self.training if r.task == task]

    def training_reference(self, task, reference):
        """The row `reference` names in `task`: the fastest row of that role, or the row of
        that implementation; None when the run has none."""
        rows = self.training_rows(task)
        if reference == FASTCUSTOM or reference in PEERS:
            return max((r for r in rows if r.role == reference),
                       key=lambda r: r.steps_per_second, default=None)
        return next((r for r in rows if r.implementation == reference), None)

    def training_speedup(self, row, reference):
        """`row`'s speed-up over the `reference` row of its task: for fastcustom's row, the
        interleaved rounds' where the run timed that peer interleaved with it; else the ratio
        of steps/s over the fastest row of that role (or the row so named), its range from
        both rows' IQRs; None when there is no such row."""
        interleaved = self.interleaved_row(row.task)
        if (interleaved is not None and reference in interleaved.speedups
                and row.implementation == interleaved.fastcustom):
            s = interleaved.speedups[reference]
            return Speedup(s["median"], s["q1"], s["q3"], True, interleaved.peers[reference])
        other = self.training_reference(row.task, reference)
        if other is None or other is row:
            return None
        (low, high), (other_low, other_high) = row.steps_per_second_iqr, other.steps_per_second_iqr
        return Speedup(row.steps_per_second / other.steps_per_second, low / other_high,
                       high / other_low, False, other.implementation)

    def training_tasks(self):
        """The training tasks of the run: `TRAINING_TASKS` first (present or not), then any
        other task a training or interleaved training row names."""
        named = [r.task for r in self.training] + [r.task for r in self.interleaved
                                                   if r.task not in KERNELS]
        return list(dict.fromkeys([*TRAINING_TASKS, *named]))

    def training_headline(self, task):
        """fastcustom's row of a training task and its speed-ups: (implementation, steps/s,
        {role: Speedup}); from the interleaved row alone when the run has no training row
        of role fastcustom (a quick run); None when it has neither."""
        ours = self.training_reference(task, FASTCUSTOM)
        if ours is not None:
            found = {role: self.training_speedup(ours, role) for role in PEERS}
            return (ours.implementation, ours.steps_per_second,
                    {role: s for role, s in found.items() if s is not None})
        row = self.interleaved_row(task)
        if row is None or row.fastcustom not in row.seconds:
            return None
        return (row.fastcustom, row.work / row.seconds[row.fastcustom]["median"],
                {role: Speedup(s["median"], s["q1"], s["q3"], True, row.peers[role])
                 for role, s in row.speedups.items()})

    def fresh_rows(self, task):
        return [r for r in self.fresh if r.task == task]


def _timing(bench):
    return Timing.of(bench.get("stats", {"median": float("nan"), "rounds": 0}))


def _case(bench, info):
    ceiling = info.get("kind") == "ceiling" or (info.get("kind") is None and info["ceiling"])
    roof = info.get("roof") or (("matmul" if info["unit"] == "FLOP" else "read+write") if ceiling
                                else KERNEL_ROOFS.get(info["kernel"]))
    return Case(kernel=info["kernel"], size=info["size"], shape=info["shape"],
                implementation=info["implementation"], device=info["device"],
                unit=info["unit"], work=info["work"], elements=info.get("elements", 0),
                baseline=info.get("baseline", False), ceiling=ceiling, timing=_timing(bench),
                roof=roof, bytes_read=info.get("bytes_read"),
                bytes_written=info.get("bytes_written"),
                page_faults=info.get("page_faults_per_call"))


def _interleaved(info):
    return Interleaved(task=info["task"], size=info.get("size"), shape=info.get("shape", ""),
                       device=info.get("device", "cpu"), work=info["work"], unit=info["unit"],
                       peers=info["peers"], seconds=info.get("seconds", {}),
                       speedups=info["speedups"], roof_share=info.get("roof_share"),
                       roof=info.get("roof"), missing=info.get("missing", {}),
                       targets=info.get("targets", {}),
                       fastcustom=info.get("fastcustom", FASTCUSTOM),
                       bytes_read=info.get("bytes_read"),
                       bytes_written=info.get("bytes_written"),
                       page_faults=info.get("page_faults_per_call", {}))


def _training(info):
    return TrainingRow(task=info["task"], implementation=info["implementation"],
                       role=info.get("role"), steps_per_second=info["steps_per_second"],
                       steps_per_second_iqr=tuple(info["steps_per_second_iqr"]),
                       rounds=info["rounds"], steps_per_cpu_second=info.get("steps_per_cpu_second"),
                       targets=info.get("targets", {}), info=info)


def _fresh(info):
    return FreshProcess(task=info["task"], label=info.get("label", ""), ways=info["ways"],
                        info=info)


def _with_every_measurement(roof, interleaved):
    """`roof` with its best round over its own rounds and those of the interleaved loops
    that timed the same implementation on the same device."""
    timed = [row.seconds[roof.implementation] for row in interleaved
             if row.device == roof.device and roof.implementation in row.seconds]
    best = min([roof.timing.best, *(t["min"] for t in timed)])
    rounds = roof.timing.rounds + sum(t["rounds"] for t in timed)
    return dataclasses.replace(roof, best_seconds=best, measured_rounds=rounds)


def load(*paths):
    """The `Results` of one or more JSON files: pytest-benchmark's (--benchmark-json) or
    bench/gpu/harness.py's (--json), read alike."""
    rows = {"kernel": [], "ceiling": [], "interleaved": [], "training": [],
            "fresh process": [], "other": []}
    sources, commits = [], []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        sources.append((data.get("datetime", ""), data.get("machine_info", {})))
        commits.append(data.get("commit_info", {}))
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            kind = info.get("kind") or ("kernel" if "kernel" in info else "other")
            if kind in ("kernel", "ceiling"):
                case = _case(bench, info)
                rows["ceiling" if case.ceiling else "kernel"].append(case)
            elif kind == "interleaved":
                rows[kind].append(_interleaved(info))
            elif kind == "training":
                rows[kind].append(_training(info))
            elif kind == "fresh process":
                rows[kind].append(_fresh(info))
            else:
                rows["other"].append(Other(bench.get("fullname", bench.get("name", "?")),
                                           _timing(bench), info))
    rows["kernel"].sort(key=Case.sort_key)
    ceilings = [_with_every_measurement(c, rows["interleaved"]) for c in rows["ceiling"]]
    first = sources[0] if sources else ("", {})
    return Results(cases=rows["kernel"], ceiling_cases=ceilings,
                   interleaved=rows["interleaved"], training=rows["training"],
                   fresh=rows["fresh process"], others=rows["other"], machine=first[1],
                   datetime=first[0], commit=commits[0] if commits else {},
                   sources=tuple(sources))
