"""`vtdbg check` (predict VMLAUNCH/VMRESUME on a VMCS, list every violated rule) and
`vtdbg vmxon-check` (is the processor ready for VMXON)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Tuple

from vtdbg.commands.percpu import CpuOutcome, cpu_selection, run_per_cpu, vmcs_regions
from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import Block, KeyValues, Result, Table, Text, hex_value
from vtdbg.core.check.caps import Caps
from vtdbg.core.check.checker import check_vmcs, environment_from_target
from vtdbg.core.check.context import ENVIRONMENT_DEFAULTS, Environment
from vtdbg.core.check.engine import Report
from vtdbg.core.check.memory import Memory, TargetMemory
from vtdbg.core.check.rules import sdm_text
from vtdbg.core.check.snapshot import load_snapshot
from vtdbg.core.check.vmxon import summary, vmxon_readiness
from vtdbg.core.vmcs import Vmcs, read_vmcs
from vtdbg.lib.errors import UsageError
from vtdbg.lib.numbers import parse_address, parse_int
from vtdbg.target.base import Capability, Target, read_exact

#: --env values that are flags
_BOOL_KEYS = ("vmx_root", "host_ia32e", "in_smm", "mov_ss_blocking")


def _check_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--snapshot", metavar="FILE", help="check a VMCS snapshot file instead of a target")
    parser.add_argument("--at", metavar="PA", help="physical address of the VMCS on the target (default: find it)")
    parser.add_argument("--layout", default="auto", metavar="NAME|auto", help="in-memory layout for --at/finding")
    parser.add_argument("--caps", metavar="FILE",
                        help="capability MSRs (caps file of `vtdbg caps --save`, or a lab ground_truth.json); "
                             "default: read them live when the target can")
    parser.add_argument("--instruction", choices=("vmlaunch", "vmresume"),
                        help="the instruction to predict (default: VMLAUNCH, VMRESUME for a launched VMCS)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="state of the VMM: %s (e.g. --env cpl=3 --env mov_ss_blocking=1)"
                             % ", ".join(ENVIRONMENT_DEFAULTS))
    parser.add_argument("--maxphyaddr", metavar="N", help="physical-address width (overrides the caps; default 46)")


def _parse_env(items: List[str], env: Environment) -> None:
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in ENVIRONMENT_DEFAULTS:
            raise UsageError("--env takes KEY=VALUE with KEY one of %s" % ", ".join(ENVIRONMENT_DEFAULTS))
        parsed: Any = value.strip()
        if key in _BOOL_KEYS:
            if parsed.lower() not in ("0", "1", "true", "false", "yes", "no"):
                raise UsageError("--env %s takes 0/1 or true/false" % key)
            parsed = parsed.lower() in ("1", "true", "yes")
        elif key in ("cpl", "vmxon_pa"):
            parsed = parse_int(parsed, key)
        env.set(key, parsed, "--env")


def _environment(args: argparse.Namespace, env: Environment) -> Environment:
    """``env`` with the command line's --env and --instruction applied (they override)."""
    _parse_env(args.env, env)
    if args.instruction:
        env.set("instruction", args.instruction, "--instruction")
    return env


def _load_caps(args: argparse.Namespace, target: Optional[Target], cpu: Optional[int]) -> Caps:
    if args.caps:
        caps = Caps.load(args.caps, cpu)
    elif target is not None and target.has(Capability.MSR_READ):
        if cpu is not None and cpu != target.current_cpu():
            with target.select_cpu(cpu):
                caps = Caps.from_target(target)
        else:
            caps = Caps.from_target(target)
    else:
        caps = Caps(source="none (no --caps, and the target cannot read MSRs)")
    if args.maxphyaddr is not None:
        caps.maxphyaddr_value = parse_int(args.maxphyaddr, "MAXPHYADDR")
    return caps


def _shown(key: str, value: Any) -> str:
    """Masks in hex, the rest as they are."""
    if key.endswith("_mask") and isinstance(value, int):
        return hex(value)
    return str(value)


