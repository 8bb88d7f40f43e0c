"""Benchmark: debugger transactions (and time) per traced VM exit.

Transactions are what cost on a real debugger (a KDNET round trip each), so they are the
figure of merit; the budget is at most 2 beyond the stop itself for the default fields
(exit reason, qualification, guest RIP/RSP, the argument, instruction length, interruption
information, guest GPRs).

1. pykd path, counted exactly with RecordingTarget around PykdTarget on the pykd stand-in
   (tests/support/trace_machine.py: a simulated 3-CPU hypervisor): breakpoint at the exit
   handler entry, per-exit reads; variants without registers, at per-reason handler
   functions, and with handler timing (a second stop per exit).
2. Bochs path (when bochs-bin and nasm exist): debugger command lines per exit on the lab,
   for vtdbg's one-line-per-exit source and the generic three-line one; and the wall time
   of a full lab trace against a baseline that only stops at each exit without reading it
   (same run, interleaved, medians).

    python bench/bench_trace.py [--exits 200] [--runs 3] [--no-bochs]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import trace_machine as tm  # noqa: E402
from vtdbg.core.trace import BreakpointSource, Site, TraceLimits, Tracer  # noqa: E402

BUDGET = 2


def pykd_counts(exits: int) -> List[Tuple[str, Dict[str, int], int, float]]:
    """(variant, per-op counts, exits traced, transactions beyond the stop per exit)."""
    from vtdbg.target.pykd_backend import PykdTarget
    from vtdbg.target.record import RecordingTarget

    pykd = tm.load_standin()
    sys.modules["pykd"] = pykd
    script = tuple(tm.DEFAULT_SCRIPT[i % len(tm.DEFAULT_SCRIPT)] for i in range(exits))
    vmcs = {cpu: tm.VMCS_BASE + 0x1000 * cpu for cpu in range(3)}
    variants = [
        ("entry stub, default fields", [Site(tm.ENTRY)], True),
        ("entry stub, no registers", [Site(tm.ENTRY)], False),
        ("per-reason handlers (CPUID, RDMSR)", [Site(tm.HANDLE_CPUID, "handler"), Site(tm.HANDLE_MSR_READ, "handler")],
         True),
        ("entry stub + resume (handler time)", [Site(tm.ENTRY), Site(tm.RESUME, "resume")], True),
    ]
    out = []
    for name, sites, gprs in variants:
        tm.scripted_simulator(pykd, script)
        target = RecordingTarget(PykdTarget(pykd))
        outcome = Tracer(BreakpointSource(target, sites, vmcs), gprs=gprs).run(TraceLimits())
        counts = dict(target.counts)
        traced = len(outcome.records)
        stops = counts.get("resume", 0)
        setup = counts.get("break_at", 0) + counts.get("remove_breakpoint", 0)
        beyond = (sum(counts.values()) - setup - stops) / traced if traced else 0.0
        out.append((name, counts, traced, beyond))
        pykd._install(None)
    return out


def _bochs_config(folder: Path) -> Tuple[Any, Path]:
    from tests.lab import run as lab

    image = lab.build_image(folder)
    config = folder / "lab.bxrc"
    config.write_text(lab.bochsrc_text("corei7_skylake_x", image.resolve(), folder / "bochs.log"))
    return lab, config


def _counting(cls: Any) -> Any:
    """``cls`` with the debugger lines of each per-exit read counted in ``reads``."""
    class Counting(cls):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.reads: List[int] = []

        def snapshot(self, stop: Any, gprs: bool) -> Any:
            before = self.target.transactions
            try:
                return super().snapshot(stop, gprs)
            finally:
                self.reads.append(self.target.transactions - before)
    return Counting


def bochs_figures(runs: int) -> Dict[str, Any]:
    """Lines per exit for both Bochs sources; wall time of a whole-lab trace vs. baseline."""
    from vtdbg.core.trace import VmexitBreakSource
    from vtdbg.target.bochs import BochsTarget
    from vtdbg.target.bochs_exits import BochsExitSource

    folder = Path(tempfile.mkdtemp(prefix="vtdbg-bench-trace-"))
    _, config = _bochs_config(folder)
    figures: Dict[str, Any] = {}
    for name, make in (("one line per exit (BochsExitSource)", BochsExitSource),
                       ("generic (vmx_state + xp + registers)", VmexitBreakSource)):
        with BochsTarget(str(config)) as target:
            source = _counting(make)(target)
            outcome = Tracer(source).run(TraceLimits(timeout=60))
            lines = target.transactions
        exits = len(outcome.records)
        # everything else is the switch (on, off) and `c` lines: one per exit, plus the lab's
        # magic breakpoints that run_to_vm_exit continues past, plus the final halt
        figures[name] = (exits, lines, sum(source.reads) / exits, max(source.reads),
                         sum(source.reads[-17:]) / 17)

    def baseline() -> float:
        with BochsTarget(str(config)) as target:
            started = time.perf_counter()
            target.set_vmexit_break(True)
            while target.run_to_vm_exit(60)["event"] == "vmexit":
                pass
            target.set_vmexit_break(False)
            return time.perf_counter() - started

    def traced() -> float:
        with BochsTarget(str(config)) as target:
            started = time.perf_counter()
            Tracer(BochsExitSource(target)).run(TraceLimits(timeout=60))
            return time.perf_counter() - started

    base_times, trace_times = [], []
    for _ in range(runs):
        base_times.append(baseline())
        trace_times.append(traced())
    figures["times"] = (statistics.median(base_times), statistics.median(trace_times))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=200, help="simulated exits per pykd variant")
    parser.add_argument("--runs", type=int, default=3, help="interleaved Bochs runs for the timing")
    parser.add_argument("--no-bochs", action="store_true", help="skip the Bochs part")
    args = parser.parse_args()
    ok = True
    print("pykd stand-in, RecordingTarget (one call = one transaction), %d exits on 3 CPUs" % args.exits)
    for name, counts, traced, beyond in pykd_counts(args.exits):
        detail = ", ".join("%s=%d" % (k, v) for k, v in sorted(counts.items()))
        print("  %-38s %4d exits traced  %.2f transactions/exit beyond the stop  (%s)" % (name, traced, beyond, detail))
        if name.startswith("entry stub, default"):
            ok = ok and beyond <= BUDGET
    if not args.no_bochs:
        from tests.lab import run as lab

        missing = lab.tools_available()
        if missing:
            print("Bochs: skipped (%s)" % missing)
        else:
            figures = bochs_figures(args.runs)
            print("Bochs %s, lab corei7_skylake_x (whole run from reset)" % lab.bochs_version())
            for name, value in figures.items():
                if name == "times":
                    continue
                exits, lines, beyond, worst, main_run = value
                print("  %-38s %4d exits  %4d lines in all  reads: %.2f lines/exit (max %d; %.2f over the 17 "
                      "main-run exits)" % (name, exits, lines, beyond, worst, main_run))
            base, traced = figures["times"]
            print("  wall time (median of %d, interleaved): stop only %.2f s, trace with reads %.2f s (%.0f%%)"
                  % (args.runs, base, traced, 100.0 * traced / base))
            ok = ok and figures["one line per exit (BochsExitSource)"][3] <= BUDGET
    verdict = "met" if ok else "MISSED"
    print("budget (<= %d transactions beyond the stop for the default fields): %s" % (BUDGET, verdict))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
