"""VM-exit records, filters and trace events (the data side of `vtdbg trace`).

An :class:`ExitRecord` is one VM exit as vtdbg saw it: the exit-information fields of the
VMCS, the guest registers when known, and the *argument* of the exit -- the one number a
person filters on (CPUID leaf, MSR index, I/O port, vector, GPA, CR number...).

A filter (:class:`ExitFilter`) selects exits by basic reason, optionally a condition on a
decoded sub-field (I/O direction, CR access type, interruption type) and an argument
match.  The short names people type (``cpuid``, ``msr-read``, ``io-in``, ``exception 14``)
are the table :data:`FILTERS`; any other exit-reason name or number goes through
:func:`vtdbg.arch.exit_reasons.lookup_exit_reason`.  Where each argument comes from is the
table :data:`ARGUMENTS`; nothing below those tables knows a bit position.

An :class:`Event` is a filter plus a CPU restriction, actions, a hit count and an enabled
flag, kept by id in an :class:`EventTable` (HyperDbg's event model: list, enable, disable,
clear by id).  This module reads no target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from vtdbg.arch import bitfields, exit_reasons
from vtdbg.arch.errors import UnknownNameError
from vtdbg.lib.errors import UsageError
from vtdbg.lib.numbers import parse_int

# -- where arguments come from ----------------------------------------------------------------


@dataclass(frozen=True)
class ArgumentSpec:
    """How to find one kind of exit argument.

    ``source`` is ``"gpr"`` (a guest register, ``key`` = its name), ``"record"`` (a VMCS
    field of the record, ``key`` = its record key) or ``"bits"`` (a sub-field of a record
    value decoded with a bitfield layout: ``key`` = record key, ``layout``/``bits`` name
    the layout and its field).  ``valid_bit``: a bit of the record value that must be set
    for the argument to exist (the valid bit of interruption information).
    """

    name: str
    source: str
    key: str
    mask: int = (1 << 64) - 1
    layout: Optional[str] = None
    bits: Optional[str] = None
    valid_bit: Optional[int] = None
    sdm: str = ""


#: argument kinds by name (SDM Vol. 3C 28.2.1 exit qualifications, 28.2.2 event information)
ARGUMENTS: Dict[str, ArgumentSpec] = {a.name: a for a in (
    ArgumentSpec("leaf", "gpr", "rax", 0xFFFFFFFF, sdm="CPUID takes its leaf in EAX (SDM Vol. 2A, CPUID)"),
    ArgumentSpec("msr", "gpr", "rcx", 0xFFFFFFFF, sdm="RDMSR/WRMSR take the MSR index in ECX (SDM Vol. 2B)"),
    ArgumentSpec("port", "bits", "qualification", layout="io_instruction", bits="port",
                 sdm="SDM 28.2.1, Table 28-5: bits 31:16 of the I/O qualification"),
    ArgumentSpec("vector", "bits", "intr_info", layout="interruption_info", bits="vector", valid_bit=31,
                 sdm="SDM 28.2.2: VM-exit interruption information, bits 7:0 when bit 31 is set"),
    ArgumentSpec("cr", "bits", "qualification", layout="cr_access", bits="cr_number",
                 sdm="SDM 28.2.1, Table 28-3: bits 3:0 of the CR-access qualification"),
    ArgumentSpec("dr", "bits", "qualification", layout="mov_dr", bits="dr_number",
                 sdm="SDM 28.2.1, Table 28-4: bits 2:0 of the MOV-DR qualification"),
    ArgumentSpec("gpa", "record", "guest_physical_address",
                 sdm="SDM 28.2.1: guest-physical address field for EPT violations and misconfigurations"),
    ArgumentSpec("linear_address", "record", "qualification",
                 sdm="SDM 28.2.1: the INVLPG qualification is the linear-address operand"),
    ArgumentSpec("hypercall", "gpr", "rax", sdm="convention of most hypervisors: the VMCALL number in RAX"),
    ArgumentSpec("xcr", "gpr", "rcx", 0xFFFFFFFF, sdm="XSETBV takes the XCR number in ECX (SDM Vol. 2C)"),
)}

#: the argument each basic reason has by default (canonical exit-reason names)
REASON_ARGUMENT: Dict[str, str] = {
    "EXCEPTION_NMI": "vector", "EXTERNAL_INTERRUPT": "vector", "CPUID": "leaf", "INVLPG": "linear_address",
    "VMCALL": "hypercall", "CR_ACCESS": "cr", "DR_ACCESS": "dr", "IO_INSTRUCTION": "port",
    "MSR_READ": "msr", "MSR_WRITE": "msr", "EPT_VIOLATION": "gpa", "EPT_MISCONFIG": "gpa", "XSETBV": "xcr",
}

#: common MSR names accepted where an MSR index is expected (SDM Vol. 4, Table 2-2); the
#: IA32_VMX_* names come from vtdbg.arch.msrs
MSR_NAMES: Dict[str, int] = {
    "IA32_TSC": 0x10, "IA32_APIC_BASE": 0x1B, "IA32_FEATURE_CONTROL": 0x3A, "IA32_SYSENTER_CS": 0x174,
    "IA32_SYSENTER_ESP": 0x175, "IA32_SYSENTER_EIP": 0x176, "IA32_DEBUGCTL": 0x1D9, "IA32_PAT": 0x277,
    "IA32_EFER": 0xC0000080, "IA32_STAR": 0xC0000081, "IA32_LSTAR": 0xC0000082, "IA32_CSTAR": 0xC0000083,
    "IA32_FMASK": 0xC0000084, "IA32_FS_BASE": 0xC0000100, "IA32_GS_BASE": 0xC0000101,
    "IA32_KERNEL_GS_BASE": 0xC0000102, "IA32_TSC_AUX": 0xC0000103,
}

#: exception mnemonics accepted where a vector is expected (SDM Vol. 3A Table 6-1)
VECTOR_NAMES: Dict[str, int] = {
    "DE": 0, "DB": 1, "NMI": 2, "BP": 3, "OF": 4, "BR": 5, "UD": 6, "NM": 7, "DF": 8, "TS": 10, "NP": 11,
    "SS": 12, "GP": 13, "PF": 14, "MF": 16, "AC": 17, "MC": 18, "XM": 19, "XF": 19, "VE": 20, "CP": 21,
}


# -- the filter table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """``record[key]`` decoded with ``layout`` has ``bits`` in ``values``."""

    key: str
    layout: str
    bits: str
    values: Tuple[int, ...]

    def holds(self, record: ExitRecord) -> bool:
        """True when the record's value has the wanted sub-field value."""
        raw = record.get(self.key)
        if raw is None:
            return False
        return bitfields.layout(self.layout).field(self.bits).extract(raw) in self.values


