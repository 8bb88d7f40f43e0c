"""x86-64 linear-to-physical translation by walking page tables with physical reads.

Bounded by construction: at most 5 levels per translation and one translation per page of
the requested range, so cyclic or garbage tables cannot loop.
"""
from __future__ import annotations

import struct
from typing import Callable, List, Tuple

from vtdbg.lib.errors import MemoryReadError

PhysReader = Callable[[int, int], bytes]

_PRESENT = 1
_PAGE_SIZE_BIT = 1 << 7
_ADDR_MASK = 0x000FFFFFFFFFF000
#: size of the page mapped by a leaf at each level (PML5/PML4 cannot be leaves)
_LEAF_SIZES = {3: 1 << 30, 2: 1 << 21, 1: 1 << 12}


def translate(read_phys: PhysReader, cr3: int, va: int, levels: int = 4) -> Tuple[int, List[Tuple[int, int]]]:
    """Translate ``va`` through the tables at ``cr3``.

    Returns the physical address and the (entry address, entry value) of each level, or
    raises :class:`MemoryReadError` for a non-present entry.
    """
    table = cr3 & _ADDR_MASK
    walk: List[Tuple[int, int]] = []
    for level in range(levels, 0, -1):
        index = (va >> (12 + 9 * (level - 1))) & 0x1FF
        entry_pa = table + index * 8
        (entry,) = struct.unpack("<Q", read_phys(entry_pa, 8))
        walk.append((entry_pa, entry))
        if not entry & _PRESENT:
            raise MemoryReadError(va, 1, "linear address not mapped (level %d entry 0x%x)" % (level, entry))
        if level in (3, 2) and entry & _PAGE_SIZE_BIT or level == 1:
            size = _LEAF_SIZES[level]
            base = entry & _ADDR_MASK & ~(size - 1)
            return base | (va & (size - 1)), walk
        table = entry & _ADDR_MASK
    raise MemoryReadError(va, 1, "page walk did not end")  # pragma: no cover - loop always returns


def read_linear(read_phys: PhysReader, cr3: int, va: int, size: int, levels: int = 4) -> bytes:
    """Read ``size`` bytes of linear memory, page by page."""
    out = bytearray()
    cursor = va
    end = va + size
    while cursor < end:
        chunk = min(end - cursor, 0x1000 - (cursor & 0xFFF))
        pa, _ = translate(read_phys, cr3, cursor, levels)
        out += read_phys(pa, chunk)
        cursor += chunk
    return bytes(out)
