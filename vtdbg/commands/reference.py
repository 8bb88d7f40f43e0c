"""Reference commands (what WinDbg's `!error` is for error codes): VMCS fields, exit
reasons, control bits, VM-instruction errors, exit qualifications and capability MSRs.

They need no target; every answer comes from the arch tables with its SDM reference.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

from vtdbg.arch import bitfields, controls, exit_reasons, msrs, vm_errors
from vtdbg.arch.errors import UnknownNameError
from vtdbg.arch.fields import all_fields, lookup_field
from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import KeyValues, Result, Table, Text, hex_value
from vtdbg.lib.errors import UsageError
from vtdbg.lib.numbers import looks_numeric, parse_int


def _lookup(fn: Any, text: str) -> Any:
    try:
        return fn(text)
    except UnknownNameError as exc:
        raise UsageError(str(exc.args[0]) if exc.args else str(exc)) from None


# -- fields ---------------------------------------------------------------------------------
def _fields_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--type", choices=["control", "exit_info", "guest", "host"], help="only fields of this type")
    parser.add_argument("--width", choices=["16", "32", "64", "natural"], help="only fields of this width")


@command("fields", help="list every VMCS field with its encoding, width and type",
         examples=["vtdbg fields", "vtdbg fields --type guest --width natural", "vtdbg fields --json"])
@arguments(_fields_args)
def fields_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """The VMCS field table (SDM Appendix B)."""
    chosen = [f for f in all_fields()
              if (args.type is None or f.type == args.type) and (args.width is None or f.width == args.width)]
    data = [{"name": f.name, "encoding": f.encoding, "width": f.width, "type": f.type} for f in chosen]
    rows = [["0x%04x" % f.encoding, f.width, f.type, f.name, f.description] for f in chosen]
    return Result(data, [Table(["encoding", "width", "type", "name", "description"], rows),
                         Text("%d fields" % len(chosen))])


def _field_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("field", help="field name (Linux, ia32-doc, SDM or Bochs spelling) or encoding")


@command("field", help="one VMCS field: encoding bits, description, SDM reference",
         examples=["vtdbg field GUEST_RIP", "vtdbg field 0x4402", "vtdbg field vmcs_ctrl_ept_pointer --json"])
@arguments(_field_args)
def field_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Everything the table knows about one field."""
    field = _lookup(lookup_field, args.field)
    data: Dict[str, Any] = {"name": field.name, "encoding": field.encoding, "width": field.width, "type": field.type,
                            "index": (field.encoding >> 1) & 0x1FF, "high_encoding": field.high_encoding,
                            "aliases": list(field.aliases), "description": field.description, "sdm": field.sdm,
                            "decoder": field.decoder}
    pairs = [["name", field.name], ["encoding", "0x%04x" % field.encoding],
             ["high encoding", hex_value(field.high_encoding, 4)],
             ["width", field.width], ["type", field.type], ["index", str(data["index"])],
             ["description", field.description], ["SDM", field.sdm], ["aliases", ", ".join(field.aliases) or "-"]]
    return Result(data, [KeyValues(pairs)])


# -- exit reasons ---------------------------------------------------------------------------
@command("exit-reasons", help="list the basic exit reasons",
         examples=["vtdbg exit-reasons", "vtdbg exit-reasons --json"])
