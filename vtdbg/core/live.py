"""Live VMREAD: read (and write) the current VMCS by executing VMX instructions on the target.

The only authoritative source of a VMCS's contents is the processor: the region in memory
may be stale (the CPU can cache the current VMCS) and its format is undocumented.  So on a
live target stopped in VMX root with a current VMCS, vtdbg places a small stub
(:mod:`vtdbg.core.vmread_stub`) in a scratch area, runs it once and reads its results back
in one read.  See docs/live-vmread.md for the whole story; the rules this module keeps:

* **The target is sacred.**  Every byte written and every register changed is put back on
  every path -- success, a failed read or write, a fault inside the stub, a missing stop, a
  lost connection, Ctrl+C -- and the restore is verified by reading it back.  If anything
  could not be put back, :class:`RestoreError` says exactly what.
* **Refuse rather than guess.**  Not in VMX root (VMREAD would cause a VM exit into the
  hypervisor under test), not at CPL 0, no VMCS current, no safe scratch: a clear error.
* **VM_INSTRUCTION_ERROR survives.**  A VMREAD of a field the CPU does not support fails
  with VMfailValid and overwrites that field; the stubs save it first and VMWRITE it back
  (IA32_VMX_MISC[29]), and without that capability they only try fields every VMX
  processor has (:data:`BASELINE_FIELDS`).
* **Few transactions.**  A full read is 8 debugger transactions beyond register set-up
  (docs/live-vmread.md counts them per backend).

Two ways to run code: the stub (needs a scratch area to write), and, when nothing may be
written, an existing ``VMREAD reg, reg`` in the hypervisor's image single-stepped once per
field (:func:`gadget_read`, the technique of tandasat/hvext; slow but writes no memory).
"""
from __future__ import annotations

import contextlib
import struct
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from vtdbg.arch.fields import all_fields, encoding_type, encoding_width, field_by_encoding
from vtdbg.core import vmread_stub as stub
from vtdbg.core.vmcs import Vmcs
from vtdbg.lib.errors import TargetError, UsageError, VtdbgError
from vtdbg.target.base import Breakpoint, Capability, Target

#: RFLAGS while a stub runs: only the reserved bit 1.  IF = 0 keeps interrupts out, TF = 0
#: avoids a debug trap per instruction, DF = 0 makes REP STOSB count upwards.
STUB_RFLAGS = 0x2
_EFER_LMA = 1 << 10
_AR_L = 1 << 13
_PAGE = 0x1000
#: scratch size `--scratch PA` assumes when none is given: the compact reader's output (6 KiB)
#: plus the list program, and a 4 KiB page for discovery's scratch VMCS
DEFAULT_SCRATCH_SIZE = 0x4000
#: the shortest uniform run of padding worth using for code / data (image padding)
_MIN_CODE_PAD = (stub.CODE_OFFSET + len(stub.LIST_CODE) + 15) & ~15
_MIN_DATA_PAD = 0x200

# -- fields every VMX processor supports (SDM Vol. 3D Appendix B lists no condition) -----------
_BASELINE_RANGES: Tuple[Tuple[int, int], ...] = (
    (0x0800, 0x080E), (0x0C00, 0x0C0C),                    # guest / host selectors
    (0x2000, 0x2002), (0x2006, 0x200C), (0x2010, 0x2010),  # I/O bitmaps, MSR areas, executive VMCS, TSC offset
    (0x2800, 0x2802),                                      # VMCS link pointer, guest IA32_DEBUGCTL
    (0x4000, 0x401A),                                      # 32-bit controls up to the entry instruction length
    (0x4400, 0x440E),                                      # read-only exit information
    (0x4800, 0x482A),                                      # guest limits, AR, interruptibility, ..., SYSENTER_CS
    (0x4C00, 0x4C00),                                      # host SYSENTER_CS
    (0x6000, 0x600E), (0x6400, 0x640A),                    # masks, shadows, CR3 targets; exit qualification..GLA
    (0x6800, 0x6826), (0x6C00, 0x6C16),                    # natural-width guest and host state
)
BASELINE_FIELDS: Set[int] = {f.encoding for f in all_fields()
                             if any(lo <= f.encoding <= hi for lo, hi in _BASELINE_RANGES)}


class LiveError(TargetError):
    """A live read or write was refused or failed; the target was restored."""


class RestoreError(TargetError):
    """Something written to the target could not be put back (the message says what)."""


# -- where the stub runs ------------------------------------------------------------------------
@dataclass
class Area:
    """A range of target memory: linear address (as the stub sees it), physical address
    (where the debugger writes), size."""

    va: int
    pa: int
    size: int


@dataclass
class Scratch:
    """Where stubs may run: ``code`` must be executable, ``data`` writable; ``data`` None
    means one region serves both (code first, data after it)."""

    code: Area
    data: Optional[Area] = None
    source: str = ""
    #: paging-structure entries that map the areas: (physical address, value when checked,
    #: is the leaf, first linear address it maps, end).  Running the stub may set their
    #: Accessed/Dirty bits; they are put back.
    paging: List[Tuple[int, int, bool, int, int]] = field(default_factory=list)

    @property
    def single(self) -> bool:
        """One contiguous region (what Bochs's erase strategy and discovery need)."""
        return self.data is None

    def to_json(self) -> Dict[str, Any]:
        """Where the stub ran, for the command's JSON."""
        doc: Dict[str, Any] = {"code_va": self.code.va, "code_pa": self.code.pa, "size": self.code.size,
                               "source": self.source}
        if self.data is not None:
            doc.update(data_va=self.data.va, data_pa=self.data.pa, data_size=self.data.size)
        return doc


def inner_attr(target: Any, name: str) -> Any:
    """An optional backend method (e.g. Bochs's ``vmx_state``) on ``target`` or on a target
    it wraps (RecordingTarget.inner); None if no layer has it.  Core code may not import
    backends, so extensions are found by name."""
    seen = 0
    while target is not None and seen < 8:
        if getattr(type(target), name, None) is not None or name in getattr(target, "__dict__", {}):
            return getattr(target, name)
        target = getattr(target, "inner", None)
        seen += 1
    return None


def transactions(target: Target) -> Optional[int]:
    """The target's own transaction counter (RecordingTarget, BochsTarget), if it has one."""
    value = getattr(target, "transactions", None)
    return int(value) if isinstance(value, int) else None


