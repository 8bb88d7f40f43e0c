"""Recording and replaying target transactions (JSON Lines, versioned, typed, never eval).

A :class:`RecordingTarget` wraps any backend, forwards every call, counts it (one call =
one debugger transaction, the unit budgets use) and, given a sink, writes one JSON record
per call.  A :class:`ReplayTarget` answers the same calls from such a file, so commands
can be tested against a session recorded once on a real target.

File format, one JSON object per line:

* line 1, the header: ``{"format": "vtdbg-recording", "version": 1, "target": {"kind",
  "description", "capabilities": [names], "cpu_count"}}``
* then ``{"seq": n, "cpu": n, "op": name, "args": {...}, "result": ...}`` or
  ``{..., "error": {"type": "MemoryReadError"|..., "message": str, ...}}``; bytes are
  hex strings under the key ``"hex"`` (``{"hex": "00ff"}``), everything else is JSON.
"""
from __future__ import annotations

import collections
import contextlib
import json
from typing import IO, Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

from vtdbg.lib.errors import (
    CapabilityError,
    DecodeError,
    MemoryReadError,
    MemoryWriteError,
    TargetError,
    VtdbgError,
)
from vtdbg.target.base import (
    Breakpoint,
    Capability,
    Target,
    capabilities_from_names,
    capability_names,
)

FORMAT = "vtdbg-recording"
VERSION = 1
#: largest recording line we accept (a 4 KiB page is ~8 KiB of hex)
MAX_LINE = 16 << 20

_ERROR_TYPES = {
    "MemoryReadError": MemoryReadError,
    "MemoryWriteError": MemoryWriteError,
    "CapabilityError": CapabilityError,
    "TargetError": TargetError,
}


def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"hex": bytes(value).hex()}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"hex"} and isinstance(value["hex"], str):
            try:
                return bytes.fromhex(value["hex"])
            except ValueError:
                raise DecodeError("recording holds invalid hex") from None
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _error_record(exc: VtdbgError) -> Dict[str, Any]:
    record: Dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, MemoryReadError):
        record.update(address=exc.address, size=exc.size, reason=exc.reason)
    return record


def _raise_recorded(error: Dict[str, Any]) -> None:
    kind = error.get("type")
    if kind == "MemoryReadError":
        raise MemoryReadError(int(error.get("address", 0)), int(error.get("size", 0)), str(error.get("reason", "")))
    cls = _ERROR_TYPES.get(str(kind), TargetError)
    raise cls(str(error.get("message", "recorded error")))


