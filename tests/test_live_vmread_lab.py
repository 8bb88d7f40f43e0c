"""Live VMREAD and layout discovery on Bochs (a real VT-x implementation), through BochsTarget.

The lab hypervisor (tests/lab) runs to its first magic breakpoint after the last VM exit (VMX
root, its VMCS current and launched).  There vtdbg's batched VMREAD must equal the lab's own
VMREAD of every field (ground_truth.json "fields"), discovery with the shipped layouts hidden
must reproduce bochs_2_7.json for every field the model supports, all 64 MiB of RAM and the
registers must be exactly as before, and the lab must then run on to VMCLEAR and VMXOFF.
A second test stops in the middle of the guest's run and checks that the guest's remaining
exits and final VMCS are those of an undisturbed run.  Marked ``lab``; skipped without
bochs-bin/nasm/unshare or when the installed Bochs is not the one the fixtures came from.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.conftest import FIXTURES, run_cli
from tests.lab import run as lab
from vtdbg.core import discover, live
from vtdbg.core import vmread_stub as stub
from vtdbg.layouts import registry
from vtdbg.layouts.model import parse_layout
from vtdbg.target.record import RecordingTarget

pytestmark = pytest.mark.lab

#: free RAM in the lab (tests/fixtures/lab/README.md: the probe table ends at 0x1C0000, the
#: EPT-hole and #PF-hole pages are at 6 and 8 MiB) inside the first 2 MiB page, whose
#: Accessed/Dirty bits the lab has already set
SCRATCH = 0x1F0000
MiB = 1 << 20
BUDGET = 8
BOCHS_LAYOUT = Path(registry.__file__).resolve().parent / "data" / "bochs_2_7.json"


def truth(model: str) -> Dict[str, Any]:
    return json.loads((FIXTURES / "lab" / model / "ground_truth.json").read_text())


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = lab.tools_available()
    if reason is not None:
        pytest.skip(reason)
    version = lab.bochs_version()
    if version != truth(lab.MODELS[0])["bochs_version"]:
        pytest.skip("fixtures were made with Bochs %s, this is %s" % (truth(lab.MODELS[0])["bochs_version"], version))
    return lab.build_image(tmp_path_factory.mktemp("live-lab"))


def config(image: Path, folder: Path, model: str) -> Path:
    path = folder / ("%s.bxrc" % model)
    path.write_text(lab.bochsrc_text(model, image.resolve(), folder / ("%s.log" % model)))
    return path


@pytest.fixture
def bochs(image: Path, tmp_path: Path) -> Iterator[Any]:
    from vtdbg.target.bochs import BochsTarget

    opened: List[Any] = []

    def start(model: str) -> Any:
        target = BochsTarget(str(config(image, tmp_path, model)), timeout=60)
        opened.append(target)
        return target

    yield start
    for target in opened:
        target.close()


def run_to_ground_truth(target: Any) -> None:
    """Continue to the first BREAK 1: after the last exit and the ground-truth lines."""
    deadline = time.monotonic() + 60
    while "GT END" not in target.console_output():
        event = target.cont(timeout=max(deadline - time.monotonic(), 1))
        assert event["event"] in ("magic", "vmexit"), event


def snapshot(target: Any, folder: Path) -> Tuple[bytes, Dict[str, int], Dict[str, Any]]:
    """All 64 MiB of RAM (one ``writemem``: the host identity-maps 4 GiB, so linear is
    physical), the registers, Bochs's VMX state."""
    dump = folder / ("ram-%d.bin" % time.monotonic_ns())
    answer = target.command('writemem "%s" 0 0x%x' % (dump, 64 * MiB), timeout=60)
    assert dump.exists(), answer
    data = dump.read_bytes()
    dump.unlink()
    state = target.vmx_state()
    state.pop("cache", None)
    return data, target.registers(), state