PagingEntry = Tuple[int, int, bool, int, int]
#: mappings already checked, per target and (va, pa, size, cr3)
_VALIDATED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def scratch_at(target: Target, pa: int, size: int = DEFAULT_SCRATCH_SIZE, va: Optional[int] = None) -> Scratch:
    """A user-given scratch region at physical ``pa`` (``--scratch PA``).

    The stub sees linear addresses, so we need where ``pa`` is mapped: ``va`` when given
    (``--scratch-va``), else the identity mapping, which is checked by walking the current
    page tables (the Bochs lab and many small hypervisors identity-map their memory)."""
    if pa & 0xFFF or pa < 0:
        raise UsageError("--scratch 0x%x: give a 4 KiB-aligned physical address" % pa)
    if size < 0x1000 or size & 0xFFF:
        raise UsageError("--scratch-size must be a multiple of 4 KiB")
    linear = pa if va is None else va
    if linear & 0xFFF:
        raise UsageError("--scratch-va 0x%x is not 4 KiB aligned" % linear)
    try:
        entries = check_mapping(target, linear, pa, size, writable=True, executable=True)
    except LiveError as exc:
        hint = "" if va is not None else " (give --scratch-va VA where the hypervisor maps it)"
        raise LiveError("scratch 0x%x: %s%s" % (pa, exc, hint)) from None
    return Scratch(Area(linear, pa, size), source="--scratch 0x%x%s" % (pa, "" if va is None else " at 0x%x" % va),
                   paging=entries)


def check_mapping(target: Target, va: int, pa: int, size: int, writable: bool,
                  executable: bool) -> List[PagingEntry]:
    """Check that linear [va, va+size) maps [pa, pa+size) with the wanted permissions in the
    current CPU's page tables; returns the paging entries involved (LiveError otherwise).

    Results are remembered per target and CR3: a one-shot command pays the walk (a read per
    level) once, a shell session once per scratch area."""
    from vtdbg.target.paging import translate

    if not target.has(Capability.REGS):
        return []
    regs = target.registers()
    cr0, cr3 = regs.get("cr0"), regs.get("cr3")
    if cr3 is None or cr0 is None or not cr0 & (1 << 31):
        if va != pa:
            raise LiveError("paging is off, so linear 0x%x is physical 0x%x, not 0x%x" % (va, va, pa))
        return []
    key = (va, pa, size, cr3)
    known = _VALIDATED.setdefault(target, {})
    if key in known:
        return list(known[key])
    entries: List[PagingEntry] = []
    tables: Dict[int, bytes] = {}

    def read_entry(where: int, length: int) -> bytes:
        # a paging structure is read whole, once: neighbouring pages share their tables
        base = where & ~0xFFF
        if base not in tables:
            tables[base] = target.read_phys(base, _PAGE)
        return tables[base][where - base:where - base + length]

    page = va & ~0xFFF
    checked = 0
    while page < va + size and checked < 64:
        try:
            phys, walk = translate(read_entry, cr3, page)
        except VtdbgError as exc:
            raise LiveError("linear 0x%x is not mapped (%s)" % (page, exc)) from None
        if phys != pa + (page - va):
            raise LiveError("linear 0x%x maps physical 0x%x, not 0x%x" % (page, phys, pa + (page - va)))
        values = [entry for _, entry in walk]
        if writable and not all(entry & 2 for entry in values):
            raise LiveError("linear 0x%x is mapped read-only" % page)
        if executable and any(entry >> 63 for entry in values):
            raise LiveError("linear 0x%x is mapped no-execute" % page)
        for number, (where, entry) in enumerate(walk):
            # the linear range this entry maps: 512 GiB, 1 GiB, 2 MiB or 4 KiB
            span = 1 << (39 - 9 * number)
            low = page & ~(span - 1)
            if all(where != seen[0] for seen in entries):
                entries.append((where, entry, number == len(walk) - 1, low, low + span))
        # a large page covers the rest of its range at once
        leaf_size = {4: _PAGE, 3: 1 << 21, 2: 1 << 30}.get(len(walk), _PAGE)
        page = (page & ~(leaf_size - 1)) + leaf_size
        checked += 1
    known[key] = list(entries)
    return entries


def scratch_from_image(target: Target, module: str, base: int, size: int) -> Scratch:
    """Scratch in a driver's own image padding: the zero bytes between the end of an
    executable section's data and its page end (for code), and of a writable one (data).
    Such bytes belong to the driver, are never executed nor read, and are mapped with the
    section's permissions, which are checked in the page tables."""
    header = target.read_virt(base, _PAGE)
    if header[:2] != b"MZ":
        raise LiveError("%s at 0x%x has no MZ header" % (module, base))
    pe = struct.unpack_from("<I", header, 0x3C)[0]
    if pe > _PAGE - 0x108 or header[pe:pe + 4] != b"PE\0\0":
        raise LiveError("%s at 0x%x has no PE header" % (module, base))
    count, optional_size = struct.unpack_from("<H", header, pe + 6)[0], struct.unpack_from("<H", header, pe + 20)[0]
    table = pe + 24 + optional_size
    code_pad: Optional[Tuple[int, int]] = None
    data_pad: Optional[Tuple[int, int]] = None
    for index in range(min(count, 96)):
        at = table + 40 * index
        if at + 40 > len(header):
            break
        vsize, rva = struct.unpack_from("<II", header, at + 8)
        flags = struct.unpack_from("<I", header, at + 36)[0]
        start = rva + vsize
        end = (start + 0xFFF) & ~0xFFF
        if end - start <= 0 or rva + vsize > size:
            continue
        if flags & 0x20000000 and not flags & 0x80000000 and code_pad is None and end - start >= _MIN_CODE_PAD:
            code_pad = (base + start, end - start)      # executable, not writable
        elif flags & 0x80000000 and not flags & 0x20000000 and data_pad is None and end - start >= _MIN_DATA_PAD:
            data_pad = (base + start, end - start)      # writable, not executable
    if code_pad is None or data_pad is None:
        raise LiveError("%s has no padding large enough for the stub (code >= %d, data >= %d bytes); give --scratch"
                        % (module, _MIN_CODE_PAD, _MIN_DATA_PAD))
    from vtdbg.target.paging import translate

    areas = []
    paging: List[PagingEntry] = []
    cr3 = target.registers()["cr3"]
    for (va, length), writable in ((code_pad, False), (data_pad, True)):
        start = (va + 15) & ~15  # 16-byte aligned, and still inside the padding's page
        length -= start - va
        pa, _ = translate(target.read_phys, cr3, start)
        if target.read_phys(pa, length) != bytes(length):
            raise LiveError("%s: the padding at 0x%x is not all zero; not using it" % (module, start))
        try:
            paging += check_mapping(target, start, pa, length, writable=writable, executable=not writable)
        except LiveError as exc:
            raise LiveError("%s padding: %s" % (module, exc)) from None
        areas.append(Area(start, pa, length))
    return Scratch(areas[0], areas[1], source="%s image padding" % module, paging=paging)


