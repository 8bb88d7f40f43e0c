"""`vtdbg ept`: translate guest-physical (and guest-virtual) addresses through EPT, map a
whole hierarchy, and list EPT hooks and misconfigurations."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Tuple

from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import Block, Cell, Heading, KeyValues, Link, Result, Table, Text, hex_value
from vtdbg.core.ept import (
    DEFAULT_MAX_TABLES,
    MEMORY_TYPES,
    SDM_MISCONFIG,
    EptEntry,
    EptWalker,
    find_hooks,
    translate_gva,
)
from vtdbg.core.locate import find_vmcs
from vtdbg.core.vmcs import Vmcs, read_vmcs
from vtdbg.lib.errors import CapabilityError, MemoryReadError, UsageError, VtdbgError
from vtdbg.lib.numbers import parse_address, parse_int
from vtdbg.target.base import Capability, Target

EPT_VPID_CAP = 0x48C


def select_vmcs(ctx: Context, at: Optional[str], layout: str = "auto") -> Vmcs:
    """The VMCS at ``--at``, else the one ``--cpu`` selects (default: the first found)."""
    target = ctx.target
    if at is not None:
        return read_vmcs(target, parse_address(at), layout)
    if ctx.cpu is not None and ctx.cpu.lower() == "all":
        raise UsageError("this command works on one VMCS; give --cpu N or --at PA")
    found = find_vmcs(target)
    if not found:
        raise VtdbgError("no VMCS found in %s; give --at PA (or --eptp / --bitmap directly)" % target.description)
    cpu = 0 if ctx.cpu is None else parse_int(ctx.cpu, "CPU number")
    if not 0 <= cpu < len(found):
        raise UsageError("CPU %d does not exist here (%d VMCS found)" % (cpu, len(found)))
    return read_vmcs(target, found[cpu].pa, layout)


def _caps(target: Target, text: Optional[str]) -> Tuple[Optional[int], str]:
    if text is not None:
        return parse_int(text, "IA32_VMX_EPT_VPID_CAP value"), "--caps"
    if target.has(Capability.MSR_READ):
        try:
            return target.read_msr(EPT_VPID_CAP), "MSR 0x48C"
        except (CapabilityError, MemoryReadError):
            pass
    return None, "unknown"


def _rights(read: bool, write: bool, execute: bool, user_execute: bool = False) -> str:
    return ("r" if read else "-") + ("w" if write else "-") + ("x" if execute else "-") + ("u" if user_execute else "")


def level_rows(levels: List[EptEntry]) -> List[List[Cell]]:
    """!pte-style rows, one per paging-structure entry."""
    rows: List[List[Cell]] = []
    for entry in levels:
        if not entry.present:
            what = "not present"
        elif entry.leaf:
            what = "%s page at %s, %s%s" % ({3: "1G", 2: "2M", 1: "4K"}.get(entry.level, "?"),
                                            hex_value(entry.address),
                                            MEMORY_TYPES.get(entry.memory_type or 0, "type %s" % entry.memory_type),
                                            ", ignore PAT" if entry.ignore_pat else "")
        else:
            what = "table at %s" % hex_value(entry.address)
        rows.append([entry.name, str(entry.index), Link(hex_value(entry.entry_pa), "phys", entry.entry_pa),
                     hex_value(entry.value, 16), _rights(entry.read, entry.write, entry.execute, entry.user_execute),
                     what, "; ".join(entry.issues) or "-"])
    return rows


LEVEL_COLUMNS = ["level", "index", "entry at", "value", "rights", "maps", "misconfiguration"]


def _ept_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gpa", nargs="?", metavar="GPA", help="guest-physical address to translate")
    parser.add_argument("--eptp", metavar="EPTP", help="EPT pointer to walk (default: the VMCS's EPT_POINTER)")
    parser.add_argument("--at", metavar="PA", help="physical address of the VMCS (default: --cpu's VMCS)")
    parser.add_argument("--map", action="store_true", help="merged map of every mapped range")
    parser.add_argument("--hooks", action="store_true",
                        help="pages whose rights or host mapping differ from their neighbours (EPT hooks)")
    parser.add_argument("--misconfig", action="store_true",
                        help="entries the CPU would raise an EPT misconfiguration for")
    parser.add_argument("--gva", metavar="GVA", help="guest-virtual address: guest CR3 tables, then EPT")
    parser.add_argument("--guest-cr3", metavar="CR3", help="guest CR3 for --gva (default: the VMCS's GUEST_CR3)")
    parser.add_argument("--caps", metavar="VALUE",
                        help="IA32_VMX_EPT_VPID_CAP (decides whether execute-only and 1-GiB entries are legal)")
    parser.add_argument("--phys-bits", metavar="N", help="MAXPHYADDR (default 52: no address bit called reserved)")
    parser.add_argument("--max-tables", metavar="N", default=str(DEFAULT_MAX_TABLES),
                        help="tables a full walk may visit (default %d)" % DEFAULT_MAX_TABLES)


def _caps_warning(walker: EptWalker) -> List[str]:
    if walker.caps_unjudged:
        return ["IA32_VMX_EPT_VPID_CAP is unknown, so execute-only or 1-GiB entries met here were not judged "
                "(give --caps VALUE)"]
    return []


def _guest_levels(vmcs: Optional[Vmcs]) -> int:
    if vmcs is None:
        return 4
    cr0 = vmcs.get("GUEST_CR0") or 0
    cr4 = vmcs.get("GUEST_CR4") or 0
    efer = vmcs.get("GUEST_IA32_EFER")
    entry = vmcs.get("VM_ENTRY_CONTROLS") or 0
    if not cr0 >> 31 & 1:
        return 0
    long_mode = (efer is not None and efer >> 10 & 1) or entry >> 9 & 1
    if not long_mode:
        raise UsageError("the guest uses 32-bit or PAE paging, which --gva does not walk; translate the GPA")
    return 5 if cr4 >> 12 & 1 else 4


@command("ept", help="walk EPT: translate a GPA/GVA, map ranges, find hooks and misconfigurations",
         examples=["vtdbg --image lab.img ept 0x200123", "vtdbg --image lab.img ept --map",
                   "vtdbg --target dump:mem.dmp ept --eptp 0x3001e 0x1000 --json",
                   "vtdbg --image lab.img ept --gva 0x8ab1", "vtdbg --image lab.img ept --hooks --misconfig"],
         needs=Capability.PHYS_READ,
         description="Walk the EPT hierarchy of a VMCS (its EPT_POINTER) or of --eptp: translate a "
                     "guest-physical address showing every level like !pte, print a merged map of ranges with "
                     "rights and memory types, list pages whose rights differ from their neighbours (hooks), "
                     "and entries the CPU would raise an EPT-misconfiguration exit for (" + SDM_MISCONFIG + ").")
@arguments(_ept_args)
def ept_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Run the EPT views the options ask for (default: summary, map and findings)."""
    target = ctx.target
    vmcs: Optional[Vmcs] = None
    if args.eptp is not None:
        if args.at is not None:
            raise UsageError("give --eptp or --at, not both")
        eptp = parse_address(args.eptp, "EPTP")
        if args.gva is not None and args.guest_cr3 is None:
            vmcs = select_vmcs(ctx, None)
    else:
        vmcs = select_vmcs(ctx, args.at)
        value = vmcs.get("EPT_POINTER")
        if not value:
            raise VtdbgError("the VMCS at %s has no EPT pointer (EPT off or not in its layout); give --eptp"
                             % hex_value(vmcs.address))
        eptp = value
    caps, caps_source = _caps(target, args.caps)
    mbec = bool(vmcs is not None and (vmcs.get("SECONDARY_VM_EXEC_CONTROL") or 0) >> 22 & 1)
    phys_bits = parse_int(args.phys_bits, "MAXPHYADDR") if args.phys_bits else 52
    if not 24 <= phys_bits <= 52:
        raise UsageError("--phys-bits must be between 24 and 52")
    max_tables = parse_int(args.max_tables, "table count")
    if max_tables < 1:
        raise UsageError("--max-tables must be at least 1")
    walker = EptWalker(target.read_phys, eptp, caps=caps, mbec=mbec, phys_bits=phys_bits, max_tables=max_tables)
    warnings = ["EPTP 0x%x: %s" % (eptp, p) for p in walker.eptp_problems]
    head: List[Cell] = ["EPTP", Link(hex_value(eptp), "command", "ept --eptp 0x%x --map" % eptp)]
    source: List[List[Cell]] = [head, ["walk", "%d levels from %s" % (walker.levels, hex_value(walker.root))],
              ["VMCS", hex_value(vmcs.address) if vmcs is not None else "-"],
              ["EPT_VPID_CAP", "%s (%s)" % (hex_value(caps), caps_source)]]
    if args.gpa is not None:
        if args.map or args.gva:
            raise UsageError("give a GPA, --gva or --map, one at a time")
        gpa = parse_address(args.gpa, "guest-physical address")
        result = walker.translate(gpa)
        data: Dict[str, Any] = result.to_json()
        data["eptp"] = eptp
        kv = KeyValues(source + [
            ["GPA", hex_value(gpa)],
            ["HPA", Link(hex_value(result.hpa), "phys", result.hpa) if result.hpa is not None else "-"],
            ["rights", _rights(result.read, result.write, result.execute, result.user_execute)],
            ["memory type", "-" if result.memory_type is None else "%d (%s)" % (
                result.memory_type, MEMORY_TYPES.get(result.memory_type, "reserved"))],
            ["page size", "-" if result.page_size is None else hex_value(result.page_size)]])
        blocks: List[Block] = [kv, Table(LEVEL_COLUMNS, level_rows(result.levels))]
        if result.fault:
            blocks.append(Text(result.fault, style="warning"))
        return Result(data, blocks, warnings=warnings + _caps_warning(walker))
    if args.gva is not None:
        gva = parse_address(args.gva, "guest-virtual address")
        if args.guest_cr3 is not None:
            cr3, levels = parse_address(args.guest_cr3, "guest CR3"), 4
        else:
            assert vmcs is not None
            cr3, levels = vmcs.get("GUEST_CR3") or 0, _guest_levels(vmcs)
        if levels == 0:
            raise UsageError("guest paging is off (GUEST_CR0.PG = 0): the GVA is the GPA; run `ept %s`" % args.gva)
        doc = translate_gva(walker, cr3, gva, levels)
        doc["eptp"] = eptp
        guest_rows: List[List[Cell]] = [[g["name"], hex_value(g["entry_gpa"]), hex_value(g["entry_hpa"]),
                                         hex_value(g["value"], 16)] for g in doc["guest_levels"]]
        final = walker.translate(doc["gpa"])
        blocks = [KeyValues(source + [["GVA", hex_value(gva)], ["guest CR3", hex_value(cr3)],
                                      ["GPA", hex_value(doc["gpa"])], ["HPA", hex_value(doc["hpa"])]]),
                  Heading("guest page tables (each table read through EPT)"),
                  Table(["level", "entry GPA", "entry HPA", "value"], guest_rows),
                  Heading("EPT walk of GPA %s" % hex_value(doc["gpa"])), Table(LEVEL_COLUMNS, level_rows(final.levels))]
        return Result(doc, blocks, warnings=warnings + _caps_warning(walker))
    # the whole hierarchy
    ranges = walker.merged_map()
    hooks = find_hooks(ranges)
    misconfigs = walker.misconfigurations()
    show_all = not (args.map or args.hooks or args.misconfig)
    data = {"eptp": eptp, "levels": walker.levels, "root": walker.root, "tables": walker.tables_visited,
            "mapped_bytes": sum(r.size for r in ranges), "ranges": [r.to_json() for r in ranges],
            "hooks": hooks, "misconfigurations": [m.to_json() for m in misconfigs],
            "misconfigured_entries": walker.misconfigured_entries,
            "unreadable_tables": list(walker.unreadable), "caps": caps}
    blocks = [KeyValues(source + [["mapped", "%s in %d range(s), %d table(s) read" % (
        hex_value(data["mapped_bytes"]), len(ranges), walker.tables_visited)]])]
    if walker.unreadable:
        warnings.append("%d EPT table(s) are not in memory; what they map is unknown" % len(walker.unreadable))
    if args.map or show_all:
        blocks.append(Heading("EPT map"))
        blocks.append(Table(["GPA", "end", "HPA", "size", "rights", "memory type", "page"],
                            [[hex_value(r.gpa), hex_value(r.gpa + r.size), Link(hex_value(r.hpa), "phys", r.hpa),
                              hex_value(r.size), r.perms,
                              MEMORY_TYPES.get(r.memory_type, str(r.memory_type)) + (" +IPAT" if r.ignore_pat else ""),
                              {1 << 30: "1G", 1 << 21: "2M", 1 << 12: "4K"}.get(r.page_size, "")]
                             for r in ranges]))
    if args.hooks or show_all:
        blocks.append(Heading("EPT hooks (pages unlike both neighbours)"))
        if hooks:
            blocks.append(Table(["GPA", "size", "HPA", "rights", "kind", "why"],
                                [[hex_value(h["gpa"]), hex_value(h["size"]), hex_value(h["hpa"]),
                                  _rights(h["read"], h["write"], h["execute"], h["user_execute"]), h["kind"],
                                  h["reason"]] for h in hooks]))
        else:
            blocks.append(Text("none", style="note"))
    if args.misconfig or show_all:
        blocks.append(Heading("EPT misconfigurations (" + SDM_MISCONFIG + ")"))
        if misconfigs:
            blocks.append(Table(["GPA", "level", "entry at", "value", "why"],
                                [[hex_value(m.gpa), m.to_json()["name"], hex_value(m.entry_pa), hex_value(m.value, 16),
                                  "; ".join(m.reasons)] for m in misconfigs]))
        else:
            blocks.append(Text("none", style="note"))
    return Result(data, blocks, warnings=warnings + _caps_warning(walker))
