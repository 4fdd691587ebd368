"""A damaged, truncated, foreign or too-new-for-this-CPU op library never reaches the loader.

Loading a truncated library kills the process (SIGBUS: exit 135 where mapped pages lie past
the file's end); loading one compiled for instructions the CPU lacks, too (SIGILL).
`fastcustom.ops.library_check` reads the file instead: its ELF structure, its build record's
SHA-256 and the CPU features the record names. Here: copies of the built library cut at many
points, a byte changed, another machine's header, a record asking for a CPU feature no CPU has
— each refused with the reason and `fastcustom build-ops`, in fresh processes that then
compute on the XLA path and exit 0, through FASTCUSTOM_OPS_LIBRARY, the per-user cache and
`fastcustom info`.
"""

import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys

import pytest

from fastcustom import build_ops
from fastcustom.ops import library, library_check

COMMAND = [os.path.join(os.path.dirname(sys.executable), "fastcustom")]
if not os.path.exists(COMMAND[0]):
    COMMAND = [sys.executable, "-m", "fastcustom"]


@pytest.fixture(scope="module")
def built():
    """The built op library's bytes (skipped where there is none)."""
    path = library.installed_library_path()
    if not os.path.exists(path):
        if os.environ.get("FASTCUSTOM_REQUIRE_OPS") == "1":
            pytest.fail(f"no op library at {path}")
        pytest.skip(f"no op library at {path}")
    return pathlib.Path(path).read_bytes()


def cut_points(size):
    """Where the copies are cut: from the ELF header to one byte short, and the range the
    bus errors were seen in (about 1,000 to 236,000 bytes of a 309,536-byte library)."""
    return sorted({0, 10, 63, 64, 200, 1_000, 4_096, 50_000, 150_000, 236_000, size // 2,
                   size - 4_096, size - 1} & set(range(size)))


def test_every_truncation_is_found_in_the_file(built):
    """Cheap enough to try every 997th cut: each must be reported, the whole file never."""
    assert library_check.elf_problem(built) is None
    for size in list(range(0, len(built), 997)) + cut_points(len(built)):
        assert library_check.elf_problem(built[:size]), f"a copy cut at {size} bytes passed"


def test_another_machines_or_kinds_elf_is_refused(built):
    other_machine = bytearray(built)
    other_machine[18:20] = struct.pack("<H", 183)  # EM_AARCH64 for an x86-64 file, or back
    if built[18:20] == other_machine[18:20]:
        other_machine[18:20] = struct.pack("<H", 62)  # EM_X86_64
    assert "another machine" in library_check.elf_problem(bytes(other_machine))
    executable = bytearray(built)
    executable[16:18] = struct.pack("<H", 2)  # ET_EXEC
    assert "not a shared library" in library_check.elf_problem(bytes(executable))
    assert library_check.elf_problem(b"not an ELF file") == "not an ELF file"


