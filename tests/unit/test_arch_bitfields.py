"""Tests of the SDM bitfield knowledge base: controls, layouts and VMX capability MSRs.

Expected values come from the SDM, Linux arch/x86/include/asm/vmx.h and the Bochs lab
(shared/reference/bochs-lab.md), not from the tables under test.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Set

import pytest

from vtdbg.arch import bitfields, controls, msrs
from vtdbg.arch._data import data_path, load_table
from vtdbg.arch.errors import UnknownNameError

LAYOUT_NAMES = [
    # registers
    "cr0", "cr4", "efer", "rflags", "dr7", "pat", "debugctl", "segment_ar", "exception_bitmap",
    # VMCS information fields and EPT
    "interruption_info", "interruptibility", "activity_state", "pending_debug", "exit_reason", "eptp",
    "ept_pml4e", "ept_pdpte", "ept_pde", "ept_pte", "ept_leaf", "vmfunc",
    # exit qualifications
    "debug_exception", "page_fault", "task_switch", "invlpg", "instruction_displacement", "cr_access",
    "mov_dr", "io_instruction", "mwait", "sipi", "ept_violation", "apic_access", "apic_write", "eoi_induced",
    "smi", "entry_failure_invalid_guest", "msr_load_index", "notify",
    # instruction information
    "vmx_instruction", "ins_outs", "gdtr_idtr", "ldtr_tr", "rdrand_rdseed", "xsaves_xrstors",
    "invept_invpcid_invvpid", "vmread_vmwrite", "umwait_tpause", "loadiwkey",
    # capability MSRs
    "feature_control", "vmx_basic", "vmx_misc", "vmcs_enum", "ept_vpid_cap", "vmfunc_cap",
]

# SDM Appendix A.2: the default1 class of each 32-bit control group.
DEFAULT1 = {
    "pin": {1, 2, 4},
    "proc": {1, 4, 5, 6, 8, 13, 14, 15, 16, 26},
    "exit": set(range(0, 9)) | {10, 11, 13, 14, 16, 17},
    "entry": set(range(0, 9)) | {12},
    "proc2": set(),
    "proc3": set(),
    "exit2": set(),
}

# Linux arch/x86/include/asm/vmx.h masks (mainline names with group prefix).
LINUX_MASKS = [
    ("PIN_BASED_EXT_INTR_MASK", "pin", 0x1),
    ("PIN_BASED_NMI_EXITING", "pin", 0x8),
    ("PIN_BASED_VIRTUAL_NMIS", "pin", 0x20),
    ("PIN_BASED_VMX_PREEMPTION_TIMER", "pin", 0x40),
    ("PIN_BASED_POSTED_INTR", "pin", 0x80),
    ("CPU_BASED_INTR_WINDOW_EXITING", "proc", 0x4),
    ("CPU_BASED_USE_TSC_OFFSETTING", "proc", 0x8),
    ("CPU_BASED_HLT_EXITING", "proc", 0x80),
    ("CPU_BASED_INVLPG_EXITING", "proc", 0x200),
    ("CPU_BASED_MWAIT_EXITING", "proc", 0x400),
    ("CPU_BASED_RDPMC_EXITING", "proc", 0x800),
    ("CPU_BASED_RDTSC_EXITING", "proc", 0x1000),
    ("CPU_BASED_CR3_LOAD_EXITING", "proc", 0x8000),
    ("CPU_BASED_CR3_STORE_EXITING", "proc", 0x10000),
    ("CPU_BASED_ACTIVATE_TERTIARY_CONTROLS", "proc", 0x20000),
    ("CPU_BASED_CR8_LOAD_EXITING", "proc", 0x80000),
    ("CPU_BASED_CR8_STORE_EXITING", "proc", 0x100000),
    ("CPU_BASED_TPR_SHADOW", "proc", 0x200000),
    ("CPU_BASED_NMI_WINDOW_EXITING", "proc", 0x400000),
    ("CPU_BASED_MOV_DR_EXITING", "proc", 0x800000),
    ("CPU_BASED_UNCOND_IO_EXITING", "proc", 0x1000000),
    ("CPU_BASED_USE_IO_BITMAPS", "proc", 0x2000000),
    ("CPU_BASED_MONITOR_TRAP_FLAG", "proc", 0x8000000),
    ("CPU_BASED_USE_MSR_BITMAPS", "proc", 0x10000000),
    ("CPU_BASED_MONITOR_EXITING", "proc", 0x20000000),
    ("CPU_BASED_PAUSE_EXITING", "proc", 0x40000000),
    ("CPU_BASED_ACTIVATE_SECONDARY_CONTROLS", "proc", 0x80000000),
    ("SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES", "proc2", 1 << 0),
    ("SECONDARY_EXEC_ENABLE_EPT", "proc2", 1 << 1),
    ("SECONDARY_EXEC_DESC", "proc2", 1 << 2),
    ("SECONDARY_EXEC_ENABLE_RDTSCP", "proc2", 1 << 3),
    ("SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE", "proc2", 1 << 4),
    ("SECONDARY_EXEC_ENABLE_VPID", "proc2", 1 << 5),
    ("SECONDARY_EXEC_WBINVD_EXITING", "proc2", 1 << 6),
    ("SECONDARY_EXEC_UNRESTRICTED_GUEST", "proc2", 1 << 7),
    ("SECONDARY_EXEC_APIC_REGISTER_VIRT", "proc2", 1 << 8),
    ("SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY", "proc2", 1 << 9),
    ("SECONDARY_EXEC_PAUSE_LOOP_EXITING", "proc2", 1 << 10),
    ("SECONDARY_EXEC_RDRAND_EXITING", "proc2", 1 << 11),
    ("SECONDARY_EXEC_ENABLE_INVPCID", "proc2", 1 << 12),
    ("SECONDARY_EXEC_ENABLE_VMFUNC", "proc2", 1 << 13),
    ("SECONDARY_EXEC_SHADOW_VMCS", "proc2", 1 << 14),
    ("SECONDARY_EXEC_ENCLS_EXITING", "proc2", 1 << 15),
    ("SECONDARY_EXEC_RDSEED_EXITING", "proc2", 1 << 16),
    ("SECONDARY_EXEC_ENABLE_PML", "proc2", 1 << 17),
    ("SECONDARY_EXEC_EPT_VIOLATION_VE", "proc2", 1 << 18),
    ("SECONDARY_EXEC_PT_CONCEAL_VMX", "proc2", 1 << 19),
    ("SECONDARY_EXEC_ENABLE_XSAVES", "proc2", 1 << 20),
    ("SECONDARY_EXEC_MODE_BASED_EPT_EXEC", "proc2", 1 << 22),
    ("SECONDARY_EXEC_PT_USE_GPA", "proc2", 1 << 24),
    ("SECONDARY_EXEC_TSC_SCALING", "proc2", 1 << 25),
    ("SECONDARY_EXEC_ENABLE_USR_WAIT_PAUSE", "proc2", 1 << 26),
    ("SECONDARY_EXEC_BUS_LOCK_DETECTION", "proc2", 1 << 30),
    ("SECONDARY_EXEC_NOTIFY_VM_EXITING", "proc2", 1 << 31),
    ("TERTIARY_EXEC_IPI_VIRT", "proc3", 1 << 4),
    ("VM_EXIT_SAVE_DEBUG_CONTROLS", "exit", 0x4),
    ("VM_EXIT_HOST_ADDR_SPACE_SIZE", "exit", 0x200),
    ("VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL", "exit", 0x1000),
    ("VM_EXIT_ACK_INTR_ON_EXIT", "exit", 0x8000),
    ("VM_EXIT_SAVE_IA32_PAT", "exit", 0x40000),
    ("VM_EXIT_LOAD_IA32_PAT", "exit", 0x80000),
    ("VM_EXIT_SAVE_IA32_EFER", "exit", 0x100000),
    ("VM_EXIT_LOAD_IA32_EFER", "exit", 0x200000),
    ("VM_EXIT_SAVE_VMX_PREEMPTION_TIMER", "exit", 0x400000),
    ("VM_EXIT_CLEAR_BNDCFGS", "exit", 0x800000),
    ("VM_EXIT_PT_CONCEAL_PIP", "exit", 0x1000000),
    ("VM_EXIT_CLEAR_IA32_RTIT_CTL", "exit", 0x2000000),
    ("VM_EXIT_LOAD_CET_STATE", "exit", 0x10000000),
    ("VM_EXIT_ACTIVATE_SECONDARY_CONTROLS", "exit", 0x80000000),
    ("SECONDARY_VM_EXIT_SAVE_IA32_FRED", "exit2", 1 << 0),
    ("SECONDARY_VM_EXIT_LOAD_IA32_FRED", "exit2", 1 << 1),
    ("VM_ENTRY_LOAD_DEBUG_CONTROLS", "entry", 0x4),
    ("VM_ENTRY_IA32E_MODE", "entry", 0x200),
    ("VM_ENTRY_SMM", "entry", 0x400),
    ("VM_ENTRY_DEACT_DUAL_MONITOR", "entry", 0x800),
    ("VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL", "entry", 0x2000),
    ("VM_ENTRY_LOAD_IA32_PAT", "entry", 0x4000),
    ("VM_ENTRY_LOAD_IA32_EFER", "entry", 0x8000),
    ("VM_ENTRY_LOAD_BNDCFGS", "entry", 0x10000),
    ("VM_ENTRY_PT_CONCEAL_PIP", "entry", 0x20000),
    ("VM_ENTRY_LOAD_IA32_RTIT_CTL", "entry", 0x40000),
    ("VM_ENTRY_LOAD_CET_STATE", "entry", 0x100000),
    ("VM_ENTRY_LOAD_IA32_FRED", "entry", 0x800000),
]


def _decoded(name: str, value: int) -> Dict[str, bitfields.DecodedBit]:
    """Decode ``value`` with layout ``name`` into a field-name -> DecodedBit map."""
    return {item.name: item for item in bitfields.layout(name).decode(value)}


# ----------------------------------------------------------------------------- layouts


def test_required_layouts_exist() -> None:
    """Every layout name other modules rely on is defined."""
    names = set(bitfields.all_layouts())
    missing = [name for name in LAYOUT_NAMES if name not in names]
    assert not missing


@pytest.mark.parametrize("name", sorted(load_table("bitfields.json")["layouts"]))
def test_layout_is_well_formed(name: str) -> None:
    """Fields are unique, inside the width, non-overlapping, and their enums and conditions fit."""
    lay = bitfields.layout(name)
    assert lay.width in (8, 16, 32, 64)
    assert lay.fields, "layout has no fields"
    assert lay.title and lay.sdm
    seen_names: Set[str] = set()
    used = 0
    for item in lay.fields:
        assert item.name not in seen_names, "duplicate field %s" % item.name
        seen_names.add(item.name)
        assert item.width >= 1 and item.lsb >= 0
        assert item.msb < lay.width, "%s lies outside the %d-bit layout" % (item.name, lay.width)
        if not item.applies_if:
            assert used & item.mask == 0, "%s overlaps another field" % item.name
        used |= item.mask
        assert item.format in bitfields.FORMATS
        assert item.description
        for raw in item.values:
            assert 0 <= raw < (1 << item.width), "%s: value %d does not fit" % (item.name, raw)
        if item.format == "enum":
            assert item.values
    # fields that share bits must be alternatives: conditions on one selector, disjoint values
    for index, item in enumerate(lay.fields):
        for later in lay.fields[index + 1:]:
            if item.mask & later.mask:
                shared = set(item.applies_if) & set(later.applies_if)
                assert any(not set(item.applies_if[k]) & set(later.applies_if[k]) for k in shared), (
                    "%s and %s overlap without exclusive applies_if" % (item.name, later.name))
    for item in lay.fields:
        for other, allowed in item.applies_if.items():
            assert other != item.name and other in seen_names, "%s: bad applies_if %s" % (item.name, other)
            width = lay.field(other).width
            assert allowed and all(0 <= v < (1 << width) for v in allowed)
    assert lay.reserved_mask() == lay.value_mask & ~used


def test_unknown_layout_raises_keyerror() -> None:
    """An unknown layout name raises KeyError."""
    with pytest.raises(KeyError):
        bitfields.layout("no_such_layout")


def test_field_extract_and_mask() -> None:
    """BitField mask/extract/insert agree with the SDM port field (31:16)."""
    port = bitfields.layout("io_instruction").field("port")
    assert port.mask == 0xFFFF0000
    assert port.extract(0xE90040) == 0xE9
    assert port.bits_text() == "31:16"
    assert port.insert(0, 0x3F8) == 0x3F80000


def test_exception_bitmap_is_complete() -> None:
    """The exception bitmap has one bit per vector, named after the exception."""
    lay = bitfields.layout("exception_bitmap")
    assert len(lay.fields) == 32
    assert lay.reserved_mask() == 0
    by_bit = {item.lsb: item.name for item in lay.fields}
    assert by_bit[0] == "de" and by_bit[1] == "db" and by_bit[2] == "nmi" and by_bit[3] == "bp"
    assert by_bit[6] == "ud" and by_bit[8] == "df" and by_bit[13] == "gp" and by_bit[14] == "pf"
    assert by_bit[16] == "mf" and by_bit[17] == "ac" and by_bit[18] == "mc" and by_bit[19] == "xm"
    assert by_bit[20] == "ve" and by_bit[21] == "cp"
    assert lay.set_flags(0xFFFFFFFF)[14] == "pf"


def test_register_bits_match_the_sdm() -> None:
    """CR0, CR4, EFER, PAT, DR7 and RFLAGS bits sit where the SDM puts them."""
    cr0 = bitfields.layout("cr0")
    assert cr0.set_flags(0x80000021) == ["pe", "ne", "pg"]
    cr4 = {item.name: item.lsb for item in bitfields.layout("cr4").fields}
    assert cr4["vmxe"] == 13 and cr4["pae"] == 5 and cr4["la57"] == 12 and cr4["pcide"] == 17
    assert cr4["cet"] == 23 and cr4["pks"] == 24 and cr4["lass"] == 27 and cr4["lam_sup"] == 28
    assert cr4["fred"] == 32
    assert bitfields.layout("efer").set_flags(0xD01) == ["sce", "lme", "lma", "nxe"]
    pat = _decoded("pat", 0x0007040600070406)
    assert pat["pa0"].meaning is not None and pat["pa0"].meaning.startswith("WB")
    assert pat["pa3"].value == 0 and pat["pa2"].value == 7
    dr7 = _decoded("dr7", 0x400 | 0x2 | (0x1 << 16) | (0x3 << 18))
    assert dr7["g0"].value == 1 and dr7["rw0"].meaning == "data writes" and dr7["len0"].meaning == "4 bytes"
    assert bitfields.layout("rflags").set_flags(0x202) == ["if"]


def test_segment_access_rights_decode() -> None:
    """The lab's CS access rights 0xA09B decode to a 64-bit code segment."""
    ar = _decoded("segment_ar", 0xA09B)
    assert ar["type"].value == 11
    meaning = ar["type"].meaning or ""
    assert "code" in meaning and "execute/read" in meaning and "accessed" in meaning
    assert ar["s"].value == 1 and ar["dpl"].value == 0 and ar["p"].value == 1
    assert ar["l"].value == 1 and ar["db"].value == 0 and ar["g"].value == 1 and ar["unusable"].value == 0
    assert bitfields.layout("segment_ar").set_flags(0x10000) == ["unusable"]
    assert "TSS busy" in (_decoded("segment_ar", 0x8B)["system_type"].meaning or "")
    assert not _decoded("segment_ar", 0x8B)["type"].applies