@dataclass(frozen=True)
class FilterSpec:
    """One row of :data:`FILTERS`: reasons (canonical names; empty = every reason), an
    optional condition, the argument kind (None = the reason's default) and whether only
    VM-entry failures match."""

    reasons: Tuple[str, ...]
    condition: Optional[Condition] = None
    argument: Optional[str] = None
    entry_failure: Optional[bool] = None
    aliases: Tuple[str, ...] = ()
    help: str = ""


_IO_DIRECTION = ("qualification", "io_instruction", "direction")
_CR_ACCESS = ("qualification", "cr_access", "access_type")
_DR_DIRECTION = ("qualification", "mov_dr", "direction")
_INTR_TYPE = ("intr_info", "interruption_info", "type")


def _when(where: Tuple[str, str, str], *values: int) -> Condition:
    return Condition(where[0], where[1], where[2], tuple(values))


#: filter names people type; direction/type conditions are decoded with the arch bitfield
#: layouts (io_instruction.direction: 1 = IN; cr_access.access_type: 0 = MOV to CR, 1 = MOV
#: from CR; mov_dr.direction: 0 = MOV to DR; interruption_info.type: 2 = NMI)
FILTERS: Dict[str, FilterSpec] = {
    "any": FilterSpec((), aliases=("all", "*", "every"), help="every VM exit"),
    "cpuid": FilterSpec(("CPUID",), help="CPUID [LEAF]"),
    "msr": FilterSpec(("MSR_READ", "MSR_WRITE"), argument="msr", help="RDMSR or WRMSR [INDEX]"),
    "msr-read": FilterSpec(("MSR_READ",), aliases=("rdmsr", "msrread"), help="RDMSR [INDEX]"),
    "msr-write": FilterSpec(("MSR_WRITE",), aliases=("wrmsr", "msrwrite"), help="WRMSR [INDEX]"),
    "io": FilterSpec(("IO_INSTRUCTION",), help="IN/OUT/INS/OUTS [PORT]"),
    "io-in": FilterSpec(("IO_INSTRUCTION",), _when(_IO_DIRECTION, 1), aliases=("ioin", "in"), help="IN/INS [PORT]"),
    "io-out": FilterSpec(("IO_INSTRUCTION",), _when(_IO_DIRECTION, 0), aliases=("ioout", "out"),
                         help="OUT/OUTS [PORT]"),
    "cr": FilterSpec(("CR_ACCESS",), help="control-register access [CR]"),
    "cr-write": FilterSpec(("CR_ACCESS",), _when(_CR_ACCESS, 0), aliases=("crwrite", "mov-to-cr"),
                           help="MOV to CR [CR]"),
    "cr-read": FilterSpec(("CR_ACCESS",), _when(_CR_ACCESS, 1), aliases=("crread", "mov-from-cr"),
                          help="MOV from CR [CR]"),
    "dr": FilterSpec(("DR_ACCESS",), aliases=("mov-dr",), help="MOV DR [DR]"),
    "dr-write": FilterSpec(("DR_ACCESS",), _when(_DR_DIRECTION, 0), aliases=("mov-to-dr",), help="MOV to DR [DR]"),
    "dr-read": FilterSpec(("DR_ACCESS",), _when(_DR_DIRECTION, 1), aliases=("mov-from-dr",), help="MOV from DR [DR]"),
    "exception": FilterSpec(("EXCEPTION_NMI",), _when(_INTR_TYPE, 3, 4, 5, 6), aliases=("exc",),
                            help="exception [VECTOR|#PF|UD...] (not NMI)"),
    "nmi": FilterSpec(("EXCEPTION_NMI",), _when(_INTR_TYPE, 2), help="NMI"),
    "interrupt": FilterSpec(("EXTERNAL_INTERRUPT",), aliases=("extint", "irq", "external-interrupt"),
                            help="external interrupt [VECTOR] (vector known with acknowledge-on-exit)"),
    "ept-violation": FilterSpec(("EPT_VIOLATION",), aliases=("ept",), help="EPT violation [GPA|GPA-GPA]"),
    "ept-misconfig": FilterSpec(("EPT_MISCONFIG",), help="EPT misconfiguration [GPA]"),
    "invlpg": FilterSpec(("INVLPG",), help="INVLPG [LINEAR]"),
    "vmcall": FilterSpec(("VMCALL",), aliases=("hypercall",), help="VMCALL [RAX]"),
    "xsetbv": FilterSpec(("XSETBV",), help="XSETBV [XCR]"),
    "entry-failure": FilterSpec((), entry_failure=True, aliases=("entry-fail", "vmentry-failure"),
                                help="VM-entry failures (exit reason bit 31)"),
}
_FILTER_BY_NAME: Dict[str, str] = {}
for _name, _spec in FILTERS.items():
    for _word in (_name,) + _spec.aliases:
        _FILTER_BY_NAME[_word.lower()] = _name


