"""setup.py's CUDA build of the op library (`FASTCUSTOM_CUDA=1`), checked without a GPU.

The build compiles the TensorFlow GPU kernels (csrc/huber_kernels_gpu.cu.cc) and
the CUDA core with nvcc next to the CPU kernels, and links the toolkit's CUDA
runtime in statically with its symbols hidden. The library must then

* hold machine code for sm_80 and sm_90 and PTX for compute_90 (setup.py's
  CUDA_ARCHS), read from its .nv_fatbin section;
* carry its own CUDA runtime: no `__cuda*` / `cuda*` symbol left for the dynamic
  loader and no libcudart among its dependencies. Otherwise a CUDA build of
  TensorFlow, which exports a CUDA runtime stub of its own (CUDA 12), would run
  kernels compiled by this toolkit, and tensorflow-cpu could not load the
  library (`undefined symbol: __cudaPushCallConfiguration`);
* load in the installed TensorFlow and report its GPU kernels (`gpu: True`);
* compute on the CPU exactly what the CPU-only build computes: the same bits for
  every op and dtype (conftest's OP_HASH_SCRIPT, run with each library);
* where TensorFlow sees a GPU but the GPU kernels cannot run there (here: no GPU
  behind the one the loader is told of, so TensorFlow runs the call on the CPU),
  warn once and report `gpu: False`, keeping its CPU kernels.

Long (a build of about a minute): run with `pytest --long`, as CI does. Skipped where nvcc
is missing, unless FASTCUSTOM_REQUIRE_NVCC=1 (CI).
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from fastcustom.ops import library

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
from fatbin_archs import fatbin_entries  # noqa: E402

pytestmark = pytest.mark.long

STATUS_SCRIPT = "import json; from fastcustom.ops import library; print(json.dumps(library.status()))"
# The loader as on a GPU machine: TensorFlow says it sees a GPU (it has none here).
FAKE_GPU_STATUS_SCRIPT = """
import json, warnings
from fastcustom.ops import library
library.tensorflow_sees_a_gpu = lambda: True
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    status = library.status()
    library.huber_ops()
print(json.dumps(dict(status, warnings=[str(w.message) for w in caught])))
"""


@pytest.fixture(scope="module")
def cuda_library(tmp_path_factory, require):
    """The op library built by `FASTCUSTOM_CUDA=1 python setup.py build_ext` into a temp folder."""
    build = tmp_path_factory.mktemp("cuda_build")
    result = subprocess.run([sys.executable, "setup.py", "build_ext", "-b", str(build / "lib"),
                             "-t", str(build / "tmp")], cwd=ROOT, env=dict(os.environ, FASTCUSTOM_CUDA="1"),
                            capture_output=True, text=True, timeout=1200)
    log = result.stdout + result.stderr
    if "nvcc or the CUDA toolkit (CUDA_HOME) was not found" in log:  # setup.py's own lookup
        require("no nvcc / CUDA toolkit for setup.py")
    path = build / "lib" / "fastcustom" / "ops" / library.LIBRARY_NAME
    assert result.returncode == 0 and path.exists(), f"the CUDA build failed:\n{log[-6000:]}"
    assert "with CUDA kernels" in log, log[-6000:]
    return path


def _dynamic(path, tool, *args):
    return subprocess.run([tool, *args, str(path)], check=True, capture_output=True, text=True).stdout


def test_holds_sm80_sm90_machine_code_and_ptx(cuda_library):
    assert {("ELF", 80), ("ELF", 90), ("PTX", 90)} <= set(fatbin_entries(cuda_library))


def test_carries_its_own_cuda_runtime(cuda_library):
    undefined = _dynamic(cuda_library, "nm", "-D", "--undefined-only").split()
    assert not [s for s in undefined if re.match(r"_*cuda", s)], "CUDA runtime symbols left undefined"
    exported = _dynamic(cuda_library, "nm", "-D", "--defined-only").split()
    assert not [s for s in exported if re.match(r"_*cuda", s)], "the CUDA runtime's symbols are exported"
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", _dynamic(cuda_library, "readelf", "-d"))
    assert "libtensorflow_framework.so.2" in needed
    assert not [n for n in needed if "cudart" in n], needed


@pytest.mark.needs_ops
def test_loads_and_computes_the_same_bits_on_the_cpu(cuda_library, run_scripts, op_hash_script):
    env = {"FASTCUSTOM_OPS_LIBRARY": str(cuda_library)}
    status, cuda_bits, cpu_bits = run_scripts(
        (STATUS_SCRIPT, [], env), (op_hash_script, ["2"], env), (op_hash_script, ["2"], {}))
    assert status["path"] == "fused-op", status["reason"]
    assert status["gpu"] is True and status["library"] == str(cuda_library)
    assert status["dtypes"] == ["bfloat16", "float16", "float32", "float64"]
    assert cuda_bits == cpu_bits, ("the CUDA build's CPU kernels differ from the CPU-only build's "
                                   f"({library.library_path()}; were both built with the same flags?)")


@pytest.mark.needs_ops
def test_gpu_kernels_that_fail_their_first_call_are_not_used(cuda_library, run_scripts):
    (status,) = run_scripts((FAKE_GPU_STATUS_SCRIPT, [], {"FASTCUSTOM_OPS_LIBRARY": str(cuda_library)}))
    assert status["path"] == "fused-op" and status["gpu"] is False, status
    assert "GPU kernels unusable" in status["reason"] and "not on GPU:0" in status["reason"]
    (warning,) = status["warnings"]
    assert "take the XLA path" in warning and "not on GPU:0" in warning
