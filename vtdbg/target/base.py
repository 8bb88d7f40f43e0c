"""The Target protocol: everything core code may ask of a debugger, dump or image.

The protocol is deliberately narrow and typed with ints and bytes, so that every backend
(raw image, dump readers, Bochs, pykd, recorded replays) can implement it and be checked
by one contract test suite (tests/contract).  One method call is one *debugger
transaction*; budgets in the issues count these, so callers read whole regions at once.

Backends subclass :class:`Target` and override what their capabilities promise; the
defaults raise :class:`CapabilityError`, so a dump honestly refuses to resume.
"""
from __future__ import annotations

import contextlib
import enum
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from vtdbg.lib.errors import CapabilityError, MemoryReadError


class Capability(enum.Flag):
    """What a backend can do.  Commands declare what they need."""

    NONE = 0
    PHYS_READ = enum.auto()
    VIRT_READ = enum.auto()
    MSR_READ = enum.auto()
    REGS = enum.auto()
    CPU_SELECT = enum.auto()
    BREAKPOINTS = enum.auto()
    RESUME = enum.auto()
    STEP = enum.auto()
    WRITE = enum.auto()
    LIVE = enum.auto()  # a running machine (state may change between stops)
    SYMBOLS = enum.auto()  # module list, symbol addresses and type layouts (pykd)


def capability_names(caps: Capability) -> List[str]:
    """Names of the set flags, in declaration order (for JSON and messages)."""
    return [c.name for c in Capability if c.name and c is not Capability.NONE and c in caps]


def capabilities_from_names(names: List[str]) -> Capability:
    """Inverse of :func:`capability_names` (unknown names raise KeyError)."""
    caps = Capability.NONE
    for name in names:
        caps |= Capability[name]
    return caps


class Breakpoint:
    """A handle for a breakpoint set through :meth:`Target.break_at`."""

    def __init__(self, address: int, remove: Callable[[], None]) -> None:
        self.address = address
        self._remove = remove
        self.removed = False

    def remove(self) -> None:
        """Remove the breakpoint; calling it twice is harmless."""
        if not self.removed:
            self.removed = True
            self._remove()


