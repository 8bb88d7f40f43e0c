"""Rows written while a command still runs (`vtdbg trace` prints one row per VM exit).

A :class:`Result` is rendered once, when a command ends; a trace may run for minutes, so
its rows are written as they come through a :class:`LiveTable` with fixed column widths
(the widths cannot depend on rows not seen yet).  Each row is one ``write`` followed by a
flush, ASCII only (WinDbg's script console is ASCII).
"""
from __future__ import annotations

from typing import IO, List, Optional, Sequence, Tuple

from vtdbg.commands.result import Cell
from vtdbg.render.dml import to_ascii

#: (title, width, right-aligned); width 0 = the rest of the line
Column = Tuple[str, int, bool]


class LiveTable:
    """A table printed row by row; the header is written before the first row."""

    def __init__(self, stream: IO[str], columns: Sequence[Column], max_width: Optional[int] = 200) -> None:
        self.stream = stream
        self.columns = list(columns)
        self.max_width = max_width
        self.rows = 0
        self._header_done = False

    def _line(self, cells: Sequence[str]) -> str:
        parts: List[str] = []
        for (_, width, right), text in zip(self.columns, cells):
            if width and len(text) > width:
                text = text[:width - 1] + "~"
            parts.append(text if not width else (text.rjust(width) if right else text.ljust(width)))
        line = "  ".join(parts).rstrip()
        if self.max_width and len(line) > self.max_width:
            line = line[:self.max_width - 3] + "..."
        return to_ascii(line)

    def header(self) -> None:
        """Write the column titles (once)."""
        if not self._header_done:
            self._header_done = True
            self._write(self._line([title for title, _, _ in self.columns]))

    def row(self, cells: Sequence[Cell]) -> None:
        """Write one row (``None`` cells print as ``-``)."""
        self.header()
        self.rows += 1
        self._write(self._line(["-" if c is None else str(c) for c in cells]))

    def text(self, line: str) -> None:
        """Write a free line (e.g. a command's output under its row)."""
        self._write(to_ascii(line.rstrip("\n")))

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()