class RecordingTarget(Target):
    """Forwards to ``inner``, counting (and optionally logging) every transaction."""

    kind = "recording"

    def __init__(self, inner: Target, sink: Optional[IO[str]] = None) -> None:
        super().__init__("recording of " + inner.description)
        self.inner = inner
        self.capabilities = inner.capabilities
        self.kind = inner.kind
        self.sink = sink
        self.seq = 0
        self.counts: Dict[str, int] = collections.Counter()
        if sink is not None:
            header = {
                "format": FORMAT,
                "version": VERSION,
                "target": {
                    "kind": inner.kind,
                    "description": inner.description,
                    "capabilities": capability_names(inner.capabilities),
                    "cpu_count": inner.cpu_count(),
                },
            }
            sink.write(json.dumps(header) + "\n")

    @property
    def transactions(self) -> int:
        """Total backend calls so far."""
        return sum(self.counts.values())

    def _call(self, op: str, args: Dict[str, Any], fn: Callable[[], Any]) -> Any:
        self.seq += 1
        self.counts[op] += 1
        record: Dict[str, Any] = {"seq": self.seq, "cpu": self.inner.current_cpu(), "op": op, "args": _encode(args)}
        try:
            result = fn()
        except VtdbgError as exc:
            record["error"] = _error_record(exc)
            self._write(record)
            raise
        record["result"] = _encode(result)
        self._write(record)
        return result

    def _write(self, record: Dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.write(json.dumps(record) + "\n")
            self.sink.flush()

    def read_phys(self, pa: int, size: int) -> bytes:
        """Forwarded and recorded."""
        return self._call("read_phys", {"pa": pa, "size": size}, lambda: self.inner.read_phys(pa, size))

    def phys_ranges(self) -> List[Tuple[int, int]]:
        """Forwarded and recorded."""
        return [tuple(r) for r in self._call("phys_ranges", {}, lambda: [list(r) for r in self.inner.phys_ranges()])]  # type: ignore[misc]

    def write_phys(self, pa: int, data: bytes) -> None:
        """Forwarded and recorded."""
        self._call("write_phys", {"pa": pa, "data": data}, lambda: self.inner.write_phys(pa, data))
        self.stop_generation += 1

    def read_msr(self, index: int) -> int:
        """Forwarded and recorded."""
        return int(self._call("read_msr", {"index": index}, lambda: self.inner.read_msr(index)))

    def registers(self) -> Dict[str, int]:
        """Forwarded and recorded."""
        return dict(self._call("registers", {}, self.inner.registers))

    def set_register(self, name: str, value: int) -> None:
        """Forwarded and recorded."""
        self._call("set_register", {"name": name, "value": value}, lambda: self.inner.set_register(name, value))

    def set_registers(self, values: Dict[str, int]) -> None:
        """Forwarded and recorded as one call."""
        self._call("set_registers", {"values": dict(values)}, lambda: self.inner.set_registers(values))

    def cpu_count(self) -> int:
        """Forwarded and recorded."""
        return int(self._call("cpu_count", {}, self.inner.cpu_count))

    def current_cpu(self) -> int:
        """Not a transaction: backends track the current CPU locally."""
        return self.inner.current_cpu()

    @contextlib.contextmanager
    def select_cpu(self, cpu: int) -> Iterator[None]:
        """Forwarded to the inner target's selection; entering and leaving are recorded."""
        if cpu == self.inner.current_cpu():
            yield
            return
        previous = self.inner.current_cpu()
        self.seq += 1
        self.counts["select_cpu"] += 1
        self._write({"seq": self.seq, "cpu": previous, "op": "select_cpu", "args": {"cpu": cpu}, "result": None})
        with self.inner.select_cpu(cpu):
            yield
        self.seq += 1
        self.counts["select_cpu"] += 1
        self._write({"seq": self.seq, "cpu": cpu, "op": "select_cpu", "args": {"cpu": previous}, "result": None})

    def vmx_state(self) -> Dict[str, object]:
        """Forwarded and recorded."""
        return dict(self._call("vmx_state", {}, self.inner.vmx_state))

    @property
    def preferred_layout(self) -> Optional[str]:
        """The wrapped backend's layout hint (not a transaction: known at attach)."""
        value = getattr(self.inner, "preferred_layout", None)
        return value if isinstance(value, str) else None

    def break_at(self, address: int, on_hit: Callable[[int], bool]) -> Breakpoint:
        """Forwarded; the removal is recorded too."""
        handles: List[Breakpoint] = []

        def arm() -> int:
            handles.append(self.inner.break_at(address, on_hit))
            return address  # the record holds the address; the live handle stays here

        self._call("break_at", {"address": address}, arm)
        return Breakpoint(address, lambda: self._call("remove_breakpoint", {"address": address}, handles[0].remove))

    def resume(self) -> None:
        """Forwarded and recorded."""
        self._call("resume", {}, self.inner.resume)
        self.stop_generation += 1

    def step(self) -> None:
        """Forwarded and recorded."""
        self._call("step", {}, self.inner.step)
        self.stop_generation += 1

    def close(self) -> None:
        """Closes the wrapped target too."""
        self.inner.close()


class ReplayTarget(Target):
    """Answers calls from a recording.  Calls are matched by (cpu, op, args); repeated
    identical calls are answered in recorded order.  An unrecorded call is an error, so a
    test notices when a command starts asking for something new."""

    kind = "replay"

    def __init__(self, lines: Iterator[str], description: str = "replay") -> None:
        super().__init__(description)
        self._answers: Dict[Tuple[int, str, str], Deque[Dict[str, Any]]] = collections.defaultdict(collections.deque)
        self._cpu = 0
        self._cpu_count = 1
        header_seen = False
        for number, line in enumerate(lines, 1):
            if len(line) > MAX_LINE:
                raise DecodeError("recording line %d is too long" % number)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise DecodeError("recording line %d is not JSON" % number) from None
            if not isinstance(record, dict):
                raise DecodeError("recording line %d is not an object" % number)
            if not header_seen:
                self._read_header(record)
                header_seen = True
                continue
            op = record.get("op")
            if not isinstance(op, str):
                raise DecodeError("recording line %d has no op" % number)
            key = (int(record.get("cpu", 0)), op, json.dumps(record.get("args", {}), sort_keys=True))
            self._answers[key].append(record)
        if not header_seen:
            raise DecodeError("empty recording")

    @classmethod
    def from_file(cls, path: str) -> ReplayTarget:
        """Load a ``.jsonl`` recording."""
        try:
            with open(path, encoding="utf-8") as handle:
                return cls(iter(handle.readlines()), "replay of %s" % path)
        except OSError as exc:
            raise TargetError("cannot open recording %s: %s" % (path, exc.strerror)) from None

    def _read_header(self, header: Dict[str, Any]) -> None:
        if header.get("format") != FORMAT:
            raise DecodeError("not a vtdbg recording (format %r)" % header.get("format"))
        if header.get("version") != VERSION:
            raise DecodeError("unsupported recording version %r" % header.get("version"))
        target = header.get("target") or {}
        try:
            self.capabilities = capabilities_from_names(list(target.get("capabilities", [])))
        except KeyError as exc:
            raise DecodeError("recording names unknown capability %s" % exc) from None
        self.capabilities &= ~(Capability.RESUME | Capability.STEP | Capability.BREAKPOINTS | Capability.LIVE)
        self.recorded_kind = str(target.get("kind", "unknown"))
        self._cpu_count = int(target.get("cpu_count", 1))

    def _answer(self, op: str, args: Dict[str, Any]) -> Any:
        key = (self._cpu, op, json.dumps(_encode(args), sort_keys=True))
        queue = self._answers.get(key)
        if not queue:
            raise TargetError("replay has no recorded %s(%s) on cpu %d" % (op, json.dumps(_encode(args)), self._cpu))
        record = queue[0] if len(queue) == 1 else queue.popleft()
        if "error" in record:
            _raise_recorded(record["error"])
        return _decode(record.get("result"))

    def read_phys(self, pa: int, size: int) -> bytes:
        """The recorded answer."""
        self.require(Capability.PHYS_READ, "read_phys")
        data = self._answer("read_phys", {"pa": pa, "size": size})
        if not isinstance(data, bytes) or len(data) != size:
            raise DecodeError("recorded read_phys answer has the wrong size")
        return data

    def phys_ranges(self) -> List[Tuple[int, int]]:
        """The recorded answer, or [] if none was recorded."""
        try:
            return [(int(a), int(b)) for a, b in self._answer("phys_ranges", {})]
        except TargetError:
            return []

    def read_msr(self, index: int) -> int:
        """The recorded answer."""
        self.require(Capability.MSR_READ, "read_msr")
        return int(self._answer("read_msr", {"index": index}))

    def registers(self) -> Dict[str, int]:
        """The recorded answer."""
        self.require(Capability.REGS, "registers")
        return {str(k): int(v) for k, v in dict(self._answer("registers", {})).items()}

    def cpu_count(self) -> int:
        """From the header."""
        return self._cpu_count

    def current_cpu(self) -> int:
        """The replayed CPU selection."""
        return self._cpu

    @contextlib.contextmanager
    def select_cpu(self, cpu: int) -> Iterator[None]:
        """Switch the replayed CPU (no transaction needed)."""
        if not 0 <= cpu < self._cpu_count:
            raise TargetError("CPU %d does not exist (recording has %d)" % (cpu, self._cpu_count))
        previous, self._cpu = self._cpu, cpu
        try:
            yield
        finally:
            self._cpu = previous


def _replay_from_path(path: str) -> ReplayTarget:
    """Factory for ``replay:FILE`` URIs."""
    return ReplayTarget.from_file(path)
