"""Recognising a memory file's format from its first bytes (``dump:FILE`` and bare paths).

Formats with their own reader are dispatched here; anything unrecognised is treated as a
raw physical image (file offset = physical address), and the target says so.
"""
from __future__ import annotations

import os

from vtdbg.lib.errors import TargetError
from vtdbg.target.base import Target
from vtdbg.target.image import ImageTarget


def sniff(path: str) -> str:
    """A short format name for ``path``: "gzip", "raw" (more as readers are added)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise TargetError("cannot open %s: %s" % (path, exc.strerror)) from None
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    return "raw"


def open_dump(path: str) -> Target:
    """Open a memory file with the reader its format needs."""
    if not os.path.isfile(path):
        raise TargetError("no such file: %s" % path)
    sniff(path)
    return ImageTarget(path)