# -- running a stub -------------------------------------------------------------------------------
#: builds a repair program from (the data area after a partial run, its bytes before the run)
Repair = Callable[[bytes, bytes], Optional[stub.Program]]


@dataclass
class RunOutput:
    """What one stub run produced: the data area, and an extra range read before cleanup."""

    data: bytes
    extra: bytes = b""
    notes: List[str] = field(default_factory=list)


def _align(value: int, to: int) -> int:
    return (value + to - 1) & ~(to - 1)


def set_registers(target: Target, values: Dict[str, int]) -> None:
    """Set several registers through the protocol's batch call (Bochs packs them into one
    debugger line; other backends set them one by one)."""
    target.set_registers(dict(values))


class StubRunner:
    """Runs :class:`vmread_stub.Program` objects in a scratch area of one target CPU.

    ``bochs`` selects the Bochs strategy: stop on the stub's magic breakpoint instead of a
    debugger breakpoint, and restore the area by letting the CPU refill it (one ``c``)
    instead of writing every byte back (Bochs writes 4 bytes per debugger command), then
    empty Bochs's decoded-instruction cache with INVD (see vmread_stub, "erase tail")."""

    def __init__(self, target: Target, scratch: Scratch, bochs: bool = False) -> None:
        self.target = target
        self.scratch = scratch
        self.bochs = bochs
        self.log: List[str] = []

    # -- layout of one run --------------------------------------------------------------------
    def layout(self, program: stub.Program, extra: int) -> Dict[str, int]:
        code = self.scratch.code
        code_end = stub.CODE_OFFSET + len(program.code)
        if self.scratch.single:
            data_off = _align(code_end, stub.DATA_GAP)
            data_end = data_off + max(program.data_size, len(program.data_in))
            extra_off = _align(data_end, _PAGE) if extra else data_end
            end = extra_off + extra
            if end > code.size:
                raise LiveError("the scratch area is too small: this stub needs 0x%x bytes, %s has 0x%x"
                                % (end, self.scratch.source or "it", code.size))
            return {"data_va": code.va + data_off, "data_pa": code.pa + data_off, "data_off": data_off,
                    "code_end": code_end, "extra_off": extra_off, "end": end}
        data = self.scratch.data
        assert data is not None
        if extra:
            raise LiveError("this operation needs one contiguous scratch region; give --scratch")
        if code_end > code.size or max(program.data_size, len(program.data_in)) > data.size:
            raise LiveError("the scratch areas are too small for this stub")
        return {"data_va": data.va, "data_pa": data.pa, "data_off": 0, "code_end": code_end,
                "extra_off": 0, "end": code_end}

    def _touched(self, lay: Dict[str, int], program: stub.Program) -> List[Tuple[int, int]]:
        """(pa, size) ranges this run may change, in the order they are saved."""
        code = self.scratch.code
        if self.scratch.single:
            return [(code.pa, lay["end"])]
        data = self.scratch.data
        assert data is not None
        return [(code.pa, lay["code_end"]), (data.pa, max(program.data_size, len(program.data_in)))]

    # -- the run ------------------------------------------------------------------------------------
    def run(self, program: stub.Program, extra: int = 0, repair: Optional[Repair] = None) -> RunOutput:
        """Place ``program``, run it to its stop, read its data area (and ``extra`` bytes
        of a page-aligned range after it, e.g. discovery's scratch VMCS) and restore
        everything.  Raises :class:`LiveError` (target restored) or :class:`RestoreError`.

        ``repair(partial data, original data bytes)`` is asked, when the stub started but did
        not reach its stop, for a program that undoes what it did to VMX state (the error
        field, the current-VMCS pointer); that program runs before the memory is restored."""
        target = self.target
        lay = self.layout(program, extra)
        code = self.scratch.code
        try:
            regs0 = target.registers()
            check_cpu_state(regs0)
            touched = self._touched(lay, program)
            originals = [target.read_phys(pa, size) for pa, size in touched]
        except LiveError:
            raise
        except VtdbgError as exc:
            raise LiveError("cannot prepare the stub: %s (nothing was changed)" % _describe(exc)) from exc
        erase = self.bochs and self.scratch.single and _uniform(originals[0][stub.CODE_OFFSET:])
        entry_va = code.va + stub.CODE_OFFSET + program.entry
        stop_va = code.va + stub.CODE_OFFSET + program.stop
        inputs = {name: _input(value, lay["data_va"]) for name, value in program.inputs.items()}
        owned = set(program.clobbers) | set(inputs) | {"rip", "rflags"}
        if self.bochs:
            owned |= {"rdi", "rcx", "rax", "r9"}  # the erase tail's registers
        state = _RunState()
        output = RunOutput(b"")
        primary: Optional[BaseException] = None
        try:
            self._write_code(program, lay, originals, state)
            if erase and {"rcx", "r9", "al"} <= set(program.keeps) and "rax" not in inputs:
                # the program leaves RCX, R9 and AL alone: set the erase inputs with its own
                inputs.update(self._erase_inputs(lay, originals[0]))
                state.erase_ready = True
            regs = dict(inputs)
            regs.update(rip=entry_va, rflags=STUB_RFLAGS)
            state.registers_changed = True
            set_registers(target, regs)
            self._run_to(stop_va, state, "the stub")
            state.stub_finished = True
            output.data = target.read_phys(lay["data_pa"], program.data_size)
            if extra:
                output.extra = target.read_phys(code.pa + lay["extra_off"], extra)
        except BaseException as exc:  # noqa: B902 - every path restores, KeyboardInterrupt too
            primary = exc
        if primary is not None and state.resumed and not state.stub_finished and repair is not None \
                and not isinstance(primary, KeyboardInterrupt):
            self._repair(program, lay, originals, repair, state)
        problems = self._restore(program, lay, touched, originals, regs0, owned, erase, state)
        output.notes.extend(state.notes)
        if problems:
            detail = "; ".join(problems)
            if primary is not None and not isinstance(primary, KeyboardInterrupt):
                raise RestoreError("%s, and restoring the target failed: %s" % (_describe(primary), detail)) \
                    from primary
            raise RestoreError("the target could not be restored completely: %s" % detail) from primary
        if primary is not None:
            if isinstance(primary, KeyboardInterrupt):
                raise primary
            extra_notes = (" (%s)" % "; ".join(state.notes)) if state.notes else ""
            if isinstance(primary, LiveError):
                raise LiveError("%s%s" % (_describe(primary), extra_notes)) from primary
            if isinstance(primary, VtdbgError):
                raise LiveError("%s (the target was restored%s)" % (_describe(primary), extra_notes)) from primary
            raise primary
        return output

    def _repair(self, program: stub.Program, lay: Dict[str, int], originals: List[bytes], repair: Repair,
                state: _RunState) -> None:
        """After a partial run: flush Bochs's cache, read what the stub left, run the repair."""
        target = self.target
        code = self.scratch.code
        try:
            if self.bochs and state.tail_written:
                set_registers(target, {"rip": code.va + stub.TAIL_INVD})
                self._run_to(code.va + stub.TAIL_STOP, state, "the cache flush")
            partial = target.read_phys(lay["data_pa"], program.data_size)
            start = lay["data_off"] if self.scratch.single else 0
            source = originals[0] if self.scratch.single else originals[1]
            fix = repair(partial, source[start:start + program.data_size])
            if fix is None:
                return
            StubRunner(target, self.scratch, self.bochs).run(fix)
            state.notes.append("VMX state the partial run changed was put back by a repair stub")
        except KeyboardInterrupt:
            state.notes.append("the repair was interrupted")
        except Exception as exc:  # the restore below still runs; say what could not be repaired
            state.notes.append("VMX state may differ (VM_INSTRUCTION_ERROR or the current VMCS): repair failed: %s"
                               % _describe(exc))

    def _write_code(self, program: stub.Program, lay: Dict[str, int], originals: List[bytes],
                    state: _RunState) -> None:
        code = self.scratch.code
        target = self.target
        text = (stub.TAIL if self.bochs else bytes(stub.CODE_OFFSET)) + program.code
        start = 0 if self.bochs else stub.CODE_OFFSET
        if self.scratch.single and program.data_in and (not self.bochs or lay["data_off"] - lay["code_end"] <= 16):
            # one write of code, the (original) gap bytes and the data: a debugger that writes
            # any size in one call saves a transaction; on Bochs only when the gap is small
            gap = originals[0][lay["code_end"]:lay["data_off"]]
            state.written = True
            target.write_phys(code.pa + start, text[start:] + gap + program.data_in)
            state.tail_written = self.bochs
            return
        state.written = True
        target.write_phys(code.pa + start, text[start:])
        state.tail_written = self.bochs
        if program.data_in:
            target.write_phys(lay["data_pa"], program.data_in)

    def _erase_inputs(self, lay: Dict[str, int], original: bytes) -> Dict[str, int]:
        code = self.scratch.code
        return {"r9": code.va + stub.CODE_OFFSET, "rcx": lay["end"] - stub.CODE_OFFSET,
                "rax": original[stub.CODE_OFFSET] if len(original) > stub.CODE_OFFSET else 0}

    def _run_to(self, stop_va: int, state: _RunState, what: str) -> None:
        """Resume and check that the CPU stopped at ``stop_va``."""
        target = self.target
        handle: Optional[Breakpoint] = None
        if not self.bochs:
            handle = target.break_at(stop_va, lambda cpu: True)
            state.breakpoint = handle
        state.resumed = True
        target.resume()
        if handle is not None:
            state.breakpoint = None
            handle.remove()
        rip = target.registers().get("rip")
        if rip != stop_va:
            raise LiveError("%s did not reach its stop at 0x%x: the CPU is at %s (a fault inside the stub, "
                            "or another event stopped the target first)"
                            % (what, stop_va, "0x%x" % rip if rip is not None else "an unknown address"))

    def _restore_paging(self, lay: Dict[str, int], program: stub.Program,
                        attempt: Callable[[str, Callable[[], None]], bool]) -> None:
        code = self.scratch.code
        used = [(code.va, code.va + (lay["end"] if self.scratch.single else lay["code_end"]))]
        if not self.scratch.single:
            used.append((lay["data_va"], lay["data_va"] + max(program.data_size, len(program.data_in))))
        _restore_paging_entries(self.target, self.scratch.paging, used, attempt)

    def _restore(self, program: stub.Program, lay: Dict[str, int], touched: List[Tuple[int, int]],
                 originals: List[bytes], regs0: Dict[str, int], owned: Set[str], erase: bool,
                 state: _RunState) -> List[str]:
        """Undo everything; returns what could not be undone (empty list: all restored)."""
        target = self.target
        code = self.scratch.code
        problems: List[str] = []
        interrupted = False

        def attempt(what: str, action: Callable[[], None]) -> bool:
            """Run one restore step; a failure is tried once more (a debugger round trip
            can fail once), then recorded and the other steps still run."""
            nonlocal interrupted
            error = ""
            for _ in range(2):
                try:
                    action()
                    return True
                except KeyboardInterrupt:
                    interrupted = True  # finish the restore first, then honour Ctrl+C
                    error = "interrupted"
                except RestoreError as exc:  # a verified difference: retrying the check won't help
                    error = _describe(exc)
                    break
                except Exception as exc:  # keep restoring whatever else can be restored
                    error = _describe(exc)
            problems.append("%s: %s" % (what, error))
            return False

        if state.breakpoint is not None:
            handle = state.breakpoint
            attempt("removing the stop breakpoint", handle.remove)
        memory_done = False
        if self.bochs and state.tail_written:
            if erase and state.stub_finished:
                # phase 2: the CPU refills the area with its original byte and flushes Bochs's cache
                def erase_run() -> None:
                    regs = {"rip": code.va}
                    if not state.erase_ready:
                        regs.update(self._erase_inputs(lay, originals[0]))
                    set_registers(target, regs)
                    self._run_to(code.va + stub.TAIL_STOP, state, "the erase tail")

                if attempt("refilling the scratch area", erase_run):
                    memory_done = attempt("restoring the erase tail", lambda: target.write_phys(
                        code.pa, originals[0][:stub.CODE_OFFSET]))
            if not memory_done:
                # stale decoded copies of the stub must not outlive it in Bochs: INVD only
                def flush() -> None:
                    set_registers(target, {"rip": code.va + stub.TAIL_INVD})
                    self._run_to(code.va + stub.TAIL_STOP, state, "the cache flush")

                if not attempt("flushing Bochs's instruction cache", flush):
                    state.notes.append("Bochs may still hold decoded stub instructions at 0x%x" % code.pa)
        if not memory_done and state.written:
            for (pa, size), original in zip(touched, originals):
                attempt("writing back 0x%x bytes at 0x%x" % (size, pa),
                        lambda pa=pa, original=original: target.write_phys(pa, original))  # type: ignore[misc]
        if state.written or state.stub_finished:
            for (pa, size), original in zip(touched, originals):
                def verify(pa: int = pa, size: int = size, original: bytes = original) -> None:
                    now = target.read_phys(pa, size)
                    if now != original:
                        first = next(i for i in range(size) if now[i] != original[i])
                        raise RestoreError("0x%x bytes at 0x%x differ from before (first at +0x%x)"
                                           % (size, pa, first))
                attempt("verifying memory at 0x%x" % pa, verify)
        if state.resumed:
            self._restore_paging(lay, program, attempt)
        if state.registers_changed:
            wanted = {name: regs0[name] for name in sorted(owned) if name in regs0}
            attempt("restoring registers", lambda: set_registers(target, wanted))

            def check() -> None:
                now = target.registers()
                wrong = [name for name, value in wanted.items() if now.get(name) != value]
                if wrong:
                    raise RestoreError("registers %s differ from before" % ", ".join(wrong))
            attempt("verifying registers", check)
        if interrupted:
            raise KeyboardInterrupt
        return problems


