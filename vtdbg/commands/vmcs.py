"""`vtdbg vmcs` and `vtdbg vmxon`: decode VMCS and VMXON regions from a target."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

from vtdbg.arch.fields import VmcsField, all_fields, lookup_field, resolve_field
from vtdbg.commands import _live
from vtdbg.commands.percpu import CpuOutcome, cpu_selection, run_per_cpu, vmcs_regions
from vtdbg.commands.registry import COMMANDS, Context, arguments, command
from vtdbg.commands.result import Block, Heading, KeyValues, Link, Result, Table, Text, hex_value
from vtdbg.core.describe import describe, describe_access_rights
from vtdbg.core.vmcs import Vmcs, header_of, read_vmcs
from vtdbg.lib.errors import UsageError, VtdbgError
from vtdbg.lib.numbers import parse_address, parse_int
from vtdbg.target.base import Capability, read_exact

SEGMENTS = ("ES", "CS", "SS", "DS", "FS", "GS", "LDTR", "TR")
#: fields shown even when zero (the rest of a section only when non-zero, unless --all)
ALWAYS = {
    "PIN_BASED_VM_EXEC_CONTROL", "CPU_BASED_VM_EXEC_CONTROL", "VM_EXIT_CONTROLS", "VM_ENTRY_CONTROLS",
    "GUEST_CR0", "GUEST_CR3", "GUEST_CR4", "GUEST_RIP", "GUEST_RSP", "GUEST_RFLAGS", "GUEST_ACTIVITY_STATE",
    "GUEST_INTERRUPTIBILITY_INFO", "VMCS_LINK_POINTER", "HOST_CR0", "HOST_CR3", "HOST_CR4", "HOST_RIP",
    "HOST_RSP", "VM_EXIT_REASON", "EXIT_QUALIFICATION", "VM_INSTRUCTION_ERROR",
}
SECTIONS = (("control", "Control fields"), ("guest", "Guest state"), ("host", "Host state"),
            ("exit_info", "Exit information"))


def _segment_names() -> set:
    names = set()
    for seg in SEGMENTS:
        for part in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES"):
            names.add("GUEST_%s_%s" % (seg, part))
    for table in ("GDTR", "IDTR"):
        names.update(("GUEST_%s_BASE" % table, "GUEST_%s_LIMIT" % table))
    return names


def _hex_width(field: VmcsField) -> int:
    return {"16": 4, "32": 8}.get(field.width, 16)


def _value_cell(field: VmcsField, value: int) -> Any:
    text = hex_value(value, _hex_width(field))
    if field.name == "GUEST_RIP":
        return Link(text, "guest_rip", value)
    if field.name == "VM_EXIT_REASON":
        return Link(text, "exit_reason", value & 0xFFFF)
    return text


def _undefined_for_exit(name: str, values: Dict[int, int]) -> bool:
    """True when the recorded exit reason defines no layout for this information field, so
    its value is whatever an earlier exit left (SDM: such fields are not modified)."""
    from vtdbg.core.describe import instruction_info_layout, qualification_layout

    if lookup_field("VM_EXIT_REASON").encoding not in values:
        return False
    if name == "EXIT_QUALIFICATION":
        return qualification_layout(values) is None
    if name == "VMX_INSTRUCTION_INFO":
        return instruction_info_layout(values) is None
    return False


def _segment_table(vmcs: Vmcs) -> Optional[Table]:
    rows = []
    for seg in SEGMENTS:
        sel = vmcs.get("GUEST_%s_SELECTOR" % seg)
        base = vmcs.get("GUEST_%s_BASE" % seg)
        limit = vmcs.get("GUEST_%s_LIMIT" % seg)
        ar = vmcs.get("GUEST_%s_AR_BYTES" % seg)
        if sel is None and base is None and limit is None and ar is None:
            continue
        meaning = describe_access_rights(ar) if ar is not None else ""
        rows.append([seg, hex_value(sel, 4), hex_value(base, 16), hex_value(limit, 8), hex_value(ar, 5), meaning])
    for table in ("GDTR", "IDTR"):
        base = vmcs.get("GUEST_%s_BASE" % table)
        limit = vmcs.get("GUEST_%s_LIMIT" % table)
        if base is not None or limit is not None:
            rows.append([table, "", hex_value(base, 16), hex_value(limit, 8), "", ""])
    if not rows:
        return None
    return Table(["segment", "selector", "base", "limit", "access", "decoded"], rows, title="Guest segments")


def vmcs_blocks(vmcs: Vmcs, show_all: bool = False, failure: Optional[Dict[str, Any]] = None) -> List[Block]:
    """The text view of a VMCS, grouped like KVM's dump_vmcs; ``failure`` is the VM-entry
    checker's explanation of a recorded failure (vtdbg.core.check.explain_failure)."""
    blocks: List[Block] = []
    where = hex_value(vmcs.address) if vmcs.address is not None else "-"
    conf = "" if vmcs.layout_confidence is None else " (confidence %.2f)" % vmcs.layout_confidence
    blocks.append(KeyValues([
        ["VMCS", Link(where, "phys", vmcs.address) if vmcs.address is not None else where],
        ["source", vmcs.trust or vmcs.source],
        ["layout", "%s%s" % (vmcs.layout or "-", conf)],
        ["revision id", "0x%x%s" % (vmcs.revision_id, " (shadow VMCS)" if vmcs.shadow else "")],
        ["VMX-abort", "-" if vmcs.abort is None else str(vmcs.abort)],
        ["launch state", vmcs.launch_state or "-"],
    ]))
    error = vmcs.get("VM_INSTRUCTION_ERROR")
    reason = vmcs.get("VM_EXIT_REASON")
    failed = bool(error) or (reason is not None and reason >> 31)
    if failed:
        hint = " Run `vtdbg check` for the rule that failed." if "check" in COMMANDS else ""
        what = []
        if error:
            what.append("VM-instruction error %d (%s)" % (error, describe(lookup_field("VM_INSTRUCTION_ERROR"), error)))
        if reason is not None and reason >> 31:
            what.append("VM-entry failure, exit reason %s" % describe(lookup_field("VM_EXIT_REASON"), reason))
        blocks.append(Text("Attention: " + "; ".join(what) + "." + hint, style="warning"))
        if failure and failure.get("lines"):
            blocks.append(Text("VM-entry checker: " + " ".join(failure["lines"]), style="verdict"))
    segment_fields = _segment_names()
    by_type: Dict[str, List[VmcsField]] = {}
    for field in all_fields():
        by_type.setdefault(field.type, []).append(field)
    for kind, title in SECTIONS:
        rows = []
        for field in by_type.get(kind, []):
            value = vmcs.values.get(field.encoding)
            uncertain = False
            if value is None and field.encoding in vmcs.uncertain:
                value, uncertain = vmcs.uncertain[field.encoding], True
            if value is None or (kind == "guest" and field.name in segment_fields):
                continue
            if not show_all and value == 0 and field.name not in ALWAYS:
                continue
            name = field.name + (" (?)" if uncertain else "")
            meaning = describe(field, value, vmcs.values)
            if value and not meaning and _undefined_for_exit(field.name, vmcs.values):
                meaning = "not defined for this exit (left over from an earlier one)"
            rows.append([name, _value_cell(field, value), meaning])
        blocks.append(Heading(title))
        if kind == "guest":
            table = _segment_table(vmcs)
            if table is not None:
                blocks.append(table)
        blocks.append(Table(["field", "value", "decoded"], rows))
    if vmcs.uncertain:
        blocks.append(Text("(?) = offset not certain for this layout (single or inferred measurement)", style="note"))
    if not show_all:
        blocks.append(Text("zero-valued fields hidden; --all shows every field, --json lists them all", style="note"))
    return blocks


