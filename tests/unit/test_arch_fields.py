"""Consistency and spot tests for the SDM tables: VMCS fields, exit reasons, VM-instruction errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest

import vtdbg.arch
from vtdbg.arch import exit_reasons, fields, vm_errors
from vtdbg.arch._data import as_int, load_table
from vtdbg.arch.errors import UnknownNameError, normalize_name
from vtdbg.lib.errors import UsageError

SHARED = Path(__file__).parents[3] / "shared"
LAYOUT_DIR = SHARED / "reference" / "layouts"
LAYOUT_KEYS = ("fields", "encoded_fields", "uncertain_fields", "optional_fields")

ALLOWED_DECODERS = {
    "controls:pin", "controls:proc", "controls:proc2", "controls:proc3", "controls:exit", "controls:exit2",
    "controls:entry", "cr0", "cr4", "efer", "rflags", "dr7", "segment_ar", "interruption_info", "interruptibility",
    "activity_state", "pending_debug", "exit_reason", "exit_qualification", "instruction_info", "eptp",
    "vm_instruction_error", "exception_bitmap", "vmfunc", "pat", "debugctl",
}

# ---------------------------------------------------------------- raw table shape


def test_field_table_schema() -> None:
    table = load_table("vmcs_fields.json")
    assert table["schema"] == "vtdbg-arch/1"
    assert table["sdm"]
    for row in table["fields"]:
        assert set(row) >= {"name", "encoding", "width", "type", "aliases", "description", "sdm", "decoder"}
        assert isinstance(row["encoding"], str) and row["encoding"].startswith("0x")
        assert row["width"] in fields.Width.ALL
        assert row["type"] in fields.FieldType.ALL
        assert row["sdm"].startswith("B.")
        assert row["description"]


def test_field_count() -> None:
    assert len(fields.all_fields()) >= 190


def test_encoding_bits_agree_with_table() -> None:
    for field in fields.all_fields():
        assert fields.encoding_width(field.encoding) == field.width, field.name
        assert fields.encoding_type(field.encoding) == field.type, field.name
        assert field.encoding & 1 == 0, "%s: FULL encoding must have bit 0 clear" % field.name
        assert field.encoding & fields.ENCODING_RESERVED_MASK == 0, field.name
        rebuilt = fields.make_encoding(field.width, field.type, fields.encoding_index(field.encoding))
        assert rebuilt == field.encoding


def test_sdm_section_matches_encoding() -> None:
    width_section = {"16": 1, "64": 2, "32": 3, "natural": 4}
    for field in fields.all_fields():
        major = width_section[field.width]
        type_code = fields.FieldType.ALL.index(field.type)
        minor = {0: 1, 2: 2, 3: 3}[type_code] if major == 1 else type_code + 1
        # fields from Intel's ISE reference carry the section they belong to plus a note
        assert field.sdm.split(" ")[0] == "B.%d.%d" % (major, minor), field.name


def test_fields_sorted_and_unique() -> None:
    encodings = [field.encoding for field in fields.all_fields()]
    assert encodings == sorted(encodings)
    assert len(set(encodings)) == len(encodings)


def test_no_duplicate_names_or_aliases() -> None:
    owner: Dict[str, str] = {}
    for field in fields.all_fields():
        local = set()
        for name in field.names:
            key = normalize_name(name)
            assert key not in local, "%s lists %s twice" % (field.name, name)
            local.add(key)
            assert owner.setdefault(key, field.name) == field.name, "%s used by %s and %s" % (
                name, owner[key], field.name)


def test_decoder_names_allowed() -> None:
    for field in fields.all_fields():
        assert field.decoder is None or field.decoder in ALLOWED_DECODERS, field.name


def test_decoder_assignments() -> None:
    expected = {
        "PIN_BASED_VM_EXEC_CONTROL": "controls:pin", "CPU_BASED_VM_EXEC_CONTROL": "controls:proc",
        "SECONDARY_VM_EXEC_CONTROL": "controls:proc2", "TERTIARY_VM_EXEC_CONTROL": "controls:proc3",
        "VM_EXIT_CONTROLS": "controls:exit", "SECONDARY_VM_EXIT_CONTROLS": "controls:exit2",
        "VM_ENTRY_CONTROLS": "controls:entry", "GUEST_CR0": "cr0", "CR4_READ_SHADOW": "cr4",
        "GUEST_IA32_EFER": "efer", "GUEST_CS_AR_BYTES": "segment_ar", "VM_EXIT_INTR_INFO": "interruption_info",
        "VM_EXIT_REASON": "exit_reason", "EPT_POINTER": "eptp", "VM_INSTRUCTION_ERROR": "vm_instruction_error",
        "GUEST_RIP": None,
    }
    for name, decoder in expected.items():
        assert fields.lookup_field(name).decoder == decoder, name
    assert sum(1 for field in fields.all_fields() if field.decoder == "segment_ar") == 8


# ---------------------------------------------------------------- SDM spot values


@pytest.mark.parametrize(
    "name, encoding, width, ftype",
    [
        ("VIRTUAL_PROCESSOR_ID", 0x0000, "16", "control"),
        ("HLAT_PREFIX_SIZE", 0x0006, "16", "control"),
        ("LAST_PID_POINTER_INDEX", 0x0008, "16", "control"),
        ("GUEST_INTR_STATUS", 0x0810, "16", "guest"),
        ("GUEST_UINV", 0x0814, "16", "guest"),
        ("EPT_POINTER", 0x201A, "64", "control"),
        ("TERTIARY_VM_EXEC_CONTROL", 0x2034, "64", "control"),
        ("HLAT_POINTER", 0x2040, "64", "control"),
        ("PID_POINTER_TABLE", 0x2042, "64", "control"),
        ("SECONDARY_VM_EXIT_CONTROLS", 0x2044, "64", "control"),
        ("INJECTED_EVENT_DATA", 0x2052, "64", "control"),
        ("GUEST_PHYSICAL_ADDRESS", 0x2400, "64", "exit_info"),
        ("ORIGINAL_EVENT_DATA", 0x2404, "64", "exit_info"),
        ("VMCS_LINK_POINTER", 0x2800, "64", "guest"),
        ("GUEST_IA32_PKRS", 0x2818, "64", "guest"),
        ("GUEST_IA32_FRED_CONFIG", 0x281A, "64", "guest"),
        ("GUEST_IA32_FRED_SSP3", 0x2828, "64", "guest"),
        ("HOST_IA32_PKRS", 0x2C06, "64", "host"),
        ("HOST_IA32_FRED_CONFIG", 0x2C08, "64", "host"),
        ("HOST_IA32_FRED_SSP3", 0x2C16, "64", "host"),
        ("CPU_BASED_VM_EXEC_CONTROL", 0x4002, "32", "control"),
        ("NOTIFY_WINDOW", 0x4024, "32", "control"),
        ("VM_INSTRUCTION_ERROR", 0x4400, "32", "exit_info"),
        ("VM_EXIT_REASON", 0x4402, "32", "exit_info"),
        ("GUEST_CS_AR_BYTES", 0x4816, "32", "guest"),
        ("VMX_PREEMPTION_TIMER_VALUE", 0x482E, "32", "guest"),
        ("HOST_IA32_SYSENTER_CS", 0x4C00, "32", "host"),
        ("CR3_TARGET_VALUE3", 0x600E, "natural", "control"),
        ("EXIT_QUALIFICATION", 0x6400, "natural", "exit_info"),
        ("GUEST_LINEAR_ADDRESS", 0x640A, "natural", "exit_info"),
        ("GUEST_RIP", 0x681E, "natural", "guest"),
        ("GUEST_INTR_SSP_TABLE", 0x682C, "natural", "guest"),
        ("HOST_RIP", 0x6C16, "natural", "host"),
        ("HOST_INTR_SSP_TABLE", 0x6C1C, "natural", "host"),
    ],
)
def test_sdm_spot_encodings(name: str, encoding: int, width: str, ftype: str) -> None:
    field = fields.lookup_field(name)
    assert field.name == name
    assert field.encoding == encoding
    assert field.width == width
    assert field.type == ftype
    assert fields.field_by_encoding(encoding) is field


def test_sizes_and_high_encoding() -> None:
    rip = fields.lookup_field("GUEST_RIP")
    assert (rip.size, rip.bits, rip.high_encoding) == (8, 64, None)
    eptp = fields.lookup_field("EPT_POINTER")
    assert (eptp.size, eptp.high_encoding) == (8, 0x201B)
    assert fields.lookup_field("GUEST_CS_SELECTOR").size == 2
    assert fields.lookup_field("VM_EXIT_REASON").size == 4


def test_encoding_helpers() -> None:
    assert fields.encoding_width(0x681E) == "natural"
    assert fields.encoding_type(0x681E) == "guest"
    assert fields.encoding_index(0x681E) == 0xF
    assert fields.encoding_width(0x2001) == "64" and fields.is_high(0x2001)
    assert not fields.is_high(0x2000)
    assert fields.make_encoding("64", "control", 0x1A, high=True) == 0x2035


# ---------------------------------------------------------------- lookups


def test_lookup_names_case_insensitive() -> None:
    assert fields.lookup_field("vmcs_guest_rip").encoding == 0x681E
    assert fields.lookup_field("guest_rip").name == "GUEST_RIP"
    assert fields.lookup_field("VMCS_CTRL_PROCESSOR_BASED_VM_EXECUTION_CONTROLS").name == "CPU_BASED_VM_EXEC_CONTROL"
    assert fields.lookup_field("VMCS_64BIT_CONTROL_EPTPTR").name == "EPT_POINTER"
    assert fields.lookup_field("eptp").name == "EPT_POINTER"
    assert fields.lookup_field("vmcs_exit_qualification").name == "EXIT_QUALIFICATION"


def test_lookup_numbers() -> None:
    assert fields.lookup_field("0x681e").name == "GUEST_RIP"
    assert fields.lookup_field("26654").name == "GUEST_RIP"
    assert fields.lookup_field("0n26654").name == "GUEST_RIP"
    assert fields.lookup_field(0x4402).name == "VM_EXIT_REASON"


def test_lookup_high() -> None:
    assert fields.resolve_field("0x201b") == (fields.lookup_field("EPT_POINTER"), True)
    assert fields.resolve_field("EPT_POINTER_HIGH") == (fields.lookup_field("EPT_POINTER"), True)
    assert fields.resolve_field("ept_pointer_high")[1] is True
    assert fields.resolve_field("VMCS_64BIT_CONTROL_EPTPTR_HI")[1] is True
    assert fields.resolve_field("IO_BITMAP_A_FULL") == (fields.lookup_field("IO_BITMAP_A"), False)
    assert fields.lookup_field("0x2801").name == "VMCS_LINK_POINTER"
    assert fields.resolve_encoding(0x2C05) == (fields.lookup_field("HOST_IA32_PERF_GLOBAL_CTRL"), True)
    assert fields.field_by_encoding(0x201B) is None
    # natural-width, 32-bit and 16-bit fields have no HIGH access
    with pytest.raises(UnknownNameError):
        fields.lookup_field("0x681f")
    with pytest.raises(UnknownNameError):
        fields.lookup_field("GUEST_RIP_HIGH")
    with pytest.raises(KeyError):
        fields.resolve_encoding(0x4403)


def test_unknown_field_error() -> None:
    with pytest.raises(vtdbg.arch.UnknownNameError) as info:
        fields.lookup_field("GUEST_RIPP")
    error = info.value
    assert isinstance(error, KeyError) and isinstance(error, UsageError)
    assert "GUEST_RIP" in error.suggestions
    assert 0 < len(error.suggestions) <= 3
    assert "GUEST_RIPP" in str(error) and "did you mean" in str(error)
    with pytest.raises(UnknownNameError):
        fields.lookup_field("0x9999")
    with pytest.raises(UnknownNameError):
        fields.lookup_field("0x6830")


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("GUEST_INTERRUPT_STATUS", "GUEST_INTR_STATUS"),
        ("GUEST_CS_AR", "GUEST_CS_AR_BYTES"),
        ("GUEST_LDTR_AR", "GUEST_LDTR_AR_BYTES"),
        ("PROC_CTLS", "CPU_BASED_VM_EXEC_CONTROL"),
        ("GUEST_IA32_PERF_CTL", "GUEST_IA32_PERF_GLOBAL_CTRL"),
        ("HOST_IA32_PERF_CTL", "HOST_IA32_PERF_GLOBAL_CTRL"),
        ("GUEST_BASE_GDTR", "GUEST_GDTR_BASE"),
        ("HOST_SYSENTER_ESP", "HOST_IA32_SYSENTER_ESP"),
        ("HOST_CS", "HOST_CS_SELECTOR"),
        ("EXIT_REASON", "VM_EXIT_REASON"),
        ("VMCS_EXIT_REASON", "VM_EXIT_REASON"),
        ("VMCS_GUEST_RIP", "GUEST_RIP"),
        ("GUEST_INTERRUPTIBILITY_STATE", "GUEST_INTERRUPTIBILITY_INFO"),
        ("VM_EXIT_INTERRUPTION_INFORMATION", "VM_EXIT_INTR_INFO"),
        ("VMCS_IO_RSX", "IO_RSI"),
        ("INSTRUCTION_TIMEOUT_CONTROL", "NOTIFY_WINDOW"),
    ],
)
def test_reference_aliases(alias: str, canonical: str) -> None:
    assert fields.lookup_field(alias).name == canonical


def _layout_names() -> Iterator[Tuple[str, str, str, int]]:
    for path in sorted(LAYOUT_DIR.glob("*.json")):
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
        for key in LAYOUT_KEYS:
            for name, entry in (data.get(key) or {}).items():
                yield path.name, key, name, as_int(entry["encoding"])


def test_reference_layout_names_resolve() -> None:
    if not LAYOUT_DIR.is_dir():
        pytest.skip("shared/reference/layouts is not present next to the repository")
    checked = 0
    for file_name, key, name, encoding in _layout_names():
        field = fields.lookup_field(name)
        assert field.encoding == encoding, "%s %s[%s]: %s is 0x%04x here" % (
            file_name, key, name, field.name, field.encoding)
        checked += 1
    assert checked > 100


# ---------------------------------------------------------------- exit reasons


def test_exit_reasons_unique() -> None:
    reasons = exit_reasons.all_exit_reasons()
    numbers = [reason.number for reason in reasons]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    owner: Dict[str, int] = {}
    for reason in reasons:
        for name in reason.names:
            key = normalize_name(name)
            assert owner.setdefault(key, reason.number) == reason.number, name


def test_exit_reason_numbers() -> None:
    numbers = {reason.number for reason in exit_reasons.all_exit_reasons()}
    assert set(range(0, 35)) <= numbers
    assert not {35, 38, 42, 71} & numbers
    assert {36, 37, 39, 40, 41, 43, 48, 49, 64, 74, 75, 76, 77} <= numbers


@pytest.mark.parametrize(
    "number, name",
    [(0, "EXCEPTION_NMI"), (1, "EXTERNAL_INTERRUPT"), (3, "INIT_SIGNAL"), (4, "SIPI_SIGNAL"), (6, "OTHER_SMI"),
     (7, "INTERRUPT_WINDOW"), (10, "CPUID"), (18, "VMCALL"), (28, "CR_ACCESS"), (30, "IO_INSTRUCTION"),
     (31, "MSR_READ"), (32, "MSR_WRITE"), (33, "INVALID_STATE"), (34, "MSR_LOAD_FAIL"), (37, "MONITOR_TRAP_FLAG"),
     (48, "EPT_VIOLATION"), (49, "EPT_MISCONFIG"), (52, "PREEMPTION_TIMER"), (62, "PML_FULL"), (69, "LOADIWKEY"),
     (74, "BUS_LOCK"), (75, "NOTIFY"), (77, "TDCALL")],
)
def test_exit_reason_spot(number: int, name: str) -> None:
    reason = exit_reasons.exit_reason_by_number(number)
    assert reason is not None and reason.name == name
    assert exit_reasons.lookup_exit_reason(name) is reason
    assert exit_reasons.lookup_exit_reason(str(number)) is reason


def test_exit_reason_lookup_forms() -> None:
    assert exit_reasons.lookup_exit_reason("0x80000021").number == 33
    assert exit_reasons.lookup_exit_reason(0x80000021).number == 33
    assert exit_reasons.lookup_exit_reason("0n48").number == 48
    assert exit_reasons.lookup_exit_reason("cpuid").number == 10
    assert exit_reasons.lookup_exit_reason("msr-read").number == 31
    assert exit_reasons.lookup_exit_reason("msr-write").number == 32
    assert exit_reasons.lookup_exit_reason("ept-violation").number == 48
    assert exit_reasons.lookup_exit_reason("io").number == 30
    assert exit_reasons.lookup_exit_reason("cr").number == 28
    assert exit_reasons.lookup_exit_reason("VMX_EXIT_REASON_EXECUTE_CPUID").number == 10
    assert exit_reasons.lookup_exit_reason("EXIT_REASON_EPT_VIOLATION").number == 48
    assert exit_reasons.lookup_exit_reason("exception").number == 0
    assert exit_reasons.basic_reason(0x80000021) == 33
    assert exit_reasons.is_entry_failure(0x80000021)
    assert exit_reasons.exit_reason_name(0x30) == "EPT_VIOLATION"
    assert exit_reasons.exit_reason_name(35) == "UNKNOWN_35"
    with pytest.raises(UnknownNameError):
        exit_reasons.lookup_exit_reason("35")
    with pytest.raises(UnknownNameError) as info:
        exit_reasons.lookup_exit_reason("ept-violaton")
    assert info.value.suggestions


def test_exit_reason_layout_names() -> None:
    reason0 = exit_reasons.lookup_exit_reason(0)
    assert reason0.qualification_for(1) == "debug_exception"
    assert reason0.qualification_for(14) == "page_fault"
    assert reason0.qualification_for(13) is None
    assert exit_reasons.lookup_exit_reason(48).qualification == "ept_violation"
    assert exit_reasons.lookup_exit_reason(28).qualification == "cr_access"
    assert exit_reasons.lookup_exit_reason(33).qualification == "entry_failure_invalid_guest"
    assert exit_reasons.lookup_exit_reason(34).qualification == "msr_load_index"
    assert exit_reasons.lookup_exit_reason(30).instruction_info == "ins_outs"
    assert exit_reasons.lookup_exit_reason(23).instruction_info == "vmread_vmwrite"
    assert exit_reasons.lookup_exit_reason(50).instruction_info == "invept_invpcid_invvpid"
    assert exit_reasons.lookup_exit_reason(10).qualification is None
    for reason in exit_reasons.all_exit_reasons():
        assert reason.sdm and reason.description
        for name in (reason.qualification, reason.instruction_info):
            assert name is None or (name.islower() and " " not in name)


def _data_file(name: str) -> Path:
    return Path(vtdbg.arch.__file__).parent / "data" / name


def test_referenced_layouts_exist() -> None:
    """Every qualification / instruction-info / decoder name points at a defined table entry."""
    bitfields_path = _data_file("bitfields.json")
    controls_path = _data_file("controls.json")
    if not bitfields_path.exists() or not controls_path.exists():
        pytest.skip("bitfields.json / controls.json are not present yet")
    layouts = set(load_table("bitfields.json")["layouts"])
    groups = set(load_table("controls.json")["groups"])
    for reason in exit_reasons.all_exit_reasons():
        names = [reason.qualification, reason.instruction_info] + [name for _, name in reason.qualification_by_vector]
        for name in names:
            assert name is None or name in layouts, "exit reason %d: no layout %s" % (reason.number, name)
    dispatchers = {"exit_qualification", "instruction_info", "vm_instruction_error"}
    for field in fields.all_fields():
        if field.decoder is None or field.decoder in dispatchers:
            continue
        if field.decoder.startswith("controls:"):
            assert field.decoder.split(":", 1)[1] in groups, field.name
        else:
            assert field.decoder in layouts, field.name


# ---------------------------------------------------------------- VM-instruction errors


def test_vm_errors() -> None:
    errors = vm_errors.all_errors()
    numbers = [error.number for error in errors]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert set(numbers) == set(range(1, 29)) - {14, 21, 27}
    assert len({error.name for error in errors}) == len(errors)
    seven = vm_errors.error_by_number(7)
    eight = vm_errors.error_by_number(8)
    twelve = vm_errors.error_by_number(12)
    assert seven is not None and "control" in seven.description.lower()
    assert eight is not None and "host-state" in eight.description.lower()
    assert twelve is not None and "unsupported" in twelve.description.lower()
    assert vm_errors.error_by_number(14) is None
    assert vm_errors.lookup_error("VMXERR_ENTRY_INVALID_HOST_STATE_FIELD") is eight
    assert vm_errors.lookup_error("0xc") is twelve
    assert vm_errors.describe_error(0).startswith("0:")
