"""Windows x64 kernel crash dumps: DUMP_HEADER64 with DumpType 1 (full) and 5/6 (bitmap).

Layout facts (shared/reference/dump-formats.md section 2): an 8 KiB header ("PAGE" "DU64")
holding the physical-memory descriptor (at most 42 runs), the crashing CPU's CONTEXT and
the bug check; full dumps store the runs' pages back to back from 0x2000, bitmap dumps
store an "SDMP"/"FDMP" header at 0x2000 followed by a bitmap of present PFNs and the
pages in ascending PFN order from ``FirstPage``.

Every count is checked against the file before use: the run table against its 42-slot
buffer, the bitmap against the file size, the stored pages against what is left of the
file (a truncated dump keeps the pages it has, with a warning).  The RDMP types 8/9/10 and
32-bit "PAGEDUMP" files are refused with a clear message.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from construct import Array, Bytes, Const, ConstructError, Int16ul, Int32ul, Int64ul, Padding, StreamError, Struct

from vtdbg.lib.bitranges import set_bit_runs
from vtdbg.lib.errors import TargetError
from vtdbg.target.dumps.physmem import MAX_PA, PAGE, DumpTarget, FileMap, Run

HEADER_SIZE = 0x2000
MAX_RUNS = 42  # (700 - 16) / 16 slots in the header's PhysicalMemoryBlock buffer
DUMP_TYPES = {1: "full", 2: "summary", 3: "header", 4: "triage (minidump)", 5: "bitmap", 6: "bitmap (kernel)",
              7: "automatic", 8: "RDMP kernel", 9: "RDMP kernel and user", 10: "RDMP complete"}

RawRun = Struct("base_page" / Int64ul, "page_count" / Int64ul)

RawDumpHeader64 = Struct(
    "signature" / Const(b"PAGE"),
    "valid_dump" / Bytes(4),
    "major_version" / Int32ul,
    "minor_version" / Int32ul,
    "directory_table_base" / Int64ul,
    "pfn_database" / Int64ul,
    "ps_loaded_module_list" / Int64ul,
    "ps_active_process_head" / Int64ul,
    "machine_image_type" / Int32ul,
    "number_processors" / Int32ul,
    "bugcheck_code" / Int32ul,
    Padding(4),
    "bugcheck_parameters" / Array(4, Int64ul),
    Padding(0x20),  # VersionUser
    "kd_debugger_data_block" / Int64ul,
    # PhysicalMemoryBlock: NumberOfRuns, pad, NumberOfPages, then the run buffer
    "number_of_runs" / Int32ul,
    Padding(4),
    "number_of_pages" / Int64ul,
    "run_buffer" / Bytes(700 - 16),
    Padding(4),
    "context" / Bytes(3000),
    "exception" / Bytes(0x98),
    "dump_type" / Int32ul,
    Padding(4),
    "required_dump_space" / Int64ul,
    "system_time" / Int64ul,
    "comment" / Bytes(128),
    "system_up_time" / Int64ul,
)

RawBitmapHeader = Struct(
    "signature" / Bytes(4),
    "valid_dump" / Const(b"DUMP"),
    Padding(0x18),
    "first_page" / Int64ul,
    "total_present_pages" / Int64ul,
    "pages" / Int64ul,
)

#: AMD64 CONTEXT: offsets of the registers we expose (names as vtdbg spells them)
_CONTEXT_U64 = (("dr0", 0x48), ("dr1", 0x50), ("dr2", 0x58), ("dr3", 0x60), ("dr6", 0x68), ("dr7", 0x70),
                ("rax", 0x78), ("rcx", 0x80), ("rdx", 0x88), ("rbx", 0x90), ("rsp", 0x98), ("rbp", 0xA0),
                ("rsi", 0xA8), ("rdi", 0xB0), ("r8", 0xB8), ("r9", 0xC0), ("r10", 0xC8), ("r11", 0xD0),
                ("r12", 0xD8), ("r13", 0xE0), ("r14", 0xE8), ("r15", 0xF0), ("rip", 0xF8))
_CONTEXT_U16 = (("cs", 0x38), ("ds", 0x3A), ("es", 0x3C), ("fs", 0x3E), ("gs", 0x40), ("ss", 0x42))
RawContextHead = Struct("context_flags" / Int32ul, "mxcsr" / Int32ul)


def parse_context(raw: bytes, dtb: int) -> Dict[str, int]:
    """Registers from an AMD64 CONTEXT record; ``cr3`` is the header's kernel DTB."""
    regs: Dict[str, int] = {}
    for name, off in _CONTEXT_U64:
        regs[name] = int.from_bytes(raw[off:off + 8], "little")
    for name, off in _CONTEXT_U16:
        regs[name] = Int16ul.parse(raw[off:off + 2])
    regs["rflags"] = int.from_bytes(raw[0x44:0x48], "little")
    regs["mxcsr"] = RawContextHead.parse(raw[0x30:0x38]).mxcsr
    regs["cr3"] = dtb
    return regs


