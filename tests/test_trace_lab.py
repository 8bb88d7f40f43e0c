"""`vtdbg trace` and `vtdbg step` on the live Bochs backend against the lab's own exit log.

The lab (tests/lab) first runs its VM-entry failure scenarios -- each VMLAUNCH that fails
with an entry-failure exit is a VM exit too -- then its main guest, which makes 17 exits
in a known order.  A one-shot `trace` boots the lab and records from the very first exit,
so the expected list is the scenario exits of entry_failures.json followed by the 17 of
ground_truth.json, compared field by field (reason, qualification, guest RIP, ...).

Marked ``lab``; skipped without bochs-bin/nasm or when the installed Bochs is not the
release the fixtures were made with.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from tests.conftest import run_cli
from tests.lab import run as lab
from vtdbg.core.trace import TraceLimits, Tracer
from vtdbg.frontends.cli import run

pytestmark = pytest.mark.lab

MODEL = "corei7_skylake_x"
#: ground-truth exit keys -> trace JSON keys
KEYS = {"reason": "exit_reason_full", "qualification": "qualification", "guest_rip": "guest_rip",
        "instruction_len": "instruction_len", "guest_physical_address": "guest_physical_address",
        "guest_linear_address": "guest_linear_address", "intr_info": "intr_info",
        "intr_error_code": "intr_error_code", "idt_vectoring_info": "idt_vectoring_info",
        "idt_vectoring_error_code": "idt_vectoring_error_code", "instruction_info": "instruction_info",
        "guest_rsp": "guest_rsp", "guest_rflags": "guest_rflags"}


def fixtures(model: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    base = lab.FIXTURES_ROOT / model
    return (json.loads((base / "ground_truth.json").read_text()),
            json.loads((base / "entry_failures.json").read_text()))


def scenario_exits(model: str) -> List[Dict[str, Any]]:
    """The VM exits the scenarios cause: entry failures, and launches that got in."""
    return [s["outcome"] for s in fixtures(model)[1] if s["outcome"]["result"] in ("entry_failure", "ok")]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = lab.tools_available()
    if reason is not None:
        pytest.skip(reason)
    version = lab.bochs_version()
    made_with = fixtures(MODEL)[0]["bochs_version"]
    if version != made_with:
        pytest.skip("fixtures were made with Bochs %s, this is %s" % (made_with, version))
    return lab.build_image(tmp_path_factory.mktemp("trace-lab"))


def bochsrc(image: Path, folder: Path, model: str = MODEL) -> Path:
    """An ordinary Bochs config that boots the lab (made with the lab runner's helpers)."""
    path = folder / ("%s.bxrc" % model)
    path.write_text(lab.bochsrc_text(model, image.resolve(), folder / ("%s.log" % model)))
    return path


def compare_main(docs: List[Dict[str, Any]], truth: List[Dict[str, Any]]) -> None:
    assert len(docs) == len(truth)
    for doc, want in zip(docs, truth):
        for gt_key, key in KEYS.items():
            assert doc[key] == want[gt_key], (want["index"], want["name"], gt_key)
        assert doc["exit_reason"] == want["reason"] & 0xFFFF and doc["entry_failure"] is False
        assert doc["cpu"] == 0


def test_trace_records_exactly_the_exits_the_lab_made(image, tmp_path):
    truth, _ = fixtures(MODEL)
    scenarios = scenario_exits(MODEL)
    count = len(scenarios) + len(truth["exits"])
    status, out, err = run_cli("--target", "bochs:%s" % bochsrc(image, tmp_path), "trace", "--count", str(count),
                               "--json")
    assert status == 0, err
    docs = json.loads(out)
    assert [d["index"] for d in docs] == list(range(count)) == [d["seen_index"] for d in docs]
    for doc, outcome in zip(docs, scenarios):
        assert doc["exit_reason"] == outcome["exit_reason"]
        assert doc["entry_failure"] is (outcome["result"] == "entry_failure")
        assert doc["qualification"] == outcome["qualification"]
    compare_main(docs[len(scenarios):], truth["exits"])
    # the natural arguments: CPUID leaf 0, RDMSR 0x174, WRMSR 0xC0000102, ports 0x71/0x9000, CR3/CR4/CR8...
    main = docs[len(scenarios):]
    assert [(d["argument_kind"], d["argument"]) for d in main[:10]] == [
        ("leaf", 0), ("msr", 0x174), ("msr", 0xC0000102), ("port", 0x71), ("port", 0x9000), ("cr", 3), ("cr", 4),
        ("cr", 8), ("dr", 7), ("linear_address", 0x123000)]
    assert [d["argument"] for d in main[11:15]] == [6, 0x40, 14, 0x600123]


def test_a_trace_the_guest_cannot_complete_reports_what_it_saw_and_exits_2(image, tmp_path):
    truth, _ = fixtures(MODEL)
    made = len(scenario_exits(MODEL)) + len(truth["exits"])
    status, out, err = run_cli("--target", "bochs:%s" % bochsrc(image, tmp_path), "trace", "--count",
                               str(made + 5), "--json", "--timeout", "30")
    assert status == 2
    docs = json.loads(out)
    assert len(docs) == made and docs[-1]["reason_name"] == "VMCALL"
    assert "before %d exits" % (made + 5) in err and "halted" in err


def test_filters_on_the_live_lab(image, tmp_path):
    config = "bochs:%s" % bochsrc(image, tmp_path)
    status, out, err = run_cli("--target", config, "trace", "--filter", "io-in", "--filter", "exception #PF",
                               "--filter", "msr-write IA32_KERNEL_GS_BASE", "--count", "3", "--json")
    assert status == 0, err
    docs = json.loads(out)
    assert [(d["reason_name"], d["argument"]) for d in docs] == [
        ("MSR_WRITE", 0xC0000102), ("IO_INSTRUCTION", 0x71), ("EXCEPTION_NMI", 14)]


class Session:
    """A shell session over one Bochs target (the shell's context, driven line by line)."""

    def __init__(self, config: Path) -> None:
        from vtdbg.frontends.shell import ShellContext
        from vtdbg.target.bochs import BochsTarget

        self.target = BochsTarget(str(config))
        self.ctx = ShellContext(target_uri="bochs:%s" % config, opener=lambda uri: self.target)

    def __call__(self, *argv: str) -> Tuple[int, Any, str]:
        out, err = io.StringIO(), io.StringIO()
        status = run(list(argv) + ["--json"], out, err, context=self.ctx)
        return status, json.loads(out.getvalue()) if out.getvalue().strip() else None, err.getvalue()

    def close(self) -> None:
        self.ctx.close()


def test_step_walks_through_the_exits_one_by_one(image, tmp_path):
    truth, _ = fixtures(MODEL)
    session = Session(bochsrc(image, tmp_path))
    try:
        status, first, err = session("step", "--until", "cpuid")
        assert status == 0, err
        walked = list(first)
        for _ in truth["exits"][1:]:
            status, docs, err = session("step")
            assert status == 0, err
            assert len(docs) == 1
            walked += docs
        compare_main(walked, truth["exits"])
        offset = len(scenario_exits(MODEL))
        assert [d["seen_index"] for d in walked] == list(range(offset, offset + len(truth["exits"])))
        status, docs, err = session("step")  # the lab halts after its VMCALL
        assert status == 2 and docs == [] and "halted" in err
    finally:
        session.close()


def test_trace_leaves_no_vm_exit_switch_and_costs_one_line_per_exit(image, tmp_path):
    truth, _ = fixtures(MODEL)
    scenarios = len(scenario_exits(MODEL))
    session = Session(bochsrc(image, tmp_path))
    try:
        status, docs, err = session("trace", "--count", str(scenarios))
        assert status == 0 and len(docs) == scenarios, err
        # the switch is off again: the guest now runs to the magic breakpoint before its main VMLAUNCH
        event = session.target.cont(30)
        assert event["event"] == "magic", event
        from vtdbg.target.bochs_exits import BochsExitSource

        source = BochsExitSource(session.target)
        before = session.target.transactions
        outcome = Tracer(source).run(TraceLimits(count=len(truth["exits"]), timeout=30))
        lines = session.target.transactions - before
        compare_main([r.to_json() for r in outcome.records], truth["exits"])
        exits = len(truth["exits"])
        # switch on + off, one `c` per exit, one combined line per exit, one re-read when the VMCS moved
        assert lines == 2 + exits + exits + 1
        assert source.armed_count() == 0
    finally:
        session.close()


def test_ctrl_c_during_a_trace_switches_the_stop_off(image, tmp_path, monkeypatch):
    from vtdbg.target.bochs import BochsTarget

    session = Session(bochsrc(image, tmp_path))
    original = BochsTarget.run_to_vm_exit
    calls = {"n": 0}

    def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    try:
        monkeypatch.setattr(BochsTarget, "run_to_vm_exit", interrupted)
        status, docs, err = session("trace")
        assert status == 130 and len(docs) == 2 and "interrupted" in err
        monkeypatch.setattr(BochsTarget, "run_to_vm_exit", original)
        assert session.target.alive
        assert session.target.cont(30)["event"] == "magic"
    finally:
        session.close()


@pytest.mark.parametrize("model", ["tigerlake", "corei7_haswell_4770"])
def test_the_main_run_matches_on_the_other_models(image, tmp_path, model):
    truth, _ = fixtures(model)
    config = "bochs:%s" % bochsrc(image, tmp_path, model)
    status, out, err = run_cli("--target", config, "trace", "--filter", "any", "--count",
                               str(len(scenario_exits(model)) + len(truth["exits"])), "--json")
    assert status == 0, err
    compare_main(json.loads(out)[-len(truth["exits"]):], truth["exits"])


def test_breakpoints_at_host_rip_and_handler_ticks_on_bochs(image, tmp_path):
    """The pykd-style path on the live lab: a breakpoint at HOST_RIP (read from the lab's
    ground truth) finds the same 17 exits; a breakpoint at the handler's VMRESUME times
    every handler exactly, in instructions (the VMCALL exit never resumes)."""
    truth, _ = fixtures(MODEL)
    host_rip = truth["fields"]["0x6c16"]
    config = "bochs:%s" % bochsrc(image, tmp_path)
    status, out, err = run_cli("--target", config, "trace", "--at", hex(host_rip), "--vmcs", hex(truth["vmcs_pa"]),
                               "--count", str(len(truth["exits"])), "--json")
    assert status == 0, err
    docs = json.loads(out)
    compare_main(docs, truth["exits"])
    assert {d["site"] for d in docs} == {"at 0x%x" % host_rip} and docs[0]["gprs"]["rax"] == 0
    # the lab is loaded at 0x7C00; its exit handler resumes with the first VMRESUME after HOST_RIP
    code = image.read_bytes()
    resume = 0x7C00 + code.index(b"\x0f\x01\xc3", host_rip - 0x7C00)
    total = len(scenario_exits(MODEL)) + len(truth["exits"])
    status, out, err = run_cli("--target", config, "trace", "--resume-at", hex(resume), "--count", str(total),
                               "--json")
    assert status == 0, err
    main = json.loads(out)[-len(truth["exits"]):]
    compare_main(main, truth["exits"])
    assert all(d["handler_ticks"] and 1000 < d["handler_ticks"] < 100000 for d in main[:-1])
    assert main[-1]["handler_ticks"] is None