def assert_same(before: Tuple[bytes, Dict[str, int], Dict[str, Any]],
                after: Tuple[bytes, Dict[str, int], Dict[str, Any]]) -> None:
    if before[0] != after[0]:
        diffs = [i for i in range(len(before[0])) if before[0][i] != after[0][i]]
        raise AssertionError("RAM differs at %s" % ", ".join("0x%x" % d for d in diffs[:8]))
    assert before[1] == after[1]
    assert before[2] == after[2]


def expected_fields(model: str) -> Dict[int, int]:
    """The lab's VMREAD of every supported encoding (FULL and HIGH)."""
    return {int(k, 16): v for k, v in truth(model)["fields"].items()}


@pytest.mark.parametrize("model", lab.MODELS)
def test_live_read_and_discovery_equal_the_labs_own_vmread(bochs, tmp_path, monkeypatch, model):
    target = bochs(model)
    run_to_ground_truth(target)
    sink = io.StringIO()
    recorder = RecordingTarget(target, sink)
    scratch = live.scratch_at(recorder, SCRATCH)
    before = snapshot(target, tmp_path)

    # -- the batched read ------------------------------------------------------------------
    lines0, seq0 = target.transactions, recorder.seq
    read = live.live_read(recorder, scratch)
    lines = target.transactions - lines0
    ops = [json.loads(line) for line in sink.getvalue().splitlines()[1:]][seq0:]
    beyond = [r["op"] for r in ops if r["op"] not in ("registers", "set_register", "set_registers")]
    assert len(beyond) <= BUDGET, beyond
    assert read.method == "enum"
    values = read.vmcs.values
    wanted = expected_fields(model)
    for encoding, value in wanted.items():
        if encoding & 1 and (encoding >> 13) & 3 == 1:
            assert values[encoding & ~1] >> 32 == value, hex(encoding)
        else:
            assert values[encoding] == value, hex(encoding)
    supported = {e for e in wanted if not (e & 1 and (e >> 13) & 3 == 1)}
    unsupported = {int(e, 16) for e in truth(model)["unsupported"]} - {e | 1 for e in supported}
    assert all(read.vmcs.status.get(e) == "vmfail_valid" for e in unsupported if e in read.vmcs.status)
    assert set(values) >= supported
    assert_same(before, snapshot(target, tmp_path))

    # the recording shows the stub written, the resume, the read-back and the restore
    core = [(r["op"], r["args"]) for r in ops if r["op"] not in ("registers", "set_register", "set_registers")]
    # VMX state, save, stub written, resume, read-back, resume (refill + INVD), restore, verify
    assert [op for op, _ in core] == ["vmx_state", "read_phys", "write_phys", "resume", "read_phys", "resume",
                                      "write_phys", "read_phys"]
    written = bytes.fromhex(core[2][1]["data"]["hex"])
    assert core[2][1]["pa"] == SCRATCH and written == stub.TAIL + stub.ENUM_CODE
    assert core[6][1]["pa"] == SCRATCH and core[6][1]["data"]["hex"] == "00" * len(stub.TAIL)
    print("\n%s: live read %d fields, %d transactions beyond register set-up, %d Bochs lines in all"
          % (model, len(values), len(beyond), lines))

    # -- discovery with the shipped layouts hidden -------------------------------------------
    hidden = tmp_path / "no-builtin-layouts"
    hidden.mkdir()
    monkeypatch.setattr(registry, "_BUILTIN_DIR", str(hidden))
    monkeypatch.setattr(registry, "_builtin_cache", None)
    assert registry.builtin_layouts() == {}
    found = discover.discover_layout(recorder, scratch)
    reference = parse_layout(json.loads(BOCHS_LAYOUT.read_text()), str(BOCHS_LAYOUT))
    same, differ = discover.compare_layout(found.hits, reference, supported)
    assert not differ and set(same) == supported & {f.encoding for f in reference.fields}
    assert set(found.written) == supported and not found.not_found and not found.ambiguous
    assert found.revision_id == truth(model)["revision_id"]
    assert found.original_pointer == truth(model)["vmcs_pa"]
    assert_same(before, snapshot(target, tmp_path))
    # saved, it is what a memory decode of this revision now picks (the shipped ones are hidden)
    home = Path(registry.vtdbg_home()) / "layouts"
    home.mkdir(parents=True, exist_ok=True)
    doc = found.layout_doc("lab_%s" % model)
    (home / ("lab_%s.json" % model)).write_text(json.dumps(doc))
    from vtdbg.core.vmcs import decode_vmcs_page

    # (not read_vmcs: that prefers the layout the Bochs backend names, which is hidden here)
    decoded = decode_vmcs_page(recorder.read_phys(truth(model)["vmcs_pa"], 0x1000))
    assert decoded.layout == "lab_%s" % model
    assert {e: v for e, v in decoded.values.items() if e in supported} == \
        {e: v for e, v in values.items() if e in supported}
    print("%s: discovery: %d markers written, %d found, %d equal to bochs_2_7.json, %d rejected, %d transactions"
          % (model, len(found.written), len(found.hits), len(same), len(found.rejected), found.transactions or -1))

    # -- and the lab goes on: VMCLEAR of its (still current, still launched) VMCS, VMXOFF ----
    deadline = time.monotonic() + 60
    while "VMXOFF done" not in target.console_output() and time.monotonic() < deadline:
        event = target.cont(timeout=30)
        assert event["event"] == "magic", event
    assert "VMCLEAR done" in target.console_output() and "VMXOFF done" in target.console_output()


