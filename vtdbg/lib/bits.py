"""Bit helpers used by decoders."""
from __future__ import annotations

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF


def rotl32(value: int, count: int) -> int:
    """Rotate a 32-bit value left by ``count`` bits."""
    count &= 31
    value &= MASK32
    return ((value << count) | (value >> (32 - count))) & MASK32


def rotr32(value: int, count: int) -> int:
    """Rotate a 32-bit value right by ``count`` bits."""
    return rotl32(value, 32 - (count & 31))


def extract(value: int, lsb: int, width: int) -> int:
    """Bits ``lsb .. lsb+width-1`` of ``value``."""
    return (value >> lsb) & ((1 << width) - 1)


def is_canonical(address: int, linear_bits: int = 48) -> bool:
    """True if ``address`` is canonical for ``linear_bits``-bit linear addresses."""
    top = address >> (linear_bits - 1)
    return top == 0 or top == (1 << (65 - linear_bits)) - 1


def sign_extend(value: int, bits: int) -> int:
    """Sign-extend a ``bits``-wide value to 64 bits (as an unsigned 64-bit int)."""
    value &= (1 << bits) - 1
    if value >> (bits - 1):
        value |= MASK64 ^ ((1 << bits) - 1)
    return value
