"""Compiles the fused Huber op library against a TensorFlow, and records which one.

setup.py builds it next to `fastcustom/ops/` at install time; `fastcustom build-ops`
builds it again for the TensorFlow now installed, into a per-user cache with one folder
per TensorFlow ABI (`~/.cache/fastcustom/ops/tf2.21-cxx11abi1/`). Each library has a
record beside it (`_huber_ops.so.json`: the TensorFlow version and ABI it was compiled
against, and whether it holds CUDA kernels) that the loader compares with the running
TensorFlow before loading it.

This file imports neither fastcustom nor TensorFlow (setup.py loads it by path, before
either is importable): the TensorFlow to compile against is asked in a subprocess.

Environment:
  FASTCUSTOM_NATIVE=0      portable code: no -march=native
  FASTCUSTOM_CUDA=0 / 1    never / always compile the CUDA kernels; by default they are
                           compiled when nvcc and the CUDA toolkit are found (NVCC,
                           CUDA_HOME, PATH, /usr/local/cuda), the CUDA sources exist, and
                           TensorFlow is built with CUDA or a CUDA driver is installed
  FASTCUSTOM_CACHE_DIR     the per-user cache (default $XDG_CACHE_HOME/fastcustom,
                           else ~/.cache/fastcustom)
  CXX, NVCC                the compilers (default g++, nvcc)
"""

import concurrent.futures
import ctypes
import json
import os
import shutil
import subprocess
import sys

LIBRARY_NAME = "_huber_ops.so"
CPU_SOURCES = ["huber_ops.cc", "huber_kernels_cpu.cc"]
CUDA_SOURCES = ["huber_kernels_gpu.cu.cc", "cuda/huber_cuda.cu"]
SOURCE_SUFFIXES = (".h", ".cc", ".cu")
CUDA_ARCHS = ["-gencode", "arch=compute_80,code=sm_80",
              "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90"]

_QUERY_TENSORFLOW = r"""
import json
import tensorflow as tf
print(json.dumps({"version": tf.__version__, "cflags": tf.sysconfig.get_compile_flags(),
                  "lflags": tf.sysconfig.get_link_flags(), "cuda": tf.test.is_built_with_cuda(),
                  "cxx11_abi": int(tf.sysconfig.CXX11_ABI_FLAG)}))
"""


class BuildError(Exception):
    """The op library could not be built; the message says why."""


def abi_tag(tensorflow_version, cxx11_abi):
    """What a library must match to load: TensorFlow's major.minor and its C++11 ABI flag.

    TensorFlow keeps its C++ ABI within a minor release (TF Addons pinned the same
    way); `tensorflow` and `tensorflow-cpu` of one version share it.
    """
    major, minor = tensorflow_version.split(".")[:2]
    return f"tf{major}.{minor}-cxx11abi{int(cxx11_abi)}"


def record_path(library):
    """The build record kept beside a library: `<library>.json`."""
    return library + ".json"


def read_record(library):
    """The build record of `library` (a dict), or None when it has none or it is unreadable."""
    try:
        with open(record_path(library)) as file:
            record = json.load(file)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def cache_root():
    """The per-user cache: FASTCUSTOM_CACHE_DIR, else $XDG_CACHE_HOME/fastcustom or ~/.cache/fastcustom."""
    if os.environ.get("FASTCUSTOM_CACHE_DIR"):
        return os.path.abspath(os.environ["FASTCUSTOM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastcustom")


def cached_library(tag):
    """Where `fastcustom build-ops` puts the library for the TensorFlow ABI `tag`."""
    return os.path.join(cache_root(), "ops", tag, LIBRARY_NAME)


def source_root():
    """The kernel sources: `fastcustom/_csrc` in an installed package, `csrc/` in a checkout."""
    package = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(package, "_csrc"), os.path.join(os.path.dirname(package), "csrc")):
        if all(os.path.isfile(os.path.join(candidate, s)) for s in CPU_SOURCES):
            return candidate
    raise BuildError(f"the kernel sources are not installed (no {package}/_csrc and no csrc/ "
                     "beside the package); reinstall fastcustom from its source")


