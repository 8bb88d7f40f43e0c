"""`vtdbg trace` / `step` on the pykd stand-in with a simulated three-CPU hypervisor
(tests/support/trace_machine.py): filters by reason, argument and CPU select exactly the
intended exits, breakpoint sites come from the profile (entry stub, per-reason handlers,
resume function), the per-exit cost is two transactions beyond the stop, and a failure in
any phase -- arming, running, reading, the callback, the record hook, Ctrl+C, a vanished
target -- leaves no breakpoint behind."""
from __future__ import annotations

import io
import json
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from tests.support import trace_machine as tm
from vtdbg.commands.registry import Context
from vtdbg.core.trace import BreakpointSource, Site, TraceLimits, TraceLog, Tracer
from vtdbg.frontends.cli import run
from vtdbg.target.pykd_backend import PykdTarget
from vtdbg.target.record import RecordingTarget

ALL_VMCS = ["--vmcs", "0=0x40000", "--vmcs", "1=0x41000", "--vmcs", "2=0x42000"]


@pytest.fixture
def pykd(monkeypatch, isolated_home):
    """The stand-in as ``pykd``, the simulated hypervisor's profile in $VTDBG_HOME."""
    module = tm.load_standin()
    monkeypatch.setitem(sys.modules, "pykd", module)
    tm.write_profile(isolated_home)
    yield module
    module._install(None)


def cli(target: Any, *argv: str) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out, err, context=Context(target_uri="test:", opener=lambda uri: target))
    return status, out.getvalue(), err.getvalue()


def trace_json(target: Any, *argv: str) -> List[Dict[str, Any]]:
    status, out, err = cli(target, "trace", *argv, "--json")
    assert status == 0, err
    return json.loads(out)


def key(doc: Dict[str, Any]) -> Tuple[int, int, Optional[int]]:
    return doc["cpu"], doc["exit_reason"], doc["argument"]


def expected(predicate: Callable[[tm.Exit], bool]) -> List[Tuple[int, int, Optional[int]]]:
    """What the script says a filter should select, computed without vtdbg's decoders."""
    out = []
    for item in tm.DEFAULT_SCRIPT:
        if not predicate(item):
            continue
        argument = {"CPUID": item.rax, "MSR_READ": item.rcx, "MSR_WRITE": item.rcx,
                    "IO_INSTRUCTION": item.qualification >> 16, "CR_ACCESS": item.qualification & 0xF,
                    "EXCEPTION_NMI": item.intr_info & 0xFF, "EPT_VIOLATION": item.gpa,
                    "VMCALL": item.rax}.get(item.reason)
        out.append((item.cpu, item.number, argument))
    return out


def io_in(item: tm.Exit) -> bool:
    return item.reason == "IO_INSTRUCTION" and bool(item.qualification & 8)


