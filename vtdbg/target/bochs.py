"""The live Bochs backend: ``--target bochs:CONFIG.bxrc``.

Bochs (built with its internal debugger, as Debian's is) runs the guest; vtdbg drives the
debugger through a pseudo-terminal (:mod:`vtdbg.target.bochs_pty`) and reads its answers
(:mod:`vtdbg.target.bochs_parse`).  One method call costs as few debugger command lines
as possible -- a line may carry several ``;``-separated commands, and a line with its answer
is one *transaction* (``transactions`` counts them):

=====================  ==========================================================  ======
call                   command line                                                lines
=====================  ==========================================================  ======
read_phys(pa, n)       ``xp /Ngx pa`` (requests above 4 MiB are split)              1
read_virt (current)    ``page`` per page spanned, then ``xp`` per physical run      2
write_phys             ``setpmem`` 4/2/1 bytes per command, 16-20 per line          ~n/70
registers()            ``r; creg; sreg; show FS.base; show GS.base`` (cached/stop)  1
set_register           ``set reg = value``                                          1
vmx_state()            ``show "cpuN.VMX"``                                          1
resume / step          ``c`` / ``s``                                                1+
read_msr (param tree)  ``show "cpuN.MSR.name"``                                     1
read_msrs (VMX caps)   injected RDMSR session (:mod:`~vtdbg.target.bochs_inject`)   ~12/all
maxphyaddr()           injected CPUID session (cached)                              8-9
=====================  ==========================================================  ======

Bochs keeps the VMCS in guest memory, so a memory decode is exact except for the guest
state of a running guest; the layout depends on the Bochs release (2.7 and 2.8+ share
revision id 0x2B with different layouts), hence :attr:`BochsTarget.preferred_layout`.
"""
from __future__ import annotations

import os
import re
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from vtdbg.lib.errors import MemoryReadError, MemoryWriteError, TargetError
from vtdbg.target import bochs_parse as bp
from vtdbg.target.base import Breakpoint, Capability, Target
from vtdbg.target.bochs_inject import CLOBBERED, CPUID, NARROW, RDMSR, InjectedStub
from vtdbg.target.bochs_pty import BochsEnded, BochsProcess, BochsTimeout, pack_lines

#: one ``xp`` prints ~4.3 bytes of text per byte read; bigger requests are split
MAX_READ_PER_COMMAND = 4 << 20
#: legacy VGA/option-ROM/BIOS window: reads and writes there may hit ROM, so writes are verified
_LEGACY_WINDOW = (0xA0000, 0x100000)
_EFER_LMA = 1 << 10
_AR_L = 1 << 13

#: MSRs Bochs 2.7 exposes in its parameter tree (``show "cpuN.MSR.<name>"``): reading them
#: needs no code on the target.
PARAM_MSRS: Dict[int, str] = {
    0x1B: "apicbase", 0x3A: "ia32_feature_ctrl", 0x174: "sysenter_cs_msr", 0x175: "sysenter_esp_msr",
    0x176: "sysenter_eip_msr", 0x250: "mtrrfix64k", 0x258: "mtrrfix16k_80000", 0x259: "mtrrfix16k_a0000",
    0x277: "pat", 0x2FF: "mtrr_deftype", 0xDA0: "ia32_xss", 0xC0000080: "EFER", 0xC0000081: "star",
    0xC0000082: "lstar", 0xC0000083: "cstar", 0xC0000084: "fmask", 0xC0000102: "kernelgsbase",
    0xC0000103: "tsc_aux",
}
PARAM_MSRS.update({0x200 + 2 * i: "mtrrphysbase%d" % i for i in range(8)})
PARAM_MSRS.update({0x201 + 2 * i: "mtrrphysmask%d" % i for i in range(8)})
PARAM_MSRS.update({0x268 + i: "mtrrfix4k_%s" % base for i, base in
                   enumerate(("c0000", "c8000", "d0000", "d8000", "e0000", "e8000", "f0000", "f8000"))})

_GPRS = set(NARROW) | {"r%d" % i for i in range(8, 16)}
_SETTABLE = _GPRS | set(NARROW.values()) | {"cs", "ds", "es", "fs", "gs", "ss", "ip"} | {
    "r%d%s" % (i, s) for i in range(8, 16) for s in ("d", "w", "b")} | {
    "ax", "bx", "cx", "dx", "si", "di", "sp", "bp", "al", "bl", "cl", "dl", "ah", "bh", "ch", "dh"}
_FLAG_NAMES = {"rflags", "eflags", "flags"}

OnHit = Callable[[int], bool]
_WATCH_AT = re.compile(r"watch point at 0x([0-9a-fA-F]+)")


