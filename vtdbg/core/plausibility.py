"""How plausible a decoded VMCS is: the evidence `--layout auto` weighs.

Each check looks at values decoded with a candidate layout and passes, fails, or cannot
tell (a field the layout does not supply).  The confidence of a candidate is the weighted
share of passing checks among those that could tell.  The checks follow the plausibility
signals of shared/reference/vmcs-layouts.md section 4 (Rekall, Actaeon) with Rekall's EPTP
bits 11:6 test relaxed to 11:8 (bit 6 enables accessed/dirty flags, bit 7 supervisor
shadow-stack control).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from vtdbg.arch.fields import lookup_field
from vtdbg.lib.bits import is_canonical

Values = Dict[int, int]


@dataclass(frozen=True)
class Check:
    """One piece of evidence about a decode."""

    name: str
    weight: float
    fields: Tuple[str, ...]
    predicate: Callable[..., bool]


def _enc(name: str) -> int:
    return lookup_field(name).encoding


def _selector_ok(sel: int) -> bool:
    return sel != 0 and sel & 7 == 0


def _eptp_ok(eptp: int) -> bool:
    if eptp == 0:
        return True  # EPT not in use
    return eptp & 7 in (0, 6) and (eptp >> 3) & 7 in (3, 4) and (eptp >> 8) & 0xF == 0


def _exit_reason_ok(reason: int) -> bool:
    return reason & 0xFFFF < 96 and reason & 0x43FF0000 == 0


CHECKS: Tuple[Check, ...] = (
    Check("VMCS link pointer is all ones", 3.0, ("VMCS_LINK_POINTER",),
          lambda v: v == 0xFFFFFFFFFFFFFFFF),
    Check("host CR4.VMXE is set", 3.0, ("HOST_CR4",), lambda v: bool(v & (1 << 13))),
    Check("host CR0 has PE, NE and PG", 2.0, ("HOST_CR0",), lambda v: v & 0x80000021 == 0x80000021),
    Check("host RIP is canonical and not 0", 2.0, ("HOST_RIP",), lambda v: v != 0 and is_canonical(v)),
    Check("host RSP is canonical and not 0", 1.0, ("HOST_RSP",), lambda v: v != 0 and is_canonical(v)),
    Check("host CS selector is non-null with TI=0, RPL=0", 1.0, ("HOST_CS_SELECTOR",), _selector_ok),
    Check("host TR selector is non-null with TI=0, RPL=0", 1.0, ("HOST_TR_SELECTOR",), _selector_ok),
    Check("EPT pointer has a valid memory type and walk length", 1.0, ("EPT_POINTER",), _eptp_ok),
    Check("exit reason is a plausible basic reason without reserved bits", 1.0, ("VM_EXIT_REASON",), _exit_reason_ok),
    Check("pin-based controls have their default-1 bits", 1.0, ("PIN_BASED_VM_EXEC_CONTROL",),
          lambda v: v & 0x16 == 0x16 and v >> 32 == 0),
    Check("VM-exit controls have their default-1 bits", 1.0, ("VM_EXIT_CONTROLS",),
          lambda v: v & 0x36DFB == 0x36DFB),
    Check("VM-entry controls have their default-1 bits", 1.0, ("VM_ENTRY_CONTROLS",),
          lambda v: v & 0x11FB == 0x11FB),
    Check("guest RIP is canonical", 0.5, ("GUEST_RIP",), lambda v: is_canonical(v)),
    Check("guest CR0 has NE (VMX requires it unless unrestricted)", 0.5, ("GUEST_CR0",), lambda v: bool(v & 0x20)),
)


@dataclass
class Assessment:
    """The evidence for one candidate layout."""

    confidence: float
    passed: List[str]
    failed: List[str]
    unknown: List[str]


def assess(values: Values, launch_state: Optional[str] = None) -> Assessment:
    """Weigh ``values`` (encoding -> VMREAD value) against :data:`CHECKS`."""
    passed: List[str] = []
    failed: List[str] = []
    unknown: List[str] = []
    score = total = 0.0
    for check in CHECKS:
        encodings = [_enc(n) for n in check.fields]
        if any(e not in values for e in encodings):
            unknown.append(check.name)
            continue
        total += check.weight
        if check.predicate(*[values[e] for e in encodings]):
            score += check.weight
            passed.append(check.name)
        else:
            failed.append(check.name)
    if launch_state is not None:
        total += 1.0
        if launch_state in ("clear", "launched"):
            score += 1.0
            passed.append("launch state word is valid")
        else:
            failed.append("launch state word is valid")
    confidence = score / total if total else 0.0
    return Assessment(round(confidence, 3), passed, failed, unknown)
