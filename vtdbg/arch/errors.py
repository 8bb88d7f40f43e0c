"""Errors and name-matching helpers shared by the arch lookups (fields, exit reasons, errors).

:class:`UnknownNameError` is both a :class:`KeyError` (so dictionary-style callers can catch it
the usual way) and a :class:`~vtdbg.lib.errors.UsageError` (so a front end reports it as a clean
one-line message with exit status 2).
"""
from __future__ import annotations

import difflib
from typing import Dict, Hashable, Iterable, List, Mapping, Sequence, Union

from vtdbg.lib.errors import UsageError
from vtdbg.lib.numbers import looks_numeric, parse_int


class UnknownNameError(KeyError, UsageError):
    """A name or number does not denote any known entry of an arch table.

    ``kind`` says what was looked up ("VMCS field", "exit reason", ...), ``text`` is what the
    user typed and ``suggestions`` holds up to three close matches (possibly empty).
    """

    def __init__(self, kind: str, text: object, suggestions: Sequence[str] = ()) -> None:
        self.kind = kind
        self.text = text
        self.suggestions = tuple(suggestions)
        message = f"unknown {kind} {text!r}"
        if self.suggestions:
            message += f"; did you mean {', '.join(self.suggestions)}?"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        """The plain message (KeyError would otherwise quote it)."""
        return self.message


def close_matches(text: str, candidates: Union[Iterable[str], Mapping[str, Hashable]], limit: int = 3) -> List[str]:
    """Up to ``limit`` candidates that look like ``text`` (case-insensitive), best first.

    ``candidates`` is either a list of names or a mapping of name -> owner (e.g. the
    canonical name); with a mapping, at most one suggestion is returned per owner.
    """
    owners: Dict[str, Hashable] = {}
    if isinstance(candidates, Mapping):
        owners = dict(candidates)
        names: Iterable[str] = list(candidates)
    else:
        names = candidates
    by_key: Dict[str, str] = {}
    for candidate in names:
        by_key.setdefault(normalize_name(candidate), candidate)
    keys = difflib.get_close_matches(normalize_name(text), list(by_key), n=max(limit * 4, 10), cutoff=0.6)
    result: List[str] = []
    seen = set()
    for key in keys:
        name = by_key[key]
        owner = owners.get(name, name)
        if owner in seen:
            continue
        seen.add(owner)
        result.append(name)
        if len(result) == limit:
            break
    return result


def normalize_name(text: str) -> str:
    """The matching key of a name: upper case, with '-', '.' and blanks folded to '_'."""
    key = text.strip().upper()
    for char in "-. \t":
        key = key.replace(char, "_")
    return key


def parse_number(text: str) -> int | None:
    """``text`` as a non-negative integer (decimal, ``0x`` hex, WinDbg ``0n``), or None for a name."""
    stripped = text.strip()
    if not stripped or not looks_numeric(stripped):
        return None
    value = parse_int(stripped)
    return value if value >= 0 else None
