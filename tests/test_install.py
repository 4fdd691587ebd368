"""Installing fastcustom: the op compiled against the TensorFlow it will run with, and a
TensorFlow that no longer matches the library (the XLA path, one message, `fastcustom build-ops`).

The README's one-command install (`pip install ".[cpu,test]"`, build isolation on) is how CI
makes its fresh environment: `test_the_installed_package_runs_the_fused_op` checks what it
built there. `test_python_m_build_wheel_...` builds a wheel with `python -m build` and installs
it into a fresh virtual environment (minutes: a `long` test, run with `pytest --long` as .ci/run
does).
"""

import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest

from fastcustom import build_ops
from fastcustom.ops import library

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "cpu"))
import core  # noqa: E402  (bench/cpu/core.py: the machine code's AVX-512 functions)

X86_64 = platform.machine().lower() in ("x86_64", "amd64")
REQUIRE_OPS = os.environ.get("FASTCUSTOM_REQUIRE_OPS") == "1"
requires_ops = pytest.mark.skipif(
    not REQUIRE_OPS, reason="set FASTCUSTOM_REQUIRE_OPS=1 where the op library must be built (CI)")

STATUS_AND_HUBER = """
import json, fastcustom
status = fastcustom.path_info()
value = float(fastcustom.huber([[0.0, 0.0]], [[1.0, 3.0]], threshold=1.0)[0])
print(json.dumps(dict(status, huber=value)))
"""
HUBER_OF_1_AND_3 = (0.5 + 2.5) / 2  # h(1) = 1/2, h(3) = 3 - 1/2 with threshold 1


def _tensorflow_minor(requirement):
    match = re.search(r"(?:==|>=)\s*(\d+\.\d+)", requirement)
    return match.group(1) if match else None


def test_build_requirement_and_extras_name_the_same_tensorflow_minor():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (built,) = [r for r in project["build-system"]["requires"] if r.startswith("tensorflow-cpu")]
    extras = project["project"]["optional-dependencies"]
    (cpu,), (gpu,) = extras["cpu"], extras["gpu"]
    assert cpu.startswith("tensorflow-cpu") and gpu.startswith("tensorflow[and-cuda]")
    minor = _tensorflow_minor(built)
    assert minor and _tensorflow_minor(cpu) == minor == _tensorflow_minor(gpu)
    upper = f"<{minor.split('.')[0]}.{int(minor.split('.')[1]) + 1}"
    assert upper in cpu and upper in gpu, "the extras must stay within the minor built against"


def _last_json_line_and_stderr(result):
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@requires_ops
def test_the_installed_package_runs_the_fused_op(tmp_path, run_python):
    """What the README's one command built (CI: a fresh venv, build isolation on)."""
    status, _ = _last_json_line_and_stderr(run_python(
        "-c", STATUS_AND_HUBER, cwd=tmp_path,
        env={"FASTCUSTOM_OPS_LIBRARY": None, "PYTHONPATH": None}))
    assert status["path"] == "fused-op", status["reason"]
    record = build_ops.read_record(status["library"])
    import tensorflow as tf
    assert record and record["abi"] == build_ops.abi_tag(tf.__version__, tf.sysconfig.CXX11_ABI_FLAG)
    assert status["huber"] == pytest.approx(HUBER_OF_1_AND_3)


def _library_claiming_tensorflow(tmp_path, version):
    """A copy of the built library whose record says it was built for TensorFlow `version`."""
    built = library.installed_library_path()
    if not os.path.exists(built):
        if REQUIRE_OPS:
            pytest.fail(f"no op library at {built}")
        pytest.skip(f"no op library at {built}")
    copy = tmp_path / build_ops.LIBRARY_NAME
    shutil.copyfile(built, copy)
    pathlib.Path(build_ops.record_path(str(copy))).write_text(json.dumps(
        {"tensorflow": version, "abi": build_ops.abi_tag(version, 1), "cuda": False}))
    return copy


def test_a_library_built_for_another_tensorflow_gives_the_xla_path_and_one_message(tmp_path,
                                                                                   run_python):
    """The library is one that loads here; only its record says TensorFlow 2.20 (as after an
    upgrade from 2.20 to this TensorFlow): it is not loaded, the import does not fail, the
    Huber loss computes on the XLA path, and stderr has one message naming the fix."""
    copy = _library_claiming_tensorflow(tmp_path, "2.20.0")
    status, stderr = _last_json_line_and_stderr(run_python("-c", STATUS_AND_HUBER, env={
        "FASTCUSTOM_OPS_LIBRARY": str(copy), "FASTCUSTOM_CACHE_DIR": str(tmp_path / "cache")}))
    assert status["path"] == "xla" and status["library"] is None
    assert "built for TensorFlow 2.20.0" in status["reason"]
    assert status["huber"] == pytest.approx(HUBER_OF_1_AND_3)
    messages = [line for line in stderr.splitlines() if "fastcustom" in line]
    assert len(messages) == 1 and "`fastcustom build-ops`" in messages[0], stderr