# -- records --------------------------------------------------------------------------------------

#: record key -> VMCS field name, in the order of the lab's own exit log (ground_truth.json)
EXIT_FIELDS: Tuple[Tuple[str, str], ...] = (
    ("exit_reason_full", "VM_EXIT_REASON"),
    ("qualification", "EXIT_QUALIFICATION"),
    ("guest_rip", "GUEST_RIP"),
    ("instruction_len", "VM_EXIT_INSTRUCTION_LEN"),
    ("guest_physical_address", "GUEST_PHYSICAL_ADDRESS"),
    ("guest_linear_address", "GUEST_LINEAR_ADDRESS"),
    ("intr_info", "VM_EXIT_INTR_INFO"),
    ("intr_error_code", "VM_EXIT_INTR_ERROR_CODE"),
    ("idt_vectoring_info", "IDT_VECTORING_INFO_FIELD"),
    ("idt_vectoring_error_code", "IDT_VECTORING_ERROR_CODE"),
    ("instruction_info", "VMX_INSTRUCTION_INFO"),
    ("guest_rsp", "GUEST_RSP"),
    ("guest_rflags", "GUEST_RFLAGS"),
    ("host_rip", "HOST_RIP"),
)

_GPR_ORDER = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
              "r14", "r15")


@dataclass
class ExitRecord:
    """One VM exit.  ``values`` holds the VMCS exit fields by record key (see
    :data:`EXIT_FIELDS`); a key is absent when the source could not supply it."""

    cpu: int
    values: Dict[str, int]
    gprs: Optional[Dict[str, int]] = None
    index: int = 0
    seen_index: int = 0
    time: Optional[float] = None
    ticks: Optional[int] = None
    site: Optional[str] = None
    vmcs_pa: Optional[int] = None
    layout: Optional[str] = None
    handler_ticks: Optional[int] = None
    handler_seconds: Optional[float] = None
    events: List[int] = field(default_factory=list)
    command_output: Optional[str] = None

    def get(self, key: str) -> Optional[int]:
        """A VMCS value by record key, None when unknown."""
        return self.values.get(key)

    @property
    def exit_reason_full(self) -> int:
        """The 32-bit exit-reason field (0 when the source did not supply it)."""
        return self.values.get("exit_reason_full", 0)

    @property
    def exit_reason(self) -> int:
        """The basic exit reason (bits 15:0)."""
        return exit_reasons.basic_reason(self.exit_reason_full)

    @property
    def entry_failure(self) -> bool:
        """Bit 31: the exit reports a failed VM entry."""
        return exit_reasons.is_entry_failure(self.exit_reason_full)

    @property
    def reason_name(self) -> str:
        """Canonical name of the basic reason."""
        return exit_reasons.exit_reason_name(self.exit_reason)

    def argument(self) -> Tuple[Optional[str], Optional[int]]:
        """(kind, value) of this exit's natural argument; value None when unknown."""
        kind = REASON_ARGUMENT.get(self.reason_name)
        if kind is None:
            return None, None
        return kind, argument_value(self, kind)

    def detail(self) -> str:
        """A few words decoding the qualification / event information."""
        return exit_detail(self)

    def to_json(self) -> Dict[str, Any]:
        """The trace JSON object (shared/DESIGN.md: basic reason + entry_failure, ints)."""
        kind, value = self.argument()
        doc: Dict[str, Any] = {
            "index": self.index, "seen_index": self.seen_index, "cpu": self.cpu,
            "exit_reason": self.exit_reason, "reason_name": self.reason_name,
            "entry_failure": self.entry_failure,
        }
        for key, _name in EXIT_FIELDS:
            doc[key] = self.values.get(key)
        doc.update({
            "argument_kind": kind, "argument": value, "detail": self.detail(),
            "gprs": dict(self.gprs) if self.gprs is not None else None,
            "vmcs_pa": self.vmcs_pa, "layout": self.layout, "site": self.site, "time": self.time,
            "ticks": self.ticks, "handler_ticks": self.handler_ticks, "handler_seconds": self.handler_seconds,
            "events": list(self.events),
        })
        if self.command_output is not None:
            doc["command_output"] = self.command_output
        return doc

    @classmethod
    def from_json(cls, doc: Dict[str, Any]) -> ExitRecord:
        """Inverse of :meth:`to_json` (for logs read back by `vtdbg stats`)."""
        values = {key: int(doc[key]) for key, _ in EXIT_FIELDS if isinstance(doc.get(key), int)}
        if "exit_reason_full" not in values and isinstance(doc.get("exit_reason"), int):
            values["exit_reason_full"] = int(doc["exit_reason"]) | (1 << 31 if doc.get("entry_failure") else 0)
        gprs = doc.get("gprs")

        def number(key: str) -> Optional[int]:
            value = doc.get(key)
            return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

        def real(key: str) -> Optional[float]:
            value = doc.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        return cls(cpu=int(doc.get("cpu") or 0), values=values,
                   gprs={str(k): int(v) for k, v in gprs.items()} if isinstance(gprs, dict) else None,
                   index=int(doc.get("index") or 0), seen_index=int(doc.get("seen_index") or 0),
                   time=real("time"), ticks=number("ticks"), site=doc.get("site"), vmcs_pa=number("vmcs_pa"),
                   layout=doc.get("layout"), handler_ticks=number("handler_ticks"),
                   handler_seconds=real("handler_seconds"),
                   events=[int(e) for e in doc.get("events") or [] if isinstance(e, int)],
                   command_output=doc.get("command_output"))


