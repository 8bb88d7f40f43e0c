"""Stage 2d-f: checks on the host-state area (SDM 26.2.2 control registers and MSRs, 26.2.3
segment and descriptor-table registers, 26.2.4 address-space size).

Any failure here makes VMLAUNCH/VMRESUME fail with VMfailValid, VM-instruction error 8 (when
no control-field check failed; see the engine).
"""
from __future__ import annotations

from typing import Iterator

from vtdbg.core.check.context import Ctx
from vtdbg.core.check.engine import Finding, predicate
from vtdbg.core.check.facts import ctl_label, reg_get
from vtdbg.core.check.shared import canonical, cet_state, cr3_width, fixed_bits, loaded_pat, loaded_reserved

#: Linear-address widths for the HOST_RIP check: 4-level and 5-level paging.
LINEAR_BITS_4LEVEL = 48
LINEAR_BITS_5LEVEL = 57


# -- 26.2.2 host control registers and MSRs ------------------------------------------------------

@predicate("HOST-CR0-FIXED")
def _cr0(ctx: Ctx) -> Iterator[Finding]:
    return fixed_bits(ctx, "cr0", "HOST_CR0")


@predicate("HOST-CR4-FIXED")
def _cr4(ctx: Ctx) -> Iterator[Finding]:
    return fixed_bits(ctx, "cr4", "HOST_CR4")


@predicate("HOST-CR4-CET-WP")
def _cet_wp(ctx: Ctx) -> Iterator[Finding]:
    cr4 = ctx.f("HOST_CR4")
    if reg_get("cr4", "cet", cr4) and not reg_get("cr0", "wp", ctx.f("HOST_CR0")):
        yield Finding("HOST_CR4", cr4, "CR4.CET (bit 23) requires HOST_CR0.WP (bit 16) = 1")


@predicate("HOST-CR3-WIDTH")
def _cr3(ctx: Ctx) -> Iterator[Finding]:
    return cr3_width(ctx, "HOST_CR3")


@predicate("HOST-SYSENTER-ESP-CANON")
def _sysenter_esp(ctx: Ctx) -> Iterator[Finding]:
    return canonical(ctx, "HOST_IA32_SYSENTER_ESP")


@predicate("HOST-SYSENTER-EIP-CANON")
def _sysenter_eip(ctx: Ctx) -> Iterator[Finding]:
    return canonical(ctx, "HOST_IA32_SYSENTER_EIP")


@predicate("HOST-PERF-GLOBAL-CTRL")
def _perf(ctx: Ctx) -> Iterator[Finding]:
    return loaded_reserved(ctx, "exit", "LOAD_IA32_PERF_GLOBAL_CTRL", "HOST_IA32_PERF_GLOBAL_CTRL",
                           "perf_global_ctrl_valid_mask")


@predicate("HOST-PAT")
def _pat(ctx: Ctx) -> Iterator[Finding]:
    return loaded_pat(ctx, "exit", "HOST_IA32_PAT")


@predicate("HOST-EFER-RESERVED")
def _efer_reserved(ctx: Ctx) -> Iterator[Finding]:
    return loaded_reserved(ctx, "exit", "LOAD_IA32_EFER", "HOST_IA32_EFER", "efer_valid_mask")


