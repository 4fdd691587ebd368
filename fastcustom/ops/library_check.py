"""Checks an op library file before it is loaded: what would crash the process is reported.

Loading maps the file into this process and runs its code: a file cut short maps pages past
its end (SIGBUS when touched, a bus error that kills the interpreter), and code compiled for
instructions this CPU lacks stops it with SIGILL. So before `tf.load_op_library`, read only:

* the ELF structure: a shared library of this interpreter's class, byte order and machine,
  whose every segment and section lies within the file (any truncation fails this: the
  section header table is at the end);
* its build record (`<library>.json`, fastcustom/build_ops.py): the file's SHA-256 must be
  the one the build wrote (other damage, or a file replaced since), and this CPU must have
  every feature the build compiled for (`cpu_flags`, /proc/cpuinfo names; a record without
  them is an earlier fastcustom's, built with -march=native for a CPU it did not record).

A library without a record (one named by FASTCUSTOM_OPS_LIBRARY, built elsewhere) gets the
ELF check only. Plain Python: no TensorFlow, no loading.
"""

import hashlib
import os
import struct
import sys

from fastcustom import build_ops

_ELF_MAGIC = b"\x7fELF"
_ET_DYN, _PT_LOAD, _SHT_NOBITS = 3, 1, 8
# ELF class (1: 32-bit, 2: 64-bit) -> (header, program header, section header) layouts, after
# the 16-byte e_ident; the offsets and sizes the checks read are named below.
_LAYOUTS = {
    1: ("HHIIIIIHHHHHH", "IIIIIIII", "IIIIIIIIII"),
    2: ("HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ"),
}


def _interpreter_elf_identity():
    """(class, byte order, machine) of this Python's own executable, or None where it is no ELF."""
    for path in ("/proc/self/exe", sys.executable):
        try:
            with open(path, "rb") as file:
                head = file.read(20)
        except OSError:
            continue
        if head[:4] == _ELF_MAGIC and head[5] in (1, 2):
            order = "<" if head[5] == 1 else ">"
            return head[4], head[5], struct.unpack(order + "H", head[18:20])[0]
    return None


def elf_problem(data):
    """Why the bytes `data` are not a whole ELF shared library for this interpreter, or None."""
    size = len(data)
    if data[:4] != _ELF_MAGIC or size < 20:
        return "not an ELF file"
    elf_class, byte_order = data[4], data[5]
    if elf_class not in _LAYOUTS or byte_order not in (1, 2):
        return f"an ELF file of unknown class {elf_class} or byte order {byte_order}"
    order = "<" if byte_order == 1 else ">"
    header, program, section = (struct.Struct(order + layout) for layout in _LAYOUTS[elf_class])
    if size < 16 + header.size:
        return f"its ELF header is cut off ({size} bytes)"
    (e_type, e_machine, _, _, e_phoff, e_shoff, _, _, e_phentsize, e_phnum, e_shentsize, e_shnum,
     _) = header.unpack_from(data, 16)
    here = _interpreter_elf_identity()
    if here is not None and here != (elf_class, byte_order, e_machine):
        return (f"built for another machine (ELF class {elf_class}, byte order {byte_order}, "
                f"machine {e_machine}; this Python is {here[0]}, {here[1]}, {here[2]})")
    if e_type != _ET_DYN:
        return f"not a shared library (ELF type {e_type})"
    if e_phentsize != program.size or e_phoff + e_phnum * program.size > size:
        return f"its program headers are cut off or malformed (the file has {size} bytes)"
    loads = 0
    for i in range(e_phnum):
        fields = program.unpack_from(data, e_phoff + i * program.size)
        p_type = fields[0]
        p_offset, p_filesz = (fields[2], fields[5]) if elf_class == 2 else (fields[1], fields[4])
        loads += p_type == _PT_LOAD
        if p_offset + p_filesz > size:
            return (f"truncated: segment {i} ends at byte {p_offset + p_filesz}, past the "
                    f"file's end ({size} bytes)")
    if loads == 0:
        return "no loadable segment"
    if e_shoff:
        if e_shentsize != section.size or e_shoff + max(e_shnum, 1) * section.size > size:
            return (f"truncated: its section headers end past the file's end ({size} bytes)")
        if e_shnum == 0:  # more than 0xff00 sections: the count is section 0's sh_size
            e_shnum = section.unpack_from(data, e_shoff)[5]
            if e_shoff + e_shnum * section.size > size:
                return f"truncated: its section headers end past the file's end ({size} bytes)"
        for i in range(e_shnum):
            fields = section.unpack_from(data, e_shoff + i * section.size)
            sh_type, sh_offset, sh_size = fields[1], fields[4], fields[5]
            if sh_type != _SHT_NOBITS and sh_offset + sh_size > size:
                return (f"truncated: section {i} ends at byte {sh_offset + sh_size}, past the "
                        f"file's end ({size} bytes)")
    return None


def cpu_problem(record):
    """Why this CPU cannot run the library `record` describes (features it lacks, or a record
    that does not say), or None (also where /proc/cpuinfo cannot be read: nothing to compare)."""
    if "cpu_flags" not in record:  # fastcustom 0.1's builds were -march=native, CPU unrecorded
        return ("its build record does not list the CPU features it was compiled for (an older "
                "fastcustom's build, for the CPU that built it)")
    needed = record["cpu_flags"]
    here = build_ops.cpu_flags()
    if not needed or here is None:
        return None
    missing = sorted(set(needed) - here)
    if not missing:
        return None
    return (f"compiled for CPUs with {', '.join(missing)} ({record.get('cpu_target', 'its build')} "
            f"code), which this CPU lacks")


def problem(path, record):
    """Why the library file at `path` must not be loaded here (damaged, truncated, foreign,
    not the file its build record describes, or needing CPU features this CPU lacks), or None."""
    with open(path, "rb") as file:
        data = file.read()
    elf = elf_problem(data)
    if elf:
        return f"damaged or not a library for this machine: {elf}"
    if record and record.get("sha256") and record["sha256"] != hashlib.sha256(data).hexdigest():
        return ("damaged or replaced: it is not the file its build record "
                f"{os.path.basename(build_ops.record_path(path))} describes (SHA-256 differs)")
    return cpu_problem(record) if record else None
