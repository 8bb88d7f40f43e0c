"""`vtdbg trace`, `vtdbg step`, `vtdbg events`, `vtdbg stats`: following VM exits live.

* ``trace [REASON [ARG]] [--filter "REASON [ARG]"]... [--count N] [--seconds S] [--break]
  [--log FILE.jsonl] [--command "..."] [--stats]`` records VM exits, one row per exit as
  they happen (or only statistics).  JSON: a list of exit objects in the order the exits
  happened (docs/trace.md lists the keys).
* ``step [--count N] [--until REASON [ARG]]`` runs to the next VM exit (on ``--cpu N`` or
  any CPU) and shows it decoded.
* ``events [list|add|enable|disable|clear] ...``: trace events kept by a shell session
  (`vtdbg shell`) or, inside WinDbg, by ``!py -g``'s persistent interpreter.
* ``stats FILE.jsonl [--html OUT]``: perf-kvm-stat-like statistics of a trace log.

Where the target stops: Bochs's stop-on-every-VM-exit switch when the backend has one,
otherwise breakpoints at the exit handler -- ``--at ADDR``, the profile's entry stub,
HOST_RIP read from each CPU's VMCS, or the profile's per-reason handler functions when
every filter names reasons that have one.  Every path removes every breakpoint.
"""
from __future__ import annotations

import argparse
import datetime
import io
import shlex
import sys
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import Heading, KeyValues, Link, Result, Table, Text, hex_value
from vtdbg.core.exit_events import ANY, Event, EventTable, ExitFilter, ExitRecord, parse_filter, parse_filter_text
from vtdbg.core.exit_stats import exit_stats, format_handler, histogram
from vtdbg.core.trace import (
    BreakpointSource,
    ExitReader,
    ExitSource,
    RegisterFrame,
    Site,
    TraceLimits,
    TraceLog,
    TraceOutcome,
    Tracer,
    VmexitBreakSource,
    host_rips,
    read_trace_file,
)
from vtdbg.lib.errors import UsageError, VtdbgError
from vtdbg.lib.numbers import parse_address, parse_int
from vtdbg.target.base import Capability, Target

#: the pseudo-URI of the WinDbg session (vtdbg.frontends.windbg.WINDBG_URI; not imported:
#: commands sit below the frontends)
_WINDBG_URI = "windbg:current"
#: state kept between `!py -g` runs inside WinDbg (the module outlives the command there;
#: a plain `!py` run ends the interpreter, and the state with it)
_PERSISTENT: Dict[str, Any] = {}
#: default seconds to wait for the next exit on backends that can time out (Bochs)
DEFAULT_TIMEOUT = 60.0
#: commands --command may not run (they would trace inside a trace)
_NOT_NESTABLE = ("trace", "step", "shell", "attach", "open", "events")
EXIT_INTERRUPTED = 130

_LIVE_COLUMNS = [("#", 5, True), ("cpu", 3, True), ("reason", 20, False), ("argument", 22, False),
                 ("qualification", 18, False), ("guest_rip", 18, False), ("len", 3, True), ("detail", 0, False)]


# -- session state ----------------------------------------------------------------------------


def session_state(ctx: Context) -> Optional[Dict[str, Any]]:
    """Where events and the step position live: the shell's ``state``, the persistent
    dict under WinDbg, or None for a one-shot command."""
    if getattr(ctx, "in_shell", False) and isinstance(getattr(ctx, "state", None), dict):
        return ctx.state  # type: ignore[attr-defined]
    if ctx.target_uri == _WINDBG_URI:
        return _PERSISTENT
    return None


def _event_table(ctx: Context) -> Optional[EventTable]:
    state = session_state(ctx)
    if state is None:
        return None
    table = state.get("trace_events")
    if not isinstance(table, EventTable):
        table = state["trace_events"] = EventTable()
    return table


def _cpu(ctx: Context) -> Optional[int]:
    if ctx.cpu is None or ctx.cpu.strip().lower() == "all":
        return None
    value = parse_int(ctx.cpu, "CPU number")
    if value < 0:
        raise UsageError("CPU numbers start at 0")
    return value


