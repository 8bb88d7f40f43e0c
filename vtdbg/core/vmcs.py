"""Reading a VMCS: one model for memory decodes, live VMREADs and snapshots.

Memory decodes read the 4 KiB region once, pick a layout by revision id (scored for
plausibility when ids collide) and state how far the values can be trusted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from vtdbg.arch.fields import field_by_encoding, lookup_field
from vtdbg.core.plausibility import Assessment, assess
from vtdbg.layouts.model import REGION_SIZE, Layout
from vtdbg.layouts.registry import candidates_for, get_layout
from vtdbg.lib.errors import LayoutError, UsageError
from vtdbg.target.base import Capability, Target, read_exact

#: below this confidence `auto` refuses to call a page a VMCS
MIN_CONFIDENCE = 0.6
#: said whenever a hardware-layout VMCS is read from the RAM of a running machine
STALE_VMCS_WARNING = ("values decoded from the VMCS region in memory may be stale: the CPU can keep the current "
                      "VMCS on-die (memory is guaranteed current only after VMCLEAR)")
#: VMX-abort indicator values the SDM names (0: none; 1..5, 0xd: VMX-abort reasons)
KNOWN_ABORTS = {0, 1, 2, 3, 4, 5, 0xD}


@dataclass
class LayoutChoice:
    """Why a layout was chosen."""

    layout: Layout
    confidence: float
    assessment: Optional[Assessment]
    forced: bool
    others: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class Vmcs:
    """A VMCS as read from one source.  ``values`` holds VMREAD-format values by FULL
    encoding; ``uncertain`` holds values a layout only guesses at."""

    source: str  # "memory" | "live" | "snapshot"
    revision_id: int
    shadow: bool
    values: Dict[int, int]
    address: Optional[int] = None
    abort: Optional[int] = None
    launch_state: Optional[str] = None
    layout: Optional[str] = None
    layout_confidence: Optional[float] = None
    uncertain: Dict[int, int] = field(default_factory=dict)
    status: Dict[int, str] = field(default_factory=dict)
    trust: str = ""
    warnings: List[str] = field(default_factory=list)
    evidence: Optional[Assessment] = None

    def get(self, key: Union[str, int]) -> Optional[int]:
        """A field value by name or encoding, None if the source did not supply it."""
        encoding = key if isinstance(key, int) else lookup_field(key).encoding
        return self.values.get(encoding)

    def __contains__(self, key: Union[str, int]) -> bool:
        return self.get(key) is not None

    def to_json(self) -> Dict[str, Any]:
        """The JSON shape of shared/DESIGN.md ("A VMCS in JSON")."""
        def named(values: Dict[int, int]) -> Dict[str, int]:
            out: Dict[str, int] = {}
            for encoding in sorted(values):
                known = field_by_encoding(encoding)
                out[known.name if known else "0x%04x" % encoding] = values[encoding]
            return out

        doc: Dict[str, Any] = {
            "source": self.source,
            "address": self.address,
            "revision_id": self.revision_id,
            "shadow": self.shadow,
            "abort": self.abort,
            "launch_state": self.launch_state,
            "layout": self.layout,
            "layout_confidence": self.layout_confidence,
            "trust": self.trust,
            "fields": named(self.values),
        }
        if self.uncertain:
            doc["uncertain_fields"] = named(self.uncertain)
        if self.status:
            doc["status"] = {(field_by_encoding(e).name if field_by_encoding(e) else "0x%04x" % e): s  # type: ignore[union-attr]
                             for e, s in sorted(self.status.items())}
        doc["warnings"] = list(self.warnings)
        return doc


def _decode_with(layout: Layout, page: bytes) -> Dict[int, int]:
    return {f.encoding: f.decode(page) for f in layout.field_map().values() if f.certain}


def _decode_uncertain(layout: Layout, page: bytes) -> Dict[int, int]:
    certain = {f.encoding for f in layout.fields if f.certain}
    return {f.encoding: f.decode(page) for f in layout.fields if not f.certain and f.encoding not in certain}


def header_of(page: bytes) -> Dict[str, int]:
    """Revision id (bits 30:0), shadow indicator (bit 31) and VMX-abort indicator."""
    first = int.from_bytes(page[0:4], "little")
    return {"revision_id": first & 0x7FFFFFFF, "shadow": first >> 31, "abort": int.from_bytes(page[4:8], "little")}


def choose_layout(page: bytes, layout_name: str = "auto") -> LayoutChoice:
    """Pick the layout for ``page``: a forced name always decodes; `auto` scores candidates."""
    revision = header_of(page)["revision_id"]
    if layout_name.lower() != "auto":
        layout = get_layout(layout_name)
        values = _decode_with(layout, page)
        evidence = assess(values, layout.launch_state(page))
        return LayoutChoice(layout, evidence.confidence, evidence, forced=True)
    scored = []
    for layout in candidates_for(revision):
        evidence = assess(_decode_with(layout, page), layout.launch_state(page))
        exact = revision in layout.revision_ids
        # an exact revision match breaks ties; more checks answered breaks the rest
        scored.append((evidence.confidence, exact, len(evidence.passed), layout, evidence))
    if not scored:
        raise LayoutError(
            "no known layout for revision id 0x%x; force one with --layout NAME (see `vtdbg layouts`)" % revision)
    scored.sort(key=lambda s: (s[0], s[1], s[2]), reverse=True)
    best_conf, _, _, best, evidence = scored[0]
    others = [{"layout": s[3].name, "confidence": s[0]} for s in scored[1:]]
    if best_conf < MIN_CONFIDENCE:
        detail = "; ".join("%s %.2f" % (s[3].name, s[0]) for s in scored)
        failed = ", ".join(evidence.failed[:3])
        raise LayoutError(
            "this page does not look like a VMCS of any known layout for revision 0x%x (%s; best fails: %s); "
            "force one with --layout NAME" % (revision, detail, failed))
    return LayoutChoice(best, best_conf, evidence, forced=False, others=others)


def decode_vmcs_page(page: bytes, layout_name: str = "auto", address: Optional[int] = None,
                     source_note: str = "memory image") -> Vmcs:
    """Decode a 4 KiB VMCS region (bytes already read)."""
    if len(page) < REGION_SIZE:
        raise LayoutError("a VMCS region is 4096 bytes; got %d" % len(page))
    header = header_of(page)
    choice = choose_layout(page, layout_name)
    layout = choice.layout
    warnings: List[str] = []
    if choice.forced and header["revision_id"] not in layout.revision_ids and not layout.any_revision:
        warnings.append("revision id 0x%x is not one of layout %s's (%s); decoding anyway as asked" % (
            header["revision_id"], layout.name, ", ".join("0x%x" % r for r in layout.revision_ids)))
    if choice.forced and choice.confidence < MIN_CONFIDENCE:
        warnings.append("layout %s fits this page poorly (confidence %.2f): values may be garbage"
                        % (layout.name, choice.confidence))
    close = [o for o in choice.others if o["confidence"] >= choice.confidence - 0.05]
    if close:
        warnings.append("layout %s chosen, but %s fit almost as well" % (
            layout.name, ", ".join("%s (%.2f)" % (o["layout"], o["confidence"]) for o in close)))
    if header["abort"] not in KNOWN_ABORTS:
        warnings.append("VMX-abort indicator 0x%x is not a defined abort code" % header["abort"])
    elif header["abort"]:
        warnings.append("VMX-abort indicator is %d: the logical processor hit a VMX abort" % header["abort"])
    trust = "%s, layout %s, revision 0x%x: %s" % (source_note, layout.name, header["revision_id"], layout.coherence)
    return Vmcs(
        source="memory",
        address=address,
        revision_id=header["revision_id"],
        shadow=bool(header["shadow"]),
        abort=header["abort"],
        launch_state=layout.launch_state(page),
        layout=layout.name,
        layout_confidence=choice.confidence,
        values=_decode_with(layout, page),
        uncertain=_decode_uncertain(layout, page),
        trust=trust,
        warnings=warnings,
        evidence=choice.assessment,
    )


def read_vmcs(target: Target, pa: int, layout_name: str = "auto") -> Vmcs:
    """Read and decode the VMCS region at physical ``pa`` with ONE bulk read."""
    if pa & 0xFFF:
        raise UsageError("0x%x is not 4 KiB aligned; VMCS regions are page aligned (SDM 25.2)" % pa)
    page = read_exact(target, pa, REGION_SIZE)
    if layout_name.lower() == "auto":
        # a backend that knows its implementation (Bochs reports its version, and 2.7 and
        # 2.8 share revision 0x2B with different layouts) names the layout to use
        preferred = getattr(target, "preferred_layout", None)
        if isinstance(preferred, str) and header_of(page)["revision_id"] in get_layout(preferred).revision_ids:
            layout_name = preferred
    live = target.has(Capability.LIVE)
    note = "%s memory (live)" % target.kind if live else "memory image"
    vmcs = decode_vmcs_page(page, layout_name, address=pa, source_note=note)
    layout = get_layout(vmcs.layout) if vmcs.layout else None
    # only a Bochs target is known to run a software VMX that keeps the page current; on any
    # other running machine the CPU (or a nesting hypervisor) may hold the VMCS elsewhere
    if live and not (target.kind == "bochs" and layout is not None and layout.kind == "software"):
        vmcs.warnings.append(STALE_VMCS_WARNING)
    return vmcs
