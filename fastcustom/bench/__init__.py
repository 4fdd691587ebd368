"""Benchmark report: the schema each row of bench/ stores, and the report built from it.

The suites in bench/ run under pytest-benchmark and put what the report needs into
each row's `extra_info` through the builders of `cases` (`case_info`, `ceiling_info`,
`interleaved_info`, `training_info`, `fresh_process_info`); then

    python -m fastcustom.bench report bench/out/results.json --out bench/out

prints the Markdown report (the answer first: fastcustom against each peer per task)
and draws summary.png and by_size.png. The report is a pure function of that JSON.
"""

from fastcustom.bench.cases import case_info, ceiling_info

__all__ = ["case_info", "ceiling_info"]
