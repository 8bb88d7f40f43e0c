"""`vtdbg regions` (per-CPU VMXON/VMCS/VMM stack/MSR bitmap/EPTP and the root-mode verdict)
and `vtdbg profiles` (the target profiles vtdbg knows, and which one fits a target)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import Block, Cell, Heading, KeyValues, Link, Result, Table, Text, hex_value
from vtdbg.core.regions import CpuRegions, detect_profile, find_regions
from vtdbg.lib.errors import UsageError
from vtdbg.lib.numbers import parse_int
from vtdbg.profiles import ProfileError, all_profiles, get_profile


def _cpu_arg(ctx: Context, target_cpu: int) -> Optional[int]:
    """--cpu N -> N, --cpu all -> None (every CPU); default: the debugger's current CPU."""
    if ctx.cpu is None:
        return target_cpu
    if ctx.cpu.lower() == "all":
        return None
    return parse_int(ctx.cpu, "CPU number")


def _verdict(value: Optional[bool]) -> str:
    return {True: "root", False: "non-root", None: "unknown"}[value]


def _regions_blocks(found: List[CpuRegions]) -> List[Block]:
    blocks: List[Block] = []
    for item in found:
        title = "CPU %d" % item.cpu + (" (profile %s)" % item.profile if item.profile else " (physical scan)")
        blocks.append(Heading(title))
        if item.error is not None:
            blocks.append(Text("error: %s" % item.error, style="warning"))
            continue
        stack = "-"
        if item.vmm_stack is not None:
            stack = hex_value(item.vmm_stack)
            if item.vmm_stack_size:
                stack += " .. %s" % hex_value(item.vmm_stack + item.vmm_stack_size)
        pairs: List[List[Any]] = [
            ["VMXON", Link(hex_value(item.vmxon_pa), "phys", item.vmxon_pa) if item.vmxon_pa is not None else "-"],
            ["VMCS", Link(hex_value(item.vmcs_pa), "phys", item.vmcs_pa) if item.vmcs_pa is not None else "-"],
            ["VMM stack", stack],
            ["MSR bitmap", hex_value(item.msr_bitmap_pa)],
            ["EPTP", hex_value(item.eptp)],
            ["VMX root mode", _verdict(item.root_mode)],
        ]
        if item.per_cpu_address is not None:
            pairs.append(["per-CPU data", hex_value(item.per_cpu_address)])
        blocks.append(KeyValues(pairs))
        says = {True: "root", False: "non-root", None: "-"}
        rows: List[List[Cell]] = [[e.source, says[e.says], e.detail] for e in item.root_mode_evidence]
        if rows:
            blocks.append(Table(["clue", "says", "detail"], rows, title="Root-mode evidence"))
        if item.sources:
            source_rows: List[List[Cell]] = [[k, v] for k, v in sorted(item.sources.items())]
            blocks.append(Table(["value", "from"], source_rows, title="Sources"))
        for warning in item.warnings:
            blocks.append(Text("note: %s" % warning, style="note"))
    return blocks


def _regions_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", metavar="NAME", help="use this target profile instead of detecting one "
                                                         "(see `vtdbg profiles`)")


@command("regions", help="per-CPU VMXON, VMCS, VMM stack, MSR bitmap, EPTP and VMX root-mode verdict",
         examples=["vtdbg regions --target kd:net:port=50000,key=1.2.3.4 --cpu all",
                   "vtdbg regions --profile hfs_part8 --cpu 0 --json", "vtdbg regions --image lab.img"],
         description="Find the hypervisor's per-CPU VMX regions through a target profile (module, symbols and "
                     "structure offsets of a known hypervisor) and say, with the evidence, whether each CPU is in VMX "
                     "root mode. Without symbols the VMCS pages are found by a physical scan. The JSON is always a "
                     "list of per-CPU objects.")
