"""MSR and I/O bitmaps: the lab's real bitmaps, control handling, and the CLI."""
from __future__ import annotations

import json

from tests.conftest import run_cli
from tests.support.lab import lab_vmcs_values
from vtdbg.core.bitmaps import io_exits, msr_exits, msr_exits_for
from vtdbg.layouts.registry import get_layout


def _bits(page: bytes, offset: int, count: int):
    return [i for i in range(count) if page[offset + i // 8] >> (i % 8) & 1]


def test_lab_bitmaps_through_the_vmcs(haswell):
    path, truth = haswell
    status, out, err = run_cli("--target", "dump:" + str(path), "msr-bitmap", "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["use_msr_bitmaps"] and doc["bitmap_pa"] == 0x22000
    # lab.asm: RDMSR 0x174 and WRMSR 0xC0000102 exit, nothing else inside the bitmap ranges
    assert [r for r in doc["read"] if not r.get("always")] == [{"first": 0x174, "last": 0x174}]
    assert [r for r in doc["write"] if not r.get("always")] == [{"first": 0xC0000102, "last": 0xC0000102}]
    assert msr_exits_for(doc, 0x174) == (True, False) and msr_exits_for(doc, 0x10) == (False, False)
    assert msr_exits_for(doc, 0x4B564D00) == (True, True)  # outside both ranges: always exits
    status, out, err = run_cli("--target", "dump:" + str(path), "io-bitmap", "--json")
    doc = json.loads(out)
    assert doc["use_io_bitmaps"] and (doc["bitmap_a"], doc["bitmap_b"]) == (0x23000, 0x24000)
    assert doc["exits"] == [{"first": 0x71, "last": 0x71}, {"first": 0x9000, "last": 0x9000}]


def test_lab_exit_log_agrees_with_the_bitmaps(haswell):
    path, truth = haswell
    exits = {e["name"] for e in truth["exits"]}
    assert {"rdmsr", "wrmsr", "io_instruction"} <= exits  # the lab took the exits the bitmaps ask for


def test_direct_bitmap_and_queries(haswell):
    path, _ = haswell
    status, out, _ = run_cli("--target", "dump:" + str(path), "msr-bitmap", "--bitmap", "0x22000",
                             "--msr", "0xc0000102")
    assert status == 0 and "MSR 0xc0000102: RDMSR does not exit, WRMSR exits" in out
    status, out, _ = run_cli("--target", "dump:" + str(path), "io-bitmap", "--bitmap", "0x23000", "--port", "0x9000",
                             "--json")
    doc = json.loads(out)
    assert doc["port"] == {"port": 0x9000, "exits": True} and doc["notes"]
    status, _, err = run_cli("--target", "dump:" + str(path), "msr-bitmap", "--bitmap", "0x22010")
    assert status == 2 and "aligned" in err


def test_controls_off_means_all_or_none(tmp_path):
    proc = 0x840061F2  # the lab's early controls: no bitmaps, no unconditional I/O exiting
    image = bytearray(0x40000)
    image[0x21000:0x22000] = get_layout("bochs_2_7").build_page(lab_vmcs_values(CPU_BASED_VM_EXEC_CONTROL=proc))
    path = tmp_path / "vmcs.img"
    path.write_bytes(bytes(image))
    status, out, _ = run_cli("--image", str(path), "msr-bitmap", "--at", "0x21000", "--json")
    doc = json.loads(out)
    assert doc["all_exit"] and doc["read"] == [{"first": 0, "last": 0xFFFFFFFF, "always": True}]
    status, out, _ = run_cli("--image", str(path), "io-bitmap", "--json")
    assert json.loads(out)["none_exit"] is True
    image[0x21000:0x22000] = get_layout("bochs_2_7").build_page(
        lab_vmcs_values(CPU_BASED_VM_EXEC_CONTROL=proc | (1 << 24)))
    path.write_bytes(bytes(image))
    status, out, _ = run_cli("--image", str(path), "io-bitmap", "--json")
    doc = json.loads(out)
    assert doc["all_exit"] and doc["exits"] == [{"first": 0, "last": 0xFFFF}]


def test_merged_ranges_match_a_bit_by_bit_reading():
    import random

    rng = random.Random(5)
    page = bytearray(0x1000)
    for _ in range(300):
        page[rng.randrange(0x1000)] = rng.choice([0xFF, 0x0F, 0x81, 0x01])
    doc = msr_exits(bytes(page))
    for kind, offset in (("read", 0), ("write", 0x800)):
        expected = set(_bits(page, offset, 0x2000)) | {0xC0000000 + i for i in _bits(page, offset + 0x400, 0x2000)}
        got = set()
        for r in doc[kind]:
            if not r.get("always"):
                got.update(range(r["first"], r["last"] + 1))
        assert got == expected
    a, b = bytes(page), bytes(reversed(page))
    io = io_exits(a, b, True, False)
    expected = set(_bits(a, 0, 0x8000)) | {0x8000 + i for i in _bits(b, 0, 0x8000)}
    got = set()
    for r in io["exits"]:
        got.update(range(r["first"], r["last"] + 1))
    assert got == expected and io["ports"] == len(expected)