def _restore_paging_entries(target: Target, paging: Sequence[PagingEntry], used: Sequence[Tuple[int, int]],
                            attempt: Callable[[str, Callable[[], None]], bool]) -> None:
    """Put back Accessed/Dirty bits the stub's own accesses set in the paging entries that
    map the scratch area.  Only entries that had a bit clear can have changed, so usually
    nothing is read at all.  The page's contents are restored too, so "not accessed, not
    dirty" is the truth again; a TLB may still cache the translation, which only means the
    CPU will not set the bits again for accesses through that cached entry."""
    for where, value, leaf, low, high in paging:
        watch = 0x20 | (0x40 if leaf else 0)
        if value & watch == watch or not any(lo < high and low < hi for lo, hi in used):
            continue  # nothing to set, or the run never went through this entry

        def put_back(where: int = where, value: int = value) -> None:
            now = struct.unpack("<Q", target.read_phys(where, 8))[0]
            if now == value:
                return
            if (now ^ value) & ~0x60:
                raise RestoreError("paging entry at 0x%x changed beyond its Accessed/Dirty bits "
                                   "(0x%x -> 0x%x); left alone" % (where, value, now))
            target.write_phys(where, struct.pack("<Q", value))
        attempt("restoring Accessed/Dirty bits at 0x%x" % where, put_back)