def bitmap_runs(bitmap: bytes, bit_count: int) -> List[Tuple[int, int]]:
    """(first PFN, page count) for each stretch of set bits of a dump's page bitmap."""
    return set_bit_runs(bitmap, bit_count)


class WindowsDumpTarget(DumpTarget):
    """A Windows x64 full (type 1) or bitmap (type 5/6) kernel crash dump."""

    format_name = "windows"

    def __init__(self, source: FileMap) -> None:
        super().__init__(source)
        head = source.read(0, HEADER_SIZE)
        if head[:8] == b"PAGEDUMP":
            raise TargetError("%s is a 32-bit Windows dump (PAGEDUMP); vtdbg reads x64 dumps only" % source.name)
        if len(head) < HEADER_SIZE:
            raise TargetError("%s: truncated Windows dump header (%d of %d bytes)" % (source.name, len(head),
                                                                                         HEADER_SIZE))
        try:
            header = RawDumpHeader64.parse(head)
        except (ConstructError, StreamError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TargetError("%s: not a Windows x64 dump header (%s)" % (source.name, first)) from None
        if header.valid_dump != b"DU64":
            raise TargetError("%s: Windows dump header has ValidDump %r, expected DU64" % (source.name,
                                                                                          header.valid_dump))
        dump_type = header.dump_type
        self.header = header
        self.dump_type = dump_type
        self.format_name = "windows-%s" % {1: "full", 5: "bitmap", 6: "bitmap"}.get(dump_type, str(dump_type))
        self.description = "Windows %s dump %s" % (DUMP_TYPES.get(dump_type, "type %d" % dump_type), source.name)
        if dump_type == 1:
            runs = self._full_runs(header)
        elif dump_type in (5, 6):
            runs = self._bitmap_runs()
        elif dump_type in DUMP_TYPES:
            raise TargetError("%s: Windows %s dump (DumpType %d) is not supported; write a full, kernel or "
                              "active (bitmap) dump, or open it in WinDbg" % (source.name, DUMP_TYPES[dump_type],
                                                                               dump_type))
        else:
            raise TargetError("%s: unknown Windows DumpType %d" % (source.name, dump_type))
        self._init_runs(runs)
        dtb = header.directory_table_base
        regs = parse_context(header.context, dtb)
        self._init_cpus([regs])
        processors = header.number_processors
        if 1 <= processors <= 4096:
            self._cpu_total = processors
        else:
            self.warnings.append("implausible NumberProcessors %d in the header; assuming 1" % processors)
        self.info.update({
            "format": self.format_name,
            "dump_type": dump_type,
            "dump_type_name": DUMP_TYPES.get(dump_type),
            "bugcheck_code": header.bugcheck_code,
            "bugcheck_parameters": list(header.bugcheck_parameters),
            "number_processors": processors,
            "directory_table_base": dtb,
            "kd_debugger_data_block": header.kd_debugger_data_block,
            "ps_loaded_module_list": header.ps_loaded_module_list,
            "build": header.minor_version,
            "system_time": header.system_time,
            "comment": header.comment.split(b"\0", 1)[0].decode("latin-1") if not
            header.comment.startswith(b"PAGEPAGE") else "",
        })
        if header.required_dump_space and header.required_dump_space > source.size:
            self.warnings.append("the header says the dump is 0x%x bytes but the file has 0x%x"
                                 % (header.required_dump_space, source.size))

    def _full_runs(self, header) -> List[Run]:  # type: ignore[no-untyped-def]
        count = header.number_of_runs
        if count == 0x45474150:  # "PAGE": the descriptor was never filled in
            raise TargetError("%s: the dump's physical memory descriptor is empty (PAGE filler)" % self.path)
        if count > MAX_RUNS:
            raise TargetError("%s: %d physical memory runs claimed; the header holds at most %d"
                              % (self.path, count, MAX_RUNS))
        runs: List[Run] = []
        offset = HEADER_SIZE
        total = 0
        for index in range(count):
            raw = RawRun.parse(header.run_buffer[16 * index:16 * index + 16])
            if raw.page_count == 0:
                continue
            if (raw.base_page + raw.page_count) * PAGE > MAX_PA:
                raise TargetError("%s: run %d (PFN 0x%x, 0x%x pages) lies beyond 52-bit physical memory"
                                  % (self.path, index, raw.base_page, raw.page_count))
            runs.append(Run(raw.base_page * PAGE, raw.page_count * PAGE, offset))
            offset += raw.page_count * PAGE
            total += raw.page_count
        if total != header.number_of_pages:
            self.warnings.append("NumberOfPages is %d but the runs hold %d pages" % (header.number_of_pages, total))
        return runs

    def _bitmap_runs(self) -> List[Run]:
        raw = self.file.read(HEADER_SIZE, 0x38)
        if len(raw) < 0x38:
            raise TargetError("%s: truncated bitmap dump header" % self.path)
        try:
            bmp = RawBitmapHeader.parse(raw)
        except (ConstructError, StreamError):
            raise TargetError("%s: bitmap dump header at 0x2000 lacks its DUMP signature" % self.path) from None
        if bmp.signature not in (b"SDMP", b"FDMP"):
            raise TargetError("%s: bitmap dump signature %r is neither SDMP nor FDMP" % (self.path, bmp.signature))
        bits = bmp.pages
        bitmap_bytes = (bits + 7) // 8
        if HEADER_SIZE + 0x38 + bitmap_bytes > self.file.size:
            raise TargetError("%s: the bitmap claims %d pages (0x%x bytes of bitmap) but the file has only 0x%x bytes"
                              % (self.path, bits, bitmap_bytes, self.file.size))
        if bits * PAGE > MAX_PA:
            raise TargetError("%s: the bitmap covers more than 52-bit physical memory" % self.path)
        first = bmp.first_page
        if first < HEADER_SIZE + 0x38 + bitmap_bytes or first > self.file.size:
            raise TargetError("%s: FirstPage 0x%x is outside the file's page area" % (self.path, first))
        bitmap = self.file.read(HEADER_SIZE + 0x38, bitmap_bytes)
        runs: List[Run] = []
        offset = first
        present = 0
        for pfn, count in bitmap_runs(bitmap, bits):
            runs.append(Run(pfn * PAGE, count * PAGE, offset))
            offset += count * PAGE
            present += count
        if present != bmp.total_present_pages:
            self.warnings.append("the bitmap has %d pages set but the header says %d"
                                 % (present, bmp.total_present_pages))
        self.info["bitmap_signature"] = bmp.signature.decode("ascii")
        return runs


def open_windows(source: FileMap) -> WindowsDumpTarget:
    """Open a Windows dump from a mapped file."""
    return WindowsDumpTarget(source)


__all__ = ["WindowsDumpTarget", "open_windows", "bitmap_runs", "parse_context", "MAX_RUNS", "MAX_PA"]
