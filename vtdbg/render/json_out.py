"""Result -> JSON, following shared/DESIGN.md: integers stay numbers, warnings are also
put into a ``"warnings"`` key of object results."""
from __future__ import annotations

import json
from typing import Any

from vtdbg.commands.result import Link, Result


def _plain(value: Any) -> Any:
    if isinstance(value, Link):
        return value.target
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def render_json(result: Result) -> str:
    """The JSON text of ``result.data`` (indented, ASCII-safe for WinDbg's console)."""
    data = _plain(result.data)
    if isinstance(data, dict) and result.warnings:
        merged = list(data.get("warnings") or [])
        merged.extend(w for w in result.warnings if w not in merged)
        data["warnings"] = merged
    return json.dumps(data, indent=1, ensure_ascii=True)