@dataclass
class _RunState:
    """How far a run got (what the restore has to undo)."""

    written: bool = False
    tail_written: bool = False
    registers_changed: bool = False
    stub_finished: bool = False
    resumed: bool = False
    erase_ready: bool = False
    breakpoint: Optional[Breakpoint] = None
    notes: List[str] = field(default_factory=list)


def _input(value: object, data_va: int) -> int:
    """A program input: an int, or ``@data`` / ``@data+N`` (the data area's address)."""
    if isinstance(value, str):
        if not value.startswith("@data"):
            raise ValueError("unknown program input %r" % value)
        return data_va + (int(value[5:], 0) if value[5:] else 0)
    return int(value)  # type: ignore[call-overload]


def _uniform(data: bytes) -> bool:
    return bool(data) and data.count(data[0]) == len(data)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def check_cpu_state(regs: Dict[str, int]) -> None:
    """Refuse to run a stub unless the CPU is at CPL 0 in 64-bit mode (the stubs are 64-bit
    code, and VMX instructions, RDMSR and INVD need CPL 0)."""
    cs = regs.get("cs")
    if cs is not None and cs & 3:
        raise LiveError("the CPU is at CPL %d; VMX instructions need CPL 0 (stop the target in the hypervisor)"
                        % (cs & 3))
    if "efer" in regs and "cs_ar" in regs and not (regs["efer"] & _EFER_LMA and regs["cs_ar"] & _AR_L):
        raise LiveError("the CPU is not in 64-bit mode; the stubs are 64-bit code")
    if regs.get("rflags", 0) & (1 << 17):
        raise LiveError("the CPU is in virtual-8086 mode")


# -- preconditions ----------------------------------------------------------------------------------
@dataclass
class Preconditions:
    """What is known about the CPU before a live operation."""

    root: Optional[bool]
    vmcs_pointer: Optional[int]
    evidence: List[str]
    bochs: bool


def preconditions(target: Target, assume_root: bool = False, cpu: Optional[int] = None) -> Preconditions:
    """Refuse unless the current CPU is in VMX root with a current VMCS.

    Bochs tells us exactly (``vmx_state``, one debugger command).  On other live targets the
    root-mode evidence of vtdbg.core.rootmode (RIP in the exit handler, RSP on the VMM stack,
    the driver's flag) decides; without a verdict, ``assume_root`` (``--assume-root``) is
    required, because a VMREAD in non-root mode would exit into the hypervisor under test.
    Whether a VMCS is current is learnt from the stub itself there (VMPTRST)."""
    target.require(Capability.LIVE | Capability.WRITE | Capability.REGS, "a live VMREAD")
    if not target.has(Capability.RESUME):
        raise LiveError("a live VMREAD runs code on the target, which this %s target cannot do" % target.kind)
    bochs = target.kind == "bochs"
    if bochs:
        state = target.vmx_state()  # Bochs knows exactly: one debugger command
        if not state.get("in_vmx"):
            raise LiveError("CPU %s is not in VMX operation (no VMXON): there is no VMCS to read"
                            % state.get("cpu", "?"))
        if state.get("in_vmx_guest"):
            raise LiveError("CPU %s is in VMX non-root mode (running the guest): a VMREAD would exit into the "
                            "hypervisor; stop it in VMX root first (e.g. --after-exits N)" % state.get("cpu", "?"))
        pointer = state.get("vmcsptr")
        if not isinstance(pointer, int):
            raise LiveError("CPU %s is in VMX root but no VMCS is current (VMPTRLD not done, or VMCLEAR'ed)"
                            % state.get("cpu", "?"))
        return Preconditions(True, pointer, ["Bochs: in VMX root, current VMCS 0x%x" % pointer], True)
    if assume_root:
        return Preconditions(None, None, ["--assume-root: VMX root mode asserted by the user"], bochs)
    verdict, evidence = _root_mode_evidence(target, cpu)
    if verdict is True:
        return Preconditions(True, None, evidence, bochs)
    if verdict is False:
        raise LiveError("the CPU is in VMX non-root mode (%s): a VMREAD would exit into the hypervisor; break in "
                        "the hypervisor (e.g. on its exit handler) first" % "; ".join(evidence))
    raise LiveError("cannot tell whether the CPU is in VMX root mode (%s); if you know it is, pass --assume-root"
                    % ("; ".join(evidence) or "no root-mode evidence for this target"))


