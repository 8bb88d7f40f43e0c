"""Stage 4: loading MSRs from the VM-entry MSR-load area (SDM 26.4).

Entries are 16 bytes (MSR index in bits 31:0, reserved bits 63:32, value in bits 127:64) and
are processed in order; the first entry that cannot be loaded ends VM entry with exit reason
0x80000022 (basic 34) and its 1-based index as the exit qualification.  Every failing entry
is reported, each with its index; the lowest index decides the prediction.

Whether WRMSR would fault depends on the MSR: the rule table carries a model of the
architectural MSRs a VMM loads (``msr_write_model``), the VMX capability MSRs come from the
arch table (all read-only), and an MSR neither knows is reported as not checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from vtdbg.arch.msrs import all_msrs
from vtdbg.core.check.context import Ctx, Unknown
from vtdbg.core.check.controls import MSR_ENTRY_SIZE
from vtdbg.core.check.engine import Finding, predicate
from vtdbg.core.check.facts import MASK64, hexs, reg, reg_get
from vtdbg.core.check.rules import MsrWriteModel, table
from vtdbg.core.check.shared import pat_ok

#: Entries read at most (a corrupt count must not turn into a gigabyte read).
MAX_ENTRIES = 4096
#: The x2APIC MSR range is 800H-8FFH: index bits 31:8 equal 8.
X2APIC_RANGE_HIGH = 0x8
#: Memory types valid in MTRRs (UC, WC, WT, WP, WB).
MTRR_TYPES = frozenset((0, 1, 4, 5, 6))


@dataclass(frozen=True)
class Entry:
    """One MSR-load entry."""

    number: int  # 1-based
    address: int
    index: int
    reserved: int
    value: int

    def label(self) -> str:
        """``entry 2 (MSR 0xc0000100 <- 0x...)``."""
        return "entry %d at 0x%x (MSR 0x%x <- 0x%x)" % (self.number, self.address, self.index, self.value)


def entries(ctx: Ctx) -> List[Entry]:
    """The entries of the VM-entry MSR-load area (read once per run; empty when the count is
    0 or the area address already fails the control checks)."""
    if "msr_load" in ctx.cache:
        return ctx.cache["msr_load"]  # type: ignore[no-any-return]
    count = ctx.f("VM_ENTRY_MSR_LOAD_COUNT")
    out: List[Entry] = []
    if count:
        address = ctx.f("VM_ENTRY_MSR_LOAD_ADDR")
        if address & (MSR_ENTRY_SIZE - 1) == 0 and ctx.pa_ok(address + MSR_ENTRY_SIZE * count - 1):
            wanted = min(count, MAX_ENTRIES)
            data = ctx.memory.read(address, MSR_ENTRY_SIZE * wanted)
            for i in range(wanted):
                raw = data[i * MSR_ENTRY_SIZE:(i + 1) * MSR_ENTRY_SIZE]
                low = int.from_bytes(raw[:8], "little")
                out.append(Entry(i + 1, address + i * MSR_ENTRY_SIZE, low & 0xFFFFFFFF, low >> 32,
                                 int.from_bytes(raw[8:], "little")))
    ctx.cache["msr_load"] = out
    return out


def _finding(entry: Entry, message: str) -> Finding:
    return Finding("VM_ENTRY_MSR_LOAD_ADDR", None, "%s: %s" % (entry.label(), message), index=entry.number,
                   detail={"msr": entry.index, "msr_value": entry.value, "entry_address": entry.address})


def _model(index: int) -> Optional[MsrWriteModel]:
    return table().msr_model.get(index)


def _check_of(index: int) -> str:
    model = _model(index)
    return model.check if model else ""


@predicate("MSRLOAD-RSVD")
def _reserved(ctx: Ctx) -> Iterator[Finding]:
    for entry in entries(ctx):
        if entry.reserved:
            yield _finding(entry, "bits 63:32 of the first quadword are reserved and must be 0 (they hold 0x%x)"
                           % entry.reserved)


@predicate("MSRLOAD-FS-GS-BASE")
def _fs_gs(ctx: Ctx) -> Iterator[Finding]:
    for entry in entries(ctx):
        if not entry.reserved and _check_of(entry.index) == "fs_gs_base":
            yield _finding(entry, "IA32_FS_BASE and IA32_GS_BASE cannot be loaded from the MSR-load area; use the "
                                  "GUEST_FS_BASE/GUEST_GS_BASE fields")


def _x2apic(index: int) -> bool:
    return index >> 8 == X2APIC_RANGE_HIGH


@predicate("MSRLOAD-X2APIC")
def _x2apic_range(ctx: Ctx) -> Iterator[Finding]:
    for entry in entries(ctx):
        if not entry.reserved and _x2apic(entry.index):
            yield _finding(entry, "MSRs 800H-8FFH (x2APIC) cannot be loaded from the MSR-load area")


@predicate("MSRLOAD-SMM-ONLY")
def _smm_only(ctx: Ctx) -> Iterator[Finding]:
    for entry in entries(ctx):
        if not entry.reserved and _check_of(entry.index) == "smm_only" and not ctx.env.in_smm:
            yield _finding(entry, "this MSR can be written only in SMM")


@predicate("MSRLOAD-MODEL-SPECIFIC")
def _model_specific(ctx: Ctx) -> Iterator[Finding]:
    for entry in entries(ctx):
        if not entry.reserved and _check_of(entry.index) == "model_specific":
            yield _finding(entry, "this MSR cannot be loaded by VM entry (model-specific restriction)")


_SPECIAL = ("fs_gs_base", "smm_only", "model_specific")


@predicate("MSRLOAD-WRMSR-FAULT")
def _wrmsr(ctx: Ctx) -> Iterator[Finding]:
    unknown: List[Entry] = []
    for entry in entries(ctx):
        if entry.reserved or _x2apic(entry.index) or _check_of(entry.index) in _SPECIAL:
            continue  # the rules above own these entries
        try:
            problem = wrmsr_problem(ctx, entry.index, entry.value)
        except Unknown:
            unknown.append(entry)
            continue
        if problem:
            yield _finding(entry, "WRMSR would fault: %s" % problem)
    if unknown:
        first = unknown[0]
        raise Unknown("msr", "0x%x" % first.index,
                      "whether WRMSR accepts %s is model-specific and not in vtdbg's MSR model%s"
                      % (first.label(), " (and %d more entries)" % (len(unknown) - 1) if len(unknown) > 1 else ""))


def _vmx_msr(index: int) -> Optional[str]:
    for msr in all_msrs():
        if msr.index == index:
            return msr.name
    return None


def current_efer(ctx: Ctx) -> Tuple[int, str]:
    """IA32_EFER as VM entry left it before MSR loading (loaded from the guest field, or LMA and
    LME set from the IA-32e-mode-guest control)."""
    if ctx.on("entry", "LOAD_IA32_EFER"):
        return ctx.f("GUEST_IA32_EFER"), "GUEST_IA32_EFER"
    lme = reg("efer", "lme").mask | reg("efer", "lma").mask
    return (lme if ctx.ia32e_guest() else 0), "the IA-32e mode guest control"


def wrmsr_problem(ctx: Ctx, index: int, value: int) -> str:
    """Why WRMSR(index, value) at CPL 0 in the just-loaded guest context would fault, or ""
    if it would not; :class:`Unknown` when vtdbg cannot tell."""
    name = _vmx_msr(index)
    if name == "IA32_FEATURE_CONTROL":
        control = ctx.caps.msr(index)
        if reg_get("feature_control", "lock", control):
            return "IA32_FEATURE_CONTROL is locked (bit 0 = 1)"
        return ""
    if name is not None:
        return "%s is read-only" % name
    model = _model(index)
    if model is None:
        raise Unknown("msr", "0x%x" % index)
    check = model.check
    if check == "any":
        return ""
    if check == "read_only":
        return "%s is read-only" % model.name
    if check == "canonical":
        return "" if ctx.canonical(value) else "%s needs a canonical address" % model.name
    if check == "upper32_zero":
        return "%s bits 63:32 are reserved" % model.name if value >> 32 else ""
    if check == "pat":
        return "" if pat_ok(value) else "IA32_PAT holds an undefined memory type"
    if check.startswith("mask:"):
        key = check.split(":", 1)[1]
        extra = value & ~ctx.caps.mask(key)
        return "%s reserved bits %s set" % (model.name, hexs(extra)) if extra else ""
    if check == "efer":
        extra = value & ~ctx.caps.mask("efer_valid_mask")
        if extra:
            return "IA32_EFER reserved bits %s set" % hexs(extra)
        efer, source = current_efer(ctx)
        if reg_get("cr0", "pg", ctx.f("GUEST_CR0")) and reg_get("efer", "lme", value) != reg_get("efer", "lme", efer):
            return "IA32_EFER.LME cannot change while CR0.PG = 1 (LME is %d from %s)" % (
                reg_get("efer", "lme", efer), source)
        return ""
    if check == "mtrr_fixed":
        bad = [i for i in range(8) if (value >> (8 * i)) & 0xFF not in MTRR_TYPES]
        return "fixed-range MTRR bytes %s hold invalid types" % bad if bad else ""
    if check == "mtrr_deftype":
        if value & 0xFF not in MTRR_TYPES or value & ~0xCFF & MASK64:
            return "IA32_MTRR_DEF_TYPE has an invalid type or reserved bits"
        return ""
    if check == "mtrr_physbase":
        if value & 0xFF not in MTRR_TYPES or value & 0xF00 or not ctx.pa_ok(value):
            return "variable MTRR base has an invalid type, reserved bits 11:8, or bits above MAXPHYADDR"
        return ""
    if check == "mtrr_physmask":
        if value & 0x7FF or not ctx.pa_ok(value):
            return "variable MTRR mask has reserved bits 10:0 or bits above MAXPHYADDR"
        return ""
    if check == "apic_base":
        if value & 0x2FF or not ctx.pa_ok(value):
            return "IA32_APIC_BASE reserved bits (7:0, 9, above MAXPHYADDR) set"
        return ""
    raise Unknown("msr", "0x%x" % index, "unknown WRMSR model %r for %s" % (check, model.name))
