"""Several workers on one machine: 1 worker with 2 threads against 2 workers with 1 thread.

    pytest bench/test_bench_multi_worker.py --benchmark-json=bench/out/multi_worker.json

The wide MLP of bench/multi_worker_step.py (784 -> 256 -> 256 -> 10, 269,322
parameters, global batch 256) trained with `fastcustom.fit`: on one process with
two intra-op threads (XLA, and a plain graph as the multi-worker loop runs), and
as two `fastcustom launch` workers with one thread each on loopback
(MultiWorkerMirroredStrategy, gRPC collectives). Each case is one job, timed
whole by pytest-benchmark (start-up and compilation included); its `extra_info`
(`fastcustom.bench.cases.training_info`, task "wide MLP") holds what the workers
measured: steps/s over the epochs after a warm-up epoch (of the slowest worker)
and, for two workers, `all_reduce_seconds` (one all-reduce of the gradient's size,
timed alone) and its share of a step. bench/RESULTS.md turns the all-reduce's
bytes into the scaling limit on real networks.
"""

import json
import os
import subprocess
import sys

import pytest

from fastcustom.bench.cases import training_info

HERE = os.path.dirname(os.path.abspath(__file__))
STEP = [sys.executable, os.path.join(HERE, "multi_worker_step.py")]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_job(command):
    """The job's JSON lines (one per worker), from its output."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [json.loads(line[line.index("{"):]) for line in result.stdout.splitlines()
            if "{" in line]


CASES = {
    "1 worker x 2 threads, xla": STEP + ["--threads", "2"],
    "1 worker x 2 threads, graph": STEP + ["--threads", "2", "--no-jit"],
    "2 workers x 1 thread": [sys.executable, "-m", "fastcustom", "launch", "--workers", "2",
                             "--", *STEP, "--threads", "1"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_multi_worker_steps(benchmark, case):
    reports = benchmark.pedantic(run_job, args=(CASES[case],), rounds=1, iterations=1)
    assert len(reports) == (2 if "2 workers" in case else 1)
    slowest = min(reports, key=lambda r: r["steps_per_second"])   # the job runs at its pace
    steps = slowest["steps_per_second"]
    info = {"parameters": reports[0]["parameters"], "compiled_with": reports[0]["compiled_with"]}
    if reports[0]["all_reduce_seconds"] is not None:
        seconds = max(r["all_reduce_seconds"] for r in reports)
        info.update(all_reduce_seconds=seconds, all_reduce_share_of_step=seconds * steps,
                    all_reduce_bytes=4 * reports[0]["parameters"])
    benchmark.group = "training steps/s | wide MLP, batch 256"
    benchmark.extra_info.update(training_info(
        "wide MLP", f"fastcustom.fit, {case}", steps_per_round=slowest["steps_per_epoch"],
        round_seconds=slowest["epoch_seconds"], **info))   # the headline's wide MLP row is
    # test_bench_training.py's, against JAX in the same process
    print(case, json.dumps(info))
