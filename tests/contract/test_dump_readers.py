"""Every dump reader passes the target contract, on dumps generated from lab memory.

The memory is the real Bochs lab image when tests/fixtures/lab holds one, else the
synthetic lab image (tests/support/lab.py).  Windows dumps are cross-checked with
kdmp-parser in a subprocess (it crashes the interpreter on bad input, so never in-process).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from tests.contract.contract import ContractSetup, TargetContract
from tests.support import dumpgen
from tests.support.lab import lab_memory
from vtdbg.target.base import Capability
from vtdbg.target.dumps.windows import WindowsDumpTarget
from vtdbg.target.open import open_target
from vtdbg.target.sniff import open_dump, sniff

IMAGE, TRUTH = lab_memory()
#: two holes, like a PC: the legacy VGA/ROM window and one more gap
PRESENT = [(0, 0x9F000), (0x100000, 0x300000), (0x500000, 0x300000)]
REGS = {"rip": 0xFFFFF80012345678, "rsp": 0xFFFFF80000001000, "rax": 0x1234, "cr3": 0x13000}


def _known():
    vmcs = TRUTH["vmcs_pa"]
    return {0: bytes(IMAGE[0:16]), vmcs: bytes(IMAGE[vmcs:vmcs + 0x1000]),
            0x9F000 - 8: bytes(IMAGE[0x9F000 - 8:0x9F000]), 0x100000: bytes(IMAGE[0x100000:0x101000]),
            0x7FF000: bytes(IMAGE[0x7FF000:0x800000])}


KNOWN = _known()
HOLE = (0x9F000 - 4, 8)  # straddles the end of the first run


class TestWindowsFullDump(TargetContract):
    def make_target(self, tmp_path):
        path = dumpgen.write_windows_full(tmp_path / "full.dmp", IMAGE, PRESENT, regs=REGS, processors=2)
        return ContractSetup(open_target("dump:" + str(path)), KNOWN, HOLE)


class TestWindowsBitmapDump(TargetContract):
    def make_target(self, tmp_path):
        path = dumpgen.write_windows_bitmap(tmp_path / "bmp.dmp", IMAGE, PRESENT, regs=REGS)
        return ContractSetup(open_target(str(path)), KNOWN, HOLE)


class TestWindowsKernelBitmapDump(TargetContract):
    def make_target(self, tmp_path):
        path = dumpgen.write_windows_bitmap(tmp_path / "bmp6.dmp", IMAGE, PRESENT, signature=b"FDMP", dump_type=6)
        return ContractSetup(open_target(str(path)), KNOWN, HOLE)


class TestElf64Core(TargetContract):
    def make_target(self, tmp_path):
        path = dumpgen.write_elf(tmp_path / "core.elf", IMAGE, PRESENT, cpus=[REGS, dict(REGS, rip=0x1000)])
        return ContractSetup(open_target("dump:" + str(path)), KNOWN, HOLE)


class TestElf32Core(TargetContract):
    def make_target(self, tmp_path):
        path = dumpgen.write_elf(tmp_path / "core32.elf", IMAGE, PRESENT, elf_class=32)
        return ContractSetup(open_target(str(path)), KNOWN, HOLE)


class TestLime(TargetContract):
    def make_target(self, tmp_path):
        path = dumpgen.write_lime(tmp_path / "mem.lime", IMAGE, PRESENT)
        return ContractSetup(open_target(str(path)), KNOWN, HOLE)


class TestVmwareVmem(TargetContract):
    def make_target(self, tmp_path):
        # the second region is stored right after the first in the .vmem: file offset != PA
        vmem, _ = dumpgen.write_vmware(tmp_path / "vm", IMAGE, [(0, 0, 0x9F), (0x100, 0x9F, 0x700)], cpus=[REGS])
        return ContractSetup(open_target(str(vmem)), KNOWN, HOLE)


class TestVmwareStateFile(TargetContract):
    def make_target(self, tmp_path):
        _, state = dumpgen.write_vmware(tmp_path / "vm", IMAGE, [(0, 0, 0x9F), (0x100, 0x9F, 0x700)],
                                        state_ext=".vmsn")
        return ContractSetup(open_target(str(state)), KNOWN, HOLE)


class TestRawFallback(TargetContract):
    def make_target(self, tmp_path):
        path = tmp_path / "mem.bin"
        path.write_bytes(bytes(IMAGE[:0x800000]))
        return ContractSetup(open_target("dump:" + str(path)), KNOWN, (0x800000 - 4, 8))


# -- format-specific behaviour ---------------------------------------------------------------

def test_sniff_names_each_format(tmp_path):
    made = {
        "windows": dumpgen.write_windows_full(tmp_path / "a.dmp", IMAGE, PRESENT),
        "elf": dumpgen.write_elf(tmp_path / "b.elf", IMAGE, PRESENT),
        "lime": dumpgen.write_lime(tmp_path / "c.lime", IMAGE, PRESENT),
    }
    vmem, state = dumpgen.write_vmware(tmp_path / "d", IMAGE, [(0, 0, 0x10)])
    made["vmem"], made["vmware-state"] = vmem, state
    raw = tmp_path / "e.bin"
    raw.write_bytes(b"\x01" * 4096)
    made["raw"] = raw
    for name, path in made.items():
        assert sniff(str(path)) == name


def test_windows_dump_exposes_context_bugcheck_and_cpu_count(tmp_path):
    path = dumpgen.write_windows_full(tmp_path / "full.dmp", IMAGE, PRESENT, regs=REGS, bugcheck=0x20001,
                                      params=(1, 2, 3, 4), processors=4, dtb=0x10000)
    with open_dump(str(path)) as target:
        assert isinstance(target, WindowsDumpTarget)
        assert target.has(Capability.REGS) and not target.has(Capability.MSR_READ | Capability.RESUME)
        regs = target.registers()
        assert regs["rip"] == REGS["rip"] and regs["rax"] == 0x1234 and regs["cr3"] == 0x10000
        assert target.cpu_count() == 4
        assert target.info["bugcheck_code"] == 0x20001 and target.info["bugcheck_parameters"] == [1, 2, 3, 4]
        # the header's DTB is the lab's host CR3, whose tables identity-map 1 GiB
        assert target.read_virt(TRUTH["vmcs_pa"], 16) == bytes(IMAGE[TRUTH["vmcs_pa"]:TRUTH["vmcs_pa"] + 16])


def test_truncated_full_dump_keeps_what_it_has(tmp_path):
    path = dumpgen.write_windows_full(tmp_path / "full.dmp", IMAGE, PRESENT)
    data = path.read_bytes()
    cut = tmp_path / "cut.dmp"
    cut.write_bytes(data[:0x2000 + 0x9F000 + 0x1800])  # first run and 1.5 pages of the second
    with open_dump(str(cut)) as target:
        assert target.phys_ranges() == [(0, 0x9F000), (0x100000, 0x1000)]
        assert any("truncated" in w for w in target.warnings)
        assert target.read_phys(0x100000, 0x1000) == bytes(IMAGE[0x100000:0x101000])


def test_elf_partial_segment_tail_is_missing(tmp_path):
    path = dumpgen.write_elf(tmp_path / "core.elf", IMAGE, [(0, 0x10000)], memsz_extra=0x1000)
    with open_dump(str(path)) as target:
        assert target.phys_ranges() == [(0, 0x10000)]
        assert any("holds 0x10000 of its 0x11000" in w for w in target.warnings)


def test_vmem_without_state_file_is_one_to_one_with_a_warning(tmp_path):
    vmem = tmp_path / "lonely.vmem"
    vmem.write_bytes(bytes(IMAGE[:0x10000]))
    with open_dump(str(vmem)) as target:
        assert target.read_phys(0x1000, 16) == bytes(IMAGE[0x1000:0x1010])
        assert any("no .vmss" in w for w in target.warnings)


def test_vmss_with_embedded_memory(tmp_path):
    state = tmp_path / "snap.vmss"
    state.write_bytes(dumpgen.vmss_bytes([(0, 0, 0x9F), (0x100, 0x9F, 0x10)],
                                         memory=bytes(IMAGE[:0x9F000]) + bytes(IMAGE[0x100000:0x110000])))
    with open_dump(str(state)) as target:
        assert target.phys_ranges() == [(0, 0x9F000), (0x100000, 0x10000)]
        assert target.read_phys(0x10F000, 0x1000) == bytes(IMAGE[0x10F000:0x110000])


def test_gzip_wrapped_dump_is_sniffed_inside(tmp_path):
    import gzip

    path = dumpgen.write_lime(tmp_path / "m.lime", IMAGE, [(0x21000, 0x1000)])
    packed = tmp_path / "m.lime.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    with open_dump(str(packed)) as target:
        assert target.phys_ranges() == [(0x21000, 0x1000)]


# -- cross-check with kdmp-parser (a test oracle only, always in a subprocess) ---------------

ORACLE = r"""
import hashlib, json, sys
import kdmp_parser
dump = kdmp_parser.KernelDumpParser(sys.argv[1])
pages = {}
for pa in sorted(dump.pages.keys()):
    pages[str(pa)] = hashlib.sha1(bytes(dump.read_physical_page(pa))).hexdigest()
