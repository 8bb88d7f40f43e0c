"""What a predicate sees: field values, capabilities, memory and the VMM's own state.

Values are read lazily: a predicate asks for the fields it needs, in the order it needs them,
so a condition that does not apply never asks for the fields behind it (the secondary controls
are not read when the primary control that activates them is 0, an unusable LDTR's base is not
read).  A field, capability MSR, memory range or environment fact the source cannot give
raises :class:`Unknown`; the engine reports the rule as not checked, never as violated.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from vtdbg.arch import controls
from vtdbg.arch.bitfields import layout
from vtdbg.core.check.facts import INVALID_POINTER, canonical_name, ctl_mask, encoding, reg_get
from vtdbg.lib.bits import is_canonical
from vtdbg.lib.errors import UsageError

if TYPE_CHECKING:  # imported for annotations only (caps and memory import this module)
    from vtdbg.core.check.caps import Caps
    from vtdbg.core.check.memory import Memory


class Unknown(Exception):
    """An input a rule needs is not available: ``kind`` is "field", "msr", "memory" or
    "environment", ``name`` what is missing and ``why`` a sentence for the report."""

    def __init__(self, kind: str, name: str, why: str = "") -> None:
        self.kind = kind
        self.name = name
        self.why = why or "%s %s is not known" % (kind, name)
        super().__init__(self.why)


#: Environment keys, their defaults, and what they mean (stated in every report).
ENVIRONMENT_DEFAULTS: Dict[str, Any] = {
    "vmx_root": True,
    "cpu_mode": "64-bit",
    "cpl": 0,
    "host_ia32e": True,
    "in_smm": False,
    "mov_ss_blocking": False,
    "instruction": None,
    "vmxon_pa": None,
}
CPU_MODES = ("64-bit", "compatibility", "protected", "virtual-8086", "real")


@dataclass
class Environment:
    """The state of the VMM executing VMLAUNCH/VMRESUME (not part of the VMCS).

    ``instruction`` None means "VMLAUNCH, or VMRESUME when the VMCS is launched";
    ``stated`` names the keys that came from the snapshot or target rather than defaults.
    """

    vmx_root: bool = True
    cpu_mode: str = "64-bit"
    cpl: int = 0
    host_ia32e: bool = True
    in_smm: bool = False
    mov_ss_blocking: bool = False
    instruction: Optional[str] = None
    vmxon_pa: Optional[int] = None
    stated: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: Optional[Mapping[str, Any]], source: str = "snapshot") -> Environment:
        """Parse a snapshot's ``"environment"`` object (unknown keys are refused)."""
        env = cls()
        for key, value in dict(raw or {}).items():
            if key not in ENVIRONMENT_DEFAULTS:
                raise UsageError("unknown environment key %r (known: %s)" % (key, ", ".join(ENVIRONMENT_DEFAULTS)))
            env.set(key, value, source)
        return env

    def set(self, key: str, value: Any, source: str) -> None:
        """Set one fact and remember where it came from."""
        if key == "instruction" and value is not None:
            value = str(value).lower()
            if value not in ("vmlaunch", "vmresume"):
                raise UsageError("environment instruction must be vmlaunch or vmresume, not %r" % value)
        if key == "cpu_mode" and value not in CPU_MODES:
            raise UsageError("environment cpu_mode must be one of %s" % ", ".join(CPU_MODES))
        if key == "cpl":
            value = int(value)
        if key in ("vmx_root", "host_ia32e", "in_smm", "mov_ss_blocking"):
            value = bool(value)
        if key == "vmxon_pa" and value is not None:
            value = int(str(value), 0) if isinstance(value, str) else int(value)
        setattr(self, key, value)
        self.stated[key] = source

    def to_json(self, launch_state: Optional[str]) -> Dict[str, Any]:
        """Every fact with its value and source ("default" unless stated)."""
        out: Dict[str, Any] = {}
        for key in ENVIRONMENT_DEFAULTS:
            value = getattr(self, key)
            if key == "instruction":
                value = self.effective_instruction(launch_state)
            out[key] = {"value": value, "source": self.stated.get(key, "default")}
        return out

    def effective_instruction(self, launch_state: Optional[str]) -> str:
        """VMLAUNCH unless told otherwise or the VMCS is already launched."""
        if self.instruction:
            return self.instruction
        return "vmresume" if launch_state == "launched" else "vmlaunch"


