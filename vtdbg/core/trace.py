"""Tracing VM exits on a live target: where to stop, what to read, and cleaning up.

Three parts, all written against :class:`vtdbg.target.base.Target`:

* an :class:`ExitSource` makes the target stop at VM exits and says where it stopped.
  :class:`BreakpointSource` sets breakpoints at the exit handler (HOST_RIP, a profile's
  entry stub, per-reason handler functions, or addresses the user gives) -- the pykd way;
  :class:`VmexitBreakSource` uses a backend's stop-on-every-VM-exit switch (Bochs's
  ``vmexitbp``), found by duck typing on ``run_to_vm_exit``/``set_vmexit_break``/
  ``vmx_state`` so that core never imports a backend.
* :class:`ExitReader` turns a stop into an :class:`~vtdbg.core.exit_events.ExitRecord`
  with as few debugger transactions as possible: ONE ``read_phys`` of the VMCS page
  (decoded with the layout, chosen once per page) and, when wanted, ONE ``registers()``.
* :class:`Tracer` runs the loop: stop, read, match events, hand the record over, until a
  count, a duration, a break action, the end of the target -- and on every path (normal
  end, an exception anywhere, Ctrl+C, a vanished target) disarms the source, so no
  breakpoint or VM-exit switch is left behind.

Transactions per traced exit on the breakpoint path: the stop (one ``resume``), the VMCS
page and the registers -- 2 beyond the stop (bench/bench_trace.py measures it).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from vtdbg.arch.fields import lookup_field
from vtdbg.core.exit_events import ANY, EXIT_FIELDS, Event, ExitRecord, match_events
from vtdbg.layouts.model import REGION_SIZE, Layout
from vtdbg.lib.errors import DecodeError, LayoutError, TargetError, UsageError, VtdbgError
from vtdbg.target.base import Breakpoint, Target, read_exact

#: how the end of a trace is reported (``TraceOutcome.end``)
END_REASONS = {
    "count": "the requested number of exits was recorded",
    "seconds": "the requested duration passed",
    "break": "an event with a break action matched",
    "halted": "the guest halted (every CPU executed HLT with interrupts off)",
    "timeout": "no VM exit within the timeout",
    "ended": "the target ended (Bochs exited)",
    "stopped": "the target stopped without reaching a VM exit (break-in, or nothing left to run)",
    "interrupted": "interrupted (Ctrl+C)",
    "error": "an error stopped the trace",
}
#: ends that are normal when no count was asked for
_NATURAL_ENDS = ("halted", "ended", "stopped")


# -- stops ------------------------------------------------------------------------------------------


@dataclass
class Stop:
    """Where a source stopped the target.

    ``kind``: ``"exit"`` (a VM exit, the target stopped in VMX root at the exit handler),
    ``"resume"`` (a post-handler site, for handler times) or ``"end"`` (no more stops:
    ``end_reason`` says why, one of :data:`END_REASONS`).  ``guest_gprs``: the CPU's
    general registers still hold the guest's (true at HOST_RIP, false inside a C handler).
    """

    kind: str
    cpu: int = 0
    time: float = 0.0
    ticks: Optional[int] = None
    site: Optional[str] = None
    guest_gprs: bool = True
    end_reason: str = ""
    detail: str = ""


@dataclass
class Snapshot:
    """What the per-exit reads gave: the VMCS address and page, the guest GPRs."""

    vmcs_pa: Optional[int]
    page: Optional[bytes]
    gprs: Optional[Dict[str, int]] = None
    layout: Optional[str] = None


_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
         "r15")


def guest_gprs(registers: Dict[str, int]) -> Dict[str, int]:
    """The general registers of a register dump, without RSP: at a VM exit the CPU's RSP
    is HOST_RSP, the guest's is in the VMCS (GUEST_RSP)."""
    return {name: registers[name] for name in _GPRS if name in registers}


