"""VMware guest memory: ``.vmem`` files and the ``.vmss``/``.vmsn`` state files beside them.

A ``.vmem`` holds guest RAM with the PCI hole squeezed out, so above the hole file offset
and physical address differ; the region map (``regionsCount``, ``regionPPN[i]``,
``regionPageNum[i]``, ``regionSize[i]``) lives in the "memory" group of the state file.
Facts from shared/reference/dump-formats.md section 3.2 and crash-utility's
vmware_vmss.h: a 12-byte header (magic, version, group count), 80-byte group descriptors
(64-byte name, position, size), and inside a group tagged items: a 16-bit tag (bits 5:0
value size, 7:6 index count, 15:8 name length), the name, 32-bit indices, then either the
value or, for value sizes 62/63, a block (on-disk size, in-memory size, 16-bit padding,
padding, data; 62 = compressed).  A state file may also carry the memory itself as a
"Memory" block.  The "cpu" group gives per-vCPU CR64[cpu][n] and general registers.

No real VMware sample exists in this project: the reader is tested on files built from this
description (docs/dump-formats.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from construct import Bytes, Int16ul, Int32ul, Int64ul, Struct

from vtdbg.lib.errors import TargetError
from vtdbg.target.dumps.physmem import PAGE, DumpTarget, FileMap, Run

MAGICS = {0xBED0BED0: "old (32-bit)", 0xBED2BED2: "checkpoint", 0xBED3BED3: "partial checkpoint",
          0xBAD1BAD1: "restored checkpoint", 0xBAD2BAD2: "no-restore checkpoint"}
MAGIC_BYTES = tuple(m.to_bytes(4, "little") for m in MAGICS)
RawStateHeader = Struct("magic" / Int32ul, "version" / Int32ul, "group_count" / Int32ul)
RawGroup = Struct("name" / Bytes(64), "position" / Int64ul, "size" / Int64ul)
RawBlockHeader = Struct("nbytes" / Int64ul, "nbytes_in_memory" / Int64ul, "padding" / Int16ul)
MAX_GROUPS = 4096
#: tags per group we are willing to walk (a state file has a few thousand)
MAX_TAGS = 1 << 20
MAX_REGIONS = 64
GPREGS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
          "r15")


@dataclass
class VmwareState:
    """What vtdbg takes from a state file."""

    path: str
    magic: int
    regions: List[Tuple[int, int, int]] = field(default_factory=list)  # (ppn, page index in .vmem, pages)
    memory_block: Optional[Tuple[int, int]] = None  # (file offset, bytes) of an embedded Memory block
    memory_compressed: bool = False
    cpus: Dict[int, Dict[str, int]] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


def parse_state(source: FileMap) -> VmwareState:
    """Read the memory region map, an embedded Memory block and vCPU registers."""
    raw = source.read(0, RawStateHeader.sizeof())
    if len(raw) < RawStateHeader.sizeof():
        raise TargetError("%s: truncated VMware state header" % source.name)
    header = RawStateHeader.parse(raw)
    if header.magic not in MAGICS:
        raise TargetError("%s: not a VMware state file (magic 0x%08x)" % (source.name, header.magic))
    if header.magic == 0xBED0BED0:
        raise TargetError("%s: 32-bit VMware checkpoint files are not supported" % source.name)
    state = VmwareState(source.name, header.magic)
    count = header.group_count
    table_end = 12 + count * RawGroup.sizeof()
    if count > MAX_GROUPS or table_end > source.size:
        raise TargetError("%s: %d groups claimed; the file cannot hold their descriptors" % (source.name, count))
    regions: Dict[int, Dict[str, int]] = {}
    region_count: Optional[int] = None
    for index in range(count):
        group = RawGroup.parse(source.read(12 + index * RawGroup.sizeof(), RawGroup.sizeof()))
        name = group.name.split(b"\0", 1)[0].decode("latin-1")
        if name not in ("memory", "cpu"):
            continue
        if group.position >= source.size:
            state.warnings.append("group %s starts beyond the end of the file" % name)
            continue
        end = min(source.size, group.position + group.size) if group.size else source.size
        for tag_name, indices, value, block in _tags(source, group.position, end, state.warnings):
            if name == "memory":
                if block is not None and tag_name == "Memory":
                    offset, nbytes, in_memory, compressed = block
                    state.memory_block = (offset, in_memory if not compressed else nbytes)
                    state.memory_compressed = compressed
                elif value is not None and tag_name == "regionsCount":
                    region_count = value
                elif value is not None and tag_name in ("regionPPN", "regionPageNum", "regionSize") and indices:
                    if indices[0] < MAX_REGIONS:
                        regions.setdefault(indices[0], {})[tag_name] = value
            else:
                cpu = indices[0] if indices else None
                if cpu is None or cpu >= 4096:
                    continue
                regs = state.cpus.setdefault(cpu, {})
                if value is not None and tag_name == "CR64" and len(indices) >= 2 and indices[1] <= 4:
                    regs["cr%d" % indices[1]] = value
                elif value is not None and tag_name in GPREGS + ("rip",):
                    regs[tag_name] = value
                elif value is not None and tag_name.lower() == "eflags":
                    regs["rflags"] = value
    if region_count is not None:
        if region_count > MAX_REGIONS:
            raise TargetError("%s: regionsCount %d is implausible" % (source.name, region_count))
        for index in range(region_count):
            item = regions.get(index, {})
            if not {"regionPPN", "regionPageNum", "regionSize"} <= set(item):
                state.warnings.append("memory region %d is incomplete in the state file; ignored" % index)
                continue
            state.regions.append((item["regionPPN"], item["regionPageNum"], item["regionSize"]))
    return state


def _tags(source: FileMap, start: int, end: int, warnings: List[str]):  # type: ignore[no-untyped-def]
    """Yield (name, indices, value or None, block or None) for each tag of one group."""
    cursor = start
    for _ in range(MAX_TAGS):
        head = source.read(cursor, 2)
        if len(head) < 2 or cursor + 2 > end:
            warnings.append("group ends without its terminating tag at 0x%x" % cursor)
            return
        tag = Int16ul.parse(head)
        if tag == 0:
            return
        size, nindex, name_len = tag & 0x3F, (tag >> 6) & 3, tag >> 8
        cursor += 2
        name = source.read(cursor, name_len).decode("latin-1", "replace")
        cursor += name_len
        raw_indices = source.read(cursor, 4 * nindex)
        cursor += 4 * nindex
        if len(name) < name_len or len(raw_indices) < 4 * nindex or cursor > end:
            warnings.append("truncated tag in a state-file group")
            return
        indices = [int.from_bytes(raw_indices[4 * i:4 * i + 4], "little") for i in range(nindex)]
        if size in (62, 63):
            raw = source.read(cursor, RawBlockHeader.sizeof())
            if len(raw) < RawBlockHeader.sizeof():
                warnings.append("truncated block header for %s" % name)
                return
            block = RawBlockHeader.parse(raw)
            data_at = cursor + RawBlockHeader.sizeof() + block.padding
            if data_at + block.nbytes > source.size:
                warnings.append("block %s runs past the end of the file" % name)
                yield name, indices, None, (data_at, min(block.nbytes, max(0, source.size - data_at)),
                                            block.nbytes_in_memory, size == 62)
                return
            yield name, indices, None, (data_at, block.nbytes, block.nbytes_in_memory, size == 62)
            cursor = data_at + block.nbytes
        else:
            value = source.read(cursor, size)
            if len(value) < size:
                warnings.append("truncated value for %s" % name)
                return
            cursor += size
            yield name, indices, int.from_bytes(value, "little") if size <= 8 else None, None
    warnings.append("more than %d tags in one group; the rest is ignored" % MAX_TAGS)


class VmwareTarget(DumpTarget):
    """Guest RAM from a ``.vmem`` (or a state file's Memory block), mapped by the region table."""

    format_name = "vmware"

    def __init__(self, memory: FileMap, state: Optional[VmwareState], base: int = 0) -> None:
        super().__init__(memory)
        self.description = "VMware guest memory %s" % memory.name
        runs: List[Run] = []
        if state is not None:
            self.warnings.extend(state.warnings)
        if state is not None and state.regions:
            for ppn, page_index, pages in state.regions:
                runs.append(Run(ppn * PAGE, pages * PAGE, base + page_index * PAGE))
        else:
            if state is None:
                self.warnings.append("no .vmss/.vmsn beside the .vmem: assuming file offset = physical address, "
                                     "which is wrong above the PCI hole of guests with more than ~3 GiB")
            limit = memory.size - base
            if state is not None and state.memory_block is not None:
                limit = min(limit, state.memory_block[1])
            runs.append(Run(0, limit, base))
        self._init_runs(runs)
        if state is not None:
            cpus = [state.cpus[c] for c in sorted(state.cpus) if "cr3" in state.cpus[c] and "rip" in state.cpus[c]]
            self._init_cpus(cpus)
            self.info.update({"state_file": state.path, "regions": [list(r) for r in state.regions],
                              "state_magic": state.magic})


def companion_state(vmem_path: str) -> Optional[str]:
    """The .vmss or .vmsn beside a .vmem, if one exists."""
    stem = os.path.splitext(vmem_path)[0]
    for ext in (".vmss", ".vmsn", ".VMSS", ".VMSN"):
        if os.path.isfile(stem + ext):
            return stem + ext
    return None


def companion_vmem(state_path: str) -> Optional[str]:
    """The .vmem beside a state file, if one exists."""
    stem = os.path.splitext(state_path)[0]
    for ext in (".vmem", ".VMEM"):
        if os.path.isfile(stem + ext):
            return stem + ext
    return None


def open_vmem(source: FileMap) -> VmwareTarget:
    """Open a .vmem, with its state file's region map when one lies beside it."""
    state_path = companion_state(source.name)
    state = None
    if state_path is not None:
        state_map = FileMap(state_path)
        try:
            state = parse_state(state_map)
        finally:
            state_map.close()
    return VmwareTarget(source, state)


def open_state(source: FileMap) -> VmwareTarget:
    """Open a .vmss/.vmsn: its embedded Memory block, or the .vmem beside it."""
    state = parse_state(source)
    if state.memory_block is not None:
        if state.memory_compressed:
            raise TargetError("%s: the embedded memory is compressed, which vtdbg cannot read" % source.name)
        return VmwareTarget(source, state, base=state.memory_block[0])
    vmem = companion_vmem(source.name)
    if vmem is None:
        raise TargetError("%s holds no memory and no .vmem lies beside it" % source.name)
    source.close()
    return VmwareTarget(FileMap(vmem), state)
