"""The command registry: one decorator per command, its argparse parser is its help.

A command is a function ``run(ctx, args) -> Result``.  The registry knows which target
capabilities it needs, so a dump is refused a `trace` with a clear message before
anything is touched.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from vtdbg.commands.result import Result
from vtdbg.lib.errors import UsageError
from vtdbg.target.base import Capability, Target


@dataclass
class Context:
    """What a running command may use: options and a lazily opened target."""

    json: bool = False
    debug: bool = False
    cpu: Optional[str] = None
    target_uri: Optional[str] = None
    opener: Optional[Callable[[str], Target]] = None
    _target: Optional[Target] = None
    warnings: List[str] = field(default_factory=list)
    #: state that outlives one command (shell sessions, `!py -g`): trace events, step position
    state: Dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> Target:
        """The target named by --target/--image (opened on first use)."""
        if self._target is None:
            if not self.target_uri:
                raise UsageError("this command needs a target: give --target URI or --image FILE")
            if self.opener is None:
                from vtdbg.target.open import open_target

                self.opener = open_target
            self._target = self.opener(self.target_uri)
        return self._target

    def use_file(self, path: Optional[str]) -> None:
        """Make a command's FILE argument the target (sniffed like a bare path); giving both
        FILE and --target/--image is a usage error."""
        if path:
            if self.has_target():
                raise UsageError("give FILE or --target/--image, not both")
            self.target_uri = path

    def has_target(self) -> bool:
        """True when a target was named or already open."""
        return self._target is not None or bool(self.target_uri)

    def close(self) -> None:
        """Close the target if this context opened it."""
        if self._target is not None:
            self._target.close()
            self._target = None


Runner = Callable[[Context, argparse.Namespace], Result]
Configurer = Callable[[argparse.ArgumentParser], None]


@dataclass
class Command:
    """One registered command."""

    name: str
    help: str
    examples: Tuple[str, ...]
    configure: Configurer
    run: Runner
    needs: Capability = Capability.NONE
    aliases: Tuple[str, ...] = ()
    description: str = ""


COMMANDS: Dict[str, Command] = {}


def command(name: str, help: str, examples: Sequence[str], needs: Capability = Capability.NONE,
            aliases: Sequence[str] = (), description: str = "") -> Callable[[Runner], Runner]:
    """Register ``run`` as command ``name``.  Add arguments with :func:`arguments`."""
    def wrap(run: Runner) -> Runner:
        configure: Configurer = getattr(run, "_vtdbg_configure", lambda parser: None)
        COMMANDS[name] = Command(name, help, tuple(examples), configure, run, needs, tuple(aliases), description)
        return run
    return wrap


def arguments(configure: Configurer) -> Callable[[Runner], Runner]:
    """Attach an argparse configurer to a command function (place below @command)."""
    def wrap(run: Runner) -> Runner:
        run._vtdbg_configure = configure  # type: ignore[attr-defined]
        return run
    return wrap


_DECORATOR = re.compile(r'^@command\(\s*"([^"]+)"(.*?)^def ', re.S | re.M)
_ALIASES = re.compile(r"aliases\s*=\s*[\[(]([^\])]*)[\])]")


def command_index() -> Dict[str, str]:
    """Command name or alias -> module name, read from the sources without importing them,
    so a one-shot command imports only its own module (start-up time).  A test checks the
    index against what importing everything registers."""
    import os

    folder = os.path.dirname(os.path.abspath(__file__))
    index: Dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py") or name.startswith("_") or name in ("registry.py", "result.py"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as handle:
            text = handle.read()
        for match in _DECORATOR.finditer(text):
            index[match.group(1)] = name[:-3]
            aliases = _ALIASES.search(match.group(2))
            if aliases:
                for alias in re.findall(r'"([^"]+)"', aliases.group(1)):
                    index[alias] = name[:-3]
    return index


def load_command(name: str) -> Optional[Command]:
    """Import only the module that defines command ``name`` (or alias); None if unknown."""
    import importlib

    module = command_index().get(name)
    if module is None:
        return None
    importlib.import_module("vtdbg.commands." + module)
    for cmd in COMMANDS.values():
        if cmd.name == name or name in cmd.aliases:
            return cmd
    return None


def load_all() -> Dict[str, Command]:
    """Import every module of the vtdbg.commands package (registration happens at import),
    so a new command family is one new module and no shared list to edit."""
    import importlib
    import pkgutil

    import vtdbg.commands as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("registry", "result") and not info.name.startswith("_"):
            importlib.import_module("vtdbg.commands." + info.name)
    return COMMANDS
