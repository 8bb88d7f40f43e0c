"""VM-exit tracing on the Bochs backend with one debugger line per exit.

:class:`vtdbg.core.trace.VmexitBreakSource` reads an exit with three lines (``show
"cpuN.VMX"`` for the VMCS pointer, ``xp`` of the page, ``r; creg; sreg...`` for the
registers).  Bochs accepts several ``;``-separated commands on one line, and a CPU's
current VMCS rarely changes between exits, so this source asks for all three at once:

    xp /512gx <VMCS of the previous exit>; show "cpuN.VMX"; r

and re-reads the page with a second line only when ``vmcsptr`` moved (the lab's entry-
failure scenarios use a fresh VMCS each).  Registers come from ``r`` alone: at a VM exit
only the general registers can still be the guest's.

This module uses BochsTarget's public API (``command``, ``read_phys``, ``phys_ranges``,
``current_cpu``) and the parsers of :mod:`vtdbg.target.bochs_parse`; it lives beside the
backend so that core stays free of Bochs text.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from vtdbg.core.trace import Site, Snapshot, Stop, VmexitBreakSource, guest_gprs
from vtdbg.layouts.model import REGION_SIZE
from vtdbg.lib.errors import TargetError
from vtdbg.target import bochs_parse as bp
from vtdbg.target.base import Target

_QWORDS = REGION_SIZE // 8


def split_answer(text: str) -> Tuple[str, str, str]:
    """(dump part, ``show`` tree, the rest) of a combined ``xp; show; r`` answer.

    The tree starts at ``show param name:`` and ends at the ``}`` that closes its first
    ``{``; what precedes it is the dump, what follows the registers.
    """
    start = text.find("show param name:")
    if start < 0:
        return text, "", ""
    depth = 0
    opened = False
    position = start
    for line in text[start:].splitlines(True):
        position += len(line)
        stripped = line.strip()
        if stripped.endswith("{"):
            depth += 1
            opened = True
        elif stripped == "}":
            depth -= 1
            if opened and depth == 0:
                break
    return text[:start], text[start:position], text[position:]


class BochsExitSource(VmexitBreakSource):
    """``vmexitbp`` stops, each read with one debugger line (two when the VMCS moved)."""

    description = "Bochs stop-on-VM-exit (vmexitbp), one debugger line per exit"

    def __init__(self, target: Target, resume_sites: Sequence[Site] = (), skip_magic: bool = True) -> None:
        super().__init__(target, resume_sites, skip_magic)
        if not callable(getattr(target, "command", None)):
            raise TargetError("%s target has no debugger command line" % target.kind)
        #: CPU -> VMCS pointer at its previous exit
        self.vmcs: Dict[int, int] = {}

    def _readable(self, pa: int) -> bool:
        return any(start <= pa and pa + REGION_SIZE <= start + size for start, size in self.target.phys_ranges())

    def snapshot(self, stop: Stop, gprs: bool) -> Snapshot:
        """One combined line; a second ``xp`` only when the VMCS pointer changed."""
        target = self.target
        cpu = stop.cpu
        cached: Optional[int] = self.vmcs.get(cpu)
        commands = []
        if cached is not None and self._readable(cached):
            commands.append("xp /%dgx 0x%x" % (_QWORDS, cached))
        else:
            cached = None
        commands.append('show "cpu%d.VMX"' % cpu)
        if gprs:
            current = target.current_cpu()
            # `r` prints the debugger's current CPU; switch for it within the same line
            commands += ["r"] if cpu == current else ["set $cpu = %d" % cpu, "r", "set $cpu = %d" % current]
        text = target.command("; ".join(commands))  # type: ignore[attr-defined]
        dump, tree_text, rest = split_answer(text)
        tree = bp.parse_param_tree(tree_text)
        if "vmcsptr" not in tree:
            raise TargetError("Bochs gave no VMX state for CPU %d: %s" % (cpu, text.strip()[:200]))
        pa = bp.vmx_summary(tree)["vmcsptr"]
        if pa is None:
            raise TargetError("CPU %d has no current VMCS at this VM exit" % cpu)
        page: Optional[bytes] = None
        if cached == pa:
            try:
                page = bp.dump_bytes(bp.parse_dump(dump, pa, _QWORDS))
            except bp.DumpError:
                page = None  # read it again on its own line below
        if page is None:
            page = target.read_phys(pa, REGION_SIZE)
        self.vmcs[cpu] = pa
        regs = None
        if gprs:
            parsed = bp.parse_registers(rest)
            if "rax" not in parsed:
                raise TargetError("could not parse Bochs's registers at the exit: %s" % rest.strip()[:200])
            regs = guest_gprs(parsed)
        return Snapshot(pa, page, regs, getattr(target, "preferred_layout", None))