def argument_value(record: ExitRecord, kind: str) -> Optional[int]:
    """The argument ``kind`` of ``record`` (see :data:`ARGUMENTS`), None when unknown."""
    spec = ARGUMENTS[kind]
    if spec.source == "gpr":
        if record.gprs is None or spec.key not in record.gprs:
            return None
        return record.gprs[spec.key] & spec.mask
    raw = record.get(spec.key)
    if raw is None:
        return None
    if spec.valid_bit is not None and not raw >> spec.valid_bit & 1:
        return None
    if spec.source == "bits" and spec.layout and spec.bits:
        return bitfields.layout(spec.layout).field(spec.bits).extract(raw)
    return raw & spec.mask


def exit_detail(record: ExitRecord) -> str:
    """Words for the qualification and the event information of ``record`` (empty when the
    reason has neither)."""
    from vtdbg.core.describe import decode_bits

    words: List[str] = []
    if record.entry_failure:
        words.append("ENTRY-FAILURE")
    reason = exit_reasons.exit_reason_by_number(record.exit_reason)
    qualification = record.get("qualification")
    intr = record.get("intr_info")
    if reason is not None and qualification is not None:
        vector = intr & 0xFF if intr is not None and intr >> 31 & 1 else None
        layout = reason.qualification_for(vector)
        if layout and layout != "invlpg":
            try:
                words.extend(decode_bits(layout, qualification))
            except KeyError:
                pass
    if record.reason_name in ("EXCEPTION_NMI", "EXTERNAL_INTERRUPT") and intr is not None and intr >> 31 & 1:
        kind = bitfields.layout("interruption_info").field("type")
        words.append("vector=0x%x" % (intr & 0xFF))
        words.append("type=%s" % (kind.meaning(kind.extract(intr)) or kind.extract(intr)))
    return " ".join(w.replace(" ", "_") if "=" in w else w for w in words)


