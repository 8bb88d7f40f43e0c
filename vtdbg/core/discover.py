"""Layout discovery: measure where this CPU stores each VMCS field in memory.

A VMCS region's format is the implementation's secret, so vtdbg asks the CPU: in a
*scratch* VMCS region (never the hypervisor's own, whose launch state must stay "launched")
one list stub (:mod:`vtdbg.core.vmread_stub`) does

1. VMPTRST: remember the current VMCS;
2. stamp the revision id (IA32_VMX_BASIC) into the scratch page, VMCLEAR and VMPTRLD it
   (if either fails, nothing below runs but the epilogue);
3. VMWRITE a distinct marker into every field (exit-information fields only when
   IA32_VMX_MISC[29] allows it; VM_INSTRUCTION_ERROR last, since every failed VMWRITE of an
   unsupported field overwrites it);
4. VMCLEAR the scratch region: the processor writes its copy to memory;
5. VMPTRLD the remembered VMCS back, and VMPTRST again to prove it.

Then the page is searched for each marker as stored plainly, rotated left by 8 (``rol8``)
or in the packed 16-bit access-rights form (``packed16``), and a ``vtdbg-layout/1`` file is
produced with its provenance.  Failed VMWRITEs only ever touch the scratch VMCS.
"""
from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from vtdbg import __version__
from vtdbg.arch.fields import all_fields, encoding_type, encoding_width, field_by_encoding
from vtdbg.core import vmread_stub as stub
from vtdbg.core.live import LiveError, RestoreError, Scratch, StubRunner, list_repair, preconditions, transactions
from vtdbg.layouts.model import INVERSE_TRANSFORMS, SCHEMA, parse_layout
from vtdbg.target.base import Target

#: guest access-rights fields (ES..TR): the ones hardware may store rotated or packed
AR_FIELDS = set(range(0x4814, 0x4823, 2))
#: access-rights bits a packed 16-bit form keeps (7:0, 15:12, and "unusable" 16)
_AR_KEPT = 0x1F0FF
_SIZE = {"16": 2, "32": 4, "64": 8, "natural": 8}


