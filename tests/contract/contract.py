"""The contract every Target backend passes (shared/DESIGN.md, "Tests" 2).

A backend's test module subclasses :class:`TargetContract` and implements
``make_target(tmp_path)`` returning a :class:`ContractSetup`: the target, some physical
ranges whose bytes are known, and an address range known to be unreadable.  pytest then
runs every ``test_*`` method below against it.  Live backends set ``live = True`` and get
the CPU/register/breakpoint checks too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import pytest

from vtdbg.lib.errors import CapabilityError, MemoryReadError, TargetError
from vtdbg.target.base import Capability, Target


@dataclass
class ContractSetup:
    """What a backend hands the contract."""

    target: Target
    known: Dict[int, bytes]  # physical address -> the bytes that must be read there
    unreadable: Optional[Tuple[int, int]] = None  # (pa, size) that must raise MemoryReadError
    extra: Dict[str, object] = field(default_factory=dict)


class TargetContract:
    """Subclass in a test module and implement :meth:`make_target`."""

    def make_target(self, tmp_path) -> ContractSetup:  # pragma: no cover - abstract
        raise NotImplementedError

    @pytest.fixture
    def setup(self, tmp_path):
        made = self.make_target(tmp_path)
        yield made
        made.target.close()

    def test_reads_return_exactly_the_known_bytes(self, setup):
        assert setup.target.has(Capability.PHYS_READ)
        for pa, data in setup.known.items():
            assert setup.target.read_phys(pa, len(data)) == data
            assert setup.target.read_phys(pa, 0) == b""

    def test_unreadable_memory_raises_memory_read_error(self, setup):
        if setup.unreadable is None:
            pytest.skip("backend names no unreadable range")
        pa, size = setup.unreadable
        with pytest.raises(MemoryReadError):
            setup.target.read_phys(pa, size)

    def test_ranges_are_ordered_and_cover_the_known_bytes(self, setup):
        ranges = setup.target.phys_ranges()
        assert ranges == sorted(ranges)
        if ranges:
            for pa, data in setup.known.items():
                assert any(s <= pa and pa + len(data) <= s + n for s, n in ranges), hex(pa)

    def test_missing_capabilities_raise_capability_error(self, setup):
        target = setup.target
        calls = {Capability.MSR_READ: lambda: target.read_msr(0x480),
                 Capability.REGS: target.registers,
                 Capability.RESUME: target.resume,
                 Capability.STEP: target.step,
                 Capability.WRITE: lambda: target.write_phys(0, b"\0"),
                 Capability.BREAKPOINTS: lambda: target.break_at(0x1000, lambda cpu: True)}
        for cap, call in calls.items():
            if not target.has(cap):
                with pytest.raises(CapabilityError):
                    call()

    def test_cpu_selection_restores_and_refuses_missing_cpus(self, setup):
        target = setup.target
        before = target.current_cpu()
        for cpu in range(target.cpu_count()):
            if cpu != before and not target.has(Capability.CPU_SELECT):
                continue
            with target.select_cpu(cpu):
                assert target.current_cpu() == cpu
            assert target.current_cpu() == before
        with pytest.raises(TargetError):
            with target.select_cpu(target.cpu_count()):
                pass
        assert target.current_cpu() == before

    def test_registers_are_lower_case_ints(self, setup):
        if not setup.target.has(Capability.REGS):
            pytest.skip("no registers")
        regs = setup.target.registers()
        assert "rip" in regs and "cr3" in regs
        assert all(k == k.lower() and isinstance(v, int) for k, v in regs.items())

    def test_writes_are_read_back_and_restorable(self, setup):
        target = setup.target
        if not target.has(Capability.WRITE):
            pytest.skip("read-only backend")
        pa, data = next(iter(setup.known.items()))
        generation = target.stop_generation
        target.write_phys(pa, b"\xa5")
        assert target.read_phys(pa, 1) == b"\xa5"
        assert target.stop_generation > generation
        target.write_phys(pa, data[:1])
        assert target.read_phys(pa, len(data)) == data

    def test_close_is_idempotent(self, setup):
        setup.target.close()
        setup.target.close()