def _root_mode_evidence(target: Target, cpu: Optional[int]) -> Tuple[Optional[bool], List[str]]:
    """The verdict of vtdbg.core.rootmode for the current CPU (via the target profile)."""
    try:
        from vtdbg.core.regions import find_regions
    except ImportError:  # pragma: no cover - rootmode/regions ship together
        return None, ["root-mode evidence is not available in this build"]
    which = cpu if cpu is not None else target.current_cpu()
    try:
        found = find_regions(target, which)
    except VtdbgError as exc:
        return None, ["no profile evidence: %s" % exc]
    if not found or found[0].error:
        return None, ["no profile evidence%s" % (": " + found[0].error if found and found[0].error else "")]
    regions = found[0]
    return regions.root_mode, [e.detail for e in regions.root_mode_evidence if e.says is not None] or \
        ["the profile's clues are inconclusive"]


# -- capabilities that decide the method -------------------------------------------------------------
def known_msr(target: Target, index: int) -> Optional[int]:
    """An MSR value that costs nothing to learn when the backend already knows it (Bochs:
    the lab prints its IA32_VMX_* MSRs), else one read_msr, else None."""
    model = inner_attr(target, "model_msrs")
    if model is not None:
        try:
            values = model()
        except VtdbgError:
            values = {}
        if index in values:
            return int(values[index])
    if target.has(Capability.MSR_READ):
        try:
            return target.read_msr(index)
        except VtdbgError:
            return None
    return None


def highest_index(target: Target) -> int:
    """Highest field index to enumerate: the arch table's, or IA32_VMX_VMCS_ENUM[9:1] if larger."""
    table = max(f.index for f in all_fields())
    enum = known_msr(target, 0x48A) if target.kind == "bochs" else None
    return max(table, ((enum or 0) >> 1) & 0x1FF)


# -- the read -----------------------------------------------------------------------------------------
@dataclass
class LiveRead:
    """A live read: the Vmcs plus how it was done."""

    vmcs: Vmcs
    method: str
    scratch: Optional[Scratch]
    transactions: Optional[int]
    unknown_ok: Dict[int, int] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """The VMCS JSON plus a ``live`` object (method, scratch, transactions)."""
        doc = self.vmcs.to_json()
        doc["live"] = {"method": self.method, "scratch": self.scratch.to_json() if self.scratch else None,
                       "transactions": self.transactions}
        return doc


def _vmcs_from(statuses: Dict[int, Tuple[str, int]], pointer: Optional[int], revision: Optional[int],
               method: str, warnings: List[str]) -> Vmcs:
    values: Dict[int, int] = {}
    status: Dict[int, str] = {}
    for encoding, (result, value) in sorted(statuses.items()):
        known = field_by_encoding(encoding)
        if result == stub.OK:
            size = {"16": 2, "32": 4}.get(encoding_width(encoding), 8)
            values[encoding] = value & ((1 << (8 * size)) - 1)
            status[encoding] = result
        elif known is not None and result in (stub.VMFAIL_VALID, stub.VMFAIL_INVALID):
            status[encoding] = result
    trust = "live VMREAD on the target CPU (%s)" % method
    vmcs = Vmcs(source="live", revision_id=(revision or 0) & 0x7FFFFFFF, shadow=False, values=values,
                address=pointer, trust=trust, status=status, warnings=warnings)
    if revision is None:
        vmcs.warnings.append("revision id unknown (IA32_VMX_BASIC not readable here); reported as 0")
    return vmcs


def live_read(target: Target, scratch: Scratch, assume_root: bool = False, encodings: Optional[Sequence[int]] = None,
              method: str = "auto", cpu: Optional[int] = None) -> LiveRead:
    """Read every field of the current VMCS with one stub run (see the module docstring).

    ``method``: ``enum`` (the compact reader; Bochs default), ``list`` (a list of the
    table's fields; default elsewhere) or ``auto``.  ``encodings`` restricts a list read."""
    start = transactions(target)
    pre = preconditions(target, assume_root, cpu)
    warnings: List[str] = []
    misc = known_msr(target, stub.MSR_VMX_MISC) if pre.bochs or method == "enum" else None
    if method == "auto":
        method = "enum" if pre.bochs and misc is not None and misc & stub.MISC_VMWRITE_ANY and encodings is None \
            else "list"
    runner = StubRunner(target, scratch, bochs=pre.bochs)
    if method == "enum":
        if misc is None or not misc & stub.MISC_VMWRITE_ANY:
            raise LiveError("the compact reader needs IA32_VMX_MISC[29] (VMWRITE to read-only fields) to put "
                            "VM_INSTRUCTION_ERROR back; use --method list")
        top = highest_index(target)
        program = stub.enum_program(top)
        out = runner.run(program, repair=enum_repair(top))
        _saved, statuses = stub.decode_enum(out.data, top)
        revision = known_msr(target, stub.MSR_VMX_BASIC)
        pointer = pre.vmcs_pointer
        warnings.extend(out.notes)
    else:
        wanted = list(encodings) if encodings is not None else [f.encoding for f in all_fields()]
        entries = [stub.Entry(stub.Op.SAVE_POINTER), stub.Entry(stub.Op.RDMSR, stub.MSR_VMX_BASIC)]
        entries += stub.reads(wanted, [e for e in wanted if e not in BASELINE_FIELDS])
        statuses = {}
        pointer, revision = None, None
        # one run when the data area holds every entry (a --scratch region always does);
        # image padding may be smaller: then as many runs as it takes
        for chunk in _chunks(entries, runner):
            program = stub.list_program(chunk, "vmread-list")
            out = runner.run(program, repair=list_repair(chunk))
            result = stub.decode_list(out.data, chunk)
            warnings.extend(out.notes)
            _check_error_restore(result, warnings)
            if chunk[0].op == stub.Op.SAVE_POINTER:
                pointer = result.saved_pointer
                if pointer == 0xFFFFFFFFFFFFFFFF:
                    raise LiveError("no VMCS is current on this CPU (VMPTRST returned all ones): nothing to read")
                revision = result.results[1].value & 0x7FFFFFFF if result.results[1].status == stub.OK else None
            for item in result.results:
                if item.entry.op == stub.Op.READ:
                    statuses[item.entry.enc] = (item.status, item.value)
                    if item.entry.enc == stub.ERROR_FIELD and item.status == stub.OK:
                        # failed reads before it changed the field until the stub put it back
                        statuses[stub.ERROR_FIELD] = (stub.OK, result.saved_error)
        skipped = [e for e, (s, _) in statuses.items() if s == stub.SKIPPED]
        if skipped:
            warnings.append("%d fields not read: this CPU cannot VMWRITE VM_INSTRUCTION_ERROR back after a failed "
                            "VMREAD (IA32_VMX_MISC[29] = 0), so only fields every VMX processor has were tried"
                            % len(skipped))
    done = transactions(target)
    return LiveRead(_vmcs_from(statuses, pointer, revision, method, warnings), method, scratch,
                    None if start is None or done is None else done - start,
                    unknown_ok={e: v for e, (s, v) in statuses.items()
                                if s == stub.OK and field_by_encoding(e) is None})


