"""A small x86-64 interpreter with a simulated VMX CPU, for tests of live VMREAD.

The pykd stand-in (tests/pykd_standin) has no way to run code, so live-read tests plug this
in: :func:`attach` makes the stand-in's ``go()`` execute instructions from RIP until a
debugger breakpoint (or a fault), and ``trace()`` execute one.  Only the instruction forms
vtdbg's stubs and VMREAD gadgets use are decoded -- anything else is an "invalid opcode"
fault, which is exactly what a test of a fault inside the stub wants.

:class:`VmxCpu` models what the stubs depend on, following the SDM: VMREAD/VMWRITE with
VMfailInvalid (no current VMCS) and VMfailValid (unsupported field: error 12; read-only
field without IA32_VMX_MISC[29]: error 13), the VM-instruction error written into the
current VMCS, an on-die copy of every active VMCS (so memory can be stale), VMCLEAR writing
the copy to memory in the model's own layout, VMPTRLD checking the revision id.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from vtdbg.layouts.model import INVERSE_TRANSFORMS, TRANSFORMS

MASK64 = (1 << 64) - 1
NONE_POINTER = MASK64
_REG64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
CF, PF, AF, ZF, SF, OF, DF, IF, TF = 1, 4, 0x10, 0x40, 0x80, 0x800, 0x400, 0x200, 0x100


class Fault(Exception):
    """An exception the simulated CPU raised (#UD, #GP, #PF): it stops the run there."""

    def __init__(self, kind: str, rip: int, detail: str = "") -> None:
        super().__init__("%s at 0x%x %s" % (kind, rip, detail))
        self.kind = kind
        self.rip = rip


# -- VMX -------------------------------------------------------------------------------------------
def _width(encoding: int) -> int:
    return {0: 2, 1: 8, 2: 4, 3: 8}[(encoding >> 13) & 3]


@dataclass
class VmxCpu:
    """VMX state of one simulated processor.

    ``layout``: encoding -> (offset, size, transform) used when VMCLEAR writes a VMCS to
    memory and VMPTRLD reads one; ``supported``: FULL encodings VMREAD/VMWRITE accept.
    """

    revision: int
    misc: int
    supported: Set[int]
    layout: Dict[int, Tuple[int, int, Optional[str]]]
    read_phys: Callable[[int, int], bytes]
    write_phys: Callable[[int, bytes], None]
    vmxon: int = 0
    current: int = NONE_POINTER
    active: Dict[int, Dict[int, int]] = field(default_factory=dict)
    log: List[str] = field(default_factory=list)
    in_vmx: bool = True
    #: raise a #GP on the VMWRITE after this many (fault injection inside a stub)
    fault_after_vmwrites: Optional[int] = None

    def _fail_valid(self, number: int) -> int:
        self.active[self.current][0x4400] = number
        return ZF

    def _fail(self, number: int) -> int:
        if self.current == NONE_POINTER:
            return CF
        return self._fail_valid(number)

    def _lookup(self, encoding: int) -> Tuple[int, bool]:
        full = encoding & ~1 if (encoding >> 13) & 3 == 1 else encoding
        return full, bool(encoding & 1) and (encoding >> 13) & 3 == 1

    def vmread(self, encoding: int) -> Tuple[int, int]:
        """(flags, value) -- flags 0 is VMsucceed."""
        self.log.append("vmread %04x" % encoding)
        if self.current == NONE_POINTER:
            return CF, 0
        full, high = self._lookup(encoding & 0xFFFFFFFF)
        if full not in self.supported or encoding >> 32:
            return self._fail_valid(12), 0
        value = self.active[self.current].get(full, 0)
        return 0, (value >> 32 if high else value & ((1 << (8 * _width(full))) - 1))

    def vmwrite(self, encoding: int, value: int) -> int:
        """Flags of a VMWRITE."""
        self.log.append("vmwrite %04x %x" % (encoding, value))
        if self.fault_after_vmwrites is not None:
            if self.fault_after_vmwrites == 0:
                self.fault_after_vmwrites = None
                raise Fault("#GP", 0, "injected on VMWRITE")
            self.fault_after_vmwrites -= 1
        if self.current == NONE_POINTER:
            return CF
        full, high = self._lookup(encoding & 0xFFFFFFFF)
        if full not in self.supported:
            return self._fail_valid(12)
        if (full >> 10) & 3 == 1 and not self.misc & (1 << 29):
            return self._fail_valid(13)
        fields = self.active[self.current]
        if high:
            fields[full] = (fields.get(full, 0) & 0xFFFFFFFF) | ((value & 0xFFFFFFFF) << 32)
        else:
            fields[full] = value & ((1 << (8 * _width(full))) - 1)
        return 0

    def _region_ok(self, pa: int) -> bool:
        return not pa & 0xFFF and pa != self.vmxon

    def vmclear(self, pa: int) -> int:
        """Flags of VMCLEAR [pa]: the on-die copy goes to memory, launch state becomes clear."""
        self.log.append("vmclear %x" % pa)
        if not self._region_ok(pa):
            return self._fail(2 if pa & 0xFFF else 3)
        if pa in self.active:
            self.flush(pa)
            del self.active[pa]
        self.write_phys(pa + 8, struct.pack("<I", 0))
        if self.current == pa:
            self.current = NONE_POINTER
        return 0

    def flush(self, pa: int) -> None:
        """Write the on-die copy of the VMCS at ``pa`` to memory in the model's layout."""
        for encoding, value in self.active[pa].items():
            where = self.layout.get(encoding)
            if where is None:
                continue
            offset, size, transform = where
            stored = INVERSE_TRANSFORMS[transform](value) & ((1 << (8 * size)) - 1)
            self.write_phys(pa + offset, stored.to_bytes(size, "little"))

    def vmptrld(self, pa: int) -> int:
        """Flags of VMPTRLD [pa]."""
        self.log.append("vmptrld %x" % pa)
        if not self._region_ok(pa) or pa == NONE_POINTER:
            return self._fail(9 if pa & 0xFFF else 10)
        revision = struct.unpack("<I", self.read_phys(pa, 4))[0]
        if revision != self.revision:
            return self._fail(11)
        if pa not in self.active:
            page = self.read_phys(pa, 0x1000)
            values = {}
            for encoding, (offset, size, transform) in self.layout.items():
                raw = int.from_bytes(page[offset:offset + size], "little")
                values[encoding] = TRANSFORMS[transform](raw)
            self.active[pa] = values
        self.current = pa
        return 0


# -- the interpreter ---------------------------------------------------------------------------------
@dataclass
class Cpu:
    """Registers of the simulated processor, as the stand-in stores them (``efl`` = RFLAGS)."""

    regs: Dict[str, int]
    vmx: VmxCpu
    read_linear: Callable[[int, int], bytes]
    write_linear: Callable[[int, bytes], None]
    msrs: Dict[int, int]
    cpuid: Dict[int, Tuple[int, int, int, int]] = field(default_factory=dict)
    steps: int = 0
    trace_log: List[int] = field(default_factory=list)

    # register helpers ----------------------------------------------------------------------
    def get(self, number: int, size: int, rex: bool = False) -> int:
        if size == 1 and not rex and 4 <= number <= 7:
            return (self.regs.get(_REG64[number - 4], 0) >> 8) & 0xFF
        return self.regs.get(_REG64[number], 0) & ((1 << (8 * size)) - 1)

    def put(self, number: int, size: int, value: int, rex: bool = False) -> None:
        if size == 1 and not rex and 4 <= number <= 7:
            name = _REG64[number - 4]
            self.regs[name] = (self.regs.get(name, 0) & ~0xFF00) | ((value & 0xFF) << 8)
            return
        name = _REG64[number]
        old = self.regs.get(name, 0)
        if size == 8:
            self.regs[name] = value & MASK64
        elif size == 4:
            self.regs[name] = value & 0xFFFFFFFF  # 32-bit writes zero-extend
        else:
            mask = (1 << (8 * size)) - 1
            self.regs[name] = (old & ~mask) | (value & mask)

    @property
    def flags(self) -> int:
        return self.regs.get("efl", 2)

    @flags.setter
    def flags(self, value: int) -> None:
        self.regs["efl"] = (value | 2) & 0xFFFFFFFF

    def set_flags(self, cf: bool, zf: bool, sf: bool = False, of: bool = False, result: int = 0) -> None:
        parity = bin(result & 0xFF).count("1") % 2 == 0
        value = self.flags & ~(CF | PF | AF | ZF | SF | OF)
        value |= (CF if cf else 0) | (ZF if zf else 0) | (SF if sf else 0) | (OF if of else 0) | (PF if parity else 0)
        self.flags = value

    def vmx_flags(self, result: int) -> None:
        self.flags = (self.flags & ~(CF | PF | AF | ZF | SF | OF)) | result

    # memory ---------------------------------------------------------------------------------------
    def load(self, address: int, size: int) -> int:
        return int.from_bytes(self.read_linear(address & MASK64, size), "little")

    def store(self, address: int, size: int, value: int) -> None:
        self.write_linear(address & MASK64, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    # decoding ------------------------------------------------------------------------------------
    def step(self) -> None:
        """Execute one instruction (Fault on anything the model does not know)."""
        start = self.regs["rip"]
        self.trace_log.append(start)
        self.steps += 1
        fetch = self.read_linear(start, 16)
        at = 0
        opsize16 = rep = False
        rex = 0
        while fetch[at] in (0x66, 0xF3, 0xF2):
            if fetch[at] == 0x66:
                opsize16 = True
            elif fetch[at] == 0xF3:
                rex_rep = True
                rep = rex_rep
            at += 1
        if 0x40 <= fetch[at] <= 0x4F:
            rex = fetch[at]
            at += 1
        w, r, x, b = bool(rex & 8), bool(rex & 4), bool(rex & 2), bool(rex & 1)
        size = 8 if w else (2 if opsize16 else 4)
        op = fetch[at]
        at += 1

        def modrm() -> Tuple[int, int, Optional[int], int]:
            """(mod, reg, rm register or None, effective address)."""
            nonlocal at
            byte = fetch[at]
            at += 1
            mod, reg, rm = byte >> 6, ((byte >> 3) & 7) | (8 if r else 0), byte & 7
            if mod == 3:
                return mod, reg, rm | (8 if b else 0), 0
            if rm == 4:
                sib = fetch[at]
                at += 1
                base = (sib & 7) | (8 if b else 0)
                index = ((sib >> 3) & 7) | (8 if x else 0)
                address = self.regs.get(_REG64[base], 0)
                if index != 4:
                    address += self.regs.get(_REG64[index], 0) << (sib >> 6)
            elif rm == 5 and mod == 0:
                disp = struct.unpack_from("<i", fetch, at)[0]
                at += 4
                return mod, reg, None, ("rip", disp)  # type: ignore[return-value]
            else:
                address = self.regs.get(_REG64[rm | (8 if b else 0)], 0)
            if mod == 1:
                address += struct.unpack_from("<b", fetch, at)[0]
                at += 1
            elif mod == 2:
                address += struct.unpack_from("<i", fetch, at)[0]
                at += 4
            return mod, reg, None, address & MASK64

        def rm_get(rm: Optional[int], address: int, width: int) -> int:
            return self.get(rm, width, bool(rex)) if rm is not None else self.load(address, width)

        def rm_put(rm: Optional[int], address: int, width: int, value: int) -> None:
            if rm is not None:
                self.put(rm, width, value, bool(rex))
            else:
                self.store(address, width, value)

        def finish(next_rip: int) -> None:
            self.regs["rip"] = next_rip & MASK64

        def alu(kind: int, left: int, right: int, width: int) -> Optional[int]:
            bits = 8 * width
            mask = (1 << bits) - 1
            left &= mask
            right &= mask
            if kind in (0, 2):  # add (adc treated as add: unused)
                full = left + right
                result = full & mask
                of = bool(~(left ^ right) & (left ^ result) & (1 << (bits - 1)))
                self.set_flags(full > mask, result == 0, bool(result >> (bits - 1)), of, result)
                return result
            if kind in (5, 7, 3):  # sub, cmp (sbb unused)
                result = (left - right) & mask
                of = bool((left ^ right) & (left ^ result) & (1 << (bits - 1)))
                self.set_flags(left < right, result == 0, bool(result >> (bits - 1)), of, result)
                return None if kind == 7 else result
            result = {1: left | right, 4: left & right, 6: left ^ right}[kind]
            self.set_flags(False, result == 0, bool(result >> (bits - 1)), False, result)
            return result

        def cond(code: int) -> bool:
            f = self.flags
            base = {0: bool(f & OF), 1: bool(f & CF), 2: bool(f & ZF), 3: bool(f & (CF | ZF)), 4: bool(f & SF),
                    5: bool(f & PF), 6: bool(f & SF) != bool(f & OF),
                    7: bool(f & ZF) or bool(f & SF) != bool(f & OF)}[code >> 1]
            return base != bool(code & 1)

        try:
            if op == 0x0F:
                op2 = fetch[at]
                at += 1
                if op2 in (0x78, 0x79):
                    mod, reg, rm, address = modrm()
                    if not self.vmx.in_vmx:
                        raise Fault("#UD", start, "VMX instruction outside VMX operation")
                    if op2 == 0x78:
                        flags, value = self.vmx.vmread(self.get(reg, 8))
                        if not flags:
                            rm_put(rm, address, 8, value)
                    else:
                        flags = self.vmx.vmwrite(self.get(reg, 8), rm_get(rm, address, 8))
                    self.vmx_flags(flags)
                elif op2 == 0xC7:
                    mod, reg, rm, address = modrm()
                    if rm is not None:
                        raise Fault("#UD", start)
                    if not self.vmx.in_vmx:
                        raise Fault("#UD", start, "VMX instruction outside VMX operation")
                    kind = reg & 7
                    if kind == 6 and opsize16:
                        flags = self.vmx.vmclear(self.load(address, 8))
                    elif kind == 6:
                        flags = self.vmx.vmptrld(self.load(address, 8))
                    elif kind == 7:
                        self.store(address, 8, self.vmx.current)
                        flags = 0
                    else:
                        raise Fault("#UD", start)
                    self.vmx_flags(flags)
                elif op2 == 0x32:  # rdmsr
                    index = self.regs.get("rcx", 0) & 0xFFFFFFFF
                    if index not in self.msrs:
                        raise Fault("#GP", start, "rdmsr 0x%x" % index)
                    value = self.msrs[index]
                    self.put(0, 4, value)
                    self.put(2, 4, value >> 32)
                elif op2 == 0xA2:  # cpuid
                    leaf = self.regs.get("rax", 0) & 0xFFFFFFFF
                    values = self.cpuid.get(leaf, (0, 0, 0, 0))
                    for number, value in zip((0, 3, 1, 2), values):
                        self.put(number, 4, value)
                elif op2 == 0x08:  # invd: nothing cached in this model
                    pass
                elif op2 == 0xBA:
                    mod, reg, rm, address = modrm()
                    bit = fetch[at]
                    at += 1
                    value = rm_get(rm, address, size)
                    bit %= 8 * size
                    carry = bool(value >> bit & 1)
                    if reg & 7 == 6:
                        rm_put(rm, address, size, value & ~(1 << bit))
                    elif reg & 7 != 4:
                        raise Fault("#UD", start)
                    self.flags = (self.flags & ~CF) | (CF if carry else 0)
                elif 0x90 <= op2 <= 0x9F:
                    mod, reg, rm, address = modrm()
                    rm_put(rm, address, 1, 1 if cond(op2 - 0x90) else 0)
                elif 0x80 <= op2 <= 0x8F:
                    disp = struct.unpack_from("<i", fetch, at)[0]
                    at += 4
                    finish(start + at + disp if cond(op2 - 0x80) else start + at)
                    return
                elif op2 in (0xB6, 0xB7):
                    mod, reg, rm, address = modrm()
                    self.put(reg, size, rm_get(rm, address, 1 if op2 == 0xB6 else 2))
                else:
                    raise Fault("#UD", start, "0f %02x" % op2)
            elif op < 0x40 and op & 7 < 6:
                kind, form = op >> 3, op & 7
                if form < 4:
                    width = 1 if form in (0, 2) else size
                    mod, reg, rm, address = modrm()
                    if form in (0, 1):
                        result = alu(kind, rm_get(rm, address, width), self.get(reg, width, bool(rex)), width)
                        if result is not None:
                            rm_put(rm, address, width, result)
                    else:
                        result = alu(kind, self.get(reg, width, bool(rex)), rm_get(rm, address, width), width)
                        if result is not None:
                            self.put(reg, width, result, bool(rex))
                else:
                    width = 1 if form == 4 else size
                    imm_size = 1 if form == 4 else min(width, 4)
                    imm = int.from_bytes(fetch[at:at + imm_size], "little", signed=True)
                    at += imm_size
                    result = alu(kind, self.get(0, width), imm, width)
                    if result is not None:
                        self.put(0, width, result)
            elif op in (0x80, 0x81, 0x83):
                width = 1 if op == 0x80 else size
                mod, reg, rm, address = modrm()
                imm_size = 4 if op == 0x81 else 1
                imm = int.from_bytes(fetch[at:at + imm_size], "little", signed=True)
                at += imm_size
                result = alu(reg & 7, rm_get(rm, address, width), imm, width)
                if result is not None:
                    rm_put(rm, address, width, result)
            elif op in (0x84, 0x85):
                width = 1 if op == 0x84 else size
                mod, reg, rm, address = modrm()
                alu(4, rm_get(rm, address, width), self.get(reg, width, bool(rex)), width)
            elif op in (0xA8, 0xA9):
                width = 1 if op == 0xA8 else size
                imm_size = 1 if op == 0xA8 else 4
                imm = int.from_bytes(fetch[at:at + imm_size], "little")
                at += imm_size
                alu(4, self.get(0, width), imm, width)
            elif op == 0xF6 or op == 0xF7:
                width = 1 if op == 0xF6 else size
                mod, reg, rm, address = modrm()
                if reg & 7 != 0:
                    raise Fault("#UD", start)
                imm_size = 1 if op == 0xF6 else 4
                imm = int.from_bytes(fetch[at:at + imm_size], "little")
                at += imm_size
                alu(4, rm_get(rm, address, width), imm, width)
            elif op in (0x88, 0x89, 0x8A, 0x8B):
                width = 1 if op in (0x88, 0x8A) else size
                mod, reg, rm, address = modrm()
                if op in (0x88, 0x89):
                    rm_put(rm, address, width, self.get(reg, width, bool(rex)))
                else:
                    self.put(reg, width, rm_get(rm, address, width), bool(rex))
            elif op == 0x8D:
                mod, reg, rm, address = modrm()
                self.put(reg, size, address)
            elif op in (0xC6, 0xC7):
                width = 1 if op == 0xC6 else size
                mod, reg, rm, address = modrm()
                imm_size = 1 if op == 0xC6 else min(width, 4)
                imm = int.from_bytes(fetch[at:at + imm_size], "little", signed=True)
                at += imm_size
                rm_put(rm, address, width, imm)
            elif 0xB0 <= op <= 0xB7:
                self.put((op - 0xB0) | (8 if b else 0), 1, fetch[at], bool(rex))
                at += 1
            elif 0xB8 <= op <= 0xBF:
                imm_size = 8 if w else 4
                value = int.from_bytes(fetch[at:at + imm_size], "little")
                self.put((op - 0xB8) | (8 if b else 0), 8 if w else 4, value)
                at += imm_size
            elif op in (0xFE, 0xFF):
                width = 1 if op == 0xFE else size
                mod, reg, rm, address = modrm()
                if reg & 7 not in (0, 1):
                    raise Fault("#UD", start)
                carry = self.flags & CF
                value = rm_get(rm, address, width)
                result = alu(0 if reg & 7 == 0 else 5, value, 1, width)
                self.flags = (self.flags & ~CF) | carry  # inc/dec keep CF
                rm_put(rm, address, width, result or 0)
            elif op == 0x87:
                width = size
                mod, reg, rm, address = modrm()
                left, right = rm_get(rm, address, width), self.get(reg, width, bool(rex))
                rm_put(rm, address, width, right)
                self.put(reg, width, left, bool(rex))
            elif op == 0x9F:  # lahf
                self.put(4, 1, (self.flags & (SF | ZF | AF | PF | CF)) | 2)
            elif 0x70 <= op <= 0x7F:
                disp = struct.unpack_from("<b", fetch, at)[0]
                at += 1
                finish(start + at + disp if cond(op - 0x70) else start + at)
                return
            elif op == 0xEB:
                disp = struct.unpack_from("<b", fetch, at)[0]
                finish(start + at + 1 + disp)
                return
            elif op == 0xE9:
                disp = struct.unpack_from("<i", fetch, at)[0]
                finish(start + at + 4 + disp)
                return
            elif op == 0xAA:
                count = self.regs.get("rcx", 0) if rep else 1
                step = -1 if self.flags & DF else 1
                data = bytes([self.regs.get("rax", 0) & 0xFF]) * count
                rdi = self.regs.get("rdi", 0)
                if count:
                    self.write_linear(rdi if step > 0 else rdi - count + 1, data)
                self.regs["rdi"] = (rdi + step * count) & MASK64
                if rep:
                    self.regs["rcx"] = 0
            elif op == 0x90:
                pass
            elif op == 0xCC:
                raise Fault("#BP", start)
            else:
                raise Fault("#UD", start, "opcode %02x" % op)
        except Fault:
            raise
        except MemoryError_ as exc:
            raise Fault("#PF", start, str(exc)) from None
        finish(start + at)


class MemoryError_(Exception):
    """A linear access the page tables do not allow."""


# -- plugging into the pykd stand-in --------------------------------------------------------------------
@dataclass
class Machine:
    """The emulation attached to a stand-in simulator."""

    sim: Any
    vmx: Dict[int, VmxCpu]
    cpuid: Dict[int, Tuple[int, int, int, int]]
    faults: List[Fault] = field(default_factory=list)
    max_steps: int = 200000
    #: instruction addresses executed, for tests that check what ran
    executed: List[int] = field(default_factory=list)
    #: raise this from go() (after running) to model a lost connection, once
    fail_go: Optional[BaseException] = None
    #: physical write fault injection on the CPU's own stores (linear address -> Fault)
    no_write: Set[int] = field(default_factory=set)


def _linear(sim: Any, va: int, size: int, write: bool) -> List[Tuple[int, int]]:
    """Physical pieces of a linear range through the current CPU's page tables."""
    out = []
    cursor = va
    while cursor < va + size:
        chunk = min(va + size - cursor, 0x1000 - (cursor & 0xFFF))
        pa = sim.translate(cursor)
        if pa is None or not sim.phys_ok(pa, chunk):
            raise MemoryError_("linear 0x%x not mapped" % cursor)
        out.append((pa, chunk))
        cursor += chunk
    return out


def attach(pykd: Any, sim: Any, vmx: Dict[int, VmxCpu], cpuid: Optional[Dict[int, Tuple[int, int, int, int]]] = None,
           set_ad_bits: bool = True) -> Machine:
    """Make ``pykd.go()``/``pykd.trace()`` run code on ``sim`` with the VMX model ``vmx``
    (per CPU index).  Returns the :class:`Machine` for inspection and fault injection."""
    machine = Machine(sim, vmx, cpuid or {1: (0x50654, 0x800, 0x7FFEFBFF, 0xBFEBFBFF)})

    def mark_accessed(va: int, write: bool) -> None:
        """What the MMU does: set Accessed (and Dirty on a write) in the entries used."""
        if not set_ad_bits:
            return
        regs = sim.cpus[sim.current].regs
        table = regs.get("cr3", 0) & 0x000FFFFFFFFFF000
        for level in (4, 3, 2, 1):
            where = table + ((va >> (12 + 9 * (level - 1))) & 0x1FF) * 8
            entry = int.from_bytes(sim.phys[where:where + 8], "little")
            leaf = level == 1 or (level in (2, 3) and entry & 0x80)
            entry |= 0x20 | (0x40 if leaf and write else 0)
            sim.phys[where:where + 8] = entry.to_bytes(8, "little")
            if leaf:
                return
            table = entry & 0x000FFFFFFFFFF000

    def make_cpu(index: int) -> Cpu:
        def read_linear(va: int, size: int) -> bytes:
            out = bytearray()
            for pa, chunk in _linear(sim, va, size, False):
                out += sim.phys[pa:pa + chunk]
            mark_accessed(va, False)
            return bytes(out)

        def write_linear(va: int, data: bytes) -> None:
            if va in machine.no_write:
                raise MemoryError_("write to 0x%x refused" % va)
            at = 0
            for pa, chunk in _linear(sim, va, len(data), True):
                sim.phys[pa:pa + chunk] = data[at:at + chunk]
                at += chunk
            mark_accessed(va, True)

        return Cpu(sim.cpus[index].regs, vmx[index], read_linear, write_linear, sim.cpus[index].msrs, machine.cpuid)

    def run_until_break() -> Any:
        cpu = make_cpu(sim.current)
        stops = {record["offset"] for record in sim.breakpoints.values()}
        for _ in range(machine.max_steps):
            if cpu.regs["rip"] in stops and cpu.steps:
                break
            try:
                cpu.step()
            except Fault as fault:
                machine.faults.append(fault)
                break
        machine.executed.extend(cpu.trace_log)
        return pykd.executionStatus.Break

    def go() -> Any:
        sim.calls.append("go")
        pending = sim.faults.get("go")
        if pending:
            if pending[0][0] == 0:
                raise pending.pop(0)[1]
            pending[0][0] -= 1
        status = run_until_break()
        if machine.fail_go is not None:
            error, machine.fail_go = machine.fail_go, None
            raise error
        return status

    def trace() -> Any:
        sim.calls.append("trace")
        pending = sim.faults.get("trace")
        if pending:
            if pending[0][0] == 0:
                raise pending.pop(0)[1]
            pending[0][0] -= 1
        cpu = make_cpu(sim.current)
        try:
            cpu.step()
        except Fault as fault:
            machine.faults.append(fault)
        machine.executed.extend(cpu.trace_log)
        return pykd.executionStatus.Break

    pykd.go = go
    pykd.trace = trace
    return machine
