"""The rule table (vmentry_rules.json) and the predicates agree, and its names resolve."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT
from vtdbg.arch.fields import lookup_field
from vtdbg.arch.msrs import all_msrs, lookup_msr
from vtdbg.core.check import engine
from vtdbg.core.check.rules import RESULTS, sdm_editions, sdm_text, table


def test_every_rule_has_exactly_one_predicate_and_vice_versa() -> None:
    predicates = engine.load_predicates()
    ids = [r.id for r in table().rules]
    assert len(ids) == len(set(ids)), "duplicate rule ids"
    assert set(ids) == set(predicates), (set(ids) ^ set(predicates))
    with pytest.raises(ValueError):
        engine.predicate(ids[0])(lambda ctx: iter(()))


def test_rule_metadata_is_well_formed() -> None:
    tab = table()
    stages = [s.id for s in tab.stages]
    assert stages == ["basic", "controls", "host", "guest", "msr_load"]
    seen_stages = []
    for rule in tab.rules:
        assert rule.stage in stages
        if rule.stage not in seen_stages:
            seen_stages.append(rule.stage)
        assert rule.section in tab.sections, rule.id
        assert re.fullmatch(r"26(\.\d+)+", rule.sdm), rule.id
        assert rule.outcome.result in RESULTS
        assert rule.description and rule.hint, rule.id
        for name in rule.fields:
            lookup_field(name)  # canonical names from the arch table
        for name in rule.msrs:
            lookup_msr(name)
    # the table is ordered by stage, as the catalog is
    assert seen_stages == stages


def test_outcome_classes_match_the_stage() -> None:
    expected = {"controls": ("vmfail", 7), "host": ("vmfail", 8)}
    for rule in table().rules:
        if rule.advisory:
            continue
        if rule.stage in expected:
            assert (rule.outcome.result, rule.outcome.error) == expected[rule.stage], rule.id
        if rule.stage in ("guest", "msr_load"):
            assert rule.outcome.result == "entry_failure"
            assert rule.outcome.exit_reason == (33 if rule.stage == "guest" else 34)
    quals = {r.id: r.outcome.qualification for r in table().stage_rules("guest") if r.outcome.qualification}
    assert quals == {"GUEST-INTR-NMI-STI": 3, "GUEST-LINK-PTR-ADDR": 4, "GUEST-LINK-PTR-REVID": 4,
                     "GUEST-LINK-PTR-SELF": 4, "GUEST-PDPTE-RSVD": 2}


def test_catalog_rows_are_all_in_the_table(shared_reference: Path) -> None:
    """Every rule row of the catalog (its first id) has a rule of that id."""
    text = (shared_reference / "vmentry-checks.md").read_text()
    ids = set(re.findall(r"^\| \**([A-Z0-9]+(?:-[A-Z0-9]+)+)\**", text, re.M))
    assert len(ids) > 150
    missing = ids - {r.id for r in table().rules}
    # the rows the catalog leaves unspecified (tertiary-control dependencies, FRED and
    # SPEC_CTRL host state); the table's "not_modelled" list says so
    assert missing == {"CTL-TERTIARY", "HOST-FRED"}


def test_deviations_and_msr_model() -> None:
    tab = table()
    for deviation in tab.deviations:
        assert deviation.rule in tab.by_id
        assert deviation.note
    vmx = {m.index for m in all_msrs()}
    assert not vmx & set(tab.msr_model), "VMX MSRs come from the arch table, not the model"


def test_sdm_numbering() -> None:
    assert sdm_text("26.3.1.2") == "26.3.1.2 / 28.3.1.2"
    editions = sdm_editions("26.2.1.1")
    assert editions["2008-2010 (Vol. 3B)"] == "22.2.1.1" and editions["2021-2022"] == "27.2.1.1"


def test_generated_doc_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_rule_docs", str(ROOT / "scripts" / "gen_rule_docs.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    assert module.render() == (ROOT / "docs" / "vmentry-rules.md").read_text(encoding="utf-8"), \
        "docs/vmentry-rules.md is stale: run python3 scripts/gen_rule_docs.py"
