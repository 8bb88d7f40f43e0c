"""Exceptions shared by every layer.

A :class:`VtdbgError` is a user-facing failure: the front end prints its message on one
line and exits with status 2 (``--debug`` adds the traceback).  Anything else escaping a
command is a bug in vtdbg and is reported as such.
"""
from __future__ import annotations


class VtdbgError(Exception):
    """A clean, user-facing error: one line, exit status 2."""


class UsageError(VtdbgError):
    """The command line or an argument value is wrong."""


class TargetError(VtdbgError):
    """The target could not be opened or does not support an operation."""


class CapabilityError(TargetError):
    """The target lacks a capability a command needs (e.g. MSR reads on a dump)."""


class MemoryReadError(TargetError):
    """A physical or virtual read could not be satisfied completely."""

    def __init__(self, address: int, size: int, reason: str = "not readable") -> None:
        self.address = address
        self.size = size
        self.reason = reason
        super().__init__("cannot read %d bytes at 0x%x: %s" % (size, address, reason))


class MemoryWriteError(TargetError):
    """A physical write could not be done."""


class DecodeError(VtdbgError):
    """Data (a page, a file, a layout) is malformed or implausible."""


class LayoutError(VtdbgError):
    """A VMCS layout is unknown, malformed, or no candidate fits a region."""
