"""`vtdbg scan FILE`: find VMXON and VMCS regions, EPT hierarchies, CPUs, VMs and nested
guests in a dump or memory image (the post-mortem entry point)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import IO, Any, List, Optional

from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import Block, Cell, Heading, KeyValues, Link, Result, Table, Text, hex_value
from vtdbg.core.scan import ScanResult, scan
from vtdbg.lib.errors import UsageError
from vtdbg.lib.numbers import parse_int
from vtdbg.target.base import Capability

MiB = 1 << 20


class ProgressBar:
    """A one-line progress bar on a terminal's stderr, shown only for scans that last.

    Nothing is drawn during the first ``delay`` seconds (short scans stay silent), at most
    ten redraws a second, and the line is cleared at the end.
    """

    def __init__(self, stream: IO[str], delay: float = 0.5) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.delay = delay
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.started < self.delay or now - self.last < 0.1:
            return
        self.last = now
        share = done / total if total else 1.0
        width = 30
        filled = int(width * share)
        rate = done / (now - self.started) / 1e9
        self.stream.write("\rscanning [%s%s] %5.1f%%  %d/%d MiB  %.2f GB/s" % (
            "#" * filled, "." * (width - filled), 100 * share, done // MiB, total // MiB, rate))
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        """Clear the line if anything was drawn."""
        if self.drawn:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()


def progress_for(stream: Optional[IO[str]] = None) -> Optional[ProgressBar]:
    """A progress bar when ``stream`` (default stderr) is a terminal, else None."""
    stream = stream or sys.stderr
    try:
        return ProgressBar(stream) if stream.isatty() else None
    except (AttributeError, ValueError, OSError):
        return None


def _yes_no(value: Optional[bool]) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def scan_blocks(result: ScanResult, description: str) -> List[Block]:
    """The text view of a scan."""
    blocks: List[Block] = []
    rate = result.scanned_bytes / result.seconds / 1e9 if result.seconds else 0.0
    blocks.append(KeyValues([
        ["target", description],
        ["scanned", "%.1f MiB in %.2f s (%.2f GB/s), %d candidate page(s) validated"
         % (result.scanned_bytes / MiB, result.seconds, rate, result.candidates)],
        ["found", "%d VMCS, %d VMXON, %d EPT hierarchies, %d VM(s), %d host CPU(s)"
         % (len(result.vmcs), len(result.vmxon), len(result.ept), len(result.vms), len(result.cpus))],
    ]))
    rows: List[List[Cell]]
    if result.vmcs:
        rows = []
        for index, cand in enumerate(result.vmcs):
            nested = "" if not cand.nested else ("in VM %s at GPA %s" % (cand.nested_in, hex_value(cand.gpa))
                                                 if cand.nested_in is not None else "yes")
            rows.append([Link(str(index), "cpu", index), Link(hex_value(cand.pa), "phys", cand.pa),
                         "0x%x%s" % (cand.revision_id, " (shadow)" if cand.shadow else ""),
                         "%s (%.2f)" % (cand.layout, cand.confidence), cand.launch_state or "-",
                         hex_value(cand.values.get("HOST_RIP")), hex_value(cand.eptp),
                         _yes_no(cand.host_cr3_maps_page), "-" if cand.vm is None else str(cand.vm),
                         "-" if cand.host_cpu is None else str(cand.host_cpu), nested or "-"])
        blocks.append(Heading("VMCS regions (--cpu N selects the Nth)"))
        blocks.append(Table(["#", "PA", "revision", "layout (confidence)", "launch", "host RIP", "EPTP",
                             "host CR3 maps it", "VM", "host CPU", "nested"], rows))
    if result.vmxon:
        blocks.append(Heading("VMXON regions"))
        blocks.append(Table(["PA", "revision", "confidence", "why"],
                            [[Link(hex_value(v.pa), "phys", v.pa), "0x%x" % v.revision_id, v.confidence, v.reason]
                             for v in result.vmxon]))
    if result.ept:
        rows = []
        for doc in result.ept:
            mapped = doc.get("mapped_bytes")
            rows.append([Link(hex_value(doc["eptp"]), "command", "ept --eptp 0x%x --map" % doc["eptp"]),
                         "-" if mapped is None else "%.1f MiB" % (mapped / MiB), str(doc.get("ranges", "-")),
                         str(doc.get("tables", "-")), str(doc.get("misconfigurations", "-")),
                         str(doc.get("hooks", "-")),
                         doc.get("error") or "; ".join(doc.get("eptp_problems", [])) or "ok"])
        blocks.append(Heading("EPT hierarchies"))
        blocks.append(Table(["EPTP", "mapped", "ranges", "tables", "misconfigs", "hooks", "status"], rows))
    if result.vms:
        blocks.append(Heading("VMs (VMCSs sharing an EPT) and nested guests"))
        blocks.append(Table(["VM", "EPTP", "VMCS", "host RIP", "layout", "nested in"],
                            [[str(vm["vm"]), hex_value(vm["eptp"]), ", ".join(hex_value(p) for p in vm["vmcs"]),
                              hex_value(vm["host_rip"]), vm["layout"],
                              "-" if vm.get("nested_in") is None else "VM %d" % vm["nested_in"]]
                             for vm in result.vms]))
    if not result.vmcs and not result.vmxon:
        blocks.append(Text("No VMCS or VMXON region found.  A VMCS of a CPU whose layout vtdbg does not know is "
                           "invisible here: add a layout (see `vtdbg layouts`).", style="note"))
    return blocks


def _scan_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="dump or image to scan (format sniffed); default: the --target")
    parser.add_argument("--no-ept", action="store_true", help="do not walk the EPT hierarchies found")
    parser.add_argument("--no-host-check", action="store_true",
                        help="skip the check that HOST_CR3 maps each VMCS page")
    parser.add_argument("--max-ept-tables", default="4096", metavar="N",
                        help="tables one EPT walk may visit (default 4096)")


@command("scan", help="find VMXON/VMCS regions, EPT hierarchies, CPUs, VMs and nested guests in a dump",
         examples=["vtdbg scan memory.dmp", "vtdbg scan lab.img --json", "vtdbg --target dump:core.elf scan"],
         needs=Capability.PHYS_READ,
         description="Scan every page of a dump or memory image for VMXON and VMCS regions (revision id, "
                     "VMX-abort indicator, layout plausibility, host CR3 mapping the page), walk the EPT "
                     "hierarchies they point to, and group the VMCSs per host CPU, per VM and per nested guest.")
@arguments(_scan_args)
def scan_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Scan the FILE (or the target) and report what was found."""
    ctx.use_file(args.file)
    target = ctx.target
    target.require(Capability.PHYS_READ, "`scan`")
    max_tables = parse_int(args.max_ept_tables, "table count")
    if max_tables < 1:
        raise UsageError("--max-ept-tables must be at least 1")
    bar = progress_for()
    try:
        result = scan(target, progress=bar, with_ept=not args.no_ept, check_host_cr3=not args.no_host_check,
                      max_ept_tables=max_tables)
    finally:
        if bar is not None:
            bar.finish()
    data: Any = result.to_json()
    data["target"] = target.description
    warnings = list(getattr(target, "warnings", [])) + list(result.warnings)
    return Result(data, scan_blocks(result, target.description), warnings=warnings)