def _vmcs_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--at", metavar="PA", help="physical address of the VMCS region (default: find it)")
    parser.add_argument("--layout", default="auto", metavar="NAME|auto",
                        help="in-memory layout; auto scores the candidates for the revision id")
    parser.add_argument("--all", action="store_true", help="show zero-valued fields too (text only)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--live", action="store_true",
                        help="read the current VMCS with VMREAD executed on the target (VMX root, CPL 0); "
                             "the default on a live target when --scratch or --gadget-range is given")
    source.add_argument("--memory", action="store_true", help="decode the region in memory even on a live target")
    parser.add_argument("--method", choices=("auto", "enum", "list", "gadget"), default="auto",
                        help="live read: enum (compact stub enumerating encodings; Bochs default), list (a stub "
                             "with the table's fields), gadget (single-step an existing VMREAD reg, reg; no writes)")
    parser.add_argument("--gadget-range", metavar="VA:LEN",
                        help="where to look for an existing VMREAD reg, reg (the hypervisor's code)")
    parser.add_argument("--set", nargs=2, metavar=("FIELD", "VALUE"),
                        help="VMWRITE VALUE into FIELD of the current VMCS (live targets; needs --yes)")
    parser.add_argument("--yes", action="store_true", help="confirm --set: it changes the hypervisor's VMCS")
    parser.add_argument("--save-snapshot", metavar="FILE",
                        help="also write the VMCS (and the memory the VM-entry checker reads) as a snapshot file")
    _live.add_live_arguments(parser)


