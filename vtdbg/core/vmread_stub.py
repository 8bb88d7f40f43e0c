"""Position-independent x86-64 stubs that run VMX instructions on a stopped target.

Live reads (docs/live-vmread.md) execute real VMREADs on the target CPU instead of decoding
the VMCS region, because only VMREAD is authoritative: the processor may keep the current
VMCS on-die and its memory format is undocumented.  One stub does a whole batch, so a full
VMCS costs a handful of debugger transactions instead of three per field.

Two programs, both hand-assembled here (no assembler on the host, no code from elsewhere):

* :func:`enum_program` -- the compact reader.  It walks the FULL encodings of every
  width/type group up to a highest index by itself, so no list has to be written to the
  target (on Bochs every 4 bytes written cost a debugger command), and packs 9 bytes per
  encoding (the value, then LAHF's flags).  It needs IA32_VMX_MISC[29] (VMWRITE to any
  field): failing VMREADs of unsupported encodings set VM_INSTRUCTION_ERROR, and the stub
  puts the saved value back with a VMWRITE at the end.
* :func:`list_program` -- a small interpreter of a list of operations (VMREAD, VMWRITE,
  VMCLEAR, VMPTRLD, VMPTRST, RDMSR, CPUID, stamping a revision id).  Reads of a list,
  ``vmcs --set`` and layout discovery are lists.  It reads IA32_VMX_MISC itself: entries
  flagged MAYFAIL are skipped when the error field could not be put back afterwards, and
  a CRITICAL entry that fails skips everything up to the next EPILOGUE entry (discovery
  must never VMWRITE markers into the original VMCS when loading the scratch one failed).

Neither program touches the stack, so nothing outside the scratch area changes; every
general register it writes is listed in ``clobbers`` and restored by the caller.  Both end
in ``xchg bx, bx`` (a Bochs magic breakpoint, a no-op elsewhere) followed by ``jmp $`` (the
address where a debugger breakpoint stops the run; should it be missed, the CPU spins
harmlessly instead of running into whatever follows).

The *erase tail* (:data:`TAIL`) is used on Bochs only: Bochs caches decoded instructions
and its debugger's memory writes do not invalidate that cache, so after a run the tail
refills the used area with its original (uniform) byte and executes INVD, which empties
the cache (on real hardware INVD would discard dirty cache lines: it is never used there).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

# -- LAHF status -----------------------------------------------------------------------------
#: AH after LAHF: SF ZF 0 AF 0 PF 1 CF; VMX instructions report in CF and ZF
AH_CF = 0x01
AH_ZF = 0x40
OK = "ok"
VMFAIL_INVALID = "vmfail_invalid"
VMFAIL_VALID = "vmfail_valid"
SKIPPED = "skipped"
NOT_RUN = "not_run"


def status_from_ah(ah: int) -> str:
    """VMsucceed / VMfailInvalid (CF=1) / VMfailValid (ZF=1), SDM "Conventions" of chapter 31."""
    if ah & AH_CF:
        return VMFAIL_INVALID
    if ah & AH_ZF:
        return VMFAIL_VALID
    return OK


# -- a tiny assembler --------------------------------------------------------------------------
class Asm:
    """Bytes plus labels and rel8/rel32 fix-ups: enough to write the stubs legibly."""

    def __init__(self) -> None:
        self.code = bytearray()
        self.labels: Dict[str, int] = {}
        self._fixups: List[Tuple[int, str, int]] = []  # (position of the displacement, label, size)

    def emit(self, hex_bytes: str) -> None:
        """Append instruction bytes written as hex (spaces allowed)."""
        self.code += bytes.fromhex(hex_bytes)

    def label(self, name: str) -> None:
        """Define ``name`` at the current position."""
        if name in self.labels:
            raise ValueError("label %s defined twice" % name)
        self.labels[name] = len(self.code)

    def jump(self, opcode_hex: str, target: str, size: int = 1) -> None:
        """A relative jump (``opcode_hex`` already names the rel8 or rel32 form)."""
        self.emit(opcode_hex)
        self._fixups.append((len(self.code), target, size))
        self.code += bytes(size)

    def imm32(self, opcode_hex: str, value: int) -> None:
        """An instruction ending in a 32-bit little-endian immediate."""
        self.emit(opcode_hex)
        self.code += struct.pack("<I", value & 0xFFFFFFFF)

    def assemble(self) -> bytes:
        """Resolve the jumps and return the code."""
        for position, target, size in self._fixups:
            if target not in self.labels:
                raise ValueError("undefined label %s" % target)
            delta = self.labels[target] - (position + size)
            if size == 1:
                if not -128 <= delta <= 127:
                    raise ValueError("jump to %s is too far for rel8 (%d)" % (target, delta))
                self.code[position] = delta & 0xFF
            else:
                self.code[position:position + 4] = struct.pack("<i", delta)
        return bytes(self.code)


# -- the erase tail (Bochs) -------------------------------------------------------------------
#: mov rdi, r9 / rep stosb / invd / xchg bx, bx / jmp $  -- refills [r9, r9 + rcx) with AL,
#: empties Bochs's decoded-instruction cache, stops.  Always written at the start of the
#: scratch area, so the one trace Bochs decodes after INVD (at TAIL_STOP - 3) is the same
#: bytes at the same place in every run and can never be mistaken for a later stub.
TAIL = bytes.fromhex("4c89cf" "f3aa" "0f08" "6687db" "ebfe")
#: where the tail's ``jmp $`` is, relative to the area start
TAIL_STOP = len(TAIL) - 2
#: where INVD is (a flush-only run starts here, with RCX = 0)
TAIL_INVD = 5
#: programs start after the tail
CODE_OFFSET = len(TAIL)
#: Bochs tracks self-modifying code in 128-byte pieces; data written by the stub starts at
#: least this far from its code, so the stub's own stores never force a re-decode
DATA_GAP = 128


@dataclass
class Program:
    """A stub ready to place: ``code`` runs from ``entry`` (offsets are relative to the code
    start), stops at ``stop``; ``inputs`` are register values the caller sets (besides RIP
    and RFLAGS) -- values named ``@data`` are replaced by the data area's linear address;
    ``data_in`` is written at the data area start, ``data_size`` bytes there are read back."""

    name: str
    code: bytes
    entry: int
    stop: int
    inputs: Dict[str, object]
    clobbers: Tuple[str, ...]
    data_in: bytes
    data_size: int
    meta: Dict[str, object] = field(default_factory=dict)
    #: registers (or "al") the program never writes: the erase tail's inputs can ride along
    keeps: Tuple[str, ...] = ()


# -- the compact enumerating reader ------------------------------------------------------------
#: width/type groups in encoding order: bits 14:13 width, 11:10 type, bit 12 reserved (0)
GROUPS: Tuple[int, ...] = tuple((width << 13) | (kind << 10) for width in range(4) for kind in range(4))
ENUM_RECORD = 9


def _enum_code() -> Tuple[bytes, int, int]:
    """RBX = a slot for the saved error, RDI = records (after the slot), RDX = first
    encoding (0), RSI = 0x4400, R8B = 2 * (highest index + 1).

    For each of the 16 groups and each index below the limit: VMREAD [rdi], rdx; LAHF;
    store AH after the value.  The error field is saved first (at [rbx]) and written back
    last -- unconditionally, which is a no-op when nothing failed.  RCX, R9 and AL are never
    written, so the erase tail's inputs can be set together with the stub's.
    """
    a = Asm()
    a.emit("0f7833")            # vmread [rbx], rsi      ; VM_INSTRUCTION_ERROR before we start
    a.label("next")
    a.emit("0f7817")            # vmread [rdi], rdx
    a.emit("9f")                # lahf
    a.emit("886708")            # mov [rdi+8], ah
    a.emit("4883c709")          # add rdi, 9
    a.emit("83c202")            # add edx, 2             ; next index (FULL encodings only)
    a.emit("4438c2")            # cmp dl, r8b
    a.jump("72", "next")        # jb next
    a.emit("30d2")              # xor dl, dl             ; next group: bits 14:10 of DH step by 4,
    a.emit("80ce10")            # or dh, 0x10            ;   skipping reserved bit 12: set it so the
    a.emit("80c604")            # add dh, 4              ;   carry out of bit 11 lands in bit 13,
    a.emit("80e6ef")            # and dh, 0xef           ;   then clear it again
    a.emit("80fe80")            # cmp dh, 0x80
    a.jump("72", "next")        # jb next
    a.emit("0f7933")            # vmwrite rsi, [rbx]     ; put VM_INSTRUCTION_ERROR back
    a.emit("6687db")            # xchg bx, bx
    a.label("stop")
    a.emit("ebfe")              # jmp $
    return a.assemble(), 0, a.labels["stop"]


ENUM_CODE, _ENUM_ENTRY, ENUM_STOP = _enum_code()


def enum_limit(highest_index: int) -> int:
    """The R8B limit for encodings up to ``highest_index`` (index = encoding bits 9:1)."""
    if not 0 <= highest_index <= 0x7E:
        raise ValueError("highest index %d does not fit the compact reader (0..126)" % highest_index)
    return 2 * (highest_index + 1)


def enum_encodings(highest_index: int) -> List[int]:
    """The encodings the compact reader visits, in record order."""
    return [group | (index << 1) for group in GROUPS for index in range(highest_index + 1)]


#: the compact reader's data area: the saved error (8 bytes), then the records
ENUM_SLOT = 8


def enum_program(highest_index: int) -> Program:
    """The compact reader for indices 0..``highest_index`` of every group."""
    count = len(GROUPS) * (highest_index + 1)
    return Program(
        name="vmread-enum", code=ENUM_CODE, entry=_ENUM_ENTRY, stop=ENUM_STOP,
        inputs={"rbx": "@data", "rdi": "@data+8", "rdx": 0, "rsi": ERROR_FIELD, "r8": enum_limit(highest_index)},
        clobbers=("rdx", "rdi", "rax"),  # LAHF writes AH
        data_in=b"", data_size=ENUM_SLOT + count * ENUM_RECORD, meta={"highest_index": highest_index},
        keeps=("rcx", "r9", "al"))


def decode_enum(data: bytes, highest_index: int) -> Tuple[int, Dict[int, Tuple[str, int]]]:
    """(the saved VM_INSTRUCTION_ERROR, encoding -> (status, value)) from the compact reader.

    The error field is reported as it was before the run: reads of unsupported encodings
    change it until the stub writes it back at the end."""
    saved = int.from_bytes(data[:ENUM_SLOT], "little") & 0xFFFFFFFF
    out: Dict[int, Tuple[str, int]] = {}
    for number, encoding in enumerate(enum_encodings(highest_index)):
        at = ENUM_SLOT + number * ENUM_RECORD
        record = data[at:at + ENUM_RECORD]
        if len(record) < ENUM_RECORD:
            break
        out[encoding] = (status_from_ah(record[8]), int.from_bytes(record[:8], "little"))
    if out.get(ERROR_FIELD, ("", 0))[0] == OK:
        out[ERROR_FIELD] = (OK, saved)
    return saved, out


# -- the list interpreter ----------------------------------------------------------------------
class Op:
    """Operation codes of list entries."""

    READ = 0           # VMREAD  [value] <- field enc
    WRITE = 1          # VMWRITE field enc <- [value]
    VMCLEAR = 2        # VMCLEAR [value]        (value: physical address of a region)
    VMPTRLD = 3        # VMPTRLD [value]
    SAVE_POINTER = 4   # VMPTRST into the header's saved-pointer slot
    LOAD_SAVED = 5     # VMPTRLD from the header's saved-pointer slot
    STAMP = 6          # write IA32_VMX_BASIC[30:0] as a dword at linear address value
    CPUID = 7          # CPUID leaf enc (subleaf 0): value <- EAX | EBX << 32
    RDMSR = 8          # value <- MSR enc (only MSRs that exist whenever VMX does)
    VMPTRST = 9        # VMPTRST into value


class Flag:
    """Flags of list entries."""

    CRITICAL = 1   # on VMfail, skip every later entry up to the next EPILOGUE entry
    MAYFAIL = 2    # may fail (unsupported field): skipped unless VM_INSTRUCTION_ERROR can be restored
    EPILOGUE = 4   # always runs (ends the skipping started by a failed CRITICAL entry)


#: header of the list program's data block (u64 slots)
H_COUNT = 0x00        # in: number of entries
H_SAVED_ERROR = 0x08  # out: VM_INSTRUCTION_ERROR before the first entry
H_MISC = 0x10         # out: IA32_VMX_MISC
H_RESTORE = 0x18      # out: byte 0 AH of the error-restoring VMWRITE, byte 1 = 1 if it ran
H_POINTER = 0x20      # out: the pointer SAVE_POINTER stored
H_ABORT = 0x28        # out: remaining-entry count when a CRITICAL entry failed, else all ones
H_OPTIONS = 0x30      # in: bit 0 = do not put VM_INSTRUCTION_ERROR back at the end (repairs set it)
HEADER_SIZE = 0x40
OPT_KEEP_ERROR = 1
ENTRY_SIZE = 16
#: entry bytes: 0-1 encoding, 2 op, 3 flags, 4 AH out, 5 done out (1 ran, 2 skipped), 8-15 value
DONE_RAN = 1
DONE_SKIPPED = 2
ERROR_FIELD = 0x4400
MSR_VMX_BASIC = 0x480
MSR_VMX_MISC = 0x485
MISC_VMWRITE_ANY = 1 << 29


def _list_code() -> Tuple[bytes, int, int]:
    """RSI = data block.  Registers: R8 entries left, RDI entry, R9B MISC[29], R10B
    skipping after a critical failure, R11 saved error, RDX/RAX/RCX/RBX scratch."""
    a = Asm()
    a.imm32("b9", MSR_VMX_MISC)     # mov ecx, IA32_VMX_MISC
    a.emit("0f32")                            # rdmsr
    a.emit("894610")                          # mov [rsi+0x10], eax
    a.emit("895614")                          # mov [rsi+0x14], edx
    a.emit("0fbae01d")                        # bt eax, 29
    a.emit("410f92c1")                        # setc r9b
    a.emit("4d31db")                          # xor r11, r11
    a.imm32("ba", ERROR_FIELD)      # mov edx, 0x4400
    a.emit("410f78d3")                        # vmread r11, rdx   (fails harmlessly without a VMCS)
    a.emit("4c895e08")                        # mov [rsi+0x08], r11
    a.emit("4c8b06")                          # mov r8, [rsi]
    a.emit("488d7e40")                        # lea rdi, [rsi+0x40]
    a.emit("4531d2")                          # xor r10d, r10d
    a.emit("48c74628ffffffff")                # mov qword [rsi+0x28], -1
    a.label("loop")
    a.emit("4d85c0")                          # test r8, r8
    a.jump("0f84", "finish", 4)               # jz finish
    a.emit("0fb717")                          # movzx edx, word [rdi]
    a.emit("8a4703")                          # mov al, [rdi+3]   (flags)
    a.emit("4584d2")                          # test r10b, r10b
    a.jump("74", "live")                      # jz live
    a.emit("a804")                            # test al, EPILOGUE
    a.jump("0f84", "skip", 4)                 # jz skip
    a.emit("4531d2")                          # xor r10d, r10d
    a.label("live")
    a.emit("a802")                            # test al, MAYFAIL
    a.jump("74", "dispatch")                  # jz dispatch
    a.emit("4584c9")                          # test r9b, r9b
    a.jump("0f84", "skip", 4)                 # jz skip
    a.label("dispatch")
    a.emit("8a4702")                          # mov al, [rdi+2]   (op)
    handlers = ("read", "write", "vmclear", "vmptrld", "save", "load_saved", "stamp", "cpuid", "rdmsr", "vmptrst")
    for number, name in enumerate(handlers):
        a.emit("3c%02x" % number)             # cmp al, op
        a.jump("0f84", name, 4)               # je handler
    a.jump("e9", "skip", 4)                   # unknown op: skip it
    a.label("read")
    a.emit("0f785708")                        # vmread [rdi+8], rdx
    a.jump("e9", "record", 4)
    a.label("write")
    a.emit("0f795708")                        # vmwrite rdx, [rdi+8]
    a.jump("e9", "record", 4)
    a.label("vmclear")
    a.emit("660fc77708")                      # vmclear [rdi+8]
    a.jump("e9", "record", 4)
    a.label("vmptrld")
    a.emit("0fc77708")                        # vmptrld [rdi+8]
    a.jump("e9", "record", 4)
    a.label("save")
    a.emit("0fc77e20")                        # vmptrst [rsi+0x20]
    a.jump("e9", "record", 4)
    a.label("load_saved")
    a.emit("0fc77620")                        # vmptrld [rsi+0x20]
    a.jump("e9", "record", 4)
    a.label("stamp")
    a.imm32("b9", MSR_VMX_BASIC)    # mov ecx, IA32_VMX_BASIC
    a.emit("0f32")                            # rdmsr
    a.emit("25ffffff7f")                      # and eax, 0x7fffffff
    a.emit("488b4f08")                        # mov rcx, [rdi+8]
    a.emit("8901")                            # mov [rcx], eax
    a.emit("31c0")                            # xor eax, eax (flags: ZF=1 would read as a failure)
    a.emit("0c01")                            # or al, 1 (ZF=0, CF=0: "ok")
    a.jump("e9", "record", 4)
    a.label("cpuid")
    a.emit("89d0")                            # mov eax, edx      (leaf)
    a.emit("31c9")                            # xor ecx, ecx
    a.emit("0fa2")                            # cpuid
    a.emit("894708")                          # mov [rdi+8], eax
    a.emit("895f0c")                          # mov [rdi+12], ebx
    a.emit("0c01")                            # or al, 1 (flags "ok")
    a.jump("e9", "record", 4)
    a.label("rdmsr")
    a.emit("89d1")                            # mov ecx, edx      (index, < 0x10000 here)
    a.emit("0f32")                            # rdmsr
    a.emit("894708")                          # mov [rdi+8], eax
    a.emit("89570c")                          # mov [rdi+12], edx
    a.emit("0c01")                            # or al, 1
    a.jump("e9", "record", 4)
    a.label("vmptrst")
    a.emit("0fc77f08")                        # vmptrst [rdi+8]
    a.label("record")
    a.emit("9f")                              # lahf
    a.emit("886704")                          # mov [rdi+4], ah
    a.emit("c6470501")                        # mov byte [rdi+5], DONE_RAN
    a.emit("f6c441")                          # test ah, CF|ZF
    a.jump("74", "next")                      # jz next
    a.emit("f6470301")                        # test byte [rdi+3], CRITICAL
    a.jump("74", "next")                      # jz next
    a.emit("41b201")                          # mov r10b, 1
    a.emit("4c894628")                        # mov [rsi+0x28], r8
    a.jump("eb", "next")
    a.label("skip")
    a.emit("c6470502")                        # mov byte [rdi+5], DONE_SKIPPED
    a.label("next")
    a.emit("4883c710")                        # add rdi, 16
    a.emit("49ffc8")                          # dec r8
    a.jump("e9", "loop", 4)
    a.label("finish")
    a.emit("f6463001")                        # test byte [rsi+0x30], OPT_KEEP_ERROR
    a.jump("75", "done")                      # jnz done          (a repair sets the field itself)
    a.imm32("ba", ERROR_FIELD)      # mov edx, 0x4400
    a.emit("0f78d0")                          # vmread rax, rdx   (the error field now)
    a.emit("9f")                              # lahf
    a.emit("f6c441")                          # test ah, CF|ZF
    a.jump("75", "done")                      # jnz done          (no VMCS current: nothing to restore)
    a.emit("4c39d8")                          # cmp rax, r11
    a.jump("74", "done")                      # je done
    a.emit("4584c9")                          # test r9b, r9b
    a.jump("74", "done")                      # jz done           (cannot VMWRITE a read-only field)
    a.emit("410f79d3")                        # vmwrite rdx, r11
    a.emit("9f")                              # lahf
    a.emit("886618")                          # mov [rsi+0x18], ah
    a.emit("c6461901")                        # mov byte [rsi+0x19], 1
    a.label("done")
    a.emit("6687db")                          # xchg bx, bx
    a.label("stop")
    a.emit("ebfe")                            # jmp $
    return a.assemble(), 0, a.labels["stop"]


LIST_CODE, _LIST_ENTRY, LIST_STOP = _list_code()
LIST_CLOBBERS = ("rax", "rbx", "rcx", "rdx", "rdi", "r8", "r9", "r10", "r11")


@dataclass(frozen=True)
class Entry:
    """One operation of a list program."""

    op: int
    enc: int = 0
    value: int = 0
    flags: int = 0


def list_program(entries: Sequence[Entry], name: str = "vmx-list", options: int = 0) -> Program:
    """A list program over ``entries`` (see :class:`Op` and :class:`Flag`); ``options``
    goes to the header (:data:`OPT_KEEP_ERROR`)."""
    block = bytearray(HEADER_SIZE)
    struct.pack_into("<Q", block, H_COUNT, len(entries))
    struct.pack_into("<Q", block, H_OPTIONS, options)
    for item in entries:
        if not 0 <= item.enc <= 0xFFFF:
            raise ValueError("encoding 0x%x does not fit 16 bits" % item.enc)
        block += struct.pack("<HBBBBHQ", item.enc, item.op, item.flags, 0, 0, 0, item.value & 0xFFFFFFFFFFFFFFFF)
    return Program(name=name, code=LIST_CODE, entry=_LIST_ENTRY, stop=LIST_STOP, inputs={"rsi": "@data"},
                   clobbers=LIST_CLOBBERS, data_in=bytes(block), data_size=len(block),
                   meta={"entries": list(entries)})


@dataclass
class EntryResult:
    """What the stub reported for one entry."""

    entry: Entry
    status: str
    value: int


@dataclass
class ListResult:
    """The decoded data block of a list program."""

    saved_error: int
    misc: int
    restore_ran: bool
    restore_status: Optional[str]
    saved_pointer: int
    aborted_at: Optional[int]
    results: List[EntryResult]

    @property
    def can_restore_error(self) -> bool:
        """IA32_VMX_MISC[29]: VMWRITE may write read-only fields (the error field among them)."""
        return bool(self.misc & MISC_VMWRITE_ANY)


def decode_list(data: bytes, entries: Sequence[Entry]) -> ListResult:
    """Decode the data block a list program left."""
    saved_error, misc = struct.unpack_from("<QQ", data, H_SAVED_ERROR)
    restore_ah, restore_ran = data[H_RESTORE], data[H_RESTORE + 1]
    saved_pointer, abort = struct.unpack_from("<QQ", data, H_POINTER)
    results: List[EntryResult] = []
    for index, item in enumerate(entries):
        base = HEADER_SIZE + index * ENTRY_SIZE
        ah, done = data[base + 4], data[base + 5]
        value = struct.unpack_from("<Q", data, base + 8)[0]
        if done == DONE_RAN:
            status = status_from_ah(ah)
        elif done == DONE_SKIPPED:
            status = SKIPPED
        else:
            status = NOT_RUN
        results.append(EntryResult(item, status, value))
    aborted_at = None if abort == 0xFFFFFFFFFFFFFFFF else len(entries) - int(abort)
    return ListResult(saved_error=saved_error & 0xFFFFFFFF, misc=misc, restore_ran=restore_ran == 1,
                      restore_status=status_from_ah(restore_ah) if restore_ran == 1 else None,
                      saved_pointer=saved_pointer, aborted_at=aborted_at, results=results)


def reads(encodings: Iterable[int], mayfail: Iterable[int] = ()) -> List[Entry]:
    """READ entries; encodings in ``mayfail`` get the MAYFAIL flag."""
    risky = set(mayfail)
    return [Entry(Op.READ, enc, 0, Flag.MAYFAIL if enc in risky else 0) for enc in encodings]


# -- VMREAD gadgets already in an image -----------------------------------------------------------
_REGS64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass(frozen=True)
class Gadget:
    """An existing ``VMREAD r64, r64`` (or ``VMWRITE``) instruction: executing it with the
    encoding in ``source`` puts the value in ``dest`` (VMREAD) / the field (VMWRITE)."""

    address: int
    length: int
    kind: str  # "vmread" | "vmwrite"
    source: str  # register holding the encoding (ModRM.reg)
    dest: str    # ModRM.rm: VMREAD's destination, VMWRITE's value


def find_gadgets(code: bytes, base: int) -> List[Gadget]:
    """Register-form VMREAD/VMWRITE instructions (0F 78 /r, 0F 79 /r with mod = 11) in
    ``code`` loaded at ``base``.  A REX prefix right before is included; legacy prefixes
    66/F2/F3 turn 0F 78/79 into other instructions (EXTRQ, INSERTQ...), so such hits are
    skipped.  Instruction boundaries are unknown here: callers validate a gadget by
    single-stepping it once before trusting it (what tandasat/hvext learned the hard way)."""
    out: List[Gadget] = []
    start = 0
    while True:
        at = code.find(b"\x0f", start)
        if at < 0 or at + 2 >= len(code):
            return out
        start = at + 1
        if code[at + 1] not in (0x78, 0x79) or code[at + 2] >> 6 != 3:
            continue
        modrm = code[at + 2]
        prefix_at = at
        rex = 0
        if at > 0 and 0x40 <= code[at - 1] <= 0x4F:
            rex, prefix_at = code[at - 1], at - 1
        if prefix_at > 0 and code[prefix_at - 1] in (0x66, 0xF2, 0xF3):
            continue
        reg = ((modrm >> 3) & 7) | (8 if rex & 4 else 0)
        rm = (modrm & 7) | (8 if rex & 1 else 0)
        if reg == 4 or rm == 4:  # never through RSP
            continue
        out.append(Gadget(base + prefix_at, at + 3 - prefix_at, "vmread" if code[at + 1] == 0x78 else "vmwrite",
                          _REGS64[reg], _REGS64[rm]))
