"""Builds fastcustom: the Python package and its fused Huber op library.

    pip install .                          # the library is built against the TensorFlow
                                           # installed where the package is installed
    python setup.py build_ext --inplace    # developers: fastcustom/ops/_huber_ops.so in place

The op library is compiled with `tf.sysconfig.get_compile_flags()` and
`get_link_flags()` of the TensorFlow that will load it. pip builds in an isolated
environment where that TensorFlow cannot be imported, so the flags come from
`sys.executable` (the target interpreter) run without pip's isolation variables.
When that fails, or the compiler does, the package installs without the library
and `fastcustom` uses its XLA path.

Environment:
  FASTCUSTOM_BUILD_OPS=0   skip the op library (a pure-Python package)
  FASTCUSTOM_NATIVE=0      portable code: no -march=native
  FASTCUSTOM_CUDA=0 / 1    never / always compile the CUDA kernels; by default they
                           are compiled when TensorFlow is built with CUDA, nvcc is
                           found (NVCC, CUDA_HOME, PATH) and the CUDA sources exist
  CXX, NVCC                the compilers (default g++, nvcc)
"""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
OP_LIBRARY = "fastcustom.ops._huber_ops"
CPU_SOURCES = ["csrc/huber_ops.cc", "csrc/huber_kernels_cpu.cc"]
CUDA_SOURCES = ["csrc/huber_kernels_gpu.cu.cc", "csrc/cuda/huber_cuda.cu"]
CUDA_ARCHS = ["-gencode", "arch=compute_80,code=sm_80",
              "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90"]

_QUERY_TENSORFLOW = r"""
import json
import tensorflow as tf
print(json.dumps({"version": tf.__version__, "cflags": tf.sysconfig.get_compile_flags(),
                  "lflags": tf.sysconfig.get_link_flags(), "cuda": tf.test.is_built_with_cuda()}))
"""


class BuildError(Exception):
    pass


def _flag(name, default):
    value = os.environ.get(name, "").strip().lower()
    return default if value == "" else value not in ("0", "false", "no", "off")