def _chunks(entries: List[stub.Entry], runner: StubRunner) -> List[List[stub.Entry]]:
    """Split ``entries`` so each list program's data block fits the scratch's data area."""
    if runner.scratch.single:
        return [entries]
    data = runner.scratch.data
    assert data is not None
    per_run = (data.size - stub.HEADER_SIZE) // stub.ENTRY_SIZE
    if per_run < 3:
        raise LiveError("the scratch data area (%d bytes) is too small for a list program" % data.size)
    return [entries[i:i + per_run] for i in range(0, len(entries), per_run)]


def enum_repair(highest: int) -> Repair:
    """Repair after a partial compact read: VMWRITE the saved error back if a record that
    was written shows VMfailValid (the slot is written before the first record)."""
    def build(partial: bytes, before: bytes) -> Optional[stub.Program]:
        failed = False
        for number in range(len(stub.GROUPS) * (highest + 1)):
            at = stub.ENUM_SLOT + number * stub.ENUM_RECORD
            record, old = partial[at:at + stub.ENUM_RECORD], before[at:at + stub.ENUM_RECORD]
            if len(record) < stub.ENUM_RECORD or record == old:
                break  # records are written in order: the first untouched one ends the run
            failed |= stub.status_from_ah(record[8]) == stub.VMFAIL_VALID
        if not failed:
            return None
        saved = int.from_bytes(partial[:stub.ENUM_SLOT], "little") & 0xFFFFFFFF
        entries = [stub.Entry(stub.Op.WRITE, stub.ERROR_FIELD, saved, stub.Flag.MAYFAIL)]
        return stub.list_program(entries, "repair", stub.OPT_KEEP_ERROR)
    return build


def list_repair(entries: Sequence[stub.Entry], scratch_vmcs: Optional[int] = None) -> Repair:
    """Repair after a partial list run: make the saved VMCS current again (discovery; the
    scratch VMCS is cleared first so nothing of it stays cached) and VMWRITE the saved error
    back if an entry that ran failed with VMfailValid."""
    def build(partial: bytes, before: bytes) -> Optional[stub.Program]:
        result = stub.decode_list(partial, entries)
        ran = [r for r in result.results if r.status not in (stub.NOT_RUN, stub.SKIPPED)]
        if not ran:
            return None
        fix: List[stub.Entry] = []
        saved_pointer = any(r.entry.op == stub.Op.SAVE_POINTER for r in ran)
        if scratch_vmcs is not None and saved_pointer:
            fix += [stub.Entry(stub.Op.VMCLEAR, 0, scratch_vmcs), stub.Entry(stub.Op.VMPTRLD, 0, result.saved_pointer)]
        if fix or any(r.status == stub.VMFAIL_VALID for r in ran):
            fix.append(stub.Entry(stub.Op.WRITE, stub.ERROR_FIELD, result.saved_error, stub.Flag.MAYFAIL))
        return stub.list_program(fix, "repair", stub.OPT_KEEP_ERROR) if fix else None
    return build


def _check_error_restore(result: stub.ListResult, warnings: List[str]) -> None:
    """Say loudly if a failing instruction changed VM_INSTRUCTION_ERROR for good."""
    if result.restore_ran and result.restore_status != stub.OK:
        warnings.append("VM_INSTRUCTION_ERROR could not be written back (%s); it may differ from before"
                        % result.restore_status)


# -- VMWRITE -------------------------------------------------------------------------------------------
@dataclass
class WriteResult:
    """One field written live: the value before, the VMWRITE status, the value after."""

    encoding: int
    before: Optional[int]
    status: str
    after: Optional[int]
    warnings: List[str]

    def to_json(self) -> Dict[str, Any]:
        """JSON of the write."""
        known = field_by_encoding(self.encoding)
        return {"field": known.name if known else "0x%04x" % self.encoding, "encoding": self.encoding,
                "before": self.before, "status": self.status, "after": self.after, "source": "live",
                "warnings": list(self.warnings)}


def live_write(target: Target, scratch: Scratch, encoding: int, value: int, assume_root: bool = False,
               cpu: Optional[int] = None) -> WriteResult:
    """VMWRITE one field of the current VMCS (read before and after in the same stub run).

    Exit-information fields are read-only unless IA32_VMX_MISC[29]; such a write is
    skipped by the stub when the CPU cannot take it (MAYFAIL), so it never fails and
    never touches VM_INSTRUCTION_ERROR."""
    pre = preconditions(target, assume_root, cpu)
    flags = stub.Flag.MAYFAIL if encoding_type(encoding) == "exit_info" else 0
    entries = [stub.Entry(stub.Op.SAVE_POINTER), stub.Entry(stub.Op.READ, encoding),
               stub.Entry(stub.Op.WRITE, encoding, value, flags), stub.Entry(stub.Op.READ, encoding)]
    runner = StubRunner(target, scratch, bochs=pre.bochs)
    out = runner.run(stub.list_program(entries, "vmwrite-list"), repair=list_repair(entries))
    result = stub.decode_list(out.data, entries)
    if result.saved_pointer == 0xFFFFFFFFFFFFFFFF:
        raise LiveError("no VMCS is current on this CPU: nothing to write")
    warnings = list(out.notes)
    _check_error_restore(result, warnings)
    before, write, after = result.results[1:]
    status = write.status
    if status == stub.SKIPPED:
        warnings.append("not written: exit-information fields are read-only on this CPU (IA32_VMX_MISC[29] = 0)")
    return WriteResult(encoding, before.value if before.status == stub.OK else None, status,
                       after.value if after.status == stub.OK else None, warnings)


# -- the gadget fallback ---------------------------------------------------------------------------------
def find_image_gadgets(target: Target, start: int, size: int) -> List[stub.Gadget]:
    """Register-form VMREAD/VMWRITE instructions in linear [start, start+size)."""
    if size <= 0 or size > 64 << 20:
        raise UsageError("gadget search range must be 1 byte .. 64 MiB")
    return stub.find_gadgets(target.read_virt(start, size), start)


