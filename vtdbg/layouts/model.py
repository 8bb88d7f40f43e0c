"""In-memory VMCS layouts: where an implementation stores each field in the 4 KiB region.

A layout file (schema ``vtdbg-layout/1``, see docs/layouts.md) lists fields by FULL
encoding with byte offset, stored size and an optional ``transform`` naming how the
stored bytes differ from the VMREAD value:

* ``null``     - little-endian integer of ``size`` bytes, as VMREAD returns it;
* ``rol8``     - a 32-bit access-rights value stored rotated left by 8 (Bochs, and the
                 descriptor-high-dword form of Penryn..Ivy Bridge);
* ``packed16`` - a 16-bit packed access-rights form (AR bits 7:0 and 15:12 kept, the
                 "unusable" bit 16 moved to bit 11; Skylake-family measurements).

Fields a source marks uncertain carry ``certain: false``; decoders keep them apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from vtdbg.lib.bits import rotl32, rotr32
from vtdbg.lib.errors import LayoutError
from vtdbg.lib.numbers import json_int

SCHEMA = "vtdbg-layout/1"
REGION_SIZE = 4096


def _packed16_to_ar(raw: int) -> int:
    return (raw & 0xF0FF) | (((raw >> 11) & 1) << 16)


def _ar_to_packed16(ar: int) -> int:
    return (ar & 0xF0FF) | (((ar >> 16) & 1) << 11)


#: transform name -> (stored value -> VMREAD value)
TRANSFORMS: Dict[Optional[str], Callable[[int], int]] = {
    None: lambda raw: raw,
    "rol8": lambda raw: rotr32(raw, 8),
    "packed16": _packed16_to_ar,
}
#: transform name -> (VMREAD value -> stored value); used to build pages and by discovery
INVERSE_TRANSFORMS: Dict[Optional[str], Callable[[int], int]] = {
    None: lambda value: value,
    "rol8": lambda value: rotl32(value, 8),
    "packed16": _ar_to_packed16,
}


@dataclass(frozen=True)
class LayoutField:
    """Where one VMCS field lives in a layout."""

    name: str
    encoding: int
    offset: int
    size: int
    transform: Optional[str] = None
    certain: bool = True
    optional: bool = False

    def decode(self, page: bytes) -> int:
        """The VMREAD-format value of this field in ``page``."""
        raw = int.from_bytes(page[self.offset:self.offset + self.size], "little")
        return TRANSFORMS[self.transform](raw)

    def encode(self, value: int) -> bytes:
        """The bytes this layout stores for VMREAD value ``value`` (inverse of decode)."""
        stored = INVERSE_TRANSFORMS[self.transform](value) & ((1 << (8 * self.size)) - 1)
        return stored.to_bytes(self.size, "little")

    def to_json(self) -> Dict[str, Any]:
        """The `vtdbg layout NAME --json` shape of the field."""
        return {
            "name": self.name,
            "encoding": self.encoding,
            "offset": self.offset,
            "size": self.size,
            "transform": self.transform,
            "certain": self.certain,
            "optional": self.optional,
        }


@dataclass(frozen=True)
class Layout:
    """One implementation's in-memory VMCS layout."""

    name: str
    title: str
    source: str
    kind: str  # "software" | "nested" | "hardware" | "user"
    revision_ids: Tuple[int, ...]
    fields: Tuple[LayoutField, ...]
    coherence: str
    auto: bool = True
    any_revision: bool = False
    header: Dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    path: str = ""
    builtin: bool = True

    def build_page(self, values: Dict[int, int], revision_id: Optional[int] = None,
                   launch_state: str = "clear") -> bytes:
        """A 4 KiB region holding ``values`` (encoding -> VMREAD value) in this layout."""
        page = bytearray(REGION_SIZE)
        revision = self.revision_ids[0] if revision_id is None else revision_id
        page[0:4] = revision.to_bytes(4, "little")
        offset = self.launch_state_offset
        states = self.header.get("launch_state_values") or {}
        if offset is not None and launch_state in states:
            size = int(self.header.get("launch_state_size", 4))
            page[offset:offset + size] = int(states[launch_state]).to_bytes(size, "little")
        fields = self.field_map()
        for encoding, value in values.items():
            item = fields.get(encoding)
            if item is not None:
                page[item.offset:item.offset + item.size] = item.encode(value)
        return bytes(page)

    def field_map(self) -> Dict[int, LayoutField]:
        """Encoding -> field (certain entries win over uncertain duplicates)."""
        out: Dict[int, LayoutField] = {}
        for item in self.fields:
            if item.encoding not in out or (item.certain and not out[item.encoding].certain):
                out[item.encoding] = item
        return out

    @property
    def launch_state_offset(self) -> Optional[int]:
        """Offset of the implementation's launch-state word, if it has one."""
        value = self.header.get("launch_state_offset")
        return int(value) if value is not None else None

    def launch_state(self, page: bytes) -> Optional[str]:
        """"clear"/"launched"/"0x.." from the page, or None if the layout has no such word."""
        offset = self.launch_state_offset
        if offset is None:
            return None
        size = int(self.header.get("launch_state_size", 4))
        raw = int.from_bytes(page[offset:offset + size], "little")
        for name, value in (self.header.get("launch_state_values") or {}).items():
            if int(value) == raw and name in ("clear", "launched"):
                return name
        return "0x%x" % raw


