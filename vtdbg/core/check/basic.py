"""Stage 1: the basic checks of VMLAUNCH/VMRESUME (SDM 26.1), strictly in this order.

They look at the VMM's own state (the environment) and the current-VMCS pointer, not at the
VMCS contents; the first one that fails decides the outcome.
"""
from __future__ import annotations

from typing import Iterator

from vtdbg.core.check.context import Ctx, Unknown
from vtdbg.core.check.engine import Finding, predicate
from vtdbg.core.check.facts import INVALID_POINTER
from vtdbg.core.check.rules import Outcome

#: VM-instruction errors of the launch-state check (SDM 30.4): VMLAUNCH with a non-clear
#: VMCS, VMRESUME with a non-launched VMCS.
_VMLAUNCH_NOT_CLEAR = 4
_VMRESUME_NOT_LAUNCHED = 5


@predicate("PRE-VMX-MODE")
def _vmx_mode(ctx: Ctx) -> Iterator[Finding]:
    env = ctx.env
    if not env.vmx_root:
        yield Finding(None, None, "the VMM must be in VMX root operation (VMXON executed); outside VMX operation "
                                  "VMLAUNCH/VMRESUME raise #UD")
    elif env.cpu_mode in ("compatibility", "virtual-8086", "real"):
        yield Finding(None, None, "VMLAUNCH/VMRESUME raise #UD in %s mode; run them in 64-bit or protected mode"
                      % env.cpu_mode)


@predicate("PRE-CPL")
def _cpl(ctx: Ctx) -> Iterator[Finding]:
    if ctx.env.cpl != 0:
        yield Finding(None, ctx.env.cpl, "CPL must be 0 (it is %d): VMLAUNCH/VMRESUME raise #GP(0)" % ctx.env.cpl)


@predicate("PRE-NO-VMCS")
def _no_vmcs(ctx: Ctx) -> Iterator[Finding]:
    if ctx.vmcs_pa == INVALID_POINTER:
        yield Finding(None, ctx.vmcs_pa, "there must be a current VMCS (VMPTRLD); the current-VMCS pointer is "
                                         "all ones")


@predicate("PRE-SHADOW-VMCS")
def _shadow(ctx: Ctx) -> Iterator[Finding]:
    if ctx.shadow:
        yield Finding(None, ctx.revision_id, "the current VMCS must be an ordinary VMCS: bit 31 of its revision "
                                             "dword (shadow-VMCS indicator) is 1")


@predicate("PRE-MOVSS")
def _movss(ctx: Ctx) -> Iterator[Finding]:
    if ctx.env.mov_ss_blocking:
        yield Finding(None, None, "VMLAUNCH/VMRESUME must not follow MOV SS/POP SS directly (events are blocked "
                                  "by MOV SS)")


@predicate("PRE-LAUNCH-STATE")
def _launch_state(ctx: Ctx) -> Iterator[Finding]:
    instruction = ctx.env.effective_instruction(ctx.launch_state)
    if ctx.launch_state is None:
        raise Unknown("environment", "launch state", "the launch state of the VMCS is not known to the source; "
                                                     "give \"launch_state\" in the snapshot")
    vmfail = Outcome("vmfail", _VMLAUNCH_NOT_CLEAR)
    if instruction == "vmlaunch" and ctx.launch_state != "clear":
        yield Finding(None, None, "VMLAUNCH needs a VMCS whose launch state is clear (it is %s): VMCLEAR it, or "
                                  "use VMRESUME" % ctx.launch_state, outcome=vmfail)
    elif instruction == "vmresume" and ctx.launch_state != "launched":
        yield Finding(None, None, "VMRESUME needs a launched VMCS (its launch state is %s): use VMLAUNCH"
                      % ctx.launch_state, outcome=vmfail.with_error(_VMRESUME_NOT_LAUNCHED))