# -- options shared by trace and step ---------------------------------------------------------------


def _source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where to stop (default: the backend's stop-on-VM-exit switch, else "
                                      "breakpoints at the exit handler found from the profile or HOST_RIP)")
    group.add_argument("--at", metavar="ADDR", action="append", default=[],
                       help="break at this exit-handler entry (HOST_RIP) instead; repeatable")
    group.add_argument("--site", choices=("auto", "entry", "handler", "frame"), default="auto",
                       help="with a profile: break at the entry stub, at per-reason handler functions (auto: "
                            "those when every filter has one and needs no guest register), or at the C handler, "
                            "reading guest registers from the profile's register frame")
    group.add_argument("--resume-at", metavar="ADDR", action="append", default=[],
                       help="also break where the handler resumes the guest, to time handlers; repeatable")
    group.add_argument("--latency", action="store_true",
                       help="time handlers using the profile's resume function (one more stop per exit)")
    group.add_argument("--vmcs", metavar="[CPU=]PA", action="append", default=[],
                       help="VMCS address of a CPU (all CPUs without CPU=) when no profile or scan finds it")
    group.add_argument("--profile", metavar="NAME", help="target profile to use (default: detected)")
    group.add_argument("--layout", metavar="NAME", default="auto", help="VMCS layout (default: auto)")
    group.add_argument("--timeout", metavar="S", type=float,
                       help="give up when no exit comes within S seconds (Bochs; default %d)" % DEFAULT_TIMEOUT)
    group.add_argument("--no-regs", action="store_true",
                       help="do not read guest registers (one debugger transaction less per exit; "
                            "CPUID/MSR arguments become unknown)")


def _addresses(texts: Sequence[str], what: str) -> List[int]:
    return [parse_address(t, what) for t in texts]


def _vmcs_option(texts: Sequence[str], cpus: int) -> Dict[int, int]:
    out: Dict[int, int] = {}
    for text in texts:
        if "=" in text:
            cpu_text, pa_text = text.split("=", 1)
            out[parse_int(cpu_text, "CPU number")] = parse_address(pa_text, "VMCS address")
        else:
            pa = parse_address(text, "VMCS address")
            for cpu in range(max(cpus, 1)):
                out.setdefault(cpu, pa)
    return out


def _resolve(target: Target, module: Optional[str], names: Sequence[str]) -> Optional[Tuple[str, int]]:
    for name in names:
        qualified = name if "!" in name or not module else "%s!%s" % (module, name)
        try:
            address = target.symbol(qualified)
        except VtdbgError:
            address = None
        if address is not None:
            return qualified, address
    return None


def _profile(target: Target, name: Optional[str], notes: List[str]) -> Tuple[Any, Optional[str]]:
    """(profile, module) -- forced by name or detected; (None, None) without symbols."""
    from vtdbg.core.regions import detect_profile, loaded_modules
    from vtdbg.profiles import ProfileError, get_profile

    if name:
        try:
            profile = get_profile(name)
        except ProfileError as exc:
            raise UsageError(str(exc)) from None
        modules = loaded_modules(target) or {}
        module = next((modules[m.lower()][0] for m in profile.modules if m.lower() in modules), None)
        return profile, module or (profile.modules[0] if profile.modules else None)
    if not target.has(Capability.SYMBOLS):
        return None, None
    detection = detect_profile(target)
    notes.extend(detection.warnings)
    return detection.profile, detection.module


def _frame(profile: Any) -> Optional[RegisterFrame]:
    """The profile's register frame: the pointer register is the first word of
    ``register_frame.pointer`` ("rcx: first argument of ...")."""
    doc = profile.doc.get("register_frame") or {}
    order = doc.get("order")
    words = str(doc.get("pointer") or "").replace(":", " ").split()
    if not isinstance(order, list) or not words or not words[0].lower().startswith("r"):
        return None
    slot = doc.get("slot_size", 8)
    return RegisterFrame(words[0].lower(), tuple(str(n).lower() for n in order), int(slot) if slot else 8)


