"""`vtdbg triage` on Windows dumps of lab memory, and the committed QEMU ELF core."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support import dumpgen
from tests.support.lab import FIXTURES
from vtdbg.core.scan import scan
from vtdbg.core.triage import explain_bugcheck, triage
from vtdbg.target.base import Capability
from vtdbg.target.dumps.elf import ElfCoreTarget
from vtdbg.target.sniff import open_dump

QEMU_CORE = FIXTURES / "qemu" / "lab-core.elf.gz"


@pytest.mark.parametrize("code, params, tool, meaning", [
    (0xE2, [5, 0xFFFF800012340000, 0, 0], "HyperPlatform", "EPT-misconfiguration VM exit"),
    (0xE2, [0xBAADBABE, 7, 0, 0], "ksm", "failed VM entry"),
    (0x20001, [1, 33, 0, 0], "HyperBone", "invalid VM (VM entry failed)"),
    (0x7F, [8, 0, 0, 0], None, None),
])
def test_bugcheck_conventions(code, params, tool, meaning):
    doc = explain_bugcheck(code, params)
    if tool is None:
        assert doc["convention"] is None and doc["name"] == "UNEXPECTED_KERNEL_MODE_TRAP"
    else:
        assert doc["convention"]["tool"] == tool and doc["convention"]["meaning"] == meaning


def test_triage_of_a_windows_dump_of_lab_memory(haswell, tmp_path):
    path, truth = haswell
    image = path.read_bytes()
    dump = dumpgen.write_windows_full(tmp_path / "MEMORY.DMP", image, [(0, 0xA0000), (0x100000, 0x700000)],
                                      bugcheck=0x20001, params=(1, 33, 0, 0), processors=1,
                                      regs={"rip": 0xFFFFF80011112222})
    status, out, err = run_cli("triage", str(dump), "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["bugcheck"]["name"] == "HYPERVISOR_ERROR" and doc["bugcheck"]["convention"]["tool"] == "HyperBone"
    first = doc["vmcs_decoded"][0]
    assert first["pa"] == truth["vmcs_pa"] and "bochs_2_7" in first["trust"]
    assert first["last_exit"]["name"] == "VMCALL" and first["last_exit"]["reason"] == 18
    assert first["last_exit"]["guest_rip"] == truth["fields"]["0x681e"]
    assert doc["scan"]["vmxon"][0]["pa"] == truth["vmxon_pa"]
    assert "available" in doc["checker"] and "note" in doc["profile"]
    status, out, err = run_cli("triage", str(dump))
    assert "HYPERVISOR_ERROR" in out and "HyperBone" in out and "VMCALL" in out and "Next steps" in out


def test_triage_explains_an_entry_failure_scenario(haswell, tmp_path):
    path, truth = haswell
    model_dir = FIXTURES / "lab" / truth["model"]
    scenarios = json.loads((model_dir / "entry_failures.json").read_text())
    failing = next(s for s in scenarios if s["outcome"]["result"] == "entry_failure")
    with open_dump(str(path)) as target:
        doc = triage(target, max_vmcs=1000)
    decoded = {d["pa"]: d for d in doc["vmcs_decoded"]}
    last = decoded[failing["vmcs_pa"]]["last_exit"]
    assert last["entry_failure"] is True and last["reason"] == failing["outcome"]["exit_reason"]


def test_qemu_core_fixture(haswell, tmp_path):
    if not QEMU_CORE.is_file():
        pytest.skip("no QEMU core fixture")
    meta = json.loads((FIXTURES / "qemu" / "lab-core.json").read_text())
    core = tmp_path / "core.elf"
    core.write_bytes(gzip.decompress(QEMU_CORE.read_bytes()))
    with open_dump(str(core)) as target:
        assert isinstance(target, ElfCoreTarget) and target.format_name == "elf64"
        ranges = target.phys_ranges()
        assert ranges[0] == (0, meta["image_size"]) and ranges[-1] == (0xFFFC0000, 0x40000)
        # QEMU's QEMU note: the reset state of a paused vCPU
        regs = target.registers()
        assert regs["rip"] == 0xFFF0 and regs["cs_base"] == 0xFFFF0000 and regs["cr0"] == 0x60000010
        assert target.has(Capability.REGS) and not target.has(Capability.RESUME | Capability.MSR_READ)
        # the image's bytes, except where QEMU maps the BIOS over the legacy window
        if haswell[1]["model"] in meta["image"]:
            image = Path(haswell[0]).read_bytes()
            assert target.read_phys(0, 0xC0000) == image[:0xC0000]
            assert target.read_phys(0x100000, len(image) - 0x100000) == image[0x100000:]
        assert target.read_phys(0xE0000, 0x20000) == target.read_phys(0xFFFE0000, 0x20000)
        result = scan(target)
    truth = meta["ground_truth"]
    assert truth["vmcs_pa"] in [v.pa for v in result.vmcs] and truth["vmxon_pa"] in [v.pa for v in result.vmxon]
    assert truth["eptp"] in [e["eptp"] for e in result.ept]