def test_interruption_info_page_fault() -> None:
    """0x80000B0E is a valid #PF hardware exception with an error code."""
    info = _decoded("interruption_info", 0x80000B0E)
    assert info["vector"].value == 14
    assert info["type"].value == 3 and info["type"].meaning == "hardware exception"
    assert info["error_code_valid"].value == 1 and info["valid"].value == 1
    assert info["nmi_unblocking_iret"].value == 0


def test_exit_reason_and_pending_debug() -> None:
    """Exit-reason flag bits and pending-debug bits decode as in the SDM."""
    reason = _decoded("exit_reason", 0x80000021)
    assert reason["basic"].value == 33 and reason["entry_failure"].value == 1
    lay = bitfields.layout("exit_reason")
    assert {f.name: f.lsb for f in lay.fields if f.width == 1} == {
        "bus_lock": 26, "enclave": 27, "pending_mtf": 28, "from_vmx_root": 29, "entry_failure": 31}
    assert bitfields.layout("pending_debug").set_flags(0x15001) == ["b0", "enabled_bp", "bs", "rtm"]


def test_ept_structures_from_the_bochs_lab() -> None:
    """The lab's EPTP (0x3001E) and 2-MByte PDE (0xB7) decode correctly."""
    eptp = _decoded("eptp", 0x3001E)
    assert eptp["memory_type"].value == 6 and eptp["walk_length_minus_1"].value == 3
    assert eptp["ad_enable"].value == 0 and eptp["pml4_pa"].in_place == 0x30000
    pde = _decoded("ept_pde", 0xB7)  # lab: 2-MByte page, RWX, WB
    assert pde["ps"].value == 1 and pde["memory_type"].value == 6 and pde["memory_type"].applies
    assert pde["read"].value == pde["write"].value == pde["execute"].value == 1
    table_ref = _decoded("ept_pde", 0x31007)
    assert not table_ref["memory_type"].applies and table_ref["address"].in_place == 0x31000
    pte = {f.name: f.lsb for f in bitfields.layout("ept_pte").fields}
    assert pte["verify_guest_paging"] == 57 and pte["paging_write"] == 58 and pte["sss"] == 60
    assert pte["spp"] == 61 and pte["suppress_ve"] == 63 and pte["user_execute"] == 10
    assert bitfields.layout("ept_pdpte_1g").field("address").lsb == 30
    assert bitfields.layout("ept_pde_2m").field("address").lsb == 21