def build_source(ctx: Context, target: Target, args: argparse.Namespace, filters: Sequence[ExitFilter],
                 cpu: Optional[int], notes: List[str]) -> ExitSource:
    """The exit source for this target and these options (see the module docstring)."""
    resume = [Site(a, "resume", "resume 0x%x" % a) for a in _addresses(args.resume_at, "resume address")]
    switch = callable(getattr(target, "run_to_vm_exit", None)) and callable(getattr(target, "set_vmexit_break", None))
    if switch and not args.at and args.site == "auto" and not args.latency:
        if target.kind == "bochs" and callable(getattr(target, "command", None)):
            from vtdbg.target.bochs_exits import BochsExitSource

            return BochsExitSource(target, resume)
        return VmexitBreakSource(target, resume)
    target.require(Capability.BREAKPOINTS | Capability.RESUME | Capability.PHYS_READ, "tracing with breakpoints")
    profile, module = (None, None) if args.at and args.vmcs else _profile(target, args.profile, notes)
    vmcs = _vmcs_option(args.vmcs, target.cpu_count())
    if not vmcs:
        from vtdbg.core.regions import find_regions

        for regions in find_regions(target, profile=profile, warnings=notes):
            if regions.vmcs_pa is not None:
                vmcs[regions.cpu] = regions.vmcs_pa
            elif regions.error:
                notes.append("CPU %d: %s" % (regions.cpu, regions.error))
    if not vmcs:
        raise UsageError("no VMCS found for any CPU; give --vmcs [CPU=]PA")
    sites: List[Site] = [Site(a, "entry", "at 0x%x" % a) for a in _addresses(args.at, "exit-handler address")]
    if not sites and profile is not None:
        handlers = profile.doc.get("exit_reason_handlers") or {}
        wanted = {r for f in filters for r in f.reasons}
        specific = bool(filters) and all(f.reasons for f in filters) and not any(f.needs_gprs for f in filters)
        use_handlers = args.site == "handler" or (args.site == "auto" and specific)
        if use_handlers:
            from vtdbg.arch.exit_reasons import exit_reason_name

            found: List[Site] = []
            for reason in sorted(wanted):
                hit = _resolve(target, module, [handlers.get(exit_reason_name(reason), "")] if
                               handlers.get(exit_reason_name(reason)) else [])
                if hit is None:
                    found = []
                    break
                found.append(Site(hit[1], "handler", hit[0]))
            if found:
                sites = found
            elif args.site == "handler":
                raise UsageError("profile %s has no handler function for every filtered reason" % profile.name)
        if not sites and args.site == "frame":
            frame = _frame(profile)
            hit = _resolve(target, module, profile.exit_handler)
            if hit is None or frame is None:
                raise UsageError("profile %s names no C exit handler with a register frame" % profile.name)
            sites = [Site(hit[1], "handler", hit[0], frame)]
        if not sites:
            hit = _resolve(target, module, profile.exit_entry)
            if hit is not None:
                sites = [Site(hit[1], "entry", hit[0])]
        if args.latency:
            back = _resolve(target, module, (profile.doc.get("exit_handler") or {}).get("resume") or [])
            if back is None:
                raise UsageError("profile %s names no resume function to time handlers with; give --resume-at"
                                 % profile.name)
            resume.append(Site(back[1], "resume", back[0]))
    elif args.latency and not resume:
        raise UsageError("--latency needs a profile with a resume function, or --resume-at ADDR")
    if not sites:
        rips = host_rips(target, vmcs, ExitReader(args.layout))
        sites = [Site(rip, "entry", "HOST_RIP 0x%x" % rip) for rip in sorted(set(rips.values()))]
        if not sites:
            raise UsageError("HOST_RIP is 0 in every VMCS found; give --at ADDR")
    if target.kind == "kd" and target.has(Capability.LIVE):
        notes.append("exit fields are decoded from the VMCS in memory, which a CPU may keep on-die and stale "
                     "(memory is current only after VMCLEAR)")
    return BreakpointSource(target, sites + resume, vmcs, cpu)


# -- rows and records ------------------------------------------------------------------------------


