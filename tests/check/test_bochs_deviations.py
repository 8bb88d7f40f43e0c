"""The deviation scenarios measured under Bochs (tests/check/fixtures/bochs_deviations.json,
made by scripts/measure_bochs_deviations.py): the checker predicts what the SDM says; where
Bochs does something else, the deviations table records exactly what Bochs did."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from vtdbg.core.check.caps import Caps
from vtdbg.core.check.checker import check_vmcs
from vtdbg.core.check.rules import Outcome, rule, table
from vtdbg.core.check.snapshot import snapshot_from_json

DATA = Path(__file__).resolve().parent / "fixtures" / "bochs_deviations.json"
MEASURED = json.loads(DATA.read_text()) if DATA.is_file() else {"models": {}}


def _cases() -> List[Any]:
    return [pytest.param(model, s["scenario"], id="%s-%s" % (model, s["scenario"]))
            for model, entry in MEASURED["models"].items() for s in entry["scenarios"]]


def _scenario(model: str, name: str) -> Dict[str, Any]:
    return next(s for s in MEASURED["models"][model]["scenarios"] if s["scenario"] == name)


@pytest.mark.parametrize("model,name", _cases())
def test_measured_deviation(model: str, name: str) -> None:
    entry = MEASURED["models"][model]
    scenario = _scenario(model, name)
    snap = snapshot_from_json(scenario["snapshot"], name)
    caps = Caps.from_mapping(entry["caps"], "measured %s" % model)
    report = check_vmcs(snap.vmcs, caps, snap.memory, snap.environment)
    observed = Outcome.from_json(scenario["outcome"])
    broken = scenario["rule"]
    if report.outcome.same_as(observed):
        # agreement; a predicted failure must be the scenario's rule
        assert report.rule in (broken, None), report.violated()
        return
    assert report.rule == broken, report.violated()
    assert report.outcome.same_as(rule(broken).outcome), "the checker keeps to the SDM"
    recorded = [d for d in table().deviations_for(broken, "bochs") if d.observed.same_as(observed)]
    assert recorded, "Bochs did %s for %s; add it to the deviations table" % (observed, broken)


def test_measured_deviations_are_cited() -> None:
    """Every deviation that says it was measured names scenarios this file holds."""
    names = {s["scenario"] for entry in MEASURED["models"].values() for s in entry["scenarios"]}
    for deviation in table().deviations:
        for evidence in deviation.evidence:
            if "bochs_deviations.json" in evidence:
                cited = evidence.split("scenario", 1)[1].split("(")[0].replace(",", " ").split()
                assert cited and set(cited) <= names, (deviation.rule, cited)
