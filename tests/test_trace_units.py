"""Unit tests of the trace machinery without a debugger: filter parsing, events, records,
the JSONL log, statistics, the HTML report, the live table and the Tracer loop against a
scripted source (handler times, break, durations, cleanup on every path)."""
from __future__ import annotations

import html.parser
import io
import json
from typing import Any, Dict, List, Optional

import pytest

from tests.conftest import run_cli
from vtdbg.core.exit_events import (
    FILTERS,
    EventTable,
    ExitRecord,
    argument_value,
    parse_filter,
    parse_filter_text,
)
from vtdbg.core.exit_stats import exit_stats, histogram
from vtdbg.core.trace import (
    ExitReader,
    ExitSource,
    Snapshot,
    Stop,
    TraceLimits,
    TraceLog,
    Tracer,
    VmexitBreakSource,
    read_trace_file,
)
from vtdbg.layouts.registry import get_layout
from vtdbg.lib.errors import DecodeError, TargetError, UsageError
from vtdbg.render.html_report import render_html
from vtdbg.render.live import LiveTable
from vtdbg.target.base import Target
from vtdbg.target.bochs_exits import split_answer


def record(reason: int, cpu: int = 0, **values: int) -> ExitRecord:
    gprs = {k: values.pop(k) for k in ("rax", "rcx") if k in values}
    values.setdefault("exit_reason_full", reason)
    return ExitRecord(cpu=cpu, values=values, gprs=gprs or None)


# -- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("words,reasons,kind,arg", [
    (["cpuid", "0x40000000"], (10,), "leaf", (0x40000000, 0x40000000)),
    (["CPUID"], (10,), "leaf", None),
    (["rdmsr", "0x174"], (31,), "msr", (0x174, 0x174)),
    (["msr-write", "lstar"], (32,), "msr", (0xC0000082, 0xC0000082)),
    (["msr", "IA32_VMX_BASIC"], (31, 32), "msr", (0x480, 0x480)),
    (["in", "0x60-0x64"], (30,), "port", (0x60, 0x64)),
    (["exception", "ud"], (0,), "vector", (6, 6)),
    (["exception", "0n14"], (0,), "vector", (14, 14)),
    (["cr-write", "CR4"], (28,), "cr", (4, 4)),
    (["dr", "dr7"], (29,), "dr", (7, 7)),
    (["ept", "0x600000..0x600fff"], (48,), "gpa", (0x600000, 0x600FFF)),
    (["EXIT_REASON_HLT"], (12,), None, None),
    (["0x80000021"], (33,), None, None),
    (["any"], (), None, None),
])
def test_filters_parse(words, reasons, kind, arg):
    flt = parse_filter(words)
    assert flt.reasons == reasons and flt.argument_kind == kind
    assert (None if flt.argument is None else (flt.argument.low, flt.argument.high)) == arg


@pytest.mark.parametrize("words,message", [
    (["nosuchreason"], "unknown exit reason"),
    (["hlt", "1"], "takes no argument"),
    (["cpuid", "5-1"], "empty"),
    (["cpuid", "zz"], "invalid"),
    (["msr-read", "NOT_AN_MSR"], "unknown MSR"),
    (["cpuid", "1", "2"], "is REASON"),
    ([], "needs an exit reason"),
])
def test_bad_filters_are_usage_errors(words, message):
    with pytest.raises(UsageError, match=message):
        parse_filter(words)


def test_every_filter_name_and_alias_parses():
    for name, spec in FILTERS.items():
        for word in (name,) + spec.aliases:
            assert parse_filter([word]).name == name


def test_conditions_and_arguments_decode_the_record():
    io_in = record(30, qualification=0x710048)
    io_out = record(30, qualification=0x90000003)
    assert parse_filter(["io-in"]).matches(io_in) and not parse_filter(["io-in"]).matches(io_out)
    assert parse_filter(["io-out", "0x9000"]).matches(io_out)
    nmi = record(0, intr_info=0x80000202)
    pf = record(0, intr_info=0x80000B0E)
    assert parse_filter(["nmi"]).matches(nmi) and not parse_filter(["exception"]).matches(nmi)
    assert parse_filter_text("exception #PF").matches(pf)
    assert argument_value(record(0, intr_info=0x0000000E), "vector") is None  # valid bit clear
    assert argument_value(record(10), "leaf") is None  # no registers: unknown, not 0
    assert not parse_filter(["cpuid", "0"]).matches(record(10))
    assert parse_filter(["cpuid", "0"]).matches(record(10, rax=0xFFFFFFFF00000000))
    failure = record(33, exit_reason_full=0x80000021)
    assert failure.entry_failure and failure.exit_reason == 33
    assert parse_filter(["entry-failure"]).matches(failure) and not parse_filter(["entry-failure"]).matches(io_in)


