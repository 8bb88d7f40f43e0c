"""The VM-entry checker: one rule table, one predicate per rule, every rule evaluated.

Predicates are registered by the stage modules (basic, controls, host, guest, msr_load) with
:func:`predicate` under the rule's id; :func:`check` runs all of them in catalog order and
turns the findings into a :class:`Report` whose outcome is that of the first failing stage:

* basic checks: the first violation in order (they are architecturally sequential);
* controls and host state: VMfailValid 7 if any control rule fails, else 8 (the SDM leaves the
  order open; Bochs and KVM check the controls first, so hardware may say 8 where we say 7);
* guest state: VM-entry failure, exit reason 33, with the qualification of the first failing
  rule in catalog order (the others are named as alternatives);
* MSR loading: exit reason 34 with the 1-based index of the first failing entry.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from vtdbg.arch.controls import group as control_group
from vtdbg.core.check.context import Ctx, Unknown
from vtdbg.core.check.facts import canonical_name
from vtdbg.core.check.rules import OK, Outcome, Rule, sdm_editions, table

#: The stage modules, imported on first use so that every predicate is registered.
STAGE_MODULES = ("basic", "controls", "host", "guest", "msr_load")


@dataclass
class Finding:
    """One violation a predicate found.

    ``field`` is the VMCS field at fault (None for environment facts), ``value`` its value,
    ``message`` what the rule requires; ``index`` is the 1-based MSR-load entry for stage 4;
    ``outcome`` overrides the rule's outcome (VMRESUME's error 5, a qualification).
    """

    field: Optional[str]
    value: Optional[int]
    message: str
    index: Optional[int] = None
    outcome: Optional[Outcome] = None
    detail: Dict[str, Any] = dc_field(default_factory=dict)


Predicate = Callable[[Ctx], Iterable[Finding]]
PREDICATES: Dict[str, Predicate] = {}


def predicate(rule_id: str) -> Callable[[Predicate], Predicate]:
    """Register the predicate of ``rule_id`` (exactly one per id)."""
    def wrap(func: Predicate) -> Predicate:
        if rule_id in PREDICATES:
            raise ValueError("rule %s has two predicates" % rule_id)
        PREDICATES[rule_id] = func
        return func
    return wrap


def load_predicates() -> Dict[str, Predicate]:
    """Import the stage modules (registration happens at import) and return the registry."""
    for name in STAGE_MODULES:
        importlib.import_module("vtdbg.core.check." + name)
    return PREDICATES


@dataclass
class Violation:
    """A finding joined with its rule."""

    rule: Rule
    finding: Finding

    @property
    def outcome(self) -> Outcome:
        """The outcome this violation alone would cause (an MSR-load entry's index is its
        exit qualification)."""
        if self.finding.outcome is not None:
            return self.finding.outcome
        if self.finding.index is not None:
            return self.rule.outcome.with_qualification(self.finding.index)
        return self.rule.outcome

    def to_json(self) -> Dict[str, Any]:
        """The contract keys (rule, sdm, field, message) plus details."""
        doc: Dict[str, Any] = {
            "rule": self.rule.id,
            "sdm": self.rule.sdm,
            "sdm_editions": sdm_editions(self.rule.sdm),
            "field": self.finding.field and canonical_name(self.finding.field),
            "value": self.finding.value,
            "message": self.finding.message,
            "hint": self.rule.hint,
            "stage": self.rule.stage,
            "outcome": self.outcome.to_json(),
            "description": self.rule.description,
        }
        if self.finding.index is not None:
            doc["index"] = self.finding.index
        if self.rule.impl:
            doc["implementation_specific"] = True
            doc["alternatives"] = [a.to_json() for a in self.rule.alternatives]
        doc.update(self.finding.detail)
        return doc


@dataclass
class NotChecked:
    """A rule the inputs could not decide."""

    rule: Rule
    reason: Unknown
    partial: bool = False

    def to_json(self) -> Dict[str, Any]:
        """Rule, SDM section, what was missing and why."""
        return {"rule": self.rule.id, "sdm": self.rule.sdm, "stage": self.rule.stage, "missing": self.reason.kind,
                "name": self.reason.name, "reason": self.reason.why, "partial": self.partial}


@dataclass
class Alternative:
    """Another outcome hardware may produce for the same VMCS, and why."""

    outcome: Outcome
    rule: str
    why: str

    def to_json(self) -> Dict[str, Any]:
        """The outcome keys plus the rule and the reason."""
        doc = self.outcome.to_json()
        doc.update({"rule": self.rule, "why": self.why})
        return doc


@dataclass
class Report:
    """Everything one check run found."""

    outcome: Outcome
    deciding: Optional[Violation]
    alternatives: List[Alternative]
    violations: List[Violation]
    not_checked: List[NotChecked]
    advisories: List[Violation]
    controls: List[Dict[str, Any]]
    assumptions: Dict[str, Any]
    warnings: List[str] = dc_field(default_factory=list)

    @property
    def rule(self) -> Optional[str]:
        """Id of the rule that decides the predicted outcome."""
        return self.deciding.rule.id if self.deciding else None

    def violated(self) -> List[str]:
        """Ids of every violated rule, in catalog order, without repeats."""
        seen: List[str] = []
        for violation in self.violations:
            if violation.rule.id not in seen:
                seen.append(violation.rule.id)
        return seen

    def to_json(self) -> Dict[str, Any]:
        """The `vtdbg check --json` contract."""
        doc = self.outcome.to_json()
        doc.update({
            "rule": self.rule,
            "stage": self.deciding.rule.stage if self.deciding else None,
            "summary": self.outcome.label(),
            "alternatives": [a.to_json() for a in self.alternatives],
            "violations": [v.to_json() for v in self.violations],
            "not_checked": [n.to_json() for n in self.not_checked],
            "advisories": [a.to_json() for a in self.advisories],
            "controls": self.controls,
            "assumptions": self.assumptions,
            "complete": not self.not_checked,
            "warnings": list(self.warnings),
        })
        return doc


def evaluate(ctx: Ctx) -> Report:
    """Run every rule on ``ctx`` and predict the outcome."""
    load_predicates()
    tab = table()
    violations: List[Violation] = []
    advisories: List[Violation] = []
    not_checked: List[NotChecked] = []
    for rule in tab.rules:
        func = PREDICATES.get(rule.id)
        if func is None:
            raise RuntimeError("rule %s has no predicate" % rule.id)
        found: List[Finding] = []
        try:
            for finding in func(ctx):  # one by one: findings made before an Unknown still count
                found.append(finding)
        except Unknown as missing:
            not_checked.append(NotChecked(rule, missing, partial=bool(found)))
        target = advisories if rule.advisory else violations
        target.extend(Violation(rule, f) for f in found)
    outcome, deciding, alternatives = predict(violations)
    return Report(outcome, deciding, alternatives, violations, not_checked, advisories, control_diffs(ctx), {})


def predict(violations: List[Violation]) -> Tuple[Outcome, Optional[Violation], List[Alternative]]:
    """The outcome of the first failing stage, the violation that decides it, and the other
    outcomes hardware could give (see the module docstring)."""
    by_stage: Dict[str, List[Violation]] = {}
    for violation in violations:
        by_stage.setdefault(violation.rule.stage, []).append(violation)
    alternatives: List[Alternative] = []
    basic = by_stage.get("basic", [])
    if basic:
        return basic[0].outcome, basic[0], alternatives
    controls = by_stage.get("controls", [])
    host = by_stage.get("host", [])
    if controls or host:
        deciding = controls[0] if controls else host[0]
        if controls and host:
            alternatives.append(Alternative(host[0].outcome, host[0].rule.id,
                                            "the SDM does not order the control and host-state checks; a processor "
                                            "that checks the host-state area first reports error %d" % (
                                                host[0].outcome.error or 8)))
        _rule_alternatives(deciding, alternatives)
        return deciding.outcome, deciding, alternatives
    guest = by_stage.get("guest", [])
    if guest:
        deciding = guest[0]
        seen = {deciding.outcome.qualification}
        for other in guest[1:]:
            qualification = other.outcome.qualification
            if qualification not in seen:
                seen.add(qualification)
                alternatives.append(Alternative(other.outcome, other.rule.id,
                                                "the SDM does not order the guest-state checks; a processor that "
                                                "checks %s first reports qualification %d" % (other.rule.id,
                                                                                              qualification or 0)))
        _rule_alternatives(deciding, alternatives)
        return deciding.outcome, deciding, alternatives
    loads = by_stage.get("msr_load", [])
    if loads:
        deciding = min(loads, key=lambda v: v.finding.index or 0)
        _rule_alternatives(deciding, alternatives)
        return deciding.outcome, deciding, alternatives
    return OK, None, alternatives


def _rule_alternatives(deciding: Violation, alternatives: List[Alternative]) -> None:
    for alternative in deciding.rule.alternatives:
        why = deciding.rule.note or "implementation-specific check"
        alternatives.append(Alternative(alternative, deciding.rule.id, why))


def control_diffs(ctx: Ctx) -> List[Dict[str, Any]]:
    """Each control field against what the CPU allows (groups whose value and capability MSR
    are both known; inactive secondary/tertiary groups are skipped)."""
    from vtdbg.arch.controls import decode_controls

    out: List[Dict[str, Any]] = []
    for name in ("pin", "proc", "proc2", "proc3", "exit", "exit2", "entry"):
        grp = control_group(name)
        try:
            if grp.enabled_by is not None:
                parent, bit = grp.enabled_by
                if not (ctx.controls(parent) >> bit) & 1:
                    continue
            value = ctx.f(grp.field)
            allowed = ctx.caps.allowed(name)
        except Unknown:
            continue
        missing = allowed.must1_missing(value)
        forbidden = allowed.forbidden(value)
        out.append({
            "group": name,
            "field": grp.field,
            "value": value,
            "msr": allowed.msr_name,
            "must_be_one": allowed.must1,
            "may_be_one": allowed.may1,
            "missing": missing,
            "missing_names": [b.name for b in decode_controls(name, missing)],
            "forbidden": forbidden,
            "forbidden_names": [b.name for b in decode_controls(name, forbidden)],
            "suggested": (value | allowed.must1) & allowed.may1,
            "ok": not missing and not forbidden,
        })
    return out
