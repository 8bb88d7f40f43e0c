"""Scanning physical memory for VT-x state: VMXON and VMCS regions, their EPT hierarchies,
and how they group into CPUs, VMs, hypervisors and nested guests.

Speed comes from touching as little as possible: the filter reads only the first dword of
each 4 KiB page, taken from big chunks as a strided ``memoryview`` (zero-copy over a dump's
memory map when the target offers ``phys_view``), and compares those dwords with the set
of known revision ids in C (``set.intersection``).  Only the few candidate pages are read
whole and validated: revision id, VMX-abort indicator, layout plausibility
(:func:`vtdbg.core.vmcs.choose_layout`) and, where the host's page tables are in the image,
whether HOST_CR3 maps the page (the self-mapping test of Actaeon and Rekall,
shared/reference/vmcs-layouts.md section 3).

All work is bounded: one pass over the present ranges, one page read per candidate, page
table and EPT walks capped by table counts.
"""
from __future__ import annotations

import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from vtdbg.arch.fields import lookup_field
from vtdbg.core.ept import EptError, EptWalker, MapRange, ept_summary, hpa_to_gpa
from vtdbg.core.vmcs import KNOWN_ABORTS, MIN_CONFIDENCE, choose_layout, header_of
from vtdbg.layouts.registry import all_layouts
from vtdbg.lib.errors import LayoutError, MemoryReadError
from vtdbg.target.base import Target

PAGE = 0x1000
#: bytes examined per step of the page filter (a view over a memory map costs nothing)
VIEW_CHUNK = 64 << 20
#: bytes per read when the target only offers read_phys
READ_CHUNK = 4 << 20
#: page-table pages a host-CR3 mapping check may read
MAX_HOST_TABLES = 512
#: candidates validated at most (a hostile image full of revision ids cannot stall a scan)
MAX_CANDIDATES = 100000
SHADOW = 0x80000000

Progress = Callable[[int, int], None]

_FIELDS = ("HOST_RIP", "HOST_RSP", "HOST_CR3", "HOST_CR4", "GUEST_CR3", "GUEST_RIP", "EPT_POINTER",
           "HOST_TR_BASE", "HOST_GS_BASE", "VMCS_LINK_POINTER", "VM_EXIT_REASON", "CPU_BASED_VM_EXEC_CONTROL",
           "SECONDARY_VM_EXEC_CONTROL", "VM_EXIT_CONTROLS")


def _enc(name: str) -> int:
    return lookup_field(name).encoding


def known_revision_ids() -> Set[int]:
    """Every revision id an auto-selectable layout claims (bits 30:0)."""
    layouts, _ = all_layouts()
    return {r & 0x7FFFFFFF for lay in layouts if lay.auto for r in lay.revision_ids}


def _wanted(revisions: Iterable[int]) -> frozenset:
    ids = {r & 0x7FFFFFFF for r in revisions}
    return frozenset(ids | {r | SHADOW for r in ids})