def _reason_cell(doc: Dict[str, Any]) -> Link:
    name = doc["reason_name"] + ("!" if doc.get("entry_failure") else "")
    return Link(name, "exit_reason", doc["exit_reason"])


def _argument_text(doc: Dict[str, Any]) -> Optional[str]:
    if doc.get("argument_kind") is None:
        return None
    value = doc.get("argument")
    return "%s=%s" % (doc["argument_kind"], "?" if value is None else "0x%x" % value)


def row_cells(doc: Dict[str, Any]) -> List[Any]:
    """One table row for an exit object."""
    return [doc["index"], doc["cpu"], _reason_cell(doc), _argument_text(doc), hex_value(doc.get("qualification")),
            Link(hex_value(doc.get("guest_rip")), "guest_rip", doc["guest_rip"]) if doc.get("guest_rip") is not None
            else None, doc.get("instruction_len"), doc.get("detail") or ""]


def _decoded(doc: Dict[str, Any]) -> List[Any]:
    """Key/value lines for one exit, decoded (step's view)."""
    from vtdbg.core.describe import decode_bits

    def bits(layout: str, value: Optional[int]) -> str:
        if value is None:
            return "-"
        if layout == "interruption_info" and not value >> 31 & 1:
            return "0x%x  (not valid)" % value
        try:
            return "0x%x  %s" % (value, " ".join(decode_bits(layout, value)))
        except KeyError:
            return "0x%x" % value

    pairs: List[Any] = [
        ("cpu", Link(str(doc["cpu"]), "cpu", doc["cpu"])),
        ("exit reason", "%d %s%s" % (doc["exit_reason"], doc["reason_name"],
                                     " (VM-entry failure)" if doc.get("entry_failure") else "")),
        ("qualification", "%s  %s" % (hex_value(doc.get("qualification")), doc.get("detail") or "")),
        ("argument", _argument_text(doc) or "-"),
        ("guest RIP", Link(hex_value(doc.get("guest_rip")), "guest_rip", doc.get("guest_rip") or 0)),
        ("guest RSP", hex_value(doc.get("guest_rsp"))),
        ("guest RFLAGS", bits("rflags", doc.get("guest_rflags"))),
        ("instruction length", doc.get("instruction_len")),
        ("interruption info", bits("interruption_info", doc.get("intr_info"))),
        ("interruption error", hex_value(doc.get("intr_error_code"))),
        ("IDT vectoring", bits("interruption_info", doc.get("idt_vectoring_info"))),
        ("instruction info", hex_value(doc.get("instruction_info"))),
        ("guest physical", hex_value(doc.get("guest_physical_address"))),
        ("guest linear", hex_value(doc.get("guest_linear_address"))),
        ("VMCS", Link(hex_value(doc.get("vmcs_pa")), "phys", doc.get("vmcs_pa") or 0)),
        ("stopped at", doc.get("site") or "-"),
    ]
    if doc.get("ticks") is not None:
        pairs.append(("ticks", doc["ticks"]))
    if doc.get("handler_ticks") is not None or doc.get("handler_seconds") is not None:
        pairs.append(("handler time", "%s ticks, %s s" % (doc.get("handler_ticks"), doc.get("handler_seconds"))))
    gprs = doc.get("gprs")
    if gprs:
        names = [n for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12",
                             "r13", "r14", "r15") if n in gprs]
        for i in range(0, len(names), 4):
            pairs.append(("registers" if i == 0 else "", "  ".join("%s=%016x" % (n, gprs[n]) for n in names[i:i + 4])))
    return pairs


