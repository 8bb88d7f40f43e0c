"""Fuzzing every reader and walker: garbage and truncated headers, size fields that claim
terabytes, cyclic EPT and page tables.  The only exceptions allowed are the project's clean
errors (VtdbgError), and no case may take more than a second.

The default suite runs a short pass (200 examples per test); the ``slow`` group runs more
than 100k cases in total:  pytest -m slow tests/postmortem/test_fuzz.py
"""
from __future__ import annotations

import functools
import struct
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import dumpgen
from tests.support.lab import synthetic_lab
from vtdbg.core.bitmaps import io_exits, msr_exits
from vtdbg.core.ept import EptWalker, find_hooks, translate_gva
from vtdbg.core.scan import host_mapping, scan
from vtdbg.lib.errors import MemoryReadError, VtdbgError
from vtdbg.target.image import ImageTarget
from vtdbg.target.sniff import open_dump

FAST = settings(max_examples=200, deadline=1000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def slow(examples: int) -> settings:
    return settings(max_examples=examples, deadline=1000, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


PRESENT = [(0, 0x10000), (0x20000, 0x20000)]
HUGE = st.sampled_from([0xFFFFFFFF, 1 << 32, 1 << 40, 1 << 52, (1 << 63) + 5, (1 << 64) - 1, 0x45474150])

#: (offset, size) of the size/count/offset fields of each format, for "claims terabytes" mutations
FIELDS = {
    "windows-full": [(0x88, 4), (0x90, 8), (0x98, 8), (0xA0, 8), (0xA8, 8), (0xB0, 8), (0x34, 4), (0xFA0, 8),
                     (0xF98, 4)],
    "windows-bitmap": [(0x2020, 8), (0x2028, 8), (0x2030, 8), (0xF98, 4), (0xFA0, 8)],
    "elf64": [(0x20, 8), (0x28, 8), (0x36, 2), (0x38, 2), (0x40 + 8, 8), (0x40 + 32, 8), (0x78 + 8, 8),
              (0x78 + 16, 8), (0x78 + 24, 8), (0x78 + 32, 8), (0x78 + 40, 8)],
    "elf32": [(0x1C, 4), (0x20, 4), (0x2A, 2), (0x2C, 2), (0x34 + 4, 4), (0x34 + 16, 4), (0x54 + 4, 4),
              (0x54 + 12, 4), (0x54 + 16, 4)],
    "lime": [(8, 8), (16, 8), (0x10000 + 32 + 8, 8), (0x10000 + 32 + 16, 8)],
    "vmss": [(8, 4), (12 + 64, 8), (12 + 72, 8), (12 + 80 + 64, 8), (12 + 80 + 72, 8)],
}


@functools.lru_cache(maxsize=None)
def seeds() -> Dict[str, Tuple[bytes, bytes]]:
    """Valid small files of every format: format -> (file bytes, companion .vmem or b"")."""
    image, _ = synthetic_lab(size=0x40000)
    folder = Path(tempfile.mkdtemp(prefix="vtdbg-fuzz-seeds-"))
    regs = {"rip": 0x1000, "cr3": 0x10000}
    out = {
        "windows-full": dumpgen.write_windows_full(folder / "a.dmp", image, PRESENT, regs=regs).read_bytes(),
        "windows-bitmap": dumpgen.write_windows_bitmap(folder / "b.dmp", image, PRESENT).read_bytes(),
        "elf64": dumpgen.write_elf(folder / "c.elf", image, PRESENT, cpus=[regs]).read_bytes(),
        "elf32": dumpgen.write_elf(folder / "d.elf", image, PRESENT, elf_class=32).read_bytes(),
        "lime": dumpgen.write_lime(folder / "e.lime", image, PRESENT).read_bytes(),
    }
    seeds_out = {name: (data, b"") for name, data in out.items()}
    vmem, state = dumpgen.write_vmware(folder / "f", image, [(0, 0, 0x10), (0x20, 0x10, 0x20)], cpus=[regs])
    seeds_out["vmss"] = (state.read_bytes(), vmem.read_bytes())
    seeds_out["vmss-embedded"] = (dumpgen.vmss_bytes([(0, 0, 0x10)], memory=bytes(image[:0x10000])), b"")
    return seeds_out


@st.composite
def mutated_files(draw):
    fmt = draw(st.sampled_from(sorted(seeds())))
    data, companion = seeds()[fmt]
    data = bytearray(data)
    for offset, size in draw(st.lists(st.sampled_from(FIELDS.get(fmt.split("-embedded")[0], [(0, 4)])),
                                      max_size=3)):
        if offset + size <= len(data):
            data[offset:offset + size] = (draw(HUGE) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, min(len(data) - 1, 0x2100)))
        data[position:position + 8] = draw(st.binary(min_size=1, max_size=8))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        del data[cut:]
    probe = draw(st.integers(0, 0x80000))
    return fmt, bytes(data), companion, probe


_TMP = Path(tempfile.mkdtemp(prefix="vtdbg-fuzz-"))


def check_reader(case) -> None:
    fmt, data, companion, probe = case
    name = {"vmss": "f.vmss"}.get(fmt, "dump.bin")
    path = _TMP / name
    path.write_bytes(data)
    if companion:
        (_TMP / "f.vmem").write_bytes(companion)
    for opened in ([str(path), str(_TMP / "f.vmem")] if companion else [str(path)]):
        try:
            target = open_dump(opened)
        except VtdbgError:
            continue
        try:
            ranges = target.phys_ranges()
            assert ranges == sorted(ranges)
            assert sum(n for _, n in ranges) <= len(data) + len(companion)
            for start, length in ranges[:8]:
                assert len(target.read_phys(start, min(length, 0x1000))) == min(length, 0x1000)
            try:
                target.read_phys(probe, 0x1000)
            except MemoryReadError:
                pass
            scan(target)
            if target.has(target.capabilities.REGS):
                assert "cr3" in target.registers()
        except VtdbgError:
            pass
        finally:
            target.close()


@given(mutated_files())
@FAST
def test_fuzz_readers(case):
    check_reader(case)


@pytest.mark.slow
@given(mutated_files())
@slow(60000)
def test_fuzz_readers_long(case):
    check_reader(case)


# -- EPT and page-table walkers over hostile tables -------------------------------------------

TABLES = [0x1000 * i for i in range(1, 7)]


@st.composite
def hostile_tables(draw):
    pages: Dict[int, bytearray] = {}
    for table in draw(st.lists(st.sampled_from(TABLES), min_size=1, max_size=6, unique=True)):
        page = bytearray(0x1000)
        for _ in range(draw(st.integers(0, 16))):
            index = draw(st.one_of(st.integers(0, 3), st.integers(0, 511)))
            target = draw(st.one_of(st.sampled_from(TABLES), st.integers(0, (1 << 52) - 1)))
            low = draw(st.integers(0, 0xFFF))
            high = draw(st.sampled_from([0, 0, 1 << 52, 1 << 63, 0xFFF0000000000000]))
            struct.pack_into("<Q", page, index * 8, (target & 0x000FFFFFFFFFF000) | low | high)
        pages[table] = page
    root = draw(st.sampled_from(TABLES))
    eptp = root | draw(st.integers(0, 0xFFF))
    gpas = draw(st.lists(st.integers(0, (1 << 48) - 1), max_size=4))
    caps = draw(st.one_of(st.none(), st.integers(0, (1 << 64) - 1)))
    return pages, eptp, gpas, caps, draw(st.booleans()), draw(st.integers(30, 52))


def _reader(pages: Dict[int, bytearray]):
    def read(pa: int, size: int) -> bytes:
        base = pa & ~0xFFF
        if base not in pages or (pa & 0xFFF) + size > 0x1000:
            raise MemoryReadError(pa, size, "not present")
        return bytes(pages[base][pa & 0xFFF:(pa & 0xFFF) + size])
    return read


def check_walkers(case) -> None:
    pages, eptp, gpas, caps, mbec, phys_bits = case
    read = _reader(pages)
    walker = EptWalker(read, eptp, caps=caps, mbec=mbec, phys_bits=phys_bits)
    for gpa in gpas:
        result = walker.translate(gpa)
        assert len(result.levels) <= 5
        assert (result.hpa is None) == (result.fault is not None)
    try:
        ranges = walker.merged_map()
        find_hooks(ranges)
        walker.misconfigurations()
        assert all(r.size > 0 for r in ranges)
    except VtdbgError:
        pass
    for gva in gpas[:2]:
        try:
            translate_gva(walker, eptp & ~0xFFF, gva)
        except VtdbgError:
            pass
    for pa in gpas[:2]:
        host_mapping(read, eptp, pa, levels=4 + (eptp & 1))


@given(hostile_tables())
@FAST
def test_fuzz_ept_and_page_tables(case):
    check_walkers(case)


@pytest.mark.slow
@given(hostile_tables())
@slow(30000)
def test_fuzz_ept_and_page_tables_long(case):
    check_walkers(case)


# -- the scanner over pages that start with revision ids -----------------------------------------

@st.composite
def hostile_images(draw):
    pages = []
    for _ in range(draw(st.integers(1, 6))):
        page = bytearray(draw(st.binary(min_size=0, max_size=64)).ljust(0x1000, b"\0"))
        revision = draw(st.sampled_from([0x2B, 0x04, 0x10, 0x12, 0x0E, 0x11E57ED0, 0x40000001, 1, 0x8000002B]))
        struct.pack_into("<II", page, 0, revision, draw(st.sampled_from([0, 1, 5, 0xD, 0x77])))
        for _ in range(draw(st.integers(0, 8))):
            offset = draw(st.integers(0, 0xFF8))
            struct.pack_into("<Q", page, offset, draw(st.sampled_from(
                [(1 << 64) - 1, 0x2020, 0x80000031, 0x1000, 0x3001E, 0x8AB7, 0x10000])))
        pages.append(bytes(page))
    return b"".join(pages)


def check_scan(image: bytes) -> None:
    result = scan(ImageTarget.from_bytes(image))
    doc = result.to_json()
    assert all(isinstance(v["pa"], int) for v in doc["vmcs"] + doc["vmxon"])


@given(hostile_images())
@FAST
def test_fuzz_scan(image):
    check_scan(image)


@pytest.mark.slow
@given(hostile_images())
@slow(10000)
def test_fuzz_scan_long(image):
    check_scan(image)


# -- bitmaps ---------------------------------------------------------------------------------------

def check_bitmaps(page: bytes, other: bytes) -> None:
    doc = msr_exits(page)
    for kind in ("read", "write"):
        firsts: List[int] = [r["first"] for r in doc[kind]]
        assert firsts == sorted(firsts) and all(r["first"] <= r["last"] <= 0xFFFFFFFF for r in doc[kind])
    io = io_exits(page, other, True, False)
    assert io["ports"] == sum(r["last"] - r["first"] + 1 for r in io["exits"]) <= 0x10000


PAGES = st.dictionaries(st.integers(0, 0xFFF), st.integers(0, 255), max_size=64).map(
    lambda changes: bytes(changes.get(i, 0) for i in range(0x1000)))


@given(PAGES, PAGES)
@FAST
def test_fuzz_bitmaps(page, other):
    check_bitmaps(page, other)


@pytest.mark.slow
@given(PAGES, PAGES)
@slow(5000)
def test_fuzz_bitmaps_long(page, other):
    check_bitmaps(page, other)
