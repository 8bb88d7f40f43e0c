"""What a command returns: JSON-ready data plus text blocks with rendering hints.

Commands never print.  ``data`` is the JSON contract; ``blocks`` describe the text view
(tables with typed columns, key/value lists, headings).  Cell values may be :class:`Link`
objects, which the WinDbg renderer turns into DML links and the others into plain text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Union


@dataclass(frozen=True)
class Link:
    """A value the debugger can act on: ``kind`` is "guest_rip", "phys", "exit_reason",
    "cpu" or "command"; ``target`` what the link runs on (an address, a number, a command)."""

    text: str
    kind: str
    target: Union[int, str]

    def __str__(self) -> str:
        return self.text


Cell = Union[str, int, float, None, Link]


@dataclass
class Heading:
    """A section title."""

    text: str


@dataclass
class Text:
    """A paragraph (may hold several lines)."""

    text: str
    style: str = "plain"  # "plain" | "note" | "warning" | "verdict"


@dataclass
class KeyValues:
    """Aligned ``key: value`` lines."""

    pairs: Sequence[Sequence[Cell]]
    title: Optional[str] = None


@dataclass
class Table:
    """Rows under column headers."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    title: Optional[str] = None


Block = Union[Heading, Text, KeyValues, Table]


@dataclass
class Result:
    """A command's outcome."""

    data: Any
    blocks: List[Block] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    exit_code: int = 0

    def add(self, *blocks: Block) -> Result:
        """Append text blocks; returns self for chaining."""
        self.blocks.extend(blocks)
        return self


def hex_value(value: Optional[int], width: int = 0) -> str:
    """``0x``-prefixed hex, zero-padded to ``width`` hex digits; '-' for None."""
    if value is None:
        return "-"
    return "0x%0*x" % (width, value)
