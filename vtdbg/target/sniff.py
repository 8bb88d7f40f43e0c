"""Recognising a memory file's format from its first bytes (``dump:FILE`` and bare paths).

Formats with their own reader (vtdbg/target/dumps) are dispatched here by magic: Windows
x64 crash dumps ("PAGEDU64"), ELF cores, LiME captures, VMware state files, and ``.vmem``
files by their extension (they have no magic).  A gzip file is inflated (with a size cap)
and its content sniffed again, so a compressed fixture of any format opens directly.
Anything unrecognised is a raw physical image (file offset = physical address), and the
target's description says so.
"""
from __future__ import annotations

import gzip
import os
from typing import Callable, Dict

from vtdbg.lib.errors import TargetError
from vtdbg.target.base import Target
from vtdbg.target.dumps.physmem import DumpTarget, FileMap

#: largest gzip-compressed dump we inflate into memory
MAX_INFLATED = 1 << 30


def sniff_bytes(head: bytes, path: str = "") -> str:
    """A short format name for a file starting with ``head``."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:8] == b"PAGEDU64":
        return "windows"
    if head[:8] == b"PAGEDUMP":
        return "windows32"
    if head[:4] == b"\x7fELF":
        return "elf"
    if head[:4] == b"EMiL":
        return "lime"
    from vtdbg.target.dumps.vmware import MAGIC_BYTES

    if head[:4] in MAGIC_BYTES:
        return "vmware-state"
    if path.lower().endswith(".vmem"):
        return "vmem"
    return "raw"


def sniff(path: str) -> str:
    """The format name of the file at ``path`` ("windows", "elf", "lime", "vmware-state",
    "vmem", "gzip", "raw", ...)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise TargetError("cannot open %s: %s" % (path, exc.strerror)) from None
    return sniff_bytes(head, path)


def _inflate(path: str, limit: int) -> bytes:
    out = bytearray()
    try:
        with gzip.open(path, "rb") as handle:
            while True:
                chunk = handle.read(1 << 20)
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    raise TargetError("%s inflates to more than %d MiB; unpack it first" % (path, limit >> 20))
    except (OSError, EOFError, ValueError) as exc:
        raise TargetError("cannot read gzip file %s: %s" % (path, exc)) from None
    return bytes(out)


def _readers() -> Dict[str, Callable[[FileMap], DumpTarget]]:
    from vtdbg.target.dumps.elf import open_elf
    from vtdbg.target.dumps.lime import open_lime
    from vtdbg.target.dumps.raw import open_raw
    from vtdbg.target.dumps.vmware import open_state, open_vmem
    from vtdbg.target.dumps.windows import open_windows

    return {"windows": open_windows, "windows32": open_windows, "elf": open_elf, "lime": open_lime,
            "vmware-state": open_state, "vmem": open_vmem, "raw": open_raw}


def open_source(source: FileMap, fmt: str) -> DumpTarget:
    """Open an already mapped file with the reader for ``fmt``; closes it on failure."""
    try:
        target = _readers()[fmt](source)
    except BaseException:
        source.close()
        raise
    if fmt == "raw":
        target.description = "raw memory image %s (format not recognised: file offset = physical address)" \
            % source.name
    return target


def open_dump(path: str, inflate_limit: int = MAX_INFLATED) -> Target:
    """Open a memory file with the reader its format needs."""
    if not os.path.isfile(path):
        raise TargetError("no such file: %s" % path)
    fmt = sniff(path)
    if fmt == "gzip":
        data = _inflate(path, inflate_limit)
        inner = path[:-3] if path.lower().endswith(".gz") else path
        fmt = sniff_bytes(data[:16], inner)
        if fmt == "vmem":
            fmt = "raw"  # the companion state file cannot be matched to an inflated copy
        return open_source(FileMap.from_bytes(data, path), fmt)
    return open_source(FileMap(path), fmt)
