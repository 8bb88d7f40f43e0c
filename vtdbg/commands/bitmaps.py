"""`vtdbg msr-bitmap` and `vtdbg io-bitmap`: which MSRs and I/O ports cause VM exits."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Tuple

from vtdbg.commands.ept import select_vmcs
from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import Block, Cell, KeyValues, Link, Result, Table, Text, hex_value
from vtdbg.core.bitmaps import control_bit, io_exits, msr_exits, msr_exits_for
from vtdbg.core.vmcs import Vmcs
from vtdbg.lib.errors import MemoryReadError, UsageError, VtdbgError
from vtdbg.lib.numbers import parse_address, parse_int
from vtdbg.target.base import Capability, Target

PAGE = 0x1000


def _read_page(target: Target, pa: int, what: str) -> bytes:
    if pa & 0xFFF:
        raise UsageError("%s 0x%x is not 4 KiB aligned (VM entry requires bits 11:0 = 0)" % (what, pa))
    try:
        return target.read_phys(pa, PAGE)
    except MemoryReadError as exc:
        raise VtdbgError("%s at 0x%x cannot be read: %s" % (what, pa, exc.reason)) from None


def _range_rows(ranges: List[Dict[str, Any]], port: bool = False) -> List[List[Cell]]:
    width = 4 if port else 8
    rows: List[List[Cell]] = []
    for item in ranges:
        count = item["last"] - item["first"] + 1
        rows.append([hex_value(item["first"], width), hex_value(item["last"], width), str(count),
                     "always (outside the bitmap)" if item.get("always") else "bitmap"])
    return rows


def _vmcs_source(vmcs: Vmcs) -> List[List[Cell]]:
    return [["VMCS", Link(hex_value(vmcs.address), "phys", vmcs.address) if vmcs.address is not None else "-"],
            ["CPU_BASED_VM_EXEC_CONTROL", hex_value(vmcs.get("CPU_BASED_VM_EXEC_CONTROL"), 8)]]


def _msr_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--at", metavar="PA", help="physical address of the VMCS (default: --cpu's VMCS)")
    parser.add_argument("--bitmap", metavar="PA", help="physical address of an MSR bitmap page (no VMCS needed)")
    parser.add_argument("--msr", metavar="INDEX", help="say whether RDMSR/WRMSR of this MSR exits")


@command("msr-bitmap", help="which RDMSR/WRMSR cause VM exits (merged ranges, read and write separately)",
         examples=["vtdbg --image lab.img msr-bitmap", "vtdbg --image lab.img msr-bitmap --bitmap 0x34000 --json",
                   "vtdbg --image lab.img msr-bitmap --msr 0xc0000080"],
         needs=Capability.PHYS_READ)
@arguments(_msr_args)
def msr_bitmap_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Decode the MSR bitmap of a VMCS (honouring "use MSR bitmaps") or one given directly."""
    target = ctx.target
    pairs: List[List[Cell]] = []
    if args.bitmap is not None:
        if args.at is not None:
            raise UsageError("give --bitmap or --at, not both")
        pa: Optional[int] = parse_address(args.bitmap, "bitmap address")
        assert pa is not None
        doc = msr_exits(_read_page(target, pa, "MSR bitmap"))
    else:
        vmcs = select_vmcs(ctx, args.at)
        pairs += _vmcs_source(vmcs)
        proc = vmcs.get("CPU_BASED_VM_EXEC_CONTROL")
        if proc is None:
            raise VtdbgError("the VMCS layout does not supply CPU_BASED_VM_EXEC_CONTROL")
        use = bool(proc & control_bit("USE_MSR_BITMAPS"))
        pa = vmcs.get("MSR_BITMAP") if use else None
        if use and pa is None:
            raise VtdbgError("\"use MSR bitmaps\" is on but the layout does not supply MSR_BITMAP; give --bitmap")
        doc = msr_exits(_read_page(target, pa, "MSR bitmap") if use and pa is not None else None, use)
        doc["vmcs"] = vmcs.address
    doc["bitmap_pa"] = pa
    pairs += [["MSR bitmap", hex_value(pa)],
              ["use MSR bitmaps", "yes" if doc["use_msr_bitmaps"] else "no: every RDMSR and WRMSR exits"]]
    blocks: List[Block] = [KeyValues(pairs)]
    if args.msr is not None:
        msr = parse_int(args.msr, "MSR index")
        if not 0 <= msr <= 0xFFFFFFFF:
            raise UsageError("MSR index 0x%x is not a 32-bit number" % msr)
        reads, writes = msr_exits_for(doc, msr)
        doc["msr"] = {"index": msr, "read_exits": reads, "write_exits": writes}
        blocks.append(Text("MSR 0x%x: RDMSR %s, WRMSR %s" % (msr, "exits" if reads else "does not exit",
                                                              "exits" if writes else "does not exit")))
    if doc["use_msr_bitmaps"]:
        for kind in ("read", "write"):
            blocks.append(Table(["first", "last", "count", "why"], _range_rows(doc[kind]),
                                title="%s exits (%s)" % ("RDMSR" if kind == "read" else "WRMSR", kind)))
    return Result(doc, blocks)


