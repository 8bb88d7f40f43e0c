"""VMX basic exit reasons (SDM Vol. 3D Appendix C) and how to decode their exit information.

The table ``vtdbg/arch/data/exit_reasons.json`` names every basic exit reason, the layout of
its exit qualification (``qualification``; reason 0 depends on the exception vector) and of
its VM-exit instruction-information field (``instruction_info``).  The layout names refer to
decoders defined in ``bitfields.json``.

The exit-reason VMCS field holds more than the basic reason: bits 15:0 are the basic reason,
bit 27 enclave mode, bit 28 pending MTF, bit 29 exit from VMX root operation (SMM VM exits),
bit 31 VM-entry failure.  :func:`lookup_exit_reason` accepts such full values too.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple, Union

from vtdbg.arch._data import load_table
from vtdbg.arch.errors import UnknownNameError, close_matches, normalize_name, parse_number

EXIT_REASONS_TABLE = "exit_reasons.json"

#: bit 31 of the exit-reason field: the VM entry failed
ENTRY_FAILURE_BIT = 1 << 31
#: bit 29: SMM VM exit from VMX root operation
VMX_ROOT_EXIT_BIT = 1 << 29
#: bit 28: an MTF VM exit was pending
PENDING_MTF_BIT = 1 << 28
#: bit 27: the exit happened in enclave mode
ENCLAVE_MODE_BIT = 1 << 27


def basic_reason(value: int) -> int:
    """Basic exit reason: bits 15:0 of an exit-reason field value."""
    return value & 0xFFFF


def is_entry_failure(value: int) -> bool:
    """True when bit 31 (VM-entry failure) of an exit-reason value is set."""
    return bool(value & ENTRY_FAILURE_BIT)


@dataclass(frozen=True)
class ExitReason:
    """One basic exit reason of SDM Appendix C."""

    number: int
    name: str
    aliases: Tuple[str, ...]
    description: str
    sdm: str
    #: exit-qualification layout name, or None (see also ``qualification_by_vector``)
    qualification: str | None
    #: instruction-information layout name, or None
    instruction_info: str | None
    #: for reason 0: exception vector -> qualification layout name
    qualification_by_vector: Tuple[Tuple[int, str], ...] = ()
    #: where the number and name were confirmed (SDM appendix, Linux, ia32-doc, Bochs ...)
    sources: Tuple[str, ...] = ()

    def qualification_for(self, vector: int | None = None) -> str | None:
        """Qualification layout for this exit, using ``vector`` for exception exits."""
        if self.qualification_by_vector:
            return dict(self.qualification_by_vector).get(vector) if vector is not None else None
        return self.qualification

    @property
    def has_qualification(self) -> bool:
        """True when some exits with this reason carry a meaningful exit qualification."""
        return self.qualification is not None or bool(self.qualification_by_vector)

    @property
    def names(self) -> Tuple[str, ...]:
        """Canonical name followed by every alias."""
        return (self.name,) + self.aliases


def _parse_qualification(raw: Any) -> Tuple[str | None, Tuple[Tuple[int, str], ...]]:
    """Split a table ``qualification`` cell into (name, by-vector pairs)."""
    if raw is None:
        return None, ()
    if isinstance(raw, str):
        return raw, ()
    if isinstance(raw, Mapping) and "by_vector" in raw:
        pairs = tuple(sorted((int(vector), str(name)) for vector, name in raw["by_vector"].items()))
        return None, pairs
    raise ValueError(f"bad qualification cell {raw!r} in {EXIT_REASONS_TABLE}")


class _ReasonIndex:
    """The parsed exit-reason table with its lookup dictionaries."""

    def __init__(self, reasons: List[ExitReason]) -> None:
        self.reasons = sorted(reasons, key=lambda reason: reason.number)
        self.by_number: Dict[int, ExitReason] = {}
        self.by_key: Dict[str, ExitReason] = {}
        for reason in self.reasons:
            if reason.number in self.by_number:
                raise ValueError(f"duplicate exit reason {reason.number} in {EXIT_REASONS_TABLE}")
            self.by_number[reason.number] = reason
            for name in reason.names:
                key = normalize_name(name)
                other = self.by_key.get(key)
                if other is not None and other is not reason:
                    raise ValueError(f"exit-reason name {name!r} is used by {other.name} and {reason.name}")
                self.by_key[key] = reason


def _reason_from_row(row: Dict[str, Any]) -> ExitReason:
    """Build one :class:`ExitReason` from a table row."""
    qualification, by_vector = _parse_qualification(row.get("qualification"))
    info = row.get("instruction_info")
    return ExitReason(
        number=int(row["number"]),
        name=str(row["name"]),
        aliases=tuple(str(alias) for alias in row.get("aliases") or []),
        description=str(row.get("description", "")),
        sdm=str(row.get("sdm", "")),
        qualification=qualification,
        instruction_info=None if info is None else str(info),
        qualification_by_vector=by_vector,
        sources=tuple(str(source) for source in row.get("sources") or []),
    )


@functools.lru_cache(maxsize=None)
def _index() -> _ReasonIndex:
    """Parse the exit-reason table once per process."""
    table = load_table(EXIT_REASONS_TABLE)
    return _ReasonIndex([_reason_from_row(row) for row in table["exit_reasons"]])


def all_exit_reasons() -> List[ExitReason]:
    """Every defined basic exit reason, in numeric order."""
    return list(_index().reasons)


def exit_reason_by_number(number: int) -> ExitReason | None:
    """The basic exit reason ``number`` (bits 15:0 are used for larger values), or None."""
    return _index().by_number.get(basic_reason(number))


def lookup_exit_reason(text: Union[str, int]) -> ExitReason:
    """The exit reason named or numbered by ``text``; raises :class:`UnknownNameError`.

    Accepts canonical names, aliases (ia32-doc, Bochs, kvm-unit-tests, SDM wording and short
    trace names such as ``cpuid``, ``msr-read`` or ``ept-violation``) in any case, basic
    reason numbers and full 32-bit exit-reason values (``0x80000021`` gives reason 33).
    """
    index = _index()
    if isinstance(text, int) and not isinstance(text, bool):
        number: int | None = text
        raw = str(text)
    else:
        raw = str(text)
        number = parse_number(raw)
    if number is not None:
        if number > 0xFFFFFFFF:
            raise UnknownNameError("exit reason", raw)
        reason = index.by_number.get(basic_reason(number))
        if reason is None:
            raise UnknownNameError("exit reason", raw)
        return reason
    key = normalize_name(raw)
    if key.startswith("EXIT_REASON_") and key not in index.by_key:
        key = key[len("EXIT_REASON_"):]
    reason = index.by_key.get(key)
    if reason is None:
        candidates = {name: entry.number for entry in index.reasons for name in entry.names}
        raise UnknownNameError("exit reason", raw, close_matches(raw, candidates))
    return reason


def exit_reason_name(value: int) -> str:
    """Canonical name of the basic reason in ``value``, or ``"UNKNOWN_<n>"``."""
    reason = exit_reason_by_number(value)
    return reason.name if reason is not None else f"UNKNOWN_{basic_reason(value)}"