def _target_environment():
    """The environment without pip's build isolation (its sitecustomize on PYTHONPATH)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONNOUSERSITE", None)
    kept = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep)
            if p and not os.path.exists(os.path.join(p, "sitecustomize.py"))]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    return env


def _tensorflow_config():
    """Flags of the TensorFlow importable by the target interpreter, `sys.executable`."""
    try:
        result = subprocess.run([sys.executable, "-c", _QUERY_TENSORFLOW], env=_target_environment(),
                                capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"could not run {sys.executable}: {error}") from None
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"TensorFlow is not importable by {sys.executable} ({tail})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _find_cuda():
    """(nvcc, CUDA home) from NVCC, CUDA_HOME / CUDA_PATH, PATH or /usr/local/cuda; else Nones."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvccs = [os.environ.get("NVCC")] + [os.path.join(h, "bin", "nvcc") for h in homes if h]
    nvccs += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    nvcc = next((n for n in nvccs if n and os.path.isfile(n)), None)
    if nvcc is None:
        return None, None
    homes += [os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    home = next((h for h in homes if h and os.path.isfile(os.path.join(h, "include", "cuda.h"))),
                None)
    return nvcc, home


def _cuda_static_runtime(home):
    """The toolkit's static CUDA runtime, libcudart_static.a."""
    for lib in ("lib64", "lib"):
        path = os.path.join(home, lib, "libcudart_static.a")
        if os.path.isfile(path):
            return path
    raise BuildError(f"libcudart_static.a not found in the CUDA toolkit {home}")


def _cuda_plan(tf_config):
    """(nvcc, CUDA home) when the CUDA kernels are to be compiled, else None."""
    wanted = _flag("FASTCUSTOM_CUDA", None)
    if wanted is False:
        return None
    nvcc, home = _find_cuda()
    sources_there = all(os.path.exists(os.path.join(ROOT, s)) for s in CUDA_SOURCES)
    if wanted is None and not (tf_config["cuda"] and nvcc and home and sources_there):
        return None
    if not (nvcc and home) or not sources_there:
        raise BuildError("FASTCUSTOM_CUDA=1 but " + (
            f"{' or '.join(CUDA_SOURCES)} is missing" if not sources_there else
            "nvcc or the CUDA toolkit (CUDA_HOME) was not found"))
    return nvcc, home


def _run(command):
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    except OSError as error:
        raise BuildError(f"could not run {command[0]}: {error}") from None
    if result.returncode != 0:
        raise BuildError(f"{' '.join(command)}\n{(result.stdout + result.stderr)[-4000:]}")


def build_op_library(output, build_temp):
    """Compiles and links the op library into `output`; raises BuildError."""
    tf_config = _tensorflow_config()
    cuda = _cuda_plan(tf_config)
    cxx = os.environ.get("CXX", "g++")
    flags = ["-O3", "-DNDEBUG", "-Icsrc", *tf_config["cflags"]]
    if cuda:
        flags += ["-DGOOGLE_CUDA=1", f"-I{os.path.join(cuda[1], 'include')}"]
    cxx_flags = ["-std=c++17", "-fPIC", "-ffp-contract=off", "-Wno-deprecated-declarations", *flags]
    if _flag("FASTCUSTOM_NATIVE", True):
        cxx_flags.append("-march=native")
    os.makedirs(build_temp, exist_ok=True)
    commands, objects = [], []
    for source in CPU_SOURCES + (CUDA_SOURCES if cuda else []):
        obj = os.path.join(build_temp, os.path.basename(source) + ".o")
        if source in CUDA_SOURCES:
            commands.append([cuda[0], "-x", "cu", "-Xcompiler", "-fPIC",
                             "--expt-relaxed-constexpr", *CUDA_ARCHS, *flags, "-c", source, "-o", obj])
        else:
            commands.append([cxx, *cxx_flags, "-c", source, "-o", obj])
        objects.append(obj)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_run, commands))
    # The CUDA runtime is linked in, before TensorFlow, with its symbols hidden, so
    # the kernels always run on the runtime of the toolkit that compiled them. Left
    # to `-lcudart` after TensorFlow's flags, a CUDA build of TensorFlow would supply
    # `__cudaRegisterFatBinary` & co. from its own stub (its CUDA 12 runtime), and
    # tensorflow-cpu could not load the library at all (undefined symbol).
    runtime = [_cuda_static_runtime(cuda[1]), "-Wl,--exclude-libs,libcudart_static.a", "-ldl", "-lrt",
               "-lpthread"] if cuda else []
    link = [cxx, "-shared", *objects, *runtime, "-o", output, *tf_config["lflags"]]
    os.makedirs(os.path.dirname(output), exist_ok=True)
    _run(link)
    return tf_config["version"], bool(cuda)


class BuildOpLibrary(build_ext):
    """Builds the op library (a TensorFlow plugin, not a Python extension) with g++/nvcc."""

    def get_ext_filename(self, fullname):
        if fullname.split(".")[-1] == OP_LIBRARY.split(".")[-1]:
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)

    def build_extensions(self):
        # A library that failed to build is dropped: nothing to copy in place or install.
        self.extensions = [ext for ext in self.extensions if self._build(ext)]

    def _build(self, ext):
        output = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_temp = os.path.abspath(os.path.join(self.build_temp, "fastcustom_ops"))
        try:
            version, cuda = build_op_library(output, build_temp)
        except BuildError as error:
            if os.path.exists(output):
                os.remove(output)
            warnings.warn(f"fastcustom: the fused Huber op library was not built ({error}); "
                          "the package will use its XLA path.")
            return False
        print(f"fastcustom: built {output} for TensorFlow {version}"
              f"{' with CUDA kernels' if cuda else ''}", file=sys.stderr)
        return True


ext_modules = []
if _flag("FASTCUSTOM_BUILD_OPS", True):
    ext_modules.append(Extension(OP_LIBRARY, sources=CPU_SOURCES))

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildOpLibrary})
