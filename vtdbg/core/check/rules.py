"""The VM-entry rule table: metadata of every check, read from ``vmentry_rules.json``.

The table (vtdbg/arch/data/vmentry_rules.json) holds, per rule, its catalog id, the stage it
belongs to, the SDM section, the fields and capability MSRs it reads, the outcome it causes,
a description and a fix hint.  The predicates (the code) live in the stage modules, keyed by
the same ids; :mod:`vtdbg.core.check.engine` joins the two.  The same file lists the known
deviations of implementations (Bochs, KVM) from the SDM, keyed by rule id, and the model of
which MSRs an MSR-load entry may write.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from vtdbg.arch._data import as_int, load_table
from vtdbg.arch.exit_reasons import exit_reason_name
from vtdbg.arch.vm_errors import describe_error

_TABLE = "vmentry_rules.json"

#: Outcome classes, in the vocabulary of the `vtdbg check --json` contract.
RESULTS = ("ok", "fault", "vmfail_invalid", "vmfail", "entry_failure")

#: Exception vectors the basic checks raise (SDM Vol. 3A, table of exceptions).
_VECTOR_NAMES = {6: "#UD", 13: "#GP(0)"}


@dataclass(frozen=True)
class Outcome:
    """What VMLAUNCH/VMRESUME does: fault (with ``vector``), VMfailInvalid, VMfailValid (with
    ``error``), a VM-entry failure (``exit_reason`` 33/34 and ``qualification``), or ok."""

    result: str
    error: Optional[int] = None
    exit_reason: Optional[int] = None
    qualification: Optional[int] = None
    vector: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        """The contract keys (``error``/``exit_reason``/``qualification`` null when not applicable)."""
        doc: Dict[str, Any] = {"result": self.result, "error": self.error, "exit_reason": self.exit_reason,
                               "qualification": self.qualification}
        if self.result == "fault":
            doc["vector"] = self.vector
        return doc

    def with_qualification(self, qualification: int) -> Outcome:
        """The same VM-entry failure with another exit qualification."""
        return Outcome(self.result, self.error, self.exit_reason, qualification, self.vector)

    def with_error(self, error: int) -> Outcome:
        """The same VMfailValid with another error number."""
        return Outcome(self.result, error, self.exit_reason, self.qualification, self.vector)

    def label(self) -> str:
        """One line for people: ``VMfailValid, VM-instruction error 7: ...``."""
        if self.result == "ok":
            return "VM entry succeeds"
        if self.result == "fault":
            name = _VECTOR_NAMES.get(self.vector or -1, "exception %s" % self.vector)
            return "VMLAUNCH/VMRESUME raises %s before any VMX check" % name
        if self.result == "vmfail_invalid":
            return "VMfailInvalid (RFLAGS.CF=1, no error number stored)"
        if self.result == "vmfail":
            return "VMfailValid (RFLAGS.ZF=1), VM-instruction error %s" % describe_error(self.error or 0)
        basic = self.exit_reason or 0
        what = "exit qualification %d" % (self.qualification or 0)
        if basic == 34:
            what = "failing VM-entry MSR-load entry %d (1-based)" % (self.qualification or 0)
        return "VM-entry failure: exit reason 0x%08x (basic %d, %s), %s" % (
            basic | (1 << 31), basic, exit_reason_name(basic), what)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Outcome:
        """Parse the table's (or a lab fixture's) outcome object."""
        result = str(raw["result"])
        if result == "vmfail_valid":  # the lab fixtures' spelling
            result = "vmfail"
        if result not in RESULTS:
            raise ValueError("unknown outcome result %r" % result)

        def num(key: str) -> Optional[int]:
            value = raw.get(key)
            return None if value is None else as_int(value)

        exit_reason = num("exit_reason")
        if exit_reason is not None:
            exit_reason &= 0xFFFF  # the basic reason; bit 31 is implied by the result
        return cls(result, num("error"), exit_reason, num("qualification"), num("vector"))

    def same_as(self, other: Outcome) -> bool:
        """Equal in result, error, exit reason and qualification (what a lab run records); two
        successful entries are equal whatever exit the guest took afterwards."""
        if self.result == "ok" or other.result == "ok":
            return self.result == other.result
        return (self.result, self.error, self.exit_reason, self.qualification) == (
            other.result, other.error, other.exit_reason, other.qualification)


OK = Outcome("ok")


@dataclass(frozen=True)
class Stage:
    """One architectural stage of VM entry."""

    id: str
    title: str
    sdm: str
    outcome: str


@dataclass(frozen=True)
class Rule:
    """Metadata of one check (see the module docstring)."""

    id: str
    stage: str
    section: str
    sdm: str
    fields: Tuple[str, ...]
    msrs: Tuple[str, ...]
    outcome: Outcome
    description: str
    hint: str
    memory: bool = False
    impl: bool = False
    advisory: bool = False
    alternatives: Tuple[Outcome, ...] = ()
    bochs: str = ""
    kvm: str = ""
    note: str = ""


@dataclass(frozen=True)
class Deviation:
    """An implementation that does not do what the SDM says for one rule."""

    rule: str
    implementation: str
    observed: Outcome
    condition: str
    note: str
    evidence: Tuple[str, ...] = ()


@dataclass(frozen=True)
class MsrWriteModel:
    """What WRMSR accepts for one architectural MSR (used for VM-entry MSR loading)."""

    index: int
    name: str
    check: str
    note: str = ""


@dataclass(frozen=True)
class RuleTable:
    """The whole parsed table."""

    stages: Tuple[Stage, ...]
    rules: Tuple[Rule, ...]
    by_id: Dict[str, Rule]
    deviations: Tuple[Deviation, ...]
    msr_model: Dict[int, MsrWriteModel]
    defaults: Dict[str, Any]
    editions: Tuple[Tuple[str, int], ...]
    base_chapter: int
    sections: Dict[str, str] = field(default_factory=dict)

    def stage_rules(self, stage: str) -> List[Rule]:
        """Rules of one stage in catalog order."""
        return [r for r in self.rules if r.stage == stage]

    def deviations_for(self, rule_id: str, implementation: Optional[str] = None) -> List[Deviation]:
        """Known deviations for ``rule_id`` (optionally of one implementation)."""
        return [d for d in self.deviations
                if d.rule == rule_id and (implementation is None or d.implementation == implementation)]


def _outcome(raw: Mapping[str, Any]) -> Outcome:
    return Outcome.from_json(raw)


@functools.lru_cache(maxsize=None)
def table() -> RuleTable:
    """The parsed rule table (read once per process)."""
    raw = load_table(_TABLE)
    stages = tuple(Stage(str(s["id"]), str(s["title"]), str(s["sdm"]), str(s["outcome"])) for s in raw["stages"])
    rules: List[Rule] = []
    for row in raw["rules"]:
        rules.append(Rule(
            id=str(row["id"]),
            stage=str(row["stage"]),
            section=str(row.get("section", "")),
            sdm=str(row["sdm"]),
            fields=tuple(str(f) for f in row.get("fields", [])),
            msrs=tuple(str(m) for m in row.get("msrs", [])),
            outcome=_outcome(row["outcome"]),
            description=str(row["description"]),
            hint=str(row.get("hint", "")),
            memory=bool(row.get("memory", False)),
            impl=bool(row.get("impl", False)),
            advisory=bool(row.get("advisory", False)),
            alternatives=tuple(_outcome(a) for a in row.get("alternatives", [])),
            bochs=str(row.get("bochs", "")),
            kvm=str(row.get("kvm", "")),
            note=str(row.get("note", "")),
        ))
    by_id: Dict[str, Rule] = {}
    for rule in rules:
        if rule.id in by_id:
            raise ValueError("duplicate rule id %s in %s" % (rule.id, _TABLE))
        by_id[rule.id] = rule
    deviations = tuple(Deviation(
        rule=str(d["rule"]),
        implementation=str(d["implementation"]),
        observed=_outcome(d["observed"]),
        condition=str(d.get("condition", "")),
        note=str(d.get("note", "")),
        evidence=tuple(str(e) for e in d.get("evidence", [])),
    ) for d in raw.get("deviations", []))
    model = {}
    for m in raw.get("msr_write_model", []):
        entry = MsrWriteModel(as_int(m["index"]), str(m["name"]), str(m["check"]), str(m.get("note", "")))
        model[entry.index] = entry
    editions = tuple((str(e["edition"]), int(e["chapter"])) for e in raw["sdm_editions"]["chapters"])
    return RuleTable(
        stages=stages,
        rules=tuple(rules),
        by_id=by_id,
        deviations=deviations,
        msr_model=model,
        defaults=dict(raw.get("defaults", {})),
        editions=editions,
        base_chapter=int(raw["sdm_editions"]["base_chapter"]),
        sections={str(k): str(v) for k, v in raw.get("sections", {}).items()},
    )


def rule(rule_id: str) -> Rule:
    """The rule with this id (KeyError if none)."""
    return table().by_id[rule_id]


def sdm_editions(section: str) -> Dict[str, str]:
    """``{"2011-2021": "26.2.1.1", ..., "2023+": "28.2.1.1"}`` for a section given in the
    table's base numbering (chapter 26); sections of other chapters are returned unchanged."""
    tab = table()
    head, _, rest = section.partition(".")
    if not head.isdigit() or int(head) != tab.base_chapter:
        return {edition: section for edition, _ in tab.editions}
    return {edition: "%d.%s" % (chapter, rest) for edition, chapter in tab.editions}


def sdm_text(section: str) -> str:
    """The section as printed: the base numbering and the newest one (``26.3.1.2 / 28.3.1.2``)."""
    editions = list(sdm_editions(section).values())
    newest = editions[-1] if editions else section
    return section if newest == section else "%s / %s" % (section, newest)
