"""Memory decoding and `--layout auto` on hand-built pages (SDM-valid baseline values).

The Bochs lab fixtures (tests/test_lab_decode.py) check the same code against a real VT-x
implementation; these tests pin down the layout choice among colliding revision ids.
"""
from __future__ import annotations

import os

import pytest

from vtdbg.arch.fields import lookup_field
from vtdbg.core.vmcs import MIN_CONFIDENCE, choose_layout, decode_vmcs_page, read_vmcs
from vtdbg.layouts.registry import get_layout
from vtdbg.lib.errors import LayoutError, MemoryReadError, UsageError
from vtdbg.target.image import ImageTarget

#: a valid 64-bit host/guest in VMREAD format (bochs-lab.md 3 and vmentry-checks.md 5)
BASELINE = {
    "PIN_BASED_VM_EXEC_CONTROL": 0x16, "CPU_BASED_VM_EXEC_CONTROL": 0x840061F2,
    "SECONDARY_VM_EXEC_CONTROL": 0x2, "VM_EXIT_CONTROLS": 0x36FFB, "VM_ENTRY_CONTROLS": 0x13FB,
    "VMCS_LINK_POINTER": 0xFFFFFFFFFFFFFFFF, "EPT_POINTER": 0x3001E,
    "HOST_CR0": 0x80000031, "HOST_CR3": 0x10000, "HOST_CR4": 0x2020, "HOST_RIP": 0x8AB7, "HOST_RSP": 0x70000,
    "HOST_CS_SELECTOR": 0x08, "HOST_SS_SELECTOR": 0x10, "HOST_TR_SELECTOR": 0x20,
    "GUEST_CR0": 0x80000031, "GUEST_CR3": 0x13000, "GUEST_CR4": 0x2020, "GUEST_RIP": 0x8AB1,
    "GUEST_RSP": 0x60000, "GUEST_RFLAGS": 0x2, "GUEST_CS_SELECTOR": 0x08, "GUEST_CS_AR_BYTES": 0xA09B,
    "GUEST_SS_AR_BYTES": 0xC093, "GUEST_TR_AR_BYTES": 0x8B, "GUEST_LDTR_AR_BYTES": 0x10000,
    "VM_EXIT_REASON": 0x12, "VM_EXIT_INSTRUCTION_LEN": 3,
}


def _values():
    return {lookup_field(name).encoding: value for name, value in BASELINE.items()}


@pytest.mark.parametrize("name, revision", [
    ("bochs_2_7", 0x2B), ("bochs_2_8_3_0", 0x2B), ("bochs_git_post_3_0", 0x2B), ("bochs_2_7", 0x04),
    ("kvm_vmcs12", None), ("kvm_vmcs12_linux3x_legacy", None), ("hyperv_evmcs_v1", None),
    ("virtualbox_vmxvvmcs", None), ("intel_nehalem_rev0x0e", None), ("intel_haswell_rev0x12", None),
    ("intel_sandybridge_ivybridge_rev0x10", None),
])
def test_auto_picks_the_layout_that_wrote_the_page(name, revision):
    layout = get_layout(name)
    page = layout.build_page(_values(), revision_id=revision, launch_state="launched")
    vmcs = decode_vmcs_page(page)
    assert vmcs.layout == name
    assert vmcs.layout_confidence >= 0.9
    supplied = layout.field_map()
    for encoding, value in _values().items():
        if encoding in supplied and supplied[encoding].certain:
            assert vmcs.values[encoding] == value, hex(encoding)


def test_rev4_bochs_page_is_not_taken_for_coffee_lake():
    page = get_layout("bochs_2_7").build_page(_values(), revision_id=0x04)
    assert decode_vmcs_page(page).layout == "bochs_2_7"


def test_forced_layout_always_decodes_and_warns_about_revision():
    page = get_layout("bochs_2_7").build_page(_values(), revision_id=0x04)
    vmcs = decode_vmcs_page(page, "kvm")
    assert vmcs.layout == "kvm_vmcs12"
    assert any("not one of layout kvm_vmcs12" in w for w in vmcs.warnings)
    assert any("fits this page poorly" in w for w in vmcs.warnings)


def test_garbage_and_empty_pages_are_refused_by_auto():
    with pytest.raises(LayoutError, match="does not look like a VMCS"):
        decode_vmcs_page((0x2B).to_bytes(4, "little") + os.urandom(4092))
    with pytest.raises(LayoutError, match="known layout for revision 0x1234"):
        decode_vmcs_page((0x1234).to_bytes(4, "little") + bytes(4092))


def test_shadow_bit_and_abort_indicator_are_reported():
    page = bytearray(get_layout("bochs_2_7").build_page(_values()))
    page[3] |= 0x80
    page[4] = 1
    vmcs = decode_vmcs_page(bytes(page))
    assert vmcs.shadow and vmcs.revision_id == 0x2B and vmcs.abort == 1
    assert any("VMX abort" in w for w in vmcs.warnings)


def test_read_vmcs_is_one_bulk_read_and_checks_alignment():
    from vtdbg.target.record import RecordingTarget

    memory = bytearray(0x30000)
    memory[0x21000:0x22000] = get_layout("bochs_2_7").build_page(_values())
    target = RecordingTarget(ImageTarget.from_bytes(bytes(memory)))
    vmcs = read_vmcs(target, 0x21000)
    assert target.transactions == 1 and vmcs.get("GUEST_RIP") == 0x8AB1
    with pytest.raises(UsageError, match="aligned"):
        read_vmcs(target, 0x21008)
    with pytest.raises(MemoryReadError):
        read_vmcs(target, 0x30000)


def test_confidence_threshold_is_meaningful():
    page = get_layout("bochs_2_7").build_page(_values())
    assert choose_layout(page).confidence >= MIN_CONFIDENCE
    assert choose_layout(page, "bochs_2_8_3_0").confidence < MIN_CONFIDENCE


def test_information_fields_are_not_over_decoded():
    from vtdbg.core.describe import decode_bits

    assert decode_bits("interruption_info", 0) == ["not valid"]
    # the lab's #PF exit: vector 14, hardware exception, error code delivered
    assert decode_bits("interruption_info", 0x80000B0E) == ["vector=14", "type=hardware exception",
                                                            "error_code_valid", "valid"]
