"""Result -> plain text (tabulate), optionally coloured with ANSI escapes.

tabulate is imported only when a table is rendered, pygments never here (see
:mod:`vtdbg.render.colour`), which keeps one-shot start-up fast.
"""
from __future__ import annotations

from typing import List, Sequence

from vtdbg.commands.result import Cell, Heading, KeyValues, Result, Table, Text

_BOLD = "\x1b[1m"
_YELLOW = "\x1b[33m"
_RESET = "\x1b[0m"


def _cell(value: Cell) -> str:
    if value is None:
        return "-"
    return str(value)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    from tabulate import tabulate

    return str(tabulate([[_cell(c) for c in row] for row in rows], headers=list(columns),
                        tablefmt="plain", disable_numparse=True))


def render_text(result: Result, colour: bool = False) -> str:
    """The text view of ``result`` (no trailing newline)."""
    def style(text: str, code: str) -> str:
        return code + text + _RESET if colour else text

    out: List[str] = []
    for block in result.blocks:
        if isinstance(block, Heading):
            if out:
                out.append("")
            out.append(style(block.text, _BOLD))
        elif isinstance(block, Text):
            out.append(style(block.text, _YELLOW) if block.style == "warning" else block.text)
        elif isinstance(block, KeyValues):
            if block.title:
                out.append(style(block.title, _BOLD))
            pairs = [(_cell(p[0]), " ".join(_cell(c) for c in p[1:])) for p in block.pairs]
            width = max((len(k) for k, _ in pairs), default=0)
            out.extend(("%-*s  %s" % (width, k, v)).rstrip() for k, v in pairs)
        elif isinstance(block, Table):
            if block.title:
                if out:
                    out.append("")
                out.append(style(block.title, _BOLD))
            out.append(_table(block.columns, block.rows) if block.rows else "(none)")
    return "\n".join(out)