class ExitSource:
    """Makes a target stop at VM exits.  Subclasses implement the four steps; the
    :class:`Tracer` calls :meth:`disarm` on every path once :meth:`arm` succeeded."""

    description = "abstract"

    def __init__(self, target: Target) -> None:
        self.target = target

    def arm(self) -> None:
        """Set breakpoints / switches.  Cleans up what it set before raising."""
        raise NotImplementedError

    def next_stop(self, timeout: Optional[float]) -> Stop:
        """Let the target run to the next stop."""
        raise NotImplementedError

    def snapshot(self, stop: Stop, gprs: bool) -> Snapshot:
        """The per-exit reads at ``stop`` (VMCS page, registers when ``gprs``)."""
        raise NotImplementedError

    def disarm(self) -> List[str]:
        """Undo :meth:`arm`; idempotent.  Returns warnings; never raises because the
        target is gone (a vanished target holds no breakpoints any more)."""
        raise NotImplementedError

    def armed_count(self) -> int:
        """Breakpoints/switches currently set by this source (tests check it is 0)."""
        return 0

    def measures_handler(self) -> bool:
        """True when the source also stops where the handler resumes the guest."""
        return False


def _target_alive(target: Target) -> bool:
    alive = getattr(target, "alive", True)
    return bool(alive() if callable(alive) else alive)


@contextlib.contextmanager
def _on_cpu(target: Target, cpu: int) -> Iterator[None]:
    """Address ``cpu`` (a no-op when it is already current, as after a stop)."""
    if cpu < 0 or cpu == target.current_cpu():
        yield
    else:
        with target.select_cpu(cpu):
            yield


# -- breakpoints at the exit handler ---------------------------------------------------------------


@dataclass(frozen=True)
class RegisterFrame:
    """Where a C exit handler finds the guest's saved GPRs: a pointer in register
    ``pointer`` (its first argument), ``slot`` bytes per register in ``order`` (a profile's
    ``register_frame``).  Slots named ``rsp`` are skipped: handlers keep a copy of RBP or
    garbage there; the guest's RSP is GUEST_RSP in the VMCS."""

    pointer: str
    order: Tuple[str, ...]
    slot: int = 8

    def decode(self, data: bytes) -> Dict[str, int]:
        """The GPRs held in ``data`` (the frame's bytes)."""
        out: Dict[str, int] = {}
        for i, name in enumerate(self.order):
            if name != "rsp" and name in _GPRS:
                out[name] = int.from_bytes(data[i * self.slot:(i + 1) * self.slot], "little")
        return out


@dataclass(frozen=True)
class Site:
    """A breakpoint address and what stopping there means.

    ``role``: ``"entry"`` (HOST_RIP / the asm entry stub: guest GPRs are live),
    ``"handler"`` (a C handler, e.g. a per-reason function: GPRs are the handler's, unless
    ``frame`` says where the saved guest GPRs are) or ``"resume"`` (where the handler
    resumes the guest: the end of the exit)."""

    address: int
    role: str = "entry"
    label: str = ""
    frame: Optional[RegisterFrame] = None

    @property
    def guest_gprs(self) -> bool:
        """True when the CPU's GPRs are the guest's at this site."""
        return self.role == "entry"

    def name(self) -> str:
        """``label`` or the address."""
        return self.label or "0x%x" % self.address


