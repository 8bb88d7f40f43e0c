"""ELF core files with physical addresses: QEMU ``dump-guest-memory``, VirtualBox
``dumpvmcore`` and similar (shared/reference/dump-formats.md section 3.3).

Each PT_LOAD segment is a run at ``p_paddr``.  Only ``p_filesz`` bytes are present (a
``begin length`` dump has ``p_filesz < p_memsz``; the tail is reported missing, not
zero).  ELF32 and ELF64, little-endian only; more than 65534 segments are found through
section 0's ``sh_info``.  PT_NOTE segments are read for per-vCPU registers: QEMU's own
``QEMU`` note (general registers, segments and CR0..CR4) and, failing that, the standard
``CORE``/NT_PRSTATUS note (no control registers).  Every count and offset is bounded by the
file size before it is used.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from construct import Array, Bytes, ConstructError, Int16ul, Int32ul, Int64ul, StreamError, Struct

from vtdbg.lib.errors import TargetError
from vtdbg.target.dumps.physmem import DumpTarget, FileMap, Run

PT_LOAD = 1
PT_NOTE = 4
ET_CORE = 4
#: notes bigger than this are ignored (QEMU writes a few KiB per vCPU)
MAX_NOTES_BYTES = 16 << 20
MAX_CPUS = 4096

RawEhdr64 = Struct(
    "ident" / Bytes(16), "e_type" / Int16ul, "e_machine" / Int16ul, "e_version" / Int32ul,
    "e_entry" / Int64ul, "e_phoff" / Int64ul, "e_shoff" / Int64ul, "e_flags" / Int32ul,
    "e_ehsize" / Int16ul, "e_phentsize" / Int16ul, "e_phnum" / Int16ul,
    "e_shentsize" / Int16ul, "e_shnum" / Int16ul, "e_shstrndx" / Int16ul,
)
RawEhdr32 = Struct(
    "ident" / Bytes(16), "e_type" / Int16ul, "e_machine" / Int16ul, "e_version" / Int32ul,
    "e_entry" / Int32ul, "e_phoff" / Int32ul, "e_shoff" / Int32ul, "e_flags" / Int32ul,
    "e_ehsize" / Int16ul, "e_phentsize" / Int16ul, "e_phnum" / Int16ul,
    "e_shentsize" / Int16ul, "e_shnum" / Int16ul, "e_shstrndx" / Int16ul,
)
RawPhdr64 = Struct(
    "p_type" / Int32ul, "p_flags" / Int32ul, "p_offset" / Int64ul, "p_vaddr" / Int64ul,
    "p_paddr" / Int64ul, "p_filesz" / Int64ul, "p_memsz" / Int64ul, "p_align" / Int64ul,
)
RawPhdr32 = Struct(
    "p_type" / Int32ul, "p_offset" / Int32ul, "p_vaddr" / Int32ul, "p_paddr" / Int32ul,
    "p_filesz" / Int32ul, "p_memsz" / Int32ul, "p_flags" / Int32ul, "p_align" / Int32ul,
)
RawShdr64Info = Struct("sh_name" / Int32ul, "sh_type" / Int32ul, "sh_flags" / Int64ul, "sh_addr" / Int64ul,
                       "sh_offset" / Int64ul, "sh_size" / Int64ul, "sh_link" / Int32ul, "sh_info" / Int32ul)
RawShdr32Info = Struct("sh_name" / Int32ul, "sh_type" / Int32ul, "sh_flags" / Int32ul, "sh_addr" / Int32ul,
                       "sh_offset" / Int32ul, "sh_size" / Int32ul, "sh_link" / Int32ul, "sh_info" / Int32ul)
RawNoteHeader = Struct("namesz" / Int32ul, "descsz" / Int32ul, "type" / Int32ul)

#: QEMU's QEMUCPUState (target/i386/arch_dump.c): version, size, 18 u64 registers, ten
#: 24-byte segment caches (cs ds es fs gs ss ldt tr gdt idt), cr[0..4]
RawQemuSegment = Struct("selector" / Int32ul, "limit" / Int32ul, "flags" / Int32ul, "pad" / Int32ul,
                        "base" / Int64ul)
QEMU_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15", "rip", "rflags")
QEMU_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldtr", "tr", "gdtr", "idtr")
RawQemuCpuState = Struct(
    "version" / Int32ul, "size" / Int32ul,
    "regs" / Array(len(QEMU_REGS), Int64ul),
    "segments" / Array(len(QEMU_SEGMENTS), RawQemuSegment),
    "cr" / Array(5, Int64ul),
)
#: x86-64 struct user_regs_struct order inside NT_PRSTATUS (pr_reg starts at byte 112)
PRSTATUS_REG_OFFSET = 112
PRSTATUS_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
                 "rsi", "rdi", "orig_rax", "rip", "cs", "rflags", "rsp", "ss", "fs_base", "gs_base", "ds",
                 "es", "fs", "gs")


def _align4(value: int) -> int:
    return (value + 3) & ~3


def parse_notes(data: bytes) -> List[Dict[str, object]]:
    """(name, type, desc) of each note in a PT_NOTE blob; stops at the first malformed one."""
    notes: List[Dict[str, object]] = []
    cursor = 0
    while cursor + 12 <= len(data):
        head = RawNoteHeader.parse(data[cursor:cursor + 12])
        name_end = cursor + 12 + _align4(head.namesz)
        desc_end = name_end + _align4(head.descsz)
        if head.namesz > 256 or desc_end > len(data):
            break
        name = data[cursor + 12:cursor + 12 + head.namesz].rstrip(b"\0").decode("latin-1")
        notes.append({"name": name, "type": head.type, "desc": data[name_end:name_end + head.descsz]})
        cursor = desc_end
    return notes


def qemu_registers(desc: bytes) -> Optional[Dict[str, int]]:
    """Registers from a QEMU note (None when it is too short to be one)."""
    try:
        state = RawQemuCpuState.parse(desc)
    except (ConstructError, StreamError):
        return None
    regs = dict(zip(QEMU_REGS, state.regs))
    for name, seg in zip(QEMU_SEGMENTS, state.segments):
        if name in ("gdtr", "idtr"):
            regs[name + "_base"] = seg.base
            regs[name + "_limit"] = seg.limit
        else:
            regs[name] = seg.selector
            regs[name + "_base"] = seg.base
    for index, value in enumerate(state.cr):
        regs["cr%d" % index] = value
    return regs


def prstatus_registers(desc: bytes) -> Optional[Dict[str, int]]:
    """Registers from an x86-64 NT_PRSTATUS note (no control registers in it)."""
    end = PRSTATUS_REG_OFFSET + 8 * len(PRSTATUS_REGS)
    if len(desc) < end:
        return None
    regs = {}
    for index, name in enumerate(PRSTATUS_REGS):
        off = PRSTATUS_REG_OFFSET + 8 * index
        regs[name] = int.from_bytes(desc[off:off + 8], "little")
    regs.pop("orig_rax", None)
    return regs


class ElfCoreTarget(DumpTarget):
    """An ELF core whose PT_LOAD segments carry physical addresses."""

    format_name = "elf"

    def __init__(self, source: FileMap) -> None:
        super().__init__(source)
        ident = source.read(0, 16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            raise TargetError("%s: not an ELF file" % source.name)
        elf_class, data = ident[4], ident[5]
        if data != 1:
            raise TargetError("%s: big-endian ELF is not supported" % source.name)
        if elf_class not in (1, 2):
            raise TargetError("%s: unknown ELF class %d" % (source.name, elf_class))
        wide = elf_class == 2
        ehdr_struct = RawEhdr64 if wide else RawEhdr32
        phdr_struct = RawPhdr64 if wide else RawPhdr32
        raw = source.read(0, ehdr_struct.sizeof())
        if len(raw) < ehdr_struct.sizeof():
            raise TargetError("%s: truncated ELF header" % source.name)
        ehdr = ehdr_struct.parse(raw)
        self.format_name = "elf64" if wide else "elf32"
        self.description = "ELF%s core %s" % ("64" if wide else "32", source.name)
        if ehdr.e_type != ET_CORE:
            self.warnings.append("ELF type %d is not a core file (4); reading its segments anyway" % ehdr.e_type)
        phnum = ehdr.e_phnum
        if phnum == 0xFFFF:
            phnum = self._extended_phnum(ehdr, wide)
        entsize = ehdr.e_phentsize
        if phnum and entsize < phdr_struct.sizeof():
            raise TargetError("%s: program header entries of %d bytes are too small" % (source.name, entsize))
        if ehdr.e_phoff + phnum * entsize > source.size:
            raise TargetError("%s: %d program headers at 0x%x run past the end of the file"
                              % (source.name, phnum, ehdr.e_phoff))
        runs: List[Run] = []
        cpus: List[Dict[str, int]] = []
        prstatus: List[Dict[str, int]] = []
        note_budget = MAX_NOTES_BYTES
        for index in range(phnum):
            phdr = phdr_struct.parse(source.read(ehdr.e_phoff + index * entsize, phdr_struct.sizeof()))
            if phdr.p_type == PT_LOAD and phdr.p_filesz:
                runs.append(Run(phdr.p_paddr, phdr.p_filesz, phdr.p_offset))
                if phdr.p_memsz > phdr.p_filesz:
                    self.warnings.append("segment at PA 0x%x holds 0x%x of its 0x%x bytes; the rest is not in "
                                         "the dump" % (phdr.p_paddr, phdr.p_filesz, phdr.p_memsz))
            elif phdr.p_type == PT_NOTE and 0 < phdr.p_filesz <= note_budget:
                note_budget -= phdr.p_filesz
                for note in parse_notes(source.read(phdr.p_offset, phdr.p_filesz)):
                    desc = note["desc"]
                    assert isinstance(desc, bytes)
                    if note["name"] == "QEMU" and len(cpus) < MAX_CPUS:
                        regs = qemu_registers(desc)
                        if regs is not None:
                            cpus.append(regs)
                    elif note["name"] == "CORE" and note["type"] == 1 and len(prstatus) < MAX_CPUS:
                        regs = prstatus_registers(desc)
                        if regs is not None:
                            prstatus.append(regs)
        self._init_runs(runs)
        if cpus:
            for regs, status in zip(cpus, prstatus):
                for name in ("fs_base", "gs_base"):
                    if name in status:
                        regs.setdefault(name, status[name])
            self._init_cpus(cpus)
        elif prstatus:
            # NT_PRSTATUS has no CR3, and without it registers() could not translate
            # anything; keep them as information rather than promise REGS
            self.info["prstatus_registers"] = prstatus
        self.info.update({"format": self.format_name, "segments": len(runs), "cpus_with_registers": len(cpus) or
                          len(prstatus), "register_source": "QEMU note" if cpus else ("NT_PRSTATUS" if prstatus
                                                                                      else None)})

    def _extended_phnum(self, ehdr, wide: bool) -> int:  # type: ignore[no-untyped-def]
        """The real segment count of an ELF with more than 65534 segments (section 0's sh_info)."""
        shdr = RawShdr64Info if wide else RawShdr32Info
        raw = self.file.read(ehdr.e_shoff, shdr.sizeof())
        if not ehdr.e_shoff or len(raw) < shdr.sizeof():
            raise TargetError("%s: e_phnum is PN_XNUM but section 0 is missing" % self.path)
        return int(shdr.parse(raw).sh_info)


def open_elf(source: FileMap) -> ElfCoreTarget:
    """Open an ELF core from a mapped file."""
    return ElfCoreTarget(source)