@arguments(_regions_args)
def regions_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """The regions of the selected CPU(s)."""
    target = ctx.target
    warnings: List[str] = []
    found = find_regions(target, _cpu_arg(ctx, target.current_cpu()), args.profile, warnings)
    data: List[Dict[str, Any]] = [item.to_json() for item in found]
    all_failed = bool(found) and all(item.error is not None for item in found)
    return Result(data, _regions_blocks(found), warnings=warnings, exit_code=2 if all_failed else 0)


# -- profiles -----------------------------------------------------------------------------------
def _profiles_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show one profile in full")
    parser.add_argument("--detect", action="store_true", help="say which profile fits the target (needs --target)")


@command("profiles", help="list the target profiles (known hypervisors) or show one; --detect tries them on a target",
         examples=["vtdbg profiles", "vtdbg profiles hfs_part8 --json",
                   "vtdbg profiles --detect --target kd:net:port=50000,key=1.2.3.4"],
         description="Target profiles describe where known hypervisors keep their per-CPU VMX state. Built-in "
                     "profiles cite their sources and are unverified until checked on a live target; add your own as "
                     "JSON in $VTDBG_HOME/profiles (docs/profiles.md).")
@arguments(_profiles_args)
def profiles_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """The profile list, one profile, or the detection result."""
    if args.name:
        try:
            profile = get_profile(args.name)
        except ProfileError as exc:
            raise UsageError(str(exc)) from None
        doc = profile.to_json()
        pairs = [["name", profile.name], ["title", profile.title], ["verified", str(profile.verified).lower()],
                 ["modules", ", ".join(profile.modules) or "-"], ["per-CPU", profile.per_cpu.how or "-"],
                 ["exit handler", " -> ".join(profile.exit_entry + profile.exit_handler) or "-"],
                 ["VMM stack size", hex_value(profile.vmm_stack_size)]]
        blocks: List[Block] = [KeyValues(pairs)]
        rows: List[List[Cell]] = [[role, "/".join(spec.names), hex_value(spec.offset), spec.size, spec.kind]
                                  for role, spec in profile.per_cpu.fields.items()]
        if rows:
            blocks.append(Table(["role", "field", "offset", "size", "kind"], rows, title="Per-CPU fields"))
        if profile.bugchecks:
            brow: List[List[Cell]] = [
                ["0x%x" % b.code, b.name, "%s = 0x%x: %s" % ("param %d" % b.subcode_parameter if b.subcode_parameter
                                                              else "code", k, v["name"])]
                for b in profile.bugchecks for k, v in sorted(b.subcodes.items())]
            blocks.append(Table(["bug check", "name", "meaning"], brow, title="Bug checks"))
        blocks.append(Text("\n".join(["sources:"] + ["  " + s for s in profile.sources]), style="note"))
        for note in profile.notes:
            blocks.append(Text("note: " + note, style="note"))
        return Result(doc, blocks)
    profiles, warnings = all_profiles()
    detected: Dict[str, int] = {}
    chosen = None
    if args.detect:
        detection = detect_profile(ctx.target, profiles)
        warnings = warnings + detection.warnings
        detected = dict(detection.candidates)
        chosen = detection.profile.name if detection.profile else None
    data: Any = [{"name": p.name, "title": p.title, "verified": p.verified, "builtin": p.builtin,
                  "modules": p.modules, **({"score": detected.get(p.name)} if args.detect else {})} for p in profiles]
    if args.detect:
        data = {"detected": chosen, "profiles": data}
    rows = [[p.name + (" *" if p.name == chosen else ""), p.title, "yes" if p.verified else "no",
             "built-in" if p.builtin else "user", ", ".join(p.modules)] for p in profiles]
    blocks = [Table(["name", "title", "verified", "origin", "modules"], rows)]
    if args.detect:
        blocks.append(Text("detected: %s" % (chosen or "none"), style="verdict"))
    return Result(data, blocks, warnings=warnings)