# ----------------------------------------------------------------------------- exit qualifications


def test_ept_violation_read_with_gla() -> None:
    """The lab's EPT-violation qualification 0x181 is a read with a valid, translated GLA."""
    lay = bitfields.layout("ept_violation")
    assert lay.set_flags(0x181) == ["read", "gla_valid", "gla_translation"]
    decoded = _decoded("ept_violation", 0x181)
    assert decoded["gla_translation"].applies
    assert decoded["gla_translation"].meaning == "the translation of the linear address"
    assert not _decoded("ept_violation", 0x1)["gla_translation"].applies
    assert decoded["user_mode_linear"].applies  # bits 9-11 need bits 7 and 8
    assert not _decoded("ept_violation", 0x81)["nx_linear"].applies
    bits = {f.name: f.lsb for f in lay.fields}
    assert bits["nmi_unblocking"] == 12 and bits["shadow_stack"] == 13
    assert bits["guest_paging_verification"] == 15 and bits["asynchronous"] == 16


def test_cr_access_qualifications() -> None:
    """MOV CR, CLTS and LMSW qualifications decode with the right applies_if results."""
    mov_to_cr3 = _decoded("cr_access", 0x3)  # MOV CR3, RAX
    assert mov_to_cr3["cr_number"].meaning == "CR3"
    assert mov_to_cr3["access_type"].meaning == "MOV to CR"
    assert mov_to_cr3["register"].applies and mov_to_cr3["register"].meaning == "RAX"
    assert not mov_to_cr3["lmsw_source_data"].applies and not mov_to_cr3["lmsw_operand_type"].applies
    mov_from_cr8 = _decoded("cr_access", 0x518)  # MOV RBP, CR8
    assert mov_from_cr8["access_type"].meaning == "MOV from CR" and mov_from_cr8["register"].meaning == "RBP"
    lmsw = _decoded("cr_access", 0x000F0070)  # LMSW from memory, source 0x000F
    assert lmsw["access_type"].meaning == "LMSW" and lmsw["lmsw_source_data"].applies
    assert lmsw["lmsw_source_data"].value == 0xF and lmsw["lmsw_operand_type"].meaning == "memory"
    assert not lmsw["register"].applies
    assert _decoded("cr_access", 0x20)["access_type"].meaning == "CLTS"


