"""Options and helpers shared by the commands that run code on the target (``vmcs --live``,
``vmcs --set``, ``discover-layout``).  Not a command module (the leading underscore keeps
``load_all`` from importing it as one)."""
from __future__ import annotations

import argparse
from typing import Optional

from vtdbg.commands.registry import Context
from vtdbg.core import live
from vtdbg.lib.errors import UsageError, VtdbgError
from vtdbg.lib.numbers import parse_address, parse_int
from vtdbg.target.base import Capability


def add_live_arguments(parser: argparse.ArgumentParser, exits: bool = True) -> None:
    """--scratch, --scratch-va, --scratch-size, --assume-root, --after-exits, --timeout."""
    group = parser.add_argument_group("running code on the target (live VMREAD/VMWRITE)")
    group.add_argument("--scratch", metavar="PA",
                       help="a free, 4 KiB-aligned physical region the stub may use (restored afterwards); "
                            "default: the hypervisor image's padding when a profile finds it")
    group.add_argument("--scratch-va", metavar="VA",
                       help="where the hypervisor maps --scratch (default: identity, checked in the page tables)")
    group.add_argument("--scratch-size", metavar="N", default=None,
                       help="bytes of --scratch to use, a multiple of 4 KiB (default 0x%x)" % live.DEFAULT_SCRATCH_SIZE)
    group.add_argument("--assume-root", action="store_true",
                       help="the CPU is in VMX root mode (when no profile evidence can tell); a VMREAD in "
                            "non-root mode would exit into the hypervisor under test")
    if exits:
        group.add_argument("--after-exits", metavar="N", default=None,
                           help="bochs: run through N VM exits first and read in VMX root after the last "
                                "(default 1 for a freshly started Bochs)")
        group.add_argument("--timeout", metavar="S", default=None,
                           help="bochs: seconds the run may take (default 60)")


def resolve_scratch(ctx: Context, args: argparse.Namespace) -> live.Scratch:
    """The scratch area: ``--scratch``, else the hypervisor image's padding (profile module)."""
    target = ctx.target
    size = parse_int(args.scratch_size, "--scratch-size") if args.scratch_size else live.DEFAULT_SCRATCH_SIZE
    if args.scratch is not None:
        va = parse_address(args.scratch_va) if args.scratch_va is not None else None
        return live.scratch_at(target, parse_address(args.scratch), size, va)
    if args.scratch_va is not None:
        raise UsageError("--scratch-va needs --scratch")
    if target.has(Capability.SYMBOLS):
        from vtdbg.core.regions import detect_profile, loaded_modules

        detection = detect_profile(target)
        modules = loaded_modules(target) or {}
        if detection.profile is not None:
            for name in [detection.module or ""] + list(detection.profile.modules):
                key = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
                for ext in (".sys", ".dll", ".exe"):
                    if key.endswith(ext):
                        key = key[: -len(ext)]
                if key in modules:
                    module, base, length = modules[key]
                    return live.scratch_from_image(target, module, base, length)
    raise live.LiveError("no scratch area for the stub: give --scratch PA (a free, 4 KiB-aligned physical page "
                         "range; e.g. on the Bochs lab 0x1F0000, see tests/fixtures/lab/README.md)")


def prepare(ctx: Context, args: argparse.Namespace) -> Optional[live.RunReport]:
    """The one-shot Bochs run (``--after-exits``); raises when it did not complete."""
    exits = parse_int(args.after_exits, "--after-exits") if getattr(args, "after_exits", None) else None
    timeout = float(args.timeout) if getattr(args, "timeout", None) else None
    report = live.run_exits_first(ctx.target, exits, timeout)
    if report is not None and not report.complete:
        raise IncompleteRun(report)
    return report


class IncompleteRun(VtdbgError):
    """The Bochs run ended (halt, timeout, Bochs exit) before the wanted VM exits."""

    def __init__(self, report: live.RunReport) -> None:
        last = report.last
        super().__init__("the target stopped after %d of the %d VM exits asked for: %s%s" % (
            len(report.exits), report.asked, last.get("event"), " (%s)" % last["detail"] if last.get("detail") else ""))
        self.report = report
