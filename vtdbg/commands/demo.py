"""`vtdbg demo`: decode the embedded sample, a physical memory image of the project's Bochs
lab hypervisor (a real, if emulated, VT-x implementation), so a new user sees a real VMCS
decoded in seconds and learns the commands to try next."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List

from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import Block, Heading, KeyValues, Result, Text
from vtdbg.commands.vmcs import vmcs_blocks
from vtdbg.core.vmcs import read_vmcs
from vtdbg.lib.errors import VtdbgError
from vtdbg.target.image import ImageTarget

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")


def sample_manifests() -> List[Dict[str, Any]]:
    """The manifests of the shipped samples (``vtdbg/samples/*.json``)."""
    found = []
    if os.path.isdir(SAMPLES):
        for name in sorted(os.listdir(SAMPLES)):
            if name.endswith(".json"):
                with open(os.path.join(SAMPLES, name), encoding="utf-8") as handle:
                    manifest = json.load(handle)
                manifest["image_path"] = os.path.join(SAMPLES, manifest["image"])
                found.append(manifest)
    return found


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="show zero-valued fields too")
    parser.add_argument("--path", action="store_true", help="only print the sample image's path")


@command("demo", help="decode the embedded sample (a Bochs VT-x lab memory image)",
         examples=["vtdbg demo", "vtdbg demo --json", "vtdbg vmcs --image \"$(vtdbg demo --path)\" --at 0x21000"])
@arguments(_demo_args)
def demo_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """The sample's VMCS, decoded from memory, with the commands to try next."""
    manifests = sample_manifests()
    if not manifests:
        raise VtdbgError("no embedded sample is installed (vtdbg/samples is empty)")
    sample = manifests[0]
    path = sample["image_path"]
    if args.path:
        return Result({"image": path}, [Text(path)])
    target = ImageTarget(path)
    try:
        vmcs = read_vmcs(target, sample["vmcs_pa"])
    finally:
        target.close()
    doc = vmcs.to_json()
    doc["sample"] = {k: v for k, v in sample.items() if k != "image_path"}
    blocks: List[Block] = [Heading("Embedded sample: %s" % sample["description"]),
              KeyValues([["image", path], ["VMXON region", "0x%x" % sample["vmxon_pa"]],
                         ["VMCS region", "0x%x" % sample["vmcs_pa"]]])]
    blocks += vmcs_blocks(vmcs, args.all)
    blocks.append(Heading("Try next"))
    blocks.append(Text("\n".join("  " + c.replace("{image}", path) for c in sample.get("try", []))))
    return Result(doc, blocks, warnings=list(vmcs.warnings))
