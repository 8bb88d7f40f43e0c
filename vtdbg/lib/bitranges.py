"""Runs of set bits in a little-endian bitmap (LSB first within each byte).

Used for Windows dump page bitmaps and VMX MSR/I/O bitmaps.  Linear in the bitmap's size:
zero bytes are skipped by a regular expression, all-ones bytes are taken eight bits at a
time, and only mixed bytes are looked at bit by bit.
"""
from __future__ import annotations

import re
from typing import List, Tuple

_NONZERO = re.compile(rb"[^\x00]+")


def set_bit_runs(bitmap: bytes, bit_count: int) -> List[Tuple[int, int]]:
    """(first bit, count) of each run of set bits among the first ``bit_count`` bits."""
    runs: List[Tuple[int, int]] = []
    start = -1
    limit = min(bit_count, len(bitmap) * 8)

    def close(end: int) -> None:
        nonlocal start
        if start >= 0:
            end = min(end, limit)
            if end > start:
                runs.append((start, end - start))
            start = -1

    for match in _NONZERO.finditer(bitmap):
        base = match.start() * 8
        if base >= limit:
            break
        close(base)
        for index, byte in enumerate(match.group()):
            bit0 = base + index * 8
            if bit0 >= limit:
                break
            if byte == 0xFF:
                if start < 0:
                    start = bit0
                continue
            for bit in range(8):
                if byte >> bit & 1:
                    if start < 0:
                        start = bit0 + bit
                else:
                    close(bit0 + bit)
        close(match.end() * 8)
    close(limit)
    return runs
