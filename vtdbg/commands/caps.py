"""`vtdbg caps`: the VMX capability MSRs of the target's processors, decoded, and saved as
a caps file for offline use (``vtdbg check --caps FILE`` on a dump or image).

Which MSRs exist follows the SDM (Appendix A): IA32_FEATURE_CONTROL and 0x480-0x48A
always; 0x48B if primary controls allow "activate secondary controls" (0x482 bit 63);
0x48C if secondary controls allow EPT or VPID (0x48B bits 33/37); 0x48D-0x490 if
IA32_VMX_BASIC[55]; 0x491 if secondary controls allow VM functions (0x48B bit 45); 0x492
if primary controls allow "activate tertiary controls" (0x482 bit 49); 0x493 if exit
controls allow "activate secondary exit controls" (0x483 bit 63).  Reading an MSR that does
not exist would #GP on the target, so the others are never read.  The reading itself is
:meth:`vtdbg.core.check.caps.Caps.from_target`, which `vtdbg check` uses too.

Caps file (``--save FILE``): a JSON list with one flat object per CPU,
``{"cpu": n, "0x3a": int, "0x480": int, ...}`` plus ``"maxphyaddr"`` when the target can
tell (no backend can yet: the Target protocol has no CPUID).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Tuple

from vtdbg.arch.msrs import decode_msr
from vtdbg.commands.percpu import cpu_selection
from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import Block, Heading, KeyValues, Link, Result, Table, Text, hex_value
from vtdbg.core.check.caps import Caps
from vtdbg.lib.errors import VtdbgError
from vtdbg.target.base import Capability, Target

BASIC = 0x480
#: every MSR `caps` may read, in the order it is shown
ALL_INDICES = (0x3A,) + tuple(range(0x480, 0x494))


def _summary(decoded: Dict[str, Any]) -> str:
    """One line saying what an MSR value allows."""
    kind = decoded.get("kind")
    if kind == "controls":
        must = [n for n in decoded.get("must_be_one", []) if not n.startswith("RESERVED")]
        flexible = [n for n in decoded.get("flexible", []) if not n.startswith("RESERVED")]
        parts = []
        if must:
            parts.append("must be 1: " + " ".join(must))
        parts.append("may be 0 or 1: " + (" ".join(flexible) or "-"))
        return "; ".join(parts)
    if kind in ("controls64", "allowed1"):
        return "may be 1: " + (" ".join(decoded.get("may_be_one", [])) or "-")
    if kind == "fixed":
        bits = " ".join(decoded.get("bits", [])) or "-"
        return ("must be 1: " if decoded.get("fixed") == "0" else "may be 1: ") + bits
    words = []
    for field in decoded.get("fields", []):
        value = field.get("value")
        if not value:
            continue
        if field.get("width") == 1:
            words.append(str(field["name"]))
        else:
            shown = field.get("meaning") or (str(value) if value < 10 else "0x%x" % value)
            words.append("%s=%s" % (field["name"], shown))
    return " ".join(words) or "-"


def _cpus(ctx: Context, target: Target) -> List[int]:
    return cpu_selection(ctx, target.cpu_count(), default=target.current_cpu())


def read_caps(target: Target, cpu: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(caps-file object, JSON result object) for ``cpu``; raises VtdbgError when the CPU
    does not report VMX at all."""
    with target.select_cpu(cpu):
        caps = Caps.from_target(target)
    if BASIC not in caps.msrs:
        raise VtdbgError("IA32_VMX_BASIC (0x480) cannot be read on CPU %d: the processor does not report VMX "
                         "(or a hypervisor hides it)" % cpu)
    flat: Dict[str, Any] = {"cpu": cpu}
    flat.update(caps.to_json())
    decoded = {"0x%x" % i: decode_msr(i, v) for i, v in sorted(caps.msrs.items())}
    absent = ["0x%x" % i for i in ALL_INDICES if i not in caps.msrs]
    doc: Dict[str, Any] = {"cpu": cpu, "msrs": decoded, "not_reported": absent, "caps": flat}
    return flat, doc


def _blocks(doc: Dict[str, Any]) -> List[Block]:
    rows = []
    for key, item in doc["msrs"].items():
        rows.append([key, item["name"], hex_value(item["value"], 16), _summary(item)])
    blocks: List[Block] = [Heading("CPU %d" % doc["cpu"]),
                           KeyValues([["CPU", Link(str(doc["cpu"]), "cpu", doc["cpu"])],
                                      ["not reported", " ".join(doc["not_reported"]) or "-"]]),
                           Table(["MSR", "name", "value", "decoded"], rows)]
    return blocks


def _caps_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save", metavar="FILE", help="write the caps file (JSON list, one object per CPU)")


@command("caps", help="read and decode the VMX capability MSRs (IA32_VMX_*), optionally save a caps file",
         examples=["vtdbg caps --target kd:net:port=50000,key=1.2.3.4", "vtdbg caps --cpu all --save caps.json",
                   "!py vtdbg caps --json"],
         needs=Capability.MSR_READ,
         description="Read IA32_FEATURE_CONTROL and the IA32_VMX_* capability MSRs the processor reports "
                     "(SDM Appendix A) on each selected CPU and decode them. Needs a live target: a dump "
                     "holds no MSRs.")
@arguments(_caps_args)
def caps_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Decode the capability MSRs of the selected CPU(s); ``--save`` writes a caps file."""
    target = ctx.target
    cpus = _cpus(ctx, target)
    several = ctx.cpu is not None and ctx.cpu.lower() == "all"
    docs: List[Dict[str, Any]] = []
    flats: List[Dict[str, Any]] = []
    blocks: List[Block] = []
    for cpu in cpus:
        try:
            flat, doc = read_caps(target, cpu)
        except VtdbgError as exc:
            if not several:
                raise
            docs.append({"cpu": cpu, "error": str(exc)})
            blocks += [Heading("CPU %d" % cpu), Text("error: %s" % exc, style="warning")]
            continue
        docs.append(doc)
        flats.append(flat)
        blocks += _blocks(doc)
    if args.save and flats:
        try:
            with open(args.save, "w", encoding="utf-8") as handle:
                json.dump(flats, handle, indent=1)
                handle.write("\n")
        except OSError as exc:
            raise VtdbgError("cannot write %s: %s" % (args.save, exc.strerror or exc)) from None
        blocks.append(Text("saved %d CPU(s) to %s" % (len(flats), args.save), style="note"))
    all_failed = not flats
    data: Any = docs if several else docs[0]
    return Result(data, blocks, exit_code=2 if several and all_failed else 0)