def _mix(value: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit value from a counter."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def stored_forms(encoding: int, value: int) -> List[Tuple[Optional[str], bytes]]:
    """How a VMWRITE of ``value`` may appear in memory: (transform, bytes), most likely first."""
    size = _SIZE[encoding_width(encoding)]
    forms = []
    for transform in ((None, "rol8", "packed16") if encoding in AR_FIELDS else (None,)):
        stored_size = 2 if transform == "packed16" else size
        stored = INVERSE_TRANSFORMS[transform](value) & ((1 << (8 * stored_size)) - 1)
        forms.append((transform, stored.to_bytes(stored_size, "little")))
    return forms


def choose_markers(encodings: Sequence[int], seed: int = 0x56544442) -> Dict[int, int]:
    """A marker value per field: no zero byte, and no stored form occurring inside another
    field's forms (so a hit in memory names one field).  Access-rights markers use only the
    bits a packed 16-bit form keeps, so they survive packing."""
    chosen: Dict[int, int] = {}
    patterns: Set[bytes] = set()
    joined = b""
    for encoding in encodings:
        size = _SIZE[encoding_width(encoding)]
        for salt in range(256):
            raw = _mix((seed << 32) ^ (encoding << 8) ^ salt)
            if encoding in AR_FIELDS:
                # bits 11:8 clear and bit 16 ("unusable") set: the plain, rotated and packed
                # forms then differ in every position, so one can never pass for another
                value = raw & _AR_KEPT | 0x10001
                value |= 0x1000 if not value & 0xF000 else 0
            else:
                value = raw & ((1 << (8 * size)) - 1)
                value = int.from_bytes(bytes(b or 0x5A for b in value.to_bytes(size, "little")), "little")
            forms = [f for _, f in stored_forms(encoding, value)]
            # neither inside an earlier marker's form, nor containing one
            clash = any(f in joined for f in forms) or any(
                f[i:i + n] in patterns for f in forms for n in (2, 4, 8) for i in range(len(f) - n + 1))
            if clash:
                continue
            chosen[encoding] = value
            patterns.update(forms)
            joined += b"\xff\xfe".join(forms) + b"\xff\xfe"
            break
        else:
            raise LiveError("no distinct marker found for field 0x%04x" % encoding)
    return chosen


@dataclass
class FieldHit:
    """Where one field's marker was found."""

    encoding: int
    offset: int
    size: int
    transform: Optional[str]


@dataclass
class Discovery:
    """The outcome of a discovery run."""

    revision_id: int
    misc: int
    cpu_signature: Optional[int]
    hits: Dict[int, FieldHit]
    written: List[int]
    rejected: List[int]
    skipped: List[int]
    not_found: List[int]
    ambiguous: Dict[int, List[int]]
    original_pointer: Optional[int]
    scratch_pa: int
    transactions: Optional[int]
    target: str
    page: bytes = b""
    warnings: List[str] = field(default_factory=list)

    def layout_doc(self, name: Optional[str] = None) -> Dict[str, Any]:
        """The ``vtdbg-layout/1`` document (what ``--save`` writes)."""
        when = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        sig = "%x" % self.cpu_signature if self.cpu_signature is not None else "unknown"
        layout_name = name or "discovered_rev%x_cpu%s" % (self.revision_id, sig)
        fields = []
        for encoding in sorted(self.hits):
            hit = self.hits[encoding]
            known = field_by_encoding(encoding)
            fields.append({"name": known.name if known else "0x%04x" % encoding, "encoding": "0x%04x" % encoding,
                           "offset": hit.offset, "size": hit.size, "transform": hit.transform,
                           "certain": True, "optional": False})
        doc = {
            "schema": SCHEMA,
            "name": layout_name,
            "title": "Discovered on CPU signature %s, VMCS revision 0x%x" % (sig, self.revision_id),
            "source": "vtdbg %s discover-layout (VMWRITE markers into a scratch VMCS, VMCLEAR, scan) on %s"
                      % (__version__, self.target),
            "kind": "discovered",
            "revision_ids": [self.revision_id],
            "any_revision": False,
            "auto": True,
            "coherence": "measured: memory equals VMREAD only after VMCLEAR; a current VMCS may be cached on-die",
            "header": {"revision_id_offset": 0, "abort_offset": 4, "region_size": 4096},
            "notes": "%d of %d written fields found; not found: %s" % (
                len(self.hits), len(self.written), ", ".join(_names(self.not_found)) or "none"),
            "provenance": {
                "method": "vmwrite-markers",
                "tool": "vtdbg %s" % __version__,
                "date": when.isoformat(),
                "target": self.target,
                "cpu_signature": self.cpu_signature,
                "revision_id": self.revision_id,
                "ia32_vmx_misc": self.misc,
                "fields_written": len(self.written),
                "fields_found": len(self.hits),
                "rejected_by_vmwrite": _names(self.rejected),
                "skipped_read_only": _names(self.skipped),
                "not_found": _names(self.not_found),
                "ambiguous": {_name(e): offsets for e, offsets in sorted(self.ambiguous.items())},
            },
            "fields": fields,
        }
        parse_layout(doc, "discovered layout", builtin=False)  # what we write must load
        return doc


def _name(encoding: int) -> str:
    known = field_by_encoding(encoding)
    return known.name if known else "0x%04x" % encoding


def _names(encodings: Sequence[int]) -> List[str]:
    return [_name(e) for e in sorted(encodings)]


def locate(page: bytes, markers: Dict[int, int]) -> Tuple[Dict[int, FieldHit], List[int], Dict[int, List[int]]]:
    """Find every marker in ``page``: (hits, not found, ambiguous -> offsets).

    Unique hits are taken first; a field with several candidate places keeps the ones no
    other field claimed, repeatedly, so one accidental repeat does not lose a field."""
    candidates: Dict[int, List[FieldHit]] = {}
    for encoding, value in markers.items():
        found: List[FieldHit] = []
        for transform, pattern in stored_forms(encoding, value):
            start = 16  # never the header (revision id, abort indicator, launch state)
            while True:
                at = page.find(pattern, start)
                if at < 0:
                    break
                found.append(FieldHit(encoding, at, len(pattern), transform))
                start = at + 1
        # a rotated access-rights value whose top byte is 0 also reads as the plain value one
        # byte further on: implementations align their fields, so aligned hits come first
        aligned = [h for h in found if h.offset % min(h.size, 4) == 0]
        found = aligned or found
        forms = [h.transform for h in found]
        if forms:
            # the most likely form wins (plain, then rol8, then packed16)
            order = [t for t, _ in stored_forms(encoding, value)]
            best = min(forms, key=order.index)
            found = [h for h in found if h.transform == best]
        candidates[encoding] = found
    hits: Dict[int, FieldHit] = {}
    claimed: List[Tuple[int, int]] = []

    def free(hit: FieldHit) -> bool:
        return all(hit.offset + hit.size <= lo or hi <= hit.offset for lo, hi in claimed)

    progress = True
    while progress:
        progress = False
        for encoding, found in candidates.items():
            if encoding in hits:
                continue
            usable = [h for h in found if free(h)]
            if len(usable) == 1:
                hits[encoding] = usable[0]
                claimed.append((usable[0].offset, usable[0].offset + usable[0].size))
                progress = True
    not_found = sorted(e for e, found in candidates.items() if not found)
    ambiguous = {e: [h.offset for h in found] for e, found in candidates.items() if found and e not in hits}
    return hits, not_found, ambiguous


def _encodings(all_encodings: bool, highest: int) -> List[int]:
    known = [f.encoding for f in all_fields()]
    if not all_encodings:
        return known
    extra = [e for e in stub.enum_encodings(highest) if field_by_encoding(e) is None]
    return known + extra


def discover_layout(target: Target, scratch: Scratch, assume_root: bool = False, all_encodings: bool = True,
                    cpu: Optional[int] = None) -> Discovery:
    """Run discovery on the current CPU (see the module docstring); the target is restored."""
    if not scratch.single:
        raise LiveError("discovery needs one contiguous scratch region with a spare 4 KiB page; give --scratch")
    start = transactions(target)
    pre = preconditions(target, assume_root, cpu)
    highest = max(f.index for f in all_fields())
    encodings = _encodings(all_encodings, highest)
    # VM_INSTRUCTION_ERROR last: every failing VMWRITE before it overwrites it
    encodings = [e for e in encodings if e != stub.ERROR_FIELD] + [stub.ERROR_FIELD]
    markers = choose_markers(encodings)
    runner = StubRunner(target, scratch, bochs=pre.bochs)

    def entries_for(vmcs_va: int, vmcs_pa: int) -> List[stub.Entry]:
        crit, epi = stub.Flag.CRITICAL, stub.Flag.EPILOGUE
        out = [stub.Entry(stub.Op.SAVE_POINTER), stub.Entry(stub.Op.CPUID, 1),
               stub.Entry(stub.Op.RDMSR, stub.MSR_VMX_BASIC),
               stub.Entry(stub.Op.STAMP, 0, vmcs_va, crit), stub.Entry(stub.Op.VMCLEAR, 0, vmcs_pa, crit),
               stub.Entry(stub.Op.VMPTRLD, 0, vmcs_pa, crit)]
        for encoding in encodings:
            read_only = encoding_type(encoding) == "exit_info"
            out.append(stub.Entry(stub.Op.WRITE, encoding, markers[encoding], stub.Flag.MAYFAIL if read_only else 0))
        out += [stub.Entry(stub.Op.VMCLEAR, 0, vmcs_pa, epi), stub.Entry(stub.Op.LOAD_SAVED, 0, 0, epi),
                stub.Entry(stub.Op.VMPTRST, 0, 0, epi)]
        return out

    sizing = stub.list_program(entries_for(0, 0), "discover")
    lay = runner.layout(sizing, 0x1000)
    vmcs_va, vmcs_pa = scratch.code.va + lay["extra_off"], scratch.code.pa + lay["extra_off"]
    entries = entries_for(vmcs_va, vmcs_pa)
    out = runner.run(stub.list_program(entries, "discover"), extra=0x1000,
                     repair=list_repair(entries, scratch_vmcs=vmcs_pa))
    result = stub.decode_list(out.data, entries)
    warnings = list(out.notes)
    saved = result.saved_pointer
    final = result.results[-1]
    if final.status != stub.OK or final.value != saved:
        # the hypervisor's VMCS must be current again, whatever happened
        repair = [stub.Entry(stub.Op.VMPTRLD, 0, saved), stub.Entry(stub.Op.VMPTRST)]
        fixed = stub.decode_list(runner.run(stub.list_program(repair, "repair")).data, repair)
        if fixed.results[-1].value != saved:
            raise RestoreError("discovery could not make the original VMCS 0x%x current again (now 0x%x): the "
                               "hypervisor's next VMRESUME will fail" % (saved, fixed.results[-1].value))
        warnings.append("the original VMCS had to be made current again by a second stub")
    if result.aborted_at is not None:
        failed = result.results[result.aborted_at]
        what = {stub.Op.STAMP: "stamping the revision id", stub.Op.VMCLEAR: "VMCLEAR of the scratch region",
                stub.Op.VMPTRLD: "VMPTRLD of the scratch region"}.get(failed.entry.op, "a step")
        raise LiveError("discovery stopped: %s failed (%s); the original VMCS is current again"
                        % (what, failed.status))
    signature = result.results[1].value & 0xFFFFFFFF if result.results[1].status == stub.OK else None
    revision = result.results[2].value & 0x7FFFFFFF
    writes = {r.entry.enc: r.status for r in result.results if r.entry.op == stub.Op.WRITE}
    written = [e for e, s in writes.items() if s == stub.OK]
    hits, not_found, ambiguous = locate(out.extra, {e: markers[e] for e in written})
    done = transactions(target)
    return Discovery(
        revision_id=revision, misc=result.misc, cpu_signature=signature, hits=hits, written=written,
        rejected=[e for e, s in writes.items() if s in (stub.VMFAIL_VALID, stub.VMFAIL_INVALID)],
        skipped=[e for e, s in writes.items() if s == stub.SKIPPED], not_found=not_found, ambiguous=ambiguous,
        original_pointer=None if saved == 0xFFFFFFFFFFFFFFFF else saved, scratch_pa=vmcs_pa,
        transactions=None if start is None or done is None else done - start,
        target="%s (%s)" % (target.kind, target.description), page=out.extra, warnings=warnings)


def compare_layout(discovered: Dict[int, FieldHit], reference: Any, only: Optional[Set[int]] = None) \
        -> Tuple[List[int], List[Tuple[int, str]]]:
    """(matching encodings, [(encoding, difference)]) of a discovery against a Layout."""
    same: List[int] = []
    differ: List[Tuple[int, str]] = []
    for item in reference.fields:
        if item.encoding & 1 and encoding_width(item.encoding & ~1) == "64":
            continue  # HIGH halves: implied by the FULL field
        if only is not None and item.encoding not in only:
            continue
        hit = discovered.get(item.encoding)
        if hit is None:
            differ.append((item.encoding, "not discovered"))
        elif (hit.offset, hit.size, hit.transform) != (item.offset, item.size, item.transform):
            differ.append((item.encoding, "discovered +0x%x/%d/%s, layout +0x%x/%d/%s" % (
                hit.offset, hit.size, hit.transform, item.offset, item.size, item.transform)))
        else:
            same.append(item.encoding)
    return same, differ


def page_summary(page: bytes) -> Dict[str, Any]:
    """Header words of the scratch page after VMCLEAR (for the JSON)."""
    if len(page) < 16:
        return {}
    revision, abort, third = struct.unpack_from("<III", page, 0)
    return {"revision_dword": revision, "abort_dword": abort, "dword_8": third}