@predicate("HOST-EFER-LMA-LME")
def _efer_lma(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.on("exit", "LOAD_IA32_EFER"):
        return
    value = ctx.f("HOST_IA32_EFER")
    want = int(ctx.host64())
    lma, lme = reg_get("efer", "lma", value), reg_get("efer", "lme", value)
    if lma != want or lme != want:
        yield Finding("HOST_IA32_EFER", value, "LMA (bit 10) = %d and LME (bit 8) = %d must both equal %s = %d"
                      % (lma, lme, ctl_label("exit", "HOST_ADDR_SPACE_SIZE"), want))


@predicate("HOST-CET-STATE")
def _cet(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("exit", "LOAD_CET_STATE"):
        yield from cet_state(ctx, "HOST_", ctx.host64(), "64-bit host")


@predicate("HOST-PKRS")
def _pkrs(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("exit", "LOAD_IA32_PKRS"):
        value = ctx.f("HOST_IA32_PKRS")
        if value >> 32:
            yield Finding("HOST_IA32_PKRS", value, "bits 63:32 must be 0")


# -- 26.2.3 host segment and descriptor-table registers ------------------------------------------

@predicate("HOST-SEL-RPL-TI")
def _selectors(ctx: Ctx) -> Iterator[Finding]:
    for seg in ("ES", "CS", "SS", "DS", "FS", "GS", "TR"):
        name = "HOST_%s_SELECTOR" % seg
        value = ctx.f(name)
        if value & 7:
            yield Finding(name, value, "RPL (bits 1:0) and TI (bit 2) must be 0; use selector 0x%x of the GDT"
                          % (value & ~7))


@predicate("HOST-CS-NULL")
def _cs_null(ctx: Ctx) -> Iterator[Finding]:
    if ctx.f("HOST_CS_SELECTOR") == 0:
        yield Finding("HOST_CS_SELECTOR", 0, "must not be 0 (the null selector)")


@predicate("HOST-TR-NULL")
def _tr_null(ctx: Ctx) -> Iterator[Finding]:
    if ctx.f("HOST_TR_SELECTOR") == 0:
        yield Finding("HOST_TR_SELECTOR", 0, "must not be 0: the host needs a TSS descriptor")


@predicate("HOST-SS-NULL")
def _ss_null(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.host64() and ctx.f("HOST_SS_SELECTOR") == 0:
        yield Finding("HOST_SS_SELECTOR", 0, "must not be 0 when %s is 0 (only a 64-bit host may use a null SS)"
                      % ctl_label("exit", "HOST_ADDR_SPACE_SIZE"))


@predicate("HOST-BASE-CANON")
def _bases(ctx: Ctx) -> Iterator[Finding]:
    for name in ("HOST_FS_BASE", "HOST_GS_BASE", "HOST_GDTR_BASE", "HOST_IDTR_BASE", "HOST_TR_BASE"):
        yield from canonical(ctx, name)


# -- 26.2.4 address-space size ---------------------------------------------------------------------

@predicate("HOST-ADDR-SIZE-LMA")
def _addr_size(ctx: Ctx) -> Iterator[Finding]:
    host64 = ctx.host64()
    if ctx.env.host_ia32e and not host64:
        yield Finding("VM_EXIT_CONTROLS", ctx.controls("exit"), "%s must be 1: the VMM runs in IA-32e mode "
                      "(IA32_EFER.LMA = 1)" % ctl_label("exit", "HOST_ADDR_SPACE_SIZE"))
    elif not ctx.env.host_ia32e:
        if host64:
            yield Finding("VM_EXIT_CONTROLS", ctx.controls("exit"), "%s must be 0: the VMM is not in IA-32e mode"
                          % ctl_label("exit", "HOST_ADDR_SPACE_SIZE"))
        if ctx.ia32e_guest():
            yield Finding("VM_ENTRY_CONTROLS", ctx.controls("entry"), "%s must be 0: the VMM is not in IA-32e mode"
                          % ctl_label("entry", "IA32E_MODE"))


@predicate("HOST-32-IA32E-GUEST")
def _host32_guest64(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.host64() and ctx.ia32e_guest():
        yield Finding("VM_ENTRY_CONTROLS", ctx.controls("entry"), "%s requires %s" % (
            ctl_label("entry", "IA32E_MODE"), ctl_label("exit", "HOST_ADDR_SPACE_SIZE")))


@predicate("HOST-32-CR4-PCIDE")
def _host32_pcide(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.host64():
        cr4 = ctx.f("HOST_CR4")
        if reg_get("cr4", "pcide", cr4):
            yield Finding("HOST_CR4", cr4, "CR4.PCIDE (bit 17) must be 0 for a 32-bit host")


@predicate("HOST-32-RIP-HIGH")
def _host32_rip(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.host64():
        rip = ctx.f("HOST_RIP")
        if rip >> 32:
            yield Finding("HOST_RIP", rip, "bits 63:32 must be 0 for a 32-bit host")


@predicate("HOST-64-CR4-PAE")
def _host64_pae(ctx: Ctx) -> Iterator[Finding]:
    if ctx.host64():
        cr4 = ctx.f("HOST_CR4")
        if not reg_get("cr4", "pae", cr4):
            yield Finding("HOST_CR4", cr4, "CR4.PAE (bit 5) must be 1 for a 64-bit host")


@predicate("HOST-64-RIP-CANON")
def _host64_rip(ctx: Ctx) -> Iterator[Finding]:
    if ctx.host64():
        rip = ctx.f("HOST_RIP")
        bits = LINEAR_BITS_5LEVEL if reg_get("cr4", "la57", ctx.f("HOST_CR4")) else LINEAR_BITS_4LEVEL
        if not ctx.canonical(rip, bits):
            yield Finding("HOST_RIP", rip, "must be canonical for %d-bit linear addresses (the paging mode HOST_CR4 "
                                           "selects)" % bits)
