"""A valid VM-entry baseline (shared/reference/vmentry-checks.md section 5) for the checker tests.

:func:`baseline_caps` is the Skylake-SP-class capability profile of that section;
:func:`baseline_snapshot` a 64-bit host entering a 64-bit flat guest with EPT and VPID, as a
snapshot object.  ``adjust_controls`` fits the control fields to other capabilities (the Bochs
lab models) the way a VMM does: (wanted | must-be-1) & may-be-1.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from vtdbg.arch import controls
from vtdbg.core.check.caps import Caps

VMCS_PA = 0x1F00000
VMXON_PA = 0x1E00000
VAPIC_PA = 0x3001000
LINK_SPARE_PA = 0x300A000
EPT_PML4_PA = 0x3000000
REVISION = 4

#: IA32_VMX_* values of the section-5 profile (the halves the section leaves open are chosen to
#: allow every control the baseline uses).
BASELINE_MSRS = {
    0x480: 0x00DA040000000004,
    0x481: 0x0000007F00000016,
    0x482: 0xFFF9FFFE0401E172,
    0x483: 0x01FFFFFF00036DFF,
    0x484: 0x0003FFFF000011FF,
    0x485: 0x000000007004C1E7,
    0x486: 0x0000000080000021,
    0x487: 0x00000000FFFFFFFF,
    0x488: 0x0000000000002000,
    0x489: 0x00000000007767FF,
    0x48A: 0x000000000000002E,
    0x48B: 0x025F7FFF00000000,
    0x48C: 0x00000F0106734141,
    0x48D: 0x0000007F00000016,
    0x48E: 0xFFF9FFFE04006172,
    0x48F: 0x01FFFFFF00036DFB,
    0x490: 0x0003FFFF000011FB,
    0x491: 0x0000000000000001,
}

BASELINE_FIELDS: Dict[str, int] = {
    # controls
    "PIN_BASED_VM_EXEC_CONTROL": 0x3F,
    "CPU_BASED_VM_EXEC_CONTROL": 0x962061FA,
    "SECONDARY_VM_EXEC_CONTROL": 0x102A,
    "VM_EXIT_CONTROLS": 0x3FEFFF,
    "VM_ENTRY_CONTROLS": 0xD3FF,
    "EXCEPTION_BITMAP": 0,
    "PAGE_FAULT_ERROR_CODE_MASK": 0,
    "PAGE_FAULT_ERROR_CODE_MATCH": 0,
    "CR3_TARGET_COUNT": 0,
    "VM_EXIT_MSR_STORE_COUNT": 0,
    "VM_EXIT_MSR_LOAD_COUNT": 0,
    "VM_ENTRY_MSR_LOAD_COUNT": 0,
    "VM_EXIT_MSR_STORE_ADDR": 0,
    "VM_EXIT_MSR_LOAD_ADDR": 0,
    "VM_ENTRY_MSR_LOAD_ADDR": 0,
    "VM_ENTRY_INTR_INFO_FIELD": 0,
    "VM_ENTRY_EXCEPTION_ERROR_CODE": 0,
    "VM_ENTRY_INSTRUCTION_LEN": 0,
    "TPR_THRESHOLD": 0,
    "IO_BITMAP_A": 0x3002000,
    "IO_BITMAP_B": 0x3003000,
    "MSR_BITMAP": 0x3004000,
    "VIRTUAL_APIC_PAGE_ADDR": VAPIC_PA,
    "APIC_ACCESS_ADDR": 0,
    "TSC_OFFSET": 0,
    "EPT_POINTER": EPT_PML4_PA | (3 << 3) | 6,
    "VIRTUAL_PROCESSOR_ID": 1,
    "CR0_GUEST_HOST_MASK": 0,
    "CR4_GUEST_HOST_MASK": 0x2000,
    "CR0_READ_SHADOW": 0x80050033,
    "CR4_READ_SHADOW": 0x6A0,
    "VMCS_LINK_POINTER": 0xFFFFFFFFFFFFFFFF,
    # host
    "HOST_CR0": 0x80050033,
    "HOST_CR3": 0x1AD000,
    "HOST_CR4": 0x1526E0,
    "HOST_ES_SELECTOR": 0x28,
    "HOST_CS_SELECTOR": 0x10,
    "HOST_SS_SELECTOR": 0x18,
    "HOST_DS_SELECTOR": 0x28,
    "HOST_FS_SELECTOR": 0x50,
    "HOST_GS_SELECTOR": 0x28,
    "HOST_TR_SELECTOR": 0x40,
    "HOST_FS_BASE": 0,
    "HOST_GS_BASE": 0xFFFFF80000000000,
    "HOST_TR_BASE": 0xFFFFF80000001000,
    "HOST_GDTR_BASE": 0xFFFFF80000002000,
    "HOST_IDTR_BASE": 0xFFFFF80000003000,
    "HOST_IA32_SYSENTER_CS": 0,
    "HOST_IA32_SYSENTER_ESP": 0,
    "HOST_IA32_SYSENTER_EIP": 0,
    "HOST_IA32_PAT": 0x0007040600070406,
    "HOST_IA32_EFER": 0xD01,
    "HOST_RSP": 0xFFFFF80000200000,
    "HOST_RIP": 0xFFFFF80000100000,
    # guest
    "GUEST_CR0": 0x80050033,
    "GUEST_CR3": 0x13000,
    "GUEST_CR4": 0x26A0,
    "GUEST_DR7": 0x400,
    "GUEST_RSP": 0x500000,
    "GUEST_RIP": 0x401000,
    "GUEST_RFLAGS": 0x202,
    "GUEST_IA32_DEBUGCTL": 0,
    "GUEST_IA32_PAT": 0x0007040600070406,
    "GUEST_IA32_EFER": 0xD01,
    "GUEST_SYSENTER_CS": 0,
    "GUEST_SYSENTER_ESP": 0,
    "GUEST_SYSENTER_EIP": 0,
    "GUEST_GDTR_BASE": 0x10000,
    "GUEST_GDTR_LIMIT": 0x4F,
    "GUEST_IDTR_BASE": 0x11000,
    "GUEST_IDTR_LIMIT": 0xFFF,
    "GUEST_ACTIVITY_STATE": 0,
    "GUEST_INTERRUPTIBILITY_INFO": 0,
    "GUEST_PENDING_DBG_EXCEPTIONS": 0,
    "GUEST_PDPTR0": 0,
    "GUEST_PDPTR1": 0,
    "GUEST_PDPTR2": 0,
    "GUEST_PDPTR3": 0,
}
_SEGMENTS = {
    "CS": (0x08, 0, 0xFFFFFFFF, 0xA09B),
    "SS": (0x10, 0, 0xFFFFFFFF, 0xC093),
    "DS": (0x10, 0, 0xFFFFFFFF, 0xC093),
    "ES": (0x10, 0, 0xFFFFFFFF, 0xC093),
    "FS": (0x10, 0, 0xFFFFFFFF, 0xC093),
    "GS": (0x10, 0, 0xFFFFFFFF, 0xC093),
    "LDTR": (0x00, 0, 0, 0x82),
    "TR": (0x18, 0x12000, 0x67, 0x8B),
}
for _name, (_sel, _base, _limit, _ar) in _SEGMENTS.items():
    BASELINE_FIELDS["GUEST_%s_SELECTOR" % _name] = _sel
    BASELINE_FIELDS["GUEST_%s_BASE" % _name] = _base
    BASELINE_FIELDS["GUEST_%s_LIMIT" % _name] = _limit
    BASELINE_FIELDS["GUEST_%s_AR_BYTES" % _name] = _ar


def baseline_caps(msrs: Optional[Dict[int, int]] = None, maxphyaddr: int = 46) -> Caps:
    """The section-5 capability profile (or the given MSRs)."""
    return Caps(dict(msrs or BASELINE_MSRS), maxphyaddr, {}, "baseline profile")


def adjust_controls(fields: Dict[str, int], caps: Caps) -> Dict[str, int]:
    """Fit every control field to ``caps`` the way a VMM does."""
    out = dict(fields)
    for name in ("pin", "proc", "proc2", "exit", "entry"):
        grp = controls.group(name)
        allowed = caps.allowed(name)
        out[grp.field] = (out[grp.field] | allowed.must1) & allowed.may1
    return out


def baseline_snapshot(caps: Optional[Caps] = None) -> Dict[str, Any]:
    """The section-5 baseline as a snapshot object (controls fitted to ``caps`` if given)."""
    fields = adjust_controls(BASELINE_FIELDS, caps) if caps is not None else dict(BASELINE_FIELDS)
    revision = caps.revision_id if caps is not None else REVISION
    return copy.deepcopy({
        "fields": fields,
        "memory": [
            {"address": VMCS_PA, "size": 4, "value": revision},
            {"address": LINK_SPARE_PA, "size": 4, "value": revision},
            {"address": VAPIC_PA + 0x80, "size": 4, "value": 0},
        ],
        "vmcs_pa": VMCS_PA,
        "launch_state": "clear",
        "revision_id": revision,
        "environment": {"vmxon_pa": VMXON_PA},
    })
