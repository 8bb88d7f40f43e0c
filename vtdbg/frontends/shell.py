"""The interactive shell: one target opened once, every typed command run against it.

``vtdbg shell --image FILE`` / ``--target URI`` / ``vtdbg open FILE`` start it (see
vtdbg/commands/shell.py).  Each line is split like a shell command line and handed to
:func:`vtdbg.frontends.cli.run` with the session's :class:`ShellContext`, so commands
behave exactly as one-shot ones, except that the target stays open and state that must
outlive a command (trace events, step position, ...) lives in ``ShellContext.state``.

prompt_toolkit gives history (a file in ``$VTDBG_HOME`` when that folder exists, else
memory only), completion of command names, options, VMCS field names, layouts, profiles,
exit-reason names and CPU numbers, and pygments colouring of the input line.  Ctrl-C
drops the current line, Ctrl-D / ``quit`` / ``exit`` leave.  Errors inside a command are
reported by the CLI layer and never end the session.

Without a terminal (stdin piped) the shell reads plain lines, so scripts work too.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Dict, Iterable, List, Optional, Sequence

from vtdbg.commands.registry import Context

PROMPT = "vtdbg> "
HISTORY_FILE = "shell_history"
#: words the shell handles itself
BUILTINS = ("help", "quit", "exit", "target", "state")
#: options that take a value, so the completer knows what the next word is
_VALUE_OPTIONS = {"--cpu", "--layout", "--profile", "--target", "--image", "--at"}


@dataclass
class ShellContext(Context):
    """A Context that outlives commands.  ``state`` is for features that keep data between
    commands (e.g. ``state["trace"]`` events, ``state["step"]`` position)."""

    state: Dict[str, Any] = field(default_factory=dict)
    in_shell: bool = True


# -- completion ---------------------------------------------------------------------------------
class Vocabulary:
    """Words the completer offers, collected once per session (cheap lists, no target I/O
    except the CPU count, asked once)."""

    def __init__(self, cpu_count: int = 1) -> None:
        from vtdbg.commands.registry import load_all

        self.commands: Dict[str, List[str]] = {}
        for name, cmd in load_all().items():
            parser = argparse.ArgumentParser(prog=name, add_help=True)
            try:
                cmd.configure(parser)
            except Exception:  # a broken configurer must not break completion of the others
                continue
            options = sorted({s for action in parser._actions for s in action.option_strings})
            for alias in (name,) + tuple(cmd.aliases):
                self.commands[alias] = options + ["--json", "--cpu", "--debug", "--no-colour"]
        for word in BUILTINS:
            self.commands.setdefault(word, [])
        self.fields = self._safe(lambda: [f.name for f in _all_fields()])
        self.exit_reasons = self._safe(lambda: [r.name for r in _all_exit_reasons()])
        self.layouts = self._safe(_layout_names)
        self.profiles = self._safe(_profile_names)
        self.cpus = [str(n) for n in range(max(1, cpu_count))] + ["all"]

    @staticmethod
    def _safe(make: Any) -> List[str]:
        try:
            return sorted(set(make()))
        except Exception:  # a missing table only means fewer completions
            return []

    def candidates(self, words: Sequence[str], current: str) -> List[str]:
        """Completions for ``current`` given the complete ``words`` before it."""
        if not words:
            return sorted(self.commands)
        previous = words[-1]
        if previous == "--cpu":
            return self.cpus
        if previous == "--layout":
            return self.layouts + ["auto"]
        if previous == "--profile":
            return self.profiles
        if previous in _VALUE_OPTIONS:
            return []
        if current.startswith("-"):
            return self.commands.get(words[0], [])
        if words[0] in ("help",):
            return sorted(self.commands)
        # positional arguments: field names, exit reasons (the union is what the
        # reference commands accept; completion is a hint, the command validates)
        return self.fields + self.exit_reasons


def _all_fields() -> Iterable[Any]:
    from vtdbg.arch.fields import all_fields

    return all_fields()


def _all_exit_reasons() -> Iterable[Any]:
    from vtdbg.arch.exit_reasons import all_exit_reasons

    return all_exit_reasons()


def _layout_names() -> List[str]:
    from vtdbg.layouts.registry import ALIASES, all_layouts

    layouts, _ = all_layouts()
    return [layout.name for layout in layouts] + list(ALIASES)


def _profile_names() -> List[str]:
    from vtdbg.profiles import profile_names

    return profile_names()


def make_completer(vocabulary: Vocabulary) -> Any:
    """A prompt_toolkit Completer over ``vocabulary`` (case-insensitive prefixes)."""
    from prompt_toolkit.completion import Completer, Completion

    class _Completer(Completer):  # type: ignore[misc]
        def get_completions(self, document: Any, complete_event: Any) -> Iterable[Any]:
            text = document.text_before_cursor
            parts = text.split()
            current = "" if not parts or text.endswith((" ", "\t")) else parts[-1]
            words = parts if not current else parts[:-1]
            lowered = current.lower()
            for word in vocabulary.candidates(words, current):
                if word.lower().startswith(lowered):
                    yield Completion(word, start_position=-len(current))

    return _Completer()


# -- the session --------------------------------------------------------------------------------
HELP = """\
Type vtdbg commands without the `vtdbg` prefix; the target stays open between them.
  help                 this text; `help COMMAND` or `COMMAND --help` for one command
  target               what is open
  state                what commands keep between runs (trace events, step position)
  quit, exit, Ctrl-D   leave the shell (the target is closed)
  Ctrl-C               drop the current line
