"""Reference commands: JSON contracts of the foundation issue and decoding of real
qualifications logged by the Bochs lab (tests/fixtures/lab, the lab's EXIT records)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES, run_cli


def _json(*argv):
    status, out, err = run_cli(*argv, "--json")
    assert status == 0, err
    return json.loads(out)


def _fields_of(doc):
    return {f["name"]: f for f in doc["fields"]}


def test_fields_contract():
    rows = _json("fields")
    assert len(rows) >= 190
    assert all(set(r) >= {"name", "encoding", "width", "type"} for r in rows)
    assert {r["width"] for r in rows} == {"16", "32", "64", "natural"}
    assert {r["type"] for r in rows} == {"control", "exit_info", "guest", "host"}
    by_name = {r["name"]: r for r in rows}
    assert by_name["GUEST_RIP"]["encoding"] == 0x681E and by_name["VM_EXIT_REASON"]["encoding"] == 0x4402


def test_field_accepts_aliases_numbers_and_high_encodings():
    assert _json("field", "vmcs_guest_rip")["encoding"] == 0x681E
    assert _json("field", "0x2800")["name"] == "VMCS_LINK_POINTER"
    status, _, err = run_cli("field", "GUEST_RIPP")
    assert status == 2 and "GUEST_RIP" in err


def test_exit_reasons_contract_and_full_values():
    rows = _json("exit-reasons")
    assert {"number", "name"} <= set(rows[0])
    assert {r["number"]: r["name"] for r in rows}[48] == "EPT_VIOLATION"
    failure = _json("exit-reason", "0x80000021")
    assert failure["number"] == 33 and failure["entry_failure"] is True
    assert _json("exit-reason", "cpuid")["number"] == 10


def test_controls_contract():
    rows = _json("controls")
    assert {"group", "bit", "name"} <= set(rows[0])
    assert {r["group"] for r in rows} == {"pin", "proc", "proc2", "proc3", "exit", "exit2", "entry"}
    decoded = _json("controls", "proc", "0x840061f2")
    names = {b["name"] for b in decoded["bits"]}
    assert {"HLT_EXITING", "ACTIVATE_SECONDARY_CONTROLS"} <= names


def test_errors_contract():
    rows = _json("errors")
    assert {"number", "description"} <= set(rows[0])
    assert "control" in _json("error", "7")["description"].lower()
    assert "host" in _json("error", "8")["description"].lower()
    status, _, err = run_cli("error", "99")
    assert status == 2 and "not defined" in err


@pytest.mark.parametrize("reason, value, expect", [
    # the lab's own exits (tests/fixtures/lab/*/ground_truth.json)
    ("30", "0x710048", {"size": 0, "direction": 1, "operand_encoding": 1, "port": 0x71}),
    ("io", "0x90000003", {"size": 3, "direction": 0, "operand_encoding": 0, "port": 0x9000}),
    ("28", "0x3", {"cr_number": 3, "access_type": 0, "register": 0}),
    ("28", "0x18", {"cr_number": 8, "access_type": 1, "register": 0}),
    ("29", "0x17", {"dr_number": 7, "direction": 1, "register": 0}),
    ("ept-violation", "0x181", {"read": 1, "write": 0, "gla_valid": 1, "gla_translation": 1}),
])
def test_qual_decodes_real_lab_qualifications(reason, value, expect):
    doc = _json("qual", reason, value)
    fields = _fields_of(doc)
    for name, wanted in expect.items():
        assert fields[name]["value"] == wanted, name
    assert all({"name", "lsb", "width", "value", "applies"} <= set(f) for f in doc["fields"])


def test_qual_marks_conditional_fields():
    mov = _fields_of(_json("qual", "cr_access", "0x13"))
    assert mov["register"]["applies"] and not mov["lmsw_source_data"]["applies"]
    lmsw = _fields_of(_json("qual", "28", "0x000f0030"))  # LMSW of 0xF into CR0
    assert lmsw["lmsw_source_data"]["applies"] and lmsw["lmsw_source_data"]["value"] == 0xF
    assert not lmsw["register"]["applies"]


def test_qual_for_exceptions_needs_the_vector():
    status, _, err = run_cli("qual", "0", "0x4000")
    assert status == 2 and "--vector" in err
    db = _fields_of(_json("qual", "0", "0x4000", "--vector", "1"))
    assert db["bs"]["value"] == 1
    pf = _json("qual", "0", "0x800123", "--vector", "14")
    assert pf["reason"] == 0 and pf["fields"][0]["value"] == 0x800123


@pytest.mark.parametrize("model", ["corei7_skylake_x", "tigerlake", "corei7_haswell_4770"])
def test_msr_decodes_the_lab_models_capabilities(model):
    truth = json.loads((FIXTURES / "lab" / model / "ground_truth.json").read_text())
    basic = _json("msr", "0x480", hex(truth["msrs"]["0x480"]))
    assert {f["name"]: f["value"] for f in basic["fields"]}["revision_id"] == truth["revision_id"]
    true_proc = truth["msrs"]["0x48e"]
    doc = _json("msr", "IA32_VMX_TRUE_PROCBASED_CTLS", hex(true_proc))
    assert doc["allowed0"] == true_proc & 0xFFFFFFFF and doc["allowed1"] == true_proc >> 32