def _firsts(view: Any) -> List[int]:
    """The first little-endian dword of every page of ``view`` (a multiple of 4 KiB)."""
    mv = memoryview(view)
    try:
        if sys.byteorder == "little":
            return mv.cast("B").cast("I")[::PAGE // 4].tolist()
        return [int.from_bytes(mv[o:o + 4], "little") for o in range(0, len(mv), PAGE)]
    finally:
        mv.release()


def page_candidates(target: Target, revisions: Optional[Iterable[int]] = None,
                    progress: Optional[Progress] = None,
                    ranges: Optional[List[Tuple[int, int]]] = None) -> List[Tuple[int, int]]:
    """(pa, first dword) of every page whose first dword is a wanted revision id (with or
    without the shadow bit), in physical-address order."""
    wanted = _wanted(known_revision_ids() if revisions is None else revisions)
    ranges = target.phys_ranges() if ranges is None else ranges
    total = sum(length for _, length in ranges)
    done = 0
    hits: List[Tuple[int, int]] = []
    view_of = getattr(target, "phys_view", None)
    for start, length in ranges:
        first = (start + PAGE - 1) & ~(PAGE - 1)
        end = start + length
        cursor = first
        while cursor + PAGE <= end:
            step = min(VIEW_CHUNK if view_of else READ_CHUNK, (end - cursor) & ~(PAGE - 1))
            firsts: List[int] = []
            try:
                firsts = _firsts(view_of(cursor, step) if view_of else target.read_phys(cursor, step))
            except MemoryReadError:
                # a view cannot span two runs of a dump; a copy can
                try:
                    firsts = _firsts(target.read_phys(cursor, step)) if view_of else []
                except MemoryReadError:
                    firsts = []
            common = wanted.intersection(firsts)
            if common:
                hits.extend((cursor + i * PAGE, v) for i, v in enumerate(firsts) if v in common)
            cursor += step
            done += step
            if progress is not None:
                progress(done, total)
    return hits


@dataclass
class VmcsCandidate:
    """A page that decodes plausibly as a VMCS."""

    pa: int
    revision_id: int
    shadow: bool
    abort: int
    layout: str
    layout_kind: str
    confidence: float
    launch_state: Optional[str]
    values: Dict[str, int] = field(default_factory=dict)
    host_cr3_maps_page: Optional[bool] = None
    host_va: Optional[int] = None
    nested: bool = False
    nested_in: Optional[int] = None
    gpa: Optional[int] = None
    vmcs01: Optional[int] = None
    vmcs02: Optional[int] = None
    vm: Optional[int] = None
    host_cpu: Optional[int] = None

    @property
    def eptp(self) -> Optional[int]:
        """The EPT pointer when EPT is enabled by this VMCS's controls, else None."""
        proc = self.values.get("CPU_BASED_VM_EXEC_CONTROL", 0)
        proc2 = self.values.get("SECONDARY_VM_EXEC_CONTROL", 0)
        eptp = self.values.get("EPT_POINTER")
        if eptp and proc >> 31 & 1 and proc2 >> 1 & 1:
            return eptp
        return None

    def to_json(self, index: int) -> Dict[str, Any]:
        """One entry of ``scan --json``'s "vmcs" list."""
        return {"pa": self.pa, "revision_id": self.revision_id, "layout": self.layout, "index": index,
                "layout_kind": self.layout_kind, "layout_confidence": self.confidence, "shadow": self.shadow,
                "abort": self.abort, "launch_state": self.launch_state,
                "host_rip": self.values.get("HOST_RIP"), "host_cr3": self.values.get("HOST_CR3"),
                "guest_cr3": self.values.get("GUEST_CR3"), "guest_rip": self.values.get("GUEST_RIP"),
                "eptp": self.eptp, "host_cr3_maps_page": self.host_cr3_maps_page, "host_va": self.host_va,
                "vm": self.vm, "host_cpu": self.host_cpu, "nested": self.nested, "nested_in": self.nested_in,
                "gpa": self.gpa, "vmcs01": self.vmcs01, "vmcs02": self.vmcs02}


@dataclass
class VmxonCandidate:
    """A page that looks like a VMXON region."""

    pa: int
    revision_id: int
    confidence: str  # "strong" | "weak"
    reason: str

    def to_json(self) -> Dict[str, Any]:
        """One entry of ``scan --json``'s "vmxon" list."""
        return {"pa": self.pa, "revision_id": self.revision_id, "confidence": self.confidence, "reason": self.reason}


@dataclass
class ScanResult:
    """Everything a scan found."""

    vmcs: List[VmcsCandidate]
    vmxon: List[VmxonCandidate]
    ept: List[Dict[str, Any]]
    vms: List[Dict[str, Any]]
    cpus: List[Dict[str, Any]]
    hypervisors: List[Dict[str, Any]]
    revision_groups: List[Dict[str, Any]]
    scanned_bytes: int
    candidates: int
    seconds: float
    warnings: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """The ``vtdbg scan --json`` contract: vmxon, vmcs, ept (and more keys)."""
        return {"vmxon": [v.to_json() for v in self.vmxon],
                "vmcs": [v.to_json(i) for i, v in enumerate(self.vmcs)],
                "ept": list(self.ept), "vms": list(self.vms), "cpus": list(self.cpus),
                "hypervisors": list(self.hypervisors), "revision_groups": list(self.revision_groups),
                "scanned_bytes": self.scanned_bytes, "candidates_checked": self.candidates,
                "seconds": round(self.seconds, 3), "warnings": list(self.warnings)}


def classify_vmcs(page: bytes, pa: int) -> Optional[VmcsCandidate]:
    """A VMCS candidate for ``page`` when its header and `auto` layout choice are plausible."""
    header = header_of(page)
    if header["abort"] not in KNOWN_ABORTS or not any(page[8:]):
        return None
    try:
        choice = choose_layout(page)
    except LayoutError:
        return None
    if choice.confidence < MIN_CONFIDENCE:
        return None
    layout = choice.layout
    fields = layout.field_map()
    values = {}
    for name in _FIELDS:
        item = fields.get(_enc(name))
        if item is not None and item.certain:
            values[name] = item.decode(page)
    return VmcsCandidate(pa, header["revision_id"], bool(header["shadow"]), header["abort"], layout.name,
                         layout.kind, choice.confidence, layout.launch_state(page), values)


def host_mapping(read_phys: Callable[[int, int], bytes], cr3: int, pa: int, levels: int = 4,
                 max_tables: int = MAX_HOST_TABLES) -> Tuple[Optional[int], bool]:
    """A linear address at which the tables at ``cr3`` map physical page ``pa``.

    Returns (va or None, complete): ``complete`` is False when a table was missing or the
    table budget ran out, so "not found" cannot be trusted.
    """
    target_page = pa & ~(PAGE - 1)
    budget = [max_tables]
    complete = [True]
    spans = {5: 1 << 48, 4: 1 << 39, 3: 1 << 30, 2: 1 << 21, 1: 1 << 12}

    def visit(table: int, level: int, base: int, path: Tuple[int, ...]) -> Optional[int]:
        if table in path:
            return None  # a loop in the host tables: nothing new below
        if budget[0] <= 0:
            complete[0] = False
            return None
        budget[0] -= 1
        try:
            entries = struct.unpack("<512Q", read_phys(table, PAGE))
        except MemoryReadError:
            complete[0] = False
            return None
        for index, entry in enumerate(entries):
            if not entry & 1:
                continue
            va = base + index * spans[level]
            frame = entry & 0x000FFFFFFFFFF000
            if level == 1 or (level in (2, 3) and entry & 0x80):
                size = spans[level]
                start = frame & ~(size - 1)
                if start <= target_page < start + size:
                    return va + (target_page - start)
                continue
            found = visit(frame, level - 1, va, path + (table,))
            if found is not None:
                return found
        return None

    va = visit(cr3 & 0x000FFFFFFFFFF000, levels, 0, ())
    if va is not None and va >> 47 & 1:
        va |= 0xFFFF000000000000  # canonical upper half
    return va, complete[0] or va is not None


def _group(items: Iterable[Tuple[Any, int]]) -> Dict[Any, List[int]]:
    out: Dict[Any, List[int]] = {}
    for key, index in items:
        out.setdefault(key, []).append(index)
    return out


def scan(target: Target, progress: Optional[Progress] = None, with_ept: bool = True,
         check_host_cr3: bool = True, max_ept_tables: int = 4096) -> ScanResult:
    """Scan every present physical range of ``target`` (see the module docstring)."""
    started = time.perf_counter()
    ranges = target.phys_ranges()
    warnings: List[str] = []
    if not ranges:
        warnings.append("the target lists no physical ranges; nothing was scanned")
    hits = page_candidates(target, progress=progress, ranges=ranges)
    if len(hits) > MAX_CANDIDATES:
        warnings.append("%d pages start with a revision id; only the first %d were validated"
                        % (len(hits), MAX_CANDIDATES))
        hits = hits[:MAX_CANDIDATES]
    vmcs: List[VmcsCandidate] = []
    maybe_vmxon: List[Tuple[int, int, bytes]] = []
    for pa, first in hits:
        try:
            page = target.read_phys(pa, PAGE)
        except MemoryReadError:
            continue
        found = classify_vmcs(page, pa)
        if found is not None:
            vmcs.append(found)
        elif not first & SHADOW and not any(page[4:]):
            maybe_vmxon.append((pa, first, page))
    # VMXON: the region holds the VMCS revision id of the same CPU (SDM 25.11.5), so a
    # page carrying only the revision id of a VMCS found here is a strong candidate
    vmcs_revisions = {v.revision_id for v in vmcs if v.layout_kind != "nested"}
    nested_revisions = {v.revision_id for v in vmcs if v.layout_kind == "nested"}
    hardware_ids = {r & 0x7FFFFFFF for lay in all_layouts()[0] if lay.kind in ("hardware", "software")
                    for r in lay.revision_ids}
    vmxon: List[VmxonCandidate] = []
    for pa, first, _ in maybe_vmxon:
        if first in vmcs_revisions or first in nested_revisions:
            vmxon.append(VmxonCandidate(pa, first, "strong", "revision id 0x%x of a VMCS found here, rest of the "
                                        "page zero" % first))
        elif first in hardware_ids and first > 1:
            vmxon.append(VmxonCandidate(pa, first, "weak", "revision id 0x%x, rest of the page zero, but no VMCS "
                                        "of that revision was found" % first))
    result = ScanResult(vmcs, vmxon, [], [], [], [], [], sum(n for _, n in ranges), len(hits), 0.0, warnings)
    maps = _relate(target, result, with_ept, max_ept_tables)
    if check_host_cr3:
        _check_host_cr3(target, result, maps)
    result.seconds = time.perf_counter() - started
    return result


def _check_host_cr3(target: Target, result: ScanResult, maps: Dict[int, EptWalker]) -> None:
    """Does each VMCS's HOST_CR3 map the VMCS page?  A nested VMCS's host state belongs to
    the L1 hypervisor, so its tables are guest-physical: read them through the EPT of the
    VM it lies in, and look for its guest-physical address."""
    cache: Dict[Tuple[int, int, int], Tuple[Optional[int], bool]] = {}
    vms = {doc["vm"]: doc for doc in result.vms}
    for cand in result.vmcs:
        cr3 = cand.values.get("HOST_CR3")
        if not cr3:
            continue
        levels = 5 if cand.values.get("HOST_CR4", 0) >> 12 & 1 else 4
        reader: Callable[[int, int], bytes] = target.read_phys
        page = cand.pa
        if cand.nested:
            parent = vms.get(cand.nested_in) if cand.nested_in is not None else None
            eptp = parent.get("eptp") if parent else None
            walker = maps.get(eptp & 0x000FFFFFFFFFF000) if eptp else None
            if walker is None or cand.gpa is None:
                continue  # without the L1's EPT its host tables cannot be found
            reader, page = walker.reader(), cand.gpa
        key = (cr3 & ~0xFFF, page, id(reader) if cand.nested else 0)
        if key not in cache:
            cache[key] = host_mapping(reader, cr3, page, levels)
        va, complete = cache[key]
        cand.host_va = va
        cand.host_cr3_maps_page = True if va is not None else (False if complete else None)


def _relate(target: Target, result: ScanResult, with_ept: bool, max_ept_tables: int) -> Dict[int, EptWalker]:
    """Group VMCSs into VMs (EPT root), host CPUs (host TR/GS base), hypervisors (host RIP)
    and nested guests, and summarise each EPT hierarchy; returns the walkers by EPT root."""
    vmcs = result.vmcs
    outer = [i for i, v in enumerate(vmcs) if v.layout_kind != "nested"]
    inner = [i for i, v in enumerate(vmcs) if v.layout_kind == "nested"]
    # EPT hierarchies, one per root
    maps: Dict[int, Optional[List[MapRange]]] = {}
    walkers: Dict[int, EptWalker] = {}
    roots: Dict[int, int] = {}
    for cand in vmcs:
        eptp = cand.eptp
        if eptp is None:
            continue
        root = eptp & 0x000FFFFFFFFFF000
        if root in roots:
            continue
        roots[root] = eptp
        if not with_ept:
            result.ept.append({"eptp": eptp, "root": root})
            continue
        walker = EptWalker(target.read_phys, eptp, max_tables=max_ept_tables)
        walkers[root] = walker
        summary = ept_summary(walker)
        try:
            maps[root] = walker.merged_map() if "error" not in summary else None
        except EptError:
            maps[root] = None
        result.ept.append(summary)
    # VMs: VMCSs sharing an EPT root (or alone without EPT)
    vm_keys: Dict[Any, int] = {}
    for index in outer:
        cand = vmcs[index]
        eptp = cand.eptp
        key: Any = ("ept", eptp & 0x000FFFFFFFFFF000) if eptp else ("vmcs", cand.pa)
        cand.vm = vm_keys.setdefault(key, len(vm_keys))
    for vm in vm_keys.values():
        members = [vmcs[i].pa for i in outer if vmcs[i].vm == vm]
        first = next(vmcs[i] for i in outer if vmcs[i].vm == vm)
        result.vms.append({"vm": vm, "eptp": first.eptp, "vmcs": members, "host_rip": first.values.get("HOST_RIP"),
                           "layout": first.layout, "nested_in": None, "nested": False})
    # nested guests: a VMCS of a nested layout lies in a VM's guest-physical memory
    for index in inner:
        cand = vmcs[index]
        cand.nested = True
        for vm_doc in result.vms:
            eptp = vm_doc["eptp"]
            ranges = maps.get(eptp & 0x000FFFFFFFFFF000) if eptp else None
            if ranges:
                gpa = hpa_to_gpa(ranges, cand.pa)
                if gpa is not None:
                    cand.nested_in, cand.gpa = vm_doc["vm"], gpa
                    break
        host_cr3 = cand.values.get("HOST_CR3")
        guest_cr3 = cand.values.get("GUEST_CR3")
        for other in outer:
            outer_guest_cr3 = vmcs[other].values.get("GUEST_CR3")
            if outer_guest_cr3 is None:
                continue
            if host_cr3 is not None and outer_guest_cr3 == host_cr3 and cand.vmcs01 is None:
                cand.vmcs01 = vmcs[other].pa  # L0's VMCS for L1: L1's CR3 is the nested VMCS's host CR3
            elif guest_cr3 is not None and outer_guest_cr3 == guest_cr3 and cand.vmcs02 is None:
                cand.vmcs02 = vmcs[other].pa  # L0's VMCS running L2 directly
        if cand.nested_in is None and cand.vmcs01 is not None:
            cand.nested_in = next((v.vm for v in vmcs if v.pa == cand.vmcs01), None)
    nested_groups = _group(((vmcs[i].nested_in, vmcs[i].values.get("HOST_RIP")), i) for i in inner)
    for (parent, host_rip), members in nested_groups.items():
        vm_id = len(result.vms)
        for i in members:
            vmcs[i].vm = vm_id
        result.vms.append({"vm": vm_id, "eptp": vmcs[members[0]].eptp, "vmcs": [vmcs[i].pa for i in members],
                           "host_rip": host_rip, "layout": vmcs[members[0]].layout, "nested": True,
                           "nested_in": parent, "gpa": [vmcs[i].gpa for i in members]})
    # host CPUs: VMCSs whose host state points at the same per-CPU structures
    cpu_groups = _group(((vmcs[i].values.get("HOST_TR_BASE"), vmcs[i].values.get("HOST_GS_BASE")), i)
                        for i in outer)
    for cpu, ((tr_base, gs_base), members) in enumerate(cpu_groups.items()):
        for i in members:
            vmcs[i].host_cpu = cpu
        result.cpus.append({"host_cpu": cpu, "host_tr_base": tr_base, "host_gs_base": gs_base,
                            "vmcs": [vmcs[i].pa for i in members]})
    for rip, members in _group((vmcs[i].values.get("HOST_RIP"), i) for i in range(len(vmcs))).items():
        result.hypervisors.append({"host_rip": rip, "vmcs": [vmcs[i].pa for i in members],
                                   "nested": all(vmcs[i].nested for i in members)})
    revisions = sorted({v.revision_id for v in vmcs} | {v.revision_id for v in result.vmxon})
    for revision in revisions:
        result.revision_groups.append({
            "revision_id": revision,
            "vmcs": [v.pa for v in vmcs if v.revision_id == revision],
            "vmxon": [v.pa for v in result.vmxon if v.revision_id == revision],
            "layouts": sorted({v.layout for v in vmcs if v.revision_id == revision}),
        })
    return walkers