class Target:
    """Base class of every backend.  See the module docstring."""

    #: short backend kind: "image", "dump", "bochs", "kd", "replay", ...
    kind: str = "abstract"
    capabilities: Capability = Capability.NONE

    def __init__(self, description: str = "") -> None:
        self.description = description or self.kind
        #: bumped on every stop or write; caches key on it
        self.stop_generation = 0

    # -- identity -------------------------------------------------------------------------
    def has(self, caps: Capability) -> bool:
        """True when every flag of ``caps`` is supported."""
        return (self.capabilities & caps) == caps

    def require(self, caps: Capability, what: str) -> None:
        """Raise :class:`CapabilityError` naming ``what`` unless ``caps`` are supported."""
        missing = [n for n in capability_names(caps) if Capability[n] not in self.capabilities]
        if missing:
            article = "an" if self.kind[:1] in "aeiou" else "a"
            raise CapabilityError(
                "%s needs %s, which %s %s target does not provide"
                % (what, "+".join(m.lower() for m in missing), article, self.kind)
            )

    # -- memory ---------------------------------------------------------------------------
    def read_phys(self, pa: int, size: int) -> bytes:
        """Exactly ``size`` bytes of physical memory at ``pa``, or :class:`MemoryReadError`."""
        raise CapabilityError("%s target cannot read physical memory" % self.kind)

    def phys_ranges(self) -> List[Tuple[int, int]]:
        """Known-present physical ranges as (start, length), for scanning; [] if unknown."""
        return []

    def read_virt(self, va: int, size: int, cr3: Optional[int] = None) -> bytes:
        """Read linear memory through ``cr3`` (default: the current CPU's CR3).

        The default implementation walks the 4-level page tables with physical reads
        (see :mod:`vtdbg.target.paging`), so every backend with PHYS_READ gets it.
        """
        from vtdbg.target.paging import read_linear

        if cr3 is None:
            if not self.has(Capability.REGS):
                raise CapabilityError("%s target has no CR3 to translate with; pass one" % self.kind)
            cr3 = self.registers()["cr3"]
        return read_linear(self.read_phys, cr3, va, size)

    def write_phys(self, pa: int, data: bytes) -> None:
        """Write ``data`` at physical ``pa`` (targets with WRITE only)."""
        raise CapabilityError("%s target is read-only" % self.kind)

    # -- CPU state ------------------------------------------------------------------------
    def read_msr(self, index: int) -> int:
        """Value of MSR ``index`` on the current CPU."""
        raise CapabilityError("%s target cannot read MSRs" % self.kind)

    def registers(self) -> Dict[str, int]:
        """General, control and segment registers of the current CPU (lower-case names)."""
        raise CapabilityError("%s target has no registers" % self.kind)

    def set_register(self, name: str, value: int) -> None:
        """Change one register of the current CPU."""
        raise CapabilityError("%s target cannot change registers" % self.kind)

    def set_registers(self, values: Dict[str, int]) -> None:
        """Change several registers of the current CPU; backends that can batch the change
        into fewer transactions override this (one ``set_register`` per entry otherwise)."""
        for name, value in values.items():
            self.set_register(name, value)

    def cpu_count(self) -> int:
        """Number of logical CPUs the target knows (1 for images without CPU context)."""
        return 1

    def current_cpu(self) -> int:
        """Index of the CPU that register/MSR calls address."""
        return 0

    @contextlib.contextmanager
    def select_cpu(self, cpu: int) -> Iterator[None]:
        """Make ``cpu`` current for the block, then restore the previous CPU on every path."""
        if cpu == self.current_cpu():
            yield
            return
        if not self.has(Capability.CPU_SELECT):
            raise CapabilityError("%s target cannot switch to CPU %d" % (self.kind, cpu))
        previous = self.current_cpu()
        self._switch_cpu(cpu)
        try:
            yield
        finally:
            self._switch_cpu(previous)

    def _switch_cpu(self, cpu: int) -> None:
        raise CapabilityError("%s target cannot switch CPUs" % self.kind)

    # -- symbols (debugger sessions with symbol files) --------------------------------------
    def modules(self) -> List[Tuple[str, int, int]]:
        """Loaded modules as (name, base, size)."""
        raise CapabilityError("%s target has no module list" % self.kind)

    def symbol(self, name: str) -> Optional[int]:
        """Address of ``module!symbol``, or None when the symbol is unknown."""
        raise CapabilityError("%s target has no symbols" % self.kind)

    def field_offset(self, type_name: str, field_name: str) -> Optional[int]:
        """Offset of ``field_name`` in ``module!type_name``, or None when unknown."""
        raise CapabilityError("%s target has no type information" % self.kind)

    def type_size(self, type_name: str) -> Optional[int]:
        """``sizeof(module!type_name)``, or None when unknown."""
        raise CapabilityError("%s target has no type information" % self.kind)

    def symbol_at(self, address: int) -> Optional[str]:
        """``module!symbol+disp`` naming ``address``, or None when no module covers it."""
        raise CapabilityError("%s target has no symbols" % self.kind)

    # -- VMX state the backend can see directly --------------------------------------------
    def vmx_state(self) -> Dict[str, object]:
        """What the backend itself knows of the current CPU's VMX state (Bochs: vmcsptr,
        vmxonptr, in_vmx, in_vmx_guest); CapabilityError where it knows nothing."""
        raise CapabilityError("%s target cannot report VMX state directly" % self.kind)

    # -- execution control ----------------------------------------------------------------
    def break_at(self, address: int, on_hit: Callable[[int], bool]) -> Breakpoint:
        """Set a breakpoint; ``on_hit(cpu)`` returns True to stop there."""
        raise CapabilityError("%s target cannot set breakpoints" % self.kind)

    def resume(self) -> None:
        """Run until the next stop."""
        raise CapabilityError("%s target cannot run" % self.kind)

    def step(self) -> None:
        """Execute one instruction on the current CPU."""
        raise CapabilityError("%s target cannot single-step" % self.kind)

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Release files, processes and connections; idempotent."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_exact(target: Target, pa: int, size: int) -> bytes:
    """``target.read_phys`` with a length check (backends must not return short reads)."""
    data = target.read_phys(pa, size)
    if len(data) != size:
        raise MemoryReadError(pa, size, "backend returned %d bytes" % len(data))
    return data
