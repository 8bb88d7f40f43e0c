"""VMCS fields: encodings, widths, types and names (SDM Vol. 3D Appendix B).

The facts live in ``vtdbg/arch/data/vmcs_fields.json``; this module turns them into frozen
:class:`VmcsField` records, built once on first use, and offers lookups by encoding and by
name.  Names match case-insensitively and include the canonical (Linux) name, every alias
of the table (ia32-doc, Bochs, Xen, kvm-unit-tests, SDM prose, names used in shared/reference)
and ``NAME_HIGH`` / ``NAME_HI`` / ``NAME_FULL`` spellings for 64-bit fields.  Numbers are
accepted as decimal, ``0x`` hex or WinDbg ``0n`` decimal.

Encoding layout (SDM "VMREAD, VMWRITE, and Encodings of VMCS Fields"): bit 0 access type
(0 full, 1 high), bits 9:1 index, bits 11:10 type (0 control, 1 VM-exit information,
2 guest state, 3 host state), bit 12 reserved, bits 14:13 width (0 16-bit, 1 64-bit,
2 32-bit, 3 natural width), bits 31:15 reserved.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

from vtdbg.arch._data import as_int, load_table
from vtdbg.arch.errors import UnknownNameError, close_matches, normalize_name, parse_number

FIELDS_TABLE = "vmcs_fields.json"


class Width:
    """Field widths as stored in the table (``VmcsField.width``)."""

    W16 = "16"
    W64 = "64"
    W32 = "32"
    NATURAL = "natural"
    #: width code in encoding bits 14:13 -> width string
    BY_CODE: Tuple[str, str, str, str] = (W16, W64, W32, NATURAL)
    ALL: Tuple[str, ...] = BY_CODE


class FieldType:
    """Field types as stored in the table (``VmcsField.type``)."""

    CONTROL = "control"
    EXIT_INFO = "exit_info"
    GUEST = "guest"
    HOST = "host"
    #: type code in encoding bits 11:10 -> type string
    BY_CODE: Tuple[str, str, str, str] = (CONTROL, EXIT_INFO, GUEST, HOST)
    ALL: Tuple[str, ...] = BY_CODE


#: bytes occupied by a value of each width (natural width is 8 bytes on Intel 64)
_SIZE = {Width.W16: 2, Width.W64: 8, Width.W32: 4, Width.NATURAL: 8}

#: bits that must be zero in any valid encoding (bits 31:15 and bit 12)
ENCODING_RESERVED_MASK = 0xFFFF9000


def encoding_width(encoding: int) -> str:
    """Width named by bits 14:13 of ``encoding`` ("16", "64", "32" or "natural")."""
    return Width.BY_CODE[(encoding >> 13) & 3]


def encoding_type(encoding: int) -> str:
    """Type named by bits 11:10 of ``encoding`` ("control", "exit_info", "guest" or "host")."""
    return FieldType.BY_CODE[(encoding >> 10) & 3]


def encoding_index(encoding: int) -> int:
    """Index of the field within its width/type group (bits 9:1 of ``encoding``)."""
    return (encoding >> 1) & 0x1FF


def is_high(encoding: int) -> bool:
    """True when bit 0 of ``encoding`` selects the high 32 bits of a 64-bit field."""
    return bool(encoding & 1)


def make_encoding(width: str, field_type: str, index: int, high: bool = False) -> int:
    """Compose an encoding from its parts (the inverse of the ``encoding_*`` helpers)."""
    if not 0 <= index <= 0x1FF:
        raise ValueError(f"VMCS field index {index} is outside 0..511")
    return (
        (Width.BY_CODE.index(width) << 13)
        | (FieldType.BY_CODE.index(field_type) << 10)
        | (index << 1)
        | (1 if high else 0)
    )


@dataclass(frozen=True)
class VmcsField:
    """One VMCS field of SDM Appendix B (the FULL encoding for 64-bit fields)."""

    name: str
    encoding: int
    width: str
    type: str
    aliases: Tuple[str, ...]
    description: str
    sdm: str
    decoder: str | None

    @property
    def size(self) -> int:
        """Size of the value in bytes: 2, 8, 4, or 8 for natural width."""
        return _SIZE[self.width]

    @property
    def bits(self) -> int:
        """Size of the value in bits."""
        return self.size * 8

    @property
    def high_encoding(self) -> int | None:
        """Encoding of the upper 32 bits of a 64-bit field, None for other widths."""
        return self.encoding | 1 if self.width == Width.W64 else None

    @property
    def index(self) -> int:
        """Index of the field in bits 9:1 of its encoding."""
        return encoding_index(self.encoding)

    @property
    def read_only(self) -> bool:
        """True for VM-exit information fields (read-only unless VMWRITE-all is supported)."""
        return self.type == FieldType.EXIT_INFO

    @property
    def names(self) -> Tuple[str, ...]:
        """Canonical name followed by every alias."""
        return (self.name,) + self.aliases


class _FieldIndex:
    """The parsed table with its lookup dictionaries (built once)."""

    def __init__(self, fields: List[VmcsField]) -> None:
        self.fields = sorted(fields, key=lambda field: field.encoding)
        self.by_encoding: Dict[int, VmcsField] = {}
        self.by_key: Dict[str, VmcsField] = {}
        for field in self.fields:
            if field.encoding in self.by_encoding:
                raise ValueError(f"duplicate VMCS encoding {field.encoding:#06x} in {FIELDS_TABLE}")
            self.by_encoding[field.encoding] = field
            for name in field.names:
                key = normalize_name(name)
                other = self.by_key.get(key)
                if other is not None and other is not field:
                    raise ValueError(f"VMCS name {name!r} is used by {other.name} and {field.name}")
                self.by_key[key] = field


def _field_from_row(row: Dict[str, Any]) -> VmcsField:
    """Build one :class:`VmcsField` from a table row, checking the encoding bits."""
    encoding = as_int(row["encoding"])
    width = str(row["width"])
    field_type = str(row["type"])
    if encoding_width(encoding) != width or encoding_type(encoding) != field_type or is_high(encoding):
        raise ValueError(f"{row['name']}: encoding {encoding:#06x} does not match width {width} / type {field_type}")
    decoder = row.get("decoder")
    aliases = row.get("aliases") or []
    return VmcsField(
        name=str(row["name"]),
        encoding=encoding,
        width=width,
        type=field_type,
        aliases=tuple(str(alias) for alias in aliases),
        description=str(row.get("description", "")),
        sdm=str(row.get("sdm", "")),
        decoder=None if decoder is None else str(decoder),
    )


@functools.lru_cache(maxsize=None)
def _index() -> _FieldIndex:
    """Parse the field table once per process."""
    table = load_table(FIELDS_TABLE)
    return _FieldIndex([_field_from_row(row) for row in table["fields"]])


def all_fields() -> List[VmcsField]:
    """Every known field, in encoding order."""
    return list(_index().fields)


def field_by_encoding(encoding: int) -> VmcsField | None:
    """The field with this FULL encoding, or None (HIGH encodings give None too)."""
    return _index().by_encoding.get(encoding)


def resolve_encoding(encoding: int) -> Tuple[VmcsField, bool]:
    """``(field, is_high)`` for a FULL or HIGH encoding; KeyError if none matches.

    A HIGH encoding (bit 0 set) only resolves for 64-bit fields, as in the SDM.
    """
    index = _index()
    if encoding < 0 or encoding & ENCODING_RESERVED_MASK:
        raise UnknownNameError("VMCS field encoding", f"{encoding:#x}")
    field = index.by_encoding.get(encoding & ~1)
    if field is None or (is_high(encoding) and field.width != Width.W64):
        raise UnknownNameError("VMCS field encoding", f"{encoding:#06x}")
    return field, is_high(encoding)


_HIGH_SUFFIXES = ("_HIGH", "_HI")
_FULL_SUFFIXES = ("_FULL",)


def resolve_field(text: Union[str, int]) -> Tuple[VmcsField, bool]:
    """``(field, is_high)`` for a name or number, raising :class:`UnknownNameError`.

    Accepts canonical names, aliases, ``NAME_HIGH``/``NAME_HI``/``NAME_FULL`` for 64-bit
    fields (any case, '-' for '_'), and encodings as int, decimal, ``0x`` or ``0n`` text.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return resolve_encoding(text)
    raw = str(text)
    number = parse_number(raw)
    if number is not None:
        try:
            return resolve_encoding(number)
        except UnknownNameError:
            raise UnknownNameError("VMCS field encoding", raw) from None
    index = _index()
    key = normalize_name(raw)
    field = index.by_key.get(key)
    if field is not None:
        return field, False
    for suffixes, high in ((_HIGH_SUFFIXES, True), (_FULL_SUFFIXES, False)):
        for suffix in suffixes:
            if key.endswith(suffix):
                base = index.by_key.get(key[: -len(suffix)])
                if base is not None and base.width == Width.W64:
                    return base, high
    candidates = {name: field.encoding for field in index.fields for name in field.names}
    raise UnknownNameError("VMCS field", raw, close_matches(raw, candidates))


def lookup_field(text: Union[str, int]) -> VmcsField:
    """The field named or numbered by ``text`` (see :func:`resolve_field`); HIGH maps to its field."""
    return resolve_field(text)[0]


def field_names() -> List[str]:
    """Canonical names of all fields, in encoding order."""
    return [field.name for field in _index().fields]
