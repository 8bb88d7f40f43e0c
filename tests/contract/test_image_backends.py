"""The raw-image, gzip-image, recording and replay backends pass the target contract."""
from __future__ import annotations

import gzip
import io
import json
import random

import pytest

from tests.contract.contract import ContractSetup, TargetContract
from vtdbg.lib.errors import DecodeError, MemoryReadError, TargetError
from vtdbg.target.image import ImageTarget
from vtdbg.target.open import open_target
from vtdbg.target.record import RecordingTarget, ReplayTarget

SIZE = 0x10000
_RNG = random.Random(7)
MEMORY = bytes(_RNG.getrandbits(8) for _ in range(SIZE))
KNOWN = {0: MEMORY[:16], 0x1000: MEMORY[0x1000:0x2000], SIZE - 8: MEMORY[-8:], 0x123: MEMORY[0x123:0x124]}
UNREADABLE = (SIZE - 1, 2)


class TestRawImage(TargetContract):
    def make_target(self, tmp_path):
        path = tmp_path / "mem.img"
        path.write_bytes(MEMORY)
        return ContractSetup(open_target("image:" + str(path)), KNOWN, UNREADABLE)


class TestGzipImage(TargetContract):
    def make_target(self, tmp_path):
        path = tmp_path / "mem.img.gz"
        path.write_bytes(gzip.compress(MEMORY))
        return ContractSetup(open_target(str(path)), KNOWN, UNREADABLE)


class TestRecording(TargetContract):
    def make_target(self, tmp_path):
        return ContractSetup(RecordingTarget(ImageTarget.from_bytes(MEMORY), io.StringIO()), KNOWN, UNREADABLE)


class TestReplay(TargetContract):
    def make_target(self, tmp_path):
        sink = io.StringIO()
        recorder = RecordingTarget(ImageTarget.from_bytes(MEMORY), sink)
        for pa, data in KNOWN.items():
            recorder.read_phys(pa, len(data))
            recorder.read_phys(pa, 0)
        with pytest.raises(MemoryReadError):
            recorder.read_phys(*UNREADABLE)
        recorder.phys_ranges()
        path = tmp_path / "session.jsonl"
        path.write_text(sink.getvalue())
        return ContractSetup(open_target(str(path)), KNOWN, UNREADABLE)


def test_recording_counts_transactions():
    recorder = RecordingTarget(ImageTarget.from_bytes(MEMORY))
    recorder.read_phys(0, 4096)
    recorder.read_phys(0x1000, 8)
    assert recorder.transactions == 2 and recorder.counts["read_phys"] == 2


def test_replay_refuses_unrecorded_calls_and_bad_files(tmp_path):
    sink = io.StringIO()
    RecordingTarget(ImageTarget.from_bytes(MEMORY), sink).read_phys(0, 4)
    replay = ReplayTarget(iter(sink.getvalue().splitlines()))
    with pytest.raises(TargetError, match="no recorded read_phys"):
        replay.read_phys(4, 4)
    with pytest.raises(DecodeError, match="not a vtdbg recording"):
        ReplayTarget(iter([json.dumps({"format": "other"})]))
    with pytest.raises(DecodeError, match="not JSON"):
        ReplayTarget(iter([sink.getvalue().splitlines()[0], "{broken"]))
    with pytest.raises(DecodeError, match="empty"):
        ReplayTarget(iter([]))
    bad_hex = sink.getvalue().splitlines()[0] + "\n" + json.dumps(
        {"seq": 1, "cpu": 0, "op": "read_phys", "args": {"pa": 0, "size": 1}, "result": {"hex": "zz"}})
    with pytest.raises(DecodeError, match="hex"):
        ReplayTarget(iter(bad_hex.splitlines())).read_phys(0, 1)


def test_gzip_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.img.gz"
    path.write_bytes(gzip.compress(b"\0" * (4 << 20)))
    image = ImageTarget(str(path), inflate_limit=1 << 20)
    assert image.read_phys(0, 16) == bytes(16)  # the start is served before the cap is reached
    with pytest.raises(TargetError, match="inflates to more than"):
        image.phys_ranges()


def test_gzip_inflates_only_what_is_read(tmp_path):
    path = tmp_path / "big.img.gz"
    path.write_bytes(gzip.compress(MEMORY * 64))
    image = ImageTarget(str(path))
    assert image.read_phys(0x100, 16) == MEMORY[0x100:0x110]
    assert len(image._gzip.data) < len(MEMORY) * 64
    assert image.phys_ranges() == [(0, len(MEMORY) * 64)]


def test_concatenated_gzip_members_are_one_image(tmp_path):
    path = tmp_path / "two.img.gz"
    path.write_bytes(gzip.compress(MEMORY[:0x8000]) + gzip.compress(MEMORY[0x8000:]))
    assert ImageTarget(str(path)).read_phys(0x7FF8, 16) == MEMORY[0x7FF8:0x8008]


def test_truncated_gzip_is_a_clean_error(tmp_path):
    path = tmp_path / "cut.img.gz"
    whole = gzip.compress(bytes(range(256)) * 256)
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(TargetError, match="cannot read gzip"):
        ImageTarget(str(path)).read_phys(0, 0x10000)


def test_missing_file_is_a_clean_error(tmp_path):
    with pytest.raises(TargetError, match="no such"):
        open_target(str(tmp_path / "nothing.img"))


def test_recording_with_a_sink_records_breakpoints_by_address():
    from vtdbg.target.base import Breakpoint, Capability

    class Armed(ImageTarget):
        capabilities = ImageTarget.capabilities | Capability.BREAKPOINTS

        def break_at(self, address, on_hit):
            self.armed = address
            return Breakpoint(address, lambda: setattr(self, "armed", None))

    inner = Armed.from_bytes(MEMORY)
    sink = io.StringIO()
    handle = RecordingTarget(inner, sink).break_at(0x1000, lambda cpu: True)
    assert inner.armed == 0x1000
    handle.remove()
    assert inner.armed is None
    records = [json.loads(line) for line in sink.getvalue().splitlines()[1:]]
    assert [(r["op"], r["result"]) for r in records] == [("break_at", 0x1000), ("remove_breakpoint", None)]
