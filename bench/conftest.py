"""What the benchmark suites share: the device parameter, syncing, imports that skip,
`measure` (one implementation timed alone), `interleave` (fastcustom and its peers timed
in turn), and the run's environment in the JSON's `machine_info`.

    pytest bench/ --benchmark-json=bench/out/results.json
    python -m fastcustom.bench report bench/out/results.json --out bench/out

Every case runs once per device ("cpu", and "gpu" where TensorFlow sees one),
is traced/compiled and warmed before timing, and is timed with a fixed number
of rounds per size (`ROUNDS`) so the whole suite fits in a few minutes on two
cores. Each timed call finishes its work: TF on CPU runs synchronously
(checked below), TF on GPU is followed by `sync_devices()`, torch on GPU by
`torch.cuda.synchronize()`, JAX calls `block_until_ready()` itself.
"""

import importlib.metadata
import os
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX beside TF on one GPU
# torch's OpenMP threads spin-wait by default; beside TF's runtime in one process on a
# machine with few cores they starve it and its medium-size calls. Passive waiting avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import fastcustom  # noqa: E402  (lazy: nothing but its own package yet)
from fastcustom.bench.cases import FASTCUSTOM, interleaved_info, spread  # noqa: E402

for _gpu in tf.config.list_physical_devices("GPU"):
    try:
        tf.config.experimental.set_memory_growth(_gpu, True)
    except RuntimeError:  # the GPU was already initialized by an earlier import
        pass

# (rounds, iterations per round) for pytest-benchmark's pedantic mode, by size;
# FASTCUSTOM_BENCH_QUICK=1 makes it 3 single calls (a smoke run, e.g. the report's test).
ROUNDS = {"small": (40, 20), "medium": (15, 4), "large": (15, 1)}
if os.environ.get("FASTCUSTOM_BENCH_QUICK", "") not in ("", "0"):
    ROUNDS = dict.fromkeys(ROUNDS, (3, 1))
EXTRAS_HINT = "pip install 'fastcustom[frameworks]'"


@dataclass(frozen=True)
class Device:
    """One device a case runs on: "cpu" or "gpu", as each framework names it."""

    name: str

    @property
    def tf_name(self):
        return "/GPU:0" if self.name == "gpu" else "/CPU:0"

    def syncer(self, framework):
        """What must follow a call of `framework` so that its work has finished, or None."""
        if self.name == "cpu":
            return None
        if framework == "tf":
            return tf.test.experimental.sync_devices
        if framework == "torch":
            import torch
            return torch.cuda.synchronize
        return None  # numpy is synchronous; JAX cases block_until_ready themselves

    def require_host(self):
        if self.name != "cpu":
            pytest.skip("NumPy runs on the host only")

    def torch(self):
        """torch and its device name; skips when torch is missing or cannot use this device."""
        torch = pytest.importorskip("torch", reason=f"PyTorch is not installed ({EXTRAS_HINT})")
        if self.name == "gpu" and not torch.cuda.is_available():
            pytest.skip("PyTorch sees no GPU")
        return torch, ("cuda" if self.name == "gpu" else "cpu")

    def fused_huber_ops(self):
        """The fused Huber op module; skips when it is not built or not built for this device."""
        from fastcustom.ops import library
        ops = library.huber_ops()
        if ops is None:
            pytest.skip(f"fused op not built: {library.status().get('reason')}")
        if self.name == "gpu" and not library.status().get("gpu"):
            pytest.skip("fused op built without its GPU kernel")
        return ops

    def jax(self):
        """jax, optax and the jax device; skips when they are missing or see no such device."""
        jax = pytest.importorskip("jax", reason=f"JAX is not installed ({EXTRAS_HINT})")
        optax = pytest.importorskip("optax", reason=f"optax is not installed ({EXTRAS_HINT})")
        try:
            return jax, optax, jax.devices(self.name)[0]
        except RuntimeError:
            pytest.skip(f"JAX sees no {self.name}")


# What the report's header states about the run, besides pytest-benchmark's machine_info.
VERSIONS = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "torch", "jax", "jaxlib", "optax",
            "pytest-benchmark", "fastcustom")
