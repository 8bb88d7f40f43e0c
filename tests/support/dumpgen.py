"""Writers for small dumps of every format vtdbg reads, built from a memory image.

Written from the format descriptions in shared/reference/dump-formats.md (Windows
DUMP_HEADER64 full and bitmap dumps, ELF cores with physical addresses and QEMU notes,
LiME) and crash-utility's vmware_vmss.h (VMware state files).  ``present`` is a list of
(pa, length) page-aligned ranges of ``image`` to store; everything else is a hole.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

PAGE = 0x1000
Ranges = Sequence[Tuple[int, int]]

CONTEXT_OFFSETS = {"rax": 0x78, "rcx": 0x80, "rdx": 0x88, "rbx": 0x90, "rsp": 0x98, "rbp": 0xA0, "rsi": 0xA8,
                   "rdi": 0xB0, "r8": 0xB8, "r9": 0xC0, "r10": 0xC8, "r11": 0xD0, "r12": 0xD8, "r13": 0xE0,
                   "r14": 0xE8, "r15": 0xF0, "rip": 0xF8}


def windows_header(dump_type: int, runs: Ranges, dtb: int, regs: Dict[str, int], bugcheck: int,
                   params: Sequence[int], processors: int, total_size: int) -> bytearray:
    """An 8 KiB DUMP_HEADER64 (unused bytes hold the PAGE filler, as Windows writes)."""
    head = bytearray(b"PAGE" * (0x2000 // 4))
    struct.pack_into("<4s4sII", head, 0, b"PAGE", b"DU64", 0xF, 19041)
    struct.pack_into("<QQQQ", head, 0x10, dtb, 0xFFFFF78000000000, 0xFFFFF80000100000, 0xFFFFF80000200000)
    struct.pack_into("<III", head, 0x30, 0x8664, processors, bugcheck)
    struct.pack_into("<I", head, 0x3C, 0)
    struct.pack_into("<4Q", head, 0x40, *(list(params) + [0, 0, 0, 0])[:4])
    head[0x60:0x80] = bytes(0x20)
    struct.pack_into("<Q", head, 0x80, 0xFFFFF80000300000)
    if dump_type == 1:
        block = bytearray(700)
        struct.pack_into("<IIQ", block, 0, len(runs), 0, sum(n for _, n in runs) // PAGE)
        for index, (pa, length) in enumerate(runs):
            struct.pack_into("<QQ", block, 16 + 16 * index, pa // PAGE, length // PAGE)
        head[0x88:0x88 + 700] = block
    context = bytearray(0x4D0)
    struct.pack_into("<II", context, 0x30, 0x10001F, 0x1F80)
    struct.pack_into("<6H", context, 0x38, 0x10, 0x2B, 0x2B, 0x53, 0x2B, 0x18)
    struct.pack_into("<I", context, 0x44, 0x202)
    struct.pack_into("<I", context, 0x118, 0x1F80)
    for name, off in CONTEXT_OFFSETS.items():
        struct.pack_into("<Q", context, off, regs.get(name, 0))
    head[0x348:0x348 + len(context)] = context
    head[0xF00:0xF98] = bytes(0x98)
    struct.pack_into("<IIQQ", head, 0xF98, dump_type, 0, total_size, 0x01D9000000000000)
    head[0xFB0:0x1030] = b"vtdbg test dump".ljust(128, b"\0")
    head[0x1030:0x1058] = bytes(0x28)
    return head


def coalesce(ranges: Iterable[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Sorted ranges with adjacent ones merged."""
    out: List[Tuple[int, int]] = []
    for pa, length in sorted(ranges):
        if out and out[-1][0] + out[-1][1] == pa:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((pa, length))
    return out


def write_windows_full(path: Path, image: bytes, present: Ranges, dtb: int = 0x10000,
                       regs: Optional[Dict[str, int]] = None, bugcheck: int = 0xE2,
                       params: Sequence[int] = (0, 0, 0, 0), processors: int = 1) -> Path:
    """A DumpType 1 dump: runs in the header, their pages back to back from 0x2000."""
    runs = coalesce(present)
    total = 0x2000 + sum(n for _, n in runs)
    head = windows_header(1, runs, dtb, regs or {}, bugcheck, params, processors, total)
    with open(path, "wb") as out:
        out.write(head)
        for pa, length in runs:
            out.write(image[pa:pa + length])
    return path


