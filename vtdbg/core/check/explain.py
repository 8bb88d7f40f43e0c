"""After the fact: why did the last VMLAUNCH/VMRESUME on this VMCS fail?

:func:`explain_failure` looks at the failure the VMCS records (VM_INSTRUCTION_ERROR for a
VMfailValid, bit 31 of VM_EXIT_REASON for a VM-entry failure), re-runs the checker with the
environment that failure implies, and says which rule explains it and whether the prediction
agrees with what the CPU recorded.  A failed VM entry leaves the guest-state area untouched
and the VMCS clear, so the checks see the same state the CPU saw.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from vtdbg.arch.exit_reasons import basic_reason, is_entry_failure
from vtdbg.core.check.caps import Caps
from vtdbg.core.check.checker import check_vmcs
from vtdbg.core.check.context import Environment
from vtdbg.core.check.memory import Memory
from vtdbg.core.check.rules import Outcome, sdm_text
from vtdbg.core.vmcs import Vmcs

#: VM-instruction errors VMLAUNCH/VMRESUME report (SDM 30.4): launch state (4, 5), invalid
#: control fields (7), invalid host state (8), MOV-SS blocking (26).
ENTRY_ERRORS = (4, 5, 7, 8, 26)
_VMRESUME_NOT_LAUNCHED = 5
_MOVSS = 26


def observed_failures(vmcs: Vmcs) -> List[Outcome]:
    """The VM-entry failures the VMCS records (a stale one may sit beside a newer one: both
    fields keep their value until the next failure of their kind)."""
    out: List[Outcome] = []
    reason = vmcs.get("VM_EXIT_REASON")
    if reason is not None and is_entry_failure(reason):
        out.append(Outcome("entry_failure", exit_reason=basic_reason(reason),
                           qualification=vmcs.get("EXIT_QUALIFICATION")))
    error = vmcs.get("VM_INSTRUCTION_ERROR")
    if error in ENTRY_ERRORS:
        out.append(Outcome("vmfail", error=error))
    return out


def explain_failure(vmcs: Vmcs, caps: Optional[Caps] = None, memory: Optional[Memory] = None,
                    env: Optional[Environment] = None) -> Optional[Dict[str, Any]]:
    """A summary of why the recorded VM-entry failure happened, or None when the VMCS records
    no VM-entry failure (VM_INSTRUCTION_ERROR not a VM-entry error and exit reason bit 31
    clear).

    The summary: ``observed`` (list of outcomes), ``predicted``, ``agrees``, ``rule`` (the
    deciding rule id), ``violations`` (the checker's list), ``not_checked`` (count), and
    ``lines`` (ready-to-print sentences).
    """
    observed = observed_failures(vmcs)
    if not observed:
        return None
    env = env or Environment()
    errors = {o.error for o in observed if o.result == "vmfail"}
    if _VMRESUME_NOT_LAUNCHED in errors and "instruction" not in env.stated:
        env.set("instruction", "vmresume", "VM-instruction error 5")
    if _MOVSS in errors and "mov_ss_blocking" not in env.stated:
        env.set("mov_ss_blocking", True, "VM-instruction error 26")
    report = check_vmcs(vmcs, caps or Caps(source="none"), memory, env)
    predicted = report.outcome
    agrees = any(predicted.same_as(o) for o in observed)
    lines: List[str] = []
    shown = ", ".join(o.label() for o in observed)
    if report.deciding is not None:
        rule = report.deciding.rule
        lines.append("Recorded: %s." % shown)
        lines.append("%s %s (SDM %s): %s" % ("Explained by" if agrees else "vtdbg predicts " + predicted.label()
                                           + " from", rule.id, sdm_text(rule.sdm), report.deciding.finding.message))
        lines.append("Fix: %s" % rule.hint)
        others = [v for v in report.violated() if v != rule.id]
        if others:
            lines.append("Also violated: %s." % ", ".join(others))
    else:
        lines.append("Recorded: %s, but no rule vtdbg could check is violated now%s." % (
            shown, " (%d rules could not be checked)" % len(report.not_checked) if report.not_checked else ""))
    return {
        "observed": [o.to_json() for o in observed],
        "predicted": predicted.to_json(),
        "agrees": agrees,
        "rule": report.rule,
        "violations": [v.to_json() for v in report.violations],
        "not_checked": len(report.not_checked),
        "lines": lines,
    }
