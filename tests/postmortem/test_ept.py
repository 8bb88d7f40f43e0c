"""EPT walks: the lab's real hierarchy, synthetic tables for every misconfiguration rule,
hooks, cycles and absurd hierarchies, guest-virtual translation and the CLI contract."""
from __future__ import annotations

import json
import struct
from typing import Dict

import pytest

from tests.conftest import run_cli
from vtdbg.core.ept import EptError, EptWalker, decode_eptp, find_hooks, hpa_to_gpa, translate_gva
from vtdbg.lib.errors import MemoryReadError
from vtdbg.target.sniff import open_dump

RWX, RW, R, X = 7, 3, 1, 4
WB = 6 << 3
PS = 1 << 7


class Memory:
    """Sparse physical memory of 4 KiB tables for synthetic EPT hierarchies."""

    def __init__(self) -> None:
        self.pages: Dict[int, bytearray] = {}

    def entry(self, table: int, index: int, value: int) -> None:
        page = self.pages.setdefault(table, bytearray(0x1000))
        struct.pack_into("<Q", page, index * 8, value)

    def read(self, pa: int, size: int) -> bytes:
        base = pa & ~0xFFF
        if base not in self.pages or (pa & 0xFFF) + size > 0x1000:
            raise MemoryReadError(pa, size, "not present")
        return bytes(self.pages[base][pa & 0xFFF:(pa & 0xFFF) + size])


def four_k_hierarchy() -> Memory:
    """PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000 mapping GPA 0-2 MiB identity
    with 4 KiB RW WB pages; one page (GPA 0x5000) execute-only (a hook), one (0x9000)
    redirected to 0x800000."""
    mem = Memory()
    mem.entry(0x1000, 0, 0x2000 | RWX)
    mem.entry(0x2000, 0, 0x3000 | RWX)
    mem.entry(0x3000, 0, 0x4000 | RWX)
    for index in range(512):
        mem.entry(0x4000, index, (index << 12) | WB | RW)
    mem.entry(0x4000, 5, 0x5000 | WB | X)
    mem.entry(0x4000, 9, 0x800000 | WB | RW)
    return mem


EPTP = 0x1000 | (3 << 3) | 6


def test_lab_eptp_translates_identity_with_2m_pages(haswell):
    path, truth = haswell
    with open_dump(str(path)) as target:
        walker = EptWalker(target.read_phys, truth["eptp"])
        result = walker.translate(0x600123)
        assert result.hpa == 0x600123 and result.page_size == 1 << 21 and result.memory_type == 6
        assert (result.read, result.write, result.execute) == (True, True, True)
        assert [e.name for e in result.levels] == ["PML4E", "PDPTE", "PDE"]
        assert result.levels[0].entry_pa == truth["eptp"] & ~0xFFF
        ranges = walker.merged_map()
        assert len(ranges) == 1 and ranges[0].gpa == 0 and ranges[0].size == 1 << 30
        assert walker.misconfigurations() == [] and find_hooks(ranges) == []
        beyond = walker.translate(1 << 30)
        assert beyond.hpa is None and "not present" in beyond.fault


def test_lab_exit_gpa_is_mapped_after_the_ept_violation(haswell):
    path, truth = haswell
    violation = next(e for e in truth["exits"] if e["name"] == "ept_violation")
    with open_dump(str(path)) as target:
        walker = EptWalker(target.read_phys, truth["eptp"], caps=truth["msrs"]["0x48c"])
        # the handler mapped the 2 MiB page and resumed: the GPA now translates
        assert walker.translate(violation["guest_physical_address"]).hpa == violation["guest_physical_address"]


def test_four_k_pages_hooks_and_redirects():
    mem = four_k_hierarchy()
    walker = EptWalker(mem.read, EPTP, caps=1)
    assert walker.translate(0x5123).hpa == 0x5123
    assert walker.translate(0x5123).execute and not walker.translate(0x5123).read
    assert walker.translate(0x9ABC).hpa == 0x800ABC
    ranges = walker.merged_map()
    assert [(r.gpa, r.size, r.perms) for r in ranges][:4] == [
        (0, 0x5000, "rw-"), (0x5000, 0x1000, "--x"), (0x6000, 0x3000, "rw-"), (0x9000, 0x1000, "rw-")]
    hooks = {h["gpa"]: h for h in find_hooks(ranges)}
    assert hooks[0x5000]["kind"] == "permissions" and "--x" in hooks[0x5000]["reason"]
    assert hooks[0x9000]["kind"] == "redirect" and hooks[0x9000]["hpa"] == 0x800000
    assert hpa_to_gpa(ranges, 0x800010) == 0x9010


@pytest.mark.parametrize("value, level, reason", [
    (0x5000 | WB | 2, 1, "write without read"),
    (0x5000 | WB | 6, 1, "write+execute without read"),
    (0x5000 | (2 << 3) | RW, 1, "memory type 2 is reserved"),
    (0x5000 | (3 << 3) | RW, 1, "memory type 3 is reserved"),
    (0x5000 | (7 << 3) | RW, 1, "memory type 7 is reserved"),
    (0x5000 | WB | X, 1, "execute-only"),
])
def test_leaf_misconfigurations(value, level, reason):
    mem = four_k_hierarchy()
    mem.entry(0x4000, 5, value)
    walker = EptWalker(mem.read, EPTP, caps=0)  # caps known: no execute-only support
    found = walker.misconfigurations()
    assert len(found) == 1 and found[0].gpa == 0x5000 and found[0].level == level
    assert any(reason in r for r in found[0].reasons)
    result = walker.translate(0x5000)
    assert result.hpa is None and result.misconfigured and "misconfiguration" in result.fault