def test_record_json_round_trip():
    original = record(31, cpu=2, rcx=0x174, qualification=0, guest_rip=0x1000)
    original.ticks, original.time, original.handler_ticks = 1234, 0.5, 77
    doc = original.to_json()
    assert doc["argument_kind"] == "msr" and doc["argument"] == 0x174 and doc["cpu"] == 2
    back = ExitRecord.from_json(json.loads(json.dumps(doc)))
    assert back.to_json() == doc


# -- events -----------------------------------------------------------------------------------


def test_event_table_ids_dedupe_enable_clear():
    table = EventTable()
    one = table.add(parse_filter(["cpuid"]))
    two = table.add(parse_filter(["msr-read", "0x174"]), cpu=1, breaks=True)
    assert table.add(parse_filter(["cpuid"])) is one
    assert [e.id for e in table] == [1, 2] and two.actions == ["record", "break"]
    table.select(["2"])[0].enabled = False
    assert table.enabled() == [one]
    assert table.add(parse_filter(["msr-read", "0x174"]), cpu=1, breaks=True) is two and two.enabled
    assert [e.id for e in table.clear(["1"])] == [1]
    three = table.add(parse_filter(["hlt"]))
    assert three.id == 3  # ids are never reused
    with pytest.raises(UsageError):
        table.select(["9"])
    assert len(table.clear(["all"])) == 2 and len(table) == 0
    assert not two.matches(record(31, cpu=0, rcx=0x174)) or not two.enabled


# -- the log ------------------------------------------------------------------------------------


def test_log_lines_are_whole_and_read_back(tmp_path):
    path = tmp_path / "t.jsonl"
    log = TraceLog(str(path), {"target": {"kind": "test"}})
    docs = [dict({"type": "exit"}, **record(10, cpu=c, rax=c).to_json()) for c in range(3)]
    for doc in docs:
        log.write(doc)
    log.close({"end": "count", "exits": 3, "seconds": 1.5})
    log.close()  # idempotent
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 5
    trace = read_trace_file(str(path))
    assert trace.header["format"] == "vtdbg-trace" and trace.footer["end"] == "count"
    assert [r["cpu"] for r in trace.records] == [0, 1, 2] and not trace.warnings
    # a writer killed mid-line: the partial last line is dropped, the rest is read
    path.write_bytes(raw[:-40])
    trace = read_trace_file(str(path))
    assert len(trace.records) == 3 and trace.footer is None and "incomplete" in trace.warnings[0]
    path.write_bytes(raw.replace(b'{"type":"exit"', b'{garbage', 1))
    with pytest.raises(DecodeError, match="line 2"):
        read_trace_file(str(path))


def test_stats_accept_a_saved_json_list(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([record(10, rax=1).to_json(), record(12).to_json()]))
    status, out, err = run_cli("stats", str(path), "--json")
    assert status == 0 and json.loads(out)["exits"] == 2


# -- statistics and reports -------------------------------------------------------------------


def _docs() -> List[Dict[str, Any]]:
    docs = []
    for i, (reason, cpu, ticks) in enumerate([(10, 0, 100), (10, 1, 300), (31, 0, 50), (10, 0, 200),
                                              (33, 1, None)]):
        rec = record(reason, cpu=cpu, exit_reason_full=reason | (1 << 31 if reason == 33 else 0))
        rec.time, rec.ticks, rec.handler_ticks, rec.index = float(i), 1000 * i, ticks, i
        docs.append(rec.to_json())
    return docs


def test_exit_stats_per_reason_and_cpu():
    stats = exit_stats(_docs(), seconds=4.0)
    assert stats["exits"] == 5 and stats["cpus"] == [0, 1]
    cpuid = stats["by_reason"][0]
    assert (cpuid["reason_name"], cpuid["count"], cpuid["percent"], cpuid["rate_per_second"]) == ("CPUID", 3, 60.0,
                                                                                                  0.75)
    assert cpuid["handler"]["unit"] == "ticks" and cpuid["handler"]["min"] == 100 and cpuid["handler"]["max"] == 300
    assert cpuid["handler"]["avg"] == 200 and cpuid["rate_per_mtick"] == pytest.approx(750.0)
    failure = [r for r in stats["by_reason"] if r["entry_failure"]][0]
    assert failure["reason_name"] == "INVALID_STATE" and failure["handler"] is None
    pairs = {(r["exit_reason"], r["cpu"]): r["count"] for r in stats["by_reason_cpu"]}
    assert pairs == {(10, 0): 2, (10, 1): 1, (31, 0): 1, (33, 1): 1}
    lines = histogram(stats)
    assert lines[0].startswith("CPUID") and lines[0].count("#") == 40 and lines[0].endswith(" 3")


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: List[str] = []
        self.external: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[Any]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") or (value and "://" in value and name != "xmlns"):
                self.external.append("%s=%s" % (name, value))


