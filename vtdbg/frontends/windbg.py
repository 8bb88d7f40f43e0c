"""Running inside WinDbg through pykd's ``!py`` (``!py vtdbg ...`` or ``!py -m vtdbg ...``).

Differences from the console script, all handled here:

* the debugger's current session (live kernel or dump) is the default target, opened
  through :func:`vtdbg.target.pykd_backend.open_windbg_session` only when a command
  needs one; ``--target``/``--image`` still win;
* the script console is ASCII-only (``sys.stdout.encoding`` is "ascii") and has no
  ``fileno()``: everything written goes through :class:`AsciiStream`, which spells out or
  replaces non-ASCII characters instead of crashing;
* text results are rendered as DML (:mod:`vtdbg.render.dml`) so addresses, exit reasons
  and CPUs are clickable; ``--json`` stays plain JSON.

:func:`vtdbg.frontends.cli.main` calls :func:`main` when :func:`inside_windbg` is true.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import IO, Callable, List, Sequence

from vtdbg.commands.registry import Context
from vtdbg.commands.result import Result
from vtdbg.render.dml import DmlContext, render_dml, to_ascii
from vtdbg.target.base import Target

#: the pseudo-URI of "the session this WinDbg has" (never typed by users)
WINDBG_URI = "windbg:current"


def inside_windbg() -> bool:
    """True when running under WinDbg's ``!py``.

    pykd's own rule is "sys.stdout has writedml" (pykd-api.md section 5); checking that
    first keeps standalone runs from importing pykd (slow to load, or absent)."""
    if not hasattr(sys.stdout, "writedml"):
        return False
    try:
        import pykd
    except ImportError:
        return False
    try:
        return bool(pykd.isWindbgExt())
    except Exception:  # a pykd without a session: not a usable WinDbg host
        return False


class AsciiStream:
    """A text stream for the ASCII-only debugger console: never raises on encoding."""

    encoding = "ascii"

    def __init__(self, inner: IO[str]) -> None:
        self._inner = inner
        if hasattr(inner, "writedml"):
            self.writedml = self._writedml

    def write(self, text: str) -> int:
        """Write ``text`` with non-ASCII characters spelled out or replaced."""
        self._inner.write(to_ascii(text))
        return len(text)

    def _writedml(self, text: str) -> None:
        self._inner.writedml(to_ascii(text))  # type: ignore[attr-defined]

    def flush(self) -> None:
        """Forwarded."""
        flush = getattr(self._inner, "flush", None)
        if flush is not None:
            flush()

    def isatty(self) -> bool:
        """The debugger console is never a terminal (no ANSI colours)."""
        return False


def py_prefix() -> str:
    """The ``!py`` command that runs this vtdbg again with the same Python.

    The version switch matters: the bootstrapper may otherwise pick a newer Python that
    has no pykd.  ``-m`` mode leaves ``sys.argv[0]`` at vtdbg/__main__.py."""
    module_mode = os.path.basename(sys.argv[0] if sys.argv else "") == "__main__.py"
    return "!py -%d.%d %s" % (sys.version_info[0], sys.version_info[1], "-m vtdbg" if module_mode else "vtdbg")


def open_default(uri: str) -> Target:
    """Context opener: the WinDbg session for :data:`WINDBG_URI`, anything else as usual."""
    if uri == WINDBG_URI:
        from vtdbg.target.pykd_backend import open_windbg_session

        return open_windbg_session()
    from vtdbg.target.open import open_target

    return open_target(uri)


Emitter = Callable[[Result, argparse.Namespace, IO[str], IO[str]], None]


def dml_emitter(argv: Sequence[str]) -> Emitter:
    """An emitter for :func:`vtdbg.frontends.cli.run` that writes DML when it can."""
    def emit(result: Result, args: argparse.Namespace, stdout: IO[str], stderr: IO[str]) -> None:
        writedml = getattr(stdout, "writedml", None)
        if getattr(args, "json", False) or writedml is None:
            from vtdbg.frontends.cli import emit as plain_emit

            plain_emit(result, args, stdout, stderr)
            return
        for warning in result.warnings:
            stderr.write("vtdbg: warning: %s\n" % warning)
        text = render_dml(result, DmlContext(py_prefix(), argv))
        if text:
            writedml(text + "\n")

    return emit


def main(argv: List[str]) -> int:
    """Run one vtdbg command line inside WinDbg; returns the exit status."""
    from vtdbg.frontends.cli import run

    stdout = AsciiStream(sys.stdout)
    stderr = AsciiStream(sys.stderr)
    ctx = Context(target_uri=WINDBG_URI, opener=open_default)
    try:
        return run(argv, stdout, stderr, context=ctx, emitter=dml_emitter(argv))  # type: ignore[arg-type]
    finally:
        ctx.close()
