"""Entry points: check a :class:`~vtdbg.core.vmcs.Vmcs` against capabilities.

``check_vmcs(vmcs, caps, memory, env)`` runs every rule and returns a
:class:`~vtdbg.core.check.engine.Report`; its ``to_json()`` is the `vtdbg check --json`
contract.  The report also states every assumption it made (environment defaults,
MAXPHYADDR, processor facts), so a reader can see what was not measured.
"""
from __future__ import annotations

from typing import Optional

from vtdbg.core.check.caps import Caps
from vtdbg.core.check.context import Ctx, Environment
from vtdbg.core.check.engine import Report, evaluate
from vtdbg.core.check.facts import reg_get
from vtdbg.core.check.memory import Memory, TargetMemory
from vtdbg.core.vmcs import Vmcs
from vtdbg.target.base import Capability, Target


def environment_from_target(target: Target) -> Environment:
    """What the target's registers say about the VMM (CPL from CS, IA-32e from EFER.LMA);
    facts the target cannot give keep their defaults."""
    env = Environment()
    if not target.has(Capability.REGS):
        return env
    try:
        regs = target.registers()
    except Exception:  # a backend that cannot give registers right now: keep the defaults
        return env
    source = "registers of %s" % target.description
    if "cs" in regs:
        env.set("cpl", regs["cs"] & 3, source)
    if "efer" in regs:
        lma = bool(reg_get("efer", "lma", regs["efer"]))
        env.set("host_ia32e", lma, source)
        if lma and "cs_ar" in regs:
            # IA-32e mode with CS.L = 0 is compatibility mode, where VMLAUNCH is #UD
            env.set("cpu_mode", "64-bit" if reg_get("segment_ar", "l", regs["cs_ar"]) else "compatibility", source)
    if "rflags" in regs and reg_get("rflags", "vm", regs["rflags"]):
        env.set("cpu_mode", "virtual-8086", source)
    return env


def check_vmcs(vmcs: Vmcs, caps: Caps, memory: Optional[Memory] = None, env: Optional[Environment] = None,
               vmcs_pa: Optional[int] = None) -> Report:
    """Predict what VMLAUNCH/VMRESUME does with ``vmcs`` and list every violated rule."""
    env = env or Environment()
    memory = memory or Memory()
    address = vmcs_pa if vmcs_pa is not None else vmcs.address
    ctx = Ctx(vmcs.values, caps, memory, env, vmcs_pa=address, launch_state=vmcs.launch_state,
              revision_id=vmcs.revision_id or None,
              shadow=vmcs.shadow)
    report = evaluate(ctx)
    report.assumptions = {
        "environment": env.to_json(vmcs.launch_state),
        "processor": caps.assumptions(),
        "caps_source": caps.source,
        "memory_source": memory.description,
        "vmcs_source": vmcs.trust or vmcs.source,
        "vmcs_pa": address,
        "launch_state": vmcs.launch_state,
    }
    report.warnings.extend(vmcs.warnings)
    if not caps.msrs:
        report.warnings.append("no capability MSRs (give --caps FILE or a target with MSR reads): rules that "
                               "compare against the CPU's allowed settings were not checked")
    return report


def memory_for(target: Optional[Target]) -> Memory:
    """The memory source for a target (none when there is no target)."""
    if target is None:
        return Memory()
    return TargetMemory(target)