class Ctx:
    """The inputs of one check run.  Predicates call the accessors; see the module docstring."""

    def __init__(self, values: Mapping[int, int], caps: Caps, memory: Memory, env: Environment,
                 vmcs_pa: Optional[int] = None, launch_state: Optional[str] = None,
                 revision_id: Optional[int] = None, shadow: Optional[bool] = None) -> None:
        self.values = dict(values)
        self.caps = caps
        self.memory = memory
        self.env = env
        self.vmcs_pa = vmcs_pa
        self.launch_state = launch_state
        self.revision_id = revision_id
        self.shadow = shadow
        #: per-run memo for work several predicates share (the MSR-load entries)
        self.cache: Dict[str, Any] = {}

    # -- fields ----------------------------------------------------------------------------
    def f(self, name: str) -> int:
        """Value of field ``name``; :class:`Unknown` when the source does not list it."""
        value = self.values.get(encoding(name))
        if value is None:
            raise Unknown("field", canonical_name(name), "the VMCS source does not give %s" % canonical_name(name))
        return value

    def known(self, name: str) -> bool:
        """True when the source lists field ``name``."""
        return encoding(name) in self.values

    def controls(self, group: str) -> int:
        """The effective value of a control field: a secondary/tertiary group whose activating
        control is 0 counts as 0 (and its field is then not read at all)."""
        grp = controls.group(group)
        if grp.enabled_by is not None:
            parent, bit = grp.enabled_by
            if not (self.controls(parent) >> bit) & 1:
                return 0
        return self.f(grp.field)

    def on(self, group: str, name: str) -> bool:
        """True when control ``name`` of ``group`` is effectively 1."""
        return bool(self.controls(group) & ctl_mask(group, name))

    # -- derived facts -----------------------------------------------------------------------
    def urg(self) -> bool:
        """The "unrestricted guest" control is effectively 1."""
        return self.on("proc2", "UNRESTRICTED_GUEST")

    def ia32e_guest(self) -> bool:
        """The "IA-32e mode guest" VM-entry control."""
        return self.on("entry", "IA32E_MODE")

    def host64(self) -> bool:
        """The "host address-space size" VM-exit control."""
        return self.on("exit", "HOST_ADDR_SPACE_SIZE")

    def v86(self) -> bool:
        """Guest RFLAGS.VM = 1 (virtual-8086 guest)."""
        return bool(reg_get("rflags", "vm", self.f("GUEST_RFLAGS")))

    def pa_ok(self, address: int) -> bool:
        """No bit at or above MAXPHYADDR is set."""
        return address >> self.caps.maxphyaddr == 0

    def page_ok(self, address: int) -> bool:
        """4-KByte aligned and within MAXPHYADDR."""
        return address & 0xFFF == 0 and self.pa_ok(address)

    def canonical(self, address: int, bits: Optional[int] = None) -> bool:
        """Canonical for the processor's linear-address width (or ``bits``)."""
        return is_canonical(address, bits or self.caps.linear_bits)

    def link_pointer_valid(self) -> bool:
        """The VMCS link pointer is in use (not all ones)."""
        return self.f("VMCS_LINK_POINTER") != INVALID_POINTER

    def event(self) -> Optional[Event]:
        """The valid event to inject, or None."""
        info = self.f("VM_ENTRY_INTR_INFO_FIELD")
        if not reg_get("interruption_info", "valid", info):
            return None
        return Event(info)

    def seg(self, name: str) -> Seg:
        """Guest segment register ``name`` (ES, CS, SS, DS, FS, GS, LDTR, TR)."""
        return Seg(self, name.upper())


class Event:
    """A valid VM-entry interruption-information value, decoded."""

    def __init__(self, info: int) -> None:
        self.info = info
        self.vector = reg_get("interruption_info", "vector", info)
        self.type = reg_get("interruption_info", "type", info)
        self.deliver = bool(reg_get("interruption_info", "error_code_valid", info))

    def is_type(self, meaning: str) -> bool:
        """True when the type is the one the layout calls ``meaning`` ("NMI", ...)."""
        return self.type == event_type(meaning)

    def describe(self) -> str:
        """``type 3 (hardware exception) vector 13`` for messages."""
        name = layout("interruption_info").field("type").meaning(self.type) or "reserved"
        return "type %d (%s) vector %d" % (self.type, name, self.vector)


def event_type(meaning: str) -> int:
    """The interruption type whose meaning in the arch layout is ``meaning``."""
    return _value_of("interruption_info", "type", meaning)


def activity_state(meaning: str) -> int:
    """The activity-state value the arch layout calls ``meaning`` ("HLT", "shutdown", ...)."""
    return _value_of("activity_state", "state", meaning)


@functools.lru_cache(maxsize=None)
def _value_of(layout_name: str, field_name: str, meaning: str) -> int:
    for value, text in layout(layout_name).field(field_name).values.items():
        if text.lower() == meaning.lower():
            return value
    raise KeyError("%s.%s has no value meaning %r" % (layout_name, field_name, meaning))


class Seg:
    """Lazy accessors for one guest segment register."""

    def __init__(self, ctx: Ctx, name: str) -> None:
        self.ctx = ctx
        self.name = name

    def field_name(self, part: str) -> str:
        """``GUEST_<SEG>_<PART>`` (SELECTOR, BASE, LIMIT, AR_BYTES)."""
        return "GUEST_%s_%s" % (self.name, part)

    @property
    def selector(self) -> int:
        """The selector."""
        return self.ctx.f(self.field_name("SELECTOR"))

    @property
    def base(self) -> int:
        """The base address."""
        return self.ctx.f(self.field_name("BASE"))

    @property
    def limit(self) -> int:
        """The limit (32 bits)."""
        return self.ctx.f(self.field_name("LIMIT"))

    @property
    def ar(self) -> int:
        """Access rights, the 32-bit architectural value."""
        return self.ctx.f(self.field_name("AR_BYTES"))

    def arf(self, part: str) -> int:
        """A field of the access rights (type, s, dpl, p, avl, l, db, g, unusable)."""
        return reg_get("segment_ar", part, self.ar)

    @property
    def usable(self) -> bool:
        """Access-rights bit 16 (unusable) is 0."""
        return not self.arf("unusable")

    @property
    def rpl(self) -> int:
        """Requested privilege level (selector bits 1:0)."""
        return self.selector & 3

    @property
    def ti(self) -> int:
        """Table indicator (selector bit 2)."""
        return (self.selector >> 2) & 1