# -- filters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArgumentMatch:
    """An inclusive range of argument values (a single value has low == high)."""

    low: int
    high: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high

    def text(self) -> str:
        """``0x..`` or ``0x..-0x..``."""
        return "0x%x" % self.low if self.low == self.high else "0x%x-0x%x" % (self.low, self.high)


@dataclass(frozen=True)
class ExitFilter:
    """A parsed filter: see the module docstring."""

    name: str
    reasons: Tuple[int, ...]
    condition: Optional[Condition] = None
    argument_kind: Optional[str] = None
    argument: Optional[ArgumentMatch] = None
    entry_failure: Optional[bool] = None

    def matches(self, record: ExitRecord) -> bool:
        """True when ``record`` passes every part of the filter."""
        if self.reasons and record.exit_reason not in self.reasons:
            return False
        if self.entry_failure is not None and record.entry_failure != self.entry_failure:
            return False
        if self.condition is not None and not self.condition.holds(record):
            return False
        if self.argument is not None:
            kind = self.argument_kind or record.argument()[0]
            if kind is None or argument_value(record, kind) not in self.argument:
                return False
        return True

    @property
    def needs_gprs(self) -> bool:
        """True when evaluating the filter needs guest registers (a GPR argument)."""
        return self.argument is not None and self.argument_kind is not None and \
            ARGUMENTS[self.argument_kind].source == "gpr"

    def text(self) -> str:
        """The filter as a user would type it."""
        return self.name + (" " + self.argument.text() if self.argument is not None else "")

    def to_json(self) -> Dict[str, Any]:
        """JSON form (reasons as numbers and names)."""
        return {"name": self.name, "reasons": list(self.reasons),
                "reason_names": [exit_reasons.exit_reason_name(r) for r in self.reasons],
                "argument_kind": self.argument_kind,
                "argument": [self.argument.low, self.argument.high] if self.argument is not None else None,
                "entry_failure": self.entry_failure, "text": self.text()}


