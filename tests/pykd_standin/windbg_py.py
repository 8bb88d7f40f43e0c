"""An emulation of WinDbg's ``!py`` (the pykd-ext bootstrapper, pykd.dll) for tests.

Run it as a fresh process per command, which is what ``!py`` gives a script by default
(a new sub-interpreter per call, nothing survives)::

    python windbg_py.py [-m] vtdbg vmcs --at 0x21000
    python windbg_py.py vtdbg exit-reason 48      # script mode: vtdbg.py found on the search path

What it reproduces (shared/reference/pykd-api.md section 8, and the bootstrapper's
windbgext.cpp): stdout/stderr replaced by debugger-output objects with ``encoding``
"ascii", no ``fileno()``, ``isatty()`` False and a ``writedml`` method (so pykd's
``isWindbgExt()`` is True); ``sys.setrecursionlimit(500)``; script mode finds
``NAME.py`` like Win32 SearchPath (current folder, then PATH; the debugger's folder is
``VTDBG_STANDIN_DEBUGGER_DIR`` if set), sets ``sys.argv = [full path, args...]``, puts
the script's folder first on sys.path (PySys_SetArgv) and runs the file's text in a
fresh ``__main__`` namespace *without* ``__file__``; module mode sets ``sys.argv[0]`` to
"" (so "" lands on sys.path) and calls ``runpy.run_module(name, run_name="__main__",
alter_sys=True)``.  ``SystemExit`` is silent; any other exception prints a traceback
and this process exits with status 99, so tests notice crashes.

DML written with ``writedml`` is framed as ``\\x1e...\\x1f`` on the real stdout, so a
test can tell markup sent as DML from markup printed as plain text.
"""
from __future__ import annotations

import os
import runpy
import sys
import traceback
import types

DML_START = "\x1e"
DML_END = "\x1f"


class DbgOut:
    """The bootstrapper's debugger-output object (text only through ASCII)."""

    encoding = "ascii"
    errors = "strict"

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, text: str) -> int:
        # the console the debugger writes to is ASCII here: a non-ASCII character is a crash
        os.write(self._fd, text.encode("ascii"))
        return len(text)

    def writedml(self, text: str) -> None:
        os.write(self._fd, (DML_START + text + DML_END).encode("ascii"))

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class DbgIn:
    """The bootstrapper's stdin (reads would prompt in WinDbg; tests never read)."""

    encoding = "ascii"

    def readline(self) -> str:
        return ""

    def isatty(self) -> bool:
        return False


def search_script(name: str) -> str:
    """Win32 SearchPath with default extension .py: debugger folder, current folder, PATH."""
    candidates = [name] if name.lower().endswith(".py") else [name + ".py", name]
    folders = [os.environ.get("VTDBG_STANDIN_DEBUGGER_DIR", ""), os.getcwd()]
    folders += os.environ.get("PATH", "").split(os.pathsep)
    for folder in folders:
        if not folder:
            continue
        for candidate in candidates:
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return os.path.abspath(path)
    return ""


def main(argv: list) -> int:
    """Run one ``!py`` command line (``argv`` without ``!py``)."""
    run_module = False
    while argv and argv[0] in ("-g", "--global", "-l", "--local", "-m", "--module"):
        if argv[0] in ("-m", "--module"):
            run_module = True
        argv = argv[1:]
    if not argv:
        sys.stderr.write("this emulation runs scripts and modules only\n")
        return 2
    script = ""
    if not run_module:
        script = search_script(argv[0])
        if not script:
            sys.stderr.write("script not found: %s\n" % argv[0])
            return 2
    real_stdout = sys.stdout
    sys.stdout = DbgOut(1)  # type: ignore[assignment]
    sys.stderr = DbgOut(2)  # type: ignore[assignment]
    sys.stdin = DbgIn()  # type: ignore[assignment]
    sys.setrecursionlimit(500)
    main_module = types.ModuleType("__main__")
    sys.modules["__main__"] = main_module
    sys.argv = [script] + argv[1:]
    # PySys_SetArgv puts the script's folder (or "" in module mode) first on sys.path
    sys.path.insert(0, os.path.dirname(os.path.realpath(script)) if script else "")
    try:
        if run_module:
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        else:
            with open(script, "rb") as handle:
                code = compile(handle.read(), "<string>", "exec")
            exec(code, main_module.__dict__)
    except SystemExit:
        pass
    except BaseException:
        real_stdout.flush()
        os.write(2, traceback.format_exc().encode("ascii", "backslashreplace"))
        return 99
    return 0


if __name__ == "__main__":
    # this file's own folder (the stand-in's) must not stay on sys.path as the script folder
    sys.exit(main(sys.argv[1:]))
