"""VMCS snapshot files: the checker's offline input, and `vtdbg vmcs --save-snapshot`.

A snapshot is ``{"fields": {"NAME or 0xENCODING": int or "0x.."}, "memory": [{"address",
"size", "value"}], "vmcs_pa": int, "launch_state": "clear"|"launched", "environment": {...}}``
(every key but ``fields`` optional; unlisted memory reads 0, unlisted fields are unknown).
``revision_id`` and ``shadow`` may be given too, and ``"unlisted_memory": "unknown"`` (what
:func:`save_snapshot` writes) makes bytes the snapshot does not list unknown instead of 0.
Access rights are the 32-bit architectural value, as VMREAD returns them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Union

from vtdbg.arch._data import as_int
from vtdbg.arch.errors import UnknownNameError
from vtdbg.arch.fields import field_by_encoding, lookup_field
from vtdbg.core.check.caps import Caps
from vtdbg.core.check.context import Environment
from vtdbg.core.check.memory import Memory, RecordingMemory, SparseMemory
from vtdbg.core.vmcs import Vmcs
from vtdbg.lib.errors import UsageError

SCHEMA = "vtdbg-snapshot/1"


@dataclass
class Snapshot:
    """A parsed snapshot: the VMCS, its memory and the environment it states."""

    vmcs: Vmcs
    memory: SparseMemory
    environment: Environment


def parse_fields(raw: Mapping[str, Any], source: str = "snapshot") -> Dict[int, int]:
    """``{"NAME" | "0xENC": value}`` -> values by FULL encoding (HIGH halves merged)."""
    values: Dict[int, int] = {}
    highs: Dict[int, int] = {}
    for key, value in raw.items():
        try:
            field = lookup_field(str(key))
        except (KeyError, UnknownNameError):
            raise UsageError("%s: unknown VMCS field %r" % (source, key)) from None
        try:
            number = as_int(value)
        except (TypeError, ValueError):
            raise UsageError("%s: field %s has a non-integer value %r" % (source, key, value)) from None
        text = str(key).strip().upper()
        is_high = text.endswith(("_HIGH", "_HI")) or (text.startswith("0X") and as_int(text.lower()) & 1
                                                        and field.width == "64")
        if is_high:
            highs[field.encoding] = number & 0xFFFFFFFF
        else:
            values[field.encoding] = number
    for encoding, high in highs.items():
        values[encoding] = (values.get(encoding, 0) & 0xFFFFFFFF) | (high << 32)
    return values


def snapshot_from_json(raw: Mapping[str, Any], source: str = "snapshot") -> Snapshot:
    """Parse a snapshot object (see the module docstring)."""
    if not isinstance(raw, Mapping) or "fields" not in raw:
        raise UsageError("%s must be an object with a \"fields\" object" % source)
    values = parse_fields(raw["fields"], source)
    launch = raw.get("launch_state")
    if launch is not None and launch not in ("clear", "launched"):
        raise UsageError("%s: launch_state must be \"clear\" or \"launched\"" % source)
    vmcs_pa = raw.get("vmcs_pa")
    revision = raw.get("revision_id")
    vmcs = Vmcs(source="snapshot", revision_id=as_int(revision) if revision is not None else 0,
                shadow=bool(raw.get("shadow", False)), values=values,
                address=as_int(vmcs_pa) if vmcs_pa is not None else None, launch_state=launch,
                trust="snapshot %s" % source)
    unlisted = raw.get("unlisted_memory", "zero")
    if unlisted not in ("zero", "unknown"):
        raise UsageError("%s: unlisted_memory must be \"zero\" or \"unknown\"" % source)
    memory = SparseMemory.from_json(raw.get("memory") or [], zero=unlisted == "zero")
    env = Environment.from_json(raw.get("environment"), source)
    return Snapshot(vmcs, memory, env)


def load_snapshot(path: str) -> Snapshot:
    """Read a snapshot file."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except OSError as exc:
        raise UsageError("cannot read snapshot %s: %s" % (path, exc.strerror or exc)) from None
    except ValueError as exc:
        raise UsageError("snapshot %s is not JSON: %s" % (path, exc)) from None
    return snapshot_from_json(raw, path)


def snapshot_to_json(vmcs: Vmcs, memory: Optional[List[Dict[str, int]]] = None,
                     environment: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The snapshot object for ``vmcs`` (fields by canonical name, FULL encodings only)."""
    fields: Dict[str, int] = {}
    for encoding in sorted(vmcs.values):
        known = field_by_encoding(encoding)
        fields[known.name if known else "0x%04x" % encoding] = vmcs.values[encoding]
    doc: Dict[str, Any] = {"schema": SCHEMA, "fields": fields}
    if vmcs.address is not None:
        doc["vmcs_pa"] = vmcs.address
    if vmcs.launch_state is not None:
        doc["launch_state"] = vmcs.launch_state
    doc["revision_id"] = vmcs.revision_id
    doc["shadow"] = vmcs.shadow
    doc["source"] = vmcs.trust or vmcs.source
    doc["memory"] = memory or []
    # only what was read from the target is known; the rest of memory is not "zero"
    doc["unlisted_memory"] = "unknown"
    if environment:
        doc["environment"] = dict(environment)
    return doc


def collect_memory(vmcs: Vmcs, memory: Memory, caps: Optional[Caps] = None) -> List[Dict[str, int]]:
    """Run the checker over ``memory`` and keep what it read, so the snapshot can answer the
    memory-dependent rules later without the target (VTPR, link page header, PDPTEs,
    MSR-load entries)."""
    from vtdbg.core.check.checker import check_vmcs

    recorder = RecordingMemory(memory)
    check_vmcs(vmcs, caps or Caps(), recorder)
    seen = set()
    out: List[Dict[str, int]] = []
    for pa, data in recorder.reads:
        if (pa, len(data)) in seen:
            continue
        seen.add((pa, len(data)))
        out.append({"address": pa, "size": len(data), "value": int.from_bytes(data, "little")})
    return out


def save_snapshot(vmcs: Vmcs, path: str, memory: Union[Memory, None] = None, caps: Optional[Caps] = None,
                  environment: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Write ``vmcs`` as a snapshot file (for `vtdbg vmcs --save-snapshot FILE`).

    With ``memory`` (e.g. ``TargetMemory(target)``) the pages the checker reads are saved too,
    so `vtdbg check --snapshot` can decide the memory-dependent rules offline.  Returns the
    object written.
    """
    saved = collect_memory(vmcs, memory, caps) if memory is not None else None
    doc = snapshot_to_json(vmcs, saved, environment)
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=1, sort_keys=False)
            handle.write("\n")
    except OSError as exc:
        raise UsageError("cannot write snapshot %s: %s" % (path, exc.strerror or exc)) from None
    return doc