def test_html_report_is_self_contained(tmp_path):
    docs = _docs()
    docs[0]["reason_name"] = "<script>alert(1)</script>"  # never trusted: the report derives names itself
    log = tmp_path / "t.jsonl"
    writer = TraceLog(str(log), {})
    for doc in docs:
        writer.write(dict({"type": "exit"}, **doc))
    writer.close({"end": "count", "seconds": 4.0})
    out = tmp_path / "r.html"
    status, text, err = run_cli("stats", str(log), "--html", str(out), "--title", "a <b> trace")
    assert status == 0, err
    page = out.read_text()
    parser = _Links()
    parser.feed(page)
    assert "script" not in parser.tags and not parser.external
    assert parser.tags.count("svg") == 2 and "circle" in parser.tags and "rect" in parser.tags
    assert "a &lt;b&gt; trace" in page and "<script>" not in page
    assert render_html(exit_stats([]), []).startswith("<!DOCTYPE html>")


def test_live_table_fixed_widths():
    stream = io.StringIO()
    table = LiveTable(stream, [("#", 3, True), ("name", 6, False), ("rest", 0, False)])
    table.row([1, "CPUID_LONG_NAME", "x" * 10])
    table.row([22, None, "\u00b5s"])
    lines = stream.getvalue().splitlines()
    assert lines == ["  #  name    rest", "  1  CPUID~  xxxxxxxxxx", " 22  -       us"]


def test_split_combined_bochs_answer():
    text = ("0x0000000000021000 <bogus+       0>:\t0x000000000000002b\t0x0000000000000000\n"
            "show param name: <cpu0.VMX>\nVMX = {\n  vmcsptr = 0x21000\n  VMCS_CACHE = {\n    HOST_STATE = {\n"
            "      RSP = 0x58000\n    }\n  }\n}\nrax: 00000000_00000005\nrip: 00000000_0000bca0\n")
    dump, tree, rest = split_answer(text)
    assert dump.startswith("0x0000000000021000") and tree.rstrip().endswith("}")
    assert rest.startswith("rax:")


# -- the loop against a scripted source -----------------------------------------------------------


class FakeSource(ExitSource):
    """Plays a list of stops; the VMCS page of each exit is built from its record values."""

    def __init__(self, stops: List[Any], fail_at: Optional[int] = None) -> None:
        super().__init__(Target())
        self.stops = list(stops)
        self.armed = 0
        self.fail_at = fail_at
        self.reads = 0
        self.resume = any(isinstance(s, tuple) and s[0] == "resume" for s in stops)

    def arm(self) -> None:
        self.armed += 1

    def disarm(self) -> List[str]:
        self.armed = 0
        return []

    def armed_count(self) -> int:
        return self.armed

    def measures_handler(self) -> bool:
        return self.resume

    def next_stop(self, timeout: Optional[float]) -> Stop:
        if not self.stops:
            return Stop("end", end_reason="halted")
        item = self.stops.pop(0)
        if isinstance(item, BaseException):
            raise item
        kind, cpu, ticks = item[:3]
        stop = Stop(kind, cpu, float(ticks), ticks, "fake")
        stop.values = item[3] if len(item) > 3 else {}  # type: ignore[attr-defined]
        return stop

    def snapshot(self, stop: Stop, gprs: bool) -> Snapshot:
        self.reads += 1
        if self.fail_at == self.reads:
            raise TargetError("read failed")
        from vtdbg.arch.fields import lookup_field

        values = {lookup_field("VM_EXIT_REASON").encoding: stop.values.get("reason", 10)}  # type: ignore[attr-defined]
        page = get_layout("bochs_2_7").build_page(values)
        return Snapshot(0x1000, page, {"rax": stop.values.get("rax", 0)}, "bochs_2_7")  # type: ignore[attr-defined]