def _parse_argument(kind: str, text: str) -> ArgumentMatch:
    """A value or ``A-B`` / ``A..B`` range of argument ``kind``; symbolic forms for CRs
    (``cr3``), DRs (``dr7``), vectors (``#PF``, ``ud``)."""
    raw = text.strip()
    for sep in ("..", "-"):
        if sep in raw.lstrip("-") and not raw.startswith("-"):
            left, right = raw.split(sep, 1)
            low, high = _one_argument(kind, left), _one_argument(kind, right)
            if high < low:
                raise UsageError("argument range %s is empty" % text)
            return ArgumentMatch(low, high)
    value = _one_argument(kind, raw)
    return ArgumentMatch(value, value)


def _one_argument(kind: str, text: str) -> int:
    word = text.strip()
    upper = word.upper().lstrip("#")
    if kind == "vector" and upper in VECTOR_NAMES:
        return VECTOR_NAMES[upper]
    if kind in ("cr", "dr") and upper.startswith(kind.upper()) and upper[2:].isdigit():
        return int(upper[2:])
    if kind == "msr" and not word[:1].isdigit():
        known = MSR_NAMES.get(upper) or MSR_NAMES.get("IA32_" + upper)
        if known is not None:
            return known
        from vtdbg.arch.msrs import lookup_msr

        try:
            return lookup_msr(word).index
        except (UnknownNameError, KeyError, ValueError):
            raise UsageError("unknown MSR %r (give the index as a number)" % word) from None
    value = parse_int(word, "%s argument" % kind)
    if value < 0:
        raise UsageError("%s argument must not be negative" % kind)
    return value


def parse_filter(words: Sequence[str]) -> ExitFilter:
    """``["cpuid", "0x40000000"]``, ``["io-in", "0x71"]``, ``["exception", "#PF"]``,
    ``["0x30"]``... -> :class:`ExitFilter`; raises :class:`UsageError`."""
    if not words or not str(words[0]).strip():
        raise UsageError("a filter needs an exit reason or filter name (e.g. cpuid, msr-read 0x174, io-in)")
    if len(words) > 2:
        raise UsageError("a filter is REASON [ARG]; got %r" % " ".join(words))
    name = str(words[0]).strip()
    arg_text = str(words[1]) if len(words) > 1 else None
    key = _FILTER_BY_NAME.get(name.lower())
    if key is not None:
        spec = FILTERS[key]
        reasons = tuple(exit_reasons.lookup_exit_reason(r).number for r in spec.reasons)
        canonical = key
    else:
        try:
            reason = exit_reasons.lookup_exit_reason(name)
        except UnknownNameError as exc:
            names = ", ".join(sorted(FILTERS))
            raise UsageError("%s (trace filters: %s, or any exit-reason name or number)" % (exc, names)) from None
        spec = FilterSpec((reason.name,))
        reasons = (reason.number,)
        canonical = reason.name
    kind = spec.argument
    if kind is None and len(reasons) == 1:
        kind = REASON_ARGUMENT.get(exit_reasons.exit_reason_name(reasons[0]))
    match = None
    if arg_text is not None:
        if kind is None:
            raise UsageError("%s takes no argument (arguments exist for: %s)"
                             % (canonical, ", ".join(sorted(REASON_ARGUMENT))))
        match = _parse_argument(kind, arg_text)
    return ExitFilter(canonical, reasons, spec.condition, kind, match, spec.entry_failure)


