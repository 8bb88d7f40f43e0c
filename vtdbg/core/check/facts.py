"""Architectural constants the checks use, resolved from the arch tables.

The checker never spells a control-bit position, a field encoding or a register-bit mask as
a literal: a control bit comes from :mod:`vtdbg.arch.controls` by its canonical name, a VMCS
field from :mod:`vtdbg.arch.fields`, a register or information-field bit from the layouts of
:mod:`vtdbg.arch.bitfields`.  This module caches those lookups (they run once per name).
"""
from __future__ import annotations

import functools

from vtdbg.arch import controls
from vtdbg.arch.bitfields import BitField, layout
from vtdbg.arch.fields import lookup_field

#: The "VMCS pointer not valid" value (all ones), used for the link pointer and no-current-VMCS.
INVALID_POINTER = (1 << 64) - 1
#: All 64 bits.
MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=None)
def encoding(name: str) -> int:
    """FULL encoding of the VMCS field ``name`` (canonical name or alias)."""
    return lookup_field(name).encoding


@functools.lru_cache(maxsize=None)
def canonical_name(name: str) -> str:
    """The canonical spelling of a field name."""
    return lookup_field(name).name


@functools.lru_cache(maxsize=None)
def ctl_bit(group: str, name: str) -> controls.ControlBit:
    """The control bit ``name`` of ``group`` (pin/proc/proc2/proc3/exit/exit2/entry)."""
    return controls.lookup_control(name, group)


def ctl_mask(group: str, name: str) -> int:
    """Mask of one control bit."""
    return ctl_bit(group, name).mask


def ctl_label(group: str, name: str) -> str:
    """How a control bit is named in messages: ``proc2.ENABLE_EPT (bit 1)``."""
    bit = ctl_bit(group, name)
    return "%s.%s (bit %d)" % (group, bit.name, bit.bit)


@functools.lru_cache(maxsize=None)
def reg(layout_name: str, field: str) -> BitField:
    """Field ``field`` of the bitfield layout ``layout_name`` (e.g. ``("cr0", "pg")``)."""
    return layout(layout_name).field(field)


def reg_mask(layout_name: str, field: str) -> int:
    """In-place mask of a layout field."""
    return reg(layout_name, field).mask


def reg_get(layout_name: str, field: str, value: int) -> int:
    """The (shifted-down) value of a layout field inside ``value``."""
    return reg(layout_name, field).extract(value)


@functools.lru_cache(maxsize=None)
def reserved_mask(layout_name: str) -> int:
    """Bits of a layout that no field defines (within the layout's width)."""
    return layout(layout_name).reserved_mask()


@functools.lru_cache(maxsize=None)
def bits_between(layout_name: str, low_field: str, high_field: str) -> int:
    """Mask of the bits strictly between two fields of a layout (e.g. the reserved bits 30:12
    of the VM-entry interruption-information field lie between ``error_code_valid`` and
    ``valid``)."""
    low = reg(layout_name, low_field)
    high = reg(layout_name, high_field)
    return ((1 << high.lsb) - 1) & ~((1 << (low.msb + 1)) - 1)


def hexs(value: int) -> str:
    """Hex for messages."""
    return "0x%x" % value