def test_execute_only_is_fine_when_supported_and_unjudged_when_caps_unknown():
    mem = four_k_hierarchy()
    assert EptWalker(mem.read, EPTP, caps=1).misconfigurations() == []
    unknown = EptWalker(mem.read, EPTP)
    assert unknown.misconfigurations() == [] and unknown.caps_unjudged


@pytest.mark.parametrize("table, index, value, reason", [
    (0x1000, 0, 0x2000 | RWX | PS, "reserved bits"),             # PML4E bit 7
    (0x1000, 0, 0x2000 | RWX | (1 << 4), "reserved bits"),       # PML4E bits 6:3
    (0x3000, 0, 0x4000 | RWX | (1 << 3), "reserved bits"),       # non-leaf PDE bits 6:3
    (0x3000, 1, 0x200000 | WB | RW | PS | (1 << 13), "reserved bits"),  # 2 MiB leaf bits 20:12
    (0x2000, 1, 0x40000000 | WB | RW | PS | (1 << 20), "reserved bits"),  # 1 GiB leaf bits 29:12
    (0x2000, 1, 0x40000000 | WB | RW | PS, "1-GiB page"),        # caps bit 17 clear
])
def test_structure_misconfigurations(table, index, value, reason):
    mem = four_k_hierarchy()
    mem.entry(table, index, value)
    found = EptWalker(mem.read, EPTP, caps=1).misconfigurations()
    assert found and any(reason in r for m in found for r in m.reasons)


def test_bits_above_maxphyaddr_are_reserved_when_known():
    mem = four_k_hierarchy()
    mem.entry(0x4000, 7, (1 << 45) | 0x7000 | WB | RW)
    assert EptWalker(mem.read, EPTP, phys_bits=52).misconfigurations() == []
    found = EptWalker(mem.read, EPTP, phys_bits=40).misconfigurations()
    assert [m.gpa for m in found] == [0x7000]


def test_cycle_ends_with_a_clear_error():
    mem = four_k_hierarchy()
    mem.entry(0x3000, 1, 0x1000 | RWX)  # a PDE pointing back at the PML4
    walker = EptWalker(mem.read, EPTP)
    with pytest.raises(EptError, match="cycle"):
        walker.merged_map()
    # a single translation is bounded by the walk length anyway
    assert walker.translate(0x200000).levels[-1].level == 1


def test_absurd_hierarchy_hits_the_table_bound():
    mem = Memory()
    mem.entry(0x1000, 0, 0x2000 | RWX)
    for index in range(512):  # every PDPTE and PDE share one table: 512*512 visits
        mem.entry(0x2000, index, 0x3000 | RWX)
        mem.entry(0x3000, index, 0x4000 | RWX)
    mem.entry(0x4000, 0, WB | RW)
    walker = EptWalker(mem.read, EPTP, max_tables=500)
    with pytest.raises(EptError, match="500 tables"):
        walker.merged_map()


def test_missing_tables_are_reported_not_fatal():
    mem = four_k_hierarchy()
    mem.entry(0x3000, 3, 0x99000 | RWX)  # a PT that is not in the dump
    walker = EptWalker(mem.read, EPTP)
    walker.merged_map()
    assert walker.unreadable == [0x99000]
    assert "not in memory" in walker.translate(0x600000).fault


def test_eptp_problems_are_named():
    assert decode_eptp(0x3001E)["problems"] == []
    problems = decode_eptp(0x30000 | (5 << 3) | 3 | (1 << 9))["problems"]
    assert len(problems) == 3


def test_gva_translation_through_guest_tables_and_ept(haswell):
    path, truth = haswell
    with open_dump(str(path)) as target:
        walker = EptWalker(target.read_phys, truth["eptp"])
        doc = translate_gva(walker, truth["guest_cr3"], 0x7C00)
    assert doc["gpa"] == doc["hpa"] == 0x7C00
    assert doc["guest_levels"][0]["entry_gpa"] == truth["guest_cr3"]
    assert [g["name"] for g in doc["guest_levels"]] == ["PML4E", "PDPTE", "PDE"]


def test_cli_gpa_json_contract(haswell):
    path, truth = haswell
    status, out, err = run_cli("--target", "dump:" + str(path), "ept", "--eptp", hex(truth["eptp"]), "0x600123",
                               "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["gpa"] == 0x600123 and doc["hpa"] == 0x600123
    assert doc["read"] is True and doc["write"] is True and doc["execute"] is True
    assert doc["memory_type"] == 6 and len(doc["levels"]) == 3


def test_cli_defaults_to_the_vmcs_eptp_and_shows_levels(haswell):
    path, truth = haswell
    status, out, err = run_cli("--target", "dump:" + str(path), "ept", "0x1000")
    assert status == 0, err
    assert "PML4E" in out and "PDE" in out and hex(truth["eptp"]) in out
    status, out, err = run_cli("--target", "dump:" + str(path), "ept", "--map", "--json")
    doc = json.loads(out)
    assert doc["eptp"] == truth["eptp"] and doc["ranges"][0]["size"] == 1 << 30
    status, out, err = run_cli("--target", "dump:" + str(path), "ept", "--gva", "0x7c00", "--json")
    assert status == 0, err
    assert json.loads(out)["hpa"] == 0x7C00


def test_cli_unmapped_gpa_gives_null_hpa(haswell):
    path, truth = haswell
    status, out, _ = run_cli("--target", "dump:" + str(path), "ept", "--eptp", hex(truth["eptp"]),
                             hex(5 << 30), "--json")
    doc = json.loads(out)
    assert status == 0 and doc["hpa"] is None and doc["memory_type"] is None and doc["read"] is False
