"""`triage`: the report a human reads first about a dump.

It puts together what the dump says about the crash (Windows bug check and the conventions
hypervisor projects use for their own bug checks, shared/reference/anchors-tools.md section
3.2), the VT-x state a scan finds (per-CPU regions, VMs, EPT), each VMCS decoded with its
trust label, and the last VM exit in words.  The VM-entry checker and target profiles are
optional: when they are not installed the report says so instead of failing.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from vtdbg.arch.exit_reasons import basic_reason, exit_reason_by_number, is_entry_failure
from vtdbg.arch.fields import lookup_field
from vtdbg.core.check import TargetMemory, explain_failure
from vtdbg.core.describe import describe
from vtdbg.core.scan import ScanResult, scan
from vtdbg.core.vmcs import Vmcs, read_vmcs
from vtdbg.lib.errors import VtdbgError
from vtdbg.target.base import Target

#: Windows bug check codes a VT-x developer meets (name, short meaning)
BUGCHECKS = {
    0x0A: ("IRQL_NOT_LESS_OR_EQUAL", "pageable or invalid memory touched at raised IRQL"),
    0x1E: ("KMODE_EXCEPTION_NOT_HANDLED", "a kernel-mode exception was not handled"),
    0x3B: ("SYSTEM_SERVICE_EXCEPTION", "an exception in a system service"),
    0x50: ("PAGE_FAULT_IN_NONPAGED_AREA", "invalid system memory was referenced"),
    0x7E: ("SYSTEM_THREAD_EXCEPTION_NOT_HANDLED", "a system thread raised an unhandled exception"),
    0x7F: ("UNEXPECTED_KERNEL_MODE_TRAP", "a trap the kernel does not allow (double fault: parameter 1 = 8)"),
    0x101: ("CLOCK_WATCHDOG_TIMEOUT", "a processor stopped answering clock interrupts (often a CPU stuck in "
                                      "VMX root or a lost VM exit)"),
    0x109: ("CRITICAL_STRUCTURE_CORRUPTION", "PatchGuard found a modified kernel structure"),
    0x124: ("WHEA_UNCORRECTABLE_ERROR", "a fatal hardware error"),
    0x133: ("DPC_WATCHDOG_VIOLATION", "a DPC or the system ran too long at DISPATCH_LEVEL"),
    0x139: ("KERNEL_SECURITY_CHECK_FAILURE", "a kernel data structure was corrupted"),
    0x161: ("LIVE_SYSTEM_DUMP", "a live dump (QEMU's -w writer uses it when there is no bug check)"),
    0xD1: ("DRIVER_IRQL_NOT_LESS_OR_EQUAL", "a driver touched pageable or invalid memory at raised IRQL"),
    0xE2: ("MANUALLY_INITIATED_CRASH", "the crash was requested (keyboard, NMI or a driver's KeBugCheckEx)"),
    0x20001: ("HYPERVISOR_ERROR", "the hypervisor reported a fatal error"),
}

#: HyperPlatform: KeBugCheckEx(MANUALLY_INITIATED_CRASH, code, ...) with these codes
HYPERPLATFORM = {0: "unspecified", 1: "unexpected VM exit", 2: "triple-fault VM exit",
                 3: "pre-allocated entries exhausted", 4: "critical VMX instruction (VMRESUME/VMXOFF) failure",
                 5: "EPT-misconfiguration VM exit", 6: "critical pool allocation failure"}
#: ksm: KeBugCheckEx(MANUALLY_INITIATED_CRASH, code, ...) with these codes
KSM = {0xCCDDFF11: "panic", 0x33DDE83A: "vCPU triple fault", 0xBAADF00D: "unhandled VM exit",
       0xCAFEBABE: "IRQ not handled", 0xBAADBABE: "failed VM entry", 0xBAAD7A1E: "invalid guest state",
       0xEEEEEEE9: "unexpected condition"}
#: HyperBone: KeBugCheckEx(HYPERVISOR_ERROR, code, ...) with these codes
HYPERBONE = {0: "unspecified", 1: "invalid VM (VM entry failed)", 2: "triple fault", 3: "EPT misconfiguration",
             4: "EPT violation", 5: "no pages left for EPT"}


def explain_bugcheck(code: int, params: List[int]) -> Dict[str, Any]:
    """Name, meaning and any hypervisor convention matching a bug check."""
    name, meaning = BUGCHECKS.get(code, ("BUGCHECK_0x%X" % code, "see the Windows bug check reference"))
    doc: Dict[str, Any] = {"code": code, "name": name, "meaning": meaning, "parameters": list(params),
                           "convention": None}
    first = params[0] if params else 0
    if code == 0xE2 and first in HYPERPLATFORM and first != 0:
        doc["convention"] = {
            "tool": "HyperPlatform", "code": first, "meaning": HYPERPLATFORM[first],
            "parameters": "parameter 1 is HyperPlatform's code; 2-4 are the code's details (guest context pointer, "
                          "guest IP, qualification or VM-instruction error, depending on the code)"}
    elif code == 0xE2 and first in KSM:
        doc["convention"] = {
            "tool": "ksm", "code": first, "meaning": KSM[first],
            "parameters": "parameter 1 is ksm's panic code; 2-4 are the VM-instruction error or details, then the "
                          "current and previous exit handlers"}
    elif code == 0x20001 and first in HYPERBONE:
        doc["convention"] = {
            "tool": "HyperBone", "code": first, "meaning": HYPERBONE[first],
            "parameters": "parameter 1 is HyperBone's code; for an invalid VM parameters 2 and 3 are the exit "
                          "reason and exit qualification"}
    return doc


def explain_exit(vmcs: Vmcs) -> Dict[str, Any]:
    """The last VM exit (or VM-entry failure, or VMX-instruction error) in words."""
    doc: Dict[str, Any] = {}
    reason = vmcs.get("VM_EXIT_REASON")
    if reason is not None:
        entry = exit_reason_by_number(basic_reason(reason))
        doc.update({"reason": basic_reason(reason), "name": entry.name if entry else None,
                    "entry_failure": is_entry_failure(reason),
                    "description": entry.description if entry else "not an exit reason the SDM defines"})
    qual = vmcs.get("EXIT_QUALIFICATION")
    if qual is not None:
        doc["qualification"] = qual
        doc["qualification_text"] = describe(lookup_field("EXIT_QUALIFICATION"), qual, vmcs.values)
    for name in ("GUEST_PHYSICAL_ADDRESS", "GUEST_LINEAR_ADDRESS", "GUEST_RIP", "VM_EXIT_INSTRUCTION_LEN"):
        value = vmcs.get(name)
        if value is not None:
            doc[name.lower()] = value
    error = vmcs.get("VM_INSTRUCTION_ERROR")
    if error is not None:
        doc["instruction_error"] = error
        doc["instruction_error_text"] = describe(lookup_field("VM_INSTRUCTION_ERROR"), error)
    return doc


def profile_status(target: Target) -> Dict[str, Any]:
    """The target profile that fits, or why none is used (profiles are optional)."""
    try:
        from vtdbg.core.regions import detect_profile
    except ImportError:
        return {"available": False, "profile": None, "note": "target profiles are not available in this installation"}
    try:
        found = detect_profile(target)
    except VtdbgError as exc:
        return {"available": True, "profile": None, "note": "no profile: %s" % exc}
    if found.profile is None:
        why = "; ".join(found.warnings) or "no known hypervisor module"
        return {"available": True, "profile": None, "note": "no profile applies (%s); regions come from the scan" % why}
    return {"available": True, "profile": found.profile.name, "note": "profile %s fits (module %s)"
            % (found.profile.name, found.module)}


def triage(target: Target, scanned: Optional[ScanResult] = None, max_vmcs: int = 16,
           checker: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The triage report of ``target`` as JSON-ready data.  ``checker`` says whether the
    VM-entry checker is installed (the command layer knows; core does not look)."""
    result = scanned or scan(target)
    info = dict(getattr(target, "info", {}) or {})
    report: Dict[str, Any] = {"target": target.description, "format": info.get("format", target.kind)}
    if "bugcheck_code" in info:
        report["bugcheck"] = explain_bugcheck(info["bugcheck_code"], list(info.get("bugcheck_parameters") or []))
    else:
        report["bugcheck"] = None
    report["dump"] = {k: v for k, v in info.items() if k not in ("prstatus_registers",)}
    report["scan"] = result.to_json()
    decoded = []
    for index, cand in enumerate(result.vmcs[:max_vmcs]):
        try:
            vmcs = read_vmcs(target, cand.pa, cand.layout)
        except VtdbgError as exc:
            decoded.append({"index": index, "pa": cand.pa, "error": str(exc)})
            continue
        trust = vmcs.trust
        if cand.layout_kind == "hardware":
            trust += "; a CPU may keep the current VMCS on-die, so memory is certain only after VMCLEAR"
        # a VMCS that records a failed VM entry gets the checker's reading of why (no caps in a
        # dump: the rules that need capability MSRs are reported as not checked)
        failure = explain_failure(vmcs, memory=TargetMemory(target))
        decoded.append({"index": index, "pa": cand.pa, "layout": vmcs.layout, "trust": trust,
                        "launch_state": vmcs.launch_state, "nested": cand.nested, "vm": cand.vm,
                        "host_cpu": cand.host_cpu, "last_exit": explain_exit(vmcs), "warnings": list(vmcs.warnings),
                        "entry_failure": failure, "vmcs": vmcs.to_json()})
    report["vmcs_decoded"] = decoded
    if len(result.vmcs) > max_vmcs:
        report.setdefault("notes", []).append("%d more VMCS not decoded here; use `vtdbg vmcs --cpu N`"
                                              % (len(result.vmcs) - max_vmcs))
    report["checker"] = checker or {"available": False, "note": "the VM-entry checker (`vtdbg check`) was not "
                                                                "consulted"}
    report["profile"] = profile_status(target)
    return report