THREAD_SETTINGS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "TF_NUM_INTRAOP_THREADS",
                   "TF_NUM_INTEROP_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS",
                   "TF_CPU_ALLOCATOR_USE_BFC", "MALLOC_ARENA_MAX", "TF_ENABLE_ONEDNN_OPTS",
                   "FASTCUSTOM_DISABLE_OPS", "FASTCUSTOM_OPS_LIBRARY", "FASTCUSTOM_XLA_CACHE",
                   "FASTCUSTOM_BENCH_QUICK")
_LOAD_BEFORE = os.getloadavg()   # when the suites start (pytest imports this file first)


def pytest_sessionstart(session):
    if not tf.config.experimental.get_synchronous_execution():
        raise pytest.UsageError("TF eager execution is asynchronous: CPU timings would "
                                "stop before the work does.")


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _checkout_commit(folder):
    """`git describe`-like facts of the checkout holding `folder`: commit and whether its
    tracked files differ from it; {} outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


# The fastcustom under test: where it was imported from, and that checkout's commit as the
# run starts (a file edited during the run would make a later look wrong).
_PACKAGE = os.path.dirname(os.path.abspath(fastcustom.__file__))
_PACKAGE_COMMIT = _checkout_commit(_PACKAGE)


def _huber_path():
    """Which Huber path fastcustom ran (its loader's status) and the op library's build
    record (the TensorFlow it was built for; compiler flags where the record has them)."""
    from fastcustom import build_ops
    from fastcustom.ops import library

    status = library.status()
    record = build_ops.read_record(status["library"]) if status.get("library") else None
    return {"status": status, "build_record": record, "package": _PACKAGE, **_PACKAGE_COMMIT}


def _threads():
    threads = {"cpu_count": os.cpu_count(),
               "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else None,
               "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
               "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
               "env": {name: os.environ[name] for name in THREAD_SETTINGS if name in os.environ}}
    if "torch" in sys.modules:   # only where a case imported it: importing it costs seconds
        threads["torch"] = sys.modules["torch"].get_num_threads()
    return threads


def pytest_benchmark_update_machine_info(config, machine_info):
    """The environment in the JSON (pytest-benchmark calls this when it writes the file,
    at the end of the run): versions, the Huber path and its build, thread settings, the
    load average before and after the run, and the arguments."""
    machine_info["fastcustom"] = {
        "versions": {name: v for name in VERSIONS if (v := _version(name))},
        "huber_path": _huber_path(),
        "threads": _threads(),
        "load_average": {"before": list(_LOAD_BEFORE), "after": list(os.getloadavg())},
        "quick": os.environ.get("FASTCUSTOM_BENCH_QUICK", "") not in ("", "0"),
        "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
    }


class DefaultPlacement(Device):
    """A device name for the record, with TensorFlow's default placement (no device scope)
    and nothing to sync: for cases that, like the training suite, run where Keras puts them."""

    @property
    def tf_name(self):
        return None

    def syncer(self, framework):
        return None


@pytest.fixture(params=["cpu", "gpu"])
def device(request):
    """The device of a case; "gpu" cases skip where TensorFlow sees no GPU."""
    if request.param == "gpu" and not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU")
    return Device(request.param)


def minor_page_faults():
    """The process's minor page faults so far (all threads): a call that gets fresh memory
    from the OS for a large output pays one per 4 KiB page."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.fixture
def measure(device, benchmark):
    """`measure(make, info)`: build the case with `make()` on the device, warm it, time it.

    `make()` returns `(call, framework)`; `info` is a `case_info`/`ceiling_info`
    dict, stored in the JSON for the report, with the minor page faults per call
    (`page_faults_per_call`, counted around the whole timing, not per call).
    """
    def run(make, info):
        with tf.device(device.tf_name):
            call, framework = make()
            sync = device.syncer(framework)
            timed = call if sync is None else (lambda: (call(), sync()))
            timed()   # trace and compile outside the timing
            benchmark.group = f"{info['kernel']} | {info['size']} {info['shape']} | {device.name}"
            benchmark.extra_info.update(info)
            rounds, iterations = ROUNDS[info["size"]]
            faults = minor_page_faults()
            benchmark.pedantic(timed, rounds=rounds, iterations=iterations, warmup_rounds=1)
            calls = (rounds + 1) * iterations
            benchmark.extra_info["page_faults_per_call"] = (minor_page_faults() - faults) / calls
    return run


def _built(make, sync):
    """The call `make()` builds, followed by `sync` where there is one, called once (to
    trace and compile outside the timing)."""
    call, framework = make()
    syncer = sync(framework)
    timed = call if syncer is None else (lambda: (call(), syncer()))
    timed()
    return timed


@pytest.fixture
def interleave(request, benchmark):
    """`interleave(task, size, shape, makers, peers, ...)`: fastcustom and its peers timed in
    turn, one call batch of each per round in a shuffled order, the roof too where given.

    `makers` maps implementation names to `make()` builders (as for `measure`); `ours`
    names fastcustom's implementation among them; `peers` maps roles to implementation
    names; `roofs` lists (name, make, work) timed in the same loop (the share of each
    round is against the fastest of them). A peer whose builder skips (torch missing) is
    left out, with its reason. pytest-benchmark times each whole round; the
    row's `extra_info` (`cases.interleaved_info`) holds the per-round speed-ups and roof
    shares, so that a slow spell of the machine slows fastcustom and its peers alike.
    `rounds` / `iterations` default to `ROUNDS[size]`; `work` is per call (per round of
    every implementation when `unit="steps"`). The implementations run on the test's
    `device` where it asks for one, else where TensorFlow places them by default.
    """
    if "device" in request.fixturenames:
        device = request.getfixturevalue("device")
    else:
        device = Device("gpu" if tf.config.list_physical_devices("GPU") else "cpu")
        device = DefaultPlacement(device.name)

    def run(task, size, shape, makers, peers, *, work, unit, read=None, written=None,
            ours=FASTCUSTOM, roofs=(), rounds=None, iterations=None, targets=None):
        default_rounds, default_iterations = ROUNDS.get(size, (5, 1))
        rounds, iterations = rounds or default_rounds, iterations or default_iterations
        with tf.device(device.tf_name):
            calls, missing = {}, {}
            wanted = {FASTCUSTOM: ours, **peers}
            for role, name in wanted.items():
                try:
                    calls[name] = _built(makers[name], device.syncer)
                except pytest.skip.Exception as skipped:
                    if role == FASTCUSTOM:
                        raise
                    missing[role] = str(skipped)
            for roof_name, roof_make, _ in roofs:
                calls[roof_name] = _built(roof_make, device.syncer)
            times = {name: [] for name in calls}
            faults = dict.fromkeys(calls, 0)
            order, shuffle = list(calls), random.Random(0).shuffle

            def one_round():
                shuffle(order)  # no row always follows the same one (its cache state)
                for name in order:
                    call = calls[name]
                    faulted = minor_page_faults()
                    start = time.perf_counter()
                    for _ in range(iterations):
                        call()
                    times[name].append((time.perf_counter() - start) / iterations)
                    faults[name] += minor_page_faults() - faulted

            benchmark.group = f"interleaved | {task} | {size} {shape} | {device.name}"
            benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=1)
        if benchmark.disabled:   # --benchmark-disable: a smoke run, nothing timed
            return
        timed = {name: values[1:] for name, values in times.items()}   # less the warm-up
        mine = timed[ours]
        speedups = {role: spread([theirs / t for theirs, t in zip(timed[name], mine)])
                    for role, name in peers.items() if name in timed}
        share = None
        if roofs:
            roof_rates = [max(roof_work / timed[name][i] for name, _, roof_work in roofs)
                          for i in range(len(mine))]
            share = spread([(work / t) / rate for t, rate in zip(mine, roof_rates)])
        benchmark.extra_info.update(interleaved_info(
            task, size, shape, device.name, work=work, unit=unit, read=read, written=written,
            peers={role: name for role, name in peers.items() if name in timed},
            seconds={name: spread(values) for name, values in timed.items()},
            fastcustom=ours, speedups=speedups, roof_share=share,
            roof=", ".join(name for name, _, _ in roofs) or None,
            page_faults_per_call={name: count / ((rounds + 1) * iterations)
                                  for name, count in faults.items()},
            missing=missing, iterations=iterations, targets=targets))
    return run


def pytest_make_parametrize_id(config, val, argname):
    """Test ids from implementation names: "tf.function + XLA" -> "tf.function-XLA"."""
    if argname == "implementation":
        return "-".join(val.replace("+", " ").replace("(", " ").replace(")", " ").split())
    return None
