"""Table-driven bitfield layouts: registers, VMCS information fields, exit qualifications,
VM-exit instruction information, VMX capability MSRs and EPT entries.

The facts live in ``vtdbg/arch/data/bitfields.json`` (one entry per layout, each field with
an SDM-derived description).  This module turns them into frozen dataclasses once, on first
use, and decodes 64-bit values with plain shifts and masks.

Example::

    >>> from vtdbg.arch.bitfields import layout
    >>> layout("ept_violation").set_flags(0x181)
    ['read', 'gla_valid', 'gla_translation']
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from vtdbg.arch._data import as_int, load_table

__all__ = [
    "BitField",
    "BitLayout",
    "DecodedBit",
    "FORMATS",
    "all_layouts",
    "layout",
    "layout_names",
]

#: Display formats a field may declare.
FORMATS = ("hex", "dec", "enum", "flag", "address")

_TABLE = "bitfields.json"


@dataclass(frozen=True)
class BitField:
    """One named field of a layout: bits ``lsb .. lsb+width-1``.

    ``values`` maps raw field values to their meaning (enumerations and named 1-bit states);
    ``applies_if`` maps other field names of the same layout to the raw values for which this
    field is defined (all conditions must hold).
    """

    name: str
    lsb: int
    width: int
    description: str = ""
    values: Dict[int, str] = field(default_factory=dict, hash=False)
    applies_if: Dict[str, Tuple[int, ...]] = field(default_factory=dict, hash=False)
    format: str = "hex"

    @property
    def msb(self) -> int:
        """Highest bit position covered by the field."""
        return self.lsb + self.width - 1

    @property
    def mask(self) -> int:
        """Mask of the field's bits in place (not shifted down)."""
        return ((1 << self.width) - 1) << self.lsb

    @property
    def is_flag(self) -> bool:
        """True for single-bit fields."""
        return self.width == 1

    def extract(self, value: int) -> int:
        """The raw field value (shifted down to bit 0) taken from ``value``."""
        return (value >> self.lsb) & ((1 << self.width) - 1)

    def insert(self, value: int, field_value: int) -> int:
        """``value`` with this field replaced by ``field_value`` (which must fit)."""
        if field_value < 0 or field_value >> self.width:
            raise ValueError("value %#x does not fit in %d-bit field %s" % (field_value, self.width, self.name))
        return (value & ~self.mask) | (field_value << self.lsb)

    def meaning(self, field_value: int) -> Optional[str]:
        """The table's meaning for a raw field value, or None if it has none."""
        return self.values.get(field_value)

    def bits_text(self) -> str:
        """SDM-style bit range: ``"7"`` or ``"51:12"``."""
        return str(self.lsb) if self.width == 1 else "%d:%d" % (self.msb, self.lsb)


@dataclass(frozen=True)
class DecodedBit:
    """A field decoded from a value.

    ``value`` is the raw field value (shifted down); ``applies`` is False when the field's
    ``applies_if`` conditions are not met by the other fields (its content is then undefined
    or reserved for this particular value); ``meaning`` comes from the field's value table.
    """

    field: BitField
    value: int
    applies: bool
    meaning: Optional[str]

    @property
    def name(self) -> str:
        """Name of the decoded field."""
        return self.field.name

    @property
    def in_place(self) -> int:
        """The field's bits at their original position (useful for address fields)."""
        return self.value << self.field.lsb

    @property
    def display(self) -> str:
        """Short human-readable rendering according to the field's format."""
        fmt = self.field.format
        if fmt == "address":
            return "%#x" % self.in_place
        if fmt == "dec":
            text = str(self.value)
        elif fmt == "flag":
            text = str(self.value)
        else:
            text = "%#x" % self.value
        if self.meaning is not None:
            return "%s (%s)" % (text, self.meaning)
        return text


