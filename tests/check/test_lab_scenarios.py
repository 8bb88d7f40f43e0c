"""The checker against what Bochs really did (tests/fixtures/lab): every VM-entry failure
scenario of every model, and the successful launches of the normal runs."""
from __future__ import annotations

from typing import Dict, List

import pytest

from tests.check import labdata
from vtdbg.core.check.checker import check_vmcs
from vtdbg.core.check.rules import Outcome, rule, table
from vtdbg.core.vmcs import decode_vmcs_page

MODELS = labdata.models()
pytestmark = pytest.mark.skipif(not MODELS, reason="no Bochs lab fixtures")


def _cases() -> List[object]:
    return [pytest.param(m, s["scenario"], id="%s-%s" % (m, s["scenario"]))
            for m in MODELS for s in labdata.load(m).scenarios]


def _scenario(model: str, name: str) -> Dict[str, object]:
    return next(s for s in labdata.load(model).scenarios if s["scenario"] == name)


@pytest.mark.parametrize("model,name", _cases())
def test_scenario_prediction(model: str, name: str) -> None:
    """The predicted outcome is Bochs's, or the SDM's where a documented Bochs deviation
    explains the difference; and the rule named is the one the scenario broke."""
    lab = labdata.load(model)
    scenario = _scenario(model, name)
    vmcs, env = labdata.scenario_inputs(lab, scenario)
    report = check_vmcs(vmcs, lab.caps, lab.memory, env)
    observed = Outcome.from_json(scenario["outcome"])
    broken = str(scenario["rule"])
    assert report.rule == broken, (report.rule, report.violated())
    if report.outcome.same_as(observed):
        return
    deviations = [d for d in table().deviations_for(broken, "bochs") if d.observed.same_as(observed)]
    assert deviations, "Bochs did %s, the checker says %s, and no deviation of %s records it" % (
        observed, report.outcome, broken)
    # where Bochs deviates the checker keeps to the SDM
    assert report.outcome.same_as(rule(broken).outcome)


@pytest.mark.parametrize("model", MODELS)
def test_agreement_figures(model: str) -> None:
    """Every scenario agrees with Bochs or with a documented deviation (the per-model count
    is printed for the record)."""
    lab = labdata.load(model)
    exact = deviating = 0
    for scenario in lab.scenarios:
        vmcs, env = labdata.scenario_inputs(lab, scenario)
        report = check_vmcs(vmcs, lab.caps, lab.memory, env)
        observed = Outcome.from_json(scenario["outcome"])
        if report.outcome.same_as(observed) and report.rule == scenario["rule"]:
            exact += 1
        elif any(d.observed.same_as(observed) for d in table().deviations_for(str(scenario["rule"]), "bochs")):
            deviating += 1
    print("%s: %d/%d scenarios as Bochs did, %d as the SDM says where Bochs deviates"
          % (model, exact, len(lab.scenarios), deviating))
    assert exact + deviating == len(lab.scenarios)
    assert len(lab.scenarios) >= 20


@pytest.mark.parametrize("model", labdata.all_models())
def test_normal_run_is_ok(model: str) -> None:
    """No false alarm on the lab's successful launch: the VMCS after its last exit (which the
    lab resumes) and the VMCS page at every exit."""
    lab = labdata.load(model)
    truth = lab.truth
    from vtdbg.core.check.context import Environment
    from vtdbg.core.check.snapshot import parse_fields
    from vtdbg.core.vmcs import Vmcs

    env = Environment()
    env.set("vmxon_pa", truth["vmxon_pa"], "lab")
    vmcs = Vmcs("memory", truth["revision_id"], False, parse_fields(truth["fields"]), address=truth["vmcs_pa"],
                launch_state="launched")
    report = check_vmcs(vmcs, lab.caps, lab.memory, env)
    assert report.outcome.result == "ok", report.violated()
    assert report.violations == [] and report.not_checked == []
    for snap in truth.get("exit_snapshots", []):
        page = (lab.path / snap["file"]).read_bytes()
        report = check_vmcs(decode_vmcs_page(page, address=truth["vmcs_pa"]), lab.caps, lab.memory, env)
        assert report.outcome.result == "ok", (snap, report.violated())
        assert not report.not_checked, [n.to_json() for n in report.not_checked]
