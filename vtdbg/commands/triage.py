"""`vtdbg triage FILE`: the first report to read about a dump."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

from vtdbg.commands.registry import Context, arguments, command, load_all
from vtdbg.commands.result import Block, Cell, Heading, KeyValues, Link, Result, Table, Text, hex_value
from vtdbg.commands.scan import progress_for, scan_blocks
from vtdbg.core.scan import scan
from vtdbg.core.triage import triage
from vtdbg.target.base import Capability


def checker_status() -> Dict[str, Any]:
    """Whether the VM-entry checker (`vtdbg check`) is installed; it is optional here."""
    try:
        available = "check" in load_all()
    except Exception:  # an unfinished checker module must not break triage
        available = False
    if available:
        return {"available": True, "note": "run `vtdbg check --at PA` on a VMCS for the VM-entry checks"}
    return {"available": False, "note": "the VM-entry checker (`vtdbg check`) is not available in this installation"}


def _bugcheck_blocks(bug: Dict[str, Any]) -> List[Block]:
    params = ", ".join(hex_value(p) for p in bug["parameters"])
    pairs: List[List[Cell]] = [["bug check", "0x%X %s" % (bug["code"], bug["name"])], ["meaning", bug["meaning"]],
                               ["parameters", params]]
    conv = bug.get("convention")
    if conv:
        pairs.append(["convention", "%s: %s (code 0x%x)" % (conv["tool"], conv["meaning"], conv["code"])])
        pairs.append(["", conv["parameters"]])
    return [Heading("Crash"), KeyValues(pairs)]


def _vmcs_blocks(doc: Dict[str, Any]) -> List[Block]:
    title = "VMCS %s (CPU %d%s)" % (hex_value(doc["pa"]), doc["index"], ", nested guest" if doc.get("nested") else "")
    if "error" in doc:
        return [Heading(title), Text("cannot decode: %s" % doc["error"], style="warning")]
    exit_doc = doc["last_exit"]
    pairs: List[List[Cell]] = [["trust", doc["trust"]], ["launch state", doc.get("launch_state") or "-"]]
    if "reason" in exit_doc:
        reason = "%d %s%s" % (exit_doc["reason"], exit_doc.get("name") or "?",
                              " (VM-ENTRY FAILURE)" if exit_doc.get("entry_failure") else "")
        pairs.append(["last exit", Link(reason, "exit_reason", exit_doc["reason"])])
        pairs.append(["", exit_doc.get("description") or ""])
    if exit_doc.get("qualification") is not None:
        pairs.append(["qualification", "%s %s" % (hex_value(exit_doc["qualification"]),
                                                  exit_doc.get("qualification_text") or "")])
    for key, label in (("guest_rip", "guest RIP"), ("guest_physical_address", "guest-physical address"),
                       ("guest_linear_address", "guest linear address")):
        if exit_doc.get(key) is not None:
            pairs.append([label, hex_value(exit_doc[key])])
    if exit_doc.get("instruction_error"):
        pairs.append(["VM-instruction error", "%d: %s" % (exit_doc["instruction_error"],
                                                          exit_doc.get("instruction_error_text") or "")])
    blocks: List[Block] = [Heading(title), KeyValues(pairs)]
    failure = doc.get("entry_failure")
    if failure:
        blocks.append(Text("VM-entry checker: " + " ".join(failure.get("lines") or []), style="verdict"))
    for warning in doc.get("warnings", []):
        blocks.append(Text(warning, style="warning"))
    return blocks


def _triage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", metavar="FILE", help="dump or image (format sniffed); default: --target")


@command("triage", help="first look at a dump: bug check, VT-x regions, decoded VMCS and the last exit",
         examples=["vtdbg triage MEMORY.DMP", "vtdbg triage lab.img --json"],
         needs=Capability.PHYS_READ,
         description="One report to read first: the bug check (with the conventions of HyperPlatform, ksm and "
                     "HyperBone), the VMXON/VMCS regions and EPT found by a scan, every VMCS decoded with how far "
                     "it can be trusted, and its last VM exit explained.")
@arguments(_triage_args)
def triage_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Triage the FILE (or the target)."""
    ctx.use_file(args.file)
    target = ctx.target
    target.require(Capability.PHYS_READ, "`triage`")
    bar = progress_for()
    try:
        scanned = scan(target, progress=bar)
    finally:
        if bar is not None:
            bar.finish()
    report = triage(target, scanned, checker=checker_status())
    blocks: List[Block] = [KeyValues([["target", report["target"]], ["format", report["format"]]])]
    if report["bugcheck"]:
        blocks += _bugcheck_blocks(report["bugcheck"])
    else:
        blocks.append(Text("no bug check information (this format does not record one)", style="note"))
    blocks.append(Heading("VT-x state found"))
    blocks += scan_blocks(scanned, target.description)[1:]
    for doc in report["vmcs_decoded"]:
        blocks += _vmcs_blocks(doc)
    blocks.append(Heading("Next steps"))
    notes = [report["checker"]["note"], report["profile"]["note"]] + report.get("notes", [])
    if scanned.vmcs:
        notes.append("`vtdbg vmcs --cpu N` for every field, `vtdbg ept --cpu N --map` for the guest memory map")
    blocks.append(Table(["", ""], [["-", n] for n in notes]))
    warnings = list(getattr(target, "warnings", [])) + list(scanned.warnings)
    return Result(report, blocks, warnings=warnings)