def write_copy(folder, data, record=None):
    """`data` as folder/_huber_ops.so, with `record` as its build record when given."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / build_ops.LIBRARY_NAME
    path.write_bytes(data)
    if record is not None:
        pathlib.Path(build_ops.record_path(str(path))).write_text(json.dumps(record))
    return path


def built_record():
    return build_ops.read_record(library.installed_library_path()) or {}


@pytest.fixture
def fresh_loader(monkeypatch):
    """The loader as if nothing was loaded yet; the real state comes back afterwards."""
    monkeypatch.setattr(library, "_loaded", None)
    monkeypatch.delenv("FASTCUSTOM_DISABLE_OPS", raising=False)
    return monkeypatch


@pytest.mark.parametrize("damage", ["a byte changed", "a CPU feature no CPU has",
                                    "no CPU features recorded"])
def test_a_library_its_record_does_not_describe_or_this_cpu_cannot_run_is_refused(
        built, tmp_path, fresh_loader, damage):
    """Neither is loaded (so this process, which holds the real library, can ask safely)."""
    record = dict(built_record(), sha256=hashlib.sha256(built).hexdigest())
    data = bytearray(built)
    if damage == "a byte changed":
        data[len(data) // 3] ^= 0xFF  # in the code: the ELF structure is intact
        expected = "SHA-256 differs"
    elif damage == "no CPU features recorded":  # an older fastcustom's -march=native build
        record = {key: record[key] for key in ("tensorflow", "abi", "cuda")}
        expected = "does not list the CPU features"
    else:
        record["cpu_flags"] = record.get("cpu_flags", []) + ["fastcustom_no_such_cpu_feature"]
        expected = "compiled for CPUs with fastcustom_no_such_cpu_feature"
        if build_ops.cpu_flags() is None:
            pytest.skip("no /proc/cpuinfo to compare with")
    path = write_copy(tmp_path, bytes(data), record)
    fresh_loader.setenv("FASTCUSTOM_OPS_LIBRARY", str(path))
    with pytest.warns(RuntimeWarning) as caught:
        assert library.huber_ops() is None
    status = library.status()
    assert status["path"] == "xla" and expected in status["reason"], status
    assert "`fastcustom build-ops`" in status["reason"]
    assert len([w for w in caught if "fastcustom" in str(w.message)]) == 1


def test_a_damaged_installed_library_gives_way_to_the_cached_one(built, tmp_path, fresh_loader):
    """What `fastcustom build-ops` built is used when the installed library is damaged."""
    record = dict(built_record(), sha256=hashlib.sha256(built).hexdigest())
    damaged = write_copy(tmp_path / "site", built[: len(built) // 2], record)
    fresh_loader.delenv("FASTCUSTOM_OPS_LIBRARY", raising=False)
    fresh_loader.setenv("FASTCUSTOM_CACHE_DIR", str(tmp_path / "cache"))
    fresh_loader.setattr(library, "installed_library_path", lambda: str(damaged))
    assert library.library_path() == str(damaged)  # no cached library: the reason is its
    cached = build_ops.cached_library(library.running_abi())
    write_copy(pathlib.Path(cached).parent, built, record)
    assert library.library_path() == cached


# Each library in argv[1:] in turn, as a fresh process would meet it first (the loader's
# state reset between them): its status, its warnings, and the Huber loss computed after.
LOAD_EACH = """
import json, os, sys, warnings
import fastcustom
from fastcustom.ops import library
results = []
for path in sys.argv[1:]:
    library._loaded = None
    os.environ["FASTCUSTOM_OPS_LIBRARY"] = path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = library.status()
        value = float(fastcustom.huber([[0.0, 0.0]], [[1.0, 3.0]], threshold=1.0)[0])
    results.append(dict(status, huber=value, warnings=[str(w.message) for w in caught]))
print(json.dumps(results))
"""


def test_truncated_libraries_fall_back_in_a_fresh_process(built, tmp_path, run_python):
    """Through FASTCUSTOM_OPS_LIBRARY, without a record (the ELF check alone) and with the
    built one's: the process lives, computes on the XLA path and exits 0."""
    paths = []
    for size in cut_points(len(built)):
        paths.append(write_copy(tmp_path / f"bare{size}", built[:size]))
        paths.append(write_copy(tmp_path / f"recorded{size}", built[:size], built_record()))
    result = run_python("-c", LOAD_EACH, *paths, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for path, status in zip(paths, json.loads(result.stdout.strip().splitlines()[-1])):
        assert status["path"] == "xla" and status["library"] is None, (path, status)
        assert status["huber"] == pytest.approx((0.5 + 2.5) / 2)
        (warning,) = [w for w in status["warnings"] if "fastcustom" in w]
        assert str(path) in warning and "`fastcustom build-ops`" in warning, warning
        assert "not an ELF file" in warning or "truncated" in warning or "cut off" in warning


# `fastcustom info` where the installed library is missing (FASTCUSTOM_BUILD_OPS=0) and
# `fastcustom build-ops` left a library in the cache: the one it finds.
INFO_FROM_THE_CACHE = """
import sys
from fastcustom import cli
from fastcustom.ops import library
library.installed_library_path = lambda: sys.argv[1]
sys.exit(cli.main(["info"]))
"""


@pytest.mark.parametrize("where", ["FASTCUSTOM_OPS_LIBRARY", "the cache"])
def test_fastcustom_info_shows_the_hint_for_a_truncated_library(built, tmp_path, run_python,
                                                                 where):
    """`fastcustom info` used to die with the library (exit 135) before it could say anything."""
    truncated = built[:100_000]
    if where == "the cache":
        cache = tmp_path / "cache"
        folder = cache / "ops" / library.running_abi()
        expected = str(write_copy(folder, truncated, built_record()))
        result = run_python("-c", INFO_FROM_THE_CACHE, tmp_path / "not_installed.so", timeout=300,
                            env={"FASTCUSTOM_CACHE_DIR": str(cache), "FASTCUSTOM_OPS_LIBRARY": None})
    else:
        expected = str(write_copy(tmp_path, truncated))
        env = dict(os.environ, FASTCUSTOM_OPS_LIBRARY=expected)
        result = subprocess.run(COMMAND + ["info"], env=env, capture_output=True, text=True,
                                timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout[result.stdout.index("{"):])
    assert info["path"] == "xla" and info["library"] is None
    assert expected in info["reason"] and "truncated" in info["reason"]
    messages = [line for line in result.stderr.splitlines() if "fastcustom" in line]
    assert len(messages) == 1 and "`fastcustom build-ops`" in messages[0], result.stderr
