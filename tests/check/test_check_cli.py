"""`vtdbg check` and `vtdbg vmxon-check` through the CLI: the JSON contract, caps files,
snapshots, targets."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from tests.check import labdata
from tests.check.baseline import BASELINE_MSRS, baseline_snapshot
from tests.conftest import run_cli

CONTRACT = ("result", "error", "exit_reason", "qualification", "violations")


def _write(path: Path, doc: Any) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def _caps(tmp_path: Path, **extra: Any) -> str:
    doc: Dict[str, Any] = {"0x%x" % k: "0x%x" % v for k, v in BASELINE_MSRS.items()}
    doc.update(extra)
    return _write(tmp_path / "caps.json", doc)


def _check(tmp_path: Path, snapshot: Dict[str, Any], *extra: str, caps: str = "") -> Dict[str, Any]:
    snap = _write(tmp_path / "snap.json", snapshot)
    status, out, err = run_cli("check", "--snapshot", snap, "--caps", caps or _caps(tmp_path), "--json", *extra)
    assert status == 0, err
    doc = json.loads(out)
    for key in CONTRACT:
        assert key in doc
    for violation in doc["violations"]:
        for key in ("rule", "sdm", "field", "message"):
            assert key in violation
    return doc


def test_valid_snapshot(tmp_path: Path) -> None:
    doc = _check(tmp_path, baseline_snapshot())
    assert doc["result"] == "ok" and doc["violations"] == [] and doc["not_checked"] == []
    assert doc["error"] is None and doc["exit_reason"] is None and doc["qualification"] is None


def test_vmfail_valid(tmp_path: Path) -> None:
    snap = baseline_snapshot()
    snap["fields"]["HOST_DS_SELECTOR"] = "0x2b"
    doc = _check(tmp_path, snap)
    assert (doc["result"], doc["error"], doc["exit_reason"], doc["qualification"]) == ("vmfail", 8, None, None)
    assert doc["violations"][0]["rule"] == "HOST-SEL-RPL-TI"
    assert doc["violations"][0]["field"] == "HOST_DS_SELECTOR"
    assert doc["violations"][0]["sdm"] == "26.2.3"


def test_entry_failure_and_all_violations_listed(tmp_path: Path) -> None:
    snap = baseline_snapshot()
    snap["fields"]["GUEST_RFLAGS"] = 0
    snap["fields"]["VMCS_LINK_POINTER"] = 0x1234
    doc = _check(tmp_path, snap)
    assert (doc["result"], doc["error"], doc["exit_reason"], doc["qualification"]) == ("entry_failure", None, 33, 0)
    assert [v["rule"] for v in doc["violations"]] == ["GUEST-RFLAGS-RSVD", "GUEST-LINK-PTR-ADDR"]
    assert doc["alternatives"][0]["qualification"] == 4


def test_msr_load_failure_names_the_entry(tmp_path: Path) -> None:
    snap = baseline_snapshot()
    snap["fields"].update({"VM_ENTRY_MSR_LOAD_COUNT": 3, "VM_ENTRY_MSR_LOAD_ADDR": 0x3005000})
    snap["memory"] += [{"address": 0x3005000, "size": 8, "value": 0x174},
                       {"address": 0x3005010, "size": 8, "value": 0x808},
                       {"address": 0x3005020, "size": 8, "value": 0xC0000100}]
    doc = _check(tmp_path, snap)
    assert (doc["result"], doc["exit_reason"], doc["qualification"]) == ("entry_failure", 34, 2)
    assert [(v["rule"], v["index"]) for v in doc["violations"]] == [("MSRLOAD-FS-GS-BASE", 3), ("MSRLOAD-X2APIC", 2)]


def test_fault_and_vmfail_invalid(tmp_path: Path) -> None:
    doc = _check(tmp_path, baseline_snapshot(), "--env", "cpl=3")
    assert (doc["result"], doc["vector"], doc["error"]) == ("fault", 13, None)
    snap = baseline_snapshot()
    snap["vmcs_pa"] = "0xffffffffffffffff"
    doc = _check(tmp_path, snap)
    assert (doc["result"], doc["error"]) == ("vmfail_invalid", None)
    doc = _check(tmp_path, baseline_snapshot(), "--instruction", "vmresume")
    assert (doc["result"], doc["error"]) == ("vmfail", 5)


def test_unknown_field_is_not_checked_never_violated(tmp_path: Path) -> None:
    snap = baseline_snapshot()
    del snap["fields"]["HOST_TR_SELECTOR"]
    doc = _check(tmp_path, snap)
    assert doc["result"] == "ok" and doc["complete"] is False
    missing = {n["rule"] for n in doc["not_checked"]}
    assert {"HOST-SEL-RPL-TI", "HOST-TR-NULL"} <= missing
    assert not doc["violations"]


def test_defaults_are_stated_and_can_be_overridden(tmp_path: Path) -> None:
    doc = _check(tmp_path, baseline_snapshot())
    env = doc["assumptions"]["environment"]
    assert env["cpl"] == {"value": 0, "source": "default"}
    assert env["instruction"]["value"] == "vmlaunch"
    assert doc["assumptions"]["processor"]["maxphyaddr"] == {"value": 46, "source": "default"}
    snap = baseline_snapshot()
    snap["environment"]["mov_ss_blocking"] = True
    doc = _check(tmp_path, snap, caps=_caps(tmp_path, maxphyaddr=36, processor={"linear_address_bits": 57}))
    assert (doc["result"], doc["error"]) == ("vmfail", 26)
    assert doc["assumptions"]["processor"]["maxphyaddr"] == {"value": 36, "source": "caps"}


def test_caps_file_forms(tmp_path: Path) -> None:
    """Keys in any case or as names, and the per-CPU list `vtdbg caps --save` writes."""
    flat = {"IA32_VMX_BASIC": BASELINE_MSRS[0x480]}
    flat.update({("%xH" % k).upper(): v for k, v in BASELINE_MSRS.items() if k != 0x480})
    doc = _check(tmp_path, baseline_snapshot(), caps=_write(tmp_path / "c1.json", flat))
    assert doc["result"] == "ok" and not doc["not_checked"]
    cpu1 = {"cpu": 1}
    cpu1.update({"0x%X" % k: v for k, v in BASELINE_MSRS.items()})
    cpu1["0x486"] = 0x80000023  # CPU 1 demands CR0.MP
    listed = _write(tmp_path / "c2.json", [dict(cpu1, cpu=0, **{"0x486": 0x80000021}), cpu1])
    snap = baseline_snapshot()
    snap["fields"]["GUEST_CR0"] &= ~2  # MP clear: fine for CPU 0, not for CPU 1
    assert _check(tmp_path, snap, "--cpu", "0", caps=listed)["result"] == "ok"
    doc = _check(tmp_path, snap, "--cpu", "1", caps=listed)
    assert [v["rule"] for v in doc["violations"]] == ["GUEST-CR0-FIXED"]


def test_without_caps_rules_are_not_checked(tmp_path: Path) -> None:
    snap = _write(tmp_path / "snap.json", baseline_snapshot())
    status, out, err = run_cli("check", "--snapshot", snap, "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["result"] == "ok" and "CTL-PIN-RESERVED" in {n["rule"] for n in doc["not_checked"]}
    assert any("capability MSRs" in w for w in doc["warnings"])


def test_usage_errors(tmp_path: Path) -> None:
    snap = _write(tmp_path / "snap.json", baseline_snapshot())
    assert run_cli("check", "--snapshot", snap, "--env", "colour=blue")[0] == 2
    assert run_cli("check", "--snapshot", snap, "--at", "0x1000")[0] == 2
    assert run_cli("check", "--snapshot", str(tmp_path / "missing.json"))[0] == 2
    bad = _write(tmp_path / "bad.json", {"fields": {"NO_SUCH_FIELD": 1}})
    status, _, err = run_cli("check", "--snapshot", bad)
    assert status == 2 and "NO_SUCH_FIELD" in err


def test_text_output(tmp_path: Path) -> None:
    snap = baseline_snapshot()
    snap["fields"]["CPU_BASED_VM_EXEC_CONTROL"] &= ~2
    path = _write(tmp_path / "snap.json", snap)
    status, out, _ = run_cli("check", "--snapshot", path, "--caps", _caps(tmp_path))
    assert status == 0
    assert out.startswith("Predicted: VMfailValid")
    assert "CTL-PROC-RESERVED" in out and "must be 1 per IA32_VMX_TRUE_PROCBASED_CTLS allowed-0" in out
    assert "Controls against what the CPU allows" in out


MODELS = labdata.models()


@pytest.mark.skipif(not MODELS, reason="no Bochs lab fixtures")
def test_on_a_lab_memory_image() -> None:
    """The lab's main VMCS (launched, resumed after every exit) and a scenario VMCS left
    after its failed VMLAUNCH, read from the memory image."""
    lab = labdata.load(MODELS[0])
    image = str(lab.path / "phys.img.gz")
    truth = str(lab.path / "ground_truth.json")
    status, out, err = run_cli("check", "--image", image, "--at", hex(lab.truth["vmcs_pa"]), "--caps", truth,
                               "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["result"] == "ok", doc["violations"]
    assert doc["assumptions"]["environment"]["instruction"]["value"] == "vmresume"
    status, out, err = run_cli("check", "--image", image, "--cpu", "0", "--caps", truth, "--json")
    doc = json.loads(out)
    assert (doc["cpu"], doc["result"], doc["assumptions"]["vmcs_pa"]) == (0, "ok", lab.truth["vmcs_pa"])
    first = lab.scenarios[0]
    status, out, err = run_cli("check", "--image", image, "--at", "0x100000", "--caps", truth, "--json")
    doc = json.loads(out)
    assert doc["rule"] == first["rule"] and doc["error"] == first["outcome"]["error"]


@pytest.mark.skipif(not MODELS, reason="no Bochs lab fixtures")
def test_vmxon_check() -> None:
    lab = labdata.load(MODELS[0])
    truth = str(lab.path / "ground_truth.json")
    fields = lab.truth["fields"]
    cr0, cr4 = hex(fields["0x6c00"]), hex(fields["0x6c04"])
    status, out, err = run_cli("vmxon-check", "--caps", truth, "--cr0", cr0, "--cr4", cr4, "--cpl", "0",
                               "--image", str(lab.path / "phys.img.gz"), "--at", hex(lab.truth["vmxon_pa"]), "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["verdict"] == "ready", [c for c in doc["checks"] if c["status"] != "pass"]
    status, out, _ = run_cli("vmxon-check", "--caps", truth, "--cr0", cr0, "--cr4", hex(int(cr4, 16) & ~0x2000),
                             "--region-header", "0x80000000", "--at", "0x20010", "--json")
    doc = json.loads(out)
    failed = {c["id"] for c in doc["checks"] if c["status"] == "fail"}
    assert doc["verdict"] == "not ready"
    assert {"VMXON-CR4-VMXE", "VMXON-CR4-FIXED", "VMXON-REGION-ALIGN", "VMXON-REGION-REVISION"} <= failed
    status, out, _ = run_cli("vmxon-check", "--caps", truth, "--json")
    assert json.loads(out)["verdict"] == "unknown"