@command("vmcs", help="decode a VMCS region: controls, guest/host state, last exit",
         examples=["vtdbg vmcs --image lab.img --at 0x21000", "vtdbg vmcs --image lab.img --cpu all --json",
                   "vtdbg vmcs --image dump.raw --at 0x21000 --layout bochs_2_8_3_0 --all",
                   "vtdbg --target bochs:lab.bxrc vmcs --live --scratch 0x1F0000 --after-exits 3 --json",
                   "vtdbg vmcs --live --scratch 0x7f000 --set GUEST_RIP 0x401000 --yes"],
         needs=Capability.PHYS_READ,
         description="Decode a VMCS region from physical memory with one bulk read. The output says which "
                     "layout was used, how sure the choice is, and how far memory can be trusted. With --live, "
                     "read the current VMCS with VMREAD executed on the target instead (authoritative; every "
                     "byte and register it uses is restored).")
@arguments(_vmcs_args)
def vmcs_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Decode one VMCS (``--at``) or the VMCS of the selected CPU(s); ``--live`` reads the
    current VMCS with VMREAD on the target, ``--set`` writes a field with VMWRITE."""
    if args.set is not None:
        return _set_cmd(ctx, args)
    if _live_wanted(ctx, args):
        return _live_cmd(ctx, args)
    if ctx.target.kind == "bochs":
        _live.prepare(ctx, args)
    elif args.after_exits is not None:
        raise UsageError("--after-exits applies to bochs: targets")
    if args.at is not None:
        if ctx.cpu is not None:
            raise UsageError("--at names one region; drop --cpu")
        doc, blocks, warnings = _memory_one(ctx, args, parse_address(args.at))
        return Result(doc, blocks, warnings=warnings)
    regions = vmcs_regions(ctx)
    cpus = cpu_selection(ctx, len(regions))
    if args.save_snapshot and len(cpus) > 1:
        raise UsageError("--save-snapshot writes one VMCS; pick it with --cpu N or --at PA")
    return run_per_cpu(ctx, cpus, lambda cpu: _memory_one(ctx, args, regions[cpu]))


def _memory_one(ctx: Context, args: argparse.Namespace, pa: int) -> CpuOutcome:
    """Decode the region at ``pa``; explain a recorded VM-entry failure; save a snapshot."""
    from vtdbg.core.check import TargetMemory, explain_failure

    vmcs = read_vmcs(ctx.target, pa, args.layout)
    doc = vmcs.to_json()
    failure = explain_failure(vmcs, memory=TargetMemory(ctx.target))
    doc["entry_failure"] = failure
    blocks = vmcs_blocks(vmcs, args.all, failure)
    if args.save_snapshot:
        from vtdbg.core.check.snapshot import save_snapshot

        save_snapshot(vmcs, args.save_snapshot, memory=TargetMemory(ctx.target))
        blocks.append(Text("snapshot written to %s (for `vtdbg check --snapshot`)" % args.save_snapshot))
    return doc, blocks, list(vmcs.warnings)


# -- live reads and writes ------------------------------------------------------------------------
def _live_wanted(ctx: Context, args: argparse.Namespace) -> bool:
    """--live, or a live target and the means to run code given (--scratch / --gadget-range)."""
    if args.memory:
        return False
    if args.live:
        if args.at is not None:
            raise UsageError("--live reads the CPU's current VMCS; --at names a region in memory (drop one)")
        return True
    if args.at is not None or (args.scratch is None and args.gadget_range is None):
        return False
    return ctx.target.has(Capability.LIVE)


def _live_one(ctx: Context, args: argparse.Namespace, cpu: Optional[int]) -> Dict[str, Any]:
    from vtdbg.core import live

    target = ctx.target
    if args.method == "gadget" or (args.gadget_range is not None and args.scratch is None):
        if args.gadget_range is None:
            raise UsageError("--method gadget needs --gadget-range VA:LEN (the hypervisor's code)")
        start, _, length = args.gadget_range.partition(":")
        gadgets = live.find_image_gadgets(target, parse_address(start), parse_int(length or "0", "LEN"))
        read = live.gadget_read(target, gadgets, args.assume_root, cpu=cpu)
    else:
        scratch = _live.resolve_scratch(ctx, args)
        read = live.live_read(target, scratch, args.assume_root, method=args.method, cpu=cpu)
    doc = read.to_json()
    doc["cpu"] = cpu if cpu is not None else target.current_cpu()
    doc["_vmcs"] = read.vmcs
    return doc


def _live_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """``vmcs --live``: one stub run per CPU; JSON as `vmcs` plus "source": "live" and "status"."""
    report = _live.prepare(ctx, args)
    target = ctx.target
    if ctx.cpu is not None and ctx.cpu.lower() == "all":
        cpus: List[Optional[int]] = list(range(target.cpu_count()))
    elif ctx.cpu is not None:
        cpus = [parse_int(ctx.cpu, "CPU number")]
    else:
        cpus = [None]
    docs: List[Dict[str, Any]] = []
    blocks: List[Block] = []
    warnings: List[str] = []
    for cpu in cpus:
        try:
            if cpu is None:
                doc = _live_one(ctx, args, None)
            else:
                with target.select_cpu(cpu):
                    doc = _live_one(ctx, args, cpu)
        except VtdbgError as exc:
            if len(cpus) == 1:
                raise
            docs.append({"cpu": cpu, "error": str(exc)})
            blocks += [Heading("CPU %s" % cpu), Text("error: %s" % exc, style="warning")]
            continue
        vmcs = doc.pop("_vmcs")
        if report is not None:
            doc["run"] = report.to_json()
        docs.append(doc)
        warnings += vmcs.warnings
        blocks += [Heading("CPU %s" % doc["cpu"])] + vmcs_blocks(vmcs, args.all) + _status_blocks(vmcs, doc)
    if len(cpus) == 1:
        return Result(docs[0], blocks, warnings=warnings)
    return Result(docs, blocks, warnings=warnings, exit_code=2 if all("error" in d for d in docs) else 0)


def _status_blocks(vmcs: Vmcs, doc: Dict[str, Any]) -> List[Block]:
    """How the live read went: fields read, fields the CPU rejected, transactions."""
    failed = sorted(name for name, status in doc.get("status", {}).items() if status != "ok")
    live_info = doc.get("live") or {}
    line = "live VMREAD: %d fields read%s" % (len(vmcs.values), ", %d transactions" % live_info["transactions"]
                                                if live_info.get("transactions") is not None else "")
    blocks: List[Block] = [Text(line, style="note")]
    if failed:
        blocks.append(Text("not supported by this CPU (VMREAD failed): " + ", ".join(failed), style="note"))
    return blocks


def _set_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """``vmcs --set FIELD VALUE --yes``: one VMWRITE through a stub, with the value before and after."""
    from vtdbg.core import live

    field, high = resolve_field(args.set[0])
    if high:
        raise UsageError("write the FULL 64-bit field %s, not its HIGH half" % field.name)
    value = parse_int(args.set[1], "VALUE")
    if value < 0 or value >> (8 * field.size):
        raise UsageError("%s is a %d-bit field; 0x%x does not fit" % (field.name, field.bits, value))
    if not args.yes:
        raise UsageError("--set changes the hypervisor's VMCS (VMWRITE %s = 0x%x); add --yes to do it"
                         % (field.name, value))
    if ctx.cpu is not None and ctx.cpu.lower() == "all":
        raise UsageError("--set writes one CPU's VMCS; give --cpu N")
    _live.prepare(ctx, args)
    target = ctx.target
    cpu = parse_int(ctx.cpu, "CPU number") if ctx.cpu is not None else None
    with live.on_cpu(target, cpu):
        scratch = _live.resolve_scratch(ctx, args)
        written = live.live_write(target, scratch, field.encoding, value, args.assume_root, cpu=cpu)
    doc = written.to_json()
    doc["cpu"] = cpu if cpu is not None else target.current_cpu()
    width = _hex_width(field)
    result = Result(doc, warnings=list(written.warnings),
                    exit_code=0 if written.status == "ok" else 2)
    result.add(KeyValues([["field", field.name], ["before", hex_value(written.before, width)],
                          ["VMWRITE", written.status], ["after", hex_value(written.after, width)],
                          ["source", "live VMREAD/VMWRITE on CPU %s" % doc["cpu"]]]))
    return result


def _vmxon_args(parser: argparse.ArgumentParser) -> None:
    from vtdbg.commands.check import _vmxon_args as readiness_args

    parser.add_argument("--check", action="store_true",
                        help="check that VMXON can succeed (CPUID, IA32_FEATURE_CONTROL, CR0/CR4 fixed bits, "
                             "region alignment and revision id, address width): same as `vtdbg vmxon-check`")
    readiness_args(parser)  # --at, --caps, --cr0, --cr4, --cpl, --region-header, --maxphyaddr


@command("vmxon", help="decode a VMXON region, or with --check say whether VMXON can succeed",
         examples=["vtdbg vmxon --image lab.img --at 0x20000", "vtdbg vmxon --image lab.img --at 0x20000 --json",
                   "vtdbg vmxon --check --caps caps.json --cr0 0x80050033 --cr4 0x2620 --at 0x20000"])
@arguments(_vmxon_args)
def vmxon_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """The VMXON region's header; the rest of its format is implementation-specific."""
    if args.check:
        from vtdbg.commands.check import vmxon_check

        return vmxon_check(ctx, args.caps, args.cr0, args.cr4, args.cpl, args.at, args.region_header,
                           args.maxphyaddr)
    if args.at is None:
        raise UsageError("give --at PA (the VMXON region), or --check for the VMXON readiness checks")
    ctx.target.require(Capability.PHYS_READ, "`vmxon`")
    pa = parse_address(args.at)
    if pa & 0xFFF:
        raise UsageError("0x%x is not 4 KiB aligned; VMXON regions are page aligned (SDM 24.11.5)" % pa)
    page = read_exact(ctx.target, pa, 0x1000)
    header = header_of(page)
    nonzero = sum(1 for b in page[4:] if b)
    doc = {"pa": pa, "revision_id": header["revision_id"], "shadow_bit": bool(header["shadow"]),
           "nonzero_bytes_after_revision": nonzero}
    result = Result(doc)
    bit31 = "set: VMXON fails with VMfailInvalid (must be 0)" if header["shadow"] else "clear (as required)"
    pairs: List[List[Any]] = [
        ["VMXON", Link(hex_value(pa), "phys", pa)],
        ["revision id", "0x%x" % header["revision_id"]],
        ["bit 31", bit31],
        ["other bytes", "%d non-zero (the rest of the region is implementation-specific)" % nonzero]]
    result.add(KeyValues(pairs))
    if header["shadow"]:
        result.warnings.append("bit 31 of the VMXON region's first dword must be 0")
    return result
