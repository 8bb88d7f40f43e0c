"""Stage 2a-c: checks on the VM-execution, VM-exit and VM-entry control fields (SDM 26.2.1).

Any failure here makes VMLAUNCH/VMRESUME fail with VMfailValid, VM-instruction error 7.
"""
from __future__ import annotations

from typing import Iterator, Tuple

from vtdbg.arch import controls as arch_controls
from vtdbg.core.check.context import Ctx
from vtdbg.core.check.engine import Finding, predicate
from vtdbg.core.check.facts import bits_between, ctl_label, ctl_mask, hexs, reg, reg_get, reserved_mask

#: Offset of the TPR (VTPR) in the virtual-APIC page (the xAPIC register layout).
VTPR_OFFSET = 0x80
#: Hardware exceptions that push an error code (#DF, #TS, #NP, #SS, #GP, #PF, #AC); #CP (21)
#: joins them on processors with CET.
ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17))
CP_VECTOR = 21
#: An injected NMI must use vector 2; hardware exceptions are vectors 0-31.
NMI_VECTOR = 2
MAX_EXCEPTION_VECTOR = 31
#: Longest x86 instruction, the limit for the VM-entry instruction length.
MAX_INSTRUCTION_LENGTH = 15
#: Entries per MSR list are recommended to stay below 512 * (IA32_VMX_MISC[27:25] + 1).
MSR_LIST_UNIT = 512
#: Each MSR-area entry is 16 bytes and the area must be 16-byte aligned.
MSR_ENTRY_SIZE = 16


def _names(group: str, mask: int) -> str:
    names = [b.name for b in arch_controls.decode_controls(group, mask)]
    unknown = arch_controls.unknown_bits(group, mask)
    if unknown:
        names.append("undefined bits %s" % hexs(unknown))
    return ", ".join(names) or "-"


def allowed_settings(ctx: Ctx, group: str) -> Iterator[Finding]:
    """Findings for a control field outside the allowed settings its capability MSR reports."""
    grp = arch_controls.group(group)
    value = ctx.f(grp.field)
    allowed = ctx.caps.allowed(group)
    missing = allowed.must1_missing(value)
    forbidden = allowed.forbidden(value)
    if missing:
        yield Finding(grp.field, value, "bits %s (%s): must be 1 per %s allowed-0 settings (bits 31:0 = %s)"
                      % (hexs(missing), _names(group, missing), allowed.msr_name, hexs(allowed.must1)),
                      detail={"bits": missing, "requirement": "must_be_one", "msr": allowed.msr_name})
    if forbidden:
        yield Finding(grp.field, value, "bits %s (%s): must be 0 per %s allowed-1 settings (%s)"
                      % (hexs(forbidden), _names(group, forbidden), allowed.msr_name, hexs(allowed.may1)),
                      detail={"bits": forbidden, "requirement": "must_be_zero", "msr": allowed.msr_name})


def _page_address(ctx: Ctx, name: str, because: str) -> Iterator[Finding]:
    """A 4-KByte aligned physical address within MAXPHYADDR."""
    address = ctx.f(name)
    if not ctx.page_ok(address):
        yield Finding(name, address, "%s: must be 4-KByte aligned and below 2^%d (MAXPHYADDR)"
                      % (because, ctx.caps.maxphyaddr))


# -- 26.2.1.1 VM-execution control fields ----------------------------------------------------

@predicate("CTL-PIN-RESERVED")
def _pin(ctx: Ctx) -> Iterator[Finding]:
    return allowed_settings(ctx, "pin")


@predicate("CTL-PROC-RESERVED")
def _proc(ctx: Ctx) -> Iterator[Finding]:
    return allowed_settings(ctx, "proc")


