"""The contract every Target backend passes (shared/DESIGN.md, "Tests" 2).

Each backend is built over the same 64 KiB of reference memory; backends added by later
work (dump readers, Bochs, pykd stand-in) join the BACKENDS list.
"""
from __future__ import annotations

import gzip
import io
import random

import pytest

from vtdbg.lib.errors import CapabilityError, MemoryReadError, TargetError
from vtdbg.target.base import Capability, Target
from vtdbg.target.image import ImageTarget
from vtdbg.target.open import open_target
from vtdbg.target.record import RecordingTarget, ReplayTarget

SIZE = 0x10000
MEMORY = bytes(random.Random(7).getrandbits(8) for _ in range(SIZE))
#: (pa, size) pairs the contract reads; replay backends are recorded over exactly these
READS = [(0, 16), (0x1000, 0x1000), (SIZE - 8, 8), (0x123, 1), (0, SIZE), (SIZE - 1, 2), (SIZE, 1), (0x10, 0)]


def _image_file(tmp_path):
    path = tmp_path / "mem.img"
    path.write_bytes(MEMORY)
    return ImageTarget(str(path))


def _gzip_file(tmp_path):
    path = tmp_path / "mem.img.gz"
    path.write_bytes(gzip.compress(MEMORY))
    return open_target(str(path))


def _in_memory(tmp_path):
    return ImageTarget.from_bytes(MEMORY)


def _recording(tmp_path):
    return RecordingTarget(ImageTarget.from_bytes(MEMORY), io.StringIO())


def _replay(tmp_path):
    sink = io.StringIO()
    recorder = RecordingTarget(ImageTarget.from_bytes(MEMORY), sink)
    for pa, size in READS:
        try:
            recorder.read_phys(pa, size)
        except MemoryReadError:
            pass
    recorder.phys_ranges()
    path = tmp_path / "session.jsonl"
    path.write_text(sink.getvalue())
    return open_target("replay:" + str(path))


BACKENDS = {"image": _image_file, "gzip": _gzip_file, "bytes": _in_memory, "recording": _recording,
            "replay": _replay}


@pytest.fixture(params=sorted(BACKENDS))
def target(request, tmp_path):
    backend: Target = BACKENDS[request.param](tmp_path)
    yield backend
    backend.close()


def test_reads_return_exactly_the_bytes(target):
    assert target.has(Capability.PHYS_READ)
    for pa, size in READS:
        if pa + size <= SIZE:
            assert target.read_phys(pa, size) == MEMORY[pa:pa + size]


def test_reads_past_the_end_raise_memory_read_error(target):
    for pa, size in READS:
        if pa + size > SIZE:
            with pytest.raises(MemoryReadError):
                target.read_phys(pa, size)


def test_ranges_lie_inside_memory(target):
    ranges = target.phys_ranges()
    assert ranges == [(0, SIZE)]


def test_missing_capabilities_raise_capability_error(target):
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


def test_cpu_selection_restores_and_refuses_missing_cpus(target):
    before = target.current_cpu()
    with target.select_cpu(before):
        assert target.current_cpu() == before
    assert target.current_cpu() == before
    with pytest.raises(TargetError):
        with target.select_cpu(target.cpu_count()):
            pass
    assert target.current_cpu() == before


def test_require_names_the_missing_capability(target):
    with pytest.raises(CapabilityError, match="msr_read"):
        target.require(Capability.MSR_READ | Capability.PHYS_READ, "`caps`")


def test_close_is_idempotent(target):
    target.close()
    target.close()
