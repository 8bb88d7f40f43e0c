"""VMX control fields: pin-based, primary/secondary/tertiary processor-based, primary and
secondary VM-exit, and VM-entry controls.

The facts live in ``vtdbg/arch/data/controls.json``: one entry per group (VMCS field,
capability MSRs, SDM table) and one per defined control bit, including the reserved
"default1" bits that must be 1 when the TRUE capability MSRs are not used.

Canonical control names are Linux's names with the group prefix dropped (``HLT_EXITING``,
``ENABLE_EPT``, ``LOAD_IA32_EFER`` ...); every lookup also accepts the full Linux name, the
ia32-doc name and the SDM phrase, case-insensitively.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from vtdbg.arch._data import as_int, load_table
from vtdbg.arch.errors import UnknownNameError, close_matches, parse_number

__all__ = [
    "AmbiguousNameError",
    "ControlBit",
    "ControlGroup",
    "bits",
    "control_names",
    "decode_controls",
    "default1_mask",
    "defined_mask",
    "group",
    "groups",
    "lookup_control",
    "unknown_bits",
]

_TABLE = "controls.json"

#: Extra words accepted for group names (besides the keys and the VMCS field names).
_GROUP_SYNONYMS = {
    "PIN_BASED": "pin",
    "PINBASED": "pin",
    "PRIMARY": "proc",
    "PROC1": "proc",
    "CPU_BASED": "proc",
    "PROCBASED": "proc",
    "SECONDARY": "proc2",
    "TERTIARY": "proc3",
    "VMEXIT": "exit",
    "VM_EXIT": "exit",
    "EXIT1": "exit",
    "VMEXIT2": "exit2",
    "VMENTRY": "entry",
    "VM_ENTRY": "entry",
}


class AmbiguousNameError(UnknownNameError):
    """A control name matches bits in more than one group; qualify it (``exit.LOAD_IA32_PAT``).

    ``suggestions`` holds the qualified candidates.
    """

    def __init__(self, kind: str, text: object, suggestions: Sequence[str] = ()) -> None:
        """Record the candidates and phrase the message as an ambiguity, not a miss."""
        super().__init__(kind, text, suggestions)
        self.message = "ambiguous %s %r; qualify it with a group: %s" % (kind, text, ", ".join(self.suggestions))


@dataclass(frozen=True)
class ControlGroup:
    """One VMX control field and the capability MSRs that report its allowed settings."""

    name: str
    title: str
    field: str
    encoding: int
    width: int
    msr: int
    true_msr: Optional[int]
    allowed1_only: bool
    sdm: str
    linux_prefix: str
    enabled_by: Optional[Tuple[str, int]] = None

    @property
    def value_mask(self) -> int:
        """Mask of the bits the control field has."""
        return (1 << self.width) - 1


@dataclass(frozen=True)
class ControlBit:
    """One defined control bit (or a reserved default1 bit, see ``reserved``)."""

    group: str
    bit: int
    name: str
    aliases: Tuple[str, ...]
    description: str
    sdm: str
    default1: bool
    reserved: bool = False
    source: Optional[str] = None

    @property
    def mask(self) -> int:
        """The bit as a mask."""
        return 1 << self.bit

    @property
    def qualified_name(self) -> str:
        """``group.NAME``, unique across all groups."""
        return "%s.%s" % (self.group, self.name)


def _norm(text: str) -> str:
    """Normalised lookup key: upper case, every run of non-alphanumerics becomes ``_``."""
    return re.sub(r"[^A-Z0-9]+", "_", text.strip().upper()).strip("_")


def _opt_int(value: Any) -> Optional[int]:
    """``as_int(value)``, or None for a JSON null."""
    return None if value is None else as_int(value)


@dataclass(frozen=True)
class _Tables:
    """The parsed table plus the lookup indexes built from it."""

    groups: Dict[str, ControlGroup]
    bits: Tuple[ControlBit, ...]
    by_group: Dict[str, Dict[int, ControlBit]]
    group_index: Dict[str, Dict[str, ControlBit]]
    global_index: Dict[str, Tuple[ControlBit, ...]]
    canonical: Dict[str, Tuple[ControlBit, ...]]


@functools.lru_cache(maxsize=None)
def _tables() -> _Tables:
    """Parse ``controls.json`` once and build the per-group and global name indexes."""
    table = load_table(_TABLE)
    prefixes: Mapping[str, str] = table.get("linux_prefixes", {})
    groups: Dict[str, ControlGroup] = {}
    for key, raw in table["groups"].items():
        enabled = raw.get("enabled_by")
        groups[key] = ControlGroup(
            name=key,
            title=str(raw.get("title", key)),
            field=str(raw["field"]),
            encoding=as_int(raw.get("encoding", 0)),
            width=as_int(raw["width"]),
            msr=as_int(raw["msr"]),
            true_msr=_opt_int(raw.get("true_msr")),
            allowed1_only=bool(raw.get("allowed1_only", False)),
            sdm=str(raw.get("sdm", "")),
            linux_prefix=str(prefixes.get(key, "")),
            enabled_by=(str(enabled["group"]), as_int(enabled["bit"])) if enabled else None,
        )
    order = {key: i for i, key in enumerate(groups)}
    items = []
    for raw in table["bits"]:
        name = str(raw["name"])
        aliases = tuple(str(a) for a in raw.get("aliases", []))
        items.append(ControlBit(
            group=str(raw["group"]),
            bit=as_int(raw["bit"]),
            name=name,
            aliases=aliases,
            description=str(raw.get("description", "")),
            sdm=str(raw.get("sdm", "")),
            default1=bool(raw.get("default1", False)),
            reserved=name.startswith("RESERVED_") and not aliases,
            source=raw.get("source"),
        ))
    items.sort(key=lambda b: (order[b.group], b.bit))
    by_group: Dict[str, Dict[int, ControlBit]] = {key: {} for key in groups}
    group_index: Dict[str, Dict[str, ControlBit]] = {key: {} for key in groups}
    global_index: Dict[str, List[ControlBit]] = {}
    canonical: Dict[str, List[ControlBit]] = {}
    for item in items:
        by_group[item.group][item.bit] = item
        prefix = groups[item.group].linux_prefix
        keys = [_norm(item.name), _norm(prefix + item.name)] + [_norm(a) for a in item.aliases]
        canonical.setdefault(_norm(item.name), []).append(item)
        for key in keys:
            if not key:
                continue
            group_index[item.group].setdefault(key, item)
            bucket = global_index.setdefault(key, [])
            if item not in bucket:
                bucket.append(item)
    return _Tables(
        groups=groups,
        bits=tuple(items),
        by_group=by_group,
        group_index=group_index,
        global_index={k: tuple(v) for k, v in global_index.items()},
        canonical={k: tuple(v) for k, v in canonical.items()},
    )


def groups() -> Dict[str, ControlGroup]:
    """Every control group keyed by its short name (``pin``, ``proc``, ``proc2``, ``proc3``,
    ``exit``, ``exit2``, ``entry``), in SDM order."""
    return dict(_tables().groups)


def group(name: str) -> ControlGroup:
    """The group called ``name``: its key, its VMCS field name or a synonym such as
    ``secondary``; raises UnknownNameError otherwise."""
    return _resolve_group(name)


def _resolve_group(name: str) -> ControlGroup:
    """Implementation of :func:`group` (usable where a parameter shadows that name)."""
    tables = _tables()
    text = name.strip()
    if text.lower() in tables.groups:
        return tables.groups[text.lower()]
    key = _norm(text)
    for item in tables.groups.values():
        if key in (_norm(item.field), _norm(item.linux_prefix)):
            return item
    synonym = _GROUP_SYNONYMS.get(key)
    if synonym is not None:
        return tables.groups[synonym]
    raise UnknownNameError("control group", name, close_matches(name, list(tables.groups)) or list(tables.groups))


def bits(group: Optional[str] = None) -> List[ControlBit]:
    """Every control bit of ``group`` (or of all groups), lowest bit first."""
    tables = _tables()
    if group is None:
        return list(tables.bits)
    key = _resolve_group(group).name
    return [tables.by_group[key][b] for b in sorted(tables.by_group[key])]


def _parse_bit_number(text: str) -> Optional[int]:
    """A bit number typed as ``7``, ``0x7``, ``0n7`` or ``bit7``; None for a name."""
    stripped = text.strip()
    match = re.fullmatch(r"(?i)bit[_ ]?(\S+)", stripped)
    return parse_number(match.group(1) if match else stripped)


def _candidates(group: Optional[str] = None) -> List[str]:
    """Names and aliases offered as suggestions after a failed lookup."""
    items = bits(group)
    return [item.name for item in items] + [alias for item in items for alias in item.aliases]


def lookup_control(text: str, group: Optional[str] = None) -> ControlBit:
    """Find a control bit by name, alias, ``group.NAME`` or (with ``group``) bit number.

    Matching is case-insensitive and ignores punctuation differences (``"Enable EPT"``,
    ``enable_ept`` and ``SECONDARY_EXEC_ENABLE_EPT`` all match).  Raises UnknownNameError if
    nothing matches, and AmbiguousNameError (a subclass) if a bare name matches bits in
    several groups and ``group`` is not given.
    """
    tables = _tables()
    if group is None:
        for sep in (".", ":"):
            if sep in text:
                head, tail = text.split(sep, 1)
                try:
                    qualified = _resolve_group(head)
                except UnknownNameError:
                    continue
                return lookup_control(tail, qualified.name)
        key = _norm(text)
        found = tables.global_index.get(key, ())
        if not found:
            raise UnknownNameError("VMX control", text, close_matches(text, _candidates()))
        if len(found) == 1:
            return found[0]
        preferred = tables.canonical.get(key, ())
        if len(preferred) == 1:
            return preferred[0]
        raise AmbiguousNameError("VMX control", text, [b.qualified_name for b in found])
    key_group = _resolve_group(group).name
    number = _parse_bit_number(text)
    if number is not None:
        item = tables.by_group[key_group].get(number)
        if item is None:
            raise UnknownNameError("%s control bit" % key_group, number)
        return item
    item = tables.group_index[key_group].get(_norm(text))
    if item is None:
        raise UnknownNameError("%s control" % key_group, text, close_matches(text, _candidates(key_group)))
    return item


def decode_controls(group: str, value: int) -> List[ControlBit]:
    """The table's control bits set in ``value`` (lowest bit first); see :func:`unknown_bits`
    for set bits the table does not define."""
    return [item for item in bits(group) if value & item.mask]


def control_names(group: str, value: int) -> List[str]:
    """Names of the table's control bits set in ``value``."""
    return [item.name for item in decode_controls(group, value)]


def defined_mask(group: str) -> int:
    """Mask of every bit the table defines for ``group`` (default1 reserved bits included)."""
    mask = 0
    for item in bits(group):
        mask |= item.mask
    return mask


def unknown_bits(group: str, value: int) -> int:
    """Bits set in ``value`` that the table does not define for ``group``."""
    return value & ~defined_mask(group)


def default1_mask(group: str) -> int:
    """Mask of the default1 class of ``group`` (0 for groups that have none)."""
    mask = 0
    for item in bits(group):
        if item.default1:
            mask |= item.mask
    return mask