FILTER_CASES = [
    ([], lambda e: True),
    (["cpuid"], lambda e: e.reason == "CPUID"),
    (["cpuid", "0x40000000"], lambda e: e.reason == "CPUID" and e.rax == 0x40000000),
    (["cpuid", "0x40000000", "--cpu", "2"], lambda e: e.reason == "CPUID" and e.rax == 0x40000000 and e.cpu == 2),
    (["msr-read"], lambda e: e.reason == "MSR_READ"),
    (["msr-read", "IA32_EFER"], lambda e: e.reason == "MSR_READ" and e.rcx == 0xC0000080),
    (["msr", "0xc0000080"], lambda e: e.reason in ("MSR_READ", "MSR_WRITE") and e.rcx == 0xC0000080),
    (["msr-write"], lambda e: e.reason == "MSR_WRITE"),
    (["io-in"], io_in),
    (["io-out"], lambda e: e.reason == "IO_INSTRUCTION" and not io_in(e)),
    (["io-in", "0x71", "--cpu", "1"], lambda e: io_in(e) and e.cpu == 1),
    (["io", "0x80"], lambda e: e.reason == "IO_INSTRUCTION" and e.qualification >> 16 == 0x80),
    (["cr", "cr3"], lambda e: e.reason == "CR_ACCESS" and e.qualification & 0xF == 3),
    (["cr-read"], lambda e: e.reason == "CR_ACCESS" and (e.qualification >> 4) & 3 == 1),
    (["exception"], lambda e: e.reason == "EXCEPTION_NMI" and (e.intr_info >> 8) & 7 != 2),
    (["exception", "#PF"], lambda e: e.reason == "EXCEPTION_NMI" and e.intr_info & 0xFF == 14),
    (["nmi"], lambda e: e.reason == "EXCEPTION_NMI" and (e.intr_info >> 8) & 7 == 2),
    (["ept-violation", "0x600000-0x600fff"], lambda e: e.reason == "EPT_VIOLATION" and 0x600000 <= e.gpa <= 0x600FFF),
    (["0x30"], lambda e: e.reason == "EPT_VIOLATION"),
    (["entry-failure"], lambda e: e.entry_failure),
    (["vmcall", "0x600d"], lambda e: e.reason == "VMCALL" and e.rax == 0x600D),
    (["hlt", "--cpu", "0"], lambda e: e.reason == "HLT" and e.cpu == 0),
    (["--cpu", "1"], lambda e: e.cpu == 1),
    (["--filter", "cpuid 0", "--filter", "exception #UD"],
     lambda e: (e.reason == "CPUID" and e.rax == 0) or (e.reason == "EXCEPTION_NMI" and e.intr_info & 0xFF == 6)),
]


@pytest.mark.parametrize("argv,predicate", FILTER_CASES, ids=[" ".join(c[0]) or "all" for c in FILTER_CASES])
def test_filters_select_exactly_the_intended_exits(pykd, argv, predicate):
    sim = tm.scripted_simulator(pykd)
    target = PykdTarget(pykd)
    docs = trace_json(target, *argv)
    wanted = expected(predicate)
    assert [key(d)[:2] for d in docs] == [w[:2] for w in wanted]
    for doc, want in zip(docs, wanted):
        # at a per-reason handler the guest registers are unknown, so a GPR argument is too
        assert doc["argument"] == want[2] or (doc["argument"] is None and doc["site"].startswith("simhv!SimHandle"))
    assert [d["index"] for d in docs] == list(range(len(docs)))
    assert all(d["vmcs_pa"] == tm.VMCS_BASE + 0x1000 * d["cpu"] for d in docs)
    assert sim.breakpoints == {}


def test_a_cpu_filter_is_decided_in_the_callback_without_stopping(pykd):
    sim = tm.scripted_simulator(pykd)
    docs = trace_json(PykdTarget(pykd), "--cpu", "1")
    assert {d["cpu"] for d in docs} == {1}
    # one go() per CPU-1 exit plus the last one that ran out of events: CPU 0/2 exits never stopped
    assert sim.calls.count("go") == len(docs) + 1
    assert sim.breakpoints == {}


def test_records_carry_the_vmcs_fields_and_guest_registers(pykd):
    tm.scripted_simulator(pykd)
    docs = trace_json(PykdTarget(pykd), "--count", "2")
    first = docs[0]
    assert first["exit_reason"] == 10 and first["entry_failure"] is False and first["reason_name"] == "CPUID"
    assert first["guest_rip"] == 0x401000 and first["guest_rsp"] == 0x7FF000 and first["instruction_len"] == 2
    assert first["host_rip"] == tm.ENTRY and first["site"] == "simhv!SimExitEntry"
    assert first["gprs"]["rax"] == 0 and "rsp" not in first["gprs"]
    assert docs[1]["argument_kind"] == "leaf" and docs[1]["argument"] == 0x40000000
    assert docs[1]["layout"] == "bochs_2_7"


def test_entry_failure_is_bit_31_and_exit_reason_is_basic(pykd):
    tm.scripted_simulator(pykd)
    docs = trace_json(PykdTarget(pykd), "entry-failure")
    assert [(d["exit_reason"], d["entry_failure"], d["exit_reason_full"]) for d in docs] == [(33, True, 0x80000021)]


