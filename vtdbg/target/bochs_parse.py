"""Parsers for the text the Bochs internal debugger prints (no process handling here).

Everything in this module is a pure function of strings, so it is unit-tested against
captured transcripts without running Bochs.  The formats were measured on Bochs 2.7
(Debian 12); where 2.8+ may differ the parsers accept both the padded and the unpadded
number forms and ignore lines they do not know, and callers check counts, so a format
change surfaces as a clean error instead of wrong numbers.

Text handed to these functions is already decoded as latin-1 with carriage returns
removed (see :mod:`vtdbg.target.bochs_pty`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

# -- version ------------------------------------------------------------------------------

_BANNER = re.compile(r"Bochs x86 Emulator\s+(\d+)\.(\d+)(?:\.(\d+))?(\S*)")


def banner_version(text: str) -> Optional[str]:
    """``"2.7"`` (or ``"2.8"``, ``"3.0.devel"``...) from the start-up banner, None if absent."""
    match = _BANNER.search(text)
    if match is None:
        return None
    parts = [match.group(1), match.group(2)] + ([match.group(3)] if match.group(3) else [])
    return ".".join(parts) + match.group(4)


def version_tuple(version: Optional[str]) -> Optional[Tuple[int, int]]:
    """(major, minor) of a banner version, None when unknown."""
    if not version:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def layout_for_version(version: Optional[str]) -> Optional[str]:
    """The built-in VMCS layout a Bochs release uses.

    2.7 and 2.8 share revision id 0x2B but lay the VMCS out differently, so the revision id
    cannot choose; the banner can.  2.6.x used the 2.7 formula (with a smaller index
    limit that the 2.7 layout covers); 2.8 and 3.0 share one layout; anything newer is
    taken to be the development layout that followed 3.0.
    """
    parsed = version_tuple(version)
    if parsed is None:
        return None
    if (2, 6) <= parsed <= (2, 7):
        return "bochs_2_7"
    if (2, 8) <= parsed <= (3, 0):
        return "bochs_2_8_3_0"
    if parsed > (3, 0):
        return "bochs_git_post_3_0"
    return None


# -- numbers ------------------------------------------------------------------------------

def _int(text: str) -> int:
    """Bochs prints hex as ``0x...``, ``00000000_0000bc27`` or bare decimal."""
    text = text.strip().replace("_", "")
    if text.lower().startswith("0x"):
        return int(text, 16)
    if re.fullmatch(r"[0-9]+", text):
        return int(text, 10)
    return int(text, 16)


# -- memory dumps (xp / x) ----------------------------------------------------------------

_DUMP_LINE = re.compile(r"^0x([0-9a-fA-F]+)(?:[ \t]*<[^>\n]*>)?:((?:[ \t]+0x[0-9a-fA-F]+)*)(.*)$", re.M)


class DumpError(ValueError):
    """An ``xp``/``x`` answer did not contain the values asked for."""


def parse_dump(text: str, start: int, count: int, unit: int = 8) -> List[int]:
    """The ``count`` values of ``unit`` bytes an ``xp /N?x start`` printed.

    Every dump line starts with its address; the lines must be contiguous from ``start``
    and hold exactly ``count`` values, otherwise :class:`DumpError` carries the first line
    that was not understood (for example Bochs's "physical address not available").
    """
    values: List[int] = []
    expected = start
    for match in _DUMP_LINE.finditer(text):
        address = int(match.group(1), 16)
        found = [int(v, 16) for v in re.findall(r"0x([0-9a-fA-F]+)", match.group(2))]
        trailer = match.group(3).strip()
        if address != expected:
            raise DumpError("dump line at 0x%x where 0x%x was expected" % (address, expected))
        values.extend(found)
        expected = address + unit * len(found)
        if trailer:
            raise DumpError(trailer)
        if not found:
            raise DumpError("empty dump line at 0x%x" % address)
    if len(values) != count:
        problem = _first_foreign_line(text)
        raise DumpError(problem or "got %d of %d values" % (len(values), count))
    return values


def _first_foreign_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and line != "[bochs]:" and not _DUMP_LINE.match(line):
            return line
    return ""


def dump_bytes(values: List[int], unit: int = 8) -> bytes:
    """Little-endian bytes of dump values."""
    return b"".join(v.to_bytes(unit, "little") for v in values)


# -- registers (r, creg, sreg, show "cpuN.FS.base") -----------------------------------------

_GPR = re.compile(r"^([re](?:[a-z]{2}|\d{1,2})|r\d{1,2})\s*:\s*(?:0x)?([0-9a-fA-F_]+)\s*$", re.M)
_EFLAGS = re.compile(r"^eflags\s+0x([0-9a-fA-F]+)", re.M)
_CREG = re.compile(r"^(CR0|CR3|CR4|EFER|XCR0)=0x([0-9a-fA-F]+)", re.M)
_CR2 = re.compile(r"^CR2=page fault laddr=0x([0-9a-fA-F]+)", re.M)
_CR8 = re.compile(r"^CR8:\s*0x([0-9a-fA-F]+)", re.M)
_SREG = re.compile(r"^(es|cs|ss|ds|fs|gs|ldtr|tr):0x([0-9a-fA-F]+), dh=0x([0-9a-fA-F]+), dl=0x([0-9a-fA-F]+),"
                   r" valid=(\d+)", re.M)
_DTR = re.compile(r"^(gdtr|idtr):base=0x([0-9a-fA-F]+), limit=0x([0-9a-fA-F]+)", re.M)
_SHOW_LEAF = re.compile(r"^show param name: <cpu\d+\.(FS|GS)\.base>\s*\nbase = (0x[0-9a-fA-F]+|\d+)", re.M)


def descriptor_fields(dh: int, dl: int) -> Tuple[int, int, int]:
    """(base, limit, VMX-style access rights) of a descriptor given as Bochs's dh/dl words.

    Access rights use the VMCS layout (type/S/DPL/P in bits 7:0, AVL/L/D/G in 15:12) so they
    compare directly with GUEST_xx_AR_BYTES; the limit is scaled by the granularity bit.
    """
    base = ((dl >> 16) & 0xFFFF) | ((dh & 0xFF) << 16) | (dh & 0xFF000000)
    limit = (dl & 0xFFFF) | (dh & 0x000F0000)
    ar = ((dh >> 8) & 0xFF) | (((dh >> 20) & 0xF) << 12)
    if dh & (1 << 23):
        limit = (limit << 12) | 0xFFF
    return base, limit, ar


def parse_registers(text: str) -> Dict[str, int]:
    """Registers from the concatenated output of ``r``, ``creg``, ``sreg`` and the FS/GS base
    leaves, with lower-case names (rax..r15, rip, rflags, cr0..cr8, efer, xcr0, selectors and
    their ``_base``/``_limit``/``_ar``, gdtr/idtr ``_base``/``_limit``, fs_base, gs_base)."""
    regs: Dict[str, int] = {}
    for name, value in _GPR.findall(text):
        name = name.lower()
        if name.startswith("e") and len(name) == 3:
            # a 32-bit build prints eax..; keep the architectural 64-bit names
            name = "r" + name[1:]
        # "00000000_00090000" is hex even when it has no letters
        regs[name] = int(value.replace("_", ""), 16)
    match = _EFLAGS.search(text)
    if match:
        regs["rflags"] = int(match.group(1), 16)
    for name, value in _CREG.findall(text):
        regs[name.lower()] = int(value, 16)
    match = _CR2.search(text)
    if match:
        regs["cr2"] = int(match.group(1), 16)
    match = _CR8.search(text)
    if match:
        regs["cr8"] = int(match.group(1), 16)
    for name, selector, dh_text, dl_text, valid in _SREG.findall(text):
        dh, dl = int(dh_text, 16), int(dl_text, 16)
        base, limit, ar = descriptor_fields(dh, dl)
        regs[name] = int(selector, 16)
        regs[name + "_base"] = base
        regs[name + "_limit"] = limit
        # an invalid cache (valid=0) is what VMX calls "unusable" (AR bit 16)
        regs[name + "_ar"] = ar if int(valid) else ar | 0x10000
    for name, base_text, limit_text in _DTR.findall(text):
        regs[name + "_base"] = int(base_text, 16)
        regs[name + "_limit"] = int(limit_text, 16)
    for name, value in _SHOW_LEAF.findall(text):
        regs[name.lower() + "_base"] = _int(value)
    return regs


# -- the param tree (show "cpu0.VMX") ---------------------------------------------------------

def parse_param_tree(text: str) -> Dict[str, Any]:
    """A ``show "path"`` answer as nested dicts: ``true``/``false`` become bools, numbers
    ints, anything else stays a string.  The top-level object is returned unwrapped for a
    subtree and as ``{name: value}`` for a leaf."""
    root: Dict[str, Any] = {}
    stack: List[Dict[str, Any]] = [root]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("show param name:"):
            continue
        if line == "}":
            if len(stack) > 1:
                stack.pop()
            continue
        name, sep, value = line.partition(" = ")
        if not sep:
            continue
        if value == "{":
            child: Dict[str, Any] = {}
            stack[-1][name] = child
            stack.append(child)
            continue
        stack[-1][name] = _param_value(value)
    if len(root) == 1:
        only = next(iter(root.values()))
        if isinstance(only, dict):
            return only
    return root


def _param_value(value: str) -> Any:
    if value == "true":
        return True
    if value == "false":
        return False
    try:
        return _int(value)
    except ValueError:
        return value.strip("'\"")


def vmx_summary(tree: Dict[str, Any]) -> Dict[str, Any]:
    """The VMX facts of a ``show "cpuN.VMX"`` tree in vtdbg's vocabulary.

    ``vmcsptr``/``vmxonptr`` are all ones when unset; they are reported as None then so
    callers never treat -1 as an address.
    """
    def pointer(key: str) -> Optional[int]:
        value = tree.get(key)
        if not isinstance(value, int) or value in (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF):
            return None
        return value

    return {
        "vmcsptr": pointer("vmcsptr"),
        "vmxonptr": pointer("vmxonptr"),
        "in_vmx": bool(tree.get("in_vmx", False)),
        "in_vmx_guest": bool(tree.get("in_vmx_guest", False)),
        "in_smm_vmx": bool(tree.get("in_smm_vmx", False)),
        "cache": tree.get("VMCS_CACHE", {}),
    }


# -- stops --------------------------------------------------------------------------------

_NEXT_AT = re.compile(r"Next at t=(\d+)")
_CPU_LINE = re.compile(r"^\((\d+)\)\s+\[0x([0-9a-fA-F]+)\]\s+([0-9a-fA-F]{4}):([0-9a-fA-F]+)\s+\(([^)]*)\):\s*(.*?)"
                       r"(?:\s*;\s*([0-9a-fA-F]+))?\s*$", re.M)
_HEADER = re.compile(r"\((\d+)\) (Magic breakpoint|Caught VMEXIT breakpoint|Caught [^\n]*|Breakpoint (\d+),[^\n]*"
                     r"|Watchpoint[^\n]*)\r?\n$")


_INNER_HEADER = re.compile(r"^\((\d+)\) (Magic breakpoint|Caught VMEXIT breakpoint|Caught [^\n]*"
                           r"|Breakpoint (\d+),[^\n]*|Watchpoint[^\n]*)$")


def _header_kind(words: str, number: Optional[str]) -> Tuple[str, Optional[int]]:
    """(kind, breakpoint number) of a stop header's words."""
    if words.startswith("Magic"):
        return "magic", None
    if words.startswith("Caught VMEXIT"):
        return "vmexit", None
    if number is not None:
        return "breakpoint", int(number)
    return "other", None


@dataclass
class StopReport:
    """What Bochs printed when the simulation stopped."""

    kind: str  # "magic" | "vmexit" | "breakpoint" | "other" | "step" (no header line)
    cpu: Optional[int]
    ticks: Optional[int]
    header: str = ""
    breakpoint: Optional[int] = None
    #: per CPU: (physical address of the next instruction, cs, rip, instruction text)
    cpus: Dict[int, Tuple[int, int, int, str]] = field(default_factory=dict)


def split_stop(text: str) -> Tuple[str, Optional[StopReport], str]:
    """Split the answer of a run command (``c``, ``s``) into (guest console text, stop
    report, debugger text after the report).

    Port-0xE9 bytes are printed while the guest runs, so they precede the stop report; the
    report begins with an optional header line right before the LAST ``Next at t=`` (the
    guest cannot print after it stopped).  The console part may end without a newline
    ("abc(0) Magic breakpoint"), so the header is matched unanchored on its left.
    """
    nexts = list(_NEXT_AT.finditer(text))
    if not nexts:
        return text, None, ""
    last = nexts[-1]
    before = text[:last.start()]
    header = _HEADER.search(before)
    if header is not None:
        console = before[:header.start()]
        cpu: Optional[int] = int(header.group(1))
        kind, bp = _header_kind(header.group(2), header.group(3))
        head_text = header.group(0).strip()
    else:
        console, cpu, kind, head_text, bp = before, None, "step", "", None
    # the report's CPU lines follow "Next at t="; anything after them is later output.  With
    # several CPUs, the header of a CPU other than 0 comes among them, right before that
    # CPU's line ("(1) Caught VMEXIT breakpoint"), and Bochs may put a "bx_dbg_..."
    # complaint between them (a CPU still in real mode at the BIOS's selector).
    rest = text[last.end():]
    cpus: Dict[int, Tuple[int, int, int, str]] = {}
    consumed = 0
    position = 0
    for line in rest.splitlines(True):
        position += len(line)
        stripped = line.strip()
        line_match = _CPU_LINE.match(line.rstrip("\n"))
        if line_match is not None:
            cpus[int(line_match.group(1))] = (int(line_match.group(2), 16), int(line_match.group(3), 16),
                                              int(line_match.group(4), 16), line_match.group(6).strip())
            consumed = position
            continue
        inner = _INNER_HEADER.match(stripped)
        if inner is not None:
            if kind == "step":
                cpu = int(inner.group(1))
                kind, bp = _header_kind(inner.group(2), inner.group(3))
                head_text = stripped
            consumed = position
            continue
        if not stripped or stripped.startswith("bx_dbg_"):
            continue
        break
    report = StopReport(kind, cpu, int(last.group(1)), head_text, bp, cpus)
    return console, report, rest[consumed:].lstrip("\n")


# -- disassembly (u) ------------------------------------------------------------------------

_DISASM = re.compile(r"^([0-9a-fA-F]+): \([^)]*\): (.*?)\s*; ([0-9a-fA-F]+)\s*$", re.M)


def parse_disasm(text: str) -> List[Tuple[int, int, str]]:
    """``u /N addr`` lines as (linear address, instruction length, text)."""
    return [(int(addr, 16), len(raw) // 2, insn) for addr, insn, raw in _DISASM.findall(text)]


# -- breakpoints, paging, start-up, logs --------------------------------------------------------

_BLIST = re.compile(r"^\s*(\d+)\s+(\w+)\s+(\w+)\s+([yn])\s+0x([0-9a-fA-F]+)", re.M)


def parse_blist(text: str) -> List[Tuple[int, str, int]]:
    """``blist`` rows as (id, type, address); type is ``lbreakpoint``/``pbreakpoint``/..."""
    return [(int(num), kind, int(addr, 16)) for num, kind, _disp, _enb, addr in _BLIST.findall(text)]


_PAGE = re.compile(r"linear page 0x([0-9a-fA-F]+) maps to physical page 0x([0-9a-fA-F]+)")


def parse_page(text: str, linear: int) -> Optional[int]:
    """Physical address of ``linear`` from a ``page`` answer, None when not mapped."""
    match = _PAGE.search(text)
    if match is None:
        return None
    return int(match.group(2), 16) | (linear & 0xFFF)


_PAGE_ANY = re.compile(r"linear page 0x([0-9a-fA-F]+) maps to physical page 0x([0-9a-fA-F]+)"
                       r"|physical address not available for linear 0x([0-9a-fA-F]+)")


def parse_pages(text: str) -> Dict[int, Optional[int]]:
    """Answers of several ``page`` commands: linear page -> physical page (None: unmapped)."""
    found: Dict[int, Optional[int]] = {}
    for linear, physical, missing in _PAGE_ANY.findall(text):
        if missing:
            found[int(missing, 16) & ~0xFFF] = None
        else:
            found[int(linear, 16)] = int(physical, 16)
    return found


def startup_cpus(text: str) -> int:
    """Number of CPUs listed in the first stop report (Bochs prints one line per CPU)."""
    _console, report, _rest = split_stop(text)
    if report is None or not report.cpus:
        return 1
    return max(report.cpus) + 1


_MEM_SIZE = re.compile(r"\[MEM0\s*\]\s+(\d+(?:\.\d+)?)MB")
_ROM = re.compile(r"\[MEM0\s*\]\s+rom at 0x([0-9a-fA-F]+)/(\d+)")
_HLT = re.compile(r"\[CPU(\d+)\s*\][^\n]*HLT instruction with IF=0")


def memory_layout(log_text: str) -> Tuple[Optional[int], List[Tuple[int, int]]]:
    """(RAM size in bytes, [(rom base, rom size)]) from the Bochs log's MEM0 lines."""
    ram = None
    match = _MEM_SIZE.search(log_text)
    if match:
        ram = int(float(match.group(1)) * (1 << 20))
    roms = [(int(base, 16), int(size)) for base, size in _ROM.findall(log_text)]
    return ram, roms


def halted_cpus(log_text: str) -> List[int]:
    """CPUs the log reports executing HLT with interrupts disabled (they never wake up)."""
    return sorted({int(cpu) for cpu in _HLT.findall(log_text)})


# -- conventions of the vtdbg lab (tests/lab) -----------------------------------------------------

_MSR_LINE = re.compile(r"^MSR ([0-9A-Fa-f]{1,8}) ([0-9A-Fa-f]{1,16})\s*$", re.M)
_INFO_LINE = re.compile(r"^INFO (\w+) ([0-9A-Fa-f]+)\s*$", re.M)


def console_msrs(console: str) -> Dict[int, int]:
    """``MSR <index> <value>`` lines (hex) a guest printed, by index (the last one wins)."""
    return {int(index, 16): int(value, 16) for index, value in _MSR_LINE.findall(console)}


def console_info(console: str) -> Dict[str, int]:
    """``INFO <key> <hex>`` lines a guest printed (the lab's info block, MAXPHYADDR, ...)."""
    return {key: int(value, 16) for key, value in _INFO_LINE.findall(console)}