def _stats_blocks(stats: Dict[str, Any]) -> List[Any]:
    def rows(items: List[Dict[str, Any]], with_cpu: bool) -> List[List[Any]]:
        out = []
        for row in items:
            low, high, avg = format_handler(row.get("handler"))
            cells: List[Any] = [Link(row["reason_name"] + ("!" if row.get("entry_failure") else ""),
                                     "exit_reason", row["exit_reason"])]
            if with_cpu:
                cells.append(row["cpu"])
            rate = row.get("rate_per_second")
            cells += [row["count"], "%.2f%%" % row["percent"], "-" if rate is None else "%.2f" % rate, low, high, avg]
            out.append(cells)
        return out

    columns = ["VM-EXIT", "Samples", "Samples%", "Rate/s", "Min Time", "Max Time", "Avg time"]
    blocks: List[Any] = [Table(columns, rows(stats["by_reason"], False), title="VM exits by reason")]
    if len(stats["cpus"]) > 1:
        blocks.append(Table(columns[:1] + ["CPU"] + columns[1:], rows(stats["by_reason_cpu"], True),
                            title="VM exits by reason and CPU"))
    lines = histogram(stats)
    if lines:
        blocks += [Heading("Histogram"), Text("\n".join(lines))]
    seconds = stats.get("seconds")
    blocks.append(Text("Total: %d exits%s, CPUs %s" % (
        stats["exits"], "" if not seconds else " in %.3f s" % seconds,
        ", ".join(str(c) for c in stats["cpus"]) or "-")))
    return blocks


def _nested(ctx: Context, line: str, cpu: int) -> str:
    """Run a vtdbg command line against the stopped target (the --command action); its
    output is returned.  Ctrl+C inside it stops the trace too."""
    from vtdbg.frontends.cli import run

    argv = shlex.split(line)
    if not any(a == "--cpu" or a.startswith("--cpu=") for a in argv):
        argv += ["--cpu", str(cpu)]
    out, err = io.StringIO(), io.StringIO()
    saved = (ctx.json, ctx.debug, ctx.cpu, list(ctx.warnings))
    try:
        status = run(argv, out, err, context=ctx)
    finally:
        ctx.json, ctx.debug, ctx.cpu = saved[0], saved[1], saved[2]
        ctx.warnings = saved[3]
    if status == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    return out.getvalue() + err.getvalue()


def _check_nestable(line: Optional[str]) -> None:
    if line is None:
        return
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError("--command: %s" % exc) from None
    if not words:
        raise UsageError("--command needs a vtdbg command line, e.g. \"vmcs --json\"")
    if words[0] in _NOT_NESTABLE:
        raise UsageError("--command cannot run `%s` (it would trace inside a trace)" % words[0])


def _live_stream(ctx: Context) -> IO[str]:
    """Where rows go while a trace runs: a frontend may give ``ctx.live_stream``; the
    default is the console (the shell redirects it into its own stream)."""
    stream = getattr(ctx, "live_stream", None)
    return stream if stream is not None else sys.stdout


def _end_warning(outcome: TraceOutcome) -> Optional[str]:
    if outcome.complete:
        return None
    if outcome.end == "interrupted":
        return "interrupted after %d exits" % len(outcome.records)
    wanted = " before %d exits" % outcome.requested if outcome.requested is not None else ""
    return "trace ended%s: %s" % (wanted, outcome.summary().split("; ", 1)[-1])


def _exit_code(outcome: TraceOutcome) -> int:
    if outcome.end == "interrupted":
        return EXIT_INTERRUPTED
    return 0 if outcome.complete else 2


def _timeout(target: Target, args: argparse.Namespace) -> Optional[float]:
    if args.timeout is not None:
        if args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        return args.timeout
    return DEFAULT_TIMEOUT if callable(getattr(target, "run_to_vm_exit", None)) else None


# -- trace -----------------------------------------------------------------------------------------


def _trace_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reason", nargs="?", metavar="REASON",
                        help="exit reason or filter: cpuid, msr-read, msr-write, msr, io-in, io-out, io, cr, "
                             "cr-write, cr-read, dr, exception, nmi, interrupt, ept-violation, invlpg, vmcall, "
                             "entry-failure, any, or any exit-reason name/number")
    parser.add_argument("arg", nargs="?", metavar="ARG",
                        help="the exit's argument: CPUID leaf, MSR index or name, port, vector (or #PF), "
                             "CR/DR number, GPA; A-B for a range")
    parser.add_argument("--filter", metavar='"REASON [ARG]"', action="append", default=[],
                        help="another filter (repeatable); an exit is recorded when any filter matches")
    parser.add_argument("--count", metavar="N", type=int, help="stop after N recorded exits")
    parser.add_argument("--seconds", metavar="S", type=float, help="stop after S seconds")
    parser.add_argument("--break", dest="brk", action="store_true",
                        help="stop at the first matching exit and leave the target there")
    parser.add_argument("--log", metavar="FILE.jsonl", help="write every recorded exit to a JSON Lines log")
    parser.add_argument("--command", metavar='"CMD"', help='run this vtdbg command at each recorded exit '
                                                           '(e.g. "vmcs --json"); its output joins the row')
    parser.add_argument("--stats", action="store_true", help="print only statistics, not one row per exit")
    _source_options(parser)


