"""Loading the arch data tables (JSON files under vtdbg/arch/data).

The tables are the single source of SDM facts.  Numbers in the files may be JSON
integers or "0x..." strings (hex keeps encodings readable); :func:`as_int` turns
either into an int.  Files are read lazily and once per process.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Union

_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def data_path(name: str) -> str:
    """Absolute path of a data file shipped in vtdbg/arch/data."""
    return os.path.join(_DATA_DIR, name)


@functools.lru_cache(maxsize=None)
def load_table(name: str) -> Any:
    """Parse ``vtdbg/arch/data/<name>`` once and cache it (treat the result as read-only)."""
    with open(data_path(name), encoding="utf-8") as handle:
        return json.load(handle)


def as_int(value: Union[int, str]) -> int:
    """An integer from a table cell: an int, or a "0x..."/decimal string."""
    if isinstance(value, bool):
        raise TypeError("boolean where an integer was expected")
    if isinstance(value, int):
        return value
    text = value.strip().lower().replace("`", "").replace("_", "")
    return int(text, 16) if text.startswith("0x") else int(text, 10)