def write_windows_bitmap(path: Path, image: bytes, present: Ranges, signature: bytes = b"SDMP",
                         dump_type: int = 5, dtb: int = 0x10000, regs: Optional[Dict[str, int]] = None,
                         bugcheck: int = 0xE2, params: Sequence[int] = (0, 0, 0, 0), processors: int = 1) -> Path:
    """A DumpType 5/6 dump: SDMP/FDMP header, PFN bitmap, pages in PFN order."""
    runs = coalesce(present)
    top = max(pa + n for pa, n in runs) // PAGE
    bits = (top + 31) // 32 * 32
    bitmap = bytearray(bits // 8)
    pages = 0
    for pa, length in runs:
        for pfn in range(pa // PAGE, (pa + length) // PAGE):
            bitmap[pfn // 8] |= 1 << (pfn % 8)
            pages += 1
    first = (0x2038 + len(bitmap) + PAGE - 1) // PAGE * PAGE
    total = first + pages * PAGE
    head = windows_header(dump_type, [], dtb, regs or {}, bugcheck, params, processors, total)
    bmp = bytearray(0x38)
    struct.pack_into("<4s4s", bmp, 0, signature, b"DUMP")
    struct.pack_into("<QQQ", bmp, 0x20, first, pages, bits)
    with open(path, "wb") as out:
        out.write(head)
        out.write(bmp)
        out.write(bitmap)
        out.write(bytes(first - 0x2038 - len(bitmap)))
        for pa, length in runs:
            out.write(image[pa:pa + length])
    return path


def qemu_note(regs: Dict[str, int]) -> bytes:
    """A QEMUCPUState note body (version 1) for the given registers."""
    order = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15", "rip", "rflags")
    body = struct.pack("<II", 1, 0)
    body += struct.pack("<18Q", *(regs.get(n, 0) for n in order))
    for seg in ("cs", "ds", "es", "fs", "gs", "ss", "ldtr", "tr", "gdtr", "idtr"):
        body += struct.pack("<IIIIQ", regs.get(seg, 0), 0xFFFFFFFF, 0, 0, regs.get(seg + "_base", 0))
    body += struct.pack("<5Q", *(regs.get("cr%d" % i, 0) for i in range(5)))
    size = len(body)
    return body[:4] + struct.pack("<I", size) + body[8:]


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    padded_name = name + b"\0"
    out = struct.pack("<III", len(padded_name), len(desc), kind)
    out += padded_name + bytes(-len(padded_name) % 4)
    out += desc + bytes(-len(desc) % 4)
    return out


def write_elf(path: Path, image: bytes, present: Ranges, elf_class: int = 64,
              cpus: Sequence[Dict[str, int]] = (), memsz_extra: int = 0) -> Path:
    """An ELF core: one PT_NOTE (QEMU notes per CPU) then one PT_LOAD per range."""
    runs = coalesce(present)
    notes = b"".join(_note(b"QEMU", 0, qemu_note(r)) for r in cpus)
    wide = elf_class == 64
    ehsize, phentsize = (64, 56) if wide else (52, 32)
    phnum = len(runs) + (1 if notes else 0)
    offset = ehsize + phnum * phentsize
    phdrs = b""
    if notes:
        if wide:
            phdrs += struct.pack("<IIQQQQQQ", 4, 0, offset, 0, 0, len(notes), len(notes), 0)
        else:
            phdrs += struct.pack("<8I", 4, offset, 0, 0, len(notes), len(notes), 0, 0)
        offset += len(notes)
    data_start = (offset + PAGE - 1) // PAGE * PAGE
    cursor = data_start
    for pa, length in runs:
        if wide:
            phdrs += struct.pack("<IIQQQQQQ", 1, 7, cursor, pa, pa, length, length + memsz_extra, 0)
        else:
            phdrs += struct.pack("<8I", 1, cursor, pa, pa, length, length + memsz_extra, 7, 0)
        cursor += length
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1, 1]) + bytes(9)
    if wide:
        ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, ehsize, 0, 0, ehsize, phentsize, phnum, 0, 0, 0)
    else:
        ehdr = ident + struct.pack("<HHIIIIIHHHHHH", 4, 3, 1, 0, ehsize, 0, 0, ehsize, phentsize, phnum, 0, 0, 0)
    with open(path, "wb") as out:
        out.write(ehdr + phdrs + notes)
        out.write(bytes(data_start - len(ehdr + phdrs + notes)))
        for pa, length in runs:
            out.write(image[pa:pa + length])
    return path


