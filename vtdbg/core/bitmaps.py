"""Which MSR accesses and I/O ports cause VM exits, from the VMX bitmaps and controls.

MSR bitmap (SDM 25.6.9): one 4 KiB page, four 1 KiB quarters: read-low (MSRs
00000000H-00001FFFH), read-high (C0000000H-C0001FFFH), write-low, write-high; a set bit
means the access exits.  RDMSR/WRMSR of any MSR outside those two ranges always exits, and
with the "use MSR bitmaps" control off every RDMSR/WRMSR exits.

I/O bitmaps (SDM 25.6.4): bitmap A covers ports 0000H-7FFFH, bitmap B 8000H-FFFFH; with
"use I/O bitmaps" on they decide (an access spanning several ports exits if any of them is
set, or if it wraps past FFFFH); otherwise "unconditional I/O exiting" makes every I/O
instruction exit, or none.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from vtdbg.arch.controls import lookup_control
from vtdbg.lib.bitranges import set_bit_runs

MSR_LOW = (0x00000000, 0x00001FFF)
MSR_HIGH = (0xC0000000, 0xC0001FFF)
SDM_MSR = "SDM 25.6.9 (MSR-Bitmap Address)"
SDM_IO = "SDM 25.6.4 (I/O-Bitmap Addresses)"


def _ranges(runs: List[Tuple[int, int]], base: int) -> List[Dict[str, int]]:
    return [{"first": base + start, "last": base + start + count - 1} for start, count in runs]


def _merge(ranges: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    for item in sorted(ranges, key=lambda r: r["first"]):
        if out and out[-1]["last"] + 1 == item["first"] and out[-1].get("always") == item.get("always"):
            out[-1] = dict(out[-1], last=item["last"])
        else:
            out.append(dict(item))
    return out


def control_bit(name: str) -> int:
    """Mask of a primary processor-based control by name (from arch/data/controls.json)."""
    return lookup_control(name, "proc").mask


def msr_exits(bitmap: Optional[bytes], use_bitmaps: bool = True) -> Dict[str, Any]:
    """MSR ranges whose RDMSR (``read``) and WRMSR (``write``) cause VM exits."""
    everything = [{"first": 0, "last": 0xFFFFFFFF, "always": True}]
    if not use_bitmaps or bitmap is None:
        return {"use_msr_bitmaps": False, "all_exit": True, "read": everything, "write": list(everything),
                "sdm": SDM_MSR}
    if len(bitmap) < 0x1000:
        raise ValueError("an MSR bitmap is 4096 bytes")
    outside = [{"first": MSR_LOW[1] + 1, "last": MSR_HIGH[0] - 1, "always": True},
               {"first": MSR_HIGH[1] + 1, "last": 0xFFFFFFFF, "always": True}]
    doc: Dict[str, Any] = {"use_msr_bitmaps": True, "all_exit": False, "sdm": SDM_MSR}
    for kind, offset in (("read", 0), ("write", 0x800)):
        low = _ranges(set_bit_runs(bitmap[offset:offset + 0x400], 0x2000), MSR_LOW[0])
        high = _ranges(set_bit_runs(bitmap[offset + 0x400:offset + 0x800], 0x2000), MSR_HIGH[0])
        doc[kind] = _merge(low + high + [dict(o) for o in outside])
        doc[kind + "_in_bitmap"] = sum(r["last"] - r["first"] + 1 for r in low + high)
    return doc


def msr_exits_for(doc: Dict[str, Any], msr: int) -> Tuple[bool, bool]:
    """(RDMSR exits, WRMSR exits) for one MSR, from :func:`msr_exits`'s result."""
    def hit(ranges: List[Dict[str, Any]]) -> bool:
        return any(r["first"] <= msr <= r["last"] for r in ranges)
    return hit(doc["read"]), hit(doc["write"])


def io_exits(bitmap_a: Optional[bytes], bitmap_b: Optional[bytes], use_bitmaps: bool,
             unconditional: bool) -> Dict[str, Any]:
    """Port ranges whose IN/OUT (and INS/OUTS) cause VM exits."""
    doc: Dict[str, Any] = {"use_io_bitmaps": use_bitmaps, "unconditional_io_exiting": unconditional, "sdm": SDM_IO}
    if not use_bitmaps or bitmap_a is None or bitmap_b is None:
        if unconditional:
            doc.update({"all_exit": True, "none_exit": False, "exits": [{"first": 0, "last": 0xFFFF}]})
        else:
            doc.update({"all_exit": False, "none_exit": True, "exits": []})
        return doc
    if len(bitmap_a) < 0x1000 or len(bitmap_b) < 0x1000:
        raise ValueError("I/O bitmaps are 4096 bytes each")
    ranges = _ranges(set_bit_runs(bitmap_a[:0x1000], 0x8000), 0) + \
        _ranges(set_bit_runs(bitmap_b[:0x1000], 0x8000), 0x8000)
    merged = _merge(ranges)
    ports = sum(r["last"] - r["first"] + 1 for r in merged)
    doc.update({"all_exit": ports == 0x10000, "none_exit": ports == 0, "exits": merged, "ports": ports})
    return doc