def report_blocks(report: Report, vmcs: Vmcs) -> List[Block]:
    """The text view: verdict first, then every violation, control diffs, what was not checked."""
    blocks: List[Block] = []
    verdict = "Predicted: %s." % report.outcome.label()
    if report.deciding is not None:
        verdict += "\nDecided by %s (SDM %s)." % (report.deciding.rule.id, sdm_text(report.deciding.rule.sdm))
    blocks.append(Text(verdict, style="verdict"))
    for alternative in report.alternatives:
        blocks.append(Text("Other possible outcome: %s - %s (%s)." % (
            alternative.outcome.label(), alternative.why, alternative.rule), style="note"))
    if report.violations:
        rows = []
        for violation in report.violations:
            finding = violation.finding
            rows.append([violation.rule.id, sdm_text(violation.rule.sdm), finding.field or "-",
                         hex_value(finding.value) if finding.value is not None else "-", finding.message,
                         violation.rule.hint])
        blocks.append(Table(["rule", "SDM", "field", "value", "requires", "fix"], rows, title="Violated rules"))
    else:
        blocks.append(Text("No rule that could be checked is violated.", style="plain"))
    diffs = [d for d in report.controls if not d["ok"]]
    if diffs:
        rows = []
        for diff in diffs:
            missing = "%s %s" % (hex_value(diff["missing"]), " ".join(diff["missing_names"]))
            forbidden = "%s %s" % (hex_value(diff["forbidden"]), " ".join(diff["forbidden_names"]))
            rows.append([diff["field"], hex_value(diff["value"], 8), diff["msr"], hex_value(diff["must_be_one"], 8),
                         hex_value(diff["may_be_one"], 8), missing if diff["missing"] else "-",
                         forbidden if diff["forbidden"] else "-", hex_value(diff["suggested"], 8)])
        blocks.append(Table(["control field", "value", "capability MSR", "must be 1", "may be 1", "missing 1s",
                             "forbidden 1s", "(value|must)&may"], rows, title="Controls against what the CPU allows"))
    if report.advisories:
        blocks.append(Table(["rule", "field", "advisory"],
                            [[a.rule.id, a.finding.field or "-", a.finding.message] for a in report.advisories],
                            title="Advisories (not VM-entry failures)"))
    if report.not_checked:
        rows = [[n.rule.id, n.reason.kind, n.reason.why + (" (partly checked)" if n.partial else "")]
                for n in report.not_checked]
        blocks.append(Table(["rule", "missing", "why not checked"], rows, title="Not checked (%d)" % len(rows)))
    assumed = report.assumptions
    pairs = [["VMCS", "%s at %s" % (vmcs.trust or vmcs.source, hex_value(assumed.get("vmcs_pa")))],
             ["capabilities", assumed.get("caps_source", "-")],
             ["memory", assumed.get("memory_source", "-")]]
    defaults = ["%s=%s" % (k, _shown(k, v["value"])) for section in ("environment", "processor")
                for k, v in assumed.get(section, {}).items() if v["source"] == "default" and v["value"] is not None]
    pairs.append(["assumed (defaults)", ", ".join(defaults) or "-"])
    blocks.append(KeyValues(pairs, title="Inputs"))
    return blocks


def _check_one(vmcs: Vmcs, caps: Caps, memory: Memory, env: Environment,
               vmcs_pa: Optional[int] = None) -> Tuple[Dict[str, Any], List[Block], List[str]]:
    report = check_vmcs(vmcs, caps, memory, env, vmcs_pa)
    return report.to_json(), report_blocks(report, vmcs), list(report.warnings)


@command("check", help="predict VMLAUNCH/VMRESUME on a VMCS and list every violated VM-entry rule",
         examples=["vtdbg check --snapshot vmcs.json --caps caps.json",
                   "vtdbg check --image lab.img --at 0x21000 --caps caps.json --json",
                   "vtdbg check --target kd:net:port=50000,key=1.2.3.4 --cpu all"],
         description="Evaluate every SDM VM-entry check (basic checks, controls, host state, guest state, MSR "
                     "loading) and predict the outcome: #UD/#GP, VMfailInvalid, VMfailValid 4/5/7/8/26, or a "
                     "VM-entry failure with exit reason 33 (and its qualification) or 34 (and the failing "
                     "MSR-load entry). Rules whose inputs are unknown are listed as not checked.")
@arguments(_check_args)
def check_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """See the command help."""
    if args.snapshot:
        if args.at is not None:
            raise UsageError("--snapshot and --at exclude each other")
        snap = load_snapshot(args.snapshot)
        env = _environment(args, snap.environment)
        cpu = None if ctx.cpu is None or ctx.cpu.lower() == "all" else parse_int(ctx.cpu, "CPU number")
        caps = _load_caps(args, None, cpu)
        doc, blocks, warnings = _check_one(snap.vmcs, caps, snap.memory, env)
        return Result(doc, blocks, warnings=warnings)
    target = ctx.target
    target.require(Capability.PHYS_READ, "vtdbg check on a target")
    memory = TargetMemory(target)
    if args.at is not None:
        if ctx.cpu is not None and ctx.cpu.lower() == "all":
            raise UsageError("--at names one region; drop --cpu all")
        pa = parse_address(args.at)
        vmcs = read_vmcs(target, pa, args.layout)
        env = _environment(args, environment_from_target(target))
        cpu = None if ctx.cpu is None else parse_int(ctx.cpu, "CPU number")
        doc, blocks, warnings = _check_one(vmcs, _load_caps(args, target, cpu), memory, env)
        return Result(doc, blocks, warnings=warnings)
    # the same VMCS-per-CPU choice and per-CPU reporting as `vtdbg vmcs`
    found = vmcs_regions(ctx)
    cpus = cpu_selection(ctx, len(found))

    def one(cpu: int) -> CpuOutcome:
        vmcs = read_vmcs(target, found[cpu], args.layout)
        env = _environment(args, environment_from_target(target))
        caps = _load_caps(args, target, cpu if target.cpu_count() > cpu else None)
        return _check_one(vmcs, caps, memory, env)

    return run_per_cpu(ctx, cpus, one, title=lambda cpu: "CPU %d (VMCS at %s)" % (cpu, hex_value(found[cpu])))


