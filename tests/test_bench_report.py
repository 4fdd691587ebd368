"""The benchmark report, on the JSON of a real (tiny) pytest-benchmark run of bench/.

One subprocess runs a few small cases of the real suites (3 rounds each:
FASTCUSTOM_BENCH_QUICK=1), both ceilings and one foreign benchmark; the tests
then check the report built from that JSON, alone and together with the GPU
harness's JSON (bench/gpu/harness.py --json; here from synthetic timings, as no
GPU is needed: tests/test_cuda_core_emulated.py writes one from a real harness
run on the CPU emulation).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed")

from fastcustom.bench import __main__ as bench_cli  # noqa: E402
from fastcustom.bench import case_info, results, table  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "gpu"))
import harness  # noqa: E402  (NumPy only)

GPU = "NVIDIA H200"
SELECTION = ("(cpu and small and (notes-eager or tf.function-XLA or numpy)) "
             "or test_read_bandwidth or test_matmul_peak or test_other")


@pytest.fixture(scope="module")
def result_json(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    other = folder / "test_other.py"
    other.write_text("def test_other(benchmark):\n    benchmark(sum, range(100))\n")
    out = folder / "results.json"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--benchmark-min-rounds=3", f"--benchmark-json={out}", "-k", SELECTION,
               str(REPO / "bench" / "test_bench_huber.py"),
               str(REPO / "bench" / "test_bench_dense.py"), str(other)]
    env = {**os.environ, "FASTCUSTOM_BENCH_QUICK": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_the_run_stores_what_the_report_needs(result_json):
    stored = json.loads(result_json.read_text())["benchmarks"]
    ours = [b for b in stored if "kernel" in b["extra_info"]]
    assert len(ours) >= 10
    for bench in ours:
        assert set(bench["extra_info"]) >= {"kernel", "size", "implementation", "device",
                                            "work", "unit"}
        assert bench["extra_info"]["work"] > 0


def test_cases_ceilings_and_others_are_read(result_json):
    run = results.load(result_json)
    assert {c.kernel for c in run.cases} == {"Huber forward", "Huber forward + gradient",
                                             "HuberMetric update", "MyDense forward",
                                             "MyDense forward + gradient"}
    assert {c.implementation for c in run.cases} >= {"notes (eager)", "tf.function + XLA",
                                                     "numpy float64"}
    assert run.ceiling("B", "cpu").implementation.startswith("numpy max (")
    assert run.ceiling("FLOP", "cpu").work == 2 * 8192 * 1024 * 1024
    assert run.ceiling("B", "gpu") is None
    assert [name.rpartition("::")[2] for name, _ in run.others] == ["test_other"]


def test_table_divides_the_stored_medians(result_json):
    run = results.load(result_json)
    text = table.markdown(run)
    case = next(c for c in run.cases if c.kernel == "Huber forward"
                and c.implementation == "tf.function + XLA")
    base = run.baseline(case)
    roof = run.ceiling("B", "cpu")
    row = next(line for line in text.splitlines() if "| tf.function + XLA |" in line)
    assert f"| {base.median / case.median:.2f}x |" in row
    assert f"| {case.throughput / roof.throughput:.1%} |" in row
    assert f"| {table.format_time(case.median)} |" in row
    for heading in ("## Ceilings", "## Huber forward", "## HuberMetric update",
                    "## MyDense forward + gradient", "## Other benchmarks"):
        assert heading in text
    baseline_rows = [line for line in text.splitlines() if "| notes (eager) |" in line]
    assert baseline_rows and all("| 1.00x |" in line for line in baseline_rows)


def test_report_command_prints_and_writes_table_and_plot(result_json, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    assert bench_cli.main(["report", str(result_json), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    written = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert printed == written == table.markdown(results.load(result_json))
    png = (tmp_path / "out" / "throughput.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_case_info_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown"):
        case_info("huber", "small", "[1]", "x", "cpu", work=1, unit="B", elements=1)


@pytest.fixture(scope="module")
def gpu_json(tmp_path_factory):
    """The harness's JSON for synthetic timings: 2^28 float32 elements as [2^24, 16], every
    kernel at 1 ms or 2 ms, a 1 GiB copy at 4000 GB/s (read + write)."""
    shape = "[16777216,16]"
    table = [(kernel, "float32", shape, 2.0 if kernel == "grad" else 1.0, 0.0, 0.0)
             for kernel in harness.BENCH_KERNELS]
    path = tmp_path_factory.mktemp("gpu") / "gpu_results.json"
    path.write_text(json.dumps(harness.benchmark_json(GPU, 4000.0, table, reps=30,
                                                      copy_bytes=1 << 30)))
    return path


def test_the_gpu_harness_rows_read_as_cases_of_its_device(gpu_json):
    run = results.load(gpu_json)
    assert {c.device for c in run.cases} == {GPU} and run.others == []
    by_name = {(c.kernel, c.implementation): c for c in run.cases}
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
    roof = run.ceiling("B", GPU)
    assert roof.implementation == "cudaMemcpyAsync device-to-device copy"
    assert roof.work == 2 << 30 and roof.throughput == pytest.approx(4000e9)
    assert run.machine["gpu"] == GPU


def test_one_report_covers_the_cpu_suites_and_the_gpu_harness(result_json, gpu_json, tmp_path,
                                                              capsys):
    run = results.load(result_json, gpu_json)
    assert {c.device for c in run.cases} == {"cpu", GPU}
    assert run.ceiling("B", "cpu").implementation.startswith("numpy max (")
    assert run.ceiling("B", GPU).device == GPU
    text = table.markdown(run)
    assert len(run.sources) == 2 and f"and {GPU}, Python" in text
    # The GPU rows sit in the kernel tables the CPU rows fill, after them, judged against
    # the copy: 2^29 float32 inputs read and 2^24 written (2.21 GB) in 1 ms, 55.4% of 4 TB/s.
    forward = text.split("## Huber forward\n")[1].split("\n## ")[0]
    rows = forward.strip().splitlines()
    gpu_row = next(i for i, line in enumerate(rows) if f"({GPU})" in line)
    assert "| notes (eager) |" in rows[2]
    assert all("CUDA core" not in line for line in rows[:gpu_row])
    assert rows[gpu_row] == (f"| large [16777216,16] ({GPU}) | CUDA core float32 | 1 ms | – "
                             f"| 2.21e+03 GB/s | 55.4% |")
    assert "## Huber gradient" in text
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    assert bench_cli.main(["report", str(result_json), str(gpu_json),
                           "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == text
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