class BreakpointSource(ExitSource):
    """Breakpoints at exit-handler sites (see :class:`Site`).

    ``vmcs`` maps a CPU to its VMCS address (from `vtdbg regions`, a profile or the user);
    ``cpu`` restricts stops to one CPU -- decided inside the breakpoint callback, which only
    compares the CPU number and returns (pykd: never run, step or read the session from a
    callback -- pykd-api.md section 3), so other CPUs' exits cost no stop.
    """

    description = "breakpoints"

    def __init__(self, target: Target, sites: Sequence[Site], vmcs: Dict[int, int], cpu: Optional[int] = None,
                 skip_magic: bool = True) -> None:
        super().__init__(target)
        if not sites:
            raise UsageError("no breakpoint site for the exit handler (give --at ADDR)")
        self.sites = list(sites)
        self.vmcs = dict(vmcs)
        self.cpu = cpu
        self.skip_magic = skip_magic
        self._handles: List[Breakpoint] = []
        self._hit: Optional[Tuple[Site, int]] = None
        self._by_name = {site.name(): site for site in self.sites}
        self.description = "breakpoints at " + ", ".join("%s (%s)" % (s.name(), s.role) for s in self.sites)

    def _callback(self, site: Site) -> Callable[[int], bool]:
        def on_hit(cpu: int) -> bool:
            # keep this trivial: it runs inside the debugger's event callback
            if self.cpu is not None and cpu >= 0 and cpu != self.cpu:
                return False
            self._hit = (site, cpu)
            return True
        return on_hit

    def arm(self) -> None:
        """One breakpoint per site; if one fails, the ones already set are removed."""
        try:
            for site in self.sites:
                self._handles.append(self.target.break_at(site.address, self._callback(site)))
        except BaseException:
            self.disarm()
            raise

    def next_stop(self, timeout: Optional[float]) -> Stop:
        """``resume`` (or a backend's ``cont(timeout)``) until one of our sites is hit."""
        while True:
            self._hit = None
            cont = getattr(self.target, "cont", None)
            if callable(cont):
                event = cont(timeout)
            else:
                self.target.resume()
                event = getattr(self.target, "last_stop", None)
            now = time.monotonic()
            event = event if isinstance(event, dict) else {}
            hit = self._hit
            if hit is None:
                kind = str(event.get("event") or "stopped")
                if kind == "magic" and self.skip_magic:
                    continue  # a guest's magic breakpoint is not ours to stop at
                return Stop("end", end_reason=kind if kind in END_REASONS else "stopped",
                            detail=str(event.get("detail") or ""), time=now)
            site, cpu = hit
            if cpu < 0:
                cpu = self.target.current_cpu()
            return Stop("resume" if site.role == "resume" else "exit", cpu, now, event.get("ticks"), site.name(),
                        site.guest_gprs)

    def snapshot(self, stop: Stop, gprs: bool) -> Snapshot:
        """One ``read_phys`` of the CPU's VMCS page and, when asked and meaningful, one
        ``registers()`` -- plus one ``read_virt`` of the register frame at a C handler
        whose frame the profile describes."""
        pa = self.vmcs.get(stop.cpu)
        if pa is None:
            raise TargetError("no VMCS address known for CPU %d (give --vmcs %d=PA)" % (stop.cpu, stop.cpu))
        site = self._by_name.get(stop.site or "")
        regs: Optional[Dict[str, int]] = None
        with _on_cpu(self.target, stop.cpu):
            page = read_exact(self.target, pa, REGION_SIZE)
            if gprs and stop.guest_gprs:
                regs = guest_gprs(self.target.registers())
            elif gprs and site is not None and site.frame is not None:
                frame = site.frame
                pointer = self.target.registers().get(frame.pointer)
                if pointer is None:
                    raise TargetError("no %s at %s to find the register frame with" % (frame.pointer, site.name()))
                regs = frame.decode(self.target.read_virt(pointer, frame.slot * len(frame.order)))
        return Snapshot(pa, page, regs)

    def disarm(self) -> List[str]:
        """Remove every breakpoint this source set, each one even if another fails."""
        warnings: List[str] = []
        alive = _target_alive(self.target)
        while self._handles:
            handle = self._handles.pop()
            try:
                handle.remove()
            except Exception as exc:  # keep removing the others; say which one is left
                if alive and _target_alive(self.target):
                    warnings.append("could not remove the breakpoint at 0x%x: %s" % (handle.address, exc))
        return warnings

    def armed_count(self) -> int:
        """Breakpoints still set."""
        return len(self._handles)

    def measures_handler(self) -> bool:
        """True with a resume site."""
        return any(s.role == "resume" for s in self.sites)


# -- a backend's stop-on-every-VM-exit switch --------------------------------------------------------


