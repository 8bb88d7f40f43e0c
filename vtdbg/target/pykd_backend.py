"""The pykd backend: a Windows kernel session driven through pykd 0.3.4.15.

Three ways in, one class:

* inside WinDbg (``!py vtdbg ...``): :func:`open_windbg_session` wraps the session the
  debugger already has (a live kernel target or a loaded dump);
* standalone: ``--target kd:<attachKernel string>`` (:func:`open_kd`) attaches with
  ``pykd.attachKernel`` (``kd:net:port=50000,key=...``), ``kd:local`` for a local kernel;
* tests: :class:`PykdTarget` takes the module to use, so the Linux stand-in
  (tests/pykd_standin) can play pykd.

pykd is imported lazily, so importing this module never needs pykd.  Every pykd name
used here is documented in shared/reference/pykd-api.md (a test checks that); section
numbers below refer to that page.

Transactions: one Target call is one pykd call where it matters for the wire.  A VMCS
page is one ``loadBytes(pa, 4096, phyAddr=True)``.  ``registers()`` is one ``reg`` call
per name, but dbgeng fetches a processor's context once per stop, so that costs about
one round trip on KDNET.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from vtdbg.lib.errors import MemoryReadError, MemoryWriteError, TargetError, UsageError
from vtdbg.target.base import Breakpoint, Capability, Target
from vtdbg.target.paging import read_linear

NOT_INSTALLED = "pykd is not installed (Windows, Python <= 3.9 only)"

#: a live kernel session (KDNET, serial, pipe, USB)
LIVE_CAPS = (Capability.PHYS_READ | Capability.VIRT_READ | Capability.MSR_READ | Capability.REGS
             | Capability.CPU_SELECT | Capability.BREAKPOINTS | Capability.RESUME | Capability.STEP
             | Capability.WRITE | Capability.LIVE | Capability.SYMBOLS)
#: a kernel dump: memory, per-processor context and symbols, nothing to run, no MSRs
DUMP_CAPS = (Capability.PHYS_READ | Capability.VIRT_READ | Capability.REGS | Capability.CPU_SELECT
             | Capability.SYMBOLS)
#: local kernel debugging (lkd): memory and symbols only (pykd-api.md section 5)
LOCAL_CAPS = Capability.PHYS_READ | Capability.VIRT_READ | Capability.SYMBOLS

#: (vtdbg name, dbgeng name) of the registers ``registers()`` reports (section 2)
REGISTERS: Tuple[Tuple[str, str], ...] = tuple(
    [(n, n) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
                      "r12", "r13", "r14", "r15", "rip")]
    + [("rflags", "efl")]
    + [(n, n) for n in ("cs", "ds", "es", "fs", "gs", "ss", "cr0", "cr2", "cr3", "cr4", "cr8",
                        "dr0", "dr1", "dr2", "dr3", "dr6", "dr7", "gdtr", "gdtl", "idtr", "idtl", "tr", "ldtr")]
)
_DBGENG_NAME = {ours: theirs for ours, theirs in REGISTERS}

#: largest plausible number of physical memory runs (a garbage count must not drive a read)
_MAX_RUNS = 1024



def import_pykd() -> Any:
    """The pykd module, or a clean :class:`TargetError` where it cannot be imported."""
    try:
        import pykd
    except ImportError:
        raise TargetError(NOT_INSTALLED) from None
    return pykd


def _reason(exc: BaseException) -> str:
    """pykd's message (the exception text is its only carrier of detail, section 1)."""
    text = str(exc).strip()
    return text or type(exc).__name__