def exit_reasons_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Every basic exit reason the SDM defines (Appendix C)."""
    reasons = exit_reasons.all_exit_reasons()
    data = [{"number": r.number, "name": r.name} for r in reasons]
    rows = [[str(r.number), "0x%02x" % r.number, r.name, r.description] for r in reasons]
    return Result(data, [Table(["number", "hex", "name", "description"], rows)])


def _exit_reason_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reason", help="number (basic or full 32-bit value such as 0x80000021) or name")


@command("exit-reason", help="explain one exit reason (name, qualification, flags)",
         examples=["vtdbg exit-reason 48", "vtdbg exit-reason 0x80000021", "vtdbg exit-reason cpuid --json"])
@arguments(_exit_reason_args)
def exit_reason_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """One exit reason; a full 32-bit value also has its flag bits explained."""
    reason = _lookup(exit_reasons.lookup_exit_reason, args.reason)
    full = parse_int(args.reason) if looks_numeric(args.reason) else reason.number
    flags = [w for w in _exit_flags(full)]
    qualification = reason.qualification or (
        {str(v): n for v, n in reason.qualification_by_vector} if reason.qualification_by_vector else None)
    data = {"number": reason.number, "name": reason.name, "description": reason.description,
            "aliases": list(reason.aliases), "sdm": reason.sdm, "sources": list(reason.sources),
            "qualification": qualification,
            "instruction_info": reason.instruction_info, "value": full, "entry_failure": bool(full >> 31 & 1),
            "flags": flags}
    pairs = [["number", "%d (0x%x)" % (reason.number, reason.number)], ["name", reason.name],
             ["description", reason.description], ["SDM", reason.sdm],
             ["qualification", _describe_qual_ref(reason)],
             ["instruction info", reason.instruction_info or "-"],
             ["aliases", ", ".join(reason.aliases) or "-"]]
    if full != reason.number:
        pairs.insert(0, ["value", "0x%x: %s" % (full, " ".join(flags) or "no flag bits")])
    return Result(data, [KeyValues(pairs)])


def _exit_flags(value: int) -> List[str]:
    layout = bitfields.layout("exit_reason")
    return [d.field.name for d in layout.decode(value) if d.field.width == 1 and d.value]


def _describe_qual_ref(reason: Any) -> str:
    if reason.qualification_by_vector:
        return ", ".join("vector %d: %s" % kv for kv in reason.qualification_by_vector)
    return reason.qualification or "none"


# -- controls ------------------------------------------------------------------------------
def _controls_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("group", nargs="?", help="pin, proc, proc2, proc3, exit, exit2 or entry (default: all)")
    parser.add_argument("value", nargs="?", help="a control-field value to decode")


@command("controls", help="list VMX control bits, or decode a control-field value",
         examples=["vtdbg controls", "vtdbg controls proc2", "vtdbg controls proc 0x840061f2 --json"])
@arguments(_controls_args)
def controls_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """The control bits of every group (SDM 25.6-25.8), or the bits set in a value."""
    groups = controls.groups()
    if args.group is not None and args.group not in groups:
        raise UsageError("unknown control group %r (groups: %s)" % (args.group, ", ".join(groups)))
    if args.value is not None:
        value = parse_int(args.value, "control value")
        set_bits = controls.decode_controls(args.group, value)
        unknown = controls.unknown_bits(args.group, value)
        data: Any = {"group": args.group, "value": value,
                     "bits": [{"bit": b.bit, "name": b.name} for b in set_bits], "undefined_bits": unknown}
        rows = [[str(b.bit), b.name, b.description] for b in set_bits]
        result = Result(data, [Table(["bit", "name", "description"], rows,
                                     title="%s controls 0x%x" % (args.group, value))])
        if unknown:
            result.warnings.append("bits 0x%x are set but not defined by the SDM" % unknown)
        return result
    bits = [b for b in controls.bits() if args.group is None or b.group == args.group]
    data = [{"group": b.group, "bit": b.bit, "name": b.name} for b in bits]
    rows = [[b.group, str(b.bit), b.name, b.description] for b in bits]
    return Result(data, [Table(["group", "bit", "name", "description"], rows)])


# -- VM-instruction errors -----------------------------------------------------------------
@command("errors", help="list the VM-instruction error numbers",
         examples=["vtdbg errors", "vtdbg errors --json"])
def errors_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Every VM-instruction error number (SDM "VM Instruction Error Numbers")."""
    errs = vm_errors.all_errors()
    data = [{"number": e.number, "description": e.description} for e in errs]
    return Result(data, [Table(["number", "description"], [[str(e.number), e.description] for e in errs])])


def _error_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("number", help="VM-instruction error number (VM_INSTRUCTION_ERROR field)")


@command("error", help="explain a VM-instruction error number",
         examples=["vtdbg error 7", "vtdbg error 0n12 --json"])
@arguments(_error_args)
def error_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """One VM-instruction error."""
    number = parse_int(args.number, "error number")
    error = vm_errors.error_by_number(number)
    if error is None:
        raise UsageError("VM-instruction error %d is not defined by the SDM (see `vtdbg errors`)" % number)
    data = {"number": error.number, "description": error.description, "name": error.name, "sdm": error.sdm}
    return Result(data, [KeyValues([["error", str(error.number)], ["meaning", error.description], ["SDM", error.sdm]])])


# -- exit qualification --------------------------------------------------------------------
def _qual_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reason", help="exit reason (number or name) or a qualification layout name")
    parser.add_argument("value", help="the exit-qualification value")
    parser.add_argument("--vector", help="for exception exits (reason 0): the vector (1 = #DB, 14 = #PF)")