@dataclass(frozen=True)
class BitLayout:
    """A named bitfield layout of a ``width``-bit value."""

    name: str
    title: str
    sdm: str
    width: int
    fields: Tuple[BitField, ...]
    #: reserved bits that always read as 1 (RFLAGS bit 1): not flagged as "reserved set"
    fixed1: int = 0

    @property
    def value_mask(self) -> int:
        """Mask of all bits the layout's width covers."""
        return (1 << self.width) - 1

    def field(self, name: str) -> BitField:
        """The field called ``name`` (KeyError if the layout has none)."""
        for item in self.fields:
            if item.name == name:
                return item
        raise KeyError("layout %s has no field %r" % (self.name, name))

    def field_names(self) -> List[str]:
        """Names of all fields, lowest bit first."""
        return [item.name for item in self.fields]

    def defined_mask(self) -> int:
        """Mask of every bit some field covers."""
        mask = 0
        for item in self.fields:
            mask |= item.mask
        return mask

    def reserved_mask(self) -> int:
        """Mask of the bits (within ``width``) no field defines."""
        return self.value_mask & ~self.defined_mask()

    def raw(self, value: int) -> Dict[str, int]:
        """Field name -> raw field value for ``value``."""
        return {item.name: item.extract(value) for item in self.fields}

    def decode(self, value: int) -> List[DecodedBit]:
        """Decode every field of ``value`` (lowest bit first)."""
        raw = self.raw(value)
        out = []
        for item in self.fields:
            applies = all(raw.get(other) in allowed for other, allowed in item.applies_if.items())
            field_value = raw[item.name]
            out.append(DecodedBit(item, field_value, applies, item.meaning(field_value)))
        return out

    def set_flags(self, value: int) -> List[str]:
        """Names of the 1-bit fields set in ``value`` (lowest bit first)."""
        return [item.name for item in self.fields if item.width == 1 and item.extract(value)]

    def unknown_bits(self, value: int) -> int:
        """Bits of ``value`` set in reserved positions (or beyond ``width``)."""
        return value & ~self.defined_mask()

    def reserved_violations(self, value: int) -> int:
        """Reserved bits that differ from their architectural value: set reserved-zero bits,
        plus clear ``fixed1`` bits."""
        return (value & self.reserved_mask() & ~self.fixed1) | (~value & self.fixed1)

    def compose(self, **fields: int) -> int:
        """Build a value from raw field values given by name."""
        value = 0
        for name, field_value in fields.items():
            value = self.field(name).insert(value, field_value)
        return value


def _build_field(raw: Mapping[str, Any]) -> BitField:
    """A BitField from one JSON field entry (hex or decimal keys accepted)."""
    values = {as_int(k): str(v) for k, v in dict(raw.get("values") or {}).items()}
    applies = {
        str(name): tuple(as_int(v) for v in allowed)
        for name, allowed in dict(raw.get("applies_if") or {}).items()
    }
    width = as_int(raw["width"])
    fmt = raw.get("format") or ("flag" if width == 1 and not values else ("enum" if values else "hex"))
    if fmt not in FORMATS:
        raise ValueError("field %s: unknown format %r" % (raw.get("name"), fmt))
    return BitField(
        name=str(raw["name"]),
        lsb=as_int(raw["lsb"]),
        width=width,
        description=str(raw.get("description", "")),
        values=values,
        applies_if=applies,
        format=str(fmt),
    )


@functools.lru_cache(maxsize=None)
def _layouts() -> Dict[str, BitLayout]:
    """Parse ``bitfields.json`` once; fields are sorted by lowest bit."""
    table = load_table(_TABLE)
    out = {}
    for name, raw in table["layouts"].items():
        fields = tuple(sorted((_build_field(f) for f in raw["fields"]), key=lambda f: f.lsb))
        out[name] = BitLayout(
            name=name,
            title=str(raw.get("title", name)),
            sdm=str(raw.get("sdm", "")),
            width=as_int(raw.get("width", 64)),
            fields=fields,
            fixed1=as_int(raw.get("fixed1", 0)),
        )
    return out


def layout(name: str) -> BitLayout:
    """The layout called ``name`` (KeyError if the table has none)."""
    layouts = _layouts()
    try:
        return layouts[name]
    except KeyError:
        raise KeyError("unknown bitfield layout %r" % name) from None


def all_layouts() -> Dict[str, BitLayout]:
    """Every layout, keyed by name (a fresh dict; the layouts themselves are shared)."""
    return dict(_layouts())


def layout_names() -> List[str]:
    """Sorted names of every layout."""
    return sorted(_layouts())
