"""What the benchmark suites share: the device parameter, syncing, imports that skip, `measure`.

    pytest bench/ --benchmark-json=bench/out/results.json
    python -m fastcustom.bench report bench/out/results.json --out bench/out

Every case runs once per device ("cpu", and "gpu" where TensorFlow sees one),
is traced/compiled and warmed before timing, and is timed with a fixed number
of rounds per size (`ROUNDS`) so the whole suite fits in a few minutes on two
cores. Each timed call finishes its work: TF on CPU runs synchronously
(checked below), TF on GPU is followed by `sync_devices()`, torch on GPU by
`torch.cuda.synchronize()`, JAX calls `block_until_ready()` itself.
"""

import os
from dataclasses import dataclass

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX beside TF on one GPU
# torch's OpenMP threads spin-wait by default; beside TF's runtime in one process on a
# machine with few cores they starve it and its medium-size calls. Passive waiting avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

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


def pytest_sessionstart(session):
    if not tf.config.experimental.get_synchronous_execution():
        raise pytest.UsageError("TF eager execution is asynchronous: CPU timings would "
                                "stop before the work does.")


@pytest.fixture(params=["cpu", "gpu"])
def device(request):
    """The device of a case; "gpu" cases skip where TensorFlow sees no GPU."""
    if request.param == "gpu" and not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU")
    return Device(request.param)


@pytest.fixture
def measure(device, benchmark):
    """`measure(make, info)`: build the case with `make()` on the device, warm it, time it.

    `make()` returns `(call, framework)`; `info` is a `case_info`/`ceiling_info`
    dict, stored in the JSON for the report.
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
            benchmark.pedantic(timed, rounds=rounds, iterations=iterations, warmup_rounds=1)
    return run


def pytest_make_parametrize_id(config, val, argname):
    """Test ids from implementation names: "tf.function + XLA" -> "tf.function-XLA"."""
    if argname == "implementation":
        return "-".join(val.replace("+", " ").replace("(", " ").replace(")", " ").split())
    return None
