"""Reads pytest-benchmark's JSON into `Case` rows, and picks each device's measured ceilings.

Several files make one run: the CPU suites' `--benchmark-json` and the GPU
harness's `--json` (bench/gpu/harness.py, same shape: `cases.harness_json`)
give one table and one plot.
"""

import json
from dataclasses import dataclass

from fastcustom.bench.cases import IMPLEMENTATIONS, KERNELS, SIZES


@dataclass(frozen=True)
class Case:
    """One measured case: its `case_info` fields and pytest-benchmark's median (seconds)."""

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
    median: float

    @property
    def throughput(self):
        """Work per second: bytes/s or FLOP/s."""
        return self.work / self.median

    def sort_key(self):
        order = {name: i for i, name in enumerate(IMPLEMENTATIONS)}
        return (KERNELS.index(self.kernel) if self.kernel in KERNELS else len(KERNELS),
                self.device != "cpu", self.device, SIZES.index(self.size), self.shape,
                order.get(self.implementation, len(order)), self.implementation)


@dataclass(frozen=True)
class Results:
    """A run: its cases, its ceiling cases, other benchmarks (name, median) and machine info
    (`machine`, `datetime`: the first file's; `sources`: (datetime, machine_info) per file)."""

    cases: list
    ceiling_cases: list
    others: list
    machine: dict
    datetime: str
    sources: tuple = ()

    def ceiling(self, unit, device):
        """The fastest ceiling case of `unit` on `device`, or None when the run has none."""
        found = [c for c in self.ceiling_cases if c.unit == unit and c.device == device]
        return max(found, key=lambda c: c.throughput, default=None)

    def baseline(self, case):
        """The baseline case at the same kernel, size and device, or None."""
        return next((c for c in self.cases if c.baseline and (c.kernel, c.size, c.device)
                     == (case.kernel, case.size, case.device)), None)


def _case(bench):
    info = bench["extra_info"]
    return Case(kernel=info["kernel"], size=info["size"], shape=info["shape"],
                implementation=info["implementation"], device=info["device"],
                unit=info["unit"], work=info["work"], elements=info["elements"],
                baseline=info["baseline"], ceiling=info["ceiling"],
                median=bench["stats"]["median"])


def load(*paths):
    """The `Results` of one or more JSON files: pytest-benchmark's (--benchmark-json) or
    bench/gpu/harness.py's (--json), read alike."""
    cases, ceilings, others, sources = [], [], [], []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        sources.append((data.get("datetime", ""), data.get("machine_info", {})))
        for bench in data.get("benchmarks", []):
            if "kernel" not in bench.get("extra_info", {}):
                others.append((bench["fullname"], bench["stats"]["median"]))
                continue
            case = _case(bench)
            (ceilings if case.ceiling else cases).append(case)
    cases.sort(key=Case.sort_key)
    first = sources[0] if sources else ("", {})
    return Results(cases=cases, ceiling_cases=ceilings, others=others, machine=first[1],
                   datetime=first[0], sources=tuple(sources))