def copy_sources(source, destination):
    """Copies the kernel sources (*.h, *.cc, *.cu, subfolders kept) from `source` to `destination`."""
    for folder, _, files in os.walk(source):
        for name in files:
            if name.endswith(SOURCE_SUFFIXES):
                target = os.path.join(destination, os.path.relpath(folder, source), name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(os.path.join(folder, name), target)


def _flag(name, default):
    value = os.environ.get(name, "").strip().lower()
    return default if value == "" else value not in ("0", "false", "no", "off")


def tensorflow_config(python=None):
    """Version, compile/link flags, CUDA build and C++11 ABI flag of the TensorFlow that
    `python` (default: this interpreter, with this environment) imports."""
    python = python or sys.executable
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        result = subprocess.run([python, "-c", _QUERY_TENSORFLOW], env=env,
                                capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"could not run {python}: {error}") from None
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"TensorFlow is not importable by {python} ({tail})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def find_cuda():
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


def cuda_driver_installed():
    """Whether the CUDA driver library (libcuda.so.1) loads: a machine that can run CUDA kernels."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _cuda_static_runtime(home):
    """The toolkit's static CUDA runtime, libcudart_static.a."""
    for lib in ("lib64", "lib"):
        path = os.path.join(home, lib, "libcudart_static.a")
        if os.path.isfile(path):
            return path
    raise BuildError(f"libcudart_static.a not found in the CUDA toolkit {home}")


def cuda_plan(tf_config, sources):
    """(nvcc, CUDA home) when the CUDA kernels are to be compiled, else None.

    The TensorFlow compiled against may be tensorflow-cpu (pip's isolated build
    environment has it for `.[gpu]` too): its headers and ABI are those of the CUDA
    build, so a CUDA driver on this machine also asks for the CUDA kernels.
    """
    wanted = _flag("FASTCUSTOM_CUDA", None)
    if wanted is False:
        return None
    nvcc, home = find_cuda()
    sources_there = all(os.path.exists(os.path.join(sources, s)) for s in CUDA_SOURCES)
    if wanted is None:
        usable = tf_config["cuda"] or cuda_driver_installed()
        return (nvcc, home) if usable and nvcc and home and sources_there else None
    if not sources_there:
        raise BuildError(f"FASTCUSTOM_CUDA=1 but {' or '.join(CUDA_SOURCES)} is missing in {sources}")
    if not (nvcc and home):
        raise BuildError("FASTCUSTOM_CUDA=1 but nvcc or the CUDA toolkit (CUDA_HOME) was not found")
    return nvcc, home


def _run(command, cwd):
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except OSError as error:
        raise BuildError(f"could not run {command[0]}: {error}") from None
    if result.returncode != 0:
        raise BuildError(f"{' '.join(command)}\n{(result.stdout + result.stderr)[-4000:]}")


def build_op_library(output, build_temp, sources=None, tf_config=None):
    """Compiles and links the op library into `output` and writes its record; raises BuildError.

    Returns the record: {"tensorflow": version, "abi": abi_tag(...), "cuda": bool}.
    `output` is replaced in one step (a loader never sees half a file).
    """
    sources = os.path.abspath(sources or source_root())
    tf_config = tf_config or tensorflow_config()
    cuda = cuda_plan(tf_config, sources)
    cxx = os.environ.get("CXX", "g++")
    flags = ["-O3", "-DNDEBUG", f"-I{sources}", *tf_config["cflags"]]
    if cuda:
        flags += ["-DGOOGLE_CUDA=1", f"-I{os.path.join(cuda[1], 'include')}"]
    cxx_flags = ["-std=c++17", "-fPIC", "-ffp-contract=off", "-Wno-deprecated-declarations", *flags]
    if _flag("FASTCUSTOM_NATIVE", True):
        cxx_flags.append("-march=native")
    os.makedirs(build_temp, exist_ok=True)
    commands, objects = [], []
    for source in CPU_SOURCES + (CUDA_SOURCES if cuda else []):
        path = os.path.join(sources, source)
        obj = os.path.join(build_temp, os.path.basename(source) + ".o")
        if source in CUDA_SOURCES:
            commands.append([cuda[0], "-x", "cu", "-Xcompiler", "-fPIC",
                             "--expt-relaxed-constexpr", *CUDA_ARCHS, *flags, "-c", path, "-o", obj])
        else:
            commands.append([cxx, *cxx_flags, "-c", path, "-o", obj])
        objects.append(obj)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(lambda command: _run(command, build_temp), commands))
    # The CUDA runtime is linked in, before TensorFlow, with its symbols hidden, so
    # the kernels always run on the runtime of the toolkit that compiled them. Left
    # to `-lcudart` after TensorFlow's flags, a CUDA build of TensorFlow would supply
    # `__cudaRegisterFatBinary` & co. from its own stub (its CUDA 12 runtime), and
    # tensorflow-cpu could not load the library at all (undefined symbol).
    runtime = [_cuda_static_runtime(cuda[1]), "-Wl,--exclude-libs,libcudart_static.a", "-ldl", "-lrt",
               "-lpthread"] if cuda else []
    output = os.path.abspath(output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    partial = f"{output}.{os.getpid()}.partial"
    try:
        _run([cxx, "-shared", *objects, *runtime, "-o", partial, *tf_config["lflags"]], build_temp)
        os.replace(partial, output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    record = {"tensorflow": tf_config["version"],
              "abi": abi_tag(tf_config["version"], tf_config.get("cxx11_abi", 1)),
              "cuda": bool(cuda)}
    with open(f"{partial}.json", "w") as file:
        json.dump(record, file)
    os.replace(f"{partial}.json", record_path(output))
    return record
