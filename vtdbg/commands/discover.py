"""`vtdbg discover-layout`: measure this CPU's in-memory VMCS layout with VMWRITE markers."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List

from vtdbg.commands import _live
from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import KeyValues, Result, Table, Text
from vtdbg.core import discover, live
from vtdbg.layouts.registry import ALIASES, builtin_layouts, get_layout, vtdbg_home
from vtdbg.lib.errors import UsageError, VtdbgError
from vtdbg.lib.numbers import parse_int
from vtdbg.target.base import Capability


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save", action="store_true",
                        help="write the layout to $VTDBG_HOME/layouts/NAME.json (later decodes of this revision "
                             "try it among the candidates)")
    parser.add_argument("--name", metavar="NAME", help="layout name (default discovered_rev<id>_cpu<signature>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a saved layout of the same name")
    parser.add_argument("--known-only", action="store_true",
                        help="write markers only into the fields vtdbg's table knows (default: every encoding "
                             "up to the highest known index, so unknown fields are found too)")
    parser.add_argument("--compare", metavar="LAYOUT",
                        help="compare the result with a known layout, for the fields this CPU accepted")
    _live.add_live_arguments(parser)


@command("discover-layout",
         help="measure the CPU's VMCS memory layout (VMWRITE markers into a scratch VMCS, VMCLEAR, scan)",
         examples=["vtdbg --target bochs:lab.bxrc discover-layout --scratch 0x1F0000 --json",
                   "vtdbg discover-layout --scratch 0x7f000 --assume-root --save"],
         needs=Capability.PHYS_READ | Capability.WRITE | Capability.LIVE,
         description="Runs one stub on the target, in VMX root: VMPTRST the current VMCS, VMCLEAR and VMPTRLD a "
                     "scratch VMCS (never the original, which stays current and launched), VMWRITE a distinct "
                     "marker into every field, VMCLEAR it, VMPTRLD the original back; then finds each marker in "
                     "the scratch page (plain, rotated or packed) and prints a vtdbg-layout/1 file. Every byte "
                     "and register used is restored.")
@arguments(_args)
def discover_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Discover, report, optionally save."""
    if args.name is not None and not args.name.replace("_", "").replace("-", "").isalnum():
        raise UsageError("--name must be letters, digits, '_' or '-'")
    if ctx.cpu is not None and ctx.cpu.lower() == "all":
        raise UsageError("discovery measures one CPU's layout; give --cpu N")
    _live.prepare(ctx, args)
    target = ctx.target
    cpu = parse_int(ctx.cpu, "CPU number") if ctx.cpu is not None else None
    with live.on_cpu(target, cpu):
        scratch = _live.resolve_scratch(ctx, args)
        found = discover.discover_layout(target, scratch, args.assume_root, all_encodings=not args.known_only,
                                         cpu=cpu)
    doc = found.layout_doc(args.name)
    data: Dict[str, Any] = {
        "layout": doc, "saved": None, "revision_id": found.revision_id, "cpu_signature": found.cpu_signature,
        "written": len(found.written), "found": len(found.hits), "not_found": doc["provenance"]["not_found"],
        "ambiguous": doc["provenance"]["ambiguous"], "rejected": len(found.rejected),
        "skipped_read_only": doc["provenance"]["skipped_read_only"], "original_vmcs": found.original_pointer,
        "scratch_vmcs": found.scratch_pa, "transactions": found.transactions,
        "scratch_page": discover.page_summary(found.page), "warnings": list(found.warnings),
    }
    result = Result(data, warnings=list(found.warnings))
    pairs: List[List[Any]] = [
        ["layout", doc["name"]], ["revision id", "0x%x" % found.revision_id],
        ["CPU signature", "0x%x" % found.cpu_signature if found.cpu_signature is not None else "unknown"],
        ["fields", "%d written, %d found in memory, %d rejected by VMWRITE (unsupported)"
         % (len(found.written), len(found.hits), len(found.rejected))],
        ["original VMCS", "0x%x (current again)" % found.original_pointer if found.original_pointer is not None
         else "none was current"],
        ["scratch VMCS", "0x%x (restored)" % found.scratch_pa],
    ]
    if found.transactions is not None:
        pairs.append(["transactions", str(found.transactions)])
    result.add(KeyValues(pairs))
    if found.not_found:
        result.add(Text("accepted by VMWRITE but not found in memory: " + ", ".join(doc["provenance"]["not_found"]),
                        style="warning"))
    if found.ambiguous:
        result.add(Text("found in several places: " + ", ".join(doc["provenance"]["ambiguous"]), style="warning"))
    if args.compare:
        reference = get_layout(args.compare)
        same, differ = discover.compare_layout(found.hits, reference, set(found.written))
        data["comparison"] = {"layout": reference.name, "same": len(same),
                              "differ": [{"encoding": e, "detail": d} for e, d in differ]}
        result.add(Text("compared with %s: %d fields agree, %d differ" % (reference.name, len(same), len(differ)),
                        style="verdict"))
        if differ:
            result.add(Table(["encoding", "difference"], [["0x%04x" % e, d] for e, d in differ]))
    rows = [[f["name"], f["encoding"], "0x%03x" % f["offset"], str(f["size"]), f["transform"] or ""]
            for f in sorted(doc["fields"], key=lambda f: f["offset"])]
    result.add(Table(["field", "encoding", "offset", "size", "stored as"], rows, title="discovered layout"))
    if args.save:
        data["saved"] = _save(doc, args.overwrite)
        result.add(Text("saved to %s" % data["saved"], style="note"))
    else:
        result.add(Text("not saved (add --save to keep it in $VTDBG_HOME/layouts)", style="note"))
    return result


def _save(doc: Dict[str, Any], overwrite: bool) -> str:
    """Write the layout file; refuses to shadow a built-in name or to replace a file silently."""
    name = doc["name"]
    if name in builtin_layouts() or name in ALIASES:
        raise UsageError("%s is a built-in layout name; choose another with --name" % name)
    folder = os.path.join(vtdbg_home(), "layouts")
    path = os.path.join(folder, name + ".json")
    if os.path.exists(path) and not overwrite:
        raise UsageError("%s exists; add --overwrite to replace it" % path)
    try:
        os.makedirs(folder, exist_ok=True)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=1)
            handle.write("\n")
        os.replace(temporary, path)
    except OSError as exc:
        raise VtdbgError("cannot write %s: %s" % (path, exc.strerror)) from None
    return path
