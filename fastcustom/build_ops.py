"""Compiles the fused Huber op library against a TensorFlow, and records which one.

setup.py builds it next to `fastcustom/ops/` at install time; `fastcustom build-ops`
builds it again for the TensorFlow now installed, into a per-user cache with one folder
per TensorFlow ABI (`~/.cache/fastcustom/ops/tf2.21-cxx11abi1/`). Each library has a
record beside it (`_huber_ops.so.json`: the TensorFlow version and ABI it was compiled
against, whether it holds CUDA kernels, the CPU it was compiled for, the CPU features it
needs and its SHA-256) that the loader checks before loading it (fastcustom/ops/library_check.py).

CPU code is portable by default: every file is compiled for x86-64-v3 (AVX2, FMA, F16C,
BMI2: every x86-64 server since 2013-2017), and the kernels a second time with AVX-512,
chosen at run time where the CPU has it (csrc/cpu/huber_cpu_variants.h); the wheel of one
machine runs on every other. FASTCUSTOM_NATIVE=1 compiles everything for the building
machine's own CPU instead (-march=native), which other CPUs may lack.

This file imports neither fastcustom nor TensorFlow (setup.py loads it by path, before
either is importable): the TensorFlow to compile against is asked in a subprocess.

Environment:
  FASTCUSTOM_NATIVE=1      code for this machine's CPU (-march=native); default portable
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
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys

LIBRARY_NAME = "_huber_ops.so"
CPU_DISPATCH = "cpu/huber_cpu.cc"           # the CPU core's dispatch, compiled once
CPU_KERNELS = "cpu/huber_cpu_kernels.cc"    # the CPU core's kernels, compiled once per variant
CPU_CAPI = "cpu/huber_cpu_capi.cc"          # the core's C API: the ctypes library only
OP_SOURCES = ["huber_op_definitions.cc", "huber_kernels_cpu.cc"]
CPU_SOURCES = OP_SOURCES + [CPU_DISPATCH, CPU_KERNELS]
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


# What a CPU must list in /proc/cpuinfo to run x86-64-v3 code (the x86-64 psABI's
# level 3 and the level 2 under it; level 1 is every x86-64 CPU).
X86_64_V3_CPU_FLAGS = ["abm", "avx", "avx2", "bmi1", "bmi2", "cx16", "f16c", "fma", "lahf_lm",
                       "movbe", "pni", "popcnt", "sse4_1", "sse4_2", "ssse3", "xsave"]

# gcc's names of instruction sets (-m<name>) where /proc/cpuinfo names them otherwise
# ('.' and '-' become '_' besides).
_GCC_TO_CPUINFO = {"bmi": "bmi1", "lzcnt": "abm", "pclmul": "pclmulqdq", "rdrnd": "rdrand",
                   "sha": "sha_ni", "sse3": "pni", "sahf": "lahf_lm", "prfchw": "3dnowprefetch",
                   "mwait": "monitor", "avxvnni": "avx_vnni", "avx512bf16": "avx512_bf16",
                   "avx512vnni": "avx512_vnni", "avx512vbmi2": "avx512_vbmi2",
                   "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq",
                   "avx512fp16": "avx512_fp16", "avx512vp2intersect": "avx512_vp2intersect"}


def cpu_flags():
    """This machine's CPU features as /proc/cpuinfo lists them (a set), or None where there
    is no /proc/cpuinfo to read."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _native_cpu_flags(cxx):
    """The /proc/cpuinfo names of the instruction sets `cxx -march=native` compiles for."""
    try:
        result = subprocess.run([cxx, "-march=native", "-Q", "--help=target"],
                                capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"could not ask {cxx} what -march=native means: {error}") from None
    enabled = re.findall(r"^\s+-m([\w.-]+)\s+\[enabled\]", result.stdout, re.MULTILINE)
    names = {_GCC_TO_CPUINFO.get(name, re.sub(r"[.-]", "_", name)) for name in enabled}
    here = cpu_flags()
    # gcc's other -m options (-m64, -mred-zone, ...) are no CPU's features.
    return sorted(names & here) if here is not None else []


class CpuTarget:
    """The CPU code a build makes: `name` ("x86-64-v3", "native" or "generic"), `march` (flags
    for every file), `variants` [(name, extra flags)] of the kernels (csrc/cpu/huber_cpu_kernels.cc,
    compiled once each), `dispatch` (csrc/cpu/huber_cpu.cc's flags) and `cpu_flags` (what a
    CPU must list in /proc/cpuinfo to run it)."""

    def __init__(self, native=None, cxx=None):
        native = _flag("FASTCUSTOM_NATIVE", False) if native is None else native
        if native:
            self.name, self.march = "native", ["-march=native"]
            self.variants = [("native", ["-DFASTCUSTOM_CPU_VARIANT=native"])]
            self.dispatch = ["-DFASTCUSTOM_CPU_VARIANT=native"]
            self.cpu_flags = _native_cpu_flags(cxx or os.environ.get("CXX", "g++"))
        elif platform.machine().lower() in ("x86_64", "amd64"):
            self.name, self.march = "x86-64-v3", ["-march=x86-64-v3"]
            self.variants = [("avx2", ["-DFASTCUSTOM_CPU_VARIANT=avx2"]),
                             ("avx512", ["-DFASTCUSTOM_CPU_VARIANT=avx512", "-DFASTCUSTOM_CPU_AVX512"])]
            self.dispatch = ["-DFASTCUSTOM_CPU_AVX512_DISPATCH"]
            self.cpu_flags = list(X86_64_V3_CPU_FLAGS)
        else:
            self.name, self.march = "generic", []
            self.variants = [("generic", ["-DFASTCUSTOM_CPU_VARIANT=generic"])]
            self.dispatch = ["-DFASTCUSTOM_CPU_VARIANT=generic"]
            self.cpu_flags = []

    def compile_jobs(self, cxx_flags, sources, build_temp):
        """(command, object) for the CPU core: the dispatch once, the kernels once per variant."""
        jobs = [self._job(cxx_flags + self.march + self.dispatch, sources, CPU_DISPATCH, build_temp, "")]
        for variant, flags in self.variants:
            jobs.append(self._job(cxx_flags + self.march + flags, sources, CPU_KERNELS, build_temp,
                                  f"_{variant}"))
        return jobs

    @staticmethod
    def _job(flags, sources, source, build_temp, suffix):
        name = os.path.basename(source).rsplit(".", 1)[0] + suffix + ".o"
        obj = os.path.join(build_temp, name)
        return flags + ["-c", os.path.join(sources, source), "-o", obj], obj


