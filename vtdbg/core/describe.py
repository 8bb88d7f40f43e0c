"""Turning a field value into words, driven by each field's ``decoder`` in the arch tables.

Nothing here knows a bit position: control bits, register flags, qualification layouts and
enumerations all come from vtdbg/arch/data.  Context-dependent decoders (the exit
qualification and instruction information depend on the exit reason) take the VMCS values.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

from vtdbg.arch import bitfields, controls, exit_reasons, vm_errors
from vtdbg.arch.fields import VmcsField, lookup_field


def _enc(name: str) -> int:
    return lookup_field(name).encoding


def decode_bits(layout_name: str, value: int) -> List[str]:
    """Short words for a bitfield value: set flags by name, multi-bit fields as name=value."""
    layout = bitfields.layout(layout_name)
    decoded = layout.decode(value)
    # formats with a valid bit (interruption information, IDT vectoring) mean nothing while
    # it is clear (the SDM ignores the other bits); decoding the zero "type" as "external
    # interrupt" would mislead
    if any(d.field.name == "valid" and d.field.width == 1 and not d.value for d in decoded):
        return ["not valid"]
    words: List[str] = []
    for item in decoded:
        if not item.applies:
            continue
        if item.field.width == 1 and not item.field.values:
            if item.value:
                words.append(item.field.name)
        elif item.meaning is not None:
            words.append("%s=%s" % (item.field.name, item.meaning))
        elif item.field.format == "address":
            words.append("%s=0x%x" % (item.field.name, item.in_place))
        elif item.value:
            words.append("%s=%s" % (item.field.name, item.value if item.field.format == "dec" else hex(item.value)))
    wrong = layout.reserved_violations(value)
    if wrong:
        words.append("RESERVED-BITS=0x%x" % wrong)
    return words


def describe_controls(group: str, value: int) -> List[str]:
    """Names of the set control bits, plus any set bit the SDM does not define."""
    # default1 placeholders (reserved bits that must be 1) are noise in a listing
    words = [bit.name for bit in controls.decode_controls(group, value) if not bit.reserved]
    unknown = controls.unknown_bits(group, value)
    if unknown:
        words.append("undefined=0x%x" % unknown)
    return words


def exit_reason_words(value: int) -> List[str]:
    """Name of the basic exit reason and the flags of the 32-bit exit-reason field."""
    reason = exit_reasons.exit_reason_by_number(value & 0xFFFF)
    words = [reason.name if reason else "reason %d (not defined by the SDM)" % (value & 0xFFFF)]
    words.extend(w for w in decode_bits("exit_reason", value) if not w.startswith("basic"))
    return words


def qualification_layout(values: Mapping[int, int], reason_value: Optional[int] = None) -> Optional[str]:
    """The exit-qualification layout for the exit the VMCS records (None if none applies)."""
    if reason_value is None:
        reason_value = values.get(_enc("VM_EXIT_REASON"))
    if reason_value is None:
        return None
    reason = exit_reasons.exit_reason_by_number(reason_value & 0xFFFF)
    if reason is None:
        return None
    info = values.get(_enc("VM_EXIT_INTR_INFO"))
    return reason.qualification_for(None if info is None else info & 0xFF)


def instruction_info_layout(values: Mapping[int, int]) -> Optional[str]:
    """The instruction-information layout for the recorded exit (None if none applies)."""
    reason_value = values.get(_enc("VM_EXIT_REASON"))
    if reason_value is None:
        return None
    reason = exit_reasons.exit_reason_by_number(reason_value & 0xFFFF)
    return reason.instruction_info if reason else None


def describe(field: VmcsField, value: int, values: Optional[Dict[int, int]] = None) -> str:
    """A one-line meaning of ``value`` for ``field`` ('' when there is nothing to add)."""
    decoder = field.decoder
    if decoder is None:
        return ""
    values = values or {}
    try:
        if decoder.startswith("controls:"):
            words = describe_controls(decoder.split(":", 1)[1], value)
        elif decoder == "exit_reason":
            words = exit_reason_words(value)
        elif decoder == "vm_instruction_error":
            if value == 0:
                return "no error"
            error = vm_errors.error_by_number(value)
            return error.description if error else "error %d (not defined by the SDM)" % value
        elif decoder == "exit_qualification":
            name = qualification_layout(values)
            words = decode_bits(name, value) if name else []
        elif decoder == "instruction_info":
            name = instruction_info_layout(values)
            words = decode_bits(name, value) if name else []
        else:
            words = decode_bits(decoder, value)
    except KeyError:
        return ""
    return " ".join(words)


def describe_access_rights(value: int) -> str:
    """A compact segment access-rights summary: type meaning, DPL and the set flags
    (``unusable`` alone when bit 16 says the register is unusable)."""
    decoded = {d.field.name: d for d in bitfields.layout("segment_ar").decode(value)}
    if decoded.get("unusable") is not None and decoded["unusable"].value:
        return "unusable"
    words = []
    for name in ("type", "system_type"):
        item = decoded.get(name)
        if item is not None and item.applies and item.meaning:
            words.append(item.meaning)
    if "dpl" in decoded:
        words.append("dpl=%d" % decoded["dpl"].value)
    words.extend(name for name in ("p", "avl", "l", "db", "g") if name in decoded and decoded[name].value)
    wrong = bitfields.layout("segment_ar").reserved_violations(value)
    if wrong:
        words.append("RESERVED-BITS=0x%x" % wrong)
    return " ".join(words)
