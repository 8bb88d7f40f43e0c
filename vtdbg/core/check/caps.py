"""What the processor allows: VMX capability MSRs plus a few processor facts.

Sources (all give the same :class:`Caps`):

* a caps file: ``{"0x480": int or "0x..", ..., "maxphyaddr": int, "processor": {...}}`` (keys
  in any case, MSR names accepted too), or a list of such objects each with ``"cpu": n``
  (what ``vtdbg caps --save`` writes);
* the Bochs lab's ``ground_truth.json`` (``{"msrs": {...}, "maxphyaddr": n}``);
* a live target with MSR_READ (:meth:`Caps.from_target`).

A capability the source does not have raises :class:`~vtdbg.core.check.context.Unknown`, so a
rule that needs it is reported as "not checked" instead of guessed.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from vtdbg.arch import controls
from vtdbg.arch._data import as_int
from vtdbg.arch.bitfields import layout
from vtdbg.arch.errors import UnknownNameError
from vtdbg.arch.msrs import lookup_msr, msr_by_index
from vtdbg.core.check.context import Unknown
from vtdbg.core.check.facts import ctl_mask, reg_get
from vtdbg.core.check.rules import table
from vtdbg.lib.errors import UsageError, VtdbgError
from vtdbg.target.base import Target

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Allowed:
    """Allowed settings of one control field: ``must1`` bits must be 1, bits outside ``may1``
    must be 0; ``msr`` is the capability MSR that says so."""

    must1: int
    may1: int
    msr: int
    msr_name: str

    def must1_missing(self, value: int) -> int:
        """Bits that must be 1 but are 0 in ``value``."""
        return self.must1 & ~value

    def forbidden(self, value: int) -> int:
        """Bits that are 1 in ``value`` but may not be."""
        return value & ~self.may1


@functools.lru_cache(maxsize=None)
def msr_index(name: str) -> int:
    """Index of a VMX MSR by its name in the arch table (``IA32_VMX_BASIC`` -> 0x480)."""
    return lookup_msr(name).index


def msr_name(index: int) -> str:
    """Name of a VMX MSR for messages (hex index for others)."""
    try:
        return msr_by_index(index).name
    except (KeyError, UnknownNameError):
        return "MSR 0x%x" % index


@dataclass
class Caps:
    """Capability MSR values by index, MAXPHYADDR and processor facts."""

    msrs: Dict[int, int] = field(default_factory=dict)
    maxphyaddr_value: Optional[int] = None
    processor: Dict[str, Any] = field(default_factory=dict)
    source: str = "none"
    cpu: Optional[int] = None

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], source: str = "caps file") -> Caps:
        """Parse one flat caps object (see the module docstring)."""
        if "msrs" in raw and isinstance(raw["msrs"], Mapping):
            # the lab's ground_truth.json nests the MSRs
            flat = dict(raw["msrs"])
            for key in ("maxphyaddr", "processor"):
                if key in raw:
                    flat[key] = raw[key]
            raw = flat
        msrs: Dict[int, int] = {}
        processor: Dict[str, Any] = {}
        maxphy: Optional[int] = None
        cpu: Optional[int] = None
        for key, value in raw.items():
            low = str(key).strip().lower()
            if low == "maxphyaddr":
                maxphy = None if value is None else as_int(value)
            elif low == "processor":
                processor = {str(k): v for k, v in dict(value).items()}
            elif low == "cpu":
                cpu = None if value is None else as_int(value)
            elif value is None:
                continue  # an MSR the saver could not read
            else:
                index = _msr_key(str(key))
                if index is None:
                    continue  # other keys (comments, provenance) are allowed
                msrs[index] = as_int(value) & ((1 << 64) - 1)
        return cls(msrs, maxphy, processor, source, cpu)

    @classmethod
    def load(cls, path: str, cpu: Optional[int] = None) -> Caps:
        """Read a caps file (flat object, list of per-CPU objects, or lab ground truth)."""
        try:
            with open(path, encoding="utf-8") as handle:
                raw = json.load(handle)
        except OSError as exc:
            raise UsageError("cannot read caps file %s: %s" % (path, exc.strerror or exc)) from None
        except ValueError as exc:
            raise UsageError("caps file %s is not JSON: %s" % (path, exc)) from None
        return cls.from_json(raw, "caps file %s" % path, cpu)

    @classmethod
    def from_json(cls, raw: Any, source: str, cpu: Optional[int] = None) -> Caps:
        """A caps object from parsed JSON; a per-CPU list picks ``cpu`` (default: the first)."""
        if isinstance(raw, list):
            if not raw:
                raise UsageError("%s lists no CPU" % source)
            chosen = raw[0]
            if cpu is not None:
                matches = [r for r in raw if isinstance(r, Mapping) and r.get("cpu") == cpu]
                if not matches:
                    raise UsageError("%s has no entry for CPU %d" % (source, cpu))
                chosen = matches[0]
            if not isinstance(chosen, Mapping):
                raise UsageError("%s: each entry must be an object" % source)
            return cls.from_mapping(chosen, source)
        if not isinstance(raw, Mapping):
            raise UsageError("%s must hold an object or a list of objects" % source)
        return cls.from_mapping(raw, source)

    @classmethod
    def from_target(cls, target: Target) -> Caps:
        """Read the VMX capability MSRs live (one read_msr per MSR the CPU reports)."""
        msrs: Dict[int, int] = {}

        def read(index: int) -> None:
            try:
                msrs[index] = target.read_msr(index) & ((1 << 64) - 1)
            except VtdbgError:
                pass  # the MSR does not exist on this CPU (RDMSR #GP) or the read failed

        for name in ("IA32_FEATURE_CONTROL", "IA32_VMX_BASIC", "IA32_VMX_PINBASED_CTLS", "IA32_VMX_PROCBASED_CTLS",
                     "IA32_VMX_EXIT_CTLS", "IA32_VMX_ENTRY_CTLS", "IA32_VMX_MISC", "IA32_VMX_CR0_FIXED0",
                     "IA32_VMX_CR0_FIXED1", "IA32_VMX_CR4_FIXED0", "IA32_VMX_CR4_FIXED1", "IA32_VMX_VMCS_ENUM"):
            read(msr_index(name))
        caps = cls(msrs, None, {}, "live MSRs of %s" % target.description)
        # the optional MSRs exist only when another MSR says so (SDM A.1, A.3.3, A.10, A.11);
        # reading one that does not exist would #GP on the target
        basic = msrs.get(msr_index("IA32_VMX_BASIC"))
        if basic is not None and reg_get("vmx_basic", "true_ctls", basic):
            for group in ("pin", "proc", "exit", "entry"):
                true_msr = controls.group(group).true_msr
                if true_msr is not None:
                    read(true_msr)
        proc_allowed1 = msrs.get(controls.group("proc").msr, 0) >> 32
        exit_allowed1 = msrs.get(controls.group("exit").msr, 0) >> 32
        if proc_allowed1 & ctl_mask("proc", "ACTIVATE_SECONDARY_CONTROLS"):
            read(controls.group("proc2").msr)
        if proc_allowed1 & ctl_mask("proc", "ACTIVATE_TERTIARY_CONTROLS"):
            read(controls.group("proc3").msr)
        if exit_allowed1 & ctl_mask("exit", "ACTIVATE_SECONDARY_CONTROLS"):
            read(controls.group("exit2").msr)
        proc2_allowed1 = msrs.get(controls.group("proc2").msr, 0) >> 32
        if proc2_allowed1 & (ctl_mask("proc2", "ENABLE_EPT") | ctl_mask("proc2", "ENABLE_VPID")):
            read(msr_index("IA32_VMX_EPT_VPID_CAP"))
        if proc2_allowed1 & ctl_mask("proc2", "ENABLE_VMFUNC"):
            read(msr_index("IA32_VMX_VMFUNC"))
        return caps

    def to_json(self) -> Dict[str, Any]:
        """A flat caps object (the caps-file format)."""
        doc: Dict[str, Any] = {"0x%x" % k: v for k, v in sorted(self.msrs.items())}
        if self.maxphyaddr_value is not None:
            doc["maxphyaddr"] = self.maxphyaddr_value
        if self.processor:
            doc["processor"] = dict(self.processor)
        return doc

    # -- raw access ----------------------------------------------------------------------
    def has(self, index: int) -> bool:
        """True when the source supplied MSR ``index``."""
        return index in self.msrs

    def msr(self, index: int) -> int:
        """Value of MSR ``index``; :class:`Unknown` when the source does not have it."""
        if index not in self.msrs:
            raise Unknown("msr", msr_name(index), "%s does not supply %s" % (self.source, msr_name(index)))
        return self.msrs[index]

    # -- derived facts -------------------------------------------------------------------
    @property
    def basic(self) -> int:
        """IA32_VMX_BASIC."""
        return self.msr(msr_index("IA32_VMX_BASIC"))

    @property
    def revision_id(self) -> int:
        """The VMCS revision identifier (IA32_VMX_BASIC[30:0])."""
        return reg_get("vmx_basic", "revision_id", self.basic)

    def true_controls(self) -> bool:
        """IA32_VMX_BASIC[55]: the TRUE_* MSRs report the allowed settings."""
        return bool(reg_get("vmx_basic", "true_ctls", self.basic))

    def allowed(self, group: str) -> Allowed:
        """Allowed settings of control group ``group`` (pin/proc/proc2/proc3/exit/exit2/entry).

        For pin/primary/exit/entry controls the TRUE MSR is used when IA32_VMX_BASIC[55] = 1
        (its must-be-1 half no longer forces the "default1" bits); the 64-bit groups (tertiary,
        secondary exit) only report allowed 1-settings.
        """
        grp = controls.group(group)
        if grp.allowed1_only:
            value = self.msr(grp.msr)
            return Allowed(0, value, grp.msr, msr_name(grp.msr))
        index = grp.msr
        if grp.true_msr is not None and self.true_controls():
            index = grp.true_msr
        value = self.msr(index)
        return Allowed(value & _MASK32, (value >> 32) & _MASK32, index, msr_name(index))

    def may_be_one(self, group: str, mask: int) -> bool:
        """True when every bit of ``mask`` may be 1 in ``group`` (allowed-1 half)."""
        return (self.allowed(group).may1 & mask) == mask

    def fixed(self, register: str) -> Tuple[int, int]:
        """``(fixed0, fixed1)`` for ``"cr0"`` or ``"cr4"``: bits set in fixed0 must be 1, bits
        clear in fixed1 must be 0."""
        name = "IA32_VMX_%s_FIXED" % register.upper()
        return self.msr(msr_index(name + "0")), self.msr(msr_index(name + "1"))

    @property
    def misc(self) -> int:
        """IA32_VMX_MISC."""
        return self.msr(msr_index("IA32_VMX_MISC"))

    @property
    def ept_vpid_cap(self) -> int:
        """IA32_VMX_EPT_VPID_CAP."""
        return self.msr(msr_index("IA32_VMX_EPT_VPID_CAP"))

    @property
    def vmfunc(self) -> int:
        """IA32_VMX_VMFUNC."""
        return self.msr(msr_index("IA32_VMX_VMFUNC"))

    def default(self, key: str) -> Any:
        """A processor fact from the caps "processor" object, else the table's default."""
        if key in self.processor:
            return self.processor[key]
        return table().defaults["processor"][key]

    def stated(self, key: str) -> bool:
        """True when the caps source states ``key`` (rather than the checker's default)."""
        return key in self.processor or (key == "maxphyaddr" and self.maxphyaddr_value is not None)

    @property
    def maxphyaddr(self) -> int:
        """Physical-address width (caps file / lab ground truth, else the default 46)."""
        if self.maxphyaddr_value is not None:
            return self.maxphyaddr_value
        return int(table().defaults["maxphyaddr"])

    @property
    def linear_bits(self) -> int:
        """Linear-address width of the processor: 57 with LA57 support, else the stated width."""
        if self.default("la57"):
            return 57
        return int(self.default("linear_address_bits"))

    def mask(self, key: str) -> int:
        """A valid-bits mask from the processor facts (``efer_valid_mask`` ...); the default
        ``layout:NAME`` means every bit the arch layout NAME defines; a mask the table leaves
        open (model-specific) is :class:`Unknown` unless the caps state it."""
        value = self.default(key)
        if value is None:
            raise Unknown("environment", key, "the valid bits are model-specific; give %s in the caps \"processor\" "
                                              "object" % key)
        if isinstance(value, str) and value.startswith("layout:"):
            return layout(value.split(":", 1)[1]).defined_mask()
        return as_int(value)

    def assumptions(self) -> Dict[str, Any]:
        """The processor facts in effect and whether each was stated or defaulted."""
        out: Dict[str, Any] = {"maxphyaddr": {"value": self.maxphyaddr,
                                              "source": "caps" if self.maxphyaddr_value is not None else "default"}}
        for key in table().defaults["processor"]:
            value = self.default(key)
            if key.endswith("_mask") and value is not None:
                value = self.mask(key)  # resolve "layout:NAME" to the bits it stands for
            out[key] = {"value": value, "source": "caps" if key in self.processor else "default"}
        return out


def _msr_key(text: str) -> Optional[int]:
    """An MSR index from a caps-file key: ``"0x480"``, ``"480h"``, decimal, or an MSR name."""
    raw = text.strip()
    low = raw.lower()
    try:
        if low.startswith("0x"):
            return int(low, 16)
        if low.endswith("h") and all(c in "0123456789abcdef" for c in low[:-1]) and low[:-1]:
            return int(low[:-1], 16)
        if low.isdigit():
            return int(low, 10)
    except ValueError:
        return None
    try:
        return lookup_msr(raw).index
    except (KeyError, UnknownNameError):
        return None


def load_caps(spec: Union[str, Mapping[str, Any], None], cpu: Optional[int] = None) -> Caps:
    """A :class:`Caps` from a path, a parsed object, or nothing (an empty source)."""
    if spec is None:
        return Caps(source="none (no --caps and no live MSRs)")
    if isinstance(spec, str):
        return Caps.load(spec, cpu)
    return Caps.from_json(spec, "caps object", cpu)