def file_sha256(path):
    """The SHA-256 of the file at `path`, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _compile_all(commands, cwd):
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(lambda command: _run(command, cwd), commands))


def _link(cxx, objects, output, build_temp, extra=()):
    """Links `objects` into the shared library `output`, replaced in one step (a loader
    never sees half a file); returns the new file's SHA-256."""
    output = os.path.abspath(output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    partial = f"{output}.{os.getpid()}.partial"
    try:
        _run([cxx, "-shared", *objects, "-o", partial, *extra], build_temp)
        sha256 = file_sha256(partial)
        os.replace(partial, output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return sha256


def build_op_library(output, build_temp, sources=None, tf_config=None, native=None):
    """Compiles and links the op library into `output` and writes its record; raises BuildError.

    `native`: compile for this machine's CPU (default: FASTCUSTOM_NATIVE, else portable).
    Returns the record: {"tensorflow": version, "abi": abi_tag(...), "cuda": bool,
    "cpu_target": CpuTarget.name, "cpu_kernels": its variants, "cpu_flags": what the CPU
    must have, "sha256": the library's}.
    """
    sources = os.path.abspath(sources or source_root())
    tf_config = tf_config or tensorflow_config()
    cuda = cuda_plan(tf_config, sources)
    cxx = os.environ.get("CXX", "g++")
    target = CpuTarget(native, cxx)
    flags = ["-O3", "-DNDEBUG", f"-I{sources}", *tf_config["cflags"]]
    if cuda:
        flags += ["-DGOOGLE_CUDA=1", f"-I{os.path.join(cuda[1], 'include')}"]
    cxx_flags = [cxx, "-std=c++17", "-fPIC", "-ffp-contract=off", "-Wno-deprecated-declarations",
                 *flags]
    os.makedirs(build_temp, exist_ok=True)
    jobs = target.compile_jobs(cxx_flags, sources, build_temp)
    for source in OP_SOURCES + (CUDA_SOURCES if cuda else []):
        path = os.path.join(sources, source)
        obj = os.path.join(build_temp, os.path.basename(source) + ".o")
        if source in CUDA_SOURCES:
            jobs.append(([cuda[0], "-x", "cu", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr",
                          *CUDA_ARCHS, *flags, "-c", path, "-o", obj], obj))
        else:
            jobs.append(([*cxx_flags, *target.march, "-c", path, "-o", obj], obj))
    _compile_all([command for command, _ in jobs], build_temp)
    # The CUDA runtime is linked in, before TensorFlow, with its symbols hidden, so
    # the kernels always run on the runtime of the toolkit that compiled them. Left
    # to `-lcudart` after TensorFlow's flags, a CUDA build of TensorFlow would supply
    # `__cudaRegisterFatBinary` & co. from its own stub (its CUDA 12 runtime), and
    # tensorflow-cpu could not load the library at all (undefined symbol).
    runtime = [_cuda_static_runtime(cuda[1]), "-Wl,--exclude-libs,libcudart_static.a", "-ldl", "-lrt",
               "-lpthread"] if cuda else []
    output = os.path.abspath(output)
    sha256 = _link(cxx, [obj for _, obj in jobs] + runtime, output, build_temp, tf_config["lflags"])
    record = {"tensorflow": tf_config["version"],
              "abi": abi_tag(tf_config["version"], tf_config.get("cxx11_abi", 1)),
              "cuda": bool(cuda), "cpu_target": target.name,
              "cpu_kernels": [variant for variant, _ in target.variants],
              "cpu_flags": target.cpu_flags, "sha256": sha256}
    partial = f"{output}.{os.getpid()}.partial.json"
    with open(partial, "w") as file:
        json.dump(record, file)
    os.replace(partial, record_path(output))
    return record


def build_cpu_core_library(output, build_temp, sources=None, native=None):
    """Compiles the TF-free CPU core (csrc/cpu) with its C API into the shared library
    `output`, for ctypes (tests/test_cpu_core.py, bench/cpu/): no TensorFlow needed. The
    same flags and variants as the op library's CPU core; returns its CpuTarget."""
    sources = os.path.abspath(sources or source_root())
    cxx = os.environ.get("CXX", "g++")
    target = CpuTarget(native, cxx)
    cxx_flags = [cxx, "-std=c++17", "-fPIC", "-ffp-contract=off", "-O3", "-DNDEBUG",
                 f"-I{sources}"]
    os.makedirs(build_temp, exist_ok=True)
    jobs = target.compile_jobs(cxx_flags, sources, build_temp)
    capi = os.path.join(build_temp, "huber_cpu_capi.o")
    jobs.append(([*cxx_flags, *target.march, "-c", os.path.join(sources, CPU_CAPI), "-o", capi], capi))
    _compile_all([command for command, _ in jobs], build_temp)
    _link(cxx, [obj for _, obj in jobs], output, build_temp, ["-pthread"])
    return target
