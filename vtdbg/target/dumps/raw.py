"""Raw physical images (dd, WinPmem raw, LiME ``padded``): file offset = physical address.

Unlike ``image:`` (vtdbg.target.image), this reader is what ``dump:`` and bare paths fall
back to when no format is recognised, and it offers the zero-copy ``phys_view`` the
scanner uses.  A zero-filled MMIO hole looks like RAM here; the file has no run list.
"""
from __future__ import annotations

from vtdbg.target.dumps.physmem import DumpTarget, FileMap, Run


class RawTarget(DumpTarget):
    """The whole file is physical memory from address 0."""

    kind = "image"
    format_name = "raw"

    def __init__(self, source: FileMap) -> None:
        super().__init__(source)
        self.description = "raw memory image %s" % source.name
        self._init_runs([Run(0, source.size, 0)])


def open_raw(source: FileMap) -> RawTarget:
    """Open a raw image from a mapped file."""
    return RawTarget(source)
