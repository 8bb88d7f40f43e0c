"""Checks the host-state and guest-state stages both make, on their own fields: control
registers against the FIXED MSRs, canonical addresses, MSR values loaded on entry or exit
(reserved bits, PAT memory types), CR3 width and the CET state."""
from __future__ import annotations

from typing import Iterator

from vtdbg.core.check.context import Ctx
from vtdbg.core.check.engine import Finding
from vtdbg.core.check.facts import ctl_label, hexs, reg

#: IA32_S_CET: bits 9:6 are reserved; SUPPRESS (bit 10) and TRACKER (bit 11) must not both be 1.
S_CET_RESERVED = 0x3C0
S_CET_SUPPRESS_TRACKER = 0xC00
#: CR3 bits 62:61 are the LAM enables on processors with LAM (not address bits).
CR3_LAM_BITS = 0x6000000000000000


def fixed_bits(ctx: Ctx, register: str, field: str, exempt: int = 0) -> Iterator[Finding]:
    """A control-register field against IA32_VMX_<REG>_FIXED0/1; bits in ``exempt`` need not
    follow FIXED0 (PE and PG of an unrestricted guest)."""
    value = ctx.f(field)
    fixed0, fixed1 = ctx.caps.fixed(register)
    fixed0 &= ~exempt
    missing = fixed0 & ~value
    extra = value & ~fixed1
    names = "IA32_VMX_%s" % register.upper()
    if missing:
        yield Finding(field, value, "bits %s must be 1 per %s_FIXED0 (%s)" % (hexs(missing), names, hexs(fixed0)),
                      detail={"bits": missing, "requirement": "must_be_one"})
    if extra:
        yield Finding(field, value, "bits %s must be 0 per %s_FIXED1 (%s)" % (hexs(extra), names, hexs(fixed1)),
                      detail={"bits": extra, "requirement": "must_be_zero"})


def cr3_width(ctx: Ctx, field: str) -> Iterator[Finding]:
    """No CR3 bit at or above MAXPHYADDR (the LAM enables excepted where LAM exists)."""
    cr3 = ctx.f(field)
    address = cr3 & ~CR3_LAM_BITS if ctx.caps.default("lam") else cr3
    if not ctx.pa_ok(address):
        yield Finding(field, cr3, "bits %d and above must be 0 (MAXPHYADDR %d)" % (ctx.caps.maxphyaddr,
                                                                              ctx.caps.maxphyaddr))


def canonical(ctx: Ctx, field: str, why: str = "") -> Iterator[Finding]:
    """The field holds a canonical address for the processor's linear-address width."""
    value = ctx.f(field)
    if not ctx.canonical(value):
        yield Finding(field, value, "must be canonical (bits 63:%d all equal)%s" % (ctx.caps.linear_bits - 1, why))


def loaded_reserved(ctx: Ctx, group: str, control: str, field: str, mask_key: str) -> Iterator[Finding]:
    """With ``group.control`` (a load-MSR control) set, ``field`` has no bit outside the
    processor's valid mask ``mask_key``."""
    if ctx.on(group, control):
        value = ctx.f(field)
        valid = ctx.caps.mask(mask_key)
        if value & ~valid:
            yield Finding(field, value, "reserved bits %s must be 0 with %s (valid bits %s)"
                          % (hexs(value & ~valid), ctl_label(group, control), hexs(valid)))


def pat_types() -> frozenset:
    """The memory types a PAT entry may hold (0, 1, 4, 5, 6, 7), from the arch layout."""
    return frozenset(reg("pat", "pa0").values)


def pat_ok(value: int) -> bool:
    """Every byte of a PAT value is a defined memory type."""
    return all(((value >> (8 * i)) & 0xFF) in pat_types() for i in range(8))


def loaded_pat(ctx: Ctx, group: str, field: str) -> Iterator[Finding]:
    """With load-IA32_PAT in ``group`` set, every byte of ``field`` is a defined memory type."""
    if ctx.on(group, "LOAD_IA32_PAT"):
        value = ctx.f(field)
        bad = ["PA%d=0x%x" % (i, (value >> (8 * i)) & 0xFF) for i in range(8)
               if ((value >> (8 * i)) & 0xFF) not in pat_types()]
        if bad:
            yield Finding(field, value, "every byte must be a memory type 0, 1, 4, 5, 6 or 7 (bad: %s)"
                          % ", ".join(bad))


def cet_state(ctx: Ctx, prefix: str, wide: bool, who: str) -> Iterator[Finding]:
    """IA32_S_CET, SSP and the interrupt-SSP-table address loaded on entry or exit: reserved
    bits, SUPPRESS with TRACKER, bits 1:0 of SSP, and canonical (``wide``: 64-bit host or
    IA-32e guest) or 32-bit addresses."""
    def address_ok(value: int) -> bool:
        return ctx.canonical(value) if wide else value >> 32 == 0

    where = "canonical (%s)" % who if wide else "below 2^32"
    s_cet = ctx.f(prefix + "S_CET")
    if s_cet & S_CET_RESERVED:
        yield Finding(prefix + "S_CET", s_cet, "reserved bits 9:6 must be 0")
    if s_cet & S_CET_SUPPRESS_TRACKER == S_CET_SUPPRESS_TRACKER:
        yield Finding(prefix + "S_CET", s_cet, "SUPPRESS (bit 10) and TRACKER (bit 11) must not both be 1")
    if not address_ok(s_cet):
        yield Finding(prefix + "S_CET", s_cet, "must be %s" % where)
    ssp = ctx.f(prefix + "SSP")
    if ssp & 3 or not address_ok(ssp):
        yield Finding(prefix + "SSP", ssp, "bits 1:0 must be 0 and the value %s" % where)
    table = ctx.f(prefix + "INTR_SSP_TABLE")
    if not address_ok(table):
        yield Finding(prefix + "INTR_SSP_TABLE", table, "must be %s" % where)