print(json.dumps({"type": int(dump.type), "pages": pages, "rip": dump.context.Rip,
                  "bugcheck": dump.header.BugCheckCode, "dtb": dump.directory_table_base}))
"""


def _kdmp(path):
    probe = subprocess.run([sys.executable, "-c", "import kdmp_parser"], capture_output=True)
    if probe.returncode:
        pytest.skip("kdmp-parser is not installed")
    done = subprocess.run([sys.executable, "-c", ORACLE, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind", ["full", "sdmp", "fdmp", "type6"])
def test_reads_match_kdmp_parser(tmp_path, kind):
    path = tmp_path / ("%s.dmp" % kind)
    if kind == "full":
        dumpgen.write_windows_full(path, IMAGE, PRESENT, regs=REGS, bugcheck=0x7F)
    else:
        dumpgen.write_windows_bitmap(path, IMAGE, PRESENT, signature=b"FDMP" if kind == "fdmp" else b"SDMP",
                                     dump_type=6 if kind == "type6" else 5, regs=REGS, bugcheck=0x7F)
    oracle = _kdmp(path)
    with open_dump(str(path)) as target:
        ours = {}
        for start, length in target.phys_ranges():
            for pa in range(start, start + length, 0x1000):
                ours[str(pa)] = hashlib.sha1(target.read_phys(pa, 0x1000)).hexdigest()
        assert ours == oracle["pages"]
        assert oracle["type"] == target.info["dump_type"]
        assert oracle["rip"] == target.registers()["rip"] == REGS["rip"]
        assert oracle["bugcheck"] == target.info["bugcheck_code"] == 0x7F
        assert oracle["dtb"] == target.registers()["cr3"]
