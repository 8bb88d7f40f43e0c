"""The set of known layouts: the built-in files plus the user's ``$VTDBG_HOME/layouts``.

User layouts join the candidates under their own names; a user file may not shadow a
built-in name (it is skipped with a warning).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

from vtdbg.layouts.model import Layout, parse_layout
from vtdbg.lib.errors import LayoutError

_BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
#: alias -> layout name
ALIASES = {"bochs": "bochs_2_7", "bochs_2_8": "bochs_2_8_3_0", "bochs_3_0": "bochs_2_8_3_0",
           "kvm": "kvm_vmcs12", "vmcs12": "kvm_vmcs12", "evmcs": "hyperv_evmcs_v1",
           "hyperv": "hyperv_evmcs_v1", "virtualbox": "virtualbox_vmxvvmcs", "vbox": "virtualbox_vmxvvmcs",
           "xen": "xen_vvmcs", "vmware": "vmware_nested_partial"}
#: user files larger than this are refused (a layout is a few tens of KiB)
MAX_LAYOUT_FILE = 4 << 20


def vtdbg_home() -> str:
    """``$VTDBG_HOME``, else ``%APPDATA%\\vtdbg`` on Windows, else ``~/.config/vtdbg``."""
    home = os.environ.get("VTDBG_HOME")
    if home:
        return home
    if os.name == "nt" and os.environ.get("APPDATA"):
        return os.path.join(os.environ["APPDATA"], "vtdbg")
    return os.path.join(os.path.expanduser("~"), ".config", "vtdbg")


def _load_file(path: str, builtin: bool) -> Layout:
    try:
        if os.path.getsize(path) > MAX_LAYOUT_FILE:
            raise LayoutError("%s: larger than %d MiB" % (path, MAX_LAYOUT_FILE >> 20))
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise LayoutError("%s: cannot read layout: %s" % (path, exc)) from None
    return parse_layout(doc, path, builtin)


_builtin_cache: Optional[Dict[str, Layout]] = None


def builtin_layouts() -> Dict[str, Layout]:
    """The shipped layouts by name (parsed once)."""
    global _builtin_cache
    if _builtin_cache is None:
        found: Dict[str, Layout] = {}
        for name in sorted(os.listdir(_BUILTIN_DIR)):
            if name.endswith(".json"):
                layout = _load_file(os.path.join(_BUILTIN_DIR, name), True)
                found[layout.name] = layout
        _builtin_cache = found
    return _builtin_cache


def user_layouts() -> Tuple[Dict[str, Layout], List[str]]:
    """Layouts from ``$VTDBG_HOME/layouts/*.json`` and warnings for files skipped."""
    folder = os.path.join(vtdbg_home(), "layouts")
    found: Dict[str, Layout] = {}
    warnings: List[str] = []
    if not os.path.isdir(folder):
        return found, warnings
    builtin = builtin_layouts()
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        try:
            layout = _load_file(os.path.join(folder, name), False)
        except LayoutError as exc:
            warnings.append("skipped user layout: %s" % exc)
            continue
        if layout.name in builtin or layout.name in ALIASES:
            warnings.append("skipped user layout %s: the name %s is built in" % (name, layout.name))
            continue
        found[layout.name] = layout
    return found, warnings


def all_layouts() -> Tuple[List[Layout], List[str]]:
    """Built-in then user layouts, and warnings about user files."""
    users, warnings = user_layouts()
    return list(builtin_layouts().values()) + list(users.values()), warnings


def get_layout(name: str) -> Layout:
    """A layout by name or alias (case-insensitive); LayoutError lists the known names."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    layouts, _ = all_layouts()
    for layout in layouts:
        if layout.name.lower() == key:
            return layout
    known = ", ".join(sorted(l.name for l in layouts))
    raise LayoutError("unknown layout %r (known: %s; aliases: %s)" % (name, known, ", ".join(sorted(ALIASES))))


def candidates_for(revision_id: int) -> List[Layout]:
    """Layouts `auto` may try for a region with ``revision_id`` (bits 30:0)."""
    layouts, _ = all_layouts()
    exact = [l for l in layouts if l.auto and revision_id in l.revision_ids]
    extra = [l for l in layouts if l.auto and l.any_revision and l not in exact]
    return exact + extra
