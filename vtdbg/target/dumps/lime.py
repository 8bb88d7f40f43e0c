"""LiME (``format=lime``) memory captures (shared/reference/dump-formats.md section 3.4).

The file is a sequence of ranges, each a 32-byte header (magic 0x4C694D45, version 1,
start PA, INCLUSIVE end PA, 8 reserved bytes) followed by ``end - start + 1`` bytes.  The
walk is bounded by the file: every header must lie inside it, each step moves forward, and
a range cut short by the end of the file is kept as far as it goes, with a warning.
"""
from __future__ import annotations

from typing import List

from construct import Const, Int32ul, Int64ul, Padding, Struct

from vtdbg.lib.errors import TargetError
from vtdbg.target.dumps.physmem import MAX_PA, DumpTarget, FileMap, Run

MAGIC = 0x4C694D45
MAGIC_BYTES = MAGIC.to_bytes(4, "little")  # "EMiL" on disk
HEADER = Struct("magic" / Const(MAGIC, Int32ul), "version" / Int32ul, "start" / Int64ul, "end" / Int64ul,
                Padding(8))
HEADER_SIZE = 32


class LimeTarget(DumpTarget):
    """A LiME capture: ranges with their own physical addresses."""

    format_name = "lime"

    def __init__(self, source: FileMap) -> None:
        super().__init__(source)
        self.description = "LiME capture %s" % source.name
        runs: List[Run] = []
        cursor = 0
        while cursor < source.size:
            raw = source.read(cursor, HEADER_SIZE)
            if len(raw) < HEADER_SIZE:
                self.warnings.append("%d stray bytes after the last range" % len(raw))
                break
            if raw[:4] != MAGIC_BYTES:
                if not runs:
                    raise TargetError("%s: not a LiME file (no range header at offset 0)" % source.name)
                self.warnings.append("no LiME range header at file offset 0x%x; the rest is ignored" % cursor)
                break
            header = HEADER.parse(raw)
            if header.version != 1:
                self.warnings.append("range header at 0x%x has version %d (expected 1)" % (cursor, header.version))
            if header.end < header.start or header.end >= MAX_PA:
                raise TargetError("%s: range header at file offset 0x%x has start 0x%x and end 0x%x"
                                  % (source.name, cursor, header.start, header.end))
            length = header.end - header.start + 1
            runs.append(Run(header.start, length, cursor + HEADER_SIZE))
            cursor += HEADER_SIZE + length
        self._init_runs(runs)
        self.info["ranges"] = len(runs)


def open_lime(source: FileMap) -> LimeTarget:
    """Open a LiME capture from a mapped file."""
    return LimeTarget(source)
