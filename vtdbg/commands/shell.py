"""`vtdbg shell` (aliases `attach`, `open`): an interactive session over one target.

The frontend (prompt_toolkit, pygments) is imported only when the command runs, so every
other command starts without loading either (tests/test_layers.py checks this).
"""
from __future__ import annotations

import argparse

from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import Result
from vtdbg.lib.errors import UsageError


def _shell_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", metavar="FILE|URI",
                        help="target to open (a path is sniffed like --target); or give --target/--image")
    parser.add_argument("--history", metavar="FILE", help="history file (default: $VTDBG_HOME/shell_history "
                                                          "when that folder exists, else none)")


@command("shell", help="interactive session: open a target once, run many commands against it",
         aliases=["attach", "open"],
         examples=["vtdbg shell --image lab.img", "vtdbg open dump.dmp",
                   "vtdbg attach --target kd:net:port=50000,key=1.2.3.4"],
         description="Start an interactive shell. The target is opened once and every command typed reuses it; "
                     "state such as trace events lives in the session. Tab completes commands, options, field "
                     "names, exit reasons, layouts, profiles and CPU numbers; Ctrl-C drops a line, Ctrl-D or "
                     "`quit` leaves.")
@arguments(_shell_args)
def shell_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Run the shell until the user leaves; the status is the last command's."""
    if getattr(ctx, "in_shell", False):
        raise UsageError("already in a shell")
    if args.file:
        if ctx.target_uri:
            raise UsageError("give a FILE or --target/--image, not both")
        ctx.target_uri = args.file
    from vtdbg.frontends.shell import start

    session = start(ctx, history_path=args.history)
    status = session.loop()
    return Result({"commands": session.commands_run, "last_status": status}, [])