def write_lime(path: Path, image: bytes, present: Ranges) -> Path:
    """A LiME capture: per range a 32-byte header (inclusive end) then the bytes."""
    with open(path, "wb") as out:
        for pa, length in coalesce(present):
            out.write(struct.pack("<IIQQQ", 0x4C694D45, 1, pa, pa + length - 1, 0))
            out.write(image[pa:pa + length])
    return path


def _tag(name: str, value: Optional[bytes] = None, indices: Sequence[int] = (),
         block: Optional[bytes] = None, padding: int = 0) -> bytes:
    encoded = name.encode()
    size = 63 if block is not None else len(value or b"")
    tag = (len(encoded) << 8) | (len(indices) << 6) | size
    out = struct.pack("<H", tag) + encoded + b"".join(struct.pack("<I", i) for i in indices)
    if block is not None:
        out += struct.pack("<QQH", len(block), len(block), padding) + bytes(padding) + block
    else:
        out += value or b""
    return out


def vmss_bytes(regions: Sequence[Tuple[int, int, int]], cpus: Sequence[Dict[str, int]] = (),
               memory: Optional[bytes] = None, magic: int = 0xBED2BED2) -> bytes:
    """A VMware state file with a "memory" group (region map, optional Memory block) and a
    "cpu" group (CR64 and general registers per vCPU)."""
    memory_group = _tag("align_mask", struct.pack("<I", 0xFFFF))
    if regions:
        memory_group += _tag("regionsCount", struct.pack("<I", len(regions)))
    for index, (ppn, page_num, pages) in enumerate(regions):
        memory_group += _tag("regionPPN", struct.pack("<I", ppn), [index])
        memory_group += _tag("regionPageNum", struct.pack("<I", page_num), [index])
        memory_group += _tag("regionSize", struct.pack("<I", pages), [index])
    if memory is not None:
        memory_group += _tag("Memory", block=memory, indices=[0, 0], padding=6)
    memory_group += b"\0\0"
    cpu_group = _tag("cpu:numVCPUs", struct.pack("<I", len(cpus)))
    for cpu, regs in enumerate(cpus):
        for index in range(5):
            cpu_group += _tag("CR64", struct.pack("<Q", regs.get("cr%d" % index, 0)), [cpu, index])
        for name in ("rip", "rsp", "rax"):
            cpu_group += _tag(name, struct.pack("<Q", regs.get(name, 0)), [cpu])
    cpu_group += b"\0\0"
    groups = [("cpu", cpu_group), ("memory", memory_group)]
    position = 12 + 80 * len(groups)
    header = struct.pack("<III", magic, 8, len(groups))
    body = b""
    for name, data in groups:
        header += name.encode().ljust(64, b"\0") + struct.pack("<QQ", position + len(body), len(data))
        body += data
    return header + body


def write_vmware(stem: Path, image: bytes, regions: Sequence[Tuple[int, int, int]],
                 cpus: Sequence[Dict[str, int]] = (), state_ext: str = ".vmss") -> Tuple[Path, Path]:
    """A .vmem with the listed regions (ppn, page index in the file, pages) squeezed
    together, and its state file."""
    vmem = stem.with_suffix(".vmem")
    size = max(page_num + pages for _, page_num, pages in regions) * PAGE
    data = bytearray(size)
    for ppn, page_num, pages in regions:
        data[page_num * PAGE:(page_num + pages) * PAGE] = image[ppn * PAGE:(ppn + pages) * PAGE]
    vmem.write_bytes(bytes(data))
    state = stem.with_suffix(state_ext)
    state.write_bytes(vmss_bytes(regions, cpus))
    return vmem, state
