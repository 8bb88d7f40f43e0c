"""Finding VMCS regions in physical memory when no address is given.

A simple page-aligned pass: a page is a candidate when its revision id (bits 30:0) is one
some known layout claims and its VMX-abort indicator is a defined value; candidates are
kept when `auto` layout selection finds them plausible.  CPU n of an image is the nth VMCS
found (shared/DESIGN.md, "CPUs").  Work is bounded by the image size and one read per
chunk; the post-mortem scanner (issue 7) builds on this.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator, List, Optional, Set, Tuple

from vtdbg.core.vmcs import KNOWN_ABORTS, MIN_CONFIDENCE, choose_layout
from vtdbg.layouts.registry import all_layouts
from vtdbg.lib.errors import LayoutError, MemoryReadError
from vtdbg.target.base import Target

CHUNK = 4 << 20
PAGE = 0x1000


@dataclass(frozen=True)
class Candidate:
    """A page that decodes plausibly as a VMCS."""

    pa: int
    revision_id: int
    layout: str
    confidence: float


def known_revision_ids() -> Set[int]:
    """Every revision id some auto-selectable layout claims."""
    layouts, _ = all_layouts()
    return {r for l in layouts if l.auto for r in l.revision_ids}


def _pages(target: Target, ranges: List[Tuple[int, int]]) -> Iterator[Tuple[int, bytes]]:
    for start, length in ranges:
        first = (start + PAGE - 1) & ~(PAGE - 1)
        end = start + length
        cursor = first
        while cursor + PAGE <= end:
            size = min(CHUNK, (end - cursor) & ~(PAGE - 1))
            try:
                chunk = target.read_phys(cursor, size)
            except MemoryReadError:
                cursor += size
                continue
            for offset in range(0, size, PAGE):
                yield cursor + offset, chunk[offset:offset + PAGE]
            cursor += size


def find_vmcs(target: Target, limit: Optional[int] = None) -> List[Candidate]:
    """VMCS candidates in physical-address order (at most ``limit``)."""
    revisions = known_revision_ids()
    ranges = target.phys_ranges()
    found: List[Candidate] = []
    for pa, page in _pages(target, ranges):
        first, abort = struct.unpack_from("<II", page, 0)
        revision = first & 0x7FFFFFFF
        if revision not in revisions or abort not in KNOWN_ABORTS or not any(page[8:]):
            continue
        try:
            choice = choose_layout(page)
        except LayoutError:
            continue
        if choice.confidence >= MIN_CONFIDENCE:
            found.append(Candidate(pa, revision, choice.layout.name, choice.confidence))
            if limit is not None and len(found) >= limit:
                break
    return found