class VmexitBreakSource(ExitSource):
    """Stops after every VM exit through a backend switch (Bochs's ``vmexitbp``).

    The target must offer ``set_vmexit_break(bool)``, ``run_to_vm_exit(timeout)`` returning
    a stop event dict (``event``, ``cpu``, ``ticks``, ``detail``) and ``vmx_state()``
    with the current ``vmcsptr`` (vtdbg.target.bochs.BochsTarget does).  The CPU filter is
    applied after the stop (the switch has no CPU condition); ``resume_sites`` add plain
    breakpoints where the handler resumes the guest, to measure handler times.
    """

    description = "the target's stop-on-VM-exit switch"

    def __init__(self, target: Target, resume_sites: Sequence[Site] = (), skip_magic: bool = True) -> None:
        super().__init__(target)
        for name in ("set_vmexit_break", "run_to_vm_exit", "vmx_state"):
            if not callable(getattr(target, name, None)):
                raise TargetError("%s target has no stop-on-VM-exit switch (%s)" % (target.kind, name))
        self.resume_sites = list(resume_sites)
        self.skip_magic = skip_magic
        self._switch_on = False
        self._handles: List[Breakpoint] = []
        self._resume_hit: Optional[Tuple[Site, int]] = None

    def arm(self) -> None:
        """Switch on; then the resume breakpoints (all undone if any step fails)."""
        try:
            self._switch_on = True
            self.target.set_vmexit_break(True)  # type: ignore[attr-defined]
            for site in self.resume_sites:
                self._handles.append(self.target.break_at(site.address, self._resume_callback(site)))
        except BaseException:
            self.disarm()
            raise

    def _resume_callback(self, site: Site) -> Callable[[int], bool]:
        def on_hit(cpu: int) -> bool:
            self._resume_hit = (site, cpu)
            return True
        return on_hit

    def next_stop(self, timeout: Optional[float]) -> Stop:
        """``run_to_vm_exit``; a resume breakpoint comes back as a ``resume`` stop."""
        self._resume_hit = None
        event = self.target.run_to_vm_exit(timeout, skip_magic=self.skip_magic)  # type: ignore[attr-defined]
        now = time.monotonic()
        kind = str(event.get("event"))
        cpu = event.get("cpu")
        cpu = int(cpu) if isinstance(cpu, int) else self.target.current_cpu()
        if kind == "vmexit":
            return Stop("exit", cpu, now, event.get("ticks"), "vmexit", True)
        if kind == "breakpoint" and self._resume_hit is not None:
            site = self._resume_hit[0]
            return Stop("resume", cpu, now, event.get("ticks"), site.name(), False)
        reason = kind if kind in END_REASONS else "stopped"
        return Stop("end", cpu, now, event.get("ticks"), end_reason=reason, detail=str(event.get("detail") or kind))

    def snapshot(self, stop: Stop, gprs: bool) -> Snapshot:
        """``vmx_state`` for the VMCS pointer, one ``read_phys`` of the page, one
        ``registers()`` -- backends with a cheaper path override this."""
        with _on_cpu(self.target, stop.cpu):
            pa = self.target.vmx_state().get("vmcsptr")
            if not isinstance(pa, int):
                raise TargetError("CPU %d has no current VMCS at this VM exit" % stop.cpu)
            page = read_exact(self.target, pa, REGION_SIZE)
            regs = guest_gprs(self.target.registers()) if gprs else None
        return Snapshot(pa, page, regs, getattr(self.target, "preferred_layout", None))

    def disarm(self) -> List[str]:
        """Switch off and remove resume breakpoints (skipped when the target is gone)."""
        warnings: List[str] = []
        alive = _target_alive(self.target)
        while self._handles:
            handle = self._handles.pop()
            try:
                handle.remove()
            except Exception as exc:
                if alive and _target_alive(self.target):
                    warnings.append("could not remove the breakpoint at 0x%x: %s" % (handle.address, exc))
        if self._switch_on:
            self._switch_on = False
            if _target_alive(self.target):
                try:
                    self.target.set_vmexit_break(False)  # type: ignore[attr-defined]
                except Exception as exc:
                    if _target_alive(self.target):
                        warnings.append("could not switch off stop-on-VM-exit: %s" % exc)
        return warnings

    def armed_count(self) -> int:
        """Resume breakpoints plus the switch."""
        return len(self._handles) + (1 if self._switch_on else 0)

    def measures_handler(self) -> bool:
        """True with a resume site."""
        return bool(self.resume_sites)


# -- reading an exit -----------------------------------------------------------------------------


