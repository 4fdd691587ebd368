"""The report's Markdown: ceilings, then one table per kernel with medians, speed-ups and roofs."""

from fastcustom.bench.cases import KERNELS, ROOFS


def format_time(seconds):
    """A duration in 3 significant digits and a readable unit: 12.3 µs, 4.56 ms, 1.23 s."""
    for scale, unit in ((1e-6, "µs"), (1e-3, "ms"), (1.0, "s")):
        text = f"{seconds / scale:.3g}"
        if float(text) < 1000 or unit == "s":
            return f"{text} {unit}"


def format_throughput(case):
    """Work per second in GB/s or GFLOP/s."""
    return f"{case.throughput / 1e9:.3g} {ROOFS[case.unit][1]}"


def _machine_line(datetime, machine):
    cpu = machine.get("cpu", {}).get("brand_raw", "unknown CPU")
    cores = machine.get("cpu", {}).get("count", "?")
    python = machine.get("python_version", "?")
    gpu = f" and {machine['gpu']}" if machine.get("gpu") else ""
    return f"Run {datetime or '?'} on {cpu} ({cores} cores){gpu}, Python {python}."


def _machine_lines(results):
    sources = results.sources or ((results.datetime, results.machine),)
    return [_machine_line(datetime, machine) for datetime, machine in sources]


def _ceiling_table(results):
    lines = ["| roof | device | shape | implementation | median | throughput |",
             "| --- | --- | --- | --- | --- | --- |"]
    for case in sorted(results.ceiling_cases, key=lambda c: (c.unit, c.device,
                                                             c.implementation)):
        best = results.ceiling(case.unit, case.device) is case
        lines.append(f"| {ROOFS[case.unit][0]} | {case.device} | {case.shape} | "
                     f"{case.implementation} | {format_time(case.median)} | "
                     f"{'**' if best else ''}{format_throughput(case)}{'**' if best else ''} |")
    return lines


def _kernel_table(results, kernel):
    lines = ["| size | implementation | median | speed-up vs baseline | throughput "
             "| of ceiling |", "| --- | --- | --- | --- | --- | --- |"]
    previous = None
    for case in (c for c in results.cases if c.kernel == kernel):
        where = (case.size, case.shape, case.device)
        label = "" if where == previous else (
            f"{case.size} {case.shape}" + ("" if case.device == "cpu" else f" ({case.device})"))
        previous = where
        base = results.baseline(case)
        speedup = f"{base.median / case.median:.2f}x" if base else "–"
        roof = results.ceiling(case.unit, case.device)
        share = f"{case.throughput / roof.throughput:.1%}" if roof else "–"
        lines.append(f"| {label} | {case.implementation} | {format_time(case.median)} | "
                     f"{speedup} | {format_throughput(case)} | {share} |")
    return lines


def markdown(results):
    """The whole report as Markdown text."""
    out = ["# Benchmark report", "", *_machine_lines(results), "",
           "Medians from pytest-benchmark (CPU suites) or from CUDA events "
           "(bench/gpu/harness.py, rows on the GPU named). Speed-up: the baseline's median "
           "(the notes' code, eager) over this one's. Throughput: bytes moved (Huber: both "
           "inputs read, plus what the kernel writes) or FLOPs done (MyDense) per second; "
           "*of ceiling*: that throughput over the roof measured in the same run on the same "
           "device (bold below): a memory-bound read of both inputs on all cores (NumPy "
           "`max`, one thread per core), a device-to-device copy on a GPU, or plain "
           "`tf.matmul`.", "", "## Ceilings", ""]
    out += _ceiling_table(results) if results.ceiling_cases else ["No ceiling cases ran."]
    for kernel in KERNELS:
        if any(c.kernel == kernel for c in results.cases):
            out += ["", f"## {kernel}", ""] + _kernel_table(results, kernel)
    if results.others:
        out += ["", "## Other benchmarks", "", "| benchmark | median |", "| --- | --- |"]
        out += [f"| {name} | {format_time(median)} |" for name, median in results.others]
    return "\n".join(out) + "\n"