def test_io_and_other_qualifications() -> None:
    """I/O, task-switch, MOV DR, APIC-access and other qualifications decode as in the SDM."""
    out_imm = _decoded("io_instruction", 0xE90040)  # OUT 0xE9, AL
    assert out_imm["port"].value == 0xE9 and out_imm["size"].meaning == "1 byte"
    assert out_imm["direction"].meaning == "OUT" and out_imm["operand_encoding"].meaning == "immediate"
    rep_insw = _decoded("io_instruction", 0x1F00039)  # REP INSW, DX=0x1F0
    assert rep_insw["port"].value == 0x1F0 and rep_insw["size"].meaning == "2 bytes"
    assert rep_insw["direction"].meaning == "IN" and rep_insw["string"].value and rep_insw["rep"].value
    assert rep_insw["operand_encoding"].meaning == "DX"
    task = _decoded("task_switch", 0xC0000028)
    assert task["selector"].value == 0x28 and task["source"].meaning == "task gate in IDT"
    mov_dr = _decoded("mov_dr", 0x317)  # MOV RBX, DR7
    assert mov_dr["dr_number"].value == 7 and mov_dr["direction"].meaning == "MOV from DR"
    assert mov_dr["register"].meaning == "RBX"
    apic = _decoded("apic_access", 0x10B0)
    assert apic["offset"].value == 0xB0 and apic["access_type"].value == 1 and apic["offset"].applies
    assert not _decoded("apic_access", 0xF000)["offset"].applies
    assert bitfields.layout("debug_exception").set_flags(0x4001) == ["b0", "bs"]
    assert _decoded("entry_failure_invalid_guest", 2)["code"].meaning == "failure loading the PDPTEs"
    assert _decoded("entry_failure_invalid_guest", 4)["code"].meaning == "invalid VMCS link pointer"
    assert bitfields.layout("notify").set_flags(0x1001) == ["context_invalid", "nmi_unblocking"]


