"""Is this processor ready for VMXON?  The checks a hypervisor makes before entering VMX
operation (the list of "Hypervisor From Scratch" part 2, with the SDM's outcomes):

CPUID.1:ECX.VMX, IA32_FEATURE_CONTROL locked with VMXON enabled outside SMX, CR4.VMXE, CR0
and CR4 against the IA32_VMX_CR0/CR4_FIXED MSRs, CPL 0, and a VMXON region that is 4-KByte
aligned, inside the physical-address width and starts with the VMCS revision id (bit 31
clear).  Each check gives pass, fail or unknown, with what VMXON would do on failure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from vtdbg.core.check.caps import Caps, msr_index
from vtdbg.core.check.context import Unknown
from vtdbg.core.check.facts import hexs, reg, reg_get

PAGE = 0x1000
#: IA32_VMX_BASIC[48]: VMXON/VMCS addresses limited to 32 bits.
PHYS32 = 32


@dataclass
class Verdict:
    """One readiness check."""

    id: str
    title: str
    status: str  # "pass" | "fail" | "unknown"
    detail: str
    consequence: str
    sdm: str

    def to_json(self) -> Dict[str, Any]:
        """Plain dict."""
        return {"id": self.id, "title": self.title, "status": self.status, "detail": self.detail,
                "consequence": self.consequence, "sdm": self.sdm}


def _msr(caps: Caps, name: str) -> int:
    return caps.msr(msr_index(name))


def vmxon_readiness(caps: Caps, cr0: Optional[int] = None, cr4: Optional[int] = None,
                    region_pa: Optional[int] = None, region_header: Optional[int] = None,
                    cpl: Optional[int] = None, in_smx: bool = False) -> List[Verdict]:
    """Every readiness check, in the order VMXON applies them."""
    out: List[Verdict] = []

    def add(id_: str, title: str, sdm: str, consequence: str, judge: Any) -> None:
        try:
            ok, detail = judge()
            status = "pass" if ok else "fail"
        except Unknown as missing:
            status, detail = "unknown", missing.why
        out.append(Verdict(id_, title, status, detail, consequence, sdm))

    def cpuid() -> Any:
        value = _msr(caps, "IA32_VMX_BASIC")
        return True, "IA32_VMX_BASIC is readable (%s), so CPUID.1:ECX.VMX[bit 5] = 1" % hexs(value)

    add("VMXON-CPUID", "CPUID reports VMX", "24.6 (Discovering support for VMX)",
        "without VMX, VMXON is #UD", cpuid)

    def lock() -> Any:
        value = _msr(caps, "IA32_FEATURE_CONTROL")
        locked = bool(reg_get("feature_control", "lock", value))
        return locked, "IA32_FEATURE_CONTROL = %s: lock bit %s" % (hexs(value), "set" if locked else
                                                                    "clear (firmware left it unlocked; set bits 0 "
                                                                    "and 2 with WRMSR before VMXON)")

    add("VMXON-FEATURE-LOCK", "IA32_FEATURE_CONTROL is locked", "24.7 (Enabling and entering VMX operation)",
        "VMXON raises #GP(0) while the lock bit is clear", lock)

    def enabled() -> Any:
        value = _msr(caps, "IA32_FEATURE_CONTROL")
        field = "vmx_inside_smx" if in_smx else "vmx_outside_smx"
        ok = bool(reg_get("feature_control", field, value))
        where = "inside SMX (bit 1)" if in_smx else "outside SMX (bit 2)"
        return ok, "VMXON %s is %s" % (where, "enabled" if ok else "disabled: enable it in firmware setup "
                                                                   "(the MSR is locked) or before locking it")

    add("VMXON-FEATURE-ENABLE", "VMXON enabled in IA32_FEATURE_CONTROL", "24.7",
        "VMXON raises #GP(0) when it is not enabled for the current SMX mode", enabled)

    def need(value: Optional[int], name: str) -> int:
        if value is None:
            raise Unknown("environment", name, "%s is not known (give --%s or use a target with registers)"
                          % (name.upper(), name))
        return value

    def vmxe() -> Any:
        value = need(cr4, "cr4")
        ok = bool(reg_get("cr4", "vmxe", value))
        return ok, "CR4 = %s: VMXE (bit 13) %s" % (hexs(value), "set" if ok else "clear; set it before VMXON")

    add("VMXON-CR4-VMXE", "CR4.VMXE is set", "24.7", "VMXON is #UD with CR4.VMXE = 0", vmxe)

    def fixed(register: str, value: Optional[int]) -> Any:
        current = need(value, register)
        fixed0, fixed1 = caps.fixed(register)
        missing = fixed0 & ~current
        extra = current & ~fixed1
        if not missing and not extra:
            return True, "%s = %s fits FIXED0 %s / FIXED1 %s" % (register.upper(), hexs(current), hexs(fixed0),
                                                                   hexs(fixed1))
        parts = []
        if missing:
            parts.append("bits %s must be 1" % hexs(missing))
        if extra:
            parts.append("bits %s must be 0" % hexs(extra))
        return False, "%s = %s: %s; use (%s | FIXED0) & FIXED1 = %s" % (
            register.upper(), hexs(current), ", ".join(parts), register.upper(), hexs((current | fixed0) & fixed1))

    add("VMXON-CR0-FIXED", "CR0 fits IA32_VMX_CR0_FIXED0/1", "A.7", "VMXON raises #GP(0)",
        lambda: fixed("cr0", cr0))
    add("VMXON-CR4-FIXED", "CR4 fits IA32_VMX_CR4_FIXED0/1", "A.8", "VMXON raises #GP(0)",
        lambda: fixed("cr4", cr4))

    def privilege() -> Any:
        level = need(cpl, "cpl")
        return level == 0, "CPL is %d" % level

    add("VMXON-CPL", "CPL is 0", "30.3 (VMXON)", "VMXON raises #GP(0) at CPL > 0", privilege)

    def aligned() -> Any:
        pa = need(region_pa, "region")
        return pa & (PAGE - 1) == 0, "VMXON region at %s%s" % (hexs(pa), "" if pa & (PAGE - 1) == 0 else
                                                              " is not 4-KByte aligned")

    add("VMXON-REGION-ALIGN", "VMXON region is 4-KByte aligned", "24.11.5 (VMXON region)",
        "VMXON fails with VMfailInvalid", aligned)

    def width() -> Any:
        pa = need(region_pa, "region")
        limit = caps.maxphyaddr
        if reg_get("vmx_basic", "phys_addr_width_32", caps.basic):
            limit = min(limit, PHYS32)
        ok = pa >> limit == 0
        return ok, "VMXON region at %s %s 2^%d (MAXPHYADDR %d%s)" % (
            hexs(pa), "is below" if ok else "is not below", limit, caps.maxphyaddr,
            ", IA32_VMX_BASIC[48] limits it to 32 bits" if limit == PHYS32 else "")

    add("VMXON-REGION-WIDTH", "VMXON region is inside the physical-address width", "A.1 / 30.3",
        "VMXON fails with VMfailInvalid", width)

    def revision() -> Any:
        header = region_header
        if header is None:
            raise Unknown("memory", "VMXON region", "the first dword of the VMXON region is not known "
                                                    "(give --at PA on a target that reads memory)")
        want = caps.revision_id
        got = header & 0x7FFFFFFF
        shadow = header >> 31
        if got == want and not shadow:
            return True, "first dword %s = revision id %s" % (hexs(header), hexs(want))
        problems = []
        if got != want:
            problems.append("revision %s is not IA32_VMX_BASIC's %s" % (hexs(got), hexs(want)))
        if shadow:
            problems.append("bit 31 must be 0")
        return False, "first dword %s: %s" % (hexs(header), "; ".join(problems))

    add("VMXON-REGION-REVISION", "VMXON region starts with the VMCS revision id", "24.11.5",
        "VMXON fails with VMfailInvalid", revision)

    def size() -> Any:
        basic = caps.basic
        region = reg_get("vmx_basic", "region_size", basic)
        memtype = reg_get("vmx_basic", "memory_type", basic)
        meaning = reg("vmx_basic", "memory_type").meaning(memtype)
        return True, "regions are %d bytes (IA32_VMX_BASIC[44:32]); map them with memory type %d%s" % (
            region, memtype, " (%s)" % meaning if meaning else "")

    add("VMXON-REGION-SIZE", "Region size and memory type (information)", "A.1",
        "allocate at least this many bytes, in memory of this type", size)
    return out


def summary(verdicts: List[Verdict]) -> str:
    """"ready", "not ready" or "unknown" over all verdicts."""
    if any(v.status == "fail" for v in verdicts):
        return "not ready"
    if any(v.status == "unknown" for v in verdicts):
        return "unknown"
    return "ready"
