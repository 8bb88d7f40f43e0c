"""Stage 3: checks on the guest-state area (SDM 26.3.1.1-26.3.1.6).

A failure here is a VM-entry failure: the CPU loads host state as on a VM exit with exit
reason 0x80000021 (basic reason 33) and exit qualification 0, 2 (PDPTEs), 3 (NMI injection
under STI blocking, implementation-specific) or 4 (VMCS link pointer).
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

from vtdbg.core.check.context import Ctx, Seg, Unknown, activity_state
from vtdbg.core.check.engine import Finding, predicate
from vtdbg.core.check.facts import MASK64, ctl_label, hexs, reg_get, reg_mask, reserved_mask
from vtdbg.core.check.shared import canonical, cet_state, cr3_width, fixed_bits, loaded_pat, loaded_reserved

DATA_SEGMENTS = ("DS", "ES", "FS", "GS")
#: The segment registers the access-rights checks cover (LDTR and TR have their own rules).
CODE_DATA_SEGMENTS = ("CS", "SS", "DS", "ES", "FS", "GS")
#: Virtual-8086 segments: limit 0xFFFF and access rights 0xF3 (present, DPL 3, read/write
#: accessed data).
V86_LIMIT = 0xFFFF
V86_AR = 0xF3
#: Segment types the guest checks accept (SDM 26.3.1.2).
CS_TYPES = (9, 11, 13, 15)         # code, accessed (execute-only / read, non-conforming / conforming)
CS_TYPE_URG_DATA = 3               # read/write accessed data: allowed for CS of an unrestricted guest
CS_NONCONFORMING = (9, 11)
SS_TYPES = (3, 7)                  # read/write accessed data, expand-up or down
TSS_BUSY_64 = 11                   # busy 32/64-bit TSS
TSS_BUSY_16 = 3                    # busy 16-bit TSS
LDT_TYPE = 2
DATA_OR_NONCONFORMING_MAX = 11     # types 0-11: data or non-conforming code
#: Access-rights bits that are reserved for code/data segments: 11:8 and 31:17.
AR_RESERVED = reserved_mask("segment_ar")
#: Hardware exceptions a HLT or shutdown state accepts: #DB (1) and #MC (18).
DB_VECTOR = 1
MC_VECTOR = 18
#: PDPTE bits that must be 0 in a present entry (2:1 and 8:5); the address bits above
#: MAXPHYADDR are added per processor.
PDPTE_RESERVED_LOW = 0x1E6
#: GUEST_BNDCFGS: bits 11:2 are reserved; bits 63:12 hold the bound-directory base.
BNDCFGS_RESERVED = 0xFFC
BNDCFGS_BASE = ~0xFFF & MASK64


# -- 26.3.1.1 control registers, debug registers and MSRs ---------------------------------------

@predicate("GUEST-CR0-FIXED")
def _cr0(ctx: Ctx) -> Iterator[Finding]:
    exempt = reg_mask("cr0", "pe") | reg_mask("cr0", "pg") if ctx.urg() else 0
    return fixed_bits(ctx, "cr0", "GUEST_CR0", exempt)


@predicate("GUEST-CR0-PG-WITHOUT-PE")
def _pg_pe(ctx: Ctx) -> Iterator[Finding]:
    cr0 = ctx.f("GUEST_CR0")
    if reg_get("cr0", "pg", cr0) and not reg_get("cr0", "pe", cr0):
        yield Finding("GUEST_CR0", cr0, "PG (bit 31) requires PE (bit 0)")


@predicate("GUEST-CR4-FIXED")
def _cr4(ctx: Ctx) -> Iterator[Finding]:
    return fixed_bits(ctx, "cr4", "GUEST_CR4")


@predicate("GUEST-CR4-CET-WP")
def _cet_wp(ctx: Ctx) -> Iterator[Finding]:
    cr4 = ctx.f("GUEST_CR4")
    if reg_get("cr4", "cet", cr4) and not reg_get("cr0", "wp", ctx.f("GUEST_CR0")):
        yield Finding("GUEST_CR4", cr4, "CR4.CET (bit 23) requires GUEST_CR0.WP (bit 16) = 1")


@predicate("GUEST-DEBUGCTL-RSVD")
def _debugctl(ctx: Ctx) -> Iterator[Finding]:
    return loaded_reserved(ctx, "entry", "LOAD_DEBUG_CONTROLS", "GUEST_IA32_DEBUGCTL", "debugctl_valid_mask")


@predicate("GUEST-IA32E-PG-PAE")
def _ia32e_paging(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.ia32e_guest():
        return
    cr0 = ctx.f("GUEST_CR0")
    if not reg_get("cr0", "pg", cr0):
        yield Finding("GUEST_CR0", cr0, "PG (bit 31) must be 1 for an IA-32e mode guest")
    cr4 = ctx.f("GUEST_CR4")
    if not reg_get("cr4", "pae", cr4):
        yield Finding("GUEST_CR4", cr4, "PAE (bit 5) must be 1 for an IA-32e mode guest")


@predicate("GUEST-CR4-PCIDE-NOT-IA32E")
def _pcide(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.ia32e_guest():
        cr4 = ctx.f("GUEST_CR4")
        if reg_get("cr4", "pcide", cr4):
            yield Finding("GUEST_CR4", cr4, "PCIDE (bit 17) must be 0 unless %s is 1"
                          % ctl_label("entry", "IA32E_MODE"))


@predicate("GUEST-CR3-WIDTH")
def _cr3(ctx: Ctx) -> Iterator[Finding]:
    return cr3_width(ctx, "GUEST_CR3")


@predicate("GUEST-DR7-HIGH")
def _dr7(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("entry", "LOAD_DEBUG_CONTROLS"):
        dr7 = ctx.f("GUEST_DR7")
        if dr7 >> 32:
            yield Finding("GUEST_DR7", dr7, "bits 63:32 must be 0 with %s" % ctl_label("entry", "LOAD_DEBUG_CONTROLS"))


@predicate("GUEST-SYSENTER-ESP-CANON")
def _sysenter_esp(ctx: Ctx) -> Iterator[Finding]:
    return canonical(ctx, "GUEST_SYSENTER_ESP")


@predicate("GUEST-SYSENTER-EIP-CANON")
def _sysenter_eip(ctx: Ctx) -> Iterator[Finding]:
    return canonical(ctx, "GUEST_SYSENTER_EIP")


@predicate("GUEST-PERF-GLOBAL-CTRL")
def _perf(ctx: Ctx) -> Iterator[Finding]:
    return loaded_reserved(ctx, "entry", "LOAD_IA32_PERF_GLOBAL_CTRL", "GUEST_IA32_PERF_GLOBAL_CTRL",
                           "perf_global_ctrl_valid_mask")


@predicate("GUEST-PAT")
def _pat(ctx: Ctx) -> Iterator[Finding]:
    return loaded_pat(ctx, "entry", "GUEST_IA32_PAT")


@predicate("GUEST-EFER-RESERVED")
def _efer_reserved(ctx: Ctx) -> Iterator[Finding]:
    return loaded_reserved(ctx, "entry", "LOAD_IA32_EFER", "GUEST_IA32_EFER", "efer_valid_mask")


@predicate("GUEST-EFER-LMA")
def _efer_lma(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("entry", "LOAD_IA32_EFER"):
        value = ctx.f("GUEST_IA32_EFER")
        if reg_get("efer", "lma", value) != int(ctx.ia32e_guest()):
            yield Finding("GUEST_IA32_EFER", value, "LMA (bit 10) must equal %s (%d)"
                          % (ctl_label("entry", "IA32E_MODE"), int(ctx.ia32e_guest())))


@predicate("GUEST-EFER-LME")
def _efer_lme(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("entry", "LOAD_IA32_EFER"):
        value = ctx.f("GUEST_IA32_EFER")
        if reg_get("cr0", "pg", ctx.f("GUEST_CR0")) and reg_get("efer", "lme", value) != reg_get("efer", "lma", value):
            yield Finding("GUEST_IA32_EFER", value, "LME (bit 8) must equal LMA (bit 10) when GUEST_CR0.PG = 1")


@predicate("GUEST-BNDCFGS-RSVD")
def _bndcfgs_rsvd(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("entry", "LOAD_BNDCFGS"):
        value = ctx.f("GUEST_BNDCFGS")
        if value & BNDCFGS_RESERVED:
            yield Finding("GUEST_BNDCFGS", value, "reserved bits 11:2 must be 0")


@predicate("GUEST-BNDCFGS-CANON")
def _bndcfgs_canon(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("entry", "LOAD_BNDCFGS"):
        value = ctx.f("GUEST_BNDCFGS")
        if not ctx.canonical(value & BNDCFGS_BASE):
            yield Finding("GUEST_BNDCFGS", value, "the bound-directory base (bits 63:12) must be canonical")


@predicate("GUEST-RTIT-CTL")
def _rtit(ctx: Ctx) -> Iterator[Finding]:
    return loaded_reserved(ctx, "entry", "LOAD_IA32_RTIT_CTL", "GUEST_IA32_RTIT_CTL", "rtit_ctl_valid_mask")


@predicate("GUEST-LBR-CTL")
def _lbr(ctx: Ctx) -> Iterator[Finding]:
    return loaded_reserved(ctx, "entry", "LOAD_IA32_LBR_CTL", "GUEST_IA32_LBR_CTL", "lbr_ctl_valid_mask")


@predicate("GUEST-CET-STATE")
def _cet(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("entry", "LOAD_CET_STATE"):
        yield from cet_state(ctx, "GUEST_", ctx.ia32e_guest(), "IA-32e guest")


@predicate("GUEST-PKRS")
def _pkrs(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("entry", "LOAD_IA32_PKRS"):
        value = ctx.f("GUEST_IA32_PKRS")
        if value >> 32:
            yield Finding("GUEST_IA32_PKRS", value, "bits 63:32 must be 0")


# -- 26.3.1.2 segment registers -----------------------------------------------------------------

def _ar_finding(seg: Seg, message: str) -> Finding:
    return Finding(seg.field_name("AR_BYTES"), seg.ar, message)


def _checked_segments(ctx: Ctx, names: Tuple[str, ...] = CODE_DATA_SEGMENTS) -> List[Seg]:
    """CS, plus the usable ones among the others (the rules that say "CS or usable")."""
    out = []
    for name in names:
        seg = ctx.seg(name)
        if name == "CS" or seg.usable:
            out.append(seg)
    return out


@predicate("GUEST-TR-SEL-TI")
def _tr_ti(ctx: Ctx) -> Iterator[Finding]:
    tr = ctx.seg("TR")
    if tr.ti:
        yield Finding(tr.field_name("SELECTOR"), tr.selector, "TI (bit 2) must be 0: TR must refer to the GDT")


@predicate("GUEST-LDTR-SEL-TI")
def _ldtr_ti(ctx: Ctx) -> Iterator[Finding]:
    ldtr = ctx.seg("LDTR")
    if ldtr.usable and ldtr.ti:
        yield Finding(ldtr.field_name("SELECTOR"), ldtr.selector, "TI (bit 2) must be 0 for a usable LDTR")


@predicate("GUEST-SS-RPL-EQ-CS-RPL")
def _ss_rpl(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86() or ctx.urg():
        return
    ss, cs = ctx.seg("SS"), ctx.seg("CS")
    if ss.rpl != cs.rpl:
        yield Finding(ss.field_name("SELECTOR"), ss.selector, "RPL (%d) must equal CS RPL (%d)" % (ss.rpl, cs.rpl))


@predicate("GUEST-V86-BASE")
def _v86_base(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        for name in CODE_DATA_SEGMENTS:
            seg = ctx.seg(name)
            if seg.base != seg.selector << 4:
                yield Finding(seg.field_name("BASE"), seg.base, "must be selector << 4 = 0x%x in virtual-8086 mode"
                              % (seg.selector << 4))


@predicate("GUEST-V86-LIMIT")
def _v86_limit(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        for name in CODE_DATA_SEGMENTS:
            seg = ctx.seg(name)
            if seg.limit != V86_LIMIT:
                yield Finding(seg.field_name("LIMIT"), seg.limit, "must be 0xFFFF in virtual-8086 mode")


@predicate("GUEST-V86-AR")
def _v86_ar(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        for name in CODE_DATA_SEGMENTS:
            seg = ctx.seg(name)
            if seg.ar != V86_AR:
                yield _ar_finding(seg, "must be 0xF3 in virtual-8086 mode")


@predicate("GUEST-BASE-CANON-TR-FS-GS")
def _base_canon(ctx: Ctx) -> Iterator[Finding]:
    for name in ("TR", "FS", "GS"):
        yield from canonical(ctx, "GUEST_%s_BASE" % name)


@predicate("GUEST-LDTR-BASE-CANON")
def _ldtr_canon(ctx: Ctx) -> Iterator[Finding]:
    if ctx.seg("LDTR").usable:
        yield from canonical(ctx, "GUEST_LDTR_BASE", " for a usable LDTR")


@predicate("GUEST-CS-BASE-HIGH")
def _cs_base(ctx: Ctx) -> Iterator[Finding]:
    base = ctx.f("GUEST_CS_BASE")
    if base >> 32:
        yield Finding("GUEST_CS_BASE", base, "bits 63:32 must be 0")


@predicate("GUEST-SEG-BASE-HIGH")
def _seg_base(ctx: Ctx) -> Iterator[Finding]:
    for name in ("SS", "DS", "ES"):
        seg = ctx.seg(name)
        if seg.usable and seg.base >> 32:
            yield Finding(seg.field_name("BASE"), seg.base, "bits 63:32 must be 0 for a usable %s" % name)


@predicate("GUEST-CS-TYPE")
def _cs_type(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        return
    cs = ctx.seg("CS")
    allowed = CS_TYPES + ((CS_TYPE_URG_DATA,) if ctx.urg() else ())
    if cs.arf("type") not in allowed:
        yield _ar_finding(cs, "type (bits 3:0) is %d; CS must be an accessed code segment (type %s)"
                          % (cs.arf("type"), ", ".join(str(t) for t in allowed)))


@predicate("GUEST-SS-TYPE")
def _ss_type(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        return
    ss = ctx.seg("SS")
    if ss.usable and ss.arf("type") not in SS_TYPES:
        yield _ar_finding(ss, "type (bits 3:0) is %d; a usable SS must be read/write accessed data (type 3 or 7)"
                          % ss.arf("type"))


@predicate("GUEST-DATA-TYPE-ACCESSED")
def _data_accessed(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        return
    for seg in _checked_segments(ctx, DATA_SEGMENTS):
        if not seg.arf("type") & 1:
            yield _ar_finding(seg, "type %d: the accessed bit (type bit 0) must be 1 for a usable %s"
                              % (seg.arf("type"), seg.name))


@predicate("GUEST-DATA-TYPE-CODE-READABLE")
def _data_readable(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        return
    for seg in _checked_segments(ctx, DATA_SEGMENTS):
        kind = seg.arf("type")
        if kind & 8 and not kind & 2:
            yield _ar_finding(seg, "type %d: a code segment in %s must be readable (type bit 1)" % (kind, seg.name))


@predicate("GUEST-SEG-S")
def _seg_s(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        return
    for seg in _checked_segments(ctx):
        if not seg.arf("s"):
            yield _ar_finding(seg, "S (bit 4) must be 1: %s must be a code or data segment" % seg.name)


@predicate("GUEST-CS-DPL")
def _cs_dpl(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        return
    cs = ctx.seg("CS")
    kind, dpl = cs.arf("type"), cs.arf("dpl")
    if kind == CS_TYPE_URG_DATA and ctx.urg():
        if dpl != 0:
            yield _ar_finding(cs, "DPL must be 0 for a data-type CS (unrestricted guest)")
    elif kind in CS_NONCONFORMING:
        ss_dpl = ctx.seg("SS").arf("dpl")
        if dpl != ss_dpl:
            yield _ar_finding(cs, "DPL (%d) of a non-conforming CS must equal SS DPL (%d)" % (dpl, ss_dpl))
    elif kind in CS_TYPES:
        ss_dpl = ctx.seg("SS").arf("dpl")
        if dpl > ss_dpl:
            yield _ar_finding(cs, "DPL (%d) of a conforming CS must not exceed SS DPL (%d)" % (dpl, ss_dpl))


@predicate("GUEST-SS-DPL-RPL")
def _ss_dpl_rpl(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86() or ctx.urg():
        return
    ss = ctx.seg("SS")
    if ss.arf("dpl") != ss.rpl:
        yield _ar_finding(ss, "DPL (%d) must equal the RPL of the SS selector (%d)" % (ss.arf("dpl"), ss.rpl))


@predicate("GUEST-SS-DPL-ZERO")
def _ss_dpl_zero(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        return
    cs_type = ctx.seg("CS").arf("type")
    real = not reg_get("cr0", "pe", ctx.f("GUEST_CR0"))
    if cs_type == CS_TYPE_URG_DATA or real:
        ss = ctx.seg("SS")
        if ss.arf("dpl") != 0:
            yield _ar_finding(ss, "DPL must be 0 when %s" % ("CR0.PE = 0" if real else "CS is a data segment"))


@predicate("GUEST-DATA-DPL-RPL")
def _data_dpl(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86() or ctx.urg():
        return
    for seg in _checked_segments(ctx, DATA_SEGMENTS):
        if seg.arf("type") <= DATA_OR_NONCONFORMING_MAX and seg.arf("dpl") < seg.rpl:
            yield _ar_finding(seg, "DPL (%d) must not be below the selector RPL (%d) for data or non-conforming code"
                              % (seg.arf("dpl"), seg.rpl))


@predicate("GUEST-SEG-P")
def _seg_p(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        return
    for seg in _checked_segments(ctx):
        if not seg.arf("p"):
            yield _ar_finding(seg, "P (bit 7) must be 1: %s is %s" % (
                seg.name, "CS" if seg.name == "CS" else "usable (bit 16 = 0)"))


@predicate("GUEST-SEG-AR-RSVD")
def _seg_reserved(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        return
    for seg in _checked_segments(ctx):
        if seg.ar & AR_RESERVED:
            yield _ar_finding(seg, "reserved bits 11:8 and 31:17 must be 0 (set: %s)" % hexs(seg.ar & AR_RESERVED))


@predicate("GUEST-CS-L-DB")
def _cs_l_db(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86() or not ctx.ia32e_guest():
        return
    cs = ctx.seg("CS")
    if cs.arf("l") and cs.arf("db"):
        yield _ar_finding(cs, "L (bit 13) and D/B (bit 14) must not both be 1 for an IA-32e guest")


def limit_g_ok(limit: int, ar: int) -> bool:
    """Granularity consistent with the limit: G=1 needs limit[11:0] all ones, G=0 needs
    limit[31:20] all zeros."""
    if reg_get("segment_ar", "g", ar):
        return limit & 0xFFF == 0xFFF
    return limit >> 20 == 0


def _limit_finding(seg: Seg) -> Finding:
    g = seg.arf("g")
    need = "limit[11:0] = 0xFFF (G = 1)" if g else "limit[31:20] = 0 (G = 0)"
    return Finding(seg.field_name("LIMIT"), seg.limit, "limit 0x%x does not fit the granularity: needs %s" % (
        seg.limit, need), detail={"access_rights": seg.ar})


@predicate("GUEST-SEG-LIMIT-G")
def _seg_limit(ctx: Ctx) -> Iterator[Finding]:
    if ctx.v86():
        return
    for seg in _checked_segments(ctx):
        if not limit_g_ok(seg.limit, seg.ar):
            yield _limit_finding(seg)


@predicate("GUEST-TR-TYPE")
def _tr_type(ctx: Ctx) -> Iterator[Finding]:
    tr = ctx.seg("TR")
    kind = tr.arf("type")
    if ctx.ia32e_guest():
        if kind != TSS_BUSY_64:
            yield _ar_finding(tr, "type %d: TR must be a busy 64-bit TSS (type 11) for an IA-32e guest" % kind)
    elif kind not in (TSS_BUSY_16, TSS_BUSY_64):
        yield _ar_finding(tr, "type %d: TR must be a busy TSS (type 3 or 11)" % kind)


@predicate("GUEST-TR-S")
def _tr_s(ctx: Ctx) -> Iterator[Finding]:
    tr = ctx.seg("TR")
    if tr.arf("s"):
        yield _ar_finding(tr, "S (bit 4) must be 0: TR is a system descriptor")


@predicate("GUEST-TR-P")
def _tr_p(ctx: Ctx) -> Iterator[Finding]:
    tr = ctx.seg("TR")
    if not tr.arf("p"):
        yield _ar_finding(tr, "P (bit 7) must be 1")


@predicate("GUEST-TR-AR-RSVD")
def _tr_reserved(ctx: Ctx) -> Iterator[Finding]:
    tr = ctx.seg("TR")
    if tr.ar & AR_RESERVED:
        yield _ar_finding(tr, "reserved bits 11:8 and 31:17 must be 0")


@predicate("GUEST-TR-LIMIT-G")
def _tr_limit(ctx: Ctx) -> Iterator[Finding]:
    tr = ctx.seg("TR")
    if not limit_g_ok(tr.limit, tr.ar):
        yield _limit_finding(tr)


@predicate("GUEST-TR-UNUSABLE")
def _tr_unusable(ctx: Ctx) -> Iterator[Finding]:
    tr = ctx.seg("TR")
    if not tr.usable:
        yield _ar_finding(tr, "bit 16 (unusable) must be 0: the guest needs a TR")


def _usable_ldtr(ctx: Ctx) -> List[Seg]:
    ldtr = ctx.seg("LDTR")
    return [ldtr] if ldtr.usable else []


@predicate("GUEST-LDTR-TYPE")
def _ldtr_type(ctx: Ctx) -> Iterator[Finding]:
    for ldtr in _usable_ldtr(ctx):
        if ldtr.arf("type") != LDT_TYPE:
            yield _ar_finding(ldtr, "type %d: a usable LDTR must be an LDT (type 2)" % ldtr.arf("type"))


@predicate("GUEST-LDTR-S")
def _ldtr_s(ctx: Ctx) -> Iterator[Finding]:
    for ldtr in _usable_ldtr(ctx):
        if ldtr.arf("s"):
            yield _ar_finding(ldtr, "S (bit 4) must be 0 for a usable LDTR")


@predicate("GUEST-LDTR-P")
def _ldtr_p(ctx: Ctx) -> Iterator[Finding]:
    for ldtr in _usable_ldtr(ctx):
        if not ldtr.arf("p"):
            yield _ar_finding(ldtr, "P (bit 7) must be 1 for a usable LDTR (or mark it unusable, bit 16)")


@predicate("GUEST-LDTR-AR-RSVD")
def _ldtr_reserved(ctx: Ctx) -> Iterator[Finding]:
    for ldtr in _usable_ldtr(ctx):
        if ldtr.ar & AR_RESERVED:
            yield _ar_finding(ldtr, "reserved bits 11:8 and 31:17 must be 0")


@predicate("GUEST-LDTR-LIMIT-G")
def _ldtr_limit(ctx: Ctx) -> Iterator[Finding]:
    for ldtr in _usable_ldtr(ctx):
        if not limit_g_ok(ldtr.limit, ldtr.ar):
            yield _limit_finding(ldtr)


# -- 26.3.1.3 descriptor-table registers ----------------------------------------------------------

@predicate("GUEST-DTR-BASE-CANON")
def _dtr_base(ctx: Ctx) -> Iterator[Finding]:
    for name in ("GUEST_GDTR_BASE", "GUEST_IDTR_BASE"):
        yield from canonical(ctx, name)


@predicate("GUEST-DTR-LIMIT")
def _dtr_limit(ctx: Ctx) -> Iterator[Finding]:
    for name in ("GUEST_GDTR_LIMIT", "GUEST_IDTR_LIMIT"):
        limit = ctx.f(name)
        if limit >> 16:
            yield Finding(name, limit, "bits 31:16 must be 0 (descriptor-table limits are 16 bits)")


# -- 26.3.1.4 RIP and RFLAGS ------------------------------------------------------------------------

def _long_mode_cs(ctx: Ctx) -> bool:
    return ctx.ia32e_guest() and bool(ctx.seg("CS").arf("l"))


@predicate("GUEST-RIP-HIGH")
def _rip_high(ctx: Ctx) -> Iterator[Finding]:
    if not _long_mode_cs(ctx):
        rip = ctx.f("GUEST_RIP")
        if rip >> 32:
            yield Finding("GUEST_RIP", rip, "bits 63:32 must be 0 unless the guest enters 64-bit mode (IA-32e + CS.L)")


@predicate("GUEST-RIP-CANON")
def _rip_canon(ctx: Ctx) -> Iterator[Finding]:
    if _long_mode_cs(ctx):
        yield from canonical(ctx, "GUEST_RIP", " for a 64-bit guest")


#: RFLAGS bit 1 is reserved as 1; the other undefined bits (3, 5, 15, 63:22) must be 0.
RFLAGS_FIXED1 = 0x2


@predicate("GUEST-RFLAGS-RSVD")
def _rflags(ctx: Ctx) -> Iterator[Finding]:
    rflags = ctx.f("GUEST_RFLAGS")
    reserved0 = reserved_mask("rflags") & ~RFLAGS_FIXED1
    if rflags & reserved0:
        yield Finding("GUEST_RFLAGS", rflags, "reserved bits %s must be 0 (bits 63:22, 15, 5, 3)"
                      % hexs(rflags & reserved0))
    if not rflags & RFLAGS_FIXED1:
        yield Finding("GUEST_RFLAGS", rflags, "bit 1 must be 1 (use 0x2 as the minimal RFLAGS)")


@predicate("GUEST-RFLAGS-VM")
def _rflags_vm(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.v86():
        return
    rflags = ctx.f("GUEST_RFLAGS")
    if ctx.ia32e_guest():
        yield Finding("GUEST_RFLAGS", rflags, "VM (bit 17) must be 0 for an IA-32e guest")
    elif not reg_get("cr0", "pe", ctx.f("GUEST_CR0")):
        yield Finding("GUEST_RFLAGS", rflags, "VM (bit 17) must be 0 when GUEST_CR0.PE = 0")


@predicate("GUEST-RFLAGS-IF-EXTINT")
def _rflags_if(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is not None and event.is_type("external interrupt"):
        rflags = ctx.f("GUEST_RFLAGS")
        if not reg_get("rflags", "if", rflags):
            yield Finding("GUEST_RFLAGS", rflags, "IF (bit 9) must be 1 to inject an external interrupt")


# -- 26.3.1.5 non-register state ----------------------------------------------------------------------

def _activity(ctx: Ctx) -> int:
    return ctx.f("GUEST_ACTIVITY_STATE")


@predicate("GUEST-ACTIVITY-VALID")
def _activity_valid(ctx: Ctx) -> Iterator[Finding]:
    state = _activity(ctx)
    if state > activity_state("wait-for-SIPI"):
        yield Finding("GUEST_ACTIVITY_STATE", state, "must be 0-3 (active, HLT, shutdown, wait-for-SIPI)")
        return
    support = {activity_state("HLT"): "activity_hlt", activity_state("shutdown"): "activity_shutdown",
               activity_state("wait-for-SIPI"): "activity_wait_for_sipi"}
    if state in support and not reg_get("vmx_misc", support[state], ctx.caps.misc):
        yield Finding("GUEST_ACTIVITY_STATE", state, "activity state %d is not supported (IA32_VMX_MISC bits 8:6)"
                      % state)


def _intr(ctx: Ctx) -> int:
    return ctx.f("GUEST_INTERRUPTIBILITY_INFO")


def _blocked(ctx: Ctx, name: str) -> bool:
    return bool(reg_get("interruptibility", name, _intr(ctx)))


@predicate("GUEST-ACTIVITY-HLT-SSDPL")
def _hlt_ssdpl(ctx: Ctx) -> Iterator[Finding]:
    if _activity(ctx) == activity_state("HLT"):
        ss = ctx.seg("SS")
        if ss.arf("dpl") != 0:
            yield Finding("GUEST_ACTIVITY_STATE", _activity(ctx), "HLT needs SS.DPL = 0 (CPL 0); SS DPL is %d"
                          % ss.arf("dpl"))


@predicate("GUEST-ACTIVITY-BLOCKING")
def _activity_blocking(ctx: Ctx) -> Iterator[Finding]:
    if (_blocked(ctx, "sti") or _blocked(ctx, "mov_ss")) and _activity(ctx) != activity_state("active"):
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", _intr(ctx), "blocking by STI or MOV SS requires the active "
                      "state (activity state is %d)" % _activity(ctx))


@predicate("GUEST-ACTIVITY-EVENT")
def _activity_event(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is None:
        return
    state = _activity(ctx)
    if state == activity_state("HLT"):
        allowed = (event.is_type("external interrupt") or event.is_type("NMI")
                   or (event.is_type("hardware exception") and event.vector in (DB_VECTOR, MC_VECTOR))
                   or (event.is_type("other event") and event.vector == 0))
        where = "HLT accepts only external interrupts, NMIs, #DB, #MC and pending MTF"
    elif state == activity_state("shutdown"):
        allowed = event.is_type("NMI") or (event.is_type("hardware exception") and event.vector == MC_VECTOR)
        where = "shutdown accepts only NMIs and #MC"
    elif state == activity_state("wait-for-SIPI"):
        allowed = False
        where = "wait-for-SIPI accepts no injected event"
    else:
        return
    if not allowed:
        yield Finding("VM_ENTRY_INTR_INFO_FIELD", event.info, "cannot inject %s into activity state %d: %s"
                      % (event.describe(), state, where))


@predicate("GUEST-ACTIVITY-SIPI-SMM")
def _sipi_smm(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("entry", "SMM") and _activity(ctx) == activity_state("wait-for-SIPI"):
        yield Finding("GUEST_ACTIVITY_STATE", _activity(ctx), "wait-for-SIPI is not allowed with %s"
                      % ctl_label("entry", "SMM"))


@predicate("GUEST-INTR-RSVD")
def _intr_reserved(ctx: Ctx) -> Iterator[Finding]:
    value = _intr(ctx)
    reserved = reserved_mask("interruptibility")
    if not ctx.caps.default("sgx"):
        reserved |= reg_mask("interruptibility", "enclave")
    if value & reserved:
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", value, "reserved bits %s must be 0 (bit 4 only with SGX)"
                      % hexs(value & reserved))


@predicate("GUEST-INTR-STI-MOVSS")
def _sti_movss(ctx: Ctx) -> Iterator[Finding]:
    if _blocked(ctx, "sti") and _blocked(ctx, "mov_ss"):
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", _intr(ctx), "blocking by STI (bit 0) and by MOV SS (bit 1) "
                                                                 "must not both be 1")


@predicate("GUEST-INTR-STI-IF")
def _sti_if(ctx: Ctx) -> Iterator[Finding]:
    if _blocked(ctx, "sti") and not reg_get("rflags", "if", ctx.f("GUEST_RFLAGS")):
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", _intr(ctx), "blocking by STI (bit 0) requires RFLAGS.IF = 1")


@predicate("GUEST-INTR-EXTINT")
def _intr_extint(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is not None and event.is_type("external interrupt") and (_blocked(ctx, "sti") or _blocked(ctx, "mov_ss")):
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", _intr(ctx), "an external interrupt cannot be injected under "
                                                                 "blocking by STI or MOV SS")


@predicate("GUEST-INTR-NMI-MOVSS")
def _intr_nmi_movss(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is not None and event.is_type("NMI") and _blocked(ctx, "mov_ss"):
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", _intr(ctx), "an NMI cannot be injected under blocking by MOV SS")


@predicate("GUEST-INTR-SMI-NOT-SMM")
def _intr_smi(ctx: Ctx) -> Iterator[Finding]:
    if _blocked(ctx, "smi") and not ctx.env.in_smm:
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", _intr(ctx), "blocking by SMI (bit 2) must be 0 outside SMM")


@predicate("GUEST-INTR-SMI-ENTRY-SMM")
def _intr_smi_entry(ctx: Ctx) -> Iterator[Finding]:
    if ctx.on("entry", "SMM") and not _blocked(ctx, "smi"):
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", _intr(ctx), "blocking by SMI (bit 2) must be 1 with %s"
                      % ctl_label("entry", "SMM"))


@predicate("GUEST-INTR-NMI-STI")
def _intr_nmi_sti(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is not None and event.is_type("NMI") and _blocked(ctx, "sti"):
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", _intr(ctx), "injecting an NMI under blocking by STI may fail "
                      "(implementation-specific; exit qualification 3)")


@predicate("GUEST-INTR-VNMI")
def _intr_vnmi(ctx: Ctx) -> Iterator[Finding]:
    event = ctx.event()
    if event is not None and event.is_type("NMI") and ctx.on("pin", "VIRTUAL_NMIS") and _blocked(ctx, "nmi"):
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", _intr(ctx), "blocking by NMI (bit 3) must be 0 to inject an NMI "
                      "with %s" % ctl_label("pin", "VIRTUAL_NMIS"))


@predicate("GUEST-INTR-ENCLAVE")
def _intr_enclave(ctx: Ctx) -> Iterator[Finding]:
    if _blocked(ctx, "enclave") and _blocked(ctx, "mov_ss"):
        yield Finding("GUEST_INTERRUPTIBILITY_INFO", _intr(ctx), "enclave interruption (bit 4) and blocking by MOV SS "
                                                                 "(bit 1) must not both be 1")


def _pending(ctx: Ctx) -> int:
    return ctx.f("GUEST_PENDING_DBG_EXCEPTIONS")


@predicate("GUEST-PENDDBG-RSVD")
def _penddbg(ctx: Ctx) -> Iterator[Finding]:
    value = _pending(ctx)
    reserved = reserved_mask("pending_debug")
    if not ctx.caps.default("rtm"):
        reserved |= reg_mask("pending_debug", "rtm")
    if value & reserved:
        yield Finding("GUEST_PENDING_DBG_EXCEPTIONS", value, "reserved bits %s must be 0 (11:4, 13, 15, 63:17; bit 16 "
                                                             "only with RTM)" % hexs(value & reserved))


@predicate("GUEST-PENDDBG-BS")
def _penddbg_bs(ctx: Ctx) -> Iterator[Finding]:
    if not (_blocked(ctx, "sti") or _blocked(ctx, "mov_ss") or _activity(ctx) == activity_state("HLT")):
        return
    value = _pending(ctx)
    tf = reg_get("rflags", "tf", ctx.f("GUEST_RFLAGS"))
    expected = bool(tf) and not reg_get("debugctl", "btf", ctx.f("GUEST_IA32_DEBUGCTL"))
    bs = bool(reg_get("pending_debug", "bs", value))
    if bs != expected:
        yield Finding("GUEST_PENDING_DBG_EXCEPTIONS", value, "BS (bit 14) must be %d: with blocking by STI/MOV SS or "
                      "HLT it must equal RFLAGS.TF = 1 and IA32_DEBUGCTL.BTF = 0" % int(expected))


@predicate("GUEST-PENDDBG-RTM")
def _penddbg_rtm(ctx: Ctx) -> Iterator[Finding]:
    value = _pending(ctx)
    if not reg_get("pending_debug", "rtm", value) or not ctx.caps.default("rtm"):
        return  # without RTM support bit 16 is simply reserved (GUEST-PENDDBG-RSVD)
    others = value & (0xFFF | 0xE000)
    if others or not reg_get("pending_debug", "enabled_bp", value) or _blocked(ctx, "mov_ss"):
        yield Finding("GUEST_PENDING_DBG_EXCEPTIONS", value, "with RTM (bit 16) set, bits 11:0 and 15:13 must be 0, "
                      "bit 12 must be 1 and blocking by MOV SS must be 0")


def _revision_id(ctx: Ctx) -> int:
    """The processor's VMCS revision (from IA32_VMX_BASIC, else the checked VMCS's header)."""
    try:
        return ctx.caps.revision_id
    except Unknown:
        if ctx.revision_id is None:
            raise
        return ctx.revision_id


@predicate("GUEST-LINK-PTR-ADDR")
def _link_addr(ctx: Ctx) -> Iterator[Finding]:
    if ctx.link_pointer_valid():
        link = ctx.f("VMCS_LINK_POINTER")
        if not ctx.page_ok(link):
            yield Finding("VMCS_LINK_POINTER", link, "must be all ones (unused) or a 4-KByte aligned address below "
                          "2^%d" % ctx.caps.maxphyaddr)


@predicate("GUEST-LINK-PTR-REVID")
def _link_revid(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.link_pointer_valid():
        return
    link = ctx.f("VMCS_LINK_POINTER")
    if not ctx.page_ok(link):
        return  # GUEST-LINK-PTR-ADDR; no page to read
    header = ctx.memory.read_int(link, 4)
    revision = _revision_id(ctx)
    shadow = ctx.on("proc2", "SHADOW_VMCS")
    got_revision, got_shadow = header & 0x7FFFFFFF, bool(header >> 31)
    if got_revision != revision or got_shadow != shadow:
        yield Finding("VMCS_LINK_POINTER", link, "the page it names starts with 0x%08x; it must hold revision id 0x%x "
                      "with bit 31 = %d (%s)" % (header, revision, int(shadow), ctl_label("proc2", "SHADOW_VMCS")),
                      detail={"link_header": header})


@predicate("GUEST-LINK-PTR-SELF")
def _link_self(ctx: Ctx) -> Iterator[Finding]:
    if not ctx.link_pointer_valid():
        return
    link = ctx.f("VMCS_LINK_POINTER")
    if not ctx.env.in_smm or ctx.on("entry", "SMM"):
        if ctx.vmcs_pa is None:
            raise Unknown("environment", "current-VMCS pointer", "the address of the VMCS is not known; give "
                                                                "\"vmcs_pa\" in the snapshot")
        if link == ctx.vmcs_pa:
            yield Finding("VMCS_LINK_POINTER", link, "must not point at the current VMCS itself")
    else:
        if ctx.env.vmxon_pa is None:
            raise Unknown("environment", "VMXON pointer", "in SMM the link pointer must differ from the VMXON "
                                                          "pointer, which is not known")
        if link == ctx.env.vmxon_pa:
            yield Finding("VMCS_LINK_POINTER", link, "must not be the VMXON pointer in SMM")


# -- 26.3.1.6 PDPTEs ------------------------------------------------------------------------------------

#: Number of PDPTEs and the size of each.
PDPTE_COUNT = 4
PDPTE_SIZE = 8


@predicate("GUEST-PDPTE-RSVD")
def _pdptes(ctx: Ctx) -> Iterator[Finding]:
    cr0, cr4 = ctx.f("GUEST_CR0"), ctx.f("GUEST_CR4")
    if not (reg_get("cr0", "pg", cr0) and reg_get("cr4", "pae", cr4)) or ctx.ia32e_guest():
        return
    reserved = PDPTE_RESERVED_LOW | (MASK64 & ~((1 << ctx.caps.maxphyaddr) - 1))
    if ctx.on("proc2", "ENABLE_EPT"):
        sources = [("GUEST_PDPTR%d" % i, ctx.f("GUEST_PDPTR%d" % i)) for i in range(PDPTE_COUNT)]
        where = "the VMCS (EPT is on)"
    else:
        table = ctx.f("GUEST_CR3") & 0xFFFFFFE0
        data = ctx.memory.read(table, PDPTE_COUNT * PDPTE_SIZE)
        sources = [("GUEST_CR3", int.from_bytes(data[i * 8:(i + 1) * 8], "little")) for i in range(PDPTE_COUNT)]
        where = "memory at 0x%x (GUEST_CR3[31:5], EPT is off)" % table
    for number, (field, entry) in enumerate(sources):
        if entry & 1 and entry & reserved:
            yield Finding(field, ctx.f(field), "PDPTE %d = 0x%x from %s is present with reserved bits %s set"
                          % (number, entry, where, hexs(entry & reserved)),
                          detail={"pdpte": number, "pdpte_value": entry})