def test_per_reason_handler_functions_are_the_sites_when_no_register_is_needed(pykd):
    sim = tm.scripted_simulator(pykd)
    target = PykdTarget(pykd)
    docs = trace_json(target, "cpuid")
    assert {d["site"] for d in docs} == {"simhv!SimHandleCpuid"}
    assert all(d["gprs"] is None for d in docs)  # inside a C handler the GPRs are not the guest's
    # only the CPUID handler was a breakpoint: three CPUID exits, three stops (+ the final go)
    assert sim.calls.count("go") == 4
    # a leaf filter needs RAX, so it breaks at the entry stub instead
    sim = tm.scripted_simulator(pykd)
    docs = trace_json(PykdTarget(pykd), "cpuid", "0x40000000")
    assert {d["site"] for d in docs} == {"simhv!SimExitEntry"} and len(docs) == 2
    sim = tm.scripted_simulator(pykd)
    docs = trace_json(PykdTarget(pykd), "cpuid", "--site", "entry")
    assert {d["site"] for d in docs} == {"simhv!SimExitEntry"} and len(docs) == 3
    assert sim.breakpoints == {}


def test_guest_registers_come_from_the_profile_frame_at_the_c_handler(pykd):
    sim = tm.scripted_simulator(pykd)
    docs = trace_json(PykdTarget(pykd), "--site", "frame")
    assert [key(d) for d in docs] == expected(lambda e: True)
    assert {d["site"] for d in docs} == {"simhv!SimExitHandler"}
    assert all("rsp" not in d["gprs"] and d["gprs"]["rax"] != 0xDEAD for d in docs)
    assert sim.breakpoints == {}


def test_without_a_profile_host_rip_from_the_vmcs_is_the_site(pykd, isolated_home):
    (isolated_home / "profiles" / "simhv.json").unlink()
    sim = tm.scripted_simulator(pykd)
    docs = trace_json(PykdTarget(pykd), "--count", "3", *ALL_VMCS)
    assert [d["site"] for d in docs] == ["HOST_RIP 0x%x" % tm.ENTRY] * 3
    assert sim.breakpoints == {}


def test_latency_times_the_handler_with_the_profile_resume_function(pykd):
    sim = tm.scripted_simulator(pykd)
    docs = trace_json(PykdTarget(pykd), "--latency", "--count", "4")
    assert len(docs) == 4 and all(d["handler_seconds"] is not None and d["handler_seconds"] >= 0 for d in docs)
    assert sim.breakpoints == {}


def test_break_stops_at_the_first_match_and_step_continues(pykd):
    from vtdbg.frontends.shell import ShellContext

    sim = tm.scripted_simulator(pykd)
    target = PykdTarget(pykd)
    ctx = ShellContext(target_uri="test:", opener=lambda uri: target)

    def shell(*argv: str) -> Any:
        out, err = io.StringIO(), io.StringIO()
        status = run(list(argv) + ["--json"], out, err, context=ctx)
        assert status == 0, err
        return json.loads(out.getvalue())

    hit = shell("trace", "msr-read", "--break", "--site", "entry")
    assert [key(d) for d in hit] == [(0, 31, 0x174)]
    assert sim.breakpoints == {}  # stopped there, nothing left armed
    steps = [shell("step")[0] for _ in range(3)]
    assert [key(d) for d in steps] == [(2, 31, 0xC0000080), (1, 32, 0xC0000080), (1, 30, 0x71)]
    assert [d["seen_index"] for d in steps] == [4, 5, 6]
    until = shell("step", "--until", "exception", "#PF")
    assert [key(d) for d in until] == [(2, 0, 14)]
    events = shell("events")
    assert [(e["filter"]["text"], e["hits"], e["actions"]) for e in events] == [
        ("msr-read", 1, ["record", "break"])]
    shell("events", "disable", "1")
    rest = shell("trace", "--cpu", "2", "--count", "1")
    assert [key(d) for d in rest] == [(2, 48, 0x600123)]
    assert sim.breakpoints == {}