def test_instruction_information_layouts() -> None:
    """Instruction-information layouts decode register and memory operands."""
    # VMREAD RAX, RCX (register form): reg1 = RAX, reg2 = RCX, bit 10 set
    info = _decoded("vmread_vmwrite", (1 << 28) | (1 << 10) | (0 << 3))
    assert info["mem_reg"].meaning == "register" and info["reg1"].applies and info["reg1"].meaning == "RAX"
    assert info["reg2"].meaning == "RCX" and not info["base_reg"].applies and not info["segment"].applies
    # VMPTRLD [RBX+RSI*8] with 64-bit addressing, DS
    value = (3 << 0) | (2 << 7) | (3 << 15) | (6 << 18) | (3 << 23)
    vmx = _decoded("vmx_instruction", value)
    assert vmx["scaling"].meaning == "8" and vmx["address_size"].meaning == "64-bit"
    assert vmx["segment"].meaning == "DS" and vmx["index_reg"].meaning == "RSI" and vmx["base_reg"].meaning == "RBX"
    assert _decoded("xsaves_xrstors", value)["base_reg"].meaning == "RBX"
    no_index = _decoded("invept_invpcid_invvpid", (1 << 22) | (2 << 28))
    assert not no_index["index_reg"].applies and not no_index["scaling"].applies
    assert no_index["reg2"].meaning == "RDX"
    rdrand = _decoded("rdrand_rdseed", (9 << 3) | (2 << 11))
    assert rdrand["dest_reg"].meaning == "R9" and rdrand["operand_size"].meaning == "64-bit"
    sgdt = _decoded("gdtr_idtr", 0)
    assert sgdt["instruction"].meaning == "SGDT" and bitfields.layout("gdtr_idtr").field("operand_size").lsb == 11
    assert _decoded("ldtr_tr", 3 << 28)["instruction"].meaning == "LTR"
    ins = bitfields.layout("ins_outs")
    assert ins.field("address_size").lsb == 7 and ins.field("segment").lsb == 15
    key = _decoded("loadiwkey", (2 << 3) | (5 << 28))
    assert key["reg1"].value == 2 and key["reg2"].value == 5


