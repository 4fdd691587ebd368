"""The benchmark report (`python -m fastcustom.bench report`), on the stored JSON of a real run.

tests/data/bench_run.json is a real `pytest bench/ --benchmark-json=...` run of every suite
(a busy 2-core machine: its numbers are noisy, which the noise flags must show), trimmed to
stay small: per-round data, the CPU's flag list, and kernel rows at the medium size and at
the small size (Huber forward's kept) removed; `TRIM` below is the command. The tests check
what the report computes from it -- tables, ratios, roofs, noise flags, "not in this run" --
never timings. The GPU harness's JSON (bench/gpu/harness.py --json) is made here from
synthetic timings (tests/test_cuda_core_emulated.py writes one from a real harness run on
the CPU emulation). A real run of the suites (seconds of TensorFlow) is behind --long.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from fastcustom.bench import __main__ as bench_cli
from fastcustom.bench import cases, results, table
from fastcustom.bench.cases import case_info, fresh_process_info, training_info

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN = REPO / "tests" / "data" / "bench_run.json"
sys.path.insert(0, str(REPO / "bench" / "gpu"))
import harness  # noqa: E402  (NumPy only)

GPU = "NVIDIA H200"
TRIM = """python - bench/out/results.json tests/data/bench_run.json <<'EOF'
import json, sys
run = json.load(open(sys.argv[1]))
run["machine_info"]["cpu"].pop("flags", None)
def keep(b):
    i = b["extra_info"]
    return i.get("kind") != "kernel" or i["size"] == "large" or (
        i["size"] == "small" and i["kernel"] == "Huber forward")
run["benchmarks"] = [b for b in run["benchmarks"] if keep(b)]
for b in run["benchmarks"]:
    b["stats"].pop("data", None); b.pop("options", None)