def _as_int(value: Any, what: str) -> int:
    number = json_int(value)
    if number is None:
        raise LayoutError("%s: expected an integer, got %r" % (what, value))
    return number


def parse_layout(doc: Any, path: str = "", builtin: bool = True) -> Layout:
    """Validate a ``vtdbg-layout/1`` document (untrusted for user files) into a Layout."""
    where = path or "layout"
    if not isinstance(doc, dict):
        raise LayoutError("%s: not a JSON object" % where)
    if doc.get("schema") != SCHEMA:
        raise LayoutError("%s: schema must be %r" % (where, SCHEMA))
    name = doc.get("name")
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise LayoutError("%s: name must be a word of letters, digits, '_' or '-'" % where)
    raw_fields = doc.get("fields")
    if not isinstance(raw_fields, list) or len(raw_fields) > 4096:
        raise LayoutError("%s: fields must be a list of at most 4096 entries" % where)
    fields: List[LayoutField] = []
    for index, entry in enumerate(raw_fields):
        if not isinstance(entry, dict):
            raise LayoutError("%s: field %d is not an object" % (where, index))
        what = "%s: field %d" % (where, index)
        encoding = _as_int(entry.get("encoding"), what + " encoding")
        offset = _as_int(entry.get("offset"), what + " offset")
        size = _as_int(entry.get("size"), what + " size")
        transform = entry.get("transform")
        if transform not in TRANSFORMS:
            raise LayoutError("%s: unknown transform %r (known: rol8, packed16)" % (what, transform))
        if size not in (1, 2, 4, 8) or not 0 <= offset <= REGION_SIZE - size:
            raise LayoutError("%s: offset %d / size %d do not fit a 4 KiB region" % (what, offset, size))
        if not 0 <= encoding <= 0xFFFFFFFF:
            raise LayoutError("%s: encoding out of range" % what)
        fields.append(LayoutField(
            name=str(entry.get("name") or "0x%x" % encoding),
            encoding=encoding,
            offset=offset,
            size=size,
            transform=transform,
            certain=bool(entry.get("certain", True)),
            optional=bool(entry.get("optional", False)),
        ))
    ids = doc.get("revision_ids")
    if not isinstance(ids, list) or not ids:
        raise LayoutError("%s: revision_ids must be a non-empty list" % where)
    header = doc.get("header") or {}
    if not isinstance(header, dict):
        raise LayoutError("%s: header must be an object" % where)
    return Layout(
        name=name,
        title=str(doc.get("title", name)),
        source=str(doc.get("source", "user file")),
        kind=str(doc.get("kind", "user")),
        revision_ids=tuple(_as_int(r, where + " revision id") & 0x7FFFFFFF for r in ids),
        fields=tuple(fields),
        coherence=str(doc.get("coherence", "user-supplied layout; trust as its author says")),
        auto=bool(doc.get("auto", True)),
        any_revision=bool(doc.get("any_revision", False)),
        header=header,
        notes=str(doc.get("notes", "")),
        path=path,
        builtin=builtin,
    )