class BochsTarget(Target):
    """A Bochs machine stopped under its internal debugger.

    ``BochsTarget("lab.bxrc")`` boots nothing yet: Bochs starts stopped at the reset vector
    (t=0).  :meth:`cont`, :meth:`run_to_vm_exit` and :meth:`run_exits` run the guest;
    every run ends in a *stop event* (a JSON-ready dict, see :meth:`cont`).  The guest's
    port-0xE9 output is collected in :meth:`console_output`.  Always :meth:`close` (or use
    ``with``): it quits Bochs and reaps the process on every path.
    """

    kind = "bochs"
    BASE_CAPABILITIES = (Capability.PHYS_READ | Capability.VIRT_READ | Capability.MSR_READ | Capability.REGS
                         | Capability.WRITE | Capability.BREAKPOINTS | Capability.RESUME | Capability.STEP
                         | Capability.LIVE)

    def __init__(self, config_path: str, bochs: str = "bochs-bin", extra_lines: Sequence[str] = (),
                 overrides: Optional[Sequence[str]] = None, isolate: bool = True, timeout: float = 60.0,
                 command_timeout: float = 30.0, startup_timeout: float = 30.0,
                 continue_past_magic: bool = False, console_limit: int = 64 << 20) -> None:
        config = os.path.abspath(config_path)
        if not os.path.isfile(config):
            raise TargetError("no such Bochs configuration: %s" % config_path)
        super().__init__("Bochs %s" % config_path)
        self.config_path = config
        #: default seconds a run (resume, run_to_vm_exit) may take before it is interrupted
        self.timeout = timeout
        self.command_timeout = command_timeout
        #: continue automatically past magic breakpoints (xchg bx,bx) in resume()
        self.continue_past_magic = continue_past_magic
        self.console_limit = console_limit
        self.capabilities = self.BASE_CAPABILITIES
        self._cpu = 0
        self._cpus = 1
        self._ranges: List[Tuple[int, int]] = [(0, 32 << 20)]
        self._console: List[str] = []
        self._console_size = 0
        #: bytes of console output dropped from the front to respect console_limit
        self.console_dropped = 0
        self._regs: Dict[Tuple[int, int], Dict[str, int]] = {}
        self._breakpoints: Dict[int, Tuple[Breakpoint, OnHit]] = {}
        #: CPU -> state of its ``vmexitbp`` flag as last set (Bochs keeps one per CPU)
        self._vmexit_break: Dict[int, bool] = {}
        self._toggle_answers: List[str] = []
        #: physical address of the local-APIC ICR watched while VM-exit stops are on (SMP)
        self._icr_watch: Optional[int] = None
        #: times a CPU's VM-exit stop was found cleared (by an INIT) and switched on again
        self.vmexit_rearms = 0
        self._msrs: Dict[Tuple[int, int], int] = {}
        self._cpuid: Dict[Tuple[int, int, int], Tuple[int, int, int, int]] = {}
        self._maxphyaddr: Optional[int] = None
        self._ended: Optional[str] = None
        # relative paths in a bochsrc (disk images, ROMs) are resolved from Bochs's working
        # directory; starting it beside the config makes `bochs:dir/lab.bxrc` just work
        self._bochs = BochsProcess(config, bochs=bochs, overrides=overrides, extra=extra_lines,
                                   isolate=isolate, startup_timeout=startup_timeout,
                                   cwd=os.path.dirname(config))
        try:
            banner = self._bochs.banner.replace("\r", "")
            #: release from the banner ("2.7", "2.8", "3.0", ...) or None
            self.bochs_version = bp.banner_version(banner)
            #: the VMCS layout this Bochs writes; pass it to vmcs.read_vmcs(layout_name=...)
            self.preferred_layout = bp.layout_for_version(self.bochs_version)
            self._cpus = bp.startup_cpus(banner)
            if self._cpus > 1:
                self.capabilities = self.BASE_CAPABILITIES | Capability.CPU_SELECT
            ram, roms = bp.memory_layout(self._bochs.log_text())
            self._ranges = _ranges(ram, roms)
            _console, report, _rest = bp.split_stop(banner)
            #: the last stop event (the reset state right after start-up)
            self.last_stop: Dict[str, Any] = self._event("start", report, "", 0.0)
        except BaseException:
            self._bochs.close()
            raise

    # -- identity -----------------------------------------------------------------------------
    @property
    def transactions(self) -> int:
        """Debugger command lines sent so far (the unit transaction budgets count)."""
        return self._bochs.lines_sent

    @property
    def log_path(self) -> str:
        """Path of the Bochs log (in a temporary folder removed by close())."""
        return self._bochs.log_path

    def console_output(self) -> str:
        """Everything the guest wrote to port 0xE9 so far (latin-1 text)."""
        return "".join(self._console)

    def model_msrs(self) -> Dict[int, int]:
        """``MSR <index> <value>`` lines the guest printed (the vtdbg lab prints its
        IA32_VMX_* MSRs this way); {} when it printed none."""
        return bp.console_msrs(self.console_output())

    # -- the debugger line ----------------------------------------------------------------------
    def command(self, line: str, timeout: Optional[float] = None) -> str:
        """Run one raw debugger command line (not one that runs the guest) and return its
        answer.  For experiments and for commands vtdbg does not wrap."""
        self._check_alive()
        try:
            return self._bochs.command(line, self.command_timeout if timeout is None else timeout)
        except BochsEnded as exc:
            self._ended = str(exc)
            raise
        except BochsTimeout:
            # a command that never returns leaves the debugger unusable: end the session
            self.close()
            raise TargetError("Bochs did not answer %r within %.0f s; the session was closed"
                              % (line, self.command_timeout if timeout is None else timeout)) from None

    def _check_alive(self) -> None:
        if self._ended is not None:
            raise TargetError("the Bochs session has ended: %s" % self._ended)

    # -- memory -------------------------------------------------------------------------------
    def phys_ranges(self) -> List[Tuple[int, int]]:
        """RAM from 0 and the BIOS ROM below 4 GiB, as Bochs's log reports them."""
        return list(self._ranges)

    def _check_range(self, pa: int, size: int) -> Optional[str]:
        if pa < 0 or size < 0:
            return "negative address or size"
        for start, length in self._ranges:
            if start <= pa and pa + size <= start + length:
                return None
        # reading unbacked addresses is not harmless: Bochs 2.7 crashes on some of them
        return "not inside RAM or ROM of this Bochs machine (%s)" % ", ".join(
            "0x%x-0x%x" % (s, s + n - 1) for s, n in self._ranges)

    def read_phys(self, pa: int, size: int) -> bytes:
        """``size`` bytes of guest-physical memory, one ``xp`` per 4 MiB."""
        if size == 0 and pa >= 0:
            return b""
        problem = self._check_range(pa, size)
        if problem:
            raise MemoryReadError(pa, size, problem)
        out = bytearray()
        while len(out) < size:
            chunk = min(size - len(out), MAX_READ_PER_COMMAND)
            out += self._dump("xp", pa + len(out), chunk)
        return bytes(out)

    def _dump(self, verb: str, address: int, size: int) -> bytes:
        count = (size + 7) // 8
        # about 3 s per MiB on a slow machine, plus the usual margin
        timeout = self.command_timeout + 4.0 * size / (1 << 20)
        text = self.command("%s /%dgx 0x%x" % (verb, count, address), timeout)
        try:
            values = bp.parse_dump(text, address, count)
        except bp.DumpError as exc:
            raise MemoryReadError(address, size, str(exc)) from None
        return bp.dump_bytes(values)[:size]

    def read_virt(self, va: int, size: int, cr3: Optional[int] = None) -> bytes:
        """Linear memory through the current CPU's translation (any paging mode): one line
        of ``page`` commands for the pages spanned, then ``xp`` per physically contiguous
        run.  Bochs's own ``x`` would be one line less, but it reads whatever physical
        address a page table names, and some addresses crash Bochs 2.7; ``xp`` goes through
        the range check.  With an explicit ``cr3`` the 4-level tables are walked instead."""
        if cr3 is not None:
            return super().read_virt(va, size, cr3)
        if size == 0:
            return b""
        if va < 0 or size < 0:
            raise MemoryReadError(va, size, "negative address or size")
        first, last = va & ~0xFFF, (va + size - 1) & ~0xFFF
        pages = list(range(first, last + 0x1000, 0x1000))
        mapping: Dict[int, Optional[int]] = {}
        for line in pack_lines([["page 0x%x" % page] for page in pages]):
            mapping.update(bp.parse_pages(self.command(line)))
        runs: List[Tuple[int, int]] = []  # (physical start, length)
        for page in pages:
            physical = mapping.get(page)
            if physical is None:
                raise MemoryReadError(va, size, "linear 0x%x is not mapped" % page)
            start = max(va, page)
            length = min(va + size, page + 0x1000) - start
            pa = physical + (start - page)
            if runs and runs[-1][0] + runs[-1][1] == pa:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((pa, length))
        return b"".join(self.read_phys(pa, length) for pa, length in runs)

    def write_phys(self, pa: int, data: bytes) -> None:
        """Write with ``setpmem`` (4, 2 or 1 bytes per command, many commands per line)."""
        ram = self._ranges[0][1]
        if pa < 0 or pa + len(data) > ram:
            raise MemoryWriteError("cannot write %d bytes at 0x%x: only RAM (0-0x%x) is writable"
                                   % (len(data), pa, ram - 1))
        if not data:
            return
        commands: List[str] = []
        offset = 0
        while offset < len(data):
            width = 4 if len(data) - offset >= 4 else (2 if len(data) - offset >= 2 else 1)
            value = int.from_bytes(data[offset:offset + width], "little")
            commands.append("setpmem 0x%x %d 0x%x" % (pa + offset, width, value))
            offset += width
        try:
            for line in pack_lines([[c] for c in commands]):
                answer = self.command(line).strip()
                if answer:
                    raise MemoryWriteError("Bochs refused a write at 0x%x: %s" % (pa, answer.splitlines()[0]))
        finally:
            self.stop_generation += 1
        if pa < _LEGACY_WINDOW[1] and pa + len(data) > _LEGACY_WINDOW[0]:
            # the BIOS/option-ROM window ignores writes silently when it maps ROM
            if self.read_phys(pa, len(data)) != bytes(data):
                raise MemoryWriteError("the write at 0x%x did not stick (ROM-mapped legacy window)" % pa)

    # -- CPU state ------------------------------------------------------------------------------
    def cpu_count(self) -> int:
        """CPUs listed in Bochs's first stop report (``cpu: count=N``)."""
        return self._cpus

    def current_cpu(self) -> int:
        """The debugger's current CPU (``set $cpu = N``)."""
        return self._cpu

    def _switch_cpu(self, cpu: int) -> None:
        if not 0 <= cpu < self._cpus:
            raise TargetError("CPU %d does not exist (this Bochs has %d)" % (cpu, self._cpus))
        answer = self.command("set $cpu = %d" % cpu).strip()
        if answer:
            raise TargetError("Bochs refused to switch to CPU %d: %s" % (cpu, answer))
        self._cpu = cpu

    def registers(self) -> Dict[str, int]:
        """General, control, segment and descriptor-table registers of the current CPU."""
        key = (self.stop_generation, self._cpu)
        cached = self._regs.get(key)
        if cached is not None:
            return dict(cached)
        text = self.command('r; creg; sreg; show "cpu%d.FS.base"; show "cpu%d.GS.base"' % (self._cpu, self._cpu))
        regs = bp.parse_registers(text)
        if "rip" not in regs or "cr3" not in regs:
            raise TargetError("could not parse Bochs's registers: %s" % text.strip()[:200])
        self._regs = {key: regs}
        return dict(regs)

    def _long_mode(self, regs: Dict[str, int]) -> bool:
        return bool(regs.get("efer", 0) & _EFER_LMA and regs.get("cs_ar", 0) & _AR_L)

    def set_register(self, name: str, value: int) -> None:
        """Change a general register, rip, rflags or a segment selector.

        Bochs's ``set`` cannot change control registers, EFER or MSRs, and accepts 64-bit
        register names only while the CPU is in 64-bit mode (the 32-bit name is used
        otherwise, if the value fits).
        """
        self.set_registers({name: value})

    def set_registers(self, values: Dict[str, int]) -> None:
        """Change several registers with as few debugger lines as Bochs keeps whole (one
        line for a typical stub set-up, instead of one per register)."""
        if not values:
            return
        long_mode: Optional[bool] = None
        commands: List[str] = []
        for name, value in values.items():
            reg = name.lower()
            if reg in _FLAG_NAMES:
                bochs_name = "$eflags"
            elif reg in _SETTABLE:
                bochs_name = reg
                if reg in _GPRS:
                    if long_mode is None:  # asked once per batch (cached until the next stop)
                        long_mode = self._long_mode(self.registers())
                    if not long_mode:
                        if reg not in NARROW or value >> 32:
                            raise TargetError("Bochs sets %s only in 64-bit mode; the CPU is not in 64-bit mode"
                                              % name)
                        bochs_name = NARROW[reg]
            else:
                raise TargetError("Bochs's debugger cannot change %s (its `set` covers general registers, rip, "
                                  "rflags and segment selectors)" % name)
            if value < 0:
                raise TargetError("register values are unsigned")
            commands.append("set %s = 0x%x" % (bochs_name, value))
        try:
            for line in pack_lines([[c] for c in commands]):
                answer = self.command(line).strip()
                if answer:
                    raise TargetError("Bochs refused `%s`: %s" % (line, answer.splitlines()[0]))
        finally:
            self.stop_generation += 1

    def vmx_state(self) -> Dict[str, Any]:
        """Bochs's own VMX state of the current CPU: ``vmcsptr`` and ``vmxonptr`` (None when
        unset), ``in_vmx``, ``in_vmx_guest``, ``in_smm_vmx`` and the VMCS ``cache`` (the
        controls and host state Bochs copied at the last VM entry)."""
        text = self.command('show "cpu%d.VMX"' % self._cpu)
        tree = bp.parse_param_tree(text)
        if "vmcsptr" not in tree:
            raise TargetError("Bochs has no VMX state for CPU %d (built without VMX?): %s"
                              % (self._cpu, text.strip()[:200]))
        state = bp.vmx_summary(tree)
        state["cpu"] = self._cpu
        return state

    # -- MSRs, CPUID: read from the param tree or by running one instruction -----------------------
    def read_msr(self, index: int) -> int:
        """An MSR of the current CPU (see :meth:`read_msrs`)."""
        return self.read_msrs([index])[index]

    def read_msrs(self, indices: Iterable[int]) -> Dict[int, int]:
        """Several MSRs at once.

        Bochs's debugger has no RDMSR command.  MSRs in its parameter tree
        (:data:`PARAM_MSRS`, IA32_FS/GS_BASE) are read with ``show``.  The IA32_VMX_*
        capability MSRs are read by executing RDMSR on the target (one injected
        instruction at the current RIP, bytes, registers and flags restored), only while
        the CPU is in VMX root or outside VMX at CPL 0, and only for MSRs the SDM says exist
        (CPUID.1:ECX.VMX, IA32_VMX_BASIC[55], PROCBASED[63], PROCBASED2 bits), because an
        RDMSR of a missing MSR raises #GP in the guest.  Their values never change, so they
        are cached.  Any other MSR raises :class:`TargetError`.
        """
        wanted = list(dict.fromkeys(indices))
        result: Dict[int, int] = {}
        stub: List[int] = []
        for index in wanted:
            cached = self._msrs.get((self._cpu, index))
            if cached is not None:
                result[index] = cached
            elif index in PARAM_MSRS:
                result[index] = self._param_msr(index)
            elif index in (0xC0000100, 0xC0000101):
                result[index] = self.registers()["fs_base" if index == 0xC0000100 else "gs_base"]
            elif 0x480 <= index <= 0x492:
                stub.append(index)
            else:
                raise TargetError("MSR 0x%x is not readable on a Bochs target: Bochs's debugger has no RDMSR, and "
                                  "executing RDMSR for an MSR that may not exist could fault in the guest" % index)
        if stub:
            result.update(self._vmx_msrs(stub))
        return result

    def _param_msr(self, index: int) -> int:
        name = PARAM_MSRS[index]
        text = self.command('show "cpu%d.MSR.%s"' % (self._cpu, name))
        tree = bp.parse_param_tree(text)
        value = tree.get(name)
        if not isinstance(value, int):
            raise TargetError("Bochs does not expose MSR 0x%x (%s): %s" % (index, name, text.strip()[:120]))
        return value

    def _vmx_msrs(self, wanted: List[int]) -> Dict[int, int]:
        cpu = self._cpu
        known = {i: v for (c, i), v in self._msrs.items() if c == cpu}
        if all(i in known for i in wanted):
            return {i: known[i] for i in wanted}
        with InjectedStub(self, [CPUID, RDMSR]) as stub:
            if (cpu, 1, 0) not in self._cpuid:
                regs = stub.run([(0, {"rax": 1, "rcx": 0})])[0]
                self._cpuid[(cpu, 1, 0)] = tuple(regs[r] & 0xFFFFFFFF for r in CLOBBERED)  # type: ignore[assignment]
            if not self._cpuid[(cpu, 1, 0)][2] & (1 << 5):
                raise TargetError("this CPU has no VMX (CPUID.1:ECX.VMX = 0): IA32_VMX_* MSRs do not exist")

            def fetch(indices: List[int]) -> None:
                missing = [i for i in dict.fromkeys(indices) if i not in known]
                for i, regs in zip(missing, stub.run([(1, {"rcx": i}) for i in missing])):
                    known[i] = ((regs["rdx"] & 0xFFFFFFFF) << 32) | (regs["rax"] & 0xFFFFFFFF)
                    self._msrs[(cpu, i)] = known[i]

            # the SDM's existence rules (Appendix A.1-A.11): later MSRs are gated by earlier ones
            later = any(i > 0x48A for i in wanted)
            fetch([i for i in wanted if i <= 0x48A] + ([0x480, 0x482] if later else []))
            exists = {i: True for i in range(0x480, 0x48B)}
            exists[0x48B] = bool(known.get(0x482, 0) >> 63)
            for i in range(0x48D, 0x491):
                exists[i] = bool(known.get(0x480, 0) >> 55 & 1)
            exists[0x492] = bool(known.get(0x482, 0) >> 49 & 1)  # "activate tertiary controls" allowed
            fetch([i for i in wanted if exists.get(i) and 0x48B <= i <= 0x492 and i not in (0x48C, 0x491)]
                  + ([0x48B] if exists[0x48B] and any(i in (0x48C, 0x491) for i in wanted) else []))
            allowed2 = known.get(0x48B, 0) >> 32 if exists[0x48B] else 0
            exists[0x48C] = bool(allowed2 & ((1 << 1) | (1 << 5)))  # enable EPT or enable VPID allowed
            exists[0x491] = bool(allowed2 & (1 << 13))  # enable VM functions allowed
            fetch([i for i in wanted if i in (0x48C, 0x491) and exists[i]])
        absent = [i for i in wanted if not exists.get(i, False)]
        if absent:
            raise TargetError("IA32_VMX MSR %s: not present on this CPU model (SDM Appendix A)"
                              % ", ".join("0x%x" % i for i in absent))
        return {i: known[i] for i in wanted}

    def cpuid(self, leaf: int, subleaf: int = 0) -> Tuple[int, int, int, int]:
        """(eax, ebx, ecx, edx) of CPUID on the current CPU, executed once on the target
        (see :mod:`vtdbg.target.bochs_inject`; cached per CPU for the session)."""
        return self.cpuids([(leaf, subleaf)])[(leaf, subleaf)]

    def cpuids(self, leaves: Sequence[Tuple[int, int]]) -> Dict[Tuple[int, int], Tuple[int, int, int, int]]:
        """Several CPUID leaves in one injection session."""
        cpu = self._cpu
        missing = [key for key in dict.fromkeys(leaves) if (cpu,) + key not in self._cpuid]
        if missing:
            with InjectedStub(self, [CPUID]) as stub:
                for key, regs in zip(missing, stub.run([(0, {"rax": leaf, "rcx": sub}) for leaf, sub in missing])):
                    self._cpuid[(cpu,) + key] = tuple(regs[r] & 0xFFFFFFFF for r in CLOBBERED)  # type: ignore
        return {key: self._cpuid[(cpu,) + key] for key in leaves}

    def maxphyaddr(self) -> int:
        """MAXPHYADDR: CPUID.80000008H:EAX[7:0] executed on the target; when no instruction
        can run at this stop, the ``INFO maxphyaddr`` line the vtdbg lab prints."""
        if self._maxphyaddr is None:
            try:
                found = self.cpuids([(0x80000000, 0), (0x80000008, 0)])
                if found[(0x80000000, 0)][0] >= 0x80000008:
                    self._maxphyaddr = found[(0x80000008, 0)][0] & 0xFF
                else:
                    self._maxphyaddr = 36  # the SDM's value when the leaf is missing
            except TargetError as exc:
                info = bp.console_info(self.console_output())
                if "maxphyaddr" not in info:
                    raise TargetError("MAXPHYADDR unknown: %s" % exc) from None
                self._maxphyaddr = info["maxphyaddr"]
        return self._maxphyaddr

    def is_plain_ram(self, pa: int, size: int) -> bool:
        """True when [pa, pa+size) is RAM outside the legacy VGA/ROM window (writable and
        executable without surprises)."""
        return 0 <= pa and pa + size <= self._ranges[0][1] and (
            pa + size <= _LEGACY_WINDOW[0] or pa >= _LEGACY_WINDOW[1])

    def silent_commands(self, commands: List[str]) -> None:
        """Run commands that print nothing when they succeed; any output is an error."""
        for line in pack_lines([[c] for c in commands]):
            answer = self.command(line).strip()
            if answer:
                raise TargetError("Bochs refused %r: %s" % (line[:60], answer.splitlines()[0]))

    # -- breakpoints --------------------------------------------------------------------------
    def break_at(self, address: int, on_hit: OnHit, physical: bool = False) -> Breakpoint:
        """A linear (``lb``, default) or physical (``pb``) breakpoint.  When a run stops on
        it, ``on_hit(cpu)`` decides: True stops there, False continues the run."""
        verb, kind = ("pb", "pbreakpoint") if physical else ("lb", "lbreakpoint")
        text = self.command("%s 0x%x; blist" % (verb, address))
        fresh = [num for num, k, addr in bp.parse_blist(text)
                 if k == kind and addr == address and num not in self._breakpoints]
        if not fresh:
            raise TargetError("Bochs did not set a breakpoint at 0x%x: %s" % (address, text.strip()[:200]))
        number = max(fresh)
        handle = Breakpoint(address, lambda: self._delete_breakpoint(number))
        self._breakpoints[number] = (handle, on_hit)
        return handle

    def _delete_breakpoint(self, number: int) -> None:
        self._breakpoints.pop(number, None)
        if self._ended is None and self._bochs.alive:
            self.command("d %d" % number)

    def set_vmexit_break(self, enabled: bool) -> None:
        """Make runs stop after every VM exit of every CPU (Bochs's ``vmexitbp``), or not.

        ``vmexitbp`` toggles the flag of the debugger's current CPU only, so every CPU is
        switched in one line (``set $cpu = N; vmexitbp; ...``, the current CPU restored).
        An INIT resets a CPU, flag included (Bochs 2.7 ``BX_CPU_C::reset``), and an OS or
        hypervisor starts its other CPUs with INIT-SIPI-SIPI: on a machine with several
        CPUs a write watchpoint on the local APIC's ICR therefore stops every run right
        after an IPI is sent, and :meth:`_run_until` switches cleared flags on again and
        continues (the woken CPU is still waiting for its SIPI then).
        """
        wrong = [cpu for cpu in range(self._cpus) if self._vmexit_break.get(cpu, False) != enabled]
        for _attempt in range(2):
            if not wrong:
                break
            states = self._toggle_vmexit(wrong)
            wrong = [cpu for cpu in wrong if states[cpu] != enabled]
        if wrong:
            raise TargetError("vmexitbp did not switch CPU %s %s" % (wrong, "on" if enabled else "off"))
        if self._cpus > 1:
            self._watch_icr(enabled)

    def _toggle_vmexit(self, cpus: Sequence[int], times: int = 1) -> Dict[int, bool]:
        """Toggle the ``vmexitbp`` flag of ``cpus`` ``times`` times each (one line); returns
        each CPU's state after its last toggle and records it."""
        commands: List[str] = []
        for cpu in cpus:
            if self._cpus > 1:
                commands.append("set $cpu = %d" % cpu)
            commands += ["vmexitbp"] * times
        if self._cpus > 1:
            commands.append("set $cpu = %d" % self._cpu)
        answer = self.command("; ".join(commands))
        words = [w for w in answer.split() if w in ("enabled", "disabled")]
        if len(words) != len(cpus) * times:
            raise TargetError("unexpected answer to vmexitbp: %s" % answer.strip()[:160])
        states = {}
        for index, cpu in enumerate(cpus):
            states[cpu] = words[index * times + times - 1] == "enabled"
            self._vmexit_break[cpu] = states[cpu]
        self._toggle_answers = words
        return states

    def _rearm_vmexit(self) -> None:
        """After an IPI: switch on again the VM-exit stops an INIT cleared (one line when
        none was cleared, two otherwise)."""
        armed = [cpu for cpu in range(self._cpus) if self._vmexit_break.get(cpu)]
        if not armed:
            return
        self._toggle_vmexit(armed, times=2)
        words = self._toggle_answers
        # a flag that was on answers "disabled, enabled"; one an INIT cleared "enabled, disabled"
        cleared = [cpu for index, cpu in enumerate(armed) if words[2 * index] == "enabled"]
        if cleared:
            self.vmexit_rearms += len(cleared)
            self.set_vmexit_break(True)

    def _watch_icr(self, enabled: bool) -> None:
        if enabled and self._icr_watch is None:
            try:
                base = self._param_msr(0x1B) & ~0xFFF
            except TargetError:
                base = 0xFEE00000
            address = base + 0x300
            answer = self.command("watch w 0x%x 4" % address)
            if "inserted" not in answer:
                raise TargetError("Bochs did not set a watchpoint on the APIC ICR: %s" % answer.strip()[:160])
            self._icr_watch = address
        elif not enabled and self._icr_watch is not None:
            address, self._icr_watch = self._icr_watch, None
            if self._ended is None and self._bochs.alive:
                self.command("unwatch 0x%x" % address)

    def _is_icr_stop(self, event: Dict[str, Any]) -> bool:
        if self._icr_watch is None or event["event"] != "other":
            return False
        match = _WATCH_AT.search(event.get("detail") or "")
        return match is not None and int(match.group(1), 16) == self._icr_watch

    # -- running ------------------------------------------------------------------------------
    def resume(self) -> None:
        """Run until the next stop (see :meth:`cont`); the event is in :attr:`last_stop`."""
        self.cont()

    def step(self, count: int = 1) -> None:
        """Execute ``count`` instructions on the current CPU (``s``)."""
        if count < 1:
            raise TargetError("step count must be positive")
        self._run("s" if count == 1 else "s %d" % count, time.monotonic() + self.timeout, "step")

    def cont(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Run the guest until it stops and return the stop event.

        Event keys: ``event`` ("vmexit", "magic", "breakpoint", "step", "other" for the
        reasons Bochs stopped on its own; "halted" when every CPU executed HLT with
        interrupts disabled, "timeout" when ``timeout`` seconds passed -- both interrupted
        with SIGINT -- and "ended" when Bochs exited), ``cpu``, ``ticks``, ``pa`` (physical
        address of the next instruction), ``cs``, ``rip``, ``instruction``, ``breakpoint``
        (Bochs number), ``console`` (port-0xE9 text printed during this call), ``seconds``
        and ``detail``.  Breakpoints whose on_hit returns False, and magic breakpoints when
        :attr:`continue_past_magic` is set, are continued past.
        """
        return self._run_until(timeout, self.continue_past_magic)

    def run_to_vm_exit(self, timeout: Optional[float] = None, skip_magic: bool = True) -> Dict[str, Any]:
        """Run until the next VM exit (``vmexitbp`` is switched on and stays on) and return
        its stop event (``event == "vmexit"`` and the CPU that exited), or the event that
        ended the wait first (halted, timeout, ended, a breakpoint, or a magic breakpoint
        when ``skip_magic`` is False)."""
        self.set_vmexit_break(True)
        return self._run_until(timeout, skip_magic)

    def run_exits(self, count: int, timeout: Optional[float] = None, skip_magic: bool = True,
                  on_exit: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
        """The one-shot helper: run until ``count`` VM exits have happened (``on_exit`` is
        called at each, stopped there) or the guest halts, Bochs ends, or ``timeout``
        seconds pass in total.  Returns ``{"exits": [events], "complete": bool,
        "last": event}``; a one-shot command reports what it saw and exits 2 unless
        ``complete``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        exits: List[Dict[str, Any]] = []
        event: Dict[str, Any] = self.last_stop
        while len(exits) < count:
            event = self.run_to_vm_exit(max(deadline - time.monotonic(), 0.0), skip_magic)
            if event["event"] != "vmexit":
                break
            exits.append(event)
            if on_exit is not None:
                on_exit(event)
        return {"exits": exits, "complete": len(exits) >= count, "last": event}

    def _run_until(self, timeout: Optional[float], skip_magic: bool) -> Dict[str, Any]:
        """Continue until a stop that is not continued past automatically."""
        started = time.monotonic()
        deadline = started + (self.timeout if timeout is None else timeout)
        printed: List[str] = []
        while True:
            event = self._run("c", deadline, "")
            printed.append(event["console"])
            kind = event["event"]
            if kind == "magic" and skip_magic:
                continue
            if self._is_icr_stop(event):
                self._rearm_vmexit()
                continue
            if kind == "breakpoint":
                entry = self._breakpoints.get(event["breakpoint"] or -1)
                cpu = event["cpu"] if event["cpu"] is not None else self._cpu
                if entry is not None and not entry[1](cpu):
                    continue
            break
        event["console"] = "".join(printed)
        event["seconds"] = round(time.monotonic() - started, 6)
        self.last_stop = event
        return event

    def _run(self, line: str, deadline: float, default_kind: str) -> Dict[str, Any]:
        """One run command: send it, wait (noticing halts), interrupt on timeout."""
        self._check_alive()
        started = time.monotonic()
        watcher = _HaltWatcher(self._bochs.log_path, self._cpus)
        interrupted = ""
        try:
            try:
                raw = self._bochs.run(line, deadline, watcher.poll)
            except BochsTimeout:
                raw, signalled = self._bochs.interrupt()
                if signalled:
                    interrupted = "halted" if watcher.halted else "timeout"
        except BochsEnded as exc:
            self._ended = str(exc)
            console = exc.partial.partition("\n")[2]
            self._keep_console(console)
            self.stop_generation += 1
            event = self._event("ended", None, console, time.monotonic() - started)
            event["detail"] = str(exc)
            self.last_stop = event
            return event
        except KeyboardInterrupt:
            # leave Bochs stopped at its prompt so that close() can quit it cleanly
            self.stop_generation += 1
            try:
                if self._bochs.alive and not self._bochs.at_prompt:
                    self._keep_console(bp.split_stop(self._bochs.interrupt()[0])[0])
            except TargetError:
                pass
            raise
        self.stop_generation += 1
        console, report, _rest = bp.split_stop(raw)
        if interrupted:
            kind = interrupted
        elif report is None:
            kind = "other"
        elif report.kind == "step":
            kind = default_kind or "other"
        else:
            kind = report.kind
        self._keep_console(console)
        event = self._event(kind, report, console, time.monotonic() - started)
        self.last_stop = event
        return event

    def _event(self, kind: str, report: Optional[bp.StopReport], console: str, seconds: float) -> Dict[str, Any]:
        cpu = report.cpu if report is not None and report.cpu is not None else (self._cpu if report else None)
        where = report.cpus.get(cpu) if report is not None and cpu is not None else None
        return {
            "event": kind,
            "cpu": cpu,
            "ticks": report.ticks if report else None,
            "pa": where[0] if where else None,
            "cs": where[1] if where else None,
            "rip": where[2] if where else None,
            "instruction": where[3] if where else None,
            "breakpoint": report.breakpoint if report else None,
            "console": console,
            "seconds": round(seconds, 6),
            "detail": report.header if report else "",
        }

    def _keep_console(self, text: str) -> None:
        if not text:
            return
        self._console.append(text)
        self._console_size += len(text)
        while self._console_size > self.console_limit and len(self._console) > 1:
            dropped = self._console.pop(0)
            self._console_size -= len(dropped)
            self.console_dropped += len(dropped)

    # -- lifetime -------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True while Bochs runs and the session is usable."""
        return self._ended is None and self._bochs.alive

    def close(self) -> None:
        """Quit Bochs (terminate or kill it if it does not listen) and reap it; idempotent."""
        if self._ended is None:
            self._ended = "closed"
        self._bochs.close()

    def __enter__(self) -> BochsTarget:
        return self


class _HaltWatcher:
    """Notices, from the Bochs log, that every CPU executed HLT with interrupts disabled
    since a run began: such a guest never stops by itself, so the run is interrupted at
    once instead of waiting for the timeout."""

    def __init__(self, path: str, cpus: int) -> None:
        self.path = path
        self.cpus = cpus
        self.halted = False
        self._seen: Set[int] = set()
        try:
            self._offset = os.path.getsize(path)
        except OSError:
            self._offset = -1
        self._last_check = 0.0

    def poll(self) -> bool:
        now = time.monotonic()
        if self._offset < 0 or now - self._last_check < 0.1:
            return self.halted
        self._last_check = now
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                fresh = handle.read()
        except OSError:
            return self.halted
        cut = fresh.rfind(b"\n") + 1
        self._offset += cut
        self._seen.update(bp.halted_cpus(fresh[:cut].decode("latin-1")))
        self.halted = len(self._seen) >= self.cpus
        return self.halted


def _ranges(ram: Optional[int], roms: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Readable physical ranges: RAM (32 MiB, Bochs's default, if the log did not say) and
    the ROMs that lie outside it (the system BIOS below 4 GiB)."""
    size = ram if ram else 32 << 20
    ranges = [(0, size)]
    for base, length in roms:
        if base >= size:
            ranges.append((base, length))
    return sorted(ranges)


def open_bochs(rest: str) -> BochsTarget:
    """Factory for ``bochs:CONFIG.bxrc`` URIs (vtdbg.target.open)."""
    return BochsTarget(rest)
