"""The console script ``vtdbg`` (also ``python -m vtdbg`` and ``!py vtdbg`` in WinDbg).

Global options (--target, --image, --cpu, --json, --debug, --no-colour) are accepted before
or after the subcommand.  Errors a user can cause print one line and exit 2; ``--debug``
adds the traceback.  Anything else is a vtdbg bug and says so.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import IO, Callable, List, NoReturn, Optional, Sequence

from vtdbg import __version__
from vtdbg.commands.registry import Context, load_all
from vtdbg.commands.result import Result
from vtdbg.lib.errors import UsageError, VtdbgError
from vtdbg.lib.numbers import NUMBER_HELP

EXIT_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError("%s (see `%s --help`)" % (message, self.prog))


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    flag_default = argparse.SUPPRESS if suppress else False
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument("--target", metavar="URI", default=default,
                       help="image:FILE, dump:FILE, replay:FILE.jsonl, bochs:CONFIG.bxrc, kd:net:port=N,key=K")
    group.add_argument("--image", metavar="FILE", default=default, help="shorthand for --target image:FILE")
    group.add_argument("--cpu", metavar="N|all", default=default,
                       help="CPU to act on (default: current CPU; for images the first VMCS found)")
    group.add_argument("--json", action="store_true", default=flag_default, help="print JSON instead of text")
    group.add_argument("--debug", action="store_true", default=flag_default, help="show tracebacks of errors")
    group.add_argument("--no-colour", "--no-color", dest="no_colour", action="store_true", default=flag_default,
                       help="never colour the output")


#: global options that take a value (their value is not the command name)
_VALUED_GLOBALS = ("--target", "--image", "--cpu")


def _command_word(argv: Sequence[str]) -> Optional[str]:
    """The subcommand named on the line, skipping global options and their values."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED_GLOBALS:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The parser: global options plus a subparser per command.  Given ``argv`` naming a
    known command, only that command's module is imported (one-shot start-up time)."""
    from vtdbg.commands.registry import load_command

    word = _command_word(argv) if argv is not None else None
    wanted = load_command(word) if word else None
    commands = {wanted.name: wanted} if wanted is not None else dict(load_all())
    parser = _Parser(
        prog="vtdbg",
        description="Debugger extension for Intel VT-x state: VMCS/VMXON decoding, exits, EPT. " + NUMBER_HELP + ".",
        epilog="examples:\n  vtdbg demo\n  vtdbg vmcs --image lab.img --at 0x21000\n  vtdbg exit-reason 48\n"
               "  vtdbg qual cr_access 0x13 --json\n\nrun `vtdbg COMMAND --help` for a command's options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="vtdbg " + __version__)
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in sorted(commands):
        cmd = commands[name]
        epilog = "examples:\n" + "\n".join("  " + e for e in cmd.examples) if cmd.examples else None
        child = sub.add_parser(name, help=cmd.help, aliases=list(cmd.aliases),
                               description=(cmd.description or cmd.help) + "\n" + NUMBER_HELP + ".",
                               epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.configure(child)
        _global_options(child, suppress=True)
        child.set_defaults(_command=cmd)
    return parser


def _want_colour(stream: IO[str], args: argparse.Namespace) -> bool:
    import os

    if getattr(args, "no_colour", False) or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def emit(result: Result, args: argparse.Namespace, stdout: IO[str], stderr: IO[str]) -> None:
    """Print a result in the requested form; warnings always go to stderr too."""
    for warning in result.warnings:
        stderr.write("vtdbg: warning: %s\n" % warning)
    if getattr(args, "json", False):
        from vtdbg.render.json_out import render_json

        stdout.write(render_json(result) + "\n")
    else:
        from vtdbg.render.text import render_text

        text = render_text(result, colour=_want_colour(stdout, args))
        if text:
            stdout.write(text + "\n")


def run(argv: Sequence[str], stdout: IO[str], stderr: IO[str], context: Optional[Context] = None,
        emitter: Optional[Callable[[Result, argparse.Namespace, IO[str], IO[str]], None]] = None) -> int:
    """Parse ``argv``, run the command, print, and return the exit status.  ``emitter``
    replaces :func:`emit` (WinDbg renders DML, see vtdbg/frontends/windbg.py)."""
    debug = "--debug" in argv
    try:
        parser = build_parser(argv)
        args = parser.parse_args(list(argv))
        cmd = getattr(args, "_command", None)
        if cmd is None:
            stdout.write(parser.format_help())
            return EXIT_ERROR if argv else 0
        ctx = context or Context()
        ctx.warnings = []  # a reused (shell) context must not repeat old warnings
        ctx.json = bool(args.json)
        ctx.debug = bool(args.debug)
        ctx.cpu = args.cpu
        if args.target and args.image:
            raise UsageError("give --target or --image, not both")
        if args.image:
            ctx.target_uri = "image:" + args.image
        elif args.target:
            ctx.target_uri = args.target
        try:
            if cmd.needs and ctx.has_target():
                ctx.target.require(cmd.needs, "`%s`" % cmd.name)
            result = cmd.run(ctx, args)
        finally:
            if context is None:
                ctx.close()
        result.warnings[:0] = ctx.warnings
        (emitter or emit)(result, args, stdout, stderr)
        return result.exit_code
    except VtdbgError as exc:
        if debug:
            traceback.print_exc(file=stderr)
        stderr.write("vtdbg: error: %s\n" % exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        stderr.write("vtdbg: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug in vtdbg, not a user mistake
        if debug:
            traceback.print_exc(file=stderr)
        stderr.write("vtdbg: internal error: %s: %s (this is a bug; --debug shows the traceback)\n"
                     % (type(exc).__name__, exc))
        return EXIT_BUG


def main(argv: Optional[List[str]] = None) -> int:
    """Console-script entry point."""
    args = sys.argv[1:] if argv is None else argv
    # WinDbg hosting hook (issue 4): under pykd's `!py` the debugger session is the default
    # target, output is DML and the ASCII-only console never sees a non-ASCII character
    from vtdbg.frontends import windbg

    if windbg.inside_windbg():
        return windbg.main(list(args))
    return run(args, sys.stdout, sys.stderr)
