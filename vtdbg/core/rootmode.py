"""Is a CPU executing in VMX root mode?  Evidence from the hypervisor's own state.

Executing VMREAD on a CPU that is in VMX non-root mode causes a VM exit into the driver
under test instead of reading anything (shared/reference/anchors-tools.md, section 0.3),
so live VMREAD and similar features must know which side of the VMX boundary a broken-in
CPU is on.  There is no architectural register that says so; instead we gather
independent clues from a target profile and weigh them:

* ``flag``: the driver's own per-CPU flag (e.g. Hypervisor From Scratch's
  ``IsOnVmxRootMode``), software state that can be stale;
* ``rip``: RIP inside code that only ever runs in root mode (exit-handler stub, C handler,
  per-reason handlers), found by symbol (``Target.symbol_at`` when a backend offers it) or
  by the address range of a stub whose size the profile states;
* ``rsp``: RSP inside the VMM stack: every root-mode path of these hypervisors runs on the
  stack HOST_RSP points into, and nothing else uses that memory.

Each clue says True, False or None (unknown) and carries a sentence saying why.  Hardware
state (RIP, RSP) outranks the software flag.  The verdict is None when nothing is known.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

#: a code range that only runs in root mode: (label, start, end exclusive)
CodeRange = Tuple[str, int, int]


@dataclass
class Evidence:
    """One clue: ``source`` is "flag", "rip" or "rsp"; ``says`` True (root), False
    (non-root) or None (inconclusive)."""

    source: str
    says: Optional[bool]
    detail: str
    value: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        """JSON form (``value`` is the number the clue looked at, when there is one)."""
        return {"source": self.source, "says": self.says, "value": self.value, "detail": self.detail}


@dataclass
class RootModeVerdict:
    """The combined answer and every clue behind it."""

    root_mode: Optional[bool]
    evidence: List[Evidence] = field(default_factory=list)

    def evidence_json(self) -> List[Dict[str, Any]]:
        """The clues as JSON objects."""
        return [e.to_json() for e in self.evidence]


def flag_evidence(value: Optional[int], name: str = "root-mode flag") -> Evidence:
    """The driver's per-CPU flag, read from memory (None when it could not be read)."""
    if value is None:
        return Evidence("flag", None, "%s not available" % name)
    if value:
        return Evidence("flag", True, "%s is set (%d)" % (name, value), value)
    return Evidence("flag", False, "%s is clear" % name, value)


def _function_of(symbol: str) -> str:
    """``mod!func+0x1a`` -> ``func`` (case kept), the form pykd's findSymbol returns."""
    name = symbol.split("!", 1)[-1]
    return name.split("+", 1)[0].strip()


def rip_evidence(rip: Optional[int], ranges: Sequence[CodeRange], symbol: Optional[str] = None,
                 root_only: Sequence[str] = ()) -> Evidence:
    """RIP against root-only code.  Inside says True; outside proves little (root-mode code
    calls kernel routines such as DbgPrint), so it says None unless nothing else is known."""
    if rip is None:
        return Evidence("rip", None, "RIP not available")
    for label, start, end in ranges:
        if start <= rip < end:
            return Evidence("rip", True, "RIP 0x%x is inside %s (0x%x..0x%x)" % (rip, label, start, end), rip)
    if symbol:
        func = _function_of(symbol)
        wanted = {n.lower() for n in root_only}
        if func.lower() in wanted:
            return Evidence("rip", True, "RIP 0x%x is in %s, which runs only in VMX root mode" % (rip, symbol), rip)
        return Evidence("rip", None, "RIP 0x%x is in %s, not in the hypervisor's root-only code" % (rip, symbol), rip)
    if not ranges and not root_only:
        return Evidence("rip", None, "RIP 0x%x: the profile names no root-only code" % rip, rip)
    return Evidence("rip", None, "RIP 0x%x is outside the known root-only code ranges" % rip, rip)


def rsp_evidence(rsp: Optional[int], stack: Optional[Tuple[int, int]]) -> Evidence:
    """RSP against the VMM stack [base, base + size] (inclusive top: HFS sets HOST_RSP to
    base + size - 1, and a push-free entry may sit exactly at the top)."""
    if rsp is None:
        return Evidence("rsp", None, "RSP not available")
    if stack is None:
        return Evidence("rsp", None, "RSP 0x%x: VMM stack location unknown" % rsp, rsp)
    base, size = stack
    if base <= rsp <= base + size:
        return Evidence("rsp", True, "RSP 0x%x is inside the VMM stack 0x%x..0x%x" % (rsp, base, base + size), rsp)
    return Evidence("rsp", False, "RSP 0x%x is outside the VMM stack 0x%x..0x%x" % (rsp, base, base + size), rsp)


def decide(evidence: Sequence[Evidence]) -> Optional[bool]:
    """Combine clues.  Why this order: RIP in root-only code or RSP on the VMM stack are
    facts about the CPU right now; RSP off the VMM stack means the CPU is on some other
    stack, which root mode never uses in these hypervisors; the flag is the driver's own
    bookkeeping and only decides when the hardware clues are silent."""
    by_source: Dict[str, Optional[bool]] = {}
    for item in evidence:
        if item.says is not None:
            by_source.setdefault(item.source, item.says)
    if by_source.get("rip") is True or by_source.get("rsp") is True:
        return True
    if by_source.get("rsp") is False:
        return False
    if "flag" in by_source:
        return by_source["flag"]
    return None


def judge(flag: Optional[int] = None, rip: Optional[int] = None, rsp: Optional[int] = None,
          ranges: Sequence[CodeRange] = (), stack: Optional[Tuple[int, int]] = None,
          rip_symbol: Optional[str] = None, root_only: Sequence[str] = (), has_flag: bool = True,
          flag_name: str = "root-mode flag") -> RootModeVerdict:
    """All clues for one CPU and the verdict (``has_flag`` False: the profile has no flag)."""
    evidence: List[Evidence] = []
    if has_flag:
        evidence.append(flag_evidence(flag, flag_name))
    evidence.append(rip_evidence(rip, ranges, rip_symbol, root_only))
    evidence.append(rsp_evidence(rsp, stack))
    return RootModeVerdict(decide(evidence), evidence)


def symbol_at(target: Any, address: int) -> Optional[str]:
    """``module!function+offset`` for ``address`` when the backend can say (an optional
    ``symbol_at`` method, e.g. pykd's findSymbol); None otherwise or on any failure."""
    lookup: Optional[Callable[[int], Optional[str]]] = getattr(target, "symbol_at", None)
    if not callable(lookup):
        return None
    try:
        found = lookup(address)
    except Exception:  # a failed lookup is just a missing clue, never an error
        return None
    return found if isinstance(found, str) and found else None
