"""VM-instruction error numbers (SDM Vol. 3C "VM Instruction Error Numbers").

After a VMX instruction fails with VMfailValid, the VM-instruction-error field of the current
VMCS holds one of these numbers.  The facts live in ``vtdbg/arch/data/vm_instruction_errors.json``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

from vtdbg.arch._data import load_table
from vtdbg.arch.errors import UnknownNameError, close_matches, normalize_name, parse_number

ERRORS_TABLE = "vm_instruction_errors.json"


@dataclass(frozen=True)
class VmInstructionError:
    """One VM-instruction error number and its meaning."""

    number: int
    name: str
    description: str
    sdm: str
    aliases: Tuple[str, ...] = ()

    @property
    def names(self) -> Tuple[str, ...]:
        """Canonical name followed by every alias."""
        return (self.name,) + self.aliases


def _error_from_row(row: Dict[str, Any]) -> VmInstructionError:
    """Build one :class:`VmInstructionError` from a table row."""
    return VmInstructionError(
        number=int(row["number"]),
        name=str(row["name"]),
        description=str(row.get("description", "")),
        sdm=str(row.get("sdm", "")),
        aliases=tuple(str(alias) for alias in row.get("aliases") or []),
    )


@functools.lru_cache(maxsize=None)
def _index() -> Tuple[Dict[int, VmInstructionError], Dict[str, VmInstructionError]]:
    """Parse the table once: (by number, by normalized name)."""
    by_number: Dict[int, VmInstructionError] = {}
    by_key: Dict[str, VmInstructionError] = {}
    for row in load_table(ERRORS_TABLE)["errors"]:
        error = _error_from_row(row)
        if error.number in by_number:
            raise ValueError(f"duplicate VM-instruction error {error.number} in {ERRORS_TABLE}")
        by_number[error.number] = error
        for name in error.names:
            key = normalize_name(name)
            other = by_key.get(key)
            if other is not None and other is not error:
                raise ValueError(f"error name {name!r} is used by {other.number} and {error.number}")
            by_key[key] = error
    return by_number, by_key


def all_errors() -> List[VmInstructionError]:
    """Every defined VM-instruction error, in numeric order."""
    by_number, _ = _index()
    return [by_number[number] for number in sorted(by_number)]


def error_by_number(number: int) -> VmInstructionError | None:
    """The error with this number, or None (0 means no error; 14, 21 and 27 are unused)."""
    return _index()[0].get(number)


def lookup_error(text: Union[str, int]) -> VmInstructionError:
    """The error named or numbered by ``text``; raises :class:`UnknownNameError`."""
    by_number, by_key = _index()
    raw = str(text)
    number = text if isinstance(text, int) and not isinstance(text, bool) else parse_number(raw)
    if number is not None:
        error = by_number.get(number)
        if error is None:
            raise UnknownNameError("VM-instruction error", raw)
        return error
    error = by_key.get(normalize_name(raw))
    if error is None:
        candidates = {name: entry.number for entry in by_number.values() for name in entry.names}
        raise UnknownNameError("VM-instruction error", raw, close_matches(raw, candidates))
    return error


def describe_error(number: int) -> str:
    """One-line text for a VM-instruction-error value, including unknown numbers."""
    if number == 0:
        return "0: no error recorded"
    error = error_by_number(number)
    if error is None:
        return f"{number}: not a VM-instruction error number defined by the SDM"
    return f"{number}: {error.description}"