@command("trace", help="record VM exits live: filters by reason, argument and CPU; rows, log, statistics",
         needs=Capability.RESUME,
         examples=["vtdbg --target bochs:lab.bxrc trace --count 20", "vtdbg trace cpuid 0x40000000 --cpu 2",
                   "vtdbg trace msr-read IA32_EFER --break", "vtdbg trace --filter io-in --filter \"exception #PF\"",
                   "vtdbg trace --seconds 10 --stats --log exits.jsonl"],
         description="Record VM exits as they happen. Filters select exits by reason, argument (CPUID leaf, MSR, "
                     "port, vector, CR, GPA) and --cpu; in a shell session they become events (see `vtdbg events`). "
                     "Every breakpoint is removed when the trace ends, however it ends.")
@arguments(_trace_args)
def trace_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Record exits until --count/--seconds/--break or the target stops."""
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    if args.seconds is not None and args.seconds <= 0:
        raise UsageError("--seconds must be positive")
    if args.arg is not None and args.reason is None:
        raise UsageError("an ARG needs a REASON")
    _check_nestable(args.command)
    filters = [parse_filter([args.reason] + ([args.arg] if args.arg is not None else []))] if args.reason else []
    filters += [parse_filter_text(text) for text in args.filter]
    cpu = _cpu(ctx)
    table = _event_table(ctx)
    persistent = table is not None
    if table is None:
        table = EventTable()
    for flt in filters:
        table.add(flt, cpu, args.brk, args.command)
    events = table.enabled()
    # without filters, --break and --command apply to this run only (not stored as events)
    run_break = bool(args.brk and not filters)
    run_command = args.command if not filters else None
    target = ctx.target
    notes: List[str] = []
    source = build_source(ctx, target, args, [e.filter for e in events] or [ANY], cpu, notes)
    log: Optional[TraceLog] = None
    if args.log:
        log = TraceLog(args.log, {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "target": {"kind": target.kind, "description": target.description, "cpu_count": target.cpu_count()},
            "source": source.description, "events": [e.to_json() for e in events], "cpu": cpu})
    live = None
    if not ctx.json and not args.stats:
        from vtdbg.render.live import LiveTable

        live = LiveTable(_live_stream(ctx), _LIVE_COLUMNS)
    commands = {e.id: e.command for e in events if e.command}

    def on_record(record: ExitRecord) -> None:
        doc = record.to_json()
        lines = [_nested(ctx, commands[i], record.cpu) for i in record.events if i in commands]
        if run_command:
            lines.append(_nested(ctx, run_command, record.cpu))
        if lines:
            record.command_output = doc["command_output"] = "".join(lines)
        if log is not None:
            log.write(dict({"type": "exit"}, **doc))
        if live is not None:
            live.row(row_cells(doc))
            for line in lines:
                live.text(line)

    tracer = Tracer(source, ExitReader(args.layout), events, on_record, gprs=not args.no_regs, cpu=cpu,
                    break_on_match=run_break)
    limits = TraceLimits(args.count, args.seconds, _timeout(target, args))
    outcome: Optional[TraceOutcome] = None
    try:
        outcome = tracer.run(limits)
    finally:
        if log is not None:
            footer = {"end": outcome.end, "exits": len(outcome.records), "seen": outcome.seen,
                      "seconds": outcome.seconds} if outcome is not None else {"end": "error"}
            log.close(footer)
    docs = [r.to_json() for r in outcome.records]
    warnings = notes + outcome.warnings
    ending = _end_warning(outcome)
    if ending:
        warnings.append(ending)
    if args.stats:
        stats = exit_stats(docs, outcome.seconds)
        data: Any = dict(stats, end=outcome.end, complete=outcome.complete)
        blocks: List[Any] = _stats_blocks(stats)
    else:
        data = docs
        blocks = []
        if live is None or live.rows == 0:
            blocks.append(Table([c[0] for c in _LIVE_COLUMNS], [row_cells(d) for d in docs]))
    blocks.append(Text(outcome.summary()))
    if persistent and events:
        blocks.append(Table(["id", "filter", "cpu", "actions", "hits", "enabled"], _event_rows(table),
                            title="events"))
    if outcome.end == "break" and docs:
        blocks.append(Text("stopped at exit #%d on CPU %d; `vtdbg step` continues from here"
                           % (docs[-1]["index"], docs[-1]["cpu"])))
    state = session_state(ctx)
    if state is not None:
        step = state.setdefault("step", {"seen": 0})
        step["seen"] = int(step.get("seen", 0)) + outcome.seen
        if docs:
            step["last"] = docs[-1]
    return Result(data, blocks, warnings=warnings, exit_code=_exit_code(outcome))


# -- step ------------------------------------------------------------------------------------------


def _step_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", metavar="N", type=int, default=1, help="walk N exits (default 1)")
    parser.add_argument("--until", metavar="REASON", nargs="+",
                        help="run until an exit matching REASON [ARG] (e.g. --until msr-read 0x174)")
    _source_options(parser)


@command("step", help="run to the next VM exit (on --cpu N or any CPU) and show it decoded",
         needs=Capability.RESUME,
         examples=["vtdbg step", "vtdbg step --count 3 --cpu 1", "vtdbg step --until ept-violation",
                   "vtdbg --target bochs:lab.bxrc step --count 5 --json"],
         description="Run the target to its next VM exit and decode it. In a shell session each step continues "
                     "where the previous one (or a `trace --break`) stopped. JSON: the list of exits stepped to.")
@arguments(_step_args)
def step_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Step from exit to exit."""
    if args.count < 1:
        raise UsageError("--count must be at least 1")
    flt = parse_filter(args.until) if args.until else None
    cpu = _cpu(ctx)
    events = [Event(0, flt, cpu)] if flt is not None else []
    target = ctx.target
    notes: List[str] = []
    source = build_source(ctx, target, args, [flt] if flt is not None else [ANY], cpu, notes)
    state = session_state(ctx)
    position = state.setdefault("step", {"seen": 0}) if state is not None else {"seen": 0}
    tracer = Tracer(source, ExitReader(args.layout), events, None, gprs=not args.no_regs, cpu=cpu,
                    seen_base=int(position.get("seen", 0)))
    outcome = tracer.run(TraceLimits(args.count, None, _timeout(target, args)))
    position["seen"] = int(position.get("seen", 0)) + outcome.seen
    docs = [r.to_json() for r in outcome.records]
    if docs:
        position["last"] = docs[-1]
    warnings = notes + outcome.warnings
    ending = _end_warning(outcome)
    if ending:
        warnings.append(ending)
    blocks: List[Any] = []
    if len(docs) > 1:
        blocks.append(Table([c[0] for c in _LIVE_COLUMNS], [row_cells(d) for d in docs], title="exits"))
    if docs:
        last = docs[-1]
        blocks.append(KeyValues(_decoded(last), title="exit %d (VM exit #%d seen)" % (last["index"],
                                                                                   last["seen_index"])))
    skipped = outcome.seen - len(docs)
    blocks.append(Text("%d exit%s shown%s" % (len(docs), "" if len(docs) == 1 else "s",
                                              ", %d passed over" % skipped if skipped else "")))
    return Result(docs, blocks, warnings=warnings, exit_code=_exit_code(outcome))


