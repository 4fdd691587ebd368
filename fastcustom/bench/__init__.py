"""Benchmark report: the schema each case of bench/ stores, and the report built from it.

The suites in bench/ run under pytest-benchmark and put what the report needs
(kernel, size, implementation, device, bytes or FLOPs per call) into each
case's `extra_info` through `case_info` / `ceiling_info`; then

    python -m fastcustom.bench report bench/out/results.json --out bench/out

prints a Markdown table of medians and draws the throughput plot. The report is
a pure function of that JSON.
"""

from fastcustom.bench.cases import case_info, ceiling_info

__all__ = ["case_info", "ceiling_info"]
