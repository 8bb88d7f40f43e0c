#!/usr/bin/env python3
"""Convert the researched reference layouts (../shared/reference/layouts/*.json) into
vtdbg's shipped layout files (vtdbg/layouts/data/*.json, schema vtdbg-layout/1).

The reference files are the provenance; this script only re-shapes them: every offset is
copied unchanged (tests/unit/test_layouts.py checks that), stored encodings become explicit
``transform`` names, and the trust/coherence statement each decode prints is added.

Usage: python3 scripts/import_reference_layouts.py [REFERENCE_DIR]
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(ROOT, "vtdbg", "layouts", "data")
DEFAULT_REF = os.path.join(os.path.dirname(ROOT), "shared", "reference", "layouts")

#: guest segment access-rights fields (SDM B.3.2: 0x4814 ES .. 0x4822 TR)
AR_ENCODINGS = set(range(0x4814, 0x4823, 2))

#: per layout: kind, extra revision ids, whether `auto` may pick it, trust statement
META: Dict[str, Dict[str, Any]] = {
    "bochs_2_7": dict(kind="software", revision_ids=[0x2B, 0x04], ar="rol8",
                      coherence="Bochs keeps the VMCS only in guest memory: the page equals VMREAD, "
                                "except guest state of a running guest (written at VM exit)"),
    "bochs_2_8_3_0": dict(kind="software", revision_ids=[0x2B, 0x04], ar="rol8",
                          coherence="Bochs keeps the VMCS only in guest memory: the page equals VMREAD, "
                                    "except guest state of a running guest (written at VM exit)"),
    "bochs_git_post_3_0": dict(kind="software", revision_ids=[0x2B, 0x04], ar="rol8",
                               coherence="Bochs keeps the VMCS only in guest memory: the page equals VMREAD, "
                                         "except guest state of a running guest (written at VM exit)"),
    "kvm_vmcs12": dict(kind="nested", revision_ids=[0x11E57ED0],
                       coherence="KVM caches L1's current vmcs12 and writes it back at VMCLEAR or VMPTRLD "
                                 "of another: trust the page only for a VMCS that is not current"),
    "kvm_vmcs12_linux3x_legacy": dict(kind="nested", revision_ids=[0x11E57ED0],
                                      coherence="KVM caches L1's current vmcs12 and writes it back at "
                                                "VMCLEAR or VMPTRLD of another: trust the page only for a VMCS "
                                                "that is not current"),
    "hyperv_evmcs_v1": dict(kind="nested", revision_ids=[1],
                            coherence="an enlightened VMCS is written by L1 with ordinary stores: the page is "
                                      "authoritative, except L2 guest registers while L2 runs"),
    "virtualbox_vmxvvmcs": dict(kind="nested", revision_ids=[0x40000001],
                                coherence="VirtualBox keeps the current VMCS in its CPU context: the page is "
                                          "current only after VMCLEAR or VMPTRLD of another VMCS"),
    "xen_vvmcs": dict(kind="nested", revision_ids=[0x40000001], any_revision=True,
                      coherence="Xen without VMCS shadowing uses the page directly: current except L2 guest "
                                "registers while L2 runs (with shadowing the page has the hardware layout)"),
    "vmware_nested_partial": dict(kind="nested", revision_ids=[1], auto=False,
                                  coherence="VMware's virtual VMCS layout is undocumented: six offsets "
                                            "from one old measurement, all uncertain"),
}
HARDWARE_COHERENCE = ("measured layout of real Intel hardware (public measurements); the processor may keep "
                      "an active VMCS on-die, so memory is only guaranteed current after VMCLEAR")


def _hex(value: int) -> str:
    return "0x%04X" % value


def _enc(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _transform(fmt: Any, encoding: int, default_ar: Any) -> Any:
    if fmt == "descriptor_high_dword":
        return "rol8"
    if fmt == "packed16":
        return "packed16"
    if fmt is not None:
        raise SystemExit("unknown stored format %r" % fmt)
    if default_ar and encoding in AR_ENCODINGS:
        return default_ar
    return None


def convert(stem: str, ref: Dict[str, Any]) -> Dict[str, Any]:
    """One reference layout -> one vtdbg-layout/1 document."""
    meta = dict(META.get(stem, {}))
    kind = meta.get("kind", "hardware")
    revision_ids: List[int] = list(meta.get("revision_ids") or [int(ref["revision_id"])])
    fields: List[Dict[str, Any]] = []
    groups = [("fields", True, False), ("encoded_fields", True, False),
              ("optional_fields", True, True), ("uncertain_fields", False, False)]
    for key, certain, optional in groups:
        for name, entry in sorted(ref.get(key, {}).items(), key=lambda kv: _enc(kv[1]["encoding"])):
            encoding = _enc(entry["encoding"])
            fields.append({
                "name": name,
                "encoding": _hex(encoding),
                "offset": int(entry["offset"]),
                "size": int(entry["size"]),
                "transform": _transform(entry.get("format"), encoding, meta.get("ar")),
                "certain": certain,
                "optional": optional,
            })
    fields.sort(key=lambda f: (int(f["encoding"], 16), not f["certain"]))
    header = dict(ref.get("header") or {"revision_id_offset": 0, "abort_offset": 4, "region_size": 4096})
    return {
        "schema": "vtdbg-layout/1",
        "name": stem,
        "title": ref["name"],
        "source": ref["source"],
        "imported_from": "shared/reference/layouts/%s.json" % stem,
        "kind": kind,
        "revision_ids": revision_ids,
        "any_revision": bool(meta.get("any_revision", False)),
        "auto": bool(meta.get("auto", True)),
        "coherence": meta.get("coherence", HARDWARE_COHERENCE),
        "header": header,
        "notes": ref.get("notes", ""),
        "fields": fields,
    }


def main(argv: List[str]) -> int:
    """Convert every reference file; print one line per layout."""
    ref_dir = argv[1] if len(argv) > 1 else DEFAULT_REF
    os.makedirs(OUT_DIR, exist_ok=True)
    for name in sorted(os.listdir(ref_dir)):
        if not name.endswith(".json"):
            continue
        stem = name[:-5]
        with open(os.path.join(ref_dir, name), encoding="utf-8") as handle:
            doc = convert(stem, json.load(handle))
        with open(os.path.join(OUT_DIR, name), "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=1)
            handle.write("\n")
        print("%-32s %3d fields, revision ids %s" % (stem, len(doc["fields"]),
                                                      ", ".join("0x%x" % r for r in doc["revision_ids"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
