"""Rules that read memory (VTPR, link-pointer page, PDPTEs, MSR-load entries), what happens
when memory is unknown, snapshots saved from a target, caps parsing and VMXON readiness."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from tests.check.baseline import LINK_SPARE_PA, VAPIC_PA, VMCS_PA, baseline_caps, baseline_snapshot
from vtdbg.arch.fields import lookup_field
from vtdbg.core.check.caps import Caps
from vtdbg.core.check.checker import check_vmcs
from vtdbg.core.check.engine import Report
from vtdbg.core.check.memory import TargetMemory
from vtdbg.core.check.snapshot import load_snapshot, parse_fields, save_snapshot, snapshot_from_json
from vtdbg.core.check.vmxon import summary, vmxon_readiness
from vtdbg.target.image import ImageTarget

MSR_AREA = 0x3005000


def run(doc: Dict[str, Any], caps: Caps = None) -> Report:  # type: ignore[assignment]
    snap = snapshot_from_json(doc)
    return check_vmcs(snap.vmcs, caps or baseline_caps(), snap.memory, snap.environment)


def with_msrs(entries: List[Any]) -> Dict[str, Any]:
    doc = baseline_snapshot()
    doc["fields"].update({"VM_ENTRY_MSR_LOAD_COUNT": len(entries), "VM_ENTRY_MSR_LOAD_ADDR": MSR_AREA})
    for number, (low, value) in enumerate(entries):
        doc["memory"].append({"address": MSR_AREA + 16 * number, "size": 8, "value": low})
        doc["memory"].append({"address": MSR_AREA + 16 * number + 8, "size": 8, "value": value})
    return doc


def test_vtpr_is_read_from_the_virtual_apic_page() -> None:
    doc = baseline_snapshot()
    doc["fields"]["TPR_THRESHOLD"] = 5
    assert run(doc).rule == "CTL-TPR-THRESHOLD-VTPR"
    doc["memory"].append({"address": VAPIC_PA + 0x80, "size": 4, "value": 0x50})
    assert run(doc).outcome.result == "ok"
    # with APIC-access virtualization the comparison happens after entry, not as a check
    doc["memory"].pop()
    doc["fields"]["SECONDARY_VM_EXEC_CONTROL"] |= 1
    doc["fields"]["APIC_ACCESS_ADDR"] = 0x3007000
    assert run(doc).outcome.result == "ok"


def test_unknown_memory_is_not_checked() -> None:
    doc = baseline_snapshot()
    doc["fields"]["VMCS_LINK_POINTER"] = LINK_SPARE_PA
    doc["unlisted_memory"] = "unknown"
    doc["memory"] = [m for m in doc["memory"] if m["address"] != LINK_SPARE_PA]
    report = run(doc)
    assert report.outcome.result == "ok"
    assert [n.rule.id for n in report.not_checked] == ["GUEST-LINK-PTR-REVID"]
    assert report.not_checked[0].reason.kind == "memory"


def test_link_pointer_to_a_valid_shadow_page() -> None:
    doc = baseline_snapshot()
    doc["fields"]["VMCS_LINK_POINTER"] = LINK_SPARE_PA
    assert run(doc).outcome.result == "ok"
    doc["fields"]["SECONDARY_VM_EXEC_CONTROL"] |= 1 << 14  # VMCS shadowing wants bit 31 set
    report = run(doc)
    assert report.rule == "GUEST-LINK-PTR-REVID" and report.outcome.qualification == 4


def test_pdptes_from_memory_when_ept_is_off() -> None:
    doc = baseline_snapshot()
    f = doc["fields"]
    f["VM_ENTRY_CONTROLS"] &= ~(1 << 9)
    f.update({"GUEST_IA32_EFER": 1, "GUEST_CS_AR_BYTES": 0xC09B, "GUEST_CR3": 0x20000})
    f["SECONDARY_VM_EXEC_CONTROL"] &= ~2  # EPT off: the PDPTEs come from GUEST_CR3
    doc["memory"] += [{"address": 0x20000 + 8 * i, "size": 8, "value": 0x21000 + 0x1000 * i + 1} for i in range(4)]
    assert run(doc).outcome.result == "ok"
    doc["memory"].append({"address": 0x20010, "size": 8, "value": 0x23001 | (1 << 50)})
    report = run(doc)
    assert report.rule == "GUEST-PDPTE-RSVD"
    assert (report.outcome.exit_reason, report.outcome.qualification) == (33, 2)


def test_msr_load_model() -> None:
    ok = [(0xC0000081, 0x23001000000000), (0x277, 0x0007040600070406), (0xC0000080, 0xD01), (0x174, 0x10)]
    assert run(with_msrs(ok)).outcome.result == "ok"
    report = run(with_msrs(ok + [(0xC0000080, 0xC01)]))  # LME cannot change while CR0.PG = 1
    assert (report.rule, report.outcome.qualification) == ("MSRLOAD-WRMSR-FAULT", 5)
    report = run(with_msrs([(0x480, 0)]))  # VMX capability MSRs are read-only
    assert report.rule == "MSRLOAD-WRMSR-FAULT"
    report = run(with_msrs([(0x3A, 5)]))  # IA32_FEATURE_CONTROL: caps say nothing about its lock
    assert [n.rule.id for n in report.not_checked] == ["MSRLOAD-WRMSR-FAULT"]
    caps = baseline_caps()
    caps.msrs[0x3A] = 5
    assert run(with_msrs([(0x3A, 5)]), caps).rule == "MSRLOAD-WRMSR-FAULT"


def test_unmodelled_msr_is_not_checked_but_later_entries_are() -> None:
    report = run(with_msrs([(0x1A0, 1), (0xC0000100, 0)]))
    assert report.rule == "MSRLOAD-FS-GS-BASE" and report.outcome.qualification == 2
    assert [n.rule.id for n in report.not_checked] == ["MSRLOAD-WRMSR-FAULT"]
    assert "0x1a0" in report.not_checked[0].reason.why


def test_msr_list_length_is_an_advisory() -> None:
    doc = baseline_snapshot()
    doc["fields"]["VM_EXIT_MSR_STORE_COUNT"] = 513
    doc["fields"]["VM_EXIT_MSR_STORE_ADDR"] = 0x3010000
    report = run(doc)
    assert report.outcome.result == "ok" and not report.violations
    assert [a.rule.id for a in report.advisories] == ["CTL-MSR-LIST-TOO-LONG"]


def test_host32_ia32e_guest_comes_with_the_address_size_rule() -> None:
    doc = baseline_snapshot()
    doc["fields"]["VM_EXIT_CONTROLS"] &= ~(1 << 9)
    doc["fields"]["HOST_IA32_EFER"] = 1
    doc["fields"]["HOST_RIP"] = 0x100000
    report = run(doc)
    assert report.violated() == ["HOST-ADDR-SIZE-LMA", "HOST-32-IA32E-GUEST"]


def test_save_snapshot_keeps_what_the_checker_reads(tmp_path: Path) -> None:
    """A VMCS read from a target, saved with the memory the checker needs, checks the same
    offline; memory it did not save is unknown, not zero."""
    image = bytearray(0x4000000)
    doc = baseline_snapshot()
    for entry in doc["memory"]:
        image[entry["address"]:entry["address"] + entry["size"]] = entry["value"].to_bytes(entry["size"], "little")
    image[VAPIC_PA + 0x80] = 0x30
    target = ImageTarget.from_bytes(bytes(image))
    snap = snapshot_from_json(doc)
    snap.vmcs.values[lookup_field("TPR_THRESHOLD").encoding] = 3  # passes only with VTPR (0x30) from memory
    live = check_vmcs(snap.vmcs, baseline_caps(), TargetMemory(target), snap.environment)
    path = tmp_path / "saved.json"
    saved = save_snapshot(snap.vmcs, str(path), TargetMemory(target), baseline_caps(), {"vmxon_pa": 0x1E00000})
    assert saved["unlisted_memory"] == "unknown"
    assert {m["address"] for m in saved["memory"]} == {VAPIC_PA + 0x80}
    again = load_snapshot(str(path))
    offline = check_vmcs(again.vmcs, baseline_caps(), again.memory, again.environment)
    assert live.outcome == offline.outcome and live.outcome.result == "ok"
    assert json.loads(path.read_text())["fields"]["TPR_THRESHOLD"] == 3
    assert again.vmcs.address == VMCS_PA and again.vmcs.launch_state == "clear"


def test_parse_fields_merges_high_halves() -> None:
    values = parse_fields({"TSC_OFFSET": 0x11111111, "TSC_OFFSET_HIGH": "0x22222222", "0x4002": 5})
    assert values[0x2010] == 0x2222222211111111 and values[0x4002] == 5
    assert parse_fields({"0x2011": 1})[0x2010] == 1 << 32


def test_vmxon_readiness_unit() -> None:
    caps = baseline_caps()
    caps.msrs[0x3A] = 1  # locked, VMXON outside SMX disabled
    verdicts = {v.id: v for v in vmxon_readiness(caps, 0x80050033, 0x2620, 0x1E00000, 4, 0)}
    assert verdicts["VMXON-FEATURE-LOCK"].status == "pass"
    assert verdicts["VMXON-FEATURE-ENABLE"].status == "fail"
    assert summary(list(verdicts.values())) == "not ready"
    caps.msrs[0x3A] = 5
    verdicts = {v.id: v for v in vmxon_readiness(caps, 0x80050033, 0x2620, 0x1E00000, 4, 0)}
    assert summary(list(verdicts.values())) == "ready", [v.to_json() for v in verdicts.values() if v.status != "pass"]
    verdicts = {v.id: v for v in vmxon_readiness(caps, 0x80050032, 0x2620, 1 << 47, 4, 0)}
    assert verdicts["VMXON-CR0-FIXED"].status == "fail" and verdicts["VMXON-REGION-WIDTH"].status == "fail"
    assert "0x80050033" in verdicts["VMXON-CR0-FIXED"].detail


def test_pointer_outside_target_memory_is_an_advisory() -> None:
    """With a target, a bitmap outside its physical memory is pointed out (the entry itself
    may still succeed); a snapshot cannot tell, so it says nothing."""
    doc = baseline_snapshot()
    doc["fields"]["MSR_BITMAP"] = 0x7FFF000000  # below MAXPHYADDR, far beyond the image
    snap = snapshot_from_json(doc)
    target = ImageTarget.from_bytes(bytes(0x4000000))
    report = check_vmcs(snap.vmcs, baseline_caps(), TargetMemory(target), snap.environment)
    assert report.outcome.result == "ok"
    assert [(a.rule.id, a.finding.field) for a in report.advisories] == [("ADV-POINTER-OUTSIDE-MEMORY", "MSR_BITMAP")]
    assert not run(doc).advisories


def test_environment_and_caps_from_a_live_target() -> None:
    from vtdbg.core.check.checker import environment_from_target
    from vtdbg.lib.errors import CapabilityError
    from vtdbg.target.base import Capability, Target

    class Live(Target):
        kind = "fake"
        capabilities = Capability.REGS | Capability.MSR_READ

        def registers(self) -> Dict[str, int]:
            return {"cs": 0x33, "efer": 0xD01, "cs_ar": 0xA0FB, "rflags": 0x202}

        def read_msr(self, index: int) -> int:
            from tests.check.baseline import BASELINE_MSRS

            if index == 0x3A:
                return 5
            if index not in BASELINE_MSRS:
                raise CapabilityError("no MSR 0x%x" % index)
            return BASELINE_MSRS[index]

    live = Live("fake live CPU")
    env = environment_from_target(live)
    assert (env.cpl, env.host_ia32e, env.cpu_mode) == (3, True, "64-bit")
    assert env.stated["cpl"].startswith("registers of")
    caps = Caps.from_target(live)
    assert caps.msr(0x48E) == baseline_caps().msr(0x48E) and caps.msr(0x3A) == 5
    assert 0x492 not in caps.msrs  # tertiary controls not allowed: never read