@predicate("CTL-PROC2-RESERVED")
def _proc2(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc", "ACTIVATE_SECONDARY_CONTROLS"):
        yield from allowed_settings(ctx, "proc2")


@predicate("CTL-PROC3-RESERVED")
def _proc3(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc", "ACTIVATE_TERTIARY_CONTROLS"):
        yield from allowed_settings(ctx, "proc3")


@predicate("CTL-CR3-TARGET-COUNT")
def _cr3_targets(ctx: Ctx) -> Iterator[Finding]:
    count = ctx.f("CR3_TARGET_COUNT")
    supported = reg_get("vmx_misc", "cr3_target_count", ctx.caps.misc)
    if count > supported:
        yield Finding("CR3_TARGET_COUNT", count, "must not exceed %d, the CR3-target values IA32_VMX_MISC[24:16] "
                                                 "reports" % supported)


@predicate("CTL-IO-BITMAP-ADDR")
def _io_bitmaps(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc", "USE_IO_BITMAPS"):
        for name in ("IO_BITMAP_A", "IO_BITMAP_B"):
            yield from _page_address(ctx, name, "with %s" % ctl_label("proc", "USE_IO_BITMAPS"))


@predicate("CTL-MSR-BITMAP-ADDR")
def _msr_bitmap(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc", "USE_MSR_BITMAPS"):
        yield from _page_address(ctx, "MSR_BITMAP", "with %s" % ctl_label("proc", "USE_MSR_BITMAPS"))


@predicate("CTL-VAPIC-ADDR")
def _vapic(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc", "TPR_SHADOW"):
        yield from _page_address(ctx, "VIRTUAL_APIC_PAGE_ADDR", "with %s" % ctl_label("proc", "TPR_SHADOW"))


def _tpr_threshold_applies(ctx: Ctx) -> bool:
    return ctx.on("proc", "TPR_SHADOW") and not ctx.on("proc2", "VIRTUAL_INTR_DELIVERY")


@predicate("CTL-TPR-THRESHOLD-RSVD")
def _tpr_reserved(ctx: Ctx) -> Iterator[Finding]:
    if _tpr_threshold_applies(ctx):
        threshold = ctx.f("TPR_THRESHOLD")
        if threshold >> 4:
            yield Finding("TPR_THRESHOLD", threshold,
                          "bits 31:4 must be 0 with the TPR shadow on and virtual-interrupt delivery off")


@predicate("CTL-TPR-THRESHOLD-VTPR")
def _tpr_vtpr(ctx: Ctx) -> Iterator[Finding]:
    if not _tpr_threshold_applies(ctx) or ctx.on("proc2", "VIRTUALIZE_APIC_ACCESSES"):
        return
    vapic = ctx.f("VIRTUAL_APIC_PAGE_ADDR")
    if not ctx.page_ok(vapic):
        return  # CTL-VAPIC-ADDR reports the address; there is no page to read
    threshold = ctx.f("TPR_THRESHOLD") & 0xF
    vtpr = ctx.memory.read_int(vapic + VTPR_OFFSET, 4)
    if threshold > (vtpr >> 4) & 0xF:
        yield Finding("TPR_THRESHOLD", ctx.f("TPR_THRESHOLD"),
                      "bits 3:0 (%d) must not exceed VTPR[7:4] (%d); VTPR = 0x%x read at 0x%x (virtual-APIC page "
                      "+ 0x80)" % (threshold, (vtpr >> 4) & 0xF, vtpr, vapic + VTPR_OFFSET),
                      detail={"vtpr": vtpr, "vtpr_address": vapic + VTPR_OFFSET})


@predicate("CTL-APICV-NEEDS-TPR-SHADOW")
def _apicv_needs_tpr(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc", "TPR_SHADOW"):
        return
    for name in ("VIRTUALIZE_X2APIC_MODE", "APIC_REGISTER_VIRT", "VIRTUAL_INTR_DELIVERY"):
        if ctx.on("proc2", name):
            yield Finding("SECONDARY_VM_EXEC_CONTROL", ctx.controls("proc2"),
                          "%s requires %s" % (ctl_label("proc2", name), ctl_label("proc", "TPR_SHADOW")))


@predicate("CTL-VNMI-NEEDS-NMI-EXITING")
def _vnmi(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("pin", "VIRTUAL_NMIS") and not ctx.on("pin", "NMI_EXITING"):
        yield Finding("PIN_BASED_VM_EXEC_CONTROL", ctx.controls("pin"), "%s requires %s" % (
            ctl_label("pin", "VIRTUAL_NMIS"), ctl_label("pin", "NMI_EXITING")))


@predicate("CTL-NMI-WINDOW-NEEDS-VNMI")
def _nmi_window(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc", "NMI_WINDOW_EXITING") and not ctx.on("pin", "VIRTUAL_NMIS"):
        yield Finding("CPU_BASED_VM_EXEC_CONTROL", ctx.controls("proc"), "%s requires %s" % (
            ctl_label("proc", "NMI_WINDOW_EXITING"), ctl_label("pin", "VIRTUAL_NMIS")))


@predicate("CTL-APIC-ACCESS-ADDR")
def _apic_access(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc2", "VIRTUALIZE_APIC_ACCESSES"):
        yield from _page_address(ctx, "APIC_ACCESS_ADDR", "with %s" % ctl_label("proc2", "VIRTUALIZE_APIC_ACCESSES"))


@predicate("CTL-X2APIC-VS-APIC-ACCESS")
def _x2apic_vs_access(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc2", "VIRTUALIZE_X2APIC_MODE") and ctx.on("proc2", "VIRTUALIZE_APIC_ACCESSES"):
        yield Finding("SECONDARY_VM_EXEC_CONTROL", ctx.controls("proc2"), "%s and %s must not both be 1" % (
            ctl_label("proc2", "VIRTUALIZE_X2APIC_MODE"), ctl_label("proc2", "VIRTUALIZE_APIC_ACCESSES")))


@predicate("CTL-VID-NEEDS-EXTINT-EXIT")
def _vid_extint(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc2", "VIRTUAL_INTR_DELIVERY") and not ctx.on("pin", "EXT_INTR_MASK"):
        yield Finding("PIN_BASED_VM_EXEC_CONTROL", ctx.controls("pin"), "%s requires %s" % (
            ctl_label("proc2", "VIRTUAL_INTR_DELIVERY"), ctl_label("pin", "EXT_INTR_MASK")))


@predicate("CTL-PI-NEEDS-VID")
def _pi_vid(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("pin", "POSTED_INTR") and not ctx.on("proc2", "VIRTUAL_INTR_DELIVERY"):
        yield Finding("PIN_BASED_VM_EXEC_CONTROL", ctx.controls("pin"), "%s requires %s" % (
            ctl_label("pin", "POSTED_INTR"), ctl_label("proc2", "VIRTUAL_INTR_DELIVERY")))


@predicate("CTL-PI-NEEDS-ACK-INTR")
def _pi_ack(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("pin", "POSTED_INTR") and not ctx.on("exit", "ACK_INTR_ON_EXIT"):
        yield Finding("VM_EXIT_CONTROLS", ctx.controls("exit"), "%s requires %s" % (
            ctl_label("pin", "POSTED_INTR"), ctl_label("exit", "ACK_INTR_ON_EXIT")))


@predicate("CTL-PI-VECTOR")
def _pi_vector(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("pin", "POSTED_INTR"):
        vector = ctx.f("POSTED_INTR_NV")
        if vector >> 8:
            yield Finding("POSTED_INTR_NV", vector, "bits 15:8 must be 0 (the notification vector is 8 bits)")


@predicate("CTL-PI-DESC-ADDR")
def _pi_desc(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("pin", "POSTED_INTR"):
        address = ctx.f("POSTED_INTR_DESC_ADDR")
        if address & 0x3F or not ctx.pa_ok(address):
            yield Finding("POSTED_INTR_DESC_ADDR", address, "must be 64-byte aligned and below 2^%d (MAXPHYADDR)"
                          % ctx.caps.maxphyaddr)


@predicate("CTL-VPID-ZERO")
def _vpid(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc2", "ENABLE_VPID") and ctx.f("VIRTUAL_PROCESSOR_ID") == 0:
        yield Finding("VIRTUAL_PROCESSOR_ID", 0, "must not be 0 with %s (VPID 0 is the VMM's own)"
                      % ctl_label("proc2", "ENABLE_VPID"))


def _memtype_code(prefix: str) -> int:
    """EPTP memory-type code whose meaning starts with ``prefix`` ("UC", "WB")."""
    for value, meaning in reg("eptp", "memory_type").values.items():
        if meaning.upper().startswith(prefix + " "):
            return value
    raise KeyError(prefix)


@predicate("CTL-EPTP-MEMTYPE")
def _eptp_memtype(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.on("proc2", "ENABLE_EPT"):
        return
    eptp = ctx.f("EPT_POINTER")
    memtype = reg_get("eptp", "memory_type", eptp)
    cap = ctx.caps.ept_vpid_cap
    supported = []
    if reg_get("ept_vpid_cap", "memtype_uc", cap):
        supported.append(_memtype_code("UC"))
    if reg_get("ept_vpid_cap", "memtype_wb", cap):
        supported.append(_memtype_code("WB"))
    if memtype not in supported:
        yield Finding("EPT_POINTER", eptp, "bits 2:0 (memory type %d) must be one IA32_VMX_EPT_VPID_CAP supports: %s"
                      % (memtype, ", ".join(str(s) for s in supported) or "none"))


@predicate("CTL-EPTP-WALK-LENGTH")
def _eptp_walk(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.on("proc2", "ENABLE_EPT"):
        return
    eptp = ctx.f("EPT_POINTER")
    walk = reg_get("eptp", "walk_length_minus_1", eptp) + 1
    cap = ctx.caps.ept_vpid_cap
    supported = [levels for levels, name in ((4, "walk_length_4"), (5, "walk_length_5"))
                 if reg_get("ept_vpid_cap", name, cap)]
    if walk not in supported:
        yield Finding("EPT_POINTER", eptp, "bits 5:3 give a %d-level walk; IA32_VMX_EPT_VPID_CAP supports %s-level "
                      "(bits 5:3 = %s)" % (walk, "/".join(str(s) for s in supported) or "no",
                                          "/".join(str(s - 1) for s in supported) or "-"))


@predicate("CTL-EPTP-AD")
def _eptp_ad(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.on("proc2", "ENABLE_EPT"):
        return
    eptp = ctx.f("EPT_POINTER")
    if reg_get("eptp", "ad_enable", eptp) and not reg_get("ept_vpid_cap", "ad_flags", ctx.caps.ept_vpid_cap):
        yield Finding("EPT_POINTER", eptp, "bit 6 (accessed/dirty flags) must be 0: IA32_VMX_EPT_VPID_CAP[21] says "
                                           "the CPU has no EPT A/D flags")


@predicate("CTL-EPTP-RESERVED")
def _eptp_reserved(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.on("proc2", "ENABLE_EPT"):
        return
    eptp = ctx.f("EPT_POINTER")
    low_reserved = reserved_mask("eptp") & 0xFFF
    if eptp & low_reserved:
        yield Finding("EPT_POINTER", eptp, "bits 11:8 are reserved and must be 0 (set: %s)" % hexs(eptp & low_reserved))
    if reg_get("eptp", "sss_enable", eptp) and not reg_get("ept_vpid_cap", "supervisor_shadow_stack",
                                                           ctx.caps.ept_vpid_cap):
        yield Finding("EPT_POINTER", eptp, "bit 7 (supervisor shadow-stack control) must be 0: the CPU does not "
                                           "support it (IA32_VMX_EPT_VPID_CAP[23])")
    if not ctx.pa_ok(eptp):
        yield Finding("EPT_POINTER", eptp, "bits %d and above must be 0 (MAXPHYADDR %d)"
                      % (ctx.caps.maxphyaddr, ctx.caps.maxphyaddr))


def _needs_ept(ctx: Ctx, control: str) -> Iterator[Finding]:
    if ctx.on("proc2", control) and not ctx.on("proc2", "ENABLE_EPT"):
        yield Finding("SECONDARY_VM_EXEC_CONTROL", ctx.controls("proc2"), "%s requires %s" % (
            ctl_label("proc2", control), ctl_label("proc2", "ENABLE_EPT")))


@predicate("CTL-PML-NEEDS-EPT")
def _pml_ept(ctx: Ctx) -> Iterator[Finding]:
    return _needs_ept(ctx, "ENABLE_PML")


@predicate("CTL-PML-ADDR")
def _pml_addr(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc2", "ENABLE_PML"):
        yield from _page_address(ctx, "PML_ADDRESS", "with %s" % ctl_label("proc2", "ENABLE_PML"))


@predicate("CTL-URG-NEEDS-EPT")
def _urg_ept(ctx: Ctx) -> Iterator[Finding]:
    return _needs_ept(ctx, "UNRESTRICTED_GUEST")


@predicate("CTL-MBEC-NEEDS-EPT")
def _mbec_ept(ctx: Ctx) -> Iterator[Finding]:
    return _needs_ept(ctx, "MODE_BASED_EPT_EXEC")


@predicate("CTL-SPP-NEEDS-EPT")
def _spp_ept(ctx: Ctx) -> Iterator[Finding]:
    return _needs_ept(ctx, "ENABLE_SPP")


@predicate("CTL-SPPTP-ADDR")
def _spptp(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc2", "ENABLE_SPP"):
        yield from _page_address(ctx, "SPPT_POINTER", "with %s" % ctl_label("proc2", "ENABLE_SPP"))


@predicate("CTL-PT-GPA")
def _pt_gpa(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.on("proc2", "PT_USE_GPA"):
        return
    needed = [("proc2", "ENABLE_EPT"), ("entry", "LOAD_IA32_RTIT_CTL"), ("exit", "CLEAR_IA32_RTIT_CTL")]
    missing = [ctl_label(g, n) for g, n in needed if not ctx.on(g, n)]
    if missing:
        yield Finding("SECONDARY_VM_EXEC_CONTROL", ctx.controls("proc2"), "%s requires %s" % (
            ctl_label("proc2", "PT_USE_GPA"), ", ".join(missing)))


@predicate("CTL-VMFUNC-RESERVED")
def _vmfunc(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc2", "ENABLE_VMFUNC"):
        value = ctx.f("VM_FUNCTION_CONTROL")
        extra = value & ~ctx.caps.vmfunc
        if extra:
            yield Finding("VM_FUNCTION_CONTROL", value, "bits %s must be 0: IA32_VMX_VMFUNC (%s) does not allow them"
                          % (hexs(extra), hexs(ctx.caps.vmfunc)))


def _eptp_switching(ctx: Ctx) -> bool:
    return ctx.on("proc2", "ENABLE_VMFUNC") and bool(reg_get("vmfunc", "eptp_switching", ctx.f("VM_FUNCTION_CONTROL")))


@predicate("CTL-EPTP-SWITCH-NEEDS-EPT")
def _eptp_switch_ept(ctx: Ctx) -> Iterator[Finding]:
    if _eptp_switching(ctx) and not ctx.on("proc2", "ENABLE_EPT"):
        yield Finding("VM_FUNCTION_CONTROL", ctx.f("VM_FUNCTION_CONTROL"), "EPTP switching (bit 0) requires %s"
                      % ctl_label("proc2", "ENABLE_EPT"))


@predicate("CTL-EPTP-LIST-ADDR")
def _eptp_list(ctx: Ctx) -> Iterator[Finding]:
    if _eptp_switching(ctx):
        yield from _page_address(ctx, "EPTP_LIST_ADDRESS", "with EPTP switching enabled")


@predicate("CTL-VMCS-SHADOW-BITMAPS")
def _shadow_bitmaps(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc2", "SHADOW_VMCS"):
        for name in ("VMREAD_BITMAP", "VMWRITE_BITMAP"):
            yield from _page_address(ctx, name, "with %s" % ctl_label("proc2", "SHADOW_VMCS"))


@predicate("CTL-VE-INFO-ADDR")
def _ve_info(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc2", "EPT_VIOLATION_VE"):
        yield from _page_address(ctx, "VE_INFORMATION_ADDRESS", "with %s" % ctl_label("proc2", "EPT_VIOLATION_VE"))


@predicate("CTL-TSC-MULTIPLIER-ZERO")
def _tsc_multiplier(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("proc2", "TSC_SCALING") and ctx.f("TSC_MULTIPLIER") == 0:
        yield Finding("TSC_MULTIPLIER", 0, "must not be 0 with %s" % ctl_label("proc2", "TSC_SCALING"))


# -- 26.2.1.2 VM-exit control fields ----------------------------------------------------------

@predicate("CTL-EXIT-RESERVED")
def _exit(ctx: Ctx) -> Iterator[Finding]:
    return allowed_settings(ctx, "exit")


@predicate("CTL-EXIT2-RESERVED")
def _exit2(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("exit", "ACTIVATE_SECONDARY_CONTROLS"):
        yield from allowed_settings(ctx, "exit2")


@predicate("CTL-EXIT-PREEMPT-SAVE")
def _preempt_save(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("exit", "SAVE_VMX_PREEMPTION_TIMER") and not ctx.on("pin", "VMX_PREEMPTION_TIMER"):
        yield Finding("VM_EXIT_CONTROLS", ctx.controls("exit"), "%s requires %s" % (
            ctl_label("exit", "SAVE_VMX_PREEMPTION_TIMER"), ctl_label("pin", "VMX_PREEMPTION_TIMER")))


def msr_area(ctx: Ctx, count_field: str, addr_field: str) -> Iterator[Finding]:
    """An MSR area of ``count`` 16-byte entries: 16-byte aligned, first and last byte within
    MAXPHYADDR (nothing is required when the count is 0)."""
    count = ctx.f(count_field)
    if count == 0:
        return
    address = ctx.f(addr_field)
    last = address + MSR_ENTRY_SIZE * count - 1
    if address & (MSR_ENTRY_SIZE - 1):
        yield Finding(addr_field, address, "must be 16-byte aligned (bits 3:0 = 0) when %s is %d"
                      % (count_field, count))
    if not ctx.pa_ok(address):
        yield Finding(addr_field, address, "must be below 2^%d (MAXPHYADDR)" % ctx.caps.maxphyaddr)
    elif not ctx.pa_ok(last):
        yield Finding(addr_field, address, "the last byte of the %d-entry area (0x%x) must be below 2^%d (MAXPHYADDR)"
                      % (count, last, ctx.caps.maxphyaddr))


@predicate("CTL-EXIT-MSR-STORE-ADDR")
def _exit_store(ctx: Ctx) -> Iterator[Finding]:
    return msr_area(ctx, "VM_EXIT_MSR_STORE_COUNT", "VM_EXIT_MSR_STORE_ADDR")


@predicate("CTL-EXIT-MSR-LOAD-ADDR")
def _exit_load(ctx: Ctx) -> Iterator[Finding]:
    return msr_area(ctx, "VM_EXIT_MSR_LOAD_COUNT", "VM_EXIT_MSR_LOAD_ADDR")


@predicate("CTL-MSR-LIST-TOO-LONG")
def _msr_list_length(ctx: Ctx) -> Iterator[Finding]:
    limit = MSR_LIST_UNIT * (reg_get("vmx_misc", "max_msr_list", ctx.caps.misc) + 1)
    for name in ("VM_EXIT_MSR_STORE_COUNT", "VM_EXIT_MSR_LOAD_COUNT", "VM_ENTRY_MSR_LOAD_COUNT"):
        count = ctx.f(name)
        if count > limit:
            yield Finding(name, count, "exceeds the recommended maximum of %d entries (IA32_VMX_MISC[27:25]); the "
                                       "SDM leaves the behaviour undefined" % limit)


# -- 26.2.1.3 VM-entry control fields ----------------------------------------------------------

@predicate("CTL-ENTRY-RESERVED")
def _entry(ctx: Ctx) -> Iterator[Finding]:
    return allowed_settings(ctx, "entry")


@predicate("CTL-ENTRY-SMM")
def _entry_smm(ctx: Ctx) -> Iterator[Finding]:
    smm = ctx.on("entry", "SMM")
    deact = ctx.on("entry", "DEACT_DUAL_MONITOR")
    if not ctx.env.in_smm:
        for name, on in (("SMM", smm), ("DEACT_DUAL_MONITOR", deact)):
            if on:
                yield Finding("VM_ENTRY_CONTROLS", ctx.controls("entry"), "%s must be 0 outside SMM"
                              % ctl_label("entry", name))
    elif smm and deact:
        yield Finding("VM_ENTRY_CONTROLS", ctx.controls("entry"), "%s and %s must not both be 1" % (
            ctl_label("entry", "SMM"), ctl_label("entry", "DEACT_DUAL_MONITOR")))


def _entry_reserved_bits() -> int:
    """Bits 30:12 of the VM-entry interruption-information field."""
    return bits_between("interruption_info", "error_code_valid", "valid")


@predicate("CTL-EVENT-RESERVED")
def _event_reserved(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is not None and event.info & _entry_reserved_bits():
        yield Finding("VM_ENTRY_INTR_INFO_FIELD", event.info, "bits 30:12 must be 0 (set: %s)"
                      % hexs(event.info & _entry_reserved_bits()))


@predicate("CTL-EVENT-TYPE")
def _event_type(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is None:
        return
    if event.is_type("reserved"):
        yield Finding("VM_ENTRY_INTR_INFO_FIELD", event.info, "interruption type 1 is reserved")
    elif event.is_type("other event") and not ctx.caps.may_be_one("proc", ctl_mask("proc", "MONITOR_TRAP_FLAG")):
        yield Finding("VM_ENTRY_INTR_INFO_FIELD", event.info, "type 7 (other event) needs a CPU that supports the "
                                                              "monitor trap flag, and this one does not")


@predicate("CTL-EVENT-VECTOR")
def _event_vector(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is None:
        return
    if event.is_type("NMI") and event.vector != NMI_VECTOR:
        yield Finding("VM_ENTRY_INTR_INFO_FIELD", event.info, "an injected NMI must use vector 2 (not %d)"
                      % event.vector)
    elif event.is_type("hardware exception") and event.vector > MAX_EXCEPTION_VECTOR:
        yield Finding("VM_ENTRY_INTR_INFO_FIELD", event.info, "a hardware exception must have a vector 0-31 (not %d)"
                      % event.vector)
    elif event.is_type("other event") and event.vector != 0:
        yield Finding("VM_ENTRY_INTR_INFO_FIELD", event.info, "type 7 (pending MTF) must use vector 0 (not %d)"
                      % event.vector)


def error_code_vectors(ctx: Ctx) -> frozenset:
    """Exceptions that deliver an error code on this processor."""
    if ctx.caps.default("cet"):
        return ERROR_CODE_VECTORS | {CP_VECTOR}
    return ERROR_CODE_VECTORS


@predicate("CTL-EVENT-ERRCODE-DELIVER")
def _event_errcode(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is None:
        return
    # protected-mode delivery: URG off, or the guest's CR0.PE set (real-mode guests never push codes)
    protected = not ctx.urg() or bool(reg_get("cr0", "pe", ctx.f("GUEST_CR0")))
    hardware = event.is_type("hardware exception")
    if event.deliver and not hardware:
        yield Finding("VM_ENTRY_INTR_INFO_FIELD", event.info, "bit 11 (deliver error code) must be 0 for %s; only "
                      "hardware exceptions push an error code" % event.describe())
        return
    if event.deliver and not protected:
        yield Finding("VM_ENTRY_INTR_INFO_FIELD", event.info, "bit 11 (deliver error code) must be 0 for an "
                                                              "unrestricted guest with CR0.PE = 0 (real mode)")
        return
    if hardware and protected and not reg_get("vmx_basic", "no_hw_error_code_check", ctx.caps.basic):
        expected = event.vector in error_code_vectors(ctx)
        if event.deliver != expected:
            yield Finding("VM_ENTRY_INTR_INFO_FIELD", event.info, "bit 11 (deliver error code) must be %d for vector "
                          "%d (error-code vectors: %s); IA32_VMX_BASIC[56] = 0 so the CPU enforces it"
                          % (int(expected), event.vector, ", ".join(str(v) for v in sorted(error_code_vectors(ctx)))))


@predicate("CTL-EVENT-ERRCODE-VALUE")
def _event_errcode_value(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is not None and event.deliver:
        code = ctx.f("VM_ENTRY_EXCEPTION_ERROR_CODE")
        if code >> 16:
            yield Finding("VM_ENTRY_EXCEPTION_ERROR_CODE", code, "bits 31:16 must be 0 when an error code is delivered")


@predicate("CTL-EVENT-INSTR-LEN")
def _event_length(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is None:
        return
    if not any(event.is_type(t) for t in ("software interrupt", "privileged software exception", "software exception")):
        return
    length = ctx.f("VM_ENTRY_INSTRUCTION_LEN")
    if length > MAX_INSTRUCTION_LENGTH:
        yield Finding("VM_ENTRY_INSTRUCTION_LEN", length, "must be at most 15 for %s" % event.describe())
    elif length == 0 and not reg_get("vmx_misc", "zero_len_injection", ctx.caps.misc):
        yield Finding("VM_ENTRY_INSTRUCTION_LEN", 0, "must be 1-15 for %s: IA32_VMX_MISC[30] = 0, so length 0 is not "
                                                     "allowed" % event.describe())


@predicate("CTL-ENTRY-MSR-LOAD-ADDR")
def _entry_load(ctx: Ctx) -> Iterator[Finding]:
    return msr_area(ctx, "VM_ENTRY_MSR_LOAD_COUNT", "VM_ENTRY_MSR_LOAD_ADDR")


# -- pages the controls point at, against the target's memory (advisory) -------------------------

def _pointers(ctx: Ctx) -> Iterator[Tuple[str, int]]:
    """(field, physical page) for every page the active controls make the CPU use."""
    if ctx.on("proc", "USE_IO_BITMAPS"):
        yield "IO_BITMAP_A", ctx.f("IO_BITMAP_A")
        yield "IO_BITMAP_B", ctx.f("IO_BITMAP_B")
    if ctx.on("proc", "USE_MSR_BITMAPS"):
        yield "MSR_BITMAP", ctx.f("MSR_BITMAP")
    if ctx.on("proc", "TPR_SHADOW"):
        yield "VIRTUAL_APIC_PAGE_ADDR", ctx.f("VIRTUAL_APIC_PAGE_ADDR")
    if ctx.on("proc2", "ENABLE_EPT"):
        yield "EPT_POINTER", reg("eptp", "pml4_pa").mask & ctx.f("EPT_POINTER")
    if ctx.on("proc2", "ENABLE_PML"):
        yield "PML_ADDRESS", ctx.f("PML_ADDRESS")
    if ctx.on("proc2", "SHADOW_VMCS"):
        yield "VMREAD_BITMAP", ctx.f("VMREAD_BITMAP")
        yield "VMWRITE_BITMAP", ctx.f("VMWRITE_BITMAP")
    if ctx.on("pin", "POSTED_INTR"):
        yield "POSTED_INTR_DESC_ADDR", ctx.f("POSTED_INTR_DESC_ADDR")
    for count, addr in (("VM_EXIT_MSR_STORE_COUNT", "VM_EXIT_MSR_STORE_ADDR"),
                        ("VM_EXIT_MSR_LOAD_COUNT", "VM_EXIT_MSR_LOAD_ADDR"),
                        ("VM_ENTRY_MSR_LOAD_COUNT", "VM_ENTRY_MSR_LOAD_ADDR")):
        if ctx.f(count):
            yield addr, ctx.f(addr)


@predicate("ADV-POINTER-OUTSIDE-MEMORY")
def _outside_memory(ctx: Ctx) -> Iterator[Finding]:
    for field, address in _pointers(ctx):
        if not ctx.pa_ok(address):
            continue  # the address rules report it
        if ctx.memory.present(address) is False:
            yield Finding(field, address, "points at physical page 0x%x, which %s does not have (a virtual address, "
                          "or memory freed since?)" % (address & ~0xFFF, ctx.memory.description))