# -- events ----------------------------------------------------------------------------------------


def _event_rows(table: EventTable) -> List[List[Any]]:
    return [[e.id, e.filter.text(), "all" if e.cpu is None else e.cpu, ",".join(e.actions)
             + (" (%s)" % e.command if e.command else ""), e.hits, "yes" if e.enabled else "no"] for e in table]


def _events_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default="list", choices=("list", "add", "enable", "disable", "clear"),
                        help="list (default), add REASON [ARG], enable/disable/clear ID...|all")
    parser.add_argument("words", nargs="*", metavar="ARG", help="the filter (add) or event ids / all")
    parser.add_argument("--break", dest="brk", action="store_true", help="add: stop the trace at a hit")
    parser.add_argument("--command", metavar='"CMD"', help="add: run this vtdbg command at each hit")


@command("events", help="list, add, enable, disable or clear the trace events of this session",
         examples=["vtdbg events", "vtdbg events add cpuid 0x40000000 --cpu 1", "vtdbg events disable 2",
                   "vtdbg events clear all"],
         description="Trace events (a filter, a CPU, actions, a hit count, enabled or not) live in a shell session "
                     "(`vtdbg shell`) or under `!py -g` in WinDbg; `vtdbg trace` runs with the enabled ones. "
                     "One-shot commands take filters as arguments of `trace` instead.")
