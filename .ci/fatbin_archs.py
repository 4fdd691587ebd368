"""Lists the CUDA code in an ELF file's .nv_fatbin section, one line per entry.

    python3 .ci/fatbin_archs.py huber_cuda.o      # ELF file: sm_80 / PTX file: sm_90 ...

"ELF" entries are machine code (SASS) for that architecture, "PTX" entries are
compiled by the driver at load time. The same lines as `cuobjdump --list-elf` /
`--list-ptx` (without file names), for machines where cuobjdump is not
installed; works on objects (.o) and shared libraries (.so), 64-bit
little-endian ELF only.
"""

import struct
import sys

FATBIN_MAGIC = 0xBA55ED50
KINDS = {1: "PTX", 2: "ELF"}


def fatbin_entries(path):
    """[(kind, arch)] of every entry of every fatbin container, e.g. ("ELF", 90)."""
    data = open(path, "rb").read()
    if data[:6] != b"\x7fELF\x02\x01":
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    entsize, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * entsize) for i in range(count)]
    names_offset = sections[names_index][4]

    def name(offset):
        start = names_offset + offset
        return data[start:data.index(b"\0", start)].decode()

    entries = []
    for section in sections:
        if name(section[0]) != ".nv_fatbin":
            continue
        blob, pos = data[section[4]:section[4] + section[5]], 0
        while pos + 16 <= len(blob):  # containers, one after another (8-byte aligned)
            magic, _, header, size = struct.unpack_from("<IHHQ", blob, pos)
            if magic != FATBIN_MAGIC:
                pos += 8
                continue
            entry, end = pos + header, pos + header + size
            while entry < end:  # entries: kind, header size, payload size; arch at +28
                kind, _, entry_header, payload = struct.unpack_from("<HHIQ", blob, entry)
                arch = struct.unpack_from("<I", blob, entry + 28)[0]
                entries.append((KINDS.get(kind, f"kind {kind}"), arch))
                entry += entry_header + payload
            pos = end
    return entries


if __name__ == "__main__":
    for kind, arch in fatbin_entries(sys.argv[1]):
        print(f"{kind} file: sm_{arch}")
