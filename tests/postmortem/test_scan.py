"""`vtdbg scan` and the scanner core on the real Bochs lab images (and dumps made of them)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.support import dumpgen
from tests.support.lab import lab_vmcs_values
from vtdbg.core import scan as scan_mod
from vtdbg.core.locate import find_vmcs
from vtdbg.core.scan import page_candidates, scan
from vtdbg.layouts.registry import get_layout
from vtdbg.target.image import ImageTarget
from vtdbg.target.sniff import open_dump


def test_scan_finds_the_ground_truth_regions_of_every_model(lab_images):
    for model, (path, truth) in lab_images.items():
        with open_dump(str(path)) as target:
            result = scan(target)
        doc = result.to_json()
        vmcs = {v["pa"]: v for v in doc["vmcs"]}
        assert truth["vmcs_pa"] in vmcs, model
        main = vmcs[truth["vmcs_pa"]]
        assert main["revision_id"] == truth["revision_id"] and main["layout"] == "bochs_2_7"
        assert main["launch_state"] == "launched" and main["host_cr3_maps_page"] is True
        assert main["eptp"] == truth["eptp"]
        assert {"pa": truth["vmxon_pa"], "revision_id": truth["revision_id"]}.items() <= \
            next(v for v in doc["vmxon"] if v["pa"] == truth["vmxon_pa"]).items()
        assert truth["eptp"] in [e["eptp"] for e in doc["ept"]]
        summary = next(e for e in doc["ept"] if e["eptp"] == truth["eptp"])
        assert summary["mapped_bytes"] == 1 << 30 and summary["misconfigurations"] == 0
        # the VMXON page holds only the revision id: never mistaken for a VMCS
        assert truth["vmxon_pa"] not in vmcs


def test_scan_json_contract(haswell):
    path, truth = haswell
    status, out, err = run_cli("scan", str(path), "--json")
    assert status == 0, err
    doc = json.loads(out)
    for item in doc["vmxon"]:
        assert isinstance(item["pa"], int) and isinstance(item["revision_id"], int)
    for item in doc["vmcs"]:
        assert isinstance(item["pa"], int) and isinstance(item["revision_id"], int)
        assert item["layout"] is None or isinstance(item["layout"], str)
    for item in doc["ept"]:
        assert isinstance(item["eptp"], int)
    assert doc["vmcs"][0]["pa"] == truth["vmcs_pa"]


def test_two_cpu_lab_gives_two_host_cpus(lab_images):
    if "corei7_skylake_x_2cpu" not in lab_images:
        pytest.skip("no two-CPU lab fixture")
    path, truth = lab_images["corei7_skylake_x_2cpu"]
    with open_dump(str(path)) as target:
        result = scan(target)
    by_pa = {v.pa: v for v in result.vmcs}
    cpus = truth["cpus"]
    bsp, ap = by_pa[cpus[0]["vmcs_pa"]], by_pa[cpus[1]["vmcs_pa"]]
    # both CPUs run the same guest (one EPT) from different host TSSs
    assert bsp.vm == ap.vm and bsp.host_cpu != ap.host_cpu
    assert {c["vmxon_pa"] for c in cpus} <= {v.pa for v in result.vmxon}
    assert {v.values["HOST_TR_BASE"] for v in (bsp, ap)} == {0x15000, 0x15100}


def test_nested_vmcs12_is_found_in_guest_memory(haswell):
    path, truth = haswell
    image = bytearray(path.read_bytes())
    vmcs12 = 0x7F0000
    values = lab_vmcs_values(HOST_CR3=truth["guest_cr3"], HOST_RIP=0xFFFFFFFFC0001000, GUEST_CR3=0x5000,
                             EPT_POINTER=0, CPU_BASED_VM_EXEC_CONTROL=0x040061F2)
    image[vmcs12:vmcs12 + 0x1000] = get_layout("kvm_vmcs12").build_page(values, launch_state="launched")
    result = scan(ImageTarget.from_bytes(bytes(image)))
    nested = next(v for v in result.vmcs if v.pa == vmcs12)
    main = next(v for v in result.vmcs if v.pa == truth["vmcs_pa"])
    assert nested.layout == "kvm_vmcs12" and nested.nested
    assert nested.nested_in == main.vm and nested.gpa == vmcs12  # the lab's EPT is an identity map
    assert nested.vmcs01 == truth["vmcs_pa"]  # L0's guest CR3 is the L1 host CR3
    # L1's host page tables (the lab guest's, read through EPT) map the vmcs12 page
    assert nested.host_cr3_maps_page is True
    vm = next(v for v in result.vms if v["vm"] == nested.vm)
    assert vm["nested"] and vm["nested_in"] == main.vm
    assert any(h["host_rip"] == 0xFFFFFFFFC0001000 and h["nested"] for h in result.hypervisors)


@pytest.mark.parametrize("kind", ["full", "bitmap", "elf", "lime"])
def test_scan_through_dump_formats_finds_the_same(haswell, tmp_path, kind):
    path, truth = haswell
    image = path.read_bytes()
    present = [(0, 0xA0000), (0x100000, len(image) - 0x100000)]
    writer = {"full": dumpgen.write_windows_full, "bitmap": dumpgen.write_windows_bitmap,
              "elf": dumpgen.write_elf, "lime": dumpgen.write_lime}[kind]
    dump = writer(tmp_path / ("lab." + kind), image, present)
    with open_dump(str(dump)) as target:
        via_dump = [(v.pa, v.layout) for v in scan(target).vmcs]
    with open_dump(str(path)) as target:
        direct = [(v.pa, v.layout) for v in scan(target).vmcs if v.pa < 0xA0000 or v.pa >= 0x100000]
    assert via_dump == direct and (truth["vmcs_pa"], "bochs_2_7") in via_dump


def test_locate_uses_the_same_filter(haswell):
    path, truth = haswell
    with open_dump(str(path)) as target:
        found = find_vmcs(target)
        assert found[0].pa == truth["vmcs_pa"]
        assert [c.pa for c in found] == [v.pa for v in scan(target, with_ept=False).vmcs]
        assert find_vmcs(target, limit=2) == found[:2]


def test_page_filter_reads_through_read_phys_when_no_view(haswell):
    path, truth = haswell
    data = path.read_bytes()
    via_bytes = page_candidates(ImageTarget.from_bytes(data))
    with open_dump(str(path)) as target:
        assert hasattr(target, "phys_view")
        assert page_candidates(target) == via_bytes
    assert (truth["vmcs_pa"], truth["revision_id"]) in via_bytes


def test_progress_is_reported(haswell):
    path, _ = haswell
    calls = []
    with open_dump(str(path)) as target:
        scan(target, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] == path.stat().st_size


def test_hostile_image_full_of_revision_ids_is_bounded(monkeypatch):
    page = bytearray(0x1000)
    page[0:4] = (0x2B).to_bytes(4, "little")
    page[8] = 1
    image = bytes(page) * 512
    monkeypatch.setattr(scan_mod, "MAX_CANDIDATES", 100)
    result = scan(ImageTarget.from_bytes(image))
    assert result.candidates == 100 and any("only the first 100" in w for w in result.warnings)


def test_shadow_vmcs_and_abort_indicator(haswell):
    path, truth = haswell
    image = bytearray(path.read_bytes())
    main = truth["vmcs_pa"]
    shadow, aborted = 0x7E0000, 0x7E1000
    image[shadow:shadow + 0x1000] = image[main:main + 0x1000]
    image[shadow + 3] |= 0x80  # bit 31: shadow VMCS
    image[aborted:aborted + 0x1000] = image[main:main + 0x1000]
    image[aborted + 4] = 0x77  # VMX-abort indicator no SDM value uses
    found = {v.pa: v for v in scan(ImageTarget.from_bytes(bytes(image))).vmcs}
    assert found[shadow].shadow and found[shadow].revision_id == truth["revision_id"]
    assert aborted not in found


def test_scan_text_output_and_file_vs_target(haswell):
    path, truth = haswell
    status, out, err = run_cli("scan", str(path))
    assert status == 0 and "VMCS regions" in out and hex(truth["vmcs_pa"]) in out
    status, _, err = run_cli("--target", "dump:" + str(path), "scan", str(path))
    assert status == 2 and "not both" in err


def test_scan_crosses_runs_that_touch_in_memory_but_not_in_the_file(haswell, tmp_path):
    import struct

    path, truth = haswell
    image = path.read_bytes()[:0x800000]
    lime = tmp_path / "split.lime"
    with open(lime, "wb") as out:  # two LiME ranges back to back in PA, split inside the VMCS page's chunk
        for start, end in ((0, 0x20FFF), (0x21000, len(image) - 1)):
            out.write(struct.pack("<IIQQQ", 0x4C694D45, 1, start, end, 0))
            out.write(image[start:end + 1])
    with open_dump(str(lime)) as target:
        assert target.phys_ranges() == [(0, len(image))] and len(target.runs()) == 2
        found = [v.pa for v in scan(target).vmcs]
    assert truth["vmcs_pa"] in found
