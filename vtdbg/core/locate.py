"""Finding VMCS regions in physical memory when no address is given.

Uses the fast page filter of :mod:`vtdbg.core.scan`: only pages whose first dword is a
revision id some known layout claims (with or without the shadow bit) are read whole; a
candidate is kept when its VMX-abort indicator is a defined value and `auto` layout
selection finds it plausible.  CPU n of an image is the nth VMCS found, in physical-address
order (shared/DESIGN.md, "CPUs").  Work is bounded by the image size: one pass over the
present ranges and one page read per candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Set

from vtdbg.core.scan import classify_vmcs, page_candidates
from vtdbg.core.scan import known_revision_ids as _known_revision_ids
from vtdbg.lib.errors import MemoryReadError
from vtdbg.target.base import Target

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
    return _known_revision_ids()


def find_vmcs(target: Target, limit: Optional[int] = None) -> List[Candidate]:
    """VMCS candidates in physical-address order (at most ``limit``)."""
    found: List[Candidate] = []
    for pa, _ in page_candidates(target):
        try:
            page = target.read_phys(pa, PAGE)
        except MemoryReadError:
            continue
        candidate = classify_vmcs(page, pa)
        if candidate is None:
            continue
        found.append(Candidate(pa, candidate.revision_id, candidate.layout, candidate.confidence))
        if limit is not None and len(found) >= limit:
            break
    return found