def test_handler_ticks_pair_exits_with_their_resume_per_cpu():
    stops = [("exit", 0, 100), ("exit", 1, 110), ("resume", 1, 150), ("resume", 0, 300), ("exit", 0, 400),
             ("exit", 0, 500), ("resume", 0, 530)]
    seen: List[ExitRecord] = []
    source = FakeSource(stops)
    outcome = Tracer(source, ExitReader(), on_record=seen.append).run(TraceLimits())
    assert [(r.cpu, r.ticks, r.handler_ticks) for r in seen] == [(1, 110, 40), (0, 100, 200), (0, 400, None),
                                                                  (0, 500, 30)]
    assert outcome.end == "halted" and outcome.complete and source.armed == 0


def test_count_drains_the_pending_resume():
    source = FakeSource([("exit", 0, 100), ("resume", 0, 120), ("exit", 0, 200), ("resume", 0, 260),
                         ("exit", 0, 300)])
    outcome = Tracer(source).run(TraceLimits(count=2))
    assert [r.handler_ticks for r in outcome.records] == [20, 60] and outcome.end == "count"
    assert source.stops == [("exit", 0, 300)]  # not run further than needed


def test_seconds_limit_and_break_on_match():
    clock = iter(float(i) for i in range(100))
    source = FakeSource([("exit", 0, t) for t in range(50)])
    outcome = Tracer(source, clock=lambda: next(clock)).run(TraceLimits(seconds=5))
    assert outcome.end == "seconds" and outcome.complete and 0 < len(outcome.records) < 5
    source = FakeSource([("exit", 0, 1, {"reason": 12}), ("exit", 0, 2, {"reason": 10})])
    table = EventTable()
    table.add(parse_filter(["cpuid"]), breaks=True)
    outcome = Tracer(source, events=table.enabled()).run(TraceLimits())
    assert outcome.end == "break" and [r.exit_reason for r in outcome.records] == [10] and outcome.seen == 2
    assert table.events[1].hits == 1


@pytest.mark.parametrize("failure", ["read", "stop", "hook", "interrupt"])
def test_the_source_is_disarmed_on_every_path(failure):
    stops: List[Any] = [("exit", 0, 1), ("exit", 0, 2), ("exit", 0, 3)]
    if failure == "stop":
        stops.insert(1, TargetError("transport"))
    if failure == "interrupt":
        stops.insert(2, KeyboardInterrupt())
    source = FakeSource(stops, fail_at=2 if failure == "read" else None)

    def hook(rec: ExitRecord) -> None:
        if failure == "hook" and rec.index == 1:
            raise RuntimeError("hook")

    tracer = Tracer(source, on_record=hook)
    if failure == "interrupt":
        outcome = tracer.run(TraceLimits())
        assert outcome.end == "interrupted" and not outcome.complete and len(outcome.records) == 2
    else:
        with pytest.raises((TargetError, RuntimeError)):
            tracer.run(TraceLimits())
    assert source.armed == 0


class SwitchTarget(Target):
    """A target with a stop-on-VM-exit switch (the Bochs shape), for the generic source."""

    kind = "fake"

    def __init__(self, fail: str = "") -> None:
        super().__init__()
        self.switch = False
        self.fail = fail
        self.calls: List[str] = []

    def set_vmexit_break(self, enabled: bool) -> None:
        self.calls.append("switch %s" % enabled)
        if self.fail == "switch-off" and not enabled:
            raise TargetError("refused")
        self.switch = enabled

    def run_to_vm_exit(self, timeout: Optional[float] = None, skip_magic: bool = True) -> Dict[str, Any]:
        self.calls.append("run")
        if self.fail == "run":
            raise TargetError("Bochs crashed")
        return {"event": "halted", "cpu": 0, "ticks": 5, "detail": ""}

    def vmx_state(self) -> Dict[str, Any]:
        return {"vmcsptr": None}


@pytest.mark.parametrize("fail", ["", "run", "switch-off"])
def test_the_generic_switch_source_always_switches_off(fail):
    target = SwitchTarget(fail)
    source = VmexitBreakSource(target)
    tracer = Tracer(source)
    if fail == "run":
        with pytest.raises(TargetError):
            tracer.run(TraceLimits())
    else:
        outcome = tracer.run(TraceLimits())
        assert outcome.end == "halted"
        if fail:
            assert "could not switch off" in outcome.warnings[0]
    assert target.calls[0] == "switch True" and target.calls[-1] == "switch False"
    assert source.armed_count() == 0


def test_trace_refuses_images_and_bad_options(tmp_path):
    image = tmp_path / "x.img"
    image.write_bytes(bytes(0x2000))
    status, out, err = run_cli("trace", "--image", str(image))
    assert status == 2 and "resume" in err
    status, out, err = run_cli("trace", "--count", "0", "--image", str(image))
    assert status == 2
