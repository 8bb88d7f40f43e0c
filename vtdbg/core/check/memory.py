"""Physical memory as the checker sees it.

Some VM-entry checks read memory: the VTPR byte of the virtual-APIC page, the header of the
page the VMCS link pointer names, the guest's PAE PDPTEs when EPT is off, and the entries of
the VM-entry MSR-load area.  A check that needs memory the source cannot give raises
:class:`~vtdbg.core.check.context.Unknown` and is reported as not checked.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from vtdbg.arch._data import as_int
from vtdbg.core.check.context import Unknown
from vtdbg.lib.errors import TargetError, UsageError
from vtdbg.target.base import Capability, Target


class Memory:
    """No memory at all: every read is unknown."""

    description = "no memory source"

    def read(self, pa: int, size: int) -> bytes:
        """``size`` bytes at physical ``pa``; :class:`Unknown` when they cannot be known."""
        raise Unknown("memory", "0x%x" % pa, "%d bytes at 0x%x: %s" % (size, pa, self.description))

    def read_int(self, pa: int, size: int) -> int:
        """A little-endian integer of ``size`` bytes at ``pa``."""
        return int.from_bytes(self.read(pa, size), "little")

    def present(self, pa: int) -> Optional[bool]:
        """Whether the page at ``pa`` exists in the source's physical memory: True/False for a
        target that can tell, None for sources that model memory rather than hold it."""
        return None


class SparseMemory(Memory):
    """The snapshot model: listed little-endian writes over a sea of zeros, or (``zero=False``,
    for snapshots saved from a target) over unknown bytes."""

    def __init__(self, writes: Iterable[Tuple[int, bytes]] = (), zero: bool = True) -> None:
        self._bytes: Dict[int, int] = {}
        self.writes: List[Tuple[int, bytes]] = []
        self.zero = zero
        self.description = "snapshot memory (unlisted bytes %s)" % ("read 0" if zero else "unknown")
        for address, data in writes:
            self.write(address, data)

    def write(self, pa: int, data: bytes) -> None:
        """Record ``data`` at ``pa`` (later writes win)."""
        self.writes.append((pa, bytes(data)))
        for offset, byte in enumerate(data):
            self._bytes[pa + offset] = byte

    def read(self, pa: int, size: int) -> bytes:
        if not self.zero and any(pa + i not in self._bytes for i in range(size)):
            raise Unknown("memory", "0x%x" % pa, "%d bytes at 0x%x are not in the snapshot" % (size, pa))
        return bytes(self._bytes.get(pa + i, 0) for i in range(size))

    @classmethod
    def from_json(cls, entries: Iterable[Mapping[str, Any]], zero: bool = True) -> SparseMemory:
        """Parse the snapshot's ``"memory"`` list of ``{"address", "size", "value"}``."""
        memory = cls(zero=zero)
        for number, entry in enumerate(entries):
            try:
                address = as_int(entry["address"])
                size = as_int(entry["size"])
                value = as_int(entry["value"])
            except (KeyError, TypeError, ValueError):
                raise UsageError("snapshot memory entry %d needs integer address, size and value" % number) from None
            if size <= 0 or value < 0 or value >> (8 * size):
                raise UsageError("snapshot memory entry %d: value 0x%x does not fit in %d bytes"
                                 % (number, value, size))
            memory.write(address, value.to_bytes(size, "little"))
        return memory

    def to_json(self) -> List[Dict[str, int]]:
        """The writes in snapshot form."""
        return [{"address": pa, "size": len(data), "value": int.from_bytes(data, "little")}
                for pa, data in self.writes]


class TargetMemory(Memory):
    """Physical memory of a debugger target; unreadable ranges are unknown."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.description = "physical memory of %s" % target.description
        self._cache: Dict[Tuple[int, int], bytes] = {}

    def read(self, pa: int, size: int) -> bytes:
        if not self.target.has(Capability.PHYS_READ):
            raise Unknown("memory", "0x%x" % pa, "%s cannot read physical memory" % self.target.description)
        key = (pa, size)
        if key not in self._cache:
            try:
                data = self.target.read_phys(pa, size)
            except TargetError as exc:
                raise Unknown("memory", "0x%x" % pa, str(exc)) from None
            if len(data) != size:
                raise Unknown("memory", "0x%x" % pa, "short read at 0x%x" % pa)
            self._cache[key] = data
        return self._cache[key]

    def present(self, pa: int) -> Optional[bool]:
        try:
            self.read(pa & ~0xFFF, 1)
        except Unknown:
            return False
        return True


class RecordingMemory(Memory):
    """Wraps another source and keeps every successful read (to save a snapshot with the
    memory a later check will need)."""

    def __init__(self, inner: Memory) -> None:
        self.inner = inner
        self.description = inner.description
        self.reads: List[Tuple[int, bytes]] = []

    def read(self, pa: int, size: int) -> bytes:
        data = self.inner.read(pa, size)
        self.reads.append((pa, data))
        return data

    def present(self, pa: int) -> Optional[bool]:
        return self.inner.present(pa)