# ----------------------------------------------------------------------------- controls


def test_control_names_unique_per_group() -> None:
    """Names are unique per group and every name or alias resolves to its own bit."""
    for group in controls.groups():
        names = [bit.name for bit in controls.bits(group)]
        assert len(names) == len(set(names)), group
        numbers = [bit.bit for bit in controls.bits(group)]
        assert len(numbers) == len(set(numbers)), group
        owners: Dict[str, int] = {}
        for bit in controls.bits(group):
            for text in (bit.name,) + bit.aliases:
                found = controls.lookup_control(text, group)
                assert found.bit == bit.bit, "%s.%s resolves to bit %d" % (group, text, found.bit)
                owners.setdefault(text.upper(), bit.bit)
                assert owners[text.upper()] == bit.bit


def test_controls_fit_their_group() -> None:
    """Every control bit lies inside its field and is documented."""
    for key, grp in controls.groups().items():
        assert grp.width in (32, 64)
        for bit in controls.bits(key):
            assert 0 <= bit.bit < grp.width
            assert bit.description and bit.sdm
            if not bit.reserved:
                assert bit.aliases, "%s.%s has no aliases" % (key, bit.name)


def test_default1_classes_match_the_sdm() -> None:
    """The default1 entries are exactly the SDM Appendix A.2 classes."""
    for group, expected in DEFAULT1.items():
        actual = {bit.bit for bit in controls.bits(group) if bit.default1}
        assert actual == expected, group
    assert controls.default1_mask("pin") == 0x16
    assert controls.default1_mask("proc") == 0x0401E172
    assert controls.default1_mask("exit") == 0x00036DFF
    assert controls.default1_mask("entry") == 0x000011FF
    assert controls.lookup_control("SAVE_DEBUG_CONTROLS", "exit").default1
    assert controls.lookup_control("LOAD_DEBUG_CONTROLS", "entry").default1
    reserved = controls.lookup_control("RESERVED_1", "proc")
    assert reserved.reserved and reserved.default1


@pytest.mark.parametrize("linux_name,group,mask", LINUX_MASKS)
def test_controls_match_linux(linux_name: str, group: str, mask: int) -> None:
    """Control bits agree with Linux's masks and canonical names drop the Linux prefix."""
    bit = controls.lookup_control(linux_name)
    assert bit.group == group and bit.mask == mask
    prefix = controls.group(group).linux_prefix
    assert linux_name.startswith(prefix)
    assert bit.name == linux_name[len(prefix):], "canonical name is the Linux name without its prefix"


def test_group_metadata() -> None:
    """Groups carry the right VMCS field and capability MSR indexes."""
    groups = controls.groups()
    assert list(groups) == ["pin", "proc", "proc2", "proc3", "exit", "exit2", "entry"]
    assert groups["pin"].msr == 0x481 and groups["pin"].true_msr == 0x48D
    assert groups["proc"].msr == 0x482 and groups["proc"].true_msr == 0x48E
    assert groups["proc2"].msr == 0x48B and groups["proc2"].true_msr is None
    assert groups["proc3"].msr == 0x492 and groups["proc3"].width == 64 and groups["proc3"].allowed1_only
    assert groups["exit"].msr == 0x483 and groups["exit"].true_msr == 0x48F
    assert groups["exit2"].msr == 0x493 and groups["exit2"].width == 64
    assert groups["entry"].msr == 0x484 and groups["entry"].true_msr == 0x490
    assert controls.group("SECONDARY_VM_EXEC_CONTROL").name == "proc2"
    assert controls.group("secondary").name == "proc2"


