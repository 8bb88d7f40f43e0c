"""Parsing numbers the way a WinDbg user types them.

Bare numbers are decimal, ``0x`` is hex, ``0n`` is decimal (WinDbg), ``0y`` binary, and
backticks inside 64-bit addresses (``fffff800`00001000`` style, with ``0x``) are ignored.
"""
from __future__ import annotations

from typing import Optional

from vtdbg.lib.errors import UsageError

NUMBER_HELP = "numbers: decimal by default, 0x for hex (0n decimal and ` separators accepted)"


def parse_int(text: str, what: str = "number") -> int:
    """Parse ``text`` as an integer, raising :class:`UsageError` with ``what`` on failure."""
    raw = text.strip().replace("`", "").replace("_", "")
    negative = raw.startswith("-")
    body = raw[1:] if negative else raw
    low = body.lower()
    try:
        if low.startswith("0x"):
            value = int(low[2:], 16)
        elif low.startswith("0n"):
            value = int(low[2:], 10)
        elif low.startswith("0y"):
            value = int(low[2:], 2)
        else:
            value = int(low, 10)
    except ValueError:
        raise UsageError("invalid %s %r (%s)" % (what, text, NUMBER_HELP)) from None
    return -value if negative else value


def parse_address(text: str, what: str = "address") -> int:
    """Parse a non-negative address below 2**64."""
    value = parse_int(text, what)
    if not 0 <= value < (1 << 64):
        raise UsageError("%s %s is outside 0..2^64-1" % (what, text))
    return value


def looks_numeric(text: str) -> bool:
    """True when ``text`` parses as a number (so it is not a name)."""
    try:
        parse_int(text)
    except UsageError:
        return False
    return True


def json_int(value: object) -> Optional[int]:
    """An integer written in a data file (layouts, profiles, caps, snapshots): a JSON number
    or a "0x..."/decimal string.  None when ``value`` is anything else (booleans included),
    so each caller raises the error of its own domain."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            return None
    return None
