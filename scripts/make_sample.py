#!/usr/bin/env python3
"""Refresh the embedded sample (vtdbg/samples/) from the Bochs lab fixtures.

The sample is the lab's physical memory image on one CPU model plus a manifest with the
addresses the lab's own info block reports, so `vtdbg demo` can decode it anywhere.
Usage: python3 scripts/make_sample.py [MODEL]   (default corei7_skylake_x)
"""
from __future__ import annotations

import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "vtdbg", "samples")


def main(argv: list) -> int:
    """Copy the image and write the manifest."""
    model = argv[1] if len(argv) > 1 else "corei7_skylake_x"
    source = os.path.join(ROOT, "tests", "fixtures", "lab", model)
    with open(os.path.join(source, "ground_truth.json"), encoding="utf-8") as handle:
        truth = json.load(handle)
    image = "lab-%s.img.gz" % model
    os.makedirs(SAMPLES, exist_ok=True)
    shutil.copyfile(os.path.join(source, truth["memory_image"]), os.path.join(SAMPLES, image))
    manifest = {
        "description": "the vtdbg lab hypervisor under Bochs %s (%s model), stopped after its last VM exit"
                       % (truth["bochs_version"], model),
        "image": image,
        "model": model,
        "bochs_version": truth["bochs_version"],
        "revision_id": truth["revision_id"],
        "vmxon_pa": truth["vmxon_pa"],
        "vmcs_pa": truth["vmcs_pa"],
        "eptp": truth["eptp"],
        "exits": len(truth["exits"]),
        "sha256": truth["memory_image_sha256"],
        "try": [
            "vtdbg vmcs --image {image} --at 0x%x --all" % truth["vmcs_pa"],
            "vtdbg vmcs --image {image} --at 0x%x --json" % truth["vmcs_pa"],
            "vtdbg vmxon --image {image} --at 0x%x" % truth["vmxon_pa"],
            "vtdbg exit-reason 0x%x" % truth["exits"][-1]["reason"],
            "vtdbg layout bochs_2_7",
        ],
    }
    with open(os.path.join(SAMPLES, "lab-%s.json" % model), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
        handle.write("\n")
    print("sample: %s (%d bytes)" % (image, os.path.getsize(os.path.join(SAMPLES, image))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