class ExitReader:
    """Decodes the exit fields of a VMCS page into an :class:`ExitRecord`.

    The layout is chosen once per (VMCS address, revision id): forced by ``layout_name``,
    else the backend's preferred layout (a Bochs release knows its own), else scored by
    :func:`vtdbg.core.vmcs.choose_layout`.
    """

    def __init__(self, layout_name: str = "auto") -> None:
        self.layout_name = layout_name
        self._chosen: Dict[Tuple[Optional[int], int, Optional[str]], Layout] = {}
        self._plans: Dict[str, List[Tuple[str, Any]]] = {}

    def layout_for(self, pa: Optional[int], page: bytes, preferred: Optional[str] = None) -> Layout:
        """The layout for this page (cached)."""
        from vtdbg.core.vmcs import choose_layout, header_of
        from vtdbg.layouts.registry import get_layout

        revision = header_of(page)["revision_id"]
        key = (pa, revision, preferred)
        if key not in self._chosen:
            if self.layout_name.lower() != "auto":
                self._chosen[key] = get_layout(self.layout_name)
            elif preferred:
                self._chosen[key] = get_layout(preferred)
            else:
                self._chosen[key] = choose_layout(page, "auto").layout
        return self._chosen[key]

    def _plan(self, layout: Layout) -> List[Tuple[str, Any]]:
        if layout.name not in self._plans:
            fields = layout.field_map()
            plan = []
            for key, name in EXIT_FIELDS:
                item = fields.get(lookup_field(name).encoding)
                if item is not None:
                    plan.append((key, item))
            self._plans[layout.name] = plan
        return self._plans[layout.name]

    def decode(self, page: bytes, layout: Layout) -> Dict[str, int]:
        """The exit fields of ``page`` by record key."""
        if len(page) < REGION_SIZE:
            raise DecodeError("a VMCS page is %d bytes; got %d" % (REGION_SIZE, len(page)))
        return {key: item.decode(page) for key, item in self._plan(layout)}

    def build(self, stop: Stop, snap: Snapshot) -> ExitRecord:
        """The record for ``stop``."""
        if snap.page is None:
            raise TargetError("no VMCS page was read for the exit on CPU %d" % stop.cpu)
        try:
            layout = self.layout_for(snap.vmcs_pa, snap.page, snap.layout)
        except LayoutError as exc:
            raise LayoutError("VMCS at %s: %s" % ("0x%x" % snap.vmcs_pa if snap.vmcs_pa is not None else "?",
                                                  exc)) from None
        return ExitRecord(cpu=stop.cpu, values=self.decode(snap.page, layout), gprs=snap.gprs, ticks=stop.ticks,
                          site=stop.site, vmcs_pa=snap.vmcs_pa, layout=layout.name)


# -- the JSONL log -------------------------------------------------------------------------------------

LOG_FORMAT = "vtdbg-trace"
LOG_VERSION = 1


class TraceLog:
    """A JSON Lines trace log: a header, one ``{"type": "exit", ...}`` line per recorded
    exit, an ``{"type": "end", ...}`` footer.  Each line is written whole with unbuffered
    writes (no Python buffer can hold half a line when the process stops) and flushed, so
    the file never ends in a truncated record except when the OS itself fails."""

    def __init__(self, path: str, header: Dict[str, Any]) -> None:
        self.path = path
        try:
            self._fd: Optional[int] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0),
                                              0o644)
        except OSError as exc:
            raise UsageError("cannot write the trace log %s: %s" % (path, exc.strerror)) from None
        doc = {"format": LOG_FORMAT, "version": LOG_VERSION}
        doc.update(header)
        self.write(doc)

    def write(self, obj: Dict[str, Any]) -> None:
        """Append one JSON object as one line."""
        if self._fd is None:
            raise VtdbgError("the trace log %s is closed" % self.path)
        data = (json.dumps(obj, sort_keys=False, separators=(",", ":")) + "\n").encode("utf-8")
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise VtdbgError("cannot write the trace log %s: %s" % (self.path, exc.strerror or exc)) from None

    def close(self, footer: Optional[Dict[str, Any]] = None) -> None:
        """Write the footer (if given) and close; idempotent."""
        if self._fd is None:
            return
        try:
            if footer is not None:
                self.write(dict({"type": "end"}, **footer))
        finally:
            os.close(self._fd)
            self._fd = None


@dataclass
class TraceFile:
    """A trace log read back."""

    header: Dict[str, Any]
    records: List[Dict[str, Any]]
    footer: Optional[Dict[str, Any]]
    warnings: List[str] = field(default_factory=list)


