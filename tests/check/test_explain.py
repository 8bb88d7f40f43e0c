"""explain_failure: the VMCS after a failed VMLAUNCH/VMRESUME says why it failed."""
from __future__ import annotations

import pytest

from tests.check import labdata
from tests.check.baseline import baseline_caps, baseline_snapshot
from vtdbg.core.check.context import Environment
from vtdbg.core.check.explain import explain_failure
from vtdbg.core.check.snapshot import snapshot_from_json
from vtdbg.core.vmcs import decode_vmcs_page

MODELS = labdata.models()
#: where the lab leaves each scenario's VMCS after its VMLAUNCH (tests/fixtures/lab/README.md)
SCENARIO_BASE = 0x100000


@pytest.mark.skipif(not MODELS, reason="no Bochs lab fixtures")
@pytest.mark.parametrize("model", MODELS)
def test_lab_failures_are_explained(model: str) -> None:
    """Each scenario's VMCS as Bochs left it after the failed entry: the recorded failure is
    found, explained by the scenario's rule, and the prediction agrees with it."""
    lab = labdata.load(model)
    for number, scenario in enumerate(lab.scenarios):
        pa = SCENARIO_BASE + number * 0x1000
        vmcs = decode_vmcs_page(lab.memory.read(pa, 0x1000), address=pa)
        env = Environment()
        env.set("vmxon_pa", lab.truth["vmxon_pa"], "lab")
        summary = explain_failure(vmcs, lab.caps, lab.memory, env)
        result = scenario["outcome"]["result"]
        if result in ("ok", "vmfail_invalid"):
            # nothing is recorded in the VMCS: a success, or a failure without a current VMCS
            assert summary is None, scenario["scenario"]
            continue
        assert summary is not None, scenario["scenario"]
        assert summary["rule"] == scenario["rule"], (scenario["scenario"], summary["lines"])
        assert summary["agrees"], (scenario["scenario"], summary["observed"], summary["predicted"])
        assert any(line.startswith("Explained by %s" % scenario["rule"]) for line in summary["lines"])


def _snapshot(**fields: int):  # type: ignore[no-untyped-def]
    doc = baseline_snapshot()
    doc["fields"].update(fields)
    return snapshot_from_json(doc)


def test_no_failure_recorded_gives_none() -> None:
    snap = _snapshot(VM_INSTRUCTION_ERROR=0, VM_EXIT_REASON=18)
    assert explain_failure(snap.vmcs, baseline_caps(), snap.memory, snap.environment) is None
    # error 12 (VMREAD/VMWRITE of an unsupported field) is not a VM-entry failure
    snap = _snapshot(VM_INSTRUCTION_ERROR=12)
    assert explain_failure(snap.vmcs, baseline_caps(), snap.memory, snap.environment) is None


def test_recorded_failure_that_no_rule_explains() -> None:
    """A recorded error with a VMCS that is valid now (fixed since) says so instead of
    inventing a rule."""
    snap = _snapshot(VM_INSTRUCTION_ERROR=7)
    summary = explain_failure(snap.vmcs, baseline_caps(), snap.memory, snap.environment)
    assert summary is not None and summary["rule"] is None and not summary["agrees"]
    assert "no rule" in summary["lines"][0]


def test_entry_failure_with_qualification() -> None:
    snap = _snapshot(VM_EXIT_REASON=0x80000021, EXIT_QUALIFICATION=0, GUEST_RFLAGS=0)
    summary = explain_failure(snap.vmcs, baseline_caps(), snap.memory, snap.environment)
    assert summary is not None
    assert summary["observed"] == [{"result": "entry_failure", "error": None, "exit_reason": 33, "qualification": 0}]
    assert summary["agrees"] and summary["rule"] == "GUEST-RFLAGS-RSVD"


def test_error_5_implies_vmresume() -> None:
    snap = _snapshot(VM_INSTRUCTION_ERROR=5)
    summary = explain_failure(snap.vmcs, baseline_caps(), snap.memory, snap.environment)
    assert summary is not None and summary["rule"] == "PRE-LAUNCH-STATE" and summary["agrees"]