def _io_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--at", metavar="PA", help="physical address of the VMCS (default: --cpu's VMCS)")
    parser.add_argument("--bitmap", metavar="A[,B]",
                        help="physical addresses of I/O bitmaps A and B (B defaults to A + 0x1000)")
    parser.add_argument("--port", metavar="PORT", help="say whether an access to this port exits")


def _io_pages(target: Target, a: int, b: int) -> Tuple[bytes, bytes]:
    return _read_page(target, a, "I/O bitmap A"), _read_page(target, b, "I/O bitmap B")


@command("io-bitmap", help="which I/O ports cause VM exits (merged ranges)",
         examples=["vtdbg --image lab.img io-bitmap", "vtdbg --image lab.img io-bitmap --bitmap 0x35000,0x36000",
                   "vtdbg --image lab.img io-bitmap --port 0x3f8 --json"],
         needs=Capability.PHYS_READ)
@arguments(_io_args)
def io_bitmap_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Decode I/O bitmaps A/B of a VMCS (honouring its I/O controls) or given directly."""
    target = ctx.target
    pairs: List[List[Cell]] = []
    notes: List[str] = []
    a: Optional[int] = None
    b: Optional[int] = None
    if args.bitmap is not None:
        if args.at is not None:
            raise UsageError("give --bitmap or --at, not both")
        parts = [p for p in args.bitmap.split(",") if p.strip()]
        if not 1 <= len(parts) <= 2:
            raise UsageError("--bitmap takes A or A,B")
        a = parse_address(parts[0], "I/O bitmap A")
        b = parse_address(parts[1], "I/O bitmap B") if len(parts) == 2 else a + PAGE
        if len(parts) == 1:
            notes.append("bitmap B assumed at A + 0x1000")
        page_a, page_b = _io_pages(target, a, b)
        doc = io_exits(page_a, page_b, True, False)
    else:
        vmcs = select_vmcs(ctx, args.at)
        pairs += _vmcs_source(vmcs)
        proc = vmcs.get("CPU_BASED_VM_EXEC_CONTROL")
        if proc is None:
            raise VtdbgError("the VMCS layout does not supply CPU_BASED_VM_EXEC_CONTROL")
        use = bool(proc & control_bit("USE_IO_BITMAPS"))
        unconditional = bool(proc & control_bit("UNCOND_IO_EXITING"))
        if use:
            a, b = vmcs.get("IO_BITMAP_A"), vmcs.get("IO_BITMAP_B")
            if a is None or b is None:
                raise VtdbgError("\"use I/O bitmaps\" is on but the layout lacks IO_BITMAP_A/B; give --bitmap")
            page_a, page_b = _io_pages(target, a, b)
            doc = io_exits(page_a, page_b, True, unconditional)
            if unconditional:
                notes.append("\"unconditional I/O exiting\" is also set; the bitmaps take precedence")
        else:
            doc = io_exits(None, None, False, unconditional)
        doc["vmcs"] = vmcs.address
    doc["bitmap_a"], doc["bitmap_b"] = a, b
    if doc["use_io_bitmaps"]:
        mode = "I/O bitmaps decide (%d port(s) exit)" % doc["ports"]
    elif doc["all_exit"]:
        mode = "no bitmaps, \"unconditional I/O exiting\" on: every port exits"
    else:
        mode = "no bitmaps, \"unconditional I/O exiting\" off: no port access exits"
    pairs += [["I/O bitmap A", hex_value(a)], ["I/O bitmap B", hex_value(b)], ["mode", mode]]
    blocks: List[Block] = [KeyValues(pairs)]
    if args.port is not None:
        port = parse_int(args.port, "port")
        if not 0 <= port <= 0xFFFF:
            raise UsageError("port 0x%x is not 16-bit" % port)
        exits = any(r["first"] <= port <= r["last"] for r in doc["exits"])
        doc["port"] = {"port": port, "exits": exits}
        blocks.append(Text("port 0x%x: %s" % (port, "exits" if exits else "does not exit")))
    if doc["use_io_bitmaps"]:
        blocks.append(Table(["first", "last", "count", "why"], _range_rows(doc["exits"], port=True),
                            title="exiting ports"))
    doc["notes"] = notes
    for note in notes:
        blocks.append(Text(note, style="note"))
    return Result(doc, blocks)
