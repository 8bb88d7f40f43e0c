"""Target profiles: data-driven descriptions of known hypervisors (schema ``vtdbg-profile/1``).

A profile tells vtdbg where a hypervisor keeps its per-CPU state (global symbol, pointer or
array, element type and field offsets), which of its addresses are physical or virtual,
where its exit handler and VMM stack are, how its register frame is laid out and which
bug-check codes it raises.  The built-in files live in ``profiles/data``; a user adds one as
``$VTDBG_HOME/profiles/NAME.json`` in the same schema (a user file may not shadow a
built-in name).  docs/profiles.md documents every key.

Every built-in profile cites the public source files it was written from and says
``"verified": false`` until someone has checked it on a live target.  Offsets in a profile
are *fallbacks* computed from the source with the MSVC x64 layout rules; when the debugger
has the driver's type information, ``Target.field_offset`` wins (see vtdbg.core.regions).

This module imports nothing but the standard library and vtdbg.lib/vtdbg.layouts helpers,
so core code may use it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from vtdbg.layouts.registry import vtdbg_home
from vtdbg.lib.errors import VtdbgError
from vtdbg.lib.numbers import json_int

SCHEMA = "vtdbg-profile/1"
_BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
#: user files larger than this are refused (a profile is a few KiB)
MAX_PROFILE_FILE = 1 << 20
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
#: how a per-CPU field's value is to be understood
FIELD_KINDS = ("physical", "virtual", "embedded", "value", "flag")
#: per-CPU roles `vtdbg regions` reports; profiles may describe more (documentation only)
REGION_ROLES = ("vmxon", "vmcs", "vmm_stack", "msr_bitmap", "eptp", "root_mode_flag")
_TOP_KEYS = {"schema", "name", "title", "verified", "sources", "notes", "modules", "detect", "priority",
             "per_cpu", "globals", "vmm_stack", "exit_handler", "register_frame", "exit_reason_handlers",
             "launch_failure", "bugchecks", "exit_history", "bug_notes"}


class ProfileError(VtdbgError):
    """A profile file is malformed, or a profile name is unknown."""


@dataclass(frozen=True)
class Step:
    """One step of a locator path (evaluated by vtdbg.core.regions).

    ``symbol``: start at the address of the first of ``names`` that resolves (qualified with
    the profile's module); ``deref``: read a ``size``-byte pointer there; ``field``: add the
    offset of ``names`` in ``type`` (``offset`` when the debugger has no type information);
    ``index``: add ``cpu * stride`` (``stride`` None = the per-CPU element size); ``add``:
    add ``offset``.
    """

    op: str
    names: Tuple[str, ...] = ()
    type: Optional[str] = None
    offset: Optional[int] = None
    size: int = 8
    stride: Optional[int] = None


@dataclass(frozen=True)
class Locator:
    """A path to a value: evaluated to an address, then ``size`` bytes are read there."""

    path: Tuple[Step, ...]
    size: int = 8
    kind: str = "value"
    note: str = ""


@dataclass(frozen=True)
class FieldSpec:
    """A field of the per-CPU structure."""

    role: str
    names: Tuple[str, ...]
    offset: Optional[int]
    size: int = 8
    kind: str = "value"
    note: str = ""


@dataclass(frozen=True)
class PerCpu:
    """Where the per-CPU state is and what it holds."""

    locatable: bool
    type: Optional[str]
    element_size: Optional[int]
    path: Tuple[Step, ...]
    count: Optional[Locator]
    count_source: str  # "locator" | "cpu_count"
    fields: Dict[str, FieldSpec]
    how: str = ""


@dataclass(frozen=True)
class Bugcheck:
    """A bug check the hypervisor raises on its own: ``code`` is the Windows bug-check code,
    ``subcodes`` name values of ``subcode_parameter`` (1-based) where the hypervisor puts
    its own code there, ``parameters`` says what the four parameters hold."""

    code: int
    name: str
    parameters: Tuple[str, ...]
    subcode_parameter: Optional[int]
    subcodes: Dict[int, Dict[str, Any]]
    condition: str = ""
    source: str = ""


@dataclass
class Profile:
    """One hypervisor description (see docs/profiles.md)."""

    name: str
    title: str
    verified: bool
    sources: List[str]
    notes: List[str]
    modules: List[str]
    detect_all: List[str]
    detect_any: List[str]
    detect_none: List[str]
    priority: int
    per_cpu: PerCpu
    globals: Dict[str, Locator]
    vmm_stack_size: Optional[int]
    exit_entry: List[str]
    exit_handler: List[str]
    root_only: List[str]
    handler_sizes: Dict[str, int]
    doc: Dict[str, Any]
    bugchecks: List[Bugcheck]
    path: str = ""
    builtin: bool = True

    def to_json(self) -> Dict[str, Any]:
        """The profile as loaded (the file's document plus where it came from), with the
        "0x.." strings the files may use turned into JSON numbers (shared/DESIGN.md)."""
        out = _numbers(self.doc)
        assert isinstance(out, dict)
        out["builtin"] = self.builtin
        out["path"] = self.path
        return out


_HEX_RE = re.compile(r"^0[xX][0-9a-fA-F]+$")


def _numbers(value: Any) -> Any:
    """A copy of ``value`` with whole-string hex numbers as ints (keys stay strings)."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and _HEX_RE.match(value):
        return int(value, 16)
    return value


# -- parsing --------------------------------------------------------------------------------
def _int(value: Any, where: str, allow_none: bool = True) -> Optional[int]:
    """Integers may be written as JSON numbers or "0x..." strings (hex reads better for offsets)."""
    if value is None:
        if allow_none:
            return None
        raise ProfileError("%s: a number is required" % where)
    number = json_int(value)
    if number is not None:
        return number
    raise ProfileError("%s: expected a number, not %r" % (where, value))


def _names(value: Any, where: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ProfileError("%s: expected a name or a list of names" % where)
    return tuple(value)


def _str_list(doc: Dict[str, Any], key: str, where: str) -> List[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError("%s: %s must be a list of strings" % (where, key))
    return list(value)


def _step(raw: Any, where: str) -> Step:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ProfileError("%s: a step is an object with one key (symbol, deref, field, index, add)" % where)
    op, arg = next(iter(raw.items()))
    if op == "symbol":
        return Step("symbol", names=_names(arg, where + ".symbol"))
    if op == "deref":
        size = _int(arg, where + ".deref", allow_none=False)
        if size not in (4, 8):
            raise ProfileError("%s: deref reads 4 or 8 bytes" % where)
        return Step("deref", size=int(size))
    if op == "field":
        if not isinstance(arg, dict):
            raise ProfileError("%s: field takes {type, names, offset}" % where)
        return Step("field", names=_names(arg.get("names"), where + ".field.names"),
                    type=arg.get("type"), offset=_int(arg.get("offset"), where + ".field.offset"))
    if op == "index":
        stride = None if arg == "element" else _int(arg, where + ".index")
        return Step("index", stride=stride)
    if op == "add":
        return Step("add", offset=_int(arg, where + ".add", allow_none=False))
    raise ProfileError("%s: unknown step %r" % (where, op))


def _path(raw: Any, where: str) -> Tuple[Step, ...]:
    if not isinstance(raw, list):
        raise ProfileError("%s: path must be a list of steps" % where)
    steps = tuple(_step(s, "%s[%d]" % (where, i)) for i, s in enumerate(raw))
    if steps and steps[0].op != "symbol":
        raise ProfileError("%s: a path starts with a symbol step" % where)
    return steps


def _locator(raw: Any, where: str) -> Locator:
    if not isinstance(raw, dict):
        raise ProfileError("%s: expected {path, size, kind}" % where)
    kind = raw.get("kind", "value")
    if kind not in FIELD_KINDS:
        raise ProfileError("%s: kind must be one of %s" % (where, ", ".join(FIELD_KINDS)))
    size = _int(raw.get("size", 8), where + ".size", allow_none=False)
    return Locator(_path(raw.get("path"), where + ".path"), int(size or 8), kind, str(raw.get("note", "")))


def _field(role: str, raw: Any, where: str) -> FieldSpec:
    if not isinstance(raw, dict):
        raise ProfileError("%s: expected {names, offset, size, kind}" % where)
    kind = raw.get("kind", "value")
    if kind not in FIELD_KINDS:
        raise ProfileError("%s: kind must be one of %s" % (where, ", ".join(FIELD_KINDS)))
    size = _int(raw.get("size", 8), where + ".size", allow_none=False)
    if size not in (1, 2, 4, 8):
        raise ProfileError("%s: size must be 1, 2, 4 or 8" % where)
    return FieldSpec(role, _names(raw.get("names"), where + ".names"), _int(raw.get("offset"), where + ".offset"),
                     int(size), kind, str(raw.get("note", "")))


def _per_cpu(raw: Any, where: str) -> PerCpu:
    if not isinstance(raw, dict):
        raise ProfileError("%s: per_cpu must be an object" % where)
    locatable = bool(raw.get("locatable", True))
    fields = raw.get("fields", {})
    if not isinstance(fields, dict):
        raise ProfileError("%s.fields must be an object" % where)
    parsed = {role: _field(role, spec, "%s.fields.%s" % (where, role)) for role, spec in fields.items()}
    count_raw = raw.get("count", "cpu_count")
    if count_raw == "cpu_count" or count_raw is None:
        count, count_source = None, "cpu_count"
    else:
        count, count_source = _locator(count_raw, where + ".count"), "locator"
    path = _path(raw.get("path", []), where + ".path")
    if locatable and not path:
        raise ProfileError("%s: a locatable per_cpu needs a path" % where)
    return PerCpu(locatable, raw.get("type"), _int(raw.get("element_size"), where + ".element_size"), path,
                  count, count_source, parsed, str(raw.get("how", "")))


def _bugchecks(raw: Any, where: str) -> List[Bugcheck]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ProfileError("%s: bugchecks must be a list" % where)
    out = []
    for i, item in enumerate(raw):
        at = "%s[%d]" % (where, i)
        if not isinstance(item, dict):
            raise ProfileError("%s: expected an object" % at)
        params = _str_list(item, "parameters", at)
        subcodes: Dict[int, Dict[str, Any]] = {}
        for key, meaning in (item.get("subcodes") or {}).items():
            code = _int(key, at + ".subcodes", allow_none=False)
            if isinstance(meaning, str):
                meaning = {"name": meaning}
            if not isinstance(meaning, dict) or "name" not in meaning:
                raise ProfileError("%s.subcodes.%s: expected a name or {name, parameters}" % (at, key))
            subcodes[int(code or 0)] = meaning
        out.append(Bugcheck(int(_int(item.get("code"), at + ".code", allow_none=False) or 0), str(item.get("name", "")),
                            tuple(params), _int(item.get("subcode_parameter"), at + ".subcode_parameter"), subcodes,
                            str(item.get("condition", "")), str(item.get("source", ""))))
    return out


def parse_profile(doc: Any, path: str = "", builtin: bool = True) -> Profile:
    """Validate a ``vtdbg-profile/1`` document and build a :class:`Profile`."""
    where = path or "<profile>"
    if not isinstance(doc, dict):
        raise ProfileError("%s: a profile is a JSON object" % where)
    if doc.get("schema") != SCHEMA:
        raise ProfileError("%s: schema must be %r" % (where, SCHEMA))
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ProfileError("%s: unknown keys %s (see docs/profiles.md)" % (where, ", ".join(unknown)))
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ProfileError("%s: name must be lower-case letters, digits and _ (got %r)" % (where, name))
    if not isinstance(doc.get("title"), str):
        raise ProfileError("%s: title is required" % where)
    if not isinstance(doc.get("verified"), bool):
        raise ProfileError("%s: verified must be true or false" % where)
    sources = _str_list(doc, "sources", where)
    if builtin and (not sources or not all(re.match(r"^[^/\s]+/[^@\s]+@[0-9a-f]{7,40}:.+", s) or
                                           s.startswith("shared/reference/") for s in sources)):
        raise ProfileError("%s: built-in profiles cite sources as owner/repo@commit:path" % where)
    detect = doc.get("detect", {})
    if not isinstance(detect, dict):
        raise ProfileError("%s: detect must be an object" % where)
    handler = doc.get("exit_handler", {}) or {}
    if not isinstance(handler, dict):
        raise ProfileError("%s: exit_handler must be an object" % where)
    sizes = handler.get("sizes", {}) or {}
    handler_sizes = {str(k): int(_int(v, where + ".exit_handler.sizes", allow_none=False) or 0)
                     for k, v in sizes.items()}
    globals_raw = doc.get("globals", {}) or {}
    if not isinstance(globals_raw, dict):
        raise ProfileError("%s: globals must be an object" % where)
    stack = doc.get("vmm_stack", {}) or {}
    per_cpu = _per_cpu(doc.get("per_cpu", {"locatable": False}), where + ".per_cpu")
    return Profile(
        name=name, title=doc["title"], verified=doc["verified"], sources=sources,
        notes=_str_list(doc, "notes", where), modules=_str_list(doc, "modules", where),
        detect_all=_str_list(detect, "symbols", where + ".detect"),
        detect_any=_str_list(detect, "any_symbols", where + ".detect"),
        detect_none=_str_list(detect, "absent_symbols", where + ".detect"),
        priority=int(_int(doc.get("priority", 0), where + ".priority", allow_none=False) or 0),
        per_cpu=per_cpu,
        globals={role: _locator(spec, "%s.globals.%s" % (where, role)) for role, spec in globals_raw.items()},
        vmm_stack_size=_int(stack.get("size"), where + ".vmm_stack.size") if isinstance(stack, dict) else None,
        exit_entry=_str_list(handler, "entry", where + ".exit_handler"),
        exit_handler=_str_list(handler, "handler", where + ".exit_handler"),
        root_only=_str_list(handler, "root_only", where + ".exit_handler"),
        handler_sizes=handler_sizes, doc=doc, bugchecks=_bugchecks(doc.get("bugchecks"), where + ".bugchecks"),
        path=path, builtin=builtin)


# -- the registry ---------------------------------------------------------------------------
def _load_file(path: str, builtin: bool) -> Profile:
    try:
        if os.path.getsize(path) > MAX_PROFILE_FILE:
            raise ProfileError("%s: larger than %d KiB" % (path, MAX_PROFILE_FILE >> 10))
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ProfileError("%s: cannot read profile: %s" % (path, exc)) from None
    return parse_profile(doc, path, builtin)


_builtin_cache: Optional[Dict[str, Profile]] = None


def builtin_profiles() -> Dict[str, Profile]:
    """The shipped profiles by name (parsed once; a broken built-in file is a bug, so it raises)."""
    global _builtin_cache
    if _builtin_cache is None:
        found: Dict[str, Profile] = {}
        for name in sorted(os.listdir(_BUILTIN_DIR)):
            if name.endswith(".json"):
                profile = _load_file(os.path.join(_BUILTIN_DIR, name), True)
                if profile.name in found:
                    raise ProfileError("%s: duplicate built-in profile name %s" % (name, profile.name))
                found[profile.name] = profile
        _builtin_cache = found
    return _builtin_cache


def user_profiles() -> Tuple[Dict[str, Profile], List[str]]:
    """Profiles from ``$VTDBG_HOME/profiles/*.json`` and warnings about files skipped."""
    folder = os.path.join(vtdbg_home(), "profiles")
    found: Dict[str, Profile] = {}
    warnings: List[str] = []
    if not os.path.isdir(folder):
        return found, warnings
    builtin = builtin_profiles()
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        try:
            profile = _load_file(os.path.join(folder, name), False)
        except ProfileError as exc:
            warnings.append("skipped user profile: %s" % exc)
            continue
        if profile.name in builtin:
            warnings.append("skipped user profile %s: the name %s is built in" % (name, profile.name))
            continue
        if profile.name in found:
            warnings.append("skipped user profile %s: %s is defined twice" % (name, profile.name))
            continue
        found[profile.name] = profile
    return found, warnings


def all_profiles() -> Tuple[List[Profile], List[str]]:
    """Built-in then user profiles, and warnings about user files."""
    users, warnings = user_profiles()
    return list(builtin_profiles().values()) + list(users.values()), warnings


def get_profile(name: str) -> Profile:
    """A profile by name (case-insensitive); ProfileError lists the known names."""
    key = name.strip().lower()
    profiles, _ = all_profiles()
    for profile in profiles:
        if profile.name == key:
            return profile
    raise ProfileError("unknown profile %r (known: %s)" % (name, ", ".join(sorted(p.name for p in profiles))))


def profile_names() -> List[str]:
    """Every profile name (for completion)."""
    profiles, _ = all_profiles()
    return sorted(p.name for p in profiles)


# -- bug checks (post-mortem triage) --------------------------------------------------------
@dataclass
class BugcheckMatch:
    """A profile's reading of a bug check."""

    profile: str
    name: str
    meaning: str
    parameters: List[Dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """JSON form."""
        return {"profile": self.profile, "name": self.name, "meaning": self.meaning, "parameters": self.parameters}


def explain_bugcheck(code: int, parameters: Sequence[int],
                     profiles: Optional[Sequence[Profile]] = None) -> List[BugcheckMatch]:
    """Profiles that define bug check ``code`` and what they say its ``parameters`` mean.

    A hypervisor that reuses a generic code (MANUALLY_INITIATED_CRASH) with its own
    sub-code matches only when the sub-code is one it defines, so triage does not blame
    ksm for every manual crash.
    """
    chosen = list(profiles) if profiles is not None else all_profiles()[0]
    params = list(parameters) + [0] * (4 - len(parameters))
    out: List[BugcheckMatch] = []
    for profile in chosen:
        for check in profile.bugchecks:
            if check.code != code:
                continue
            labels = list(check.parameters)
            meaning = check.name
            if check.subcode_parameter:
                sub = check.subcodes.get(params[check.subcode_parameter - 1])
                if sub is None:
                    continue
                meaning = "%s: %s" % (check.name, sub["name"])
                labels = list(sub.get("parameters", labels))
            labels += [""] * (4 - len(labels))
            out.append(BugcheckMatch(profile.name, check.name, meaning,
                                     [{"index": i + 1, "value": params[i], "meaning": labels[i]} for i in range(4)]))
    return out