@command("qual", help="decode an exit qualification for an exit reason",
         examples=["vtdbg qual 28 0x13", "vtdbg qual ept-violation 0x181", "vtdbg qual 0 0x4000 --vector 1",
                   "vtdbg qual io 0xe90008 --json"])
@arguments(_qual_args)
def qual_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Every bitfield of the qualification layout, with ``applies`` for conditional ones."""
    value = parse_int(args.value, "qualification")
    layout_name, reason_number = _qual_layout(args.reason, args.vector)
    layout = bitfields.layout(layout_name)
    decoded = layout.decode(value)
    fields = [{"name": d.field.name, "lsb": d.field.lsb, "width": d.field.width, "value": d.value,
               "applies": d.applies, "meaning": d.meaning} for d in decoded]
    data = {"reason": reason_number, "layout": layout_name, "value": value, "sdm": layout.sdm, "fields": fields,
            "reserved_bits": value & layout.reserved_mask()}
    rows = [["%d:%d" % (d.field.lsb + d.field.width - 1, d.field.lsb) if d.field.width > 1 else str(d.field.lsb),
             d.field.name, hex_value(d.value), d.meaning or "", "" if d.applies else "n/a"] for d in decoded]
    result = Result(data, [Text("%s (%s), value 0x%x" % (layout.title, layout.sdm, value)),
                           Table(["bits", "field", "value", "meaning", "applies"], rows)])
    if data["reserved_bits"]:
        result.warnings.append("reserved bits 0x%x are set" % data["reserved_bits"])
    return result


def _qual_layout(text: str, vector: Any) -> Any:
    try:
        reason = exit_reasons.lookup_exit_reason(text)
    except UnknownNameError:
        try:
            bitfields.layout(text)
        except KeyError:
            raise UsageError("%r is neither an exit reason nor a qualification layout" % text) from None
        return text, None
    if reason.qualification_by_vector:
        if vector is None:
            raise UsageError("exit reason %d needs --vector (%s)" % (reason.number, _describe_qual_ref(reason)))
        name = reason.qualification_for(parse_int(vector, "vector"))
        if name is None:
            raise UsageError("for vector %s the exit qualification is not defined (only %s)"
                             % (vector, _describe_qual_ref(reason)))
        return name, reason.number
    if reason.qualification is None:
        raise UsageError("exit reason %d (%s) has no exit qualification" % (reason.number, reason.name))
    return reason.qualification, reason.number


# -- capability MSRs -----------------------------------------------------------------------
def _msr_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="MSR index (0x3a, 0x480..0x493) or name (IA32_VMX_BASIC)")
    parser.add_argument("value", help="the MSR value")


@command("msr", help="decode a VMX capability MSR value",
         examples=["vtdbg msr 0x480 0x00d810000000002b", "vtdbg msr IA32_VMX_TRUE_PROCBASED_CTLS 0xf7f9fffe04006172",
                   "vtdbg msr 0x48c 0xf0106334141 --json"])
@arguments(_msr_args)
def msr_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Allowed-0/allowed-1 for control MSRs, fixed bits for CR MSRs, fields otherwise."""
    msr = _lookup(msrs.lookup_msr, args.index)
    value = parse_int(args.value, "MSR value")
    if not 0 <= value < 1 << 64:
        raise UsageError("MSR values are 64-bit")
    data = msrs.decode_msr(msr.index, value)
    pairs: List[List[Any]] = [["MSR", "0x%x %s" % (msr.index, msr.name)], ["value", "0x%016x" % value]]
    blocks: List[Any] = [KeyValues(pairs)]
    if "allowed0" in data:
        pairs.append(["allowed-0 (must be 1)", "0x%08x" % data["allowed0"]])
    if "allowed1" in data:
        pairs.append(["allowed-1 (may be 1)", "0x%x" % data["allowed1"]])
    if data.get("must_be_one"):
        pairs.append(["must be 1", " ".join(data["must_be_one"])])
    if data.get("may_be_one"):
        pairs.append(["may be 1", " ".join(data["may_be_one"])])
    if data.get("bits"):
        pairs.append(["bits", " ".join(data["bits"])])
    if data.get("fields"):
        rows = [[f["name"], str(f["lsb"]), str(f["width"]), hex_value(f["value"]), f.get("meaning") or ""]
                for f in data["fields"]]
        blocks.append(Table(["field", "lsb", "width", "value", "meaning"], rows))
    return Result(data, blocks)