def test_in_the_middle_of_the_run_the_guest_carries_on_undisturbed(bochs, tmp_path):
    model = lab.MODELS[0]
    target = bochs(model)
    # the VM-entry failure scenarios exit first, each on its own VMCS; the main guest's
    # exits are the ones with the lab's main VMCS current
    for _ in range(200):
        assert target.run_to_vm_exit()["event"] == "vmexit"
        if target.vmx_state()["vmcsptr"] == truth(model)["vmcs_pa"]:
            break
    # stop at the guest's third exit: VMX root at HOST_RIP, the guest still to be resumed
    assert target.run_exits(2)["complete"]
    before = snapshot(target, tmp_path)
    read = live.live_read(target, live.scratch_at(target, SCRATCH))
    assert read.vmcs.values[0x4402] & 0xFFFF == truth(model)["exits"][2]["reason"] & 0xFFFF
    found = discover.discover_layout(target, live.scratch_at(target, SCRATCH))
    assert len(found.hits) == len(found.written)
    assert_same(before, snapshot(target, tmp_path))
    run_to_ground_truth(target)
    parsed = lab.parse_output(target.console_output())
    assert parsed["exits"] == truth(model)["exits"]
    assert {"0x%04x" % e: v for e, v in parsed["fields"].items()} == truth(model)["fields"]


def test_scripted_one_shot_cli(image, tmp_path):
    model = lab.MODELS[0]
    bxrc = config(image, tmp_path, model)
    status, out, err = run_cli("--target", "bochs:%s" % bxrc, "vmcs", "--live", "--after-exits", "3",
                               "--scratch", hex(SCRATCH), "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["source"] == "live" and doc["run"]["exits_seen"] == 3 and doc["live"]["method"] == "enum"
    assert doc["run"]["last_stop"]["event"] == "vmexit"
    assert all(s in ("ok", "vmfail_valid") for s in doc["status"].values())
    # Bochs keeps the VMCS in memory: at a VM-exit stop the page equals VMREAD
    status, out, err = run_cli("--target", "bochs:%s" % bxrc, "vmcs", "--after-exits", "3", "--json",
                               "--at", hex(doc["address"]), "--layout", "bochs_2_7")
    assert status == 0, err
    memory = json.loads(out)["fields"]
    assert {k: v for k, v in doc["fields"].items() if k in memory} == \
        {k: v for k, v in memory.items() if k in doc["fields"]}
    status, out, err = run_cli("--target", "bochs:%s" % bxrc, "vmcs", "--live", "--after-exits", "3",
                               "--scratch", hex(SCRATCH))
    assert status == 0 and "live VMREAD" in out