@arguments(_events_args)
def events_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Manage the session's events."""
    table = _event_table(ctx)
    if table is None:
        if args.action != "list":
            raise UsageError("events live in a shell session (`vtdbg shell`) or under `!py -g`; a one-shot "
                             "`vtdbg trace` takes its filters as arguments")
        return Result([], [Text("no events: events live in a shell session (`vtdbg shell`) or under `!py -g`")])
    touched: List[Event] = []
    if args.action == "add":
        _check_nestable(args.command)
        touched = [table.add(parse_filter(args.words), _cpu(ctx), args.brk, args.command)]
    elif args.action in ("enable", "disable"):
        touched = table.select(args.words)
        for event in touched:
            event.enabled = args.action == "enable"
    elif args.action == "clear":
        touched = table.clear(args.words)
    elif args.words:
        raise UsageError("`events list` takes no arguments")
    blocks: List[Any] = []
    if touched:
        verb = {"add": "added", "enable": "enabled", "disable": "disabled", "clear": "cleared"}[args.action]
        blocks.append(Text("%s event%s %s" % (verb, "" if len(touched) == 1 else "s",
                                              ", ".join(str(e.id) for e in touched))))
    blocks.append(Table(["id", "filter", "cpu", "actions", "hits", "enabled"], _event_rows(table)))
    return Result(table.to_json(), blocks)


# -- stats -----------------------------------------------------------------------------------------


def _stats_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.jsonl", help="a `vtdbg trace --log` file (or saved `trace --json`)")
    parser.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML report")
    parser.add_argument("--title", metavar="TEXT", help="title of the HTML report")


@command("stats", help="statistics of a trace log: per reason and CPU, count, share, rate, handler time; histogram",
         examples=["vtdbg stats exits.jsonl", "vtdbg stats exits.jsonl --html report.html --json"],
         description="Summarise a VM-exit trace the way `perf kvm stat` does: samples, share, rate and, where the "
                     "trace timed handlers (--latency/--resume-at), min/max/avg time between exit and resume.")
@arguments(_stats_args)
def stats_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Read a trace file and summarise it."""
    trace = read_trace_file(args.file)
    footer = trace.footer or {}
    seconds = footer.get("seconds") if isinstance(footer.get("seconds"), (int, float)) else None
    stats = exit_stats(trace.records, seconds)
    warnings = list(trace.warnings)
    if trace.header and trace.footer is None:
        warnings.append("%s has no end record: the trace did not finish cleanly" % args.file)
    data: Dict[str, Any] = dict(stats, file=args.file, end=footer.get("end"))
    blocks = _stats_blocks(stats)
    if args.html:
        from vtdbg.render.html_report import render_html

        text = render_html(stats, trace.records, args.title or "vtdbg VM-exit trace", args.file)
        try:
            with open(args.html, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise UsageError("cannot write %s: %s" % (args.html, exc.strerror)) from None
        data["html"] = args.html
        blocks.append(Text("HTML report written to %s" % args.html))
    return Result(data, blocks, warnings=warnings)