def _wheel_member(wheel, suffix):
    (name,) = [n for n in wheel.namelist() if n.endswith(suffix)]
    return wheel.read(name)


@pytest.mark.long
def test_python_m_build_wheel_carries_the_op_and_a_tensorflow_change_is_rebuilt(tmp_path):
    """`python -m build`: an sdist, then a wheel from it in an isolated build environment;
    the wheel into a fresh venv with `[cpu]`; then the installed library's record made to
    say TensorFlow 2.20 (a TensorFlow change after install), and `fastcustom build-ops`."""
    dist = tmp_path / "dist"
    # The sdist needs no compiler: made here without isolation (seconds); the wheel is built
    # from it in an isolated environment that installs pyproject's build requirements.
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--skip-dependency-check",
                    "--outdir", str(dist), str(ROOT)], check=True, capture_output=True, timeout=600)
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        archive.extractall(tmp_path / "sdist", filter="data")
    assert any(n.endswith("csrc/huber_op_definitions.cc") for n in names)
    assert not any(n.endswith((".so", ".so.json")) for n in names)
    (unpacked,) = (tmp_path / "sdist").iterdir()
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(unpacked)],
                   check=True, capture_output=True, timeout=1800)
    (wheel_path,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel_path) as wheel:
        record = json.loads(_wheel_member(wheel, "fastcustom/ops/_huber_ops.so.json"))
        metadata = _wheel_member(wheel, ".dist-info/METADATA").decode()
        names = wheel.namelist()
        (tmp_path / "wheel_library.so").write_bytes(_wheel_member(wheel, "fastcustom/ops/_huber_ops.so"))
    assert record["abi"] == "tf2.21-cxx11abi1" and record["tensorflow"].startswith("2.21.")
    if X86_64:  # portable: x86-64-v3 code, the kernels also for AVX-512 (docs/building.md)
        assert record["cpu_target"] == "x86-64-v3" and record["cpu_kernels"] == ["avx2", "avx512"]
        zmm = core.functions_using_zmm(tmp_path / "wheel_library.so")
        assert zmm is None or (zmm and all("fastcustom::cpu::avx512::" in f for f in zmm)), zmm
    assert "fastcustom/ops/_huber_ops.so" in names and "fastcustom/_csrc/huber_op_definitions.cc" in names
    assert "fastcustom/cli.py" in names
    assert re.search(r"Requires-Dist: tensorflow-cpu<2\.22,>=2\.21; extra == \"cpu\"", metadata), metadata

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, fastcustom = venv / "bin" / "python", venv / "bin" / "fastcustom"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{wheel_path}[cpu]"],
                   check=True, capture_output=True, timeout=1800)
    # As a user runs it: no TF_CPP_MIN_LOG_LEVEL (conftest sets one for the tests' own
    # TensorFlow, and a level the user set keeps TensorFlow's start-up lines on stderr).
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTCUSTOM_OPS_LIBRARY", "PYTHONPATH", "VIRTUAL_ENV", "TF_CPP_MIN_LOG_LEVEL")}
    env["FASTCUSTOM_CACHE_DIR"] = str(tmp_path / "cache")

    def info():
        result = subprocess.run([str(fastcustom), "info"], capture_output=True, text=True,
                                cwd=tmp_path, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads(result.stdout), result.stderr

    status, _ = info()
    assert status["path"] == "fused-op", status["reason"]
    assert status["library"].startswith(str(venv)) and status["library_built_for"] == record["tensorflow"]
    assert status["library_cpu_target"] == record["cpu_target"]
    if X86_64:
        assert status["cpu_kernels"] in ("avx2", "avx512")
        env["FASTCUSTOM_CPU_ISA"] = "avx2"
        assert info()[0]["cpu_kernels"] == "avx2"
        del env["FASTCUSTOM_CPU_ISA"]

    installed_record = pathlib.Path(build_ops.record_path(status["library"]))
    installed_record.write_text(json.dumps(dict(record, tensorflow="2.20.0", abi="tf2.20-cxx11abi1")))
    status, stderr = info()
    assert status["path"] == "xla" and "built for TensorFlow 2.20.0" in status["reason"]
    assert sum("fastcustom build-ops" in line for line in stderr.splitlines()) == 1, stderr

    rebuilt = subprocess.run([str(fastcustom), "build-ops"], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=1200)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    status, stderr = info()
    assert status["path"] == "fused-op", status["reason"]
    assert status["library"] == str(tmp_path / "cache" / "ops" / "tf2.21-cxx11abi1" / build_ops.LIBRARY_NAME)
    assert stderr.strip() == ""
