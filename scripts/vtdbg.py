"""The file WinDbg's ``!py vtdbg <command>`` runs (pykd-ext finds it through its script
search: the debugger folder, the current folder, then PATH).

It removes its own folder from sys.path first, so this file cannot shadow the installed
``vtdbg`` package, then forwards argv to the same entry point as the console script.
"""
import os
import sys


def _main() -> int:
    # `!py` runs this file's text in a fresh __main__ without __file__; argv[0] is its path
    here = os.path.dirname(os.path.realpath(globals().get("__file__") or sys.argv[0]))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]
    sys.modules.pop("vtdbg", None)  # this file may have been imported under the name vtdbg
    from vtdbg.frontends.cli import main

    return main(sys.argv[1:])


if __name__ == "__main__":
    code = _main()
    if code:
        # only failures raise SystemExit, so a clean run leaves nothing behind in the console
        sys.exit(code)