json.dump(run, open(sys.argv[2], "w"), indent=1)
EOF"""


@pytest.fixture(scope="module")
def run():
    return results.load(RUN)


@pytest.fixture(scope="module")
def text(run):
    return table.markdown(run)


def section(text, heading):
    """The Markdown under `heading` (a "## " or "### " line), up to the next heading of
    the same or a higher level."""
    level = heading.split(" ")[0]
    body = text.split(f"\n{heading}\n", 1)[1]
    stop = re.search(rf"^#{{1,{len(level)}}} ", body, re.M)
    return body[:stop.start()] if stop else body


def answer_row(text, starts):
    """The row of the "At a glance" table whose first cell starts with `starts`, as cells."""
    rows = [line for line in section(text, "## At a glance").splitlines()
            if line.startswith(f"| {starts}")]
    assert len(rows) == 1, rows
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def detail_row(text, kernel, size, implementation):
    """The cells of `implementation`'s row at `size` in `kernel`'s detail table (the size
    is named on the first row of its group only)."""
    current = None
    for line in section(text, f"## {kernel}").splitlines():
        if not line.startswith("| ") or line.startswith("| size") or line.startswith("| ---"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        current = cells[0].split(" ")[0] if cells[0] else current
        if current == size and cells[1].strip("*") == implementation:
            return cells
    raise AssertionError(f"no {implementation} row at {size} in {kernel}")


PEER_COLUMNS = {role: 1 + i for i, role in enumerate(cases.PEERS)}


def test_the_stored_run_holds_every_kind_of_row(run):
    assert {c.kernel for c in run.cases} >= {"Huber forward", "Huber forward + gradient",
                                             "HuberMetric update", "MyDense forward",
                                             "MyDense forward + gradient"}
    assert {c.roof for c in run.ceiling_cases} == {"read", "read+write", "matmul"}
    assert {(r.task, r.size) for r in run.interleaved if r.task in cases.KERNELS} == {
        (k, s) for k in cases.KERNELS if k != "Huber gradient" for s in cases.SIZES}
    assert {r.task for r in run.training} == {"notes' model", "wide MLP", "softmax MLP"}
    assert [r.task for r in run.fresh] == ["first call"]
    assert run.machine["fastcustom"]["versions"]["keras"]


def test_the_report_starts_with_the_environment_and_the_answer(run, text):
    head = text.split("\n## ")[0]
    versions = run.machine["fastcustom"]["versions"]
    for name, title in (("keras", "Keras"), ("torch", "PyTorch"), ("jax", "JAX"),
                        ("optax", "optax"), ("tensorflow-cpu", "TensorFlow")):
        assert f"{title}" in head and versions[name] in head
    path = run.machine["fastcustom"]["huber_path"]
    assert path["commit"][:10] in head
    assert ("**fused op**" if path["status"]["path"] == "fused-op" else "**XLA**") in head
    load = run.machine["fastcustom"]["load_average"]
    assert f"{load['before'][0]:.2f} before the run, {load['after'][0]:.2f} after" in head
    cores = run.machine["fastcustom"]["threads"]["cpu_count"]
    assert ("**A busy machine**" in head) == (load["before"][0] > cores / 2)
    assert "TensorFlow intra-op" in head and "OMP_WAIT_POLICY=PASSIVE" in head
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[:5] == ["At a glance", "By size", "Training", "Fresh processes", "Roofs"]
    assert headings[5:10] == ["Huber forward", "Huber forward + gradient", "HuberMetric update",
                              "MyDense forward", "MyDense forward + gradient"]
    assert "CUDA" not in text   # a CPU-only run


def test_kernel_speedups_are_the_interleaved_medians_with_their_iqr(run, text):
    for kernel in ("Huber forward", "Huber forward + gradient", "HuberMetric update",
                   "MyDense forward", "MyDense forward + gradient"):
        row = run.interleaved_row(kernel, "large")
        cells = answer_row(text, f"{kernel} (large")
        for role, column in PEER_COLUMNS.items():
            if role not in row.speedups:
                assert cells[column] == "–"
                continue
            s = row.speedups[role]
            assert cells[column].startswith(
                f"{table.format_ratio(s['median'])} ({table._number(s['q1'])}–"
                f"{table._number(s['q3'])})")
            assert ("⚠" in cells[column]) == (s["iqr"] / s["median"] > results.NOISE_THRESHOLD)
        share = row.roof_share
        assert cells[6].startswith(f"{share['median']:.0%} ({share['q1']:.0%}–{share['q3']:.0%})")
    # The stored per-round ratios are the peer's time over fastcustom's: the medians of each
    # implementation's time agree with them to within the rounds' spread.
    row = run.interleaved_row("Huber forward", "large")
    ours, notes = row.seconds["fastcustom"], row.seconds["notes (eager)"]
    ratio = row.speedups["notes"]["median"]
    assert notes["min"] / ours["max"] <= ratio <= notes["max"] / ours["min"]


def test_the_roof_target_of_huber_forward_is_checked(run, text):
    row = run.interleaved_row("Huber forward", "large")
    share = row.roof_share["median"]
    verdict = "met" if share >= 0.85 else "**missed**"
    assert answer_row(text, "Huber forward (large")[7] == \
        f"≥ 85% of the roof: {share:.0%}, {verdict}"


def test_training_speedups_divide_steps_per_second(run, text):
    ours = run.training_reference("notes' model", "fastcustom")
    assert ours.implementation == "fastcustom.fit"
    cells = answer_row(text, "training: the notes' model")
    # Interleaved in the run: Keras and JAX, from the interleaved rounds (no dagger).
    interleaved = run.interleaved_row("notes' model")
    for role in ("keras", "jax"):
        s = interleaved.speedups[role]
        assert cells[PEER_COLUMNS[role]].startswith(f"{table.format_ratio(s['median'])} (")
        assert "†" not in cells[PEER_COLUMNS[role]]
    # The eager loop was timed apart: the ratio of steps/s, marked.
    eager = run.training_reference("notes' model", "notes")
    ratio = ours.steps_per_second / eager.steps_per_second
    low = ours.steps_per_second_iqr[0] / eager.steps_per_second_iqr[1]
    assert cells[PEER_COLUMNS["notes"]].startswith(
        f"{table.format_ratio(ratio)} ({table._number(low)}–")
    assert "†" in cells[PEER_COLUMNS["notes"]]
    # Its targets (stored on the row) against the same ratios.
    for reference, least in ours.targets.items():
        achieved = run.training_speedup(ours, reference).ratio
        verdict = "met" if achieved >= least else "**missed**"
        assert f"{table.format_ratio(achieved)}, {verdict}" in cells[7]


def test_a_run_with_only_the_interleaved_training_row_still_answers(tmp_path):
    data = json.loads(RUN.read_text())
    data["benchmarks"] = [b for b in data["benchmarks"] if not (
        b["extra_info"].get("kind") == "training" and b["extra_info"]["task"] == "notes' model")]
    quick = results.load(_written(data, tmp_path))
    text = table.markdown(quick)
    row = quick.interleaved_row("notes' model")
    steps_per_second = row.work / row.seconds["fastcustom.fit"]["median"]
    cells = answer_row(text, f"training: the notes' model: fastcustom.fit, "
                             f"{table.format_rate(steps_per_second, 'steps')}")
    assert cells[PEER_COLUMNS["jax"]].startswith(
        table.format_ratio(row.speedups["jax"]["median"]))
    assert cells[PEER_COLUMNS["notes"]] == "–" and cells[7] == "–"
    assert "its interleaved row is in" in section(text, "### training: the notes' model")


def test_training_tables_show_steps_per_second_and_cpu_second(run, text):
    notes_model = section(text, "### training: the notes' model")
    for row in run.training_rows("notes' model"):
        line = next(line for line in notes_model.splitlines()
                    if line.startswith(f"| {row.implementation} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == table._number(row.steps_per_second)
        assert cells[4] == str(row.rounds)
        assert cells[5] == table._number(row.steps_per_cpu_second)
        assert ("⚠" in cells[3]) == row.noisy
    wide = section(text, "### training: the wide MLP")
    assert "fastcustom.fit, 1 worker x 2 threads, xla | fastcustom |" in wide
    assert "no peer rows in this run" in answer_row(text, "training: the wide MLP")[7]


def test_first_call_ratios_and_targets(run, text):
    row = run.fresh[0]
    fresh = row.ways["accelerated model.fit"]["seconds"]["median"]
    keras = row.ways["model.fit"]["seconds"]["median"]
    cells = answer_row(text, "first call (trace, compile and one epoch): accelerated model.fit, "
                             f"{table.format_time(fresh)}")
    assert cells[PEER_COLUMNS["keras"]].startswith(table.format_ratio(keras / fresh))
    verdict = "met" if keras / fresh >= 1.0 else "**missed**"
    assert f"≥ 1× Keras: {table.format_ratio(keras / fresh)}, {verdict}" in cells[7]
    first_call = section(text, "### first call")
    assert f"| model.fit | Keras | {keras:.2f} |" in first_call


def test_cold_short_fits_say_not_in_this_run_until_a_row_has_them(run, text, tmp_path):
    assert answer_row(text, "cold short fits")[7] == "not in this run"
    assert section(text, "### cold short fits").strip() == "Not in this run."
    pytest.importorskip("pytest_benchmark", reason="spread() uses pytest-benchmark's Stats")
    seconds = {"accelerated model.fit": [2.0, 2.2, 2.4], "model.fit": [3.0, 3.3, 3.6]}
    info = fresh_process_info("cold short fit", "100 steps", seconds,
                              roles={"accelerated model.fit": "fastcustom", "model.fit": "keras"},
                              targets={"accelerated model.fit": {"keras": 1.0}})
    data = json.loads(RUN.read_text())
    data["benchmarks"].append({"name": "cold", "fullname": "cold", "extra_info": info,
                               "stats": {"median": 1.0, "rounds": 1}})
    with_cold = table.markdown(results.load(_written(data, tmp_path)))
    cells = answer_row(with_cold, "cold short fits (100 steps): accelerated model.fit")
    assert cells[PEER_COLUMNS["keras"]].startswith("1.50× (1.25–1.80) †")
    assert cells[7] == "≥ 1× Keras: 1.50×, met"
    cold = section(with_cold, "### cold short fits")
    assert "| model.fit | Keras | 3.30 | 3.00–3.60 | 3 |" in cold


def test_peak_memory_and_costs_read_as_what_they_measure(tmp_path):
    pytest.importorskip("pytest_benchmark", reason="spread() uses pytest-benchmark's Stats")
    peaks = {"accelerated model.fit": [2170.0, 2171.0, 2172.0],
             "model.fit": [2200.0, 2202.0, 2204.0]}
    memory = fresh_process_info("peak memory", "512 MB of arrays", peaks,
                                roles={"accelerated model.fit": "fastcustom", "model.fit": "keras"},
                                targets={"accelerated model.fit": {"keras": 1 / 1.05}}, unit="MB")
    cost = {"with": "a TensorBoard window", "without": "no callback", "target": 0.97,
            "ratio": cases.spread([0.96, 0.99, 1.0, 1.01, 0.98])}
    data = json.loads(RUN.read_text())
    data["benchmarks"] += [{"name": "memory", "fullname": "memory", "extra_info": memory,
                            "stats": {"median": 1.0, "rounds": 1}},
                           {"name": "cost", "fullname": "cost", "extra_info": {"cost": cost},
                            "stats": {"median": 1.0, "rounds": 9}}]
    text = table.markdown(results.load(_written(data, tmp_path)))
    memory_table = section(text, "### peak memory")
    assert "| way | role | MB | min–max | processes | targets |" in memory_table
    assert "| model.fit | Keras | 2202 | 2200–2204 | 3 |" in memory_table
    assert "| a TensorBoard window | no callback | 0.99× (0.97–1.00) | 5 | ≥ 0.97×: met |" in text


def test_a_stream_timed_against_its_pipeline_shows_its_share_and_target(tmp_path):
    pytest.importorskip("pytest_benchmark", reason="spread() uses pytest-benchmark's Stats")
    ours, plain = "accelerated model.fit", "model.fit"
    stream = cases.interleaved_info(
        "notes' model on tf.data (batched)", None, "batch 32", "cpu", work=645, unit="steps",
        peers={"keras": plain}, fastcustom=ours,
        seconds={ours: cases.spread([0.10, 0.11, 0.12]), plain: cases.spread([0.4, 0.5, 0.6])},
        speedups={"keras": cases.spread([4.0, 4.5, 5.0])},
        roof_share=cases.spread([0.5, 0.55, 0.6]), roof="the pipeline drained",
        targets={"roof": 0.8})
    data = json.loads(RUN.read_text())
    data["benchmarks"].append({"name": "stream", "fullname": "stream", "extra_info": stream,
                               "stats": {"median": 1.0, "rounds": 3}})
    text = table.markdown(results.load(_written(data, tmp_path)))
    cells = answer_row(text, "training: notes' model on tf.data (batched): accelerated")
    assert cells[-2] == table.format_share(stream["roof_share"]) == "55% (51%–59%)"
    assert cells[-1] == "≥ 80% of the roof: 55%, **missed**"


def _written(data, folder):
    path = folder / "edited.json"
    path.write_text(json.dumps(data))
    return path


def _torch_forward_row(data, folder):
    """The large Huber forward torch row of the report of `data`."""
    text = table.markdown(results.load(_written(data, folder)))
    return next(line for line in section(text, "## Huber forward").splitlines()
                if "| torch |" in line and "GB/s" in line)


def test_the_header_says_what_a_reader_must_know_before_the_numbers(tmp_path):
    data = json.loads(RUN.read_text())
    info = data["machine_info"]["fastcustom"]
    info["quick"] = True
    info["huber_path"]["status"] = {"path": "xla", "library": None,
                                    "reason": "op library not built (missing)"}
    text = table.markdown(results.load(_written(data, tmp_path)))
    head = text.split("\n## ")[0]
    assert "**A quick run**" in head
    assert "Huber path: **XLA** (the fused op did not load: op library not built (missing))" in head
    assert "run `pytest bench/`" in head


def test_the_header_names_the_op_librarys_cpu_build(tmp_path):
    data = json.loads(RUN.read_text())
    path = data["machine_info"]["fastcustom"]["huber_path"]
    path["status"] = {"path": "fused-op", "library": "/x/_huber_ops.so"}
    path["build_record"] = {"tensorflow": "2.21.0", "cpu_target": "x86-64-v3",
                            "cpu_kernels": ["avx2", "avx512"]}
    head = table.markdown(results.load(_written(data, tmp_path))).split("\n## ")[0]
    assert ("Huber path: **fused op** (`/x/_huber_ops.so`, built for TensorFlow 2.21.0; "
            "compiled for x86-64-v3, with avx2/avx512 kernels).") in head


def test_a_peer_that_did_not_run_says_why(tmp_path):
    data = json.loads(RUN.read_text())
    row = next(b["extra_info"] for b in data["benchmarks"]
               if b["extra_info"].get("kind") == "interleaved"
               and b["extra_info"]["task"] == "Huber forward"
               and b["extra_info"]["size"] == "large")
    del row["speedups"]["torch"], row["peers"]["torch"]
    row["missing"]["torch"] = "PyTorch is not installed (pip install 'fastcustom[frameworks]')"
    text = table.markdown(results.load(_written(data, tmp_path)))
    assert answer_row(text, "Huber forward (large")[PEER_COLUMNS["torch"]] == "–"
    assert ("Peers that did not run: PyTorch (PyTorch is not installed (pip install "
            "'fastcustom[frameworks]')).") in section(text, "## At a glance")


def test_noisy_rows_are_flagged(tmp_path):
    data = json.loads(RUN.read_text())
    bench = next(b for b in data["benchmarks"] if b["extra_info"].get("kind") == "kernel"
                 and b["extra_info"]["implementation"] == "torch"
                 and b["extra_info"]["kernel"] == "Huber forward"
                 and b["extra_info"]["size"] == "large")
    median = bench["stats"]["median"]
    bench["stats"].update(q1=0.9 * median, q3=1.15 * median)   # IQR 25% of the median
    assert f"| 25% ⚠ | {bench['stats']['rounds']} |" in _torch_forward_row(data, tmp_path)
    bench["stats"].update(q1=0.95 * median, q3=1.05 * median)   # 10%
    row = _torch_forward_row(data, tmp_path)
    assert "| 10% |" in row and "⚠" not in row


def test_overhead_bound_rows_give_their_time_not_a_tiny_rate(run, text):
    forward = section(text, "## Huber forward")
    small = [l for l in forward.splitlines() if "[32, 1]" in l or (l.startswith("|  |")
                                                                    and "overhead" in l)]
    assert small and all("overhead-bound" in l for l in small)
    assert not re.search(r"\de-\d\d GB/s|\| 0\.0% \||\| 0% \|", text)
    roof = run.roof_for("Huber forward", "cpu")
    for case in (c for c in run.cases if c.kernel == "Huber forward" and c.size == "small"):
        assert case.throughput / roof.best_throughput < results.OVERHEAD_BOUND_SHARE


def test_page_faults_per_call_are_shown_and_flagged(run, text):
    cases_ = [c for c in run.cases if c.kernel == "Huber forward + gradient" and c.size == "large"]
    assert all(c.page_faults is not None for c in cases_)
    for case in cases_:
        cells = detail_row(text, case.kernel, case.size, case.implementation)
        assert cells[9] == table.format_faults(case.page_faults)
        assert ("⚠" in cells[9]) == (case.page_faults >= table.PAGE_FAULTS_FLAG)
    assert table.format_faults(16617.4) == "16,617 ⚠" and table.format_faults(2.0) == "2"


def test_roofs_are_the_best_round_of_every_measurement(run, text):
    matmuls = [c for c in run.ceiling_cases if c.roof == "matmul"]
    assert len(matmuls) >= 4
    # Each roof's best round is over its own rounds and the interleaved loops' rounds of it.
    data = json.loads(RUN.read_text())
    fastest = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if info.get("kind") == "ceiling":
            fastest.setdefault(info["implementation"], []).append(bench["stats"]["min"])
        for name, seconds in info.get("seconds", {}).items():
            fastest.setdefault(name, []).append(seconds["min"])
    for roof in run.ceiling_cases:
        assert roof.best_throughput == roof.work / min(fastest[roof.implementation])
    in_loop = {c.implementation for c in matmuls if c.measured_rounds > c.timing.rounds}
    assert in_loop == {"tf.matmul (tf.function)", "numpy matmul (float32)"}
    best = max(matmuls, key=lambda c: c.work / min(fastest[c.implementation]))
    assert run.roof_for("MyDense forward", "cpu") is best
    assert run.roof_for("Huber forward", "cpu").roof == "read"
    assert run.roof_for("Huber forward + gradient", "cpu").roof == "read+write"
    roofs = section(text, "## Roofs")
    bold = re.findall(r"\*\*(.+?)\*\* \|$", roofs, re.M)
    assert len(bold) == 3 and table.format_rate(best.best_throughput, "FLOP") in bold
    case = run.kernel_case("MyDense forward", "large", "fastcustom")
    cells = detail_row(text, "MyDense forward", "large", "fastcustom")
    assert cells[8] == f"{case.throughput / best.best_throughput:.0%}"


def test_bytes_per_call_are_counted_one_way(run, text):
    for kernel, written in (("Huber forward", 0), ("Huber forward + gradient", 1),
                            ("HuberMetric update", 0)):
        large = [c for c in run.cases if c.kernel == kernel and c.size == "large"]
        array = 500000 * 16 * 4
        assert {(c.bytes_read, c.bytes_written) for c in large} == {(2 * array, written * array)}
    rows = section(text, "## Huber forward + gradient").splitlines()
    assert all("| 64 MB read + 32 MB written |" in l for l in rows if "fused ops, two passes" in l)
    read_write = run.ceiling("read+write", "cpu")
    assert (read_write.bytes_read, read_write.bytes_written) == (2 * array, array)


def test_report_command_prints_and_writes_the_report_and_pictures(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    written = bench_cli.report(str(RUN), str(tmp_path))
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "report.md").read_text(encoding="utf-8") == \
        table.markdown(results.load(RUN))
    assert [p.name for p in written] == ["report.md", "summary.png", "by_size.png"]
    for name in ("summary.png", "by_size.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


def test_the_schema_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown kernel 'huber'"):
        case_info("huber", "small", "[1]", "x", "cpu", work=1, unit="B", elements=1)
    with pytest.raises(ValueError, match="measured in FLOP"):
        case_info("MyDense forward", "small", "[1]", "x", "cpu", work=1, unit="B", elements=1)
    with pytest.raises(ValueError, match="not bytes read"):
        case_info("Huber forward", "small", "[1]", "x", "cpu", work=3, unit="B", elements=1,
                  read=2, written=0)
    with pytest.raises(ValueError, match="unknown role 'pytorch'"):
        training_info("notes' model", "x", steps_per_round=1, round_seconds=[1.0], role="pytorch")


def test_spread_is_pytest_benchmarks_statistics():
    stats = pytest.importorskip("pytest_benchmark.stats")
    values = [0.3, 0.1, 0.4, 0.1, 0.5, 0.9, 0.2]
    reference = stats.Stats()
    for value in values:
        reference.update(value)
    assert cases.spread(values) == {name: getattr(reference, name) for name in
                                    ("median", "q1", "q3", "iqr", "min", "max", "rounds")}
    info = training_info("notes' model", "x", steps_per_round=100, round_seconds=values)
    assert info["steps_per_second"] == 100 / reference.median
    assert info["steps_per_second_iqr"] == [100 / reference.q3, 100 / reference.q1]


# --- the GPU harness's JSON, alone and with the CPU run ---------------------------------
@pytest.fixture(scope="module")
def gpu_json(tmp_path_factory):
    """The harness's JSON for synthetic timings: 2^28 float32 elements as [2^24, 16], every
    kernel at 1 ms or 2 ms, a 1 GiB copy at 4000 GB/s (read + write)."""
    shape = "[16777216,16]"
    rows = [(kernel, "float32", shape, 2.0 if kernel == "grad" else 1.0, 0.0, 0.0)
            for kernel in harness.BENCH_KERNELS]
    path = tmp_path_factory.mktemp("gpu") / "gpu_results.json"
    path.write_text(json.dumps(harness.benchmark_json(GPU, 4000.0, rows, reps=30,
                                                      copy_bytes=1 << 30)))
    return path


def test_the_gpu_harness_rows_read_as_cases_of_its_device(gpu_json):
    gpu = results.load(gpu_json)
    assert {c.device for c in gpu.cases} == {GPU} and gpu.others == []
    by_name = {(c.kernel, c.implementation): c for c in gpu.cases}
    assert set(by_name) == {
        ("Huber forward", "CUDA core float32"), ("Huber gradient", "CUDA core float32"),
        ("HuberMetric update", "CUDA core float32"),
        ("HuberMetric update", "CUDA core float32, a weight per row"),
        ("HuberMetric update", "CUDA core float32, a weight per element")}
    n = 1 << 28
    forward = by_name[("Huber forward", "CUDA core float32")]
    # both inputs read, one float32 per row written; 1 ms
    assert (forward.work, forward.elements, forward.median) == (2 * 4 * n + 4 * (n // 16), n, 1e-3)
    assert by_name[("Huber gradient", "CUDA core float32")].median == 2e-3
    roof = gpu.roof_for("Huber forward", GPU)   # the copy: the only roof of the GPU
    assert roof.implementation == "cudaMemcpyAsync device-to-device copy"
    assert roof.roof == "read+write" and roof.best_throughput == pytest.approx(4000e9)
    assert gpu.ceiling("B", GPU) is roof and gpu.ceiling("read", GPU) is None
    assert gpu.machine["gpu"] == GPU


def test_one_report_covers_the_cpu_run_and_the_gpu_harness(gpu_json, tmp_path, capsys):
    both = results.load(RUN, gpu_json)
    assert {c.device for c in both.cases} == {"cpu", GPU}
    assert both.roof_for("Huber forward", "cpu").implementation.startswith("numpy max (")
    text = table.markdown(both)
    assert len(both.sources) == 2 and f"and {GPU}" in text
    # The GPU rows sit in the kernel tables the CPU rows fill, after them, judged against
    # the copy: 2^29 float32 inputs read and 2^24 written (2.21 GB) in 1 ms, 55% of 4 TB/s.
    rows = section(text, "## Huber forward").strip().splitlines()
    gpu_row = next(i for i, line in enumerate(rows) if f"({GPU})" in line)
    assert all("CUDA core" not in line for line in rows[:gpu_row])
    assert rows[gpu_row] == (f"| large [16777216,16] ({GPU}) | CUDA core float32 | 1 ms | – "
                             f"| 30 | – | 2.21 GB | 2,215 GB/s | 55% | – |")
    assert "## Huber gradient" in text and "CUDA events" in text
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    assert bench_cli.main(["report", str(RUN), str(gpu_json), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == text
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the real suites (a run of TensorFlow: --long) ------------------------------------------
@pytest.mark.long
def test_a_real_quick_run_of_the_suites_stores_what_the_report_reads(tmp_path):
    """The Huber suite's interleaved rows at the small size, the notes' eager rows and the
    memory roofs, 3 rounds each (FASTCUSTOM_BENCH_QUICK=1), with bench/pytest.ini's
    settings, from this checkout: the JSON has the schema `results.load` reads."""
    out = tmp_path / "results.json"
    selection = "cpu and small and (interleaved or notes-eager) or test_memory_roof"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", f"--benchmark-json={out}",
                           "-k", selection, "bench/test_bench_huber.py"], cwd=REPO,
                          env={**os.environ, "FASTCUSTOM_BENCH_QUICK": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    quick = results.load(out)
    assert {r.task for r in quick.interleaved} == {"Huber forward", "Huber forward + gradient",
                                                    "HuberMetric update"}
    assert {c.roof for c in quick.ceiling_cases} == {"read", "read+write"}
    assert quick.machine["fastcustom"]["quick"] is True
    assert "**A quick run**" in table.markdown(quick)
