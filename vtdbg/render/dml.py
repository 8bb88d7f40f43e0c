"""Result -> WinDbg DML (Debugger Markup Language).

Links become ``<link cmd="...">text</link>``: a guest RIP disassembles (``u``), a
physical address dumps (``!dq``), an exit reason explains itself through vtdbg, a CPU
re-runs the same vtdbg command on that processor (``~Ns``).  Text and attributes are
escaped; everything is ASCII (WinDbg's script console is), non-ASCII characters are
replaced.  Layout matches the plain-text renderer: tables are padded by the width of the
visible text, not of the markup.
"""
from __future__ import annotations

import unicodedata
from typing import List, Optional, Sequence

from vtdbg.commands.result import Cell, Heading, KeyValues, Link, Result, Table, Text

#: characters we spell out rather than turning into "?"
_ASCII_SPELLING = {"\u2014": "--", "\u2013": "-", "\u2192": "->", "\u2190": "<-", "\u2264": "<=", "\u2265": ">=",
                   "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...", "\u00d7": "x",
                   "\u2260": "!=", "\u00b5": "u"}


def to_ascii(text: str) -> str:
    """``text`` with every non-ASCII character spelled out or replaced by "?"."""
    if text.isascii():
        return text
    out = []
    for char in text:
        if ord(char) < 128:
            out.append(char)
        elif char in _ASCII_SPELLING:
            out.append(_ASCII_SPELLING[char])
        else:
            plain = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode("ascii")
            out.append(plain or "?")
    return "".join(out)


def escape_text(text: str) -> str:
    """Escape DML element text."""
    return to_ascii(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_attr(text: str) -> str:
    """Escape a DML attribute value (double-quoted)."""
    return escape_text(text).replace('"', "&quot;")


class DmlContext:
    """How links are spelled: the ``!py`` prefix that re-runs vtdbg (``!py -3.9 -m vtdbg``)
    and the current command's arguments (for "same command on CPU n" links)."""

    def __init__(self, py_prefix: str = "!py vtdbg", command_args: Optional[Sequence[str]] = None) -> None:
        self.py_prefix = py_prefix
        self.command_args = list(command_args or [])

    def same_command_without_cpu(self) -> str:
        """The current vtdbg arguments with any --cpu option removed."""
        out: List[str] = []
        skip = False
        for arg in self.command_args:
            if skip:
                skip = False
                continue
            if arg == "--cpu":
                skip = True
                continue
            if arg.startswith("--cpu="):
                continue
            out.append(_quote(arg))
        return " ".join(out)

    def link_command(self, link: Link) -> Optional[str]:
        """The debugger command a link runs, or None when it has none."""
        target = link.target
        if link.kind == "guest_rip" and isinstance(target, int):
            return "u 0x%x" % target
        if link.kind == "phys" and isinstance(target, int):
            return "!dq 0x%x" % target
        if link.kind == "exit_reason":
            return "%s exit-reason %s" % (self.py_prefix, target)
        if link.kind == "cpu" and isinstance(target, int):
            rest = self.same_command_without_cpu()
            return ("~%ds; %s %s" % (target, self.py_prefix, rest)).rstrip()
        if link.kind == "command" and isinstance(target, str):
            if target.startswith("vtdbg "):
                return self.py_prefix + target[len("vtdbg"):]
            return target
        return None


def _quote(arg: str) -> str:
    # !py groups "..." and has no escape character, so quote only what needs grouping
    return '"%s"' % arg if (" " in arg or "\t" in arg) and '"' not in arg else arg


def _plain(value: Cell) -> str:
    if value is None:
        return "-"
    return to_ascii(str(value))


def _markup(value: Cell, ctx: DmlContext) -> str:
    if isinstance(value, Link):
        command = ctx.link_command(value)
        if command is not None:
            return '<link cmd="%s">%s</link>' % (escape_attr(command), escape_text(value.text))
    return escape_text(_plain(value))


def _row(cells: Sequence[Cell], widths: Sequence[int], ctx: DmlContext) -> str:
    parts = []
    for i, cell in enumerate(cells):
        visible = _plain(cell)
        pad = widths[i] - len(visible) if i < len(widths) else 0
        parts.append(_markup(cell, ctx) + (" " * pad if i < len(cells) - 1 else ""))
    return "  ".join(parts).rstrip()


def _table(columns: Sequence[str], rows: Sequence[Sequence[Cell]], ctx: DmlContext) -> List[str]:
    width = max([len(columns)] + [len(r) for r in rows])
    widths = [0] * width
    for row in [list(columns)] + [list(r) for r in rows]:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(_plain(cell)))
    header = "  ".join(escape_text(c) + " " * (widths[i] - len(to_ascii(c))) for i, c in enumerate(columns))
    return ["<b>%s</b>" % header.rstrip()] + [_row(r, widths, ctx) for r in rows]


def render_dml(result: Result, ctx: Optional[DmlContext] = None) -> str:
    """The DML view of ``result`` (no trailing newline)."""
    ctx = ctx or DmlContext()
    out: List[str] = []
    for block in result.blocks:
        if isinstance(block, Heading):
            if out:
                out.append("")
            out.append("<b>%s</b>" % escape_text(block.text))
        elif isinstance(block, Text):
            if block.style == "warning":
                out.append('<col fg="warnfg">%s</col>' % escape_text(block.text))
            elif block.style == "note":
                out.append('<col fg="subfg">%s</col>' % escape_text(block.text))
            else:
                out.append(escape_text(block.text))
        elif isinstance(block, KeyValues):
            if block.title:
                out.append("<b>%s</b>" % escape_text(block.title))
            keys = [_plain(p[0]) for p in block.pairs]
            width = max((len(k) for k in keys), default=0)
            for key, pair in zip(keys, block.pairs):
                value = " ".join(_markup(c, ctx) for c in pair[1:])
                out.append(("%s%s  %s" % (escape_text(key), " " * (width - len(key)), value)).rstrip())
        elif isinstance(block, Table):
            if block.title:
                if out:
                    out.append("")
                out.append("<b>%s</b>" % escape_text(block.title))
            out.extend(_table(block.columns, block.rows, ctx) if block.rows else ["(none)"])
    return "\n".join(out)