# -- vmxon-check ---------------------------------------------------------------------------------

def _vmxon_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--caps", metavar="FILE", help="capability MSRs (default: read them live)")
    parser.add_argument("--cr0", metavar="VALUE", help="CR0 to check (default: the target's)")
    parser.add_argument("--cr4", metavar="VALUE", help="CR4 to check (default: the target's)")
    parser.add_argument("--cpl", metavar="N", help="CPL (default: from the target's CS)")
    parser.add_argument("--at", metavar="PA", help="physical address of the VMXON region to check")
    parser.add_argument("--region-header", metavar="DWORD",
                        help="first dword of the VMXON region (when the region cannot be read)")
    parser.add_argument("--maxphyaddr", metavar="N", help="physical-address width (default: caps, else 46)")


def vmxon_check(ctx: Context, caps_file: Optional[str] = None, cr0: Optional[str] = None,
                cr4: Optional[str] = None, cpl: Optional[str] = None, at: Optional[str] = None,
                region_header: Optional[str] = None, maxphyaddr: Optional[str] = None) -> Result:
    """The `vtdbg vmxon-check` result (also what `vtdbg vmxon --check` can return)."""
    target = ctx.target if ctx.has_target() else None
    if caps_file:
        caps = Caps.load(caps_file)
    elif target is not None and target.has(Capability.MSR_READ):
        caps = Caps.from_target(target)
    else:
        caps = Caps(source="none")
    if maxphyaddr is not None:
        caps.maxphyaddr_value = parse_int(maxphyaddr, "MAXPHYADDR")
    regs: Dict[str, int] = {}
    if target is not None and target.has(Capability.REGS) and (cr0 is None or cr4 is None or cpl is None):
        regs = target.registers()
    cr0_value = parse_int(cr0, "CR0") if cr0 is not None else regs.get("cr0")
    cr4_value = parse_int(cr4, "CR4") if cr4 is not None else regs.get("cr4")
    cpl_value = parse_int(cpl, "CPL") if cpl is not None else (regs["cs"] & 3 if "cs" in regs else None)
    pa = parse_address(at) if at is not None else None
    header = parse_int(region_header, "region header") if region_header is not None else None
    if header is None and pa is not None and target is not None and target.has(Capability.PHYS_READ) \
            and pa & 0xFFF == 0:
        header = int.from_bytes(read_exact(target, pa, 4), "little")
    verdicts = vmxon_readiness(caps, cr0_value, cr4_value, pa, header, cpl_value)
    verdict = summary(verdicts)
    doc = {"verdict": verdict, "checks": [v.to_json() for v in verdicts], "caps_source": caps.source}
    blocks: List[Block] = [Text("VMXON readiness: %s" % verdict, style="verdict"),
                           Table(["check", "status", "detail", "if it fails", "SDM"],
                                 [[v.title, v.status.upper(), v.detail, v.consequence, v.sdm] for v in verdicts])]
    return Result(doc, blocks)


@command("vmxon-check", help="check that VMXON can succeed: CPUID, IA32_FEATURE_CONTROL, CR0/CR4, VMXON region",
         examples=["vtdbg vmxon-check --caps caps.json --cr0 0x80050033 --cr4 0x2620",
                   "vtdbg vmxon-check --target kd:net:port=50000,key=1.2.3.4 --at 0x1E00000"],
         description="The checks a hypervisor makes before VMXON, each with pass/fail/unknown and what VMXON "
                     "does when it fails. Inputs come from a caps file and the given CR0/CR4, or from a target "
                     "with MSR and register access.")
@arguments(_vmxon_args)
def vmxon_check_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """See the command help."""
    return vmxon_check(ctx, args.caps, args.cr0, args.cr4, args.cpl, args.at, args.region_header, args.maxphyaddr)
