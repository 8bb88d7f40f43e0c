"""Running a command on one CPU or on every CPU (shared/DESIGN.md, "CPUs").

`--cpu N|all`; the default is the debugger's current CPU, or for images and dumps the
first VMCS found.  Under `all` a CPU that fails yields ``{"cpu": n, "error": "..."}`` and the
exit status is 2 only if every CPU fails.  Commands use these helpers so the rule is
implemented once.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from vtdbg.commands.registry import Context
from vtdbg.commands.result import Block, Heading, Result, Text
from vtdbg.lib.errors import UsageError, VtdbgError
from vtdbg.lib.numbers import parse_int

#: what one CPU's work returns: JSON object, text blocks, warnings
CpuOutcome = Tuple[Dict[str, Any], List[Block], List[str]]


def wants_all(ctx: Context) -> bool:
    """True for `--cpu all`."""
    return ctx.cpu is not None and ctx.cpu.lower() == "all"


def cpu_selection(ctx: Context, count: int, default: int = 0) -> List[int]:
    """The CPU numbers `--cpu` names among ``count`` (``default`` when it is not given)."""
    if ctx.cpu is None:
        return [default]
    if wants_all(ctx):
        return list(range(count))
    cpu = parse_int(ctx.cpu, "CPU number")
    if not 0 <= cpu < count:
        raise UsageError("CPU %d does not exist here (%d found)" % (cpu, count))
    return [cpu]


def vmcs_regions(ctx: Context) -> List[int]:
    """VMCS addresses per CPU: from the target profile when symbols allow, else a scan."""
    from vtdbg.core.regions import find_regions

    found = find_regions(ctx.target, warnings=ctx.warnings)
    pas = [r.vmcs_pa for r in found if r.vmcs_pa is not None]
    if not pas:
        raise VtdbgError("no VMCS found in %s; give --at PA" % ctx.target.description)
    return pas


def run_per_cpu(ctx: Context, cpus: List[int], one: Callable[[int], CpuOutcome],
                title: Optional[Callable[[int], str]] = None) -> Result:
    """Run ``one`` for each CPU.  One CPU: its errors propagate (exit 2) and the JSON is one
    object; `--cpu all`: a list, failing CPUs become error objects."""
    heading = title or (lambda cpu: "CPU %d" % cpu)
    if not wants_all(ctx):
        doc, blocks, warnings = one(cpus[0])
        doc["cpu"] = cpus[0]
        return Result(doc, [Heading(heading(cpus[0]))] + blocks, warnings=warnings)
    docs: List[Dict[str, Any]] = []
    out: List[Block] = []
    warnings_all: List[str] = []
    failures = 0  # counted apart: a command's own JSON may have an "error" key (check does)
    for cpu in cpus:
        try:
            doc, blocks, warnings = one(cpu)
        except VtdbgError as exc:
            failures += 1
            docs.append({"cpu": cpu, "error": str(exc)})
            out += [Heading(heading(cpu)), Text("error: %s" % exc, style="warning")]
            continue
        doc["cpu"] = cpu
        docs.append(doc)
        out += [Heading(heading(cpu))] + blocks
        warnings_all += ["CPU %d: %s" % (cpu, w) for w in warnings]
    return Result(docs, out, warnings=warnings_all, exit_code=2 if failures == len(cpus) else 0)