def test_events_need_a_session(pykd):
    tm.scripted_simulator(pykd)
    status, out, err = cli(PykdTarget(pykd), "events", "add", "cpuid")
    assert status == 2 and "shell session" in err
    status, out, err = cli(PykdTarget(pykd), "events", "--json")
    assert status == 0 and json.loads(out) == []


def test_command_action_runs_against_the_stopped_exit(pykd):
    tm.scripted_simulator(pykd)
    docs = trace_json(PykdTarget(pykd), "io-in", "--command", "vmcs --json")
    assert len(docs) == 2
    for doc in docs:
        assert '"VM_EXIT_REASON"' in doc["command_output"]


def test_log_is_whole_lines_and_stats_read_it(pykd, tmp_path):
    tm.scripted_simulator(pykd)
    log = tmp_path / "exits.jsonl"
    docs = trace_json(PykdTarget(pykd), "--log", str(log))
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b""
    parsed = [json.loads(line) for line in lines[:-1]]
    assert parsed[0]["format"] == "vtdbg-trace" and parsed[-1]["type"] == "end"
    assert [p["exit_reason"] for p in parsed[1:-1]] == [d["exit_reason"] for d in docs]
    status, out, err = cli(None, "stats", str(log), "--json")
    stats = json.loads(out)
    assert status == 0 and stats["exits"] == len(tm.DEFAULT_SCRIPT) and stats["cpus"] == [0, 1, 2]


def test_live_rows_are_printed_as_exits_happen(pykd, capsys):
    tm.scripted_simulator(pykd)
    status, out, err = cli(PykdTarget(pykd), "trace", "io", "--count", "2")
    rows = capsys.readouterr().out.splitlines()
    assert status == 0 and rows[0].split()[:3] == ["#", "cpu", "reason"]
    assert "IO_INSTRUCTION" in rows[1] and "port=0x71" in rows[1] and "port=0x80" in rows[2]
    assert "2 exits recorded" in out


def test_per_exit_cost_is_two_transactions_beyond_the_stop(pykd):
    tm.scripted_simulator(pykd)
    target = RecordingTarget(PykdTarget(pykd))
    source = BreakpointSource(target, [Site(tm.ENTRY)], {c: tm.VMCS_BASE + 0x1000 * c for c in range(3)})
    outcome = Tracer(source).run(TraceLimits(count=10))
    assert len(outcome.records) == 10
    counts = dict(target.counts)
    assert counts == {"break_at": 1, "resume": 10, "read_phys": 10, "registers": 10, "remove_breakpoint": 1}


# -- fault injection ---------------------------------------------------------------------------


def _fail_in_callback(monkeypatch):
    original = BreakpointSource._callback

    def broken(self, site):
        inner = original(self, site)
        calls = {"n": 0}

        def on_hit(cpu):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("callback failed")
            return inner(cpu)
        return on_hit

    monkeypatch.setattr(BreakpointSource, "_callback", broken)


def _fail_in_record_hook(monkeypatch):
    original = TraceLog.write
    calls = {"n": 0}

    def write(self, obj):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return original(self, obj)

    monkeypatch.setattr(TraceLog, "write", write)