def gadget_read(target: Target, gadgets: Sequence[stub.Gadget], assume_root: bool = False,
                encodings: Optional[Iterable[int]] = None, cpu: Optional[int] = None) -> LiveRead:
    """Read fields by single-stepping an existing ``VMREAD r64, r64`` once per field.

    Nothing is written to memory.  Costs about four transactions per field (set the
    encoding, set RIP, step, read the registers).  VM_INSTRUCTION_ERROR is read first; fields
    that might be unsupported are tried only when a VMWRITE gadget and IA32_VMX_MISC[29]
    let us write it back afterwards."""
    start_count = transactions(target)
    pre = preconditions(target, assume_root, cpu)
    reader = next((g for g in gadgets if g.kind == "vmread" and g.source != g.dest), None)
    if reader is None:
        raise LiveError("no usable VMREAD reg, reg instruction in the searched range")
    writer = next((g for g in gadgets if g.kind == "vmwrite" and g.source != g.dest), None)
    misc = known_msr(target, stub.MSR_VMX_MISC)
    can_restore = writer is not None and misc is not None and bool(misc & stub.MISC_VMWRITE_ANY)
    wanted = list(encodings) if encodings is not None else [f.encoding for f in all_fields()]
    warnings: List[str] = []
    if not can_restore:
        dropped = [e for e in wanted if e not in BASELINE_FIELDS]
        wanted = [e for e in wanted if e in BASELINE_FIELDS]
        if dropped:
            warnings.append("%d fields not read: without a VMWRITE gadget and IA32_VMX_MISC[29] a failed VMREAD "
                            "could not be undone" % len(dropped))
    regs0 = target.registers()
    check_cpu_state(regs0)
    owned = {"rip", "rflags", reader.source, reader.dest}
    if writer is not None:
        owned |= {writer.source, writer.dest}
    statuses: Dict[int, Tuple[str, int]] = {}
    changed = False
    primary: Optional[BaseException] = None

    def step(gadget: stub.Gadget, values: Dict[str, int]) -> Dict[str, int]:
        nonlocal changed
        changed = True
        values = dict(values)
        values.update(rip=gadget.address, rflags=STUB_RFLAGS)
        set_registers(target, values)
        target.step()
        regs = target.registers()
        if regs.get("rip") != gadget.address + gadget.length:
            raise LiveError("the VMREAD gadget at 0x%x did not execute as one instruction (RIP now %s)"
                            % (gadget.address, "0x%x" % regs["rip"] if "rip" in regs else "?"))
        return regs

    def outcome(regs: Dict[str, int], dest: str) -> Tuple[str, int]:
        return stub.status_from_ah(_ah(regs.get("rflags", 0))), regs.get(dest, 0)

    saved: Optional[Tuple[str, int]] = None
    try:
        saved = outcome(step(reader, {reader.source: stub.ERROR_FIELD}), reader.dest)
        if saved[0] != stub.OK:
            raise LiveError("VMREAD of VM_INSTRUCTION_ERROR failed (%s): no VMCS is current" % saved[0])
        for encoding in wanted:
            statuses[encoding] = outcome(step(reader, {reader.source: encoding}), reader.dest)
    except BaseException as exc:  # noqa: B902 - restore on every path
        primary = exc
    problems: List[str] = []
    if saved is not None and saved[0] == stub.OK and writer is not None and can_restore:
        # put the error field back if a failed VMREAD changed it -- also after a failure above
        try:
            now = outcome(step(reader, {reader.source: stub.ERROR_FIELD}), reader.dest)
            if now[1] != saved[1]:
                result = outcome(step(writer, {writer.source: stub.ERROR_FIELD, writer.dest: saved[1]}),
                                 writer.dest)
                if result[0] != stub.OK:
                    problems.append("VM_INSTRUCTION_ERROR could not be written back (%s)" % result[0])
        except Exception as exc:
            problems.append("putting VM_INSTRUCTION_ERROR back: %s" % _describe(exc))
    if saved is not None and saved[0] == stub.OK:
        statuses[stub.ERROR_FIELD] = (stub.OK, saved[1])
    if changed:
        wanted_regs = {name: regs0[name] for name in owned if name in regs0}
        try:
            set_registers(target, wanted_regs)
            now_regs = target.registers()
            wrong = [n for n, v in wanted_regs.items() if now_regs.get(n) != v]
            if wrong:
                problems.append("registers %s differ from before" % ", ".join(sorted(wrong)))
        except Exception as exc:
            problems.append("restoring registers: %s" % _describe(exc))
    if problems:
        raise RestoreError("; ".join(problems)) from primary
    if primary is not None:
        if isinstance(primary, VtdbgError) and not isinstance(primary, LiveError):
            raise LiveError("%s (registers restored)" % _describe(primary)) from primary
        raise primary
    done = transactions(target)
    vmcs = _vmcs_from(statuses, pre.vmcs_pointer, known_msr(target, stub.MSR_VMX_BASIC), "gadget", warnings)
    return LiveRead(vmcs, "gadget", None, None if start_count is None or done is None else done - start_count)


def _ah(rflags: int) -> int:
    """RFLAGS as LAHF would put it in AH (SF ZF 0 AF 0 PF 1 CF)."""
    return (rflags & 0xD5) | 0x02


@contextlib.contextmanager
def on_cpu(target: Target, cpu: Optional[int]) -> Any:
    """Select ``cpu`` (None: stay) for the block."""
    if cpu is None:
        yield
        return
    with target.select_cpu(cpu):
        yield


# -- one-shot runs on Bochs ------------------------------------------------------------------------------
@dataclass
class RunReport:
    """What ``--after-exits N`` saw before the read."""

    exits: List[Dict[str, Any]]
    complete: bool
    last: Dict[str, Any]
    asked: int = 0

    def to_json(self) -> Dict[str, Any]:
        """JSON of the run (events without their console text)."""
        def slim(event: Dict[str, Any]) -> Dict[str, Any]:
            return {k: v for k, v in event.items() if k != "console"}
        return {"exits_asked": self.asked, "exits_seen": len(self.exits), "complete": self.complete,
                "last_stop": slim(self.last)}


def run_exits_first(target: Target, exits: Optional[int], timeout: Optional[float]) -> Optional[RunReport]:
    """Let a freshly started Bochs run through ``exits`` VM exits (default 1) so that it
    stops in VMX root at HOST_RIP with the VMCS of the last exit current (``vmexitbp``).

    Only a target that has not run yet is advanced (a shell session that already stopped
    somewhere is read where it is) unless ``exits`` is given explicitly.  None when the
    target is not a Bochs machine."""
    runner = inner_attr(target, "run_exits")
    last = inner_attr(target, "last_stop")
    if target.kind != "bochs" or runner is None:
        if exits is not None:
            raise UsageError("--after-exits applies to bochs: targets (a live Bochs run)")
        return None
    fresh = isinstance(last, dict) and last.get("event") == "start"
    if exits is None and not fresh:
        return None
    count = 1 if exits is None else exits
    if count < 1:
        raise UsageError("--after-exits must be at least 1")
    report = runner(count, timeout)
    return RunReport(list(report["exits"]), bool(report["complete"]), dict(report["last"]), count)