class PykdTarget(Target):
    """A kernel session seen through pykd.  Capabilities follow the session honestly:
    a live kernel target can run, step and read MSRs; a dump cannot."""

    kind = "kd"

    def __init__(self, pykd: Any, description: str = "pykd session", owns_session: bool = False,
                 local: bool = False) -> None:
        super().__init__(description)
        self._pykd = pykd
        self._owns_session = owns_session
        self._closed = False
        self._thread_ids: Optional[List[int]] = None
        self._current: Optional[int] = None
        self._ranges: Optional[List[Tuple[int, int]]] = None
        #: owning pykd breakpoint objects: dropping one removes the engine breakpoint (section 4)
        self._breakpoints: Dict[int, Any] = {}
        self._next_token = 0
        self._callback_error: Optional[BaseException] = None
        try:
            kernel = bool(pykd.isKernelDebugging())
            dump = bool(pykd.isDumpAnalyzing())
        except pykd.DbgException as exc:
            raise TargetError("no pykd debugging session: %s" % _reason(exc)) from None
        if not kernel:
            raise TargetError("vtdbg needs a kernel session (KDNET/serial attach or a kernel dump); "
                              "this debugger session is user mode")
        self.is_dump = dump
        if local:
            self.capabilities = LOCAL_CAPS
        elif dump:
            self.kind = "dump"
            self.capabilities = DUMP_CAPS
        else:
            self.capabilities = LIVE_CAPS

    # -- memory -------------------------------------------------------------------------
    def read_phys(self, pa: int, size: int) -> bytes:
        """One ``loadBytes(pa, size, phyAddr=True)``; pykd's list becomes bytes."""
        if size == 0:
            return b""
        if pa < 0 or size < 0 or pa + size > 1 << 64:
            raise MemoryReadError(pa, size, "address out of range")
        pykd = self._pykd
        try:
            values = pykd.loadBytes(pa, size, phyAddr=True)
        except (pykd.DbgException, OverflowError) as exc:
            raise MemoryReadError(pa, size, _reason(exc)) from None
        data = bytes(values)
        if len(data) != size:
            raise MemoryReadError(pa, size, "pykd returned %d bytes" % len(data))
        return data

    def read_virt(self, va: int, size: int, cr3: Optional[int] = None) -> bytes:
        """Linear memory.  Without ``cr3``, one pykd virtual ``loadBytes`` (the debugger
        translates in the current CPU's process context: one round trip for the whole
        range instead of five physical reads per page).  With ``cr3`` we walk the tables
        ourselves with physical reads, because pykd can only translate through the
        debugger's current process context (section 1: it has no VA->PA call)."""
        if size == 0:
            return b""
        if cr3 is not None:
            return read_linear(self.read_phys, cr3, va, size)
        if va < 0 or size < 0 or va + size > 1 << 64:
            raise MemoryReadError(va, size, "address out of range")
        pykd = self._pykd
        try:
            values = pykd.loadBytes(va, size)
        except (pykd.DbgException, OverflowError) as exc:
            raise MemoryReadError(va, size, _reason(exc)) from None
        data = bytes(values)
        if len(data) != size:
            raise MemoryReadError(va, size, "pykd returned %d bytes" % len(data))
        return data

    def write_phys(self, pa: int, data: bytes) -> None:
        """``writeBytes(pa, list, phyAddr=True)`` (pykd takes only a real list, section 1)."""
        self.require(Capability.WRITE, "writing memory")
        if not data:
            return
        pykd = self._pykd
        try:
            pykd.writeBytes(pa, list(data), phyAddr=True)
        except (pykd.DbgException, OverflowError) as exc:
            raise MemoryWriteError("cannot write %d bytes at physical 0x%x: %s"
                                   % (len(data), pa, _reason(exc))) from None
        finally:
            self.stop_generation += 1

    def phys_ranges(self) -> List[Tuple[int, int]]:
        """RAM runs from the kernel's ``nt!MmPhysicalMemoryBlock`` (read once, 4 calls);
        [] when symbols or the descriptor are unavailable."""
        if self._ranges is None:
            self._ranges = self._memory_runs()
        return list(self._ranges)

    def _memory_runs(self) -> List[Tuple[int, int]]:
        pykd = self._pykd
        try:
            if not pykd.is64bitSystem():
                return []
            holder = pykd.getOffset("nt!MmPhysicalMemoryBlock")
            block = pykd.ptrPtr(holder)
            # x64 PHYSICAL_MEMORY_DESCRIPTOR: ULONG NumberOfRuns (padded to 8), ULONG_PTR
            # NumberOfPages, then runs of {ULONG_PTR BasePage, ULONG_PTR PageCount}
            head = pykd.loadQWords(block, 2)
            runs = int(head[0]) & 0xFFFFFFFF
            if not 0 < runs <= _MAX_RUNS:
                return []
            raw = pykd.loadQWords(block + 16, 2 * runs)
        except (pykd.DbgException, OverflowError):
            return []
        out = [(int(raw[2 * i]) << 12, int(raw[2 * i + 1]) << 12) for i in range(runs) if raw[2 * i + 1]]
        return sorted(out)

    # -- CPU state ----------------------------------------------------------------------
    def read_msr(self, index: int) -> int:
        """``rdmsr`` on the current CPU (a missing MSR is a TargetError)."""
        self.require(Capability.MSR_READ, "reading MSRs")
        pykd = self._pykd
        try:
            return int(pykd.rdmsr(index))
        except (pykd.DbgException, OverflowError) as exc:
            raise TargetError("cannot read MSR 0x%x on CPU %d: %s"
                              % (index, self.current_cpu(), _reason(exc))) from None

    def registers(self) -> Dict[str, int]:
        """The registers of :data:`REGISTERS` the session has (``efl`` reported as rflags)."""
        self.require(Capability.REGS, "reading registers")
        pykd = self._pykd
        out: Dict[str, int] = {}
        for ours, theirs in REGISTERS:
            try:
                out[ours] = int(pykd.reg(theirs))
            except pykd.DbgException:
                continue  # e.g. a dump without debug registers: report what exists
        if "rip" not in out:
            raise TargetError("the debugger has no register context for CPU %d" % self.current_cpu())
        return out

    def set_register(self, name: str, value: int) -> None:
        """``setReg`` on the current CPU (live sessions only)."""
        self.require(Capability.WRITE | Capability.REGS, "changing registers")
        pykd = self._pykd
        try:
            pykd.setReg(_DBGENG_NAME.get(name.lower(), name.lower()), value)
        except (pykd.DbgException, OverflowError) as exc:
            raise TargetError("cannot set register %s: %s" % (name, _reason(exc))) from None
        finally:
            self.stop_generation += 1

    def _threads(self) -> List[int]:
        """Engine thread ids of the processors (kernel mode: one virtual thread per CPU)."""
        if self._thread_ids is None:
            pykd = self._pykd
            try:
                count = int(pykd.getNumberThreads())
                ids = [int(pykd.getThreadId(i)) for i in range(count)]
            except pykd.DbgException:
                count, ids = 0, []
            if count <= 0:
                # getNumberThreads answers 0 on failure (section 2); ask the kernel instead and
                # use dbgeng's kernel convention that processor n is engine thread n
                try:
                    count = int(pykd.ptrByte(pykd.getOffset("nt!KeNumberProcessors")))
                except pykd.DbgException:
                    count = 1
                ids = list(range(max(count, 1)))
            self._thread_ids = ids
        return self._thread_ids

    def cpu_count(self) -> int:
        """Processors of the target (cached: the count does not change within a session)."""
        return len(self._threads())

    def current_cpu(self) -> int:
        """The debugger's current processor (cached until the next switch or stop)."""
        if self._current is None:
            ids = self._threads()
            pykd = self._pykd
            try:
                current = int(pykd.getCurrentThreadId())
            except pykd.DbgException:
                current = ids[0]
            self._current = ids.index(current) if current in ids else 0
        return self._current

    @contextlib.contextmanager
    def select_cpu(self, cpu: int) -> Iterator[None]:
        """Make ``cpu`` the debugger's current processor for the block; the previous one is
        restored on every path (also when the block raises)."""
        count = self.cpu_count()
        if not 0 <= cpu < count:
            raise TargetError("CPU %d does not exist (this target has %d)" % (cpu, count))
        previous = self.current_cpu()
        if cpu == previous:
            yield
            return
        self.require(Capability.CPU_SELECT, "switching CPUs")
        self._switch_cpu(cpu)
        try:
            yield
        finally:
            self._restore_cpu(previous)

    def _restore_cpu(self, cpu: int) -> None:
        """Switch back to ``cpu``, retrying once: leaving the user's debugger on another
        processor is worse than one more engine call."""
        try:
            self._switch_cpu(cpu)
        except TargetError:
            try:
                self._switch_cpu(cpu)
            except TargetError as exc:
                raise TargetError("%s; the debugger may be left on another CPU (run ~%ds)" % (exc, cpu)) from None

    def _switch_cpu(self, cpu: int) -> None:
        pykd = self._pykd
        try:
            pykd.setCurrentThreadId(self._threads()[cpu])
        except pykd.DbgException as exc:
            self._current = None  # unknown now: ask again next time
            raise TargetError("cannot switch to CPU %d: %s" % (cpu, _reason(exc))) from None
        self._current = cpu

    # -- symbols ------------------------------------------------------------------------
    def modules(self) -> List[Tuple[str, int, int]]:
        """``getModulesList()`` as (name, base, size)."""
        self.require(Capability.SYMBOLS, "listing modules")
        pykd = self._pykd
        try:
            return [(str(m.name()), int(m.begin()), int(m.size())) for m in pykd.getModulesList()]
        except pykd.DbgException as exc:
            raise TargetError("cannot list modules: %s" % _reason(exc)) from None

    def symbol(self, name: str) -> Optional[int]:
        """``getOffset("module!symbol")``; None for an unknown symbol or module."""
        self.require(Capability.SYMBOLS, "resolving symbols")
        pykd = self._pykd
        try:
            return int(pykd.getOffset(name))
        except pykd.DbgException:  # SymbolException, or DbgException for an unknown module
            return None

    def field_offset(self, type_name: str, field_name: str) -> Optional[int]:
        """``typeInfo("module!Type").fieldOffset(field)``; None when the type or field is unknown."""
        self.require(Capability.SYMBOLS, "reading type information")
        pykd = self._pykd
        try:
            return int(pykd.typeInfo(type_name).fieldOffset(field_name))
        except (pykd.DbgException, AttributeError):
            return None

    def type_size(self, type_name: str) -> Optional[int]:
        """``typeInfo("module!Type").size()``; None when the type is unknown."""
        self.require(Capability.SYMBOLS, "reading type information")
        pykd = self._pykd
        try:
            return int(pykd.typeInfo(type_name).size())
        except (pykd.DbgException, AttributeError):
            return None

    def symbol_at(self, address: int) -> Optional[str]:
        """``findSymbol(address)``; None when it can only answer with a bare number."""
        self.require(Capability.SYMBOLS, "resolving symbols")
        pykd = self._pykd
        try:
            text = str(pykd.findSymbol(address))
        except pykd.DbgException:
            return None
        # pykd answers "mod!sym+1a", "mod+1a", or bare hex when no module covers the address
        return text if "!" in text or "+" in text else None

    # -- execution control ----------------------------------------------------------------
    def break_at(self, address: int, on_hit: Callable[[int], bool]) -> Breakpoint:
        """A software breakpoint whose owning pykd object we keep until ``remove()`` (or
        :meth:`close`): pykd removes the engine breakpoint when that object dies."""
        self.require(Capability.BREAKPOINTS, "setting breakpoints")
        pykd = self._pykd

        def callback() -> bool:
            # called by pykd with no arguments (0.3 protocol); we return a real bool because
            # the int 1 would mean "no change" to pykd, not "break"
            try:
                return bool(on_hit(self._event_cpu()))
            except Exception as exc:  # stop, and let resume() raise it on the script's side
                if self._callback_error is None:
                    self._callback_error = exc
                return True

        try:
            owner = pykd.setBp(address, callback)
        except (pykd.DbgException, OverflowError) as exc:
            raise TargetError("cannot set a breakpoint at 0x%x: %s" % (address, _reason(exc))) from None
        token = self._next_token
        self._next_token += 1
        self._breakpoints[token] = owner

        def remove() -> None:
            held = self._breakpoints.pop(token, None)
            if held is not None:
                try:
                    held.remove()
                except pykd.DbgException:
                    pass  # already gone from the engine (e.g. the user cleared it with bc)

        return Breakpoint(address, remove)

    def _event_cpu(self) -> int:
        """The CPU that hit a breakpoint: dbgeng makes the event thread current."""
        pykd = self._pykd
        try:
            current = int(pykd.getCurrentThreadId())
        except pykd.DbgException:
            return -1
        ids = self._threads()
        return ids.index(current) if current in ids else -1

    def _run(self, what: str, call: Callable[[], Any]) -> None:
        pykd = self._pykd
        self._callback_error = None
        try:
            status = call()
        except pykd.DbgException as exc:
            raise TargetError("cannot %s: %s" % (what, _reason(exc))) from None
        finally:
            self._current = None  # the engine makes the stopping CPU current
            self.stop_generation += 1
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error
        if int(status) == int(pykd.executionStatus.NoDebuggee):
            raise TargetError("the target is gone (no debuggee after %s)" % what)

    def resume(self) -> None:
        """``go()``: run until a breakpoint handler asks to stop (or the user breaks in)."""
        self.require(Capability.RESUME, "resuming")
        pykd = self._pykd
        self._run("resume", pykd.go)

    def step(self) -> None:
        """``trace()``: one instruction, stepping into calls (pykd's ``step`` steps over)."""
        self.require(Capability.STEP, "single-stepping")
        pykd = self._pykd
        self._run("single-step", pykd.trace)

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Remove every breakpoint we set; a session we attached ourselves is detached."""
        for token in list(self._breakpoints):
            held = self._breakpoints.pop(token)
            with contextlib.suppress(Exception):
                held.remove()
        if self._owns_session and not self._closed:
            pykd = self._pykd
            with contextlib.suppress(Exception):
                pykd.detachAllProcesses()
        self._closed = True


def _inside_windbg(pykd: Any) -> bool:
    try:
        return bool(pykd.isWindbgExt())
    except pykd.DbgException:
        return False


def open_kd(rest: str) -> PykdTarget:
    """Factory for ``kd:<attachKernel string>`` (``kd:net:port=50000,key=1.2.3.4``,
    ``kd:com:port=com1,baud=115200``, ``kd:local``).  Blocks until the target breaks in."""
    pykd = import_pykd()
    if _inside_windbg(pykd):
        raise UsageError("inside WinDbg the current session is the target; drop --target kd:...")
    options = rest.strip()
    local = options.lower() == "local"
    try:
        pykd.attachKernel("" if local else options)
    except pykd.DbgException as exc:
        raise TargetError("cannot attach to the kernel with %r: %s" % (options, _reason(exc))) from None
    return PykdTarget(pykd, "kd:" + options, owns_session=True, local=local)


def open_windbg_session() -> PykdTarget:
    """The session of the WinDbg/kd instance running this ``!py`` script."""
    pykd = import_pykd()
    if not _inside_windbg(pykd):
        raise TargetError("not running inside WinDbg (`!py`); use --target kd:... or a dump")
    return PykdTarget(pykd, "WinDbg session")