def _fail_registers(monkeypatch):
    from vtdbg.lib.errors import TargetError

    original = PykdTarget.registers
    calls = {"n": 0}

    def registers(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise TargetError("the debugger has no register context for CPU 1")
        return original(self)

    monkeypatch.setattr(PykdTarget, "registers", registers)


FAULTS = {
    # phase: (how, expected status, extra argv)
    "arm": (lambda pykd, sim, mp: sim.inject("setBp", pykd.DbgException("no more breakpoints"), after=1), 2,
            ["--latency"]),
    "resume": (lambda pykd, sim, mp: sim.inject("go", pykd.DbgException("transport error"), after=2), 2, []),
    "read": (lambda pykd, sim, mp: sim.inject("loadBytes", pykd.MemoryException("Memory exception at 0x41000 "
                                                                                "target physical address"), after=1),
             2, ALL_VMCS + ["--at", hex(tm.ENTRY)]),
    "registers": (lambda pykd, sim, mp: _fail_registers(mp), 2, ALL_VMCS + ["--at", hex(tm.ENTRY)]),
    "callback": (lambda pykd, sim, mp: _fail_in_callback(mp), 1, []),
    # a bug in the hook is an internal error (status 1), still cleaned up
    "record-hook": (lambda pykd, sim, mp: _fail_in_record_hook(mp), 1, ["--log", "LOG"]),
    "ctrl-c": (lambda pykd, sim, mp: sim.inject("go", KeyboardInterrupt(), after=3), 130, []),
    "count": (lambda pykd, sim, mp: None, 0, ["--count", "5"]),
    "end": (lambda pykd, sim, mp: None, 0, []),
}


@pytest.mark.parametrize("phase", sorted(FAULTS))
@pytest.mark.parametrize("command", ["trace", "step"])
def test_every_phase_leaves_zero_breakpoints(pykd, monkeypatch, tmp_path, phase, command):
    how, status_wanted, extra = FAULTS[phase]
    if command == "step" and "--log" in extra:
        pytest.skip("step keeps no log")
    sim = tm.scripted_simulator(pykd)
    how(pykd, sim, monkeypatch)
    argv = [a if a != "LOG" else str(tmp_path / "t.jsonl") for a in extra]
    if command == "step":
        argv = ["--count", "6"] + [a for a in argv if a not in ("--count", "5")] if phase != "count" else \
            ["--count", "5"]
    status, out, err = cli(PykdTarget(pykd), command, *argv, "--json")
    if command == "step" and phase == "end":
        status_wanted = 0
    assert status == status_wanted, (status, out, err)
    assert sim.breakpoints == {}, sim.breakpoints
    assert "Traceback" not in err


def test_a_vanished_target_leaves_nothing_and_says_so(pykd):
    sim = tm.scripted_simulator(pykd, disconnect_after=4)
    status, out, err = cli(PykdTarget(pykd), "trace", "--json")
    assert status == 2 and "gone" in err
    assert sim.breakpoints == {}


def test_step_through_every_exit_in_order(pykd):
    from vtdbg.frontends.shell import ShellContext

    tm.scripted_simulator(pykd)
    target = PykdTarget(pykd)
    ctx = ShellContext(target_uri="test:", opener=lambda uri: target)
    seen = []
    for _ in tm.DEFAULT_SCRIPT:
        out, err = io.StringIO(), io.StringIO()
        assert run(["step", "--json"], out, err, context=ctx) == 0, err.getvalue()
        seen.append(key(json.loads(out.getvalue())[0]))
    assert seen == expected(lambda e: True)
    out, err = io.StringIO(), io.StringIO()
    assert run(["step", "--json"], out, err, context=ctx) == 2  # nothing left to run
    assert "stopped" in err.getvalue()


def test_a_log_that_cannot_be_written_is_a_clean_error(pykd, tmp_path):
    import os

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    sim = tm.scripted_simulator(pykd)
    status, out, err = cli(PykdTarget(pykd), "trace", "--log", "/dev/full")
    assert status == 2 and "cannot write the trace log" in err
    assert sim.breakpoints == {}


def test_events_persist_between_runs_under_py_g(pykd, monkeypatch):
    from vtdbg.commands import trace as trace_commands

    monkeypatch.setattr(trace_commands, "_PERSISTENT", {})
    tm.scripted_simulator(pykd)
    target = PykdTarget(pykd)

    def windbg_run(*argv: str) -> Any:
        # each `!py -g vtdbg ...` builds a new Context for the WinDbg session
        out, err = io.StringIO(), io.StringIO()
        ctx = Context(target_uri="windbg:current", opener=lambda uri: target)
        assert run(list(argv) + ["--json"], out, err, context=ctx) == 0, err.getvalue()
        return json.loads(out.getvalue())

    windbg_run("events", "add", "io-in")
    windbg_run("events", "add", "cpuid", "0", "--cpu", "0")
    docs = windbg_run("trace")
    assert [key(d) for d in docs] == [(0, 10, 0), (1, 30, 0x71), (2, 30, 0x71)]
    assert [e["hits"] for e in windbg_run("events")] == [2, 1]
