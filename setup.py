"""Builds fastcustom: the Python package and its fused Huber op library.

    pip install ".[cpu]"                   # one step: pip's isolated build environment
                                           # holds tensorflow-cpu 2.21 (pyproject.toml's
                                           # build requirements), the op is compiled
                                           # against it, the package requires 2.21 to run
    python -m build                        # the same, into a wheel (and an sdist)
    python setup.py build_ext --inplace    # developers: fastcustom/ops/_huber_ops.so in place,
                                           # against the TensorFlow this Python imports

The op library is compiled with `tf.sysconfig.get_compile_flags()` and
`get_link_flags()` of the TensorFlow importable where the build runs (the build
requirement under build isolation, the environment's own without it), and a record
of that TensorFlow (`_huber_ops.so.json`) is installed beside it: the loader checks
it against the running TensorFlow, and `fastcustom build-ops` rebuilds the library
after an upgrade. The kernel sources are installed too (`fastcustom/_csrc`), for that
command. When the compiler fails the package installs without the library and
`fastcustom` uses its XLA path.

Environment:
  FASTCUSTOM_BUILD_OPS=0   skip the op library (a pure-Python package)
  FASTCUSTOM_NATIVE=1      code for this machine's CPU only (-march=native); by default the
                           library is portable: x86-64-v3 (AVX2) code, its kernels also
                           compiled for AVX-512 and chosen at run time (docs/building.md)
  FASTCUSTOM_CUDA=0 / 1    never / always compile the CUDA kernels (the default is in
                           fastcustom/build_ops.py: nvcc found and TensorFlow built with
                           CUDA or a CUDA driver installed)
  CXX, NVCC                the compilers (default g++, nvcc)
"""

import importlib.util
import os
import sys
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
OP_LIBRARY = "fastcustom.ops._huber_ops"


def _load_build_ops():
    """fastcustom/build_ops.py, loaded by path: importing the package would import TensorFlow."""
    spec = importlib.util.spec_from_file_location(
        "_fastcustom_build_ops", os.path.join(ROOT, "fastcustom", "build_ops.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_ops = _load_build_ops()


def _flag(name, default):
    value = os.environ.get(name, "").strip().lower()
    return default if value == "" else value not in ("0", "false", "no", "off")


class BuildOpLibrary(build_ext):
    """Builds the op library (a TensorFlow plugin, not a Python extension) with g++/nvcc."""

    def get_ext_filename(self, fullname):
        if fullname.split(".")[-1] == OP_LIBRARY.split(".")[-1]:
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)

    def get_outputs(self):
        outputs = super().get_outputs()
        return outputs + [build_ops.record_path(o) for o in outputs if o.endswith(build_ops.LIBRARY_NAME)]

    def copy_extensions_to_source(self):
        # In place (`--inplace`, `pip install -e .`): the library's build record goes with it.
        super().copy_extensions_to_source()
        for regular, inplace in self._record_mapping():
            self.copy_file(regular, inplace, level=self.verbose)

    def _get_output_mapping(self):
        yield from super()._get_output_mapping()
        if self.inplace:
            yield from self._record_mapping()

    def _record_mapping(self):
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace, regular = self._get_inplace_equivalent(build_py, ext)
            if os.path.exists(build_ops.record_path(regular)):
                yield build_ops.record_path(regular), build_ops.record_path(inplace)

    def build_extensions(self):
        # A library that failed to build is dropped: nothing to copy in place or install.
        self.extensions = [ext for ext in self.extensions if self._build(ext)]

    def _build(self, ext):
        output = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_temp = os.path.abspath(os.path.join(self.build_temp, "fastcustom_ops"))
        try:
            record = build_ops.build_op_library(output, build_temp, sources=os.path.join(ROOT, "csrc"))
        except build_ops.BuildError as error:
            for stale in (output, build_ops.record_path(output)):
                if os.path.exists(stale):
                    os.remove(stale)
            warnings.warn(f"fastcustom: the fused Huber op library was not built ({error}); "
                          "the package will use its XLA path.")
            return False
        print(f"fastcustom: built {output} for TensorFlow {record['tensorflow']}"
              f"{' with CUDA kernels' if record['cuda'] else ''}", file=sys.stderr)
        return True


class BuildPyWithKernelSources(build_py):
    """Also installs csrc/ as fastcustom/_csrc, the sources `fastcustom build-ops` compiles."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):  # an editable install finds csrc/ beside the package
            build_ops.copy_sources(os.path.join(ROOT, "csrc"),
                                   os.path.join(self.build_lib, "fastcustom", "_csrc"))


ext_modules = []
if _flag("FASTCUSTOM_BUILD_OPS", True):
    ext_modules.append(Extension(OP_LIBRARY, sources=[f"csrc/{s}" for s in build_ops.CPU_SOURCES]))

setup(ext_modules=ext_modules,
      cmdclass={"build_ext": BuildOpLibrary, "build_py": BuildPyWithKernelSources})