def test_lookup_control_variants() -> None:
    """lookup_control accepts names, aliases, phrases, numbers and group-qualified names."""
    assert controls.lookup_control("hlt_exiting").bit == 7
    assert controls.lookup_control("Enable EPT").name == "ENABLE_EPT"
    assert controls.lookup_control("IA32_VMX_PROCBASED_CTLS2_UNRESTRICTED_GUEST").bit == 7
    assert controls.lookup_control("unrestricted guest").group == "proc2"
    assert controls.lookup_control("31", "proc").name == "ACTIVATE_SECONDARY_CONTROLS"
    assert controls.lookup_control("0x1", "proc2").name == "ENABLE_EPT"
    assert controls.lookup_control("exit.load_ia32_efer").bit == 21
    assert controls.lookup_control("VM_ENTRY_LOAD_IA32_EFER").bit == 15
    with pytest.raises(controls.AmbiguousNameError):
        controls.lookup_control("LOAD_IA32_EFER")
    with pytest.raises(UnknownNameError):
        controls.lookup_control("NOT_A_CONTROL")
    with pytest.raises(KeyError):
        controls.lookup_control("29", "proc2")
    with pytest.raises(UnknownNameError):
        controls.group("nope")


def test_decode_bochs_lab_primary_controls() -> None:
    """The lab's primary controls 0x840061F2 decode to HLT exiting + secondary controls."""
    names = [bit.name for bit in controls.decode_controls("proc", 0x840061F2)]
    assert "HLT_EXITING" in names and names[-1] == "ACTIVATE_SECONDARY_CONTROLS"
    real = [bit.name for bit in controls.decode_controls("proc", 0x840061F2) if not bit.reserved]
    assert real == ["HLT_EXITING", "ACTIVATE_SECONDARY_CONTROLS"]
    assert controls.unknown_bits("proc", 0x840061F2) == 0
    assert controls.control_names("proc2", 0x2) == ["ENABLE_EPT"]
    assert controls.unknown_bits("proc2", 1 << 29) == 1 << 29
    assert controls.unknown_bits("pin", 1 << 40) == 1 << 40


# ----------------------------------------------------------------------------- MSRs


def test_msr_table_is_consistent() -> None:
    """Every MSR entry is unique, well typed and refers to existing groups/layouts."""
    seen: Set[int] = set()
    for msr in msrs.all_msrs():
        assert msr.index not in seen
        seen.add(msr.index)
        assert msr.kind in msrs.KINDS
        assert any(alias.startswith("MSR_IA32_") for alias in msr.aliases), msr.name
        if msr.kind in ("controls", "controls64"):
            grp = controls.group(str(msr.group))
            assert msr.index == (grp.true_msr if msr.true else grp.msr)
        elif msr.kind in ("bitfield", "allowed1"):
            bitfields.layout(str(msr.layout))
        else:
            assert msr.register in ("cr0", "cr4") and msr.fixed in ("0", "1")
    assert seen == {0x3A} | set(range(0x480, 0x494))


def test_lookup_msr() -> None:
    """lookup_msr accepts names, Linux aliases and index numbers."""
    assert msrs.lookup_msr("IA32_VMX_BASIC").index == 0x480
    assert msrs.lookup_msr("msr_ia32_vmx_procbased_ctls2").index == 0x48B
    assert msrs.lookup_msr("0x491").name == "IA32_VMX_VMFUNC"
    assert msrs.lookup_msr("48Ch").name == "IA32_VMX_EPT_VPID_CAP"
    assert msrs.lookup_msr(0x3A).name == "IA32_FEATURE_CONTROL"
    assert msrs.lookup_msr("MSR_IA32_FEAT_CTL").index == 0x3A
    with pytest.raises(UnknownNameError):
        msrs.lookup_msr("IA32_VMX_NOPE")
    with pytest.raises(KeyError):
        msrs.msr_by_index(0x494)


def test_decode_vmx_basic() -> None:
    """IA32_VMX_BASIC from the Bochs lab decodes to revision 0x2B, 4 KByte, WB, TRUE controls."""
    result = msrs.decode_msr(0x480, 0x00D810000000002B)
    fields = {item["name"]: item["value"] for item in result["fields"]}
    assert fields["revision_id"] == 0x2B and fields["region_size"] == 0x1000
    assert fields["memory_type"] == 6 and fields["ins_outs_info"] == 1 and fields["true_ctls"] == 1
    assert fields["phys_addr_width_32"] == 0 and fields["dual_monitor"] == 0
    meaning = {item["name"]: item["meaning"] for item in result["fields"]}
    assert meaning["memory_type"].startswith("WB")
    assert result["reserved_bits_set"] == 0
    tiger = msrs.decode_msr("IA32_VMX_BASIC", 0x01D8100000000004)
    assert "no_hw_error_code_check" in tiger["set_flags"]
    json.dumps(result)