def parse_filter_text(text: str) -> ExitFilter:
    """A filter given as one string (``--filter "msr-read 0x174"``)."""
    return parse_filter(text.split())


ANY = ExitFilter("any", ())


# -- events ---------------------------------------------------------------------------------------

ACTIONS = ("record", "break", "command")


@dataclass
class Event:
    """A filter with an id, a CPU restriction, actions, a hit count and an enabled flag."""

    id: int
    filter: ExitFilter
    cpu: Optional[int] = None
    breaks: bool = False
    command: Optional[str] = None
    hits: int = 0
    enabled: bool = True

    @property
    def actions(self) -> List[str]:
        """Names of the actions taken on a hit."""
        return ["record"] + (["break"] if self.breaks else []) + (["command"] if self.command else [])

    def matches(self, record: ExitRecord) -> bool:
        """True when enabled and the record passes the CPU restriction and the filter."""
        if not self.enabled:
            return False
        if self.cpu is not None and record.cpu != self.cpu:
            return False
        return self.filter.matches(record)

    def same_as(self, other: Event) -> bool:
        """True when both would do the same thing (used to avoid duplicate events)."""
        return (self.filter, self.cpu, self.breaks, self.command) == (other.filter, other.cpu, other.breaks,
                                                                       other.command)

    def to_json(self) -> Dict[str, Any]:
        """JSON form."""
        return {"id": self.id, "filter": self.filter.to_json(), "cpu": self.cpu, "actions": self.actions,
                "command": self.command, "hits": self.hits, "enabled": self.enabled}


class EventTable:
    """Events by id; ids are never reused within a table."""

    def __init__(self) -> None:
        self.events: Dict[int, Event] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Any:
        return iter(sorted(self.events.values(), key=lambda e: e.id))

    def add(self, flt: ExitFilter, cpu: Optional[int] = None, breaks: bool = False,
            command: Optional[str] = None) -> Event:
        """A new event, or the existing one that does exactly the same (re-enabled)."""
        candidate = Event(self._next, flt, cpu, breaks, command)
        for existing in self:
            if existing.same_as(candidate):
                existing.enabled = True
                return existing
        self.events[candidate.id] = candidate
        self._next += 1
        return candidate

    def select(self, ids: Iterable[str]) -> List[Event]:
        """Events named by id strings (``all`` selects every event); raises UsageError."""
        wanted = list(ids)
        if not wanted:
            raise UsageError("name event ids (see `vtdbg events`) or `all`")
        if any(w.lower() == "all" for w in wanted):
            return list(self)
        out = []
        for word in wanted:
            number = parse_int(word, "event id")
            if number not in self.events:
                raise UsageError("no event %d (see `vtdbg events`)" % number)
            out.append(self.events[number])
        return out

    def clear(self, ids: Iterable[str]) -> List[Event]:
        """Remove events; returns the removed ones."""
        gone = self.select(ids)
        for event in gone:
            del self.events[event.id]
        return gone

    def enabled(self) -> List[Event]:
        """The enabled events, by id."""
        return [e for e in self if e.enabled]

    def to_json(self) -> List[Dict[str, Any]]:
        """JSON form of every event."""
        return [e.to_json() for e in self]


def match_events(events: Sequence[Event], record: ExitRecord) -> List[Event]:
    """The events ``record`` matches, by id order."""
    return [e for e in events if e.matches(record)]


def gpr_order() -> Tuple[str, ...]:
    """General registers in the order records print them."""
    return _GPR_ORDER
