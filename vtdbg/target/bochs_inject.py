"""Executing single instructions on a Bochs target (RDMSR, CPUID) and undoing every trace.

Bochs's debugger can read memory and registers but has no RDMSR or CPUID command.  What it
can do is write memory (``setpmem``), set registers and single-step (``s``), which is
enough to run one instruction of our choice and read its result (the technique
shared/reference/bochs-lab.md section 10 verified).  Doing it safely needs care that a
plain "write, step, restore" lacks:

* Bochs caches decoded instructions by the physical address a trace starts at, and
  ``setpmem`` does not invalidate that cache (measured on 2.7: after restoring the bytes
  the CPU went on executing the stale stub).  The stub is therefore written *inside* a
  multi-byte instruction at or after RIP -- an address no trace starts at, so it is
  decoded fresh -- and ends with INVD, which empties the instruction cache (WBINVD does
  not in 2.7), so no decoded copy survives the restore.
* Interrupts and the trap flag are masked while stepping, so a step executes exactly our
  instruction; the step's stop report proves where it ended.
* Only VMX root or non-VMX code at CPL 0 is accepted: INVD is privileged, and in VMX
  non-root CPUID and INVD cause VM exits.

Several executions share one session (write once, restore once), and several executions
are packed into one debugger line (``set ...; s; r; set ...; s; r``), because every line is
a transaction.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from vtdbg.lib.errors import TargetError
from vtdbg.target import bochs_parse as bp
from vtdbg.target.bochs_pty import pack_lines

if TYPE_CHECKING:  # pragma: no cover
    from vtdbg.target.bochs import BochsTarget

RDMSR = b"\x0f\x32"
CPUID = b"\x0f\xa2"
INVD = b"\x0f\x08"
_RFLAGS_TF = 1 << 8
_RFLAGS_IF = 1 << 9
_RFLAGS_VM = 1 << 17
#: 64-bit register -> the name Bochs accepts outside 64-bit mode
NARROW = {"rax": "eax", "rbx": "ebx", "rcx": "ecx", "rdx": "edx", "rsi": "esi", "rdi": "edi",
          "rsp": "esp", "rbp": "ebp", "rip": "eip"}
#: registers RDMSR and CPUID may change (restored afterwards)
CLOBBERED = ("rax", "rbx", "rcx", "rdx")

Run = Tuple[int, Dict[str, int]]  # (index of the instruction in the stub, registers to set)


class InjectedStub:
    """A session during which ``instructions`` sit in guest memory near RIP.

    ``with InjectedStub(target, [RDMSR]) as stub: stub.run([(0, {"rcx": 0x480})])``
    returns the general registers after each execution; leaving the block executes INVD,
    restores the bytes, RAX..RDX, RFLAGS and RIP and checks the bytes read back.
    """

    def __init__(self, target: BochsTarget, instructions: Sequence[bytes]) -> None:
        self.target = target
        self.instructions = [bytes(i) for i in instructions]
        self.offsets: List[int] = []
        offset = 0
        for code in self.instructions:
            self.offsets.append(offset)
            offset += len(code)
        self.invd_offset = offset
        self.code = b"".join(self.instructions) + INVD
        self.regs: Dict[str, int] = {}
        self.pa = 0
        self.stub_rip = 0
        self.original = b""
        self.long_mode = False
        self._written = False

    # -- naming ---------------------------------------------------------------------------
    def _name(self, reg: str) -> str:
        return reg if self.long_mode else NARROW.get(reg, reg)

    # -- set-up -----------------------------------------------------------------------------
    def __enter__(self) -> InjectedStub:
        target = self.target
        regs = target.registers()
        self.regs = regs
        if target.vmx_state()["in_vmx_guest"]:
            raise TargetError("cannot run an instruction in VMX non-root mode (it would cause a VM exit); "
                              "stop in the hypervisor first, e.g. run_to_vm_exit()")
        protected = bool(regs.get("cr0", 0) & 1)
        if regs["rflags"] & _RFLAGS_VM or (protected and regs.get("cs", 0) & 3):
            raise TargetError("cannot run an instruction on the target: the CPU is not at CPL 0")
        self.long_mode = bool(regs.get("efer", 0) & (1 << 10) and regs.get("cs_ar", 0) & (1 << 13))
        rip = regs["rip"]
        linear = rip if self.long_mode else (regs.get("cs_base", 0) + rip) & 0xFFFFFFFF
        spot: Optional[int] = None
        for address, length, _text in bp.parse_disasm(target.command("u /4 0x%x" % linear)):
            if length >= 2:
                spot = address + 1  # inside an instruction: no decoded trace starts here
                break
        if spot is None or (spot & ~0xFFF) != (linear & ~0xFFF) or (spot & 0xFFF) + len(self.code) > 0x1000:
            raise TargetError("cannot run an instruction near 0x%x: no multi-byte instruction among the next "
                              "four on this page" % linear)
        if regs.get("cr0", 0) & (1 << 31):
            pa = bp.parse_page(target.command("page 0x%x" % spot), spot)
            if pa is None:
                raise TargetError("cannot run an instruction: 0x%x is not mapped" % spot)
        else:
            pa = spot
        if not target.is_plain_ram(pa, len(self.code)):
            raise TargetError("cannot run an instruction at physical 0x%x: not plain RAM" % pa)
        self.pa = pa
        self.stub_rip = rip + (spot - linear)
        self.original = target.read_phys(pa, len(self.code))
        target.stop_generation += 1
        self._written = True
        masked = regs["rflags"] & ~(_RFLAGS_IF | _RFLAGS_TF)
        target.silent_commands(["setpmem 0x%x 1 0x%x" % (pa + i, b) for i, b in enumerate(self.code)]
                               + ["set $eflags = 0x%x" % masked])
        return self

    # -- executions -------------------------------------------------------------------------
    def run(self, runs: Sequence[Run]) -> List[Dict[str, int]]:
        """Execute the stub's instruction ``index`` once per run, after setting the given
        registers; several runs share a debugger line."""
        commands: List[List[str]] = []
        for index, values in runs:
            sets = ["set %s = 0x%x" % (self._name(r), v) for r, v in values.items()]
            commands.append(sets + ["set %s = 0x%x" % (self._name("rip"), self.stub_rip + self.offsets[index]),
                                    "s", "r"])
        results: List[Dict[str, int]] = []
        position = 0
        for line in pack_lines(commands):
            text = self.target.command(line)
            blocks = _split_steps(text)
            count = line.count("; s; r")
            if len(blocks) != count:
                raise TargetError("expected %d single steps, Bochs reported %d: %s" % (count, len(blocks), text[:200]))
            for block in blocks:
                index = runs[position][0]
                _console, report, rest = bp.split_stop(block)
                where = report.cpus.get(self.target.current_cpu()) if report else None
                expected = self.pa + self.offsets[index] + len(self.instructions[index])
                if where is None or where[0] != expected:
                    raise TargetError("the injected instruction did not complete (stopped at %s, expected 0x%x)"
                                      % ("0x%x" % where[0] if where else "?", expected))
                after = bp.parse_registers(rest)
                if "rax" not in after:
                    raise TargetError("no registers after the injected instruction: %s" % rest[:200])
                results.append(after)
                position += 1
        return results

    # -- undo -------------------------------------------------------------------------------
    def __exit__(self, *exc: object) -> None:
        target = self.target
        target.stop_generation += 1
        if not self._written or not target.alive:
            return
        # INVD first: drop every decoded copy of the stub before the original bytes return
        flush = target.command("set %s = 0x%x; s" % (self._name("rip"), self.stub_rip + self.invd_offset))
        _c, report, _r = bp.split_stop(flush)
        where = report.cpus.get(target.current_cpu()) if report else None
        flushed = where is not None and where[0] == self.pa + len(self.code)
        regs = self.regs
        restore = ["setpmem 0x%x 1 0x%x" % (self.pa + i, b) for i, b in enumerate(self.original)]
        restore += ["set %s = 0x%x" % (self._name(r), regs[r] if self.long_mode else regs[r] & 0xFFFFFFFF)
                    for r in CLOBBERED]
        restore += ["set $eflags = 0x%x" % regs["rflags"],
                    "set %s = 0x%x" % (self._name("rip"), regs["rip"]),
                    "xp /%dbx 0x%x" % (len(self.code), self.pa)]
        answer = ""
        for line in pack_lines([[c] for c in restore]):
            answer = target.command(line)
        try:
            back = bp.dump_bytes(bp.parse_dump(answer, self.pa, len(self.code), unit=1), unit=1)
        except bp.DumpError:
            back = b""
        if (back != self.original or not flushed) and exc[0] is None:
            raise TargetError("could not undo the injected instruction at 0x%x cleanly (%s)" % (
                self.pa, "bytes differ" if back != self.original else "INVD did not run"))


def _split_steps(text: str) -> List[str]:
    """Cut a packed answer into one piece per single step (each begins with "Next at t=")."""
    starts = [i for i in range(len(text)) if text.startswith("Next at t=", i)]
    return [text[start:end] for start, end in zip(starts, starts[1:] + [len(text)])]