def test_decode_control_msrs() -> None:
    """Control capability MSRs split into allowed-0 and allowed-1 settings with control names."""
    sec = msrs.decode_msr(0x48B, 0x02177FFF00000000)
    assert "ENABLE_EPT" in sec["may_be_one"] and "UNRESTRICTED_GUEST" in sec["may_be_one"]
    assert sec["allowed0"] == 0 and sec["allowed1"] == 0x02177FFF and sec["must_be_one"] == []
    true_proc = msrs.decode_msr("IA32_VMX_TRUE_PROCBASED_CTLS", 0xF7F9FFFE04006172)
    assert true_proc["allowed0"] == 0x04006172 and true_proc["allowed1"] == 0xF7F9FFFE
    assert true_proc["true"] is True and true_proc["group"] == "proc"
    assert "CR3_LOAD_EXITING" in true_proc["flexible"] and "RESERVED_1" in true_proc["must_be_one"]
    assert "ACTIVATE_TERTIARY_CONTROLS" in true_proc["must_be_zero"]
    proc = msrs.decode_msr(0x482, 0xF7F9FFFE0401E172)
    assert "CR3_LOAD_EXITING" in proc["must_be_one"] and proc["inconsistent"] == 0
    wide = msrs.decode_msr(0x492, 0x10)
    assert wide["may_be_one"] == ["IPI_VIRT"] and wide["allowed0"] == 0
    json.dumps([sec, true_proc, proc, wide])


def test_decode_other_msrs() -> None:
    """Fixed, misc, VMCS-enum, EPT/VPID, feature-control and VMFUNC MSRs decode as in the lab."""
    fixed0 = msrs.decode_msr(0x486, 0x80000021)
    assert fixed0["bits"] == ["pe", "ne", "pg"] and fixed0["register"] == "cr0" and fixed0["fixed"] == "0"
    assert msrs.decode_msr(0x488, 0x2000)["bits"] == ["vmxe"]
    misc = msrs.decode_msr(0x485, 0x600401E0)
    fields = {item["name"]: item["value"] for item in misc["fields"]}
    assert fields["store_lma"] == 1 and fields["activity_hlt"] == 1 and fields["activity_wait_for_sipi"] == 1
    assert fields["cr3_target_count"] == 4 and fields["vmwrite_any"] == 1 and fields["zero_len_injection"] == 1
    assert fields["preemption_timer_rate"] == 0
    enum = msrs.decode_msr(0x48A, 0x34)
    assert {item["name"]: item["value"] for item in enum["fields"]}["highest_index"] == 0x1A
    cap = msrs.decode_msr(0x48C, 0x00000F0106334141)
    assert cap["set_flags"] == [
        "execute_only", "walk_length_4", "memtype_uc", "memtype_wb", "pde_2mb", "pdpte_1gb", "invept",
        "ad_flags", "invept_single_context", "invept_all_context", "invvpid", "invvpid_individual_address",
        "invvpid_single_context", "invvpid_all_context", "invvpid_single_context_retaining_globals"]
    feat = msrs.decode_msr(0x3A, 0x5)
    assert feat["set_flags"] == ["lock", "vmx_outside_smx"]
    vmfunc = msrs.decode_msr(0x491, 0x1)
    assert vmfunc["may_be_one"] == ["eptp_switching"] and vmfunc["allowed1"] == 1
    json.dumps([fixed0, misc, enum, cap, feat, vmfunc])


def test_adjust_controls_reproduces_the_bochs_lab() -> None:
    """(desired | allowed0) & allowed1 reproduces the lab's control values."""
    assert msrs.adjust_controls(0, 0x0000007F00000016) == 0x16
    assert msrs.adjust_controls(0x80 | 0x80000000, 0xF7F9FFFE04006172) == 0x840061F2
    assert msrs.adjust_controls(0x80, 0xF7F9FFFE04006172) == 0x040061F2
    assert msrs.adjust_controls(0x200, 0x007FFFFF00036DFB) == 0x36FFB
    assert msrs.adjust_controls(0x200, 0x0000FFFF000011FB) == 0x13FB
    assert msrs.adjust_controls(0x2 | (1 << 29), 0x02177FFF00000000) == 0x2
    assert msrs.adjust_controls(0x13, 0x10, wide=True) == 0x10


# ----------------------------------------------------------------------------- cross-table


def _strings_under(obj: Any, keys: Set[str], inside: bool = False) -> Iterator[str]:
    """Every string found below one of ``keys`` in a JSON document."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _strings_under(value, keys, inside or key in keys)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings_under(value, keys, inside)
    elif isinstance(obj, str) and inside:
        yield obj


def test_exit_reason_layouts_exist() -> None:
    """Every qualification/instruction-info layout named by exit_reasons.json exists."""
    path = data_path("exit_reasons.json")
    if not os.path.exists(path):
        pytest.skip("exit_reasons.json not present")
    with open(path, encoding="utf-8") as handle:
        table = json.load(handle)
    referenced: List[str] = sorted(set(_strings_under(table, {"qualification", "instruction_info"})))
    assert referenced
    known = set(bitfields.all_layouts())
    assert [name for name in referenced if name not in known] == []