def read_trace_file(path: str) -> TraceFile:
    """Read a `vtdbg trace --log` file (or the JSON list of `vtdbg trace --json`).

    A last line without its newline (a writer that was killed) is dropped with a warning;
    any other line that is not a JSON object is an error naming its line number."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise UsageError("cannot read %s: %s" % (path, exc.strerror)) from None
    text = raw.decode("utf-8", errors="replace")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except ValueError as exc:
            raise DecodeError("%s: not a JSON list of exits: %s" % (path, exc)) from None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise DecodeError("%s: expected a JSON list of exit objects" % path)
        return TraceFile({}, list(items), None)
    warnings: List[str] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        warnings.append("%s: the last line is incomplete and was ignored" % path)
        lines.pop()
    header: Dict[str, Any] = {}
    records: List[Dict[str, Any]] = []
    footer: Optional[Dict[str, Any]] = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            raise DecodeError("%s line %d is not JSON" % (path, number)) from None
        if not isinstance(doc, dict):
            raise DecodeError("%s line %d is not a JSON object" % (path, number))
        if number == 1 and doc.get("format") is not None:
            if doc.get("format") != LOG_FORMAT:
                raise DecodeError("%s is not a vtdbg trace log (format %r)" % (path, doc.get("format")))
            if doc.get("version") != LOG_VERSION:
                raise DecodeError("%s: unsupported trace log version %r" % (path, doc.get("version")))
            header = doc
        elif doc.get("type") == "end":
            footer = doc
        elif doc.get("type", "exit") == "exit":
            records.append(doc)
    return TraceFile(header, records, footer, warnings)


# -- the loop ---------------------------------------------------------------------------------------


@dataclass
class TraceLimits:
    """When a trace ends: ``count`` recorded exits, ``seconds`` of tracing, ``timeout``
    seconds without any stop (backends that can wait with a timeout)."""

    count: Optional[int] = None
    seconds: Optional[float] = None
    timeout: Optional[float] = None


@dataclass
class TraceOutcome:
    """What a trace saw and why it ended."""

    records: List[ExitRecord]
    end: str
    detail: str = ""
    seen: int = 0
    seconds: float = 0.0
    warnings: List[str] = field(default_factory=list)
    requested: Optional[int] = None

    @property
    def complete(self) -> bool:
        """True when the trace ended the way it was asked to (exit status 0)."""
        if self.end in ("count", "seconds", "break"):
            return True
        return self.requested is None and self.end in _NATURAL_ENDS

    def summary(self) -> str:
        """One line: how many exits, how long, why it ended."""
        text = "%d exit%s recorded (%d seen) in %.2f s; %s" % (
            len(self.records), "" if len(self.records) == 1 else "s", self.seen, self.seconds,
            END_REASONS.get(self.end, self.end))
        return text + (" (%s)" % self.detail if self.detail and self.detail not in text else "")


RecordHook = Callable[[ExitRecord], None]


class Tracer:
    """Runs a source until the limits say stop; see the module docstring.

    ``events``: the enabled events; an exit is recorded when one matches (no events:
    every exit).  ``on_record`` is called once per recorded exit, in order (with handler
    times filled in when resume sites exist); its exceptions end the trace cleanly too.
    ``cpu`` restricts recording to one CPU (sources that can filter earlier do so).
    ``break_on_match`` ends the trace at the first recorded exit, whatever its events say.
    """

    def __init__(self, source: ExitSource, reader: Optional[ExitReader] = None, events: Sequence[Event] = (),
                 on_record: Optional[RecordHook] = None, gprs: bool = True, cpu: Optional[int] = None,
                 seen_base: int = 0, clock: Callable[[], float] = time.monotonic,
                 break_on_match: bool = False) -> None:
        self.source = source
        self.reader = reader or ExitReader()
        self.events = list(events)
        self.on_record = on_record
        self.gprs = gprs
        self.cpu = cpu
        self.seen_base = seen_base
        self.clock = clock
        self.break_on_match = break_on_match

    def _matches(self, record: ExitRecord) -> Tuple[bool, List[Event]]:
        if not self.events:
            return ANY.matches(record), []
        found = match_events(self.events, record)
        return bool(found), found

    def _drain(self, pending: Dict[int, ExitRecord], started: float, emit: RecordHook,
               timeout: Optional[float]) -> None:
        """After the last wanted exit: run on to the resume sites of the exits still
        waiting for their handler time, and stop at anything else (an exit beyond the
        count is not recorded)."""
        while pending:
            stop = self.source.next_stop(timeout)
            if stop.kind != "resume":
                return
            record = pending.pop(stop.cpu, None)
            if record is not None:
                self._handler_time(record, stop, started)
                emit(record)

    @staticmethod
    def _handler_time(record: ExitRecord, stop: Stop, started: float) -> None:
        if stop.ticks is not None and record.ticks is not None:
            record.handler_ticks = stop.ticks - record.ticks
        if record.time is not None:
            record.handler_seconds = round(max(stop.time - started - record.time, 0.0), 6)

    def run(self, limits: TraceLimits) -> TraceOutcome:
        """Trace; returns the outcome, or re-raises the first error after cleaning up."""
        started = self.clock()
        outcome = TraceOutcome([], "error", requested=limits.count)
        pending: Dict[int, ExitRecord] = {}
        measure = self.source.measures_handler()
        error: Optional[BaseException] = None

        def emit(record: ExitRecord) -> None:
            if self.on_record is not None:
                self.on_record(record)

        self.source.arm()
        try:
            while True:
                if limits.count is not None and len(outcome.records) >= limits.count:
                    outcome.end = "count"
                    self._drain(pending, started, emit, limits.timeout)
                    break
                elapsed = self.clock() - started
                if limits.seconds is not None and elapsed >= limits.seconds:
                    outcome.end = "seconds"
                    break
                wait = limits.timeout
                if limits.seconds is not None:
                    left = max(limits.seconds - elapsed, 0.0)
                    wait = left if wait is None else min(wait, left)
                stop = self.source.next_stop(wait)
                if stop.kind == "end":
                    outcome.end, outcome.detail = stop.end_reason or "stopped", stop.detail
                    if outcome.end == "timeout" and limits.seconds is not None and \
                            self.clock() - started >= limits.seconds - 0.05:
                        outcome.end = "seconds"
                    break
                if stop.kind == "resume":
                    record = pending.pop(stop.cpu, None)
                    if record is not None:
                        self._handler_time(record, stop, started)
                        emit(record)
                    continue
                outcome.seen += 1
                if self.cpu is not None and stop.cpu != self.cpu:
                    continue
                snap = self.source.snapshot(stop, self.gprs)
                record = self.reader.build(stop, snap)
                record.time = round(stop.time - started, 6)
                record.seen_index = self.seen_base + outcome.seen - 1
                wanted, matched = self._matches(record)
                if not wanted:
                    continue
                for event in matched:
                    event.hits += 1
                record.events = [e.id for e in matched]
                record.index = len(outcome.records)
                outcome.records.append(record)
                if measure:
                    # the previous exit of this CPU never reached a resume site (an exit
                    # handler that does not resume): hand it over without a handler time
                    previous = pending.pop(stop.cpu, None)
                    if previous is not None:
                        emit(previous)
                    pending[stop.cpu] = record
                else:
                    emit(record)
                if self.break_on_match or any(e.breaks for e in matched):
                    outcome.end = "break"
                    break
        except KeyboardInterrupt:
            outcome.end = "interrupted"
        except BaseException as exc:  # cleaned up below, then re-raised
            error = exc
        finally:
            outcome.warnings.extend(self.source.disarm())
            outcome.seconds = round(self.clock() - started, 6)
        if error is None:
            try:
                for cpu in sorted(pending):
                    emit(pending.pop(cpu))
            except KeyboardInterrupt:
                outcome.end = "interrupted"
        if error is not None:
            raise error
        return outcome


def host_rips(target: Target, vmcs: Dict[int, int], reader: Optional[ExitReader] = None) -> Dict[int, int]:
    """HOST_RIP of each CPU's VMCS (one page read per CPU), for breakpoint sites."""
    reader = reader or ExitReader()
    out: Dict[int, int] = {}
    for cpu, pa in sorted(vmcs.items()):
        page = read_exact(target, pa, REGION_SIZE)
        values = reader.decode(page, reader.layout_for(pa, page, getattr(target, "preferred_layout", None)))
        if values.get("host_rip"):
            out[cpu] = values["host_rip"]
    return out
