"""Physical memory over a file: a run table (PA -> file offset) and the dump Target.

Readers build a list of :class:`Run` objects and hand it to :class:`DumpTarget`, which
validates it against the file (sorted, non-overlapping, inside the file: runs that point
past the end are clipped with a warning, because a partially copied dump is still worth
reading), then serves ``read_phys`` by bisection.  Nothing here trusts a size field: every
count is checked against the file size before anything is allocated from it.

Scanners may use :meth:`DumpTarget.phys_view` for zero-copy access to one run.
"""
from __future__ import annotations

import bisect
import mmap
import os
from array import array
from dataclasses import dataclass
from typing import IO, Any, Dict, Iterable, List, Optional, Tuple, Union

from vtdbg.lib.errors import MemoryReadError, TargetError
from vtdbg.target.base import Capability, Target

PAGE = 0x1000
#: physical addresses are at most 52 bits wide (SDM 4.1.4, MAXPHYADDR <= 52)
MAX_PA = 1 << 52


@dataclass(frozen=True)
class Run:
    """``length`` bytes of physical memory at ``pa`` stored at ``file_offset``."""

    pa: int
    length: int
    file_offset: int


class FileMap:
    """A read-only memory map of a whole file (empty files are refused), or bytes already
    in memory (an inflated ``.gz``) behind the same interface."""

    def __init__(self, path: str) -> None:
        self.name = path
        self._file: Optional[IO[bytes]] = None
        try:
            self._file = open(path, "rb")
        except OSError as exc:
            raise TargetError("cannot open %s: %s" % (path, exc.strerror)) from None
        self.size = os.fstat(self._file.fileno()).st_size
        if self.size == 0:
            self._file.close()
            raise TargetError("%s is empty" % path)
        try:
            self.map: Optional[Union[mmap.mmap, bytes]] = mmap.mmap(self._file.fileno(), 0,
                                                                    access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            self._file.close()
            raise TargetError("cannot map %s: %s" % (path, exc)) from None

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> FileMap:
        """The same interface over ``data`` (no file behind it)."""
        if not data:
            raise TargetError("%s is empty" % name)
        self = cls.__new__(cls)
        self.name = name
        self._file = None
        self.size = len(data)
        self.map = bytes(data)
        return self

    def read(self, offset: int, size: int) -> bytes:
        """Bytes at ``offset``; short only when the file ends (callers check)."""
        if self.map is None:
            raise TargetError("file is closed")
        if offset < 0 or size < 0 or offset >= self.size:
            return b""
        return self.map[offset:offset + size]

    def close(self) -> None:
        """Unmap and close; idempotent."""
        if isinstance(self.map, mmap.mmap):
            self.map.close()
        self.map = None
        if self._file is not None and not self._file.closed:
            self._file.close()


def normalise_runs(runs: Iterable[Run], file_size: int, warnings: List[str], what: str = "run") -> List[Run]:
    """Sort, clip to the file and drop overlaps; every change is explained in ``warnings``.

    Clipping keeps whole pages only when the run started page-aligned, so a truncated dump
    never yields a half page that would look like valid memory followed by nothing.
    """
    out: List[Run] = []
    clipped = 0
    repeats = 0
    beyond = 0
    aliased = 0
    mapped = 0
    for run in sorted(runs, key=lambda r: (r.pa, r.file_offset)):
        if run.length <= 0:
            continue
        if run.pa < 0 or run.pa + run.length > MAX_PA:
            beyond += 1
            continue
        length = run.length
        if run.file_offset >= file_size:
            clipped += length
            continue
        if run.file_offset + length > file_size:
            keep = file_size - run.file_offset
            if run.pa % PAGE == 0:
                keep -= keep % PAGE
            clipped += length - keep
            length = keep
            if length <= 0:
                continue
        if out and run.pa < out[-1].pa + out[-1].length:
            overlap_end = out[-1].pa + out[-1].length
            repeats += 1
            if run.pa + length <= overlap_end:
                continue
            cut = overlap_end - run.pa
            run = Run(overlap_end, length - cut, run.file_offset + cut)
            length = run.length
        if mapped + length > file_size:
            # runs that alias the same file bytes at many addresses would make a small
            # hostile file look like terabytes of memory
            aliased += 1
            continue
        mapped += length
        last = out[-1] if out else None
        if last is not None and last.pa + last.length == run.pa and last.file_offset + last.length == run.file_offset:
            # contiguous in memory and in the file: one run, so scanners get one view
            out[-1] = Run(last.pa, last.length + length, last.file_offset)
        else:
            out.append(Run(run.pa, length, run.file_offset))
    if beyond:
        warnings.append("%d %s(s) lie beyond 52-bit physical memory; ignored" % (beyond, what))
    if aliased:
        warnings.append("%d %s(s) ignored: together the runs would map more bytes than the file holds"
                        % (aliased, what))
    if repeats:
        warnings.append("%d %s(s) overlap memory already mapped (first copy kept)" % (repeats, what))
    if clipped:
        warnings.append("the file is truncated: 0x%x bytes of memory the header describes are missing" % clipped)
    return out


class DumpTarget(Target):
    """A memory dump: physical reads through a run table, no execution control.

    Subclasses (one per format) parse their header and call :meth:`_init_runs`.
    ``registers()`` is offered only when the format stores CPU context.
    """

    kind = "dump"
    capabilities = Capability.PHYS_READ | Capability.VIRT_READ
    #: short format name shown to users ("windows-full", "elf", ...)
    format_name = "dump"

    def __init__(self, source: FileMap, description: str = "") -> None:
        path = source.name
        super().__init__(description or "%s %s" % (self.format_name, path))
        self.path = path
        self.file = source
        self.warnings: List[str] = []
        self._starts = array("Q")
        self._runs: List[Run] = []
        self._cpu_regs: List[Dict[str, int]] = []
        self._cpu = 0
        self._cpu_total = 0
        #: format-specific facts for `triage` and `info` (JSON-ready)
        self.info: Dict[str, Any] = {"format": self.format_name, "path": path, "file_size": self.file.size}

    # -- building -------------------------------------------------------------------------
    def _init_runs(self, runs: Iterable[Run]) -> None:
        self._runs = normalise_runs(runs, self.file.size, self.warnings)
        self._starts = array("Q", (r.pa for r in self._runs))
        self.info["runs"] = len(self._runs)
        self.info["present_bytes"] = sum(r.length for r in self._runs)

    def _init_cpus(self, regs: List[Dict[str, int]]) -> None:
        """Offer REGS (and CPU_SELECT for several CPUs) from per-CPU register sets."""
        self._cpu_regs = [dict(r) for r in regs if r]
        caps = type(self).capabilities
        if self._cpu_regs:
            caps |= Capability.REGS
        if len(self._cpu_regs) > 1:
            caps |= Capability.CPU_SELECT
        self.capabilities = caps

    # -- the Target protocol --------------------------------------------------------------
    def runs(self) -> List[Run]:
        """The run table (sorted by PA, non-overlapping, inside the file)."""
        return list(self._runs)

    def phys_ranges(self) -> List[Tuple[int, int]]:
        """Present physical ranges, adjacent runs merged."""
        merged: List[Tuple[int, int]] = []
        for run in self._runs:
            if merged and merged[-1][0] + merged[-1][1] == run.pa:
                merged[-1] = (merged[-1][0], merged[-1][1] + run.length)
            else:
                merged.append((run.pa, run.length))
        return merged

    def _run_at(self, pa: int) -> Optional[Run]:
        index = bisect.bisect_right(self._starts, pa) - 1
        if index < 0:
            return None
        run = self._runs[index]
        return run if pa < run.pa + run.length else None

    def read_phys(self, pa: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``pa`` (possibly spanning adjacent runs)."""
        if pa < 0 or size < 0:
            raise MemoryReadError(pa, size, "negative address or size")
        if self.file.map is None:
            raise MemoryReadError(pa, size, "dump is closed")
        if size == 0:
            return b""
        parts: List[bytes] = []
        cursor, end = pa, pa + size
        while cursor < end:
            run = self._run_at(cursor)
            if run is None:
                raise MemoryReadError(pa, size, "physical address 0x%x is not in the dump" % cursor)
            take = min(end, run.pa + run.length) - cursor
            offset = run.file_offset + (cursor - run.pa)
            parts.append(self.file.map[offset:offset + take])
            cursor += take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def phys_view(self, pa: int, size: int) -> memoryview:
        """A zero-copy view of ``size`` bytes at ``pa`` inside ONE run (for scanners)."""
        run = self._run_at(pa)
        if run is None or pa + size > run.pa + run.length or self.file.map is None:
            raise MemoryReadError(pa, size, "not one contiguous run of the dump")
        offset = run.file_offset + (pa - run.pa)
        return memoryview(self.file.map)[offset:offset + size]

    def registers(self) -> Dict[str, int]:
        """Registers the dump stored for the current CPU."""
        if not self._cpu_regs:
            return super().registers()
        return dict(self._cpu_regs[self._cpu])

    def cpu_count(self) -> int:
        """CPUs the dump knows of (at least 1; more than have stored registers when the
        format records only the processor count, as Windows dumps do)."""
        return max(1, len(self._cpu_regs), self._cpu_total)

    def current_cpu(self) -> int:
        """The CPU whose registers ``registers()`` returns."""
        return self._cpu

    def _switch_cpu(self, cpu: int) -> None:
        if not 0 <= cpu < len(self._cpu_regs):
            raise TargetError("the dump holds no CPU %d (%d stored)" % (cpu, len(self._cpu_regs)))
        self._cpu = cpu

    def close(self) -> None:
        """Unmap the file; idempotent."""
        self.file.close()


def file_size_of(path: str) -> int:
    """Size of ``path`` in bytes (TargetError when it cannot be read)."""
    try:
        return os.path.getsize(path)
    except OSError as exc:
        raise TargetError("cannot open %s: %s" % (path, exc.strerror)) from None