Tab completes commands, options, VMCS field names, exit reasons, layouts, profiles and CPUs.
"""


class ShellSession:
    """One interactive session over one open target."""

    def __init__(self, context: ShellContext, stdout: Optional[IO[str]] = None, stderr: Optional[IO[str]] = None,
                 input: Any = None, output: Any = None, history_path: Optional[str] = None) -> None:
        self.context = context
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self._input = input
        self._output = output
        self._history_path = history_path
        self.commands_run = 0
        self.last_status = 0
        self.closed = False

    @property
    def state(self) -> Dict[str, Any]:
        """State kept between commands (shared with the commands through the context)."""
        return self.context.state

    # -- one line ---------------------------------------------------------------------------
    def run_line(self, line: str) -> Optional[int]:
        """Run one typed line; returns its status, or None when the line asks to leave."""
        text = line.strip()
        if not text or text.startswith("#"):
            return 0
        try:
            argv = shlex.split(text, posix=True)
        except ValueError as exc:
            self.stderr.write("vtdbg: error: %s\n" % exc)
            return 2
        if argv[0].lower() in ("quit", "exit"):
            return None
        if argv[0] == "help":
            if len(argv) > 1:
                argv = [argv[1], "--help"]
            else:
                self.stdout.write(HELP)
                return 0
        if argv[0] == "target":
            target = self.context._target
            self.stdout.write("%s\n" % (target.description if target is not None else "no target open"))
            return 0
        if argv[0] == "state":
            for key in sorted(self.state):
                value = self.state[key]
                size = " (%d items)" % len(value) if hasattr(value, "__len__") else ""
                self.stdout.write("%s: %s%s\n" % (key, type(value).__name__, size))
            if not self.state:
                self.stdout.write("nothing kept yet\n")
            return 0
        if argv[0] in ("shell", "attach", "open"):
            self.stderr.write("vtdbg: error: already in a shell; quit first to open another target\n")
            return 2
        if any(a in ("--target", "--image") or a.startswith(("--target=", "--image=")) for a in argv):
            self.stderr.write("vtdbg: error: the shell keeps one target open; quit and start `vtdbg shell` "
                              "with the other one\n")
            return 2
        from vtdbg.frontends.cli import run

        # warnings a command adds to the context are per command, not per session
        self.context.warnings = []
        try:
            # argparse writes --help to sys.stdout; keep it in the session's stream
            with contextlib.redirect_stdout(self.stdout):
                status = run(argv, self.stdout, self.stderr, self.context)
        except SystemExit as exc:  # argparse --help/--version exit; the session goes on
            status = exc.code if isinstance(exc.code, int) else 0
        except Exception as exc:  # the CLI layer reports bugs itself; this is a last guard
            self.stderr.write("vtdbg: internal error: %s: %s\n" % (type(exc).__name__, exc))
            status = 1
        self.commands_run += 1
        self.last_status = status
        return status

    # -- the loop -----------------------------------------------------------------------------
    def _history(self) -> Any:
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        path = self._history_path
        if path is None:
            from vtdbg.layouts.registry import vtdbg_home

            home = vtdbg_home()
            # only write where the user already keeps vtdbg data (nothing is created)
            path = os.path.join(home, HISTORY_FILE) if os.path.isdir(home) else ""
        return FileHistory(path) if path else InMemoryHistory()

    def _cpu_count(self) -> int:
        target = self.context._target
        try:
            return target.cpu_count() if target is not None else 1
        except Exception:  # completion must not fail because a target cannot count CPUs
            return 1

    def _prompt_session(self) -> Any:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.lexers import PygmentsLexer
        from pygments.lexers.shell import BashLexer

        return PromptSession(
            history=self._history(), completer=make_completer(Vocabulary(self._cpu_count())),
            lexer=PygmentsLexer(BashLexer), complete_while_typing=False, input=self._input, output=self._output)

    def loop(self) -> int:
        """Read and run lines until quit/exit/EOF; returns the last command's status."""
        try:
            if self._input is None and not _is_tty(sys.stdin):
                return self._plain_loop(sys.stdin)
            session = self._prompt_session()
            while True:
                try:
                    line = session.prompt(PROMPT)
                except KeyboardInterrupt:
                    continue  # Ctrl-C cancels the line, not the session
                except EOFError:
                    break
                if self.run_line(line) is None:
                    break
            return self.last_status
        finally:
            self.close()

    def _plain_loop(self, stream: IO[str]) -> int:
        for line in stream:
            if self.run_line(line) is None:
                break
        return self.last_status

    def close(self) -> None:
        """Close the target (idempotent)."""
        if not self.closed:
            self.closed = True
            self.context.close()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def start(context: Context, stdout: Optional[IO[str]] = None, stderr: Optional[IO[str]] = None,
          input: Any = None, output: Any = None, history_path: Optional[str] = None) -> ShellSession:
    """A session over ``context``'s target, opened now so a bad target fails before the
    prompt appears.  The caller runs :meth:`ShellSession.loop`."""
    shell_ctx = context if isinstance(context, ShellContext) else ShellContext(
        json=False, debug=context.debug, cpu=None, target_uri=context.target_uri, opener=context.opener,
        _target=context._target)
    if shell_ctx.has_target():
        shell_ctx.target  # noqa: B018 - open it now, errors surface before the first prompt
    return ShellSession(shell_ctx, stdout, stderr, input, output, history_path)
