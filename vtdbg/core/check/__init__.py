"""The VM-entry checker: why VMLAUNCH/VMRESUME fails, before or after it fails.

One rule table (vtdbg/arch/data/vmentry_rules.json: ids, SDM sections, fields, capability
MSRs, outcomes, hints) and one module of predicates per architectural stage:
:mod:`basic` (26.1), :mod:`controls` (26.2.1), :mod:`host` (26.2.2-4), :mod:`guest` (26.3.1),
:mod:`msr_load` (26.4).  :mod:`engine` runs them all and predicts the outcome; :mod:`caps`
says what the processor allows; :mod:`snapshot`, :mod:`explain` and :mod:`vmxon` are the
entry points for snapshot files, after-the-fact explanations and VMXON readiness.

Public entry points::

    check_vmcs(vmcs, caps, memory=None, env=None) -> Report      # report.to_json(): the CLI contract
    explain_failure(vmcs, caps=None, memory=None, env=None) -> Optional[dict]
    save_snapshot(vmcs, path, memory=None, caps=None, environment=None)
    load_snapshot(path) -> Snapshot
    vmxon_readiness(caps, cr0, cr4, region_pa, region_header, cpl) -> List[Verdict]
"""
from __future__ import annotations

from vtdbg.core.check.caps import Caps, load_caps
from vtdbg.core.check.checker import check_vmcs
from vtdbg.core.check.context import Environment
from vtdbg.core.check.explain import explain_failure
from vtdbg.core.check.memory import Memory, SparseMemory, TargetMemory
from vtdbg.core.check.snapshot import load_snapshot, save_snapshot
from vtdbg.core.check.vmxon import vmxon_readiness

__all__ = ["Caps", "Environment", "Memory", "SparseMemory", "TargetMemory", "check_vmcs", "explain_failure",
           "load_caps", "load_snapshot", "save_snapshot", "vmxon_readiness"]
