"""VMX capability MSRs (IA32_FEATURE_CONTROL and IA32_VMX_* 480H-493H) and their decoding.

The facts live in ``vtdbg/arch/data/vmx_msrs.json``; each MSR has a ``kind``:

* ``controls``   - allowed 0-settings in bits 31:0, allowed 1-settings in bits 63:32 of a
  32-bit control group (``true`` marks the IA32_VMX_TRUE_* variants);
* ``controls64`` - allowed 1-settings of a 64-bit control group (every bit may be 0);
* ``fixed``      - IA32_VMX_CR0/CR4_FIXED0/1;
* ``bitfield``   - decoded with a layout of :mod:`vtdbg.arch.bitfields`;
* ``allowed1``   - a bitmap of features that may be enabled (IA32_VMX_VMFUNC).

:func:`decode_msr` returns plain JSON-ready dicts (integers stay integers).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from vtdbg.arch import controls as _controls
from vtdbg.arch._data import as_int, load_table
from vtdbg.arch.bitfields import BitLayout, layout
from vtdbg.arch.errors import UnknownNameError, close_matches, parse_number

__all__ = [
    "KINDS",
    "VmxMsr",
    "adjust_controls",
    "all_msrs",
    "decode_msr",
    "lookup_msr",
    "msr_by_index",
    "split_allowed",
]

#: The kinds an MSR entry may have.
KINDS = ("controls", "controls64", "fixed", "bitfield", "allowed1")

_TABLE = "vmx_msrs.json"
_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class VmxMsr:
    """One VMX-related MSR and how to decode it."""

    index: int
    name: str
    kind: str
    aliases: Tuple[str, ...] = ()
    sdm: str = ""
    description: str = ""
    layout: Optional[str] = None
    group: Optional[str] = None
    true: bool = False
    register: Optional[str] = None
    fixed: Optional[str] = None

    @property
    def names(self) -> Tuple[str, ...]:
        """The canonical name followed by every alias."""
        return (self.name,) + self.aliases


def _norm(text: str) -> str:
    """Lookup key: upper case with runs of punctuation folded to ``_``."""
    return re.sub(r"[^A-Z0-9]+", "_", text.strip().upper()).strip("_")


@functools.lru_cache(maxsize=None)
def _msrs() -> Tuple[Tuple[VmxMsr, ...], Dict[int, VmxMsr], Dict[str, VmxMsr]]:
    """Parse ``vmx_msrs.json`` once: (all MSRs by index, index map, name/alias map)."""
    table = load_table(_TABLE)
    items = []
    for raw in table["msrs"]:
        kind = str(raw["kind"])
        if kind not in KINDS:
            raise ValueError("MSR %s: unknown kind %r" % (raw.get("name"), kind))
        items.append(VmxMsr(
            index=as_int(raw["index"]),
            name=str(raw["name"]),
            kind=kind,
            aliases=tuple(str(a) for a in raw.get("aliases", [])),
            sdm=str(raw.get("sdm", "")),
            description=str(raw.get("description", "")),
            layout=raw.get("layout"),
            group=raw.get("group"),
            true=bool(raw.get("true", False)),
            register=raw.get("register"),
            fixed=None if raw.get("fixed") is None else str(raw["fixed"]),
        ))
    items.sort(key=lambda m: m.index)
    by_index = {m.index: m for m in items}
    by_name: Dict[str, VmxMsr] = {}
    for item in items:
        for name in item.names:
            by_name.setdefault(_norm(name), item)
    return tuple(items), by_index, by_name


def all_msrs() -> List[VmxMsr]:
    """Every MSR of the table, by index."""
    return list(_msrs()[0])


def msr_by_index(index: int) -> VmxMsr:
    """The MSR with this index; UnknownNameError (a KeyError) if the table lacks it."""
    try:
        return _msrs()[1][index]
    except KeyError:
        raise UnknownNameError("VMX MSR index", "%#x" % index) from None


def lookup_msr(text: Union[str, int]) -> VmxMsr:
    """Find an MSR by index (int, ``"0x480"``, ``"480h"``, ``"0n1152"``) or by name/alias,
    case-insensitively (``IA32_VMX_BASIC``, ``MSR_IA32_VMX_BASIC``, ``vmx_basic``)."""
    if isinstance(text, int):
        return msr_by_index(text)
    stripped = text.strip()
    number = _parse_number(stripped)
    if number is not None:
        return msr_by_index(number)
    found = _msrs()[2].get(_norm(stripped))
    if found is None:
        names = [name for msr in _msrs()[0] for name in msr.names]
        raise UnknownNameError("VMX MSR", text, close_matches(stripped, names))
    return found


def _parse_number(text: str) -> Optional[int]:
    """An MSR index: anything :func:`parse_number` accepts, or SDM style ``480H``."""
    if re.fullmatch(r"(?i)[0-9a-f]+h", text):
        return int(text[:-1], 16)
    return parse_number(text)


def split_allowed(msr_value: int) -> Tuple[int, int]:
    """``(allowed0, allowed1)`` of a 32-bit control capability MSR: bits 31:0 are the bits
    that must be 1, bits 63:32 the bits that may be 1."""
    return msr_value & _MASK32, (msr_value >> 32) & _MASK32


def adjust_controls(desired: int, msr_value: int, wide: bool = False) -> int:
    """Apply a capability MSR to a desired control value: ``(desired | allowed0) & allowed1``.

    For the 64-bit groups (``wide=True``: IA32_VMX_PROCBASED_CTLS3, IA32_VMX_EXIT_CTLS2) the
    whole MSR is the allowed-1 mask and nothing is forced to 1.
    """
    if wide:
        return desired & msr_value & _MASK64
    allowed0, allowed1 = split_allowed(msr_value)
    return (desired | allowed0) & allowed1


def _fields(lay: BitLayout, value: int) -> List[Dict[str, Any]]:
    """JSON-ready field list of a bitfield decode."""
    out = []
    for item in lay.decode(value):
        entry: Dict[str, Any] = {
            "name": item.field.name,
            "lsb": item.field.lsb,
            "width": item.field.width,
            "value": item.value,
            "meaning": item.meaning,
        }
        if item.field.format == "address":
            entry["address"] = item.in_place
        if not item.applies:
            entry["applies"] = False
        out.append(entry)
    return out


def _names(group: str, mask: int) -> List[str]:
    """Names of the control bits of ``group`` set in ``mask``."""
    return [bit.name for bit in _controls.decode_controls(group, mask)]


def decode_msr(index: Union[int, str], value: int) -> Dict[str, Any]:
    """Decode ``value`` read from a VMX MSR into a JSON-ready dict.

    Every result has ``index``, ``name``, ``kind``, ``value`` and ``sdm``; the rest depends on
    the kind (see the module docstring): control MSRs give ``allowed0``/``allowed1`` as
    integers and ``must_be_one``/``may_be_one``/``must_be_zero``/``flexible`` as control
    names; fixed MSRs give the names of the register bits set; bitfield MSRs give ``fields``.
    """
    msr = lookup_msr(index)
    value &= _MASK64
    out: Dict[str, Any] = {"index": msr.index, "name": msr.name, "kind": msr.kind, "value": value, "sdm": msr.sdm}
    if msr.kind == "controls":
        group = str(msr.group)
        allowed0, allowed1 = split_allowed(value)
        defined = _controls.defined_mask(group)
        out.update({
            "group": group,
            "true": msr.true,
            "allowed0": allowed0,
            "allowed1": allowed1,
            "must_be_one": _names(group, allowed0),
            "may_be_one": _names(group, allowed1),
            "must_be_zero": _names(group, defined & ~allowed1),
            "flexible": _names(group, allowed1 & ~allowed0),
            "unknown_allowed1": allowed1 & ~defined,
            "inconsistent": allowed0 & ~allowed1,
        })
    elif msr.kind == "controls64":
        group = str(msr.group)
        defined = _controls.defined_mask(group)
        out.update({
            "group": group,
            "allowed0": 0,
            "allowed1": value,
            "may_be_one": _names(group, value),
            "must_be_zero": _names(group, defined & ~value),
            "unknown_allowed1": value & ~defined,
        })
    elif msr.kind == "fixed":
        lay = layout(str(msr.register))
        out.update({
            "register": msr.register,
            "fixed": msr.fixed,
            "bits": lay.set_flags(value),
            "unknown_bits": lay.unknown_bits(value),
            "meaning": ("bits set here must be 1 in VMX operation" if msr.fixed == "0"
                        else "bits clear here must be 0 in VMX operation"),
        })
        if msr.fixed == "1":
            out["fixed_zero"] = [f.name for f in lay.fields if f.width == 1 and not f.extract(value)]
    else:
        lay = layout(str(msr.layout))
        out.update({
            "layout": lay.name,
            "fields": _fields(lay, value),
            "set_flags": lay.set_flags(value),
            "reserved_bits_set": lay.unknown_bits(value),
        })
        if msr.kind == "allowed1":
            out["allowed1"] = value
            out["may_be_one"] = lay.set_flags(value)
    return out
