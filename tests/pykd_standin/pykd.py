"""A Linux stand-in for pykd 0.3.4.15, for tests only (never shipped, never installed).

It mirrors the real module where vtdbg touches it (shared/reference/pykd-api.md, section 10
lists what a fake must reproduce): the same names, argument names and defaults,
positional-only arguments where pykd registers none, lists instead of bytes, the exception
tree, the int enums, owning/weak breakpoints, CPUs as kernel "threads".  Behind it sits a
:class:`Simulator`: physical memory built from an image, page tables, per-CPU registers,
MSRs and VMCS state, symbols, and a queue of execution events that breakpoints can catch.

Tests put this folder on ``sys.path`` (or in ``sys.modules["pykd"]``) and call
:func:`_install`; a subprocess gets its simulator from the JSON spec named by the
``VTDBG_STANDIN_SPEC`` environment variable.  Names starting with ``_`` are test hooks
that the real pykd does not have; vtdbg must never use them.
"""
from __future__ import annotations

import copy
import enum
import functools
import gzip
import json
import os
import sys
import traceback
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

__version__ = "0.3.4.15"
version = __version__


# -- exceptions (pykd-api.md section 9) ---------------------------------------------------
class DbgException(Exception):
    """Pykd base exception class"""


class MemoryException(DbgException):
    """A failed memory access; the text is the only carrier of the address."""


class SymbolException(DbgException):
    """Unknown symbol."""


class TypeException(SymbolException):
    """Unknown type or field."""


class CallException(DbgException):
    """Never raised by 0.3.4.15 (engine errors arrive as DbgException)."""


class CPUException(DbgException):
    """Never raised by 0.3.4.15 (register/MSR failures arrive as DbgException)."""


# -- enums (int subclasses with pykd's member names) --------------------------------------
class executionStatus(enum.IntEnum):
    NoChange = 0
    Go = 1
    Break = 2
    NoDebuggee = 3


class eventResult(enum.IntEnum):
    Proceed = 0
    NoChange = 1
    Break = 2


class breakpointAccess(enum.IntEnum):
    Read = 1
    Write = 2
    Execute = 4


class dumpType(enum.IntEnum):
    Small = 1024
    Default = 1025
    Full = 1026
    Image = 1027
    KernelSmall = 1024
    Kernel = 1025
    KernelFull = 1026


class CPUType(enum.IntEnum):
    I386 = 0x14C
    AMD64 = 0x8664
    ARM64 = 0xAA64
    ARM = 0x1C4


class outputFlag(enum.IntEnum):
    Normal = 1
    Error = 2
    Warning = 4
    Verbose = 8
    Prompt = 0x10
    PromptRegister = 0x20
    ExtensionWarning = 0x40
    Debuggee = 0x80
    DebuggeeImpl = 0x100
    Symbols = 0x200


# -- the simulated target -----------------------------------------------------------------
_ADDR_MASK = 0x000FFFFFFFFFF000
_U64 = 1 << 64


def _int(value: Any) -> int:
    return value if isinstance(value, int) else int(str(value), 0)


class _Cpu:
    """One logical processor: registers, MSRs, and its VMX state."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.regs: Dict[str, int] = {k.lower(): _int(v) for k, v in (spec.get("regs") or {}).items()}
        for name in ("rip", "rsp", "efl", "cr0", "cr3", "cr4"):
            self.regs.setdefault(name, 0)
        self.msrs: Dict[int, int] = {_int(k): _int(v) for k, v in (spec.get("msrs") or {}).items()}
        vmcs = spec.get("vmcs") or {}
        #: the current-VMCS pointer (VMPTRST) and what VMREAD would return for it: real
        #: processors keep the current VMCS on-die, so this can differ from the memory page
        self.vmcs_current: Optional[int] = _int(vmcs["current"]) if vmcs.get("current") is not None else None
        self.vmread: Dict[int, int] = {_int(k): _int(v) for k, v in (vmcs.get("vmread") or {}).items()}


class Simulator:
    """Everything the stand-in answers from.  Build with :meth:`from_spec`."""

    def __init__(self) -> None:
        self.mode = "live"  # "live" | "dump" | "user"
        self.phys = bytearray()
        self.holes: List[Tuple[int, int]] = []
        self.cpus: List[_Cpu] = []
        self.thread_ids: List[int] = []
        self.current = 0
        self.symbols: Dict[str, int] = {}
        self.modules: List[Tuple[str, int, int]] = []
        self.types: Dict[str, Dict[str, Any]] = {}
        self.events: List[Tuple[int, int]] = []
        self.breakpoints: Dict[int, Dict[str, Any]] = {}
        self.next_bp_id = 0
        self.calls: List[str] = []
        self.faults: Dict[str, List[List[Any]]] = {}
        self.in_callback = False
        self.attach_options: Optional[str] = None
        self.detached = False
        self.writes = 0
        self.msr_reads: List[int] = []

    # construction ------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> Simulator:
        """A simulator from a dict (JSON-able: bytes may also be given as hex strings)."""
        sim = cls()
        sim.mode = spec.get("mode", "live")
        image = spec.get("image")
        if isinstance(image, (bytes, bytearray)):
            sim.phys = bytearray(image)
        elif image:
            with open(image, "rb") as handle:
                raw = handle.read()
            sim.phys = bytearray(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        size = spec.get("size")
        if size is not None and _int(size) > len(sim.phys):
            sim.phys.extend(bytes(_int(size) - len(sim.phys)))
        for chunk in spec.get("memory") or []:
            pa = _int(chunk["pa"])
            data = chunk["data"] if "data" in chunk else bytes.fromhex(chunk["hex"])
            if pa + len(data) > len(sim.phys):
                sim.phys.extend(bytes(pa + len(data) - len(sim.phys)))
            sim.phys[pa:pa + len(data)] = data
        sim.holes = [(_int(a), _int(b)) for a, b in spec.get("holes") or []]
        sim.cpus = [_Cpu(c) for c in spec.get("cpus") or [{}]]
        sim.thread_ids = [_int(i) for i in spec.get("thread_ids") or range(len(sim.cpus))]
        sim.current = _int(spec.get("current", 0))
        sim.symbols = {k: _int(v) for k, v in (spec.get("symbols") or {}).items()}
        sim.modules = [(m["name"], _int(m["base"]), _int(m["size"])) for m in spec.get("modules") or []]
        sim.types = {k: dict(v) for k, v in (spec.get("types") or {}).items()}
        sim.events = [(_int(c), _int(a)) for c, a in spec.get("events") or []]
        return sim

    @classmethod
    def from_json(cls, path: str) -> Simulator:
        """A simulator from a JSON spec file (subprocess tests)."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_spec(json.load(handle))

    # test hooks ----------------------------------------------------------------------------
    def inject(self, function: str, exc: BaseException, after: int = 0) -> None:
        """Make the (after+1)-th next call of ``function`` raise ``exc``."""
        self.faults.setdefault(function, []).append([after, exc])

    def snapshot(self) -> Dict[str, Any]:
        """State a one-shot command must leave as it found it."""
        return {"current": self.current, "regs": [copy.deepcopy(c.regs) for c in self.cpus],
                "msrs": [dict(c.msrs) for c in self.cpus], "breakpoints": sorted(
                    b["offset"] for b in self.breakpoints.values()), "writes": self.writes}

    def vmread(self, cpu: int, encoding: int) -> int:
        """What VMREAD of the current VMCS returns on ``cpu`` (the on-die copy)."""
        return self.cpus[cpu].vmread[encoding]

    # memory ------------------------------------------------------------------------------
    def phys_ok(self, pa: int, size: int) -> bool:
        if pa < 0 or pa + size > len(self.phys):
            return False
        return not any(pa < h + n and h < pa + size for h, n in self.holes)

    def read_phys(self, pa: int, size: int) -> bytes:
        if not self.phys_ok(pa, size):
            raise MemoryException("Memory exception at 0x%x target physical address" % pa)
        return bytes(self.phys[pa:pa + size])

    def _qword(self, pa: int) -> Optional[int]:
        if not self.phys_ok(pa, 8):
            return None
        return int.from_bytes(self.phys[pa:pa + 8], "little")

    def translate(self, va: int) -> Optional[int]:
        """4-level walk through the current CPU's CR3 (the engine's process context)."""
        top = va >> 47
        if top not in (0, 0x1FFFF):
            return None
        table = self.cpus[self.current].regs.get("cr3", 0) & _ADDR_MASK
        for level in (4, 3, 2, 1):
            shift = 12 + 9 * (level - 1)
            entry = self._qword(table + ((va >> shift) & 0x1FF) * 8)
            if entry is None or not entry & 1:
                return None
            if level == 1 or (level in (2, 3) and entry & 0x80):
                size = 1 << shift
                return (entry & _ADDR_MASK & ~(size - 1)) | (va & (size - 1))
            table = entry & _ADDR_MASK
        return None  # pragma: no cover

    def read_virt(self, va: int, size: int) -> bytes:
        out = bytearray()
        cursor = va
        while cursor < va + size:
            chunk = min(va + size - cursor, 0x1000 - (cursor & 0xFFF))
            pa = self.translate(cursor)
            if pa is None or not self.phys_ok(pa, chunk):
                # the whole range fails, for its start address (section 1)
                raise MemoryException("Memory exception at 0x%x target virtual address" % va)
            out += self.phys[pa:pa + chunk]
            cursor += chunk
        return bytes(out)

    # execution ---------------------------------------------------------------------------
    def run(self) -> executionStatus:
        """``go()``: deliver queued events until a breakpoint handler stops the target."""
        while self.events:
            cpu, address = self.events.pop(0)
            hits = [b for b in self.breakpoints.values() if b["offset"] == address]
            if not hits:
                continue
            self.current = cpu  # the event thread (CPU) becomes current
            self.cpus[cpu].regs["rip"] = address
            result = eventResult.NoChange
            for record in list(hits):
                owner = record["owner"]() if record["owner"] is not None else None
                outcome = _call_handler(self, owner) if owner is not None else eventResult.NoChange
                if outcome != eventResult.NoChange:
                    result = outcome
            if result == eventResult.Proceed:
                continue
            return executionStatus.Break
        # nothing left to happen: model the user breaking in so go() returns
        return executionStatus.Break


def _map_result(value: Any) -> eventResult:
    """pykd's mapping of a handler's return value (section 4)."""
    if value is None or value is False:
        return eventResult.Proceed
    if value is True:
        return eventResult.Break
    if isinstance(value, int) and 0 <= value < 3:
        return eventResult(value)
    return eventResult.Break


def _call_handler(sim: Simulator, owner: breakpoint) -> eventResult:
    sim.in_callback = True
    try:
        value = owner._callback() if owner._callback is not None else owner.onHit()
    except Exception:
        # pykd prints the traceback to the debugger and stops
        traceback.print_exc(file=sys.stderr)
        return eventResult.Break
    finally:
        sim.in_callback = False
    return _map_result(value)


_SIM: Optional[Simulator] = None
_PENDING: Optional[Simulator] = None
_INITIALIZED = False


def _install(sim: Optional[Simulator]) -> Optional[Simulator]:
    """Test hook: make ``sim`` the current session (None: no session)."""
    global _SIM, _INITIALIZED
    _SIM = sim
    _INITIALIZED = sim is not None
    return sim


def _prepare_attach(sim: Optional[Simulator]) -> None:
    """Test hook: the target the next attachKernel/loadDump connects to."""
    global _PENDING
    _PENDING = sim


def _session() -> Simulator:
    if _SIM is None or _SIM.detached:
        raise DbgException("pykd is not initialized")
    return _SIM


def _api(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Log every call (the transaction count) and raise injected faults."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sim = _SIM
        if sim is not None:
            sim.calls.append(name)
            pending = sim.faults.get(name)
            if pending:
                if pending[0][0] == 0:
                    raise pending.pop(0)[1]
                pending[0][0] -= 1
        return fn(*args, **kwargs)

    return wrapper


def _check_address(offset: Any) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError("Python argument types did not match C++ signature")
    if offset < 0 or offset >= _U64:
        raise OverflowError("can't convert negative value to unsigned int" if offset < 0 else "int too big")
    return offset


def _check_count(count: Any) -> int:
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError("Python argument types did not match C++ signature")
    if count < 0:
        raise OverflowError("can't convert negative value to unsigned int")
    return count


def _live(what: str) -> Simulator:
    sim = _session()
    if sim.mode == "dump":
        raise DbgException("%s: not supported for a dump target" % what)
    return sim


def _no_callback(sim: Simulator, what: str) -> None:
    if sim.in_callback:
        raise DbgException("%s called from a breakpoint callback (dbgeng is not re-entrant)" % what)


# -- memory (section 1) -------------------------------------------------------------------
def _load(offset: Any, count: Any, phyAddr: bool, width: int, signed: bool = False) -> List[int]:
    offset, count = _check_address(offset), _check_count(count)
    sim = _session()
    data = sim.read_phys(offset, count * width) if phyAddr else sim.read_virt(offset, count * width)
    return [int.from_bytes(data[i:i + width], "little", signed=signed) for i in range(0, len(data), width)]


@_api
def loadBytes(offset, count, phyAddr=False):  # noqa: N802 - pykd's names
    """list of byte values (ints), never bytes"""
    return _load(offset, count, phyAddr, 1)


@_api
def loadWords(offset, count, phyAddr=False):
    return _load(offset, count, phyAddr, 2)


@_api
def loadDWords(offset, count, phyAddr=False):
    return _load(offset, count, phyAddr, 4)


@_api
def loadQWords(offset, count, phyAddr=False):
    return _load(offset, count, phyAddr, 8)


@_api
def loadSignBytes(offset, count, phyAddr=False):
    return _load(offset, count, phyAddr, 1, signed=True)


@_api
def loadChars(address, count, phyAddr=False):
    """str by UTF-8 decoding (UnicodeDecodeError on invalid bytes, like Boost.Python)"""
    return bytes(_load(address, count, phyAddr, 1)).decode("utf-8")


@_api
def loadCStr(offset, /):
    sim = _session()
    out = bytearray()
    cursor = _check_address(offset)
    while len(out) < 0x10000:
        byte = sim.read_virt(cursor, 1)
        if byte == b"\0":
            break
        out += byte
        cursor += 1
    return bytes(out).decode("utf-8")


def _ptr(offset: Any, width: int) -> int:
    return int.from_bytes(_session().read_virt(_check_address(offset), width), "little")


@_api
def ptrByte(offset, /):
    return _ptr(offset, 1)


@_api
def ptrWord(offset, /):
    return _ptr(offset, 2)


@_api
def ptrDWord(offset, /):
    return _ptr(offset, 4)


@_api
def ptrQWord(offset, /):
    return _ptr(offset, 8)


@_api
def ptrPtr(offset, /):
    return _ptr(offset, 8)


@_api
def isValid(offset, /):
    return _session().translate(_check_address(offset)) is not None


@_api
def compareMemory(offset1, offset2, length, phyAddr=False):
    first = loadBytes.__wrapped__(offset1, length, phyAddr)  # type: ignore[attr-defined]
    return first == loadBytes.__wrapped__(offset2, length, phyAddr)  # type: ignore[attr-defined]


@_api
def searchMemory(beginOffset, length, pattern, /):
    sim = _session()
    needle = pattern.encode("utf-8") if isinstance(pattern, str) else bytes(pattern)
    try:
        found = sim.read_virt(_check_address(beginOffset), _check_count(length)).find(needle)
    except MemoryException:
        return 0
    return 0 if found < 0 else beginOffset + found


def _write(offset: Any, values: Any, phyAddr: bool, width: int) -> None:
    if not isinstance(values, list):  # boost::python::list only (a tuple or bytes is rejected)
        raise TypeError("Python argument types did not match C++ signature")
    sim = _live("write")
    offset = _check_address(offset)
    data = b"".join(int(v).to_bytes(width, "little") for v in values)
    if phyAddr:
        if not sim.phys_ok(offset, len(data)):
            raise MemoryException("Memory exception at 0x%x target physical address" % offset)
        sim.phys[offset:offset + len(data)] = data
    else:
        for i, byte in enumerate(data):
            pa = sim.translate(offset + i)
            if pa is None or not sim.phys_ok(pa, 1):
                raise MemoryException("Memory exception at 0x%x target virtual address" % offset)
            sim.phys[pa] = byte
    sim.writes += 1


@_api
def writeBytes(offset, values, phyAddr=False):
    _write(offset, values, phyAddr, 1)


@_api
def writeQWords(offset, values, phyAddr=False):
    _write(offset, values, phyAddr, 8)


# -- registers, MSRs, processors (section 2) ----------------------------------------------
_REG_ORDER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
              "r14", "r15", "rip", "efl", "cs", "ds", "es", "fs", "gs", "ss", "cr0", "cr2", "cr3", "cr4", "cr8",
              "dr0", "dr1", "dr2", "dr3", "dr6", "dr7", "gdtr", "gdtl", "idtr", "idtl", "tr", "ldtr")


def _reg_name(name: Any) -> str:
    if isinstance(name, int) and not isinstance(name, bool):
        if not 0 <= name < len(_REG_ORDER):
            raise DbgException("invalid register index %d" % name)
        return _REG_ORDER[name]
    if not isinstance(name, str):
        raise TypeError("Python argument types did not match C++ signature")
    return name


@_api
def reg(name, /):
    sim = _session()
    regs = sim.cpus[sim.current].regs
    key = _reg_name(name)
    if key not in regs:
        raise DbgException("invalid register name %s" % key)
    return regs[key]


@_api
def setReg(name, value, /):
    sim = _live("setReg")
    regs = sim.cpus[sim.current].regs
    key = _reg_name(name)
    if key not in regs:
        raise DbgException("invalid register name %s" % key)
    regs[key] = _check_address(value)


@_api
def getNumberRegisters():
    return len(_REG_ORDER)


@_api
def getRegisterName(index, /):
    return _reg_name(index)


@_api
def getIP():
    return reg.__wrapped__("rip")  # type: ignore[attr-defined]


@_api
def getSP():
    return reg.__wrapped__("rsp")  # type: ignore[attr-defined]


@_api
def rdmsr(msrIndex, /):
    sim = _session()
    sim.msr_reads.append(msrIndex)
    if sim.mode != "live":
        raise DbgException("failed to read MSR")
    msrs = sim.cpus[sim.current].msrs
    if msrIndex not in msrs:
        raise DbgException("failed to read MSR")  # #GP on the target
    return msrs[msrIndex]


@_api
def wrmsr(msrIndex, value, /):
    sim = _live("wrmsr")
    if msrIndex not in sim.cpus[sim.current].msrs:
        raise DbgException("failed to write MSR")
    sim.cpus[sim.current].msrs[msrIndex] = value


@_api
def getNumberThreads():
    sim = _session()
    return len(sim.cpus) if sim.mode != "user" else 1


@_api
def getThreadId(i, /):
    sim = _session()
    if not 0 <= i < len(sim.thread_ids):
        raise DbgException("thread index out of range")
    return sim.thread_ids[i]


@_api
def getCurrentThreadId():
    sim = _session()
    return sim.thread_ids[sim.current]


@_api
def setCurrentThreadId(id, /):  # noqa: A002 - pykd's argument name
    sim = _session()
    _no_callback(sim, "setCurrentThreadId")
    if id not in sim.thread_ids:
        raise DbgException("invalid thread id %r" % (id,))
    sim.current = sim.thread_ids.index(id)


@_api
def is64bitSystem():
    return True


@_api
def ptrSize():
    return 8


@_api
def pageSize():
    return 0x1000


# -- execution control (section 3) --------------------------------------------------------
@_api
def go():
    sim = _live("go")
    _no_callback(sim, "go")
    return sim.run()


@_api
def trace():
    sim = _live("trace")
    _no_callback(sim, "trace")
    sim.cpus[sim.current].regs["rip"] += 1
    return executionStatus.Break


@_api
def step():
    sim = _live("step")
    _no_callback(sim, "step")
    sim.cpus[sim.current].regs["rip"] += 1
    return executionStatus.Break


@_api
def getExecutionStatus():
    _session()
    return executionStatus.Break


@_api
def breakin():
    _live("breakin")


# -- breakpoints (section 4) --------------------------------------------------------------
class breakpoint:  # noqa: N801 - pykd's class name
    """An engine breakpoint.  Objects made by the constructor or setBp *own* it: when the
    object is garbage-collected the engine breakpoint is removed (the ownership trap)."""

    def __init__(self, offset, size=None, accessType=None):
        sim = _live("setBp")
        _no_callback(sim, "setBp")
        offset = _check_address(offset)
        self._sim = sim
        self._id = sim.next_bp_id
        sim.next_bp_id += 1
        sim.breakpoints[self._id] = {"offset": offset, "owner": weakref.ref(self), "size": size,
                                     "access": accessType}
        self._owning = True
        self._callback: Optional[Callable[[], Any]] = None

    @classmethod
    def _weak(cls, sim: Simulator, bp_id: int) -> breakpoint:
        obj = cls.__new__(cls)
        obj._sim, obj._id, obj._owning, obj._callback = sim, bp_id, False, None
        return obj

    def onHit(self):
        """Default handler: break."""
        return True

    def getId(self):
        return self._id

    def getOffset(self):
        record = self._sim.breakpoints.get(self._id)
        if record is None:
            raise DbgException("breakpoint is removed")
        return record["offset"]

    def remove(self):
        if self._sim.breakpoints.pop(self._id, None) is None:
            raise DbgException("Cannot remove breakpoint, it is detached")
        self._owning = False

    def detach(self):
        if not self._owning:
            raise DbgException("Cannot detach 'weak' breakpoint")
        if self._callback is not None:
            raise DbgException("Cannot detach breakpoint with callback")
        self._owning = False
        record = self._sim.breakpoints.get(self._id)
        if record is not None:
            record["owner"] = None
        return breakpoint._weak(self._sim, self._id)

    def __del__(self):
        if getattr(self, "_owning", False):
            self._sim.breakpoints.pop(self._id, None)


@_api
def setBp(offset, size=None, accsessType=None, callback=None):
    """setBp(offset, callback=None) or setBp(offset, size, accsessType, callback=None)"""
    if callable(size) and accsessType is None and callback is None:
        size, callback = None, size
    bp = breakpoint(offset, size, accsessType)
    bp._callback = callback
    return bp


@_api
def getNumberBreakpoints():
    return len(_session().breakpoints)


@_api
def getBp(index, /):
    sim = _session()
    ids = sorted(sim.breakpoints)
    if not 0 <= index < len(ids):
        raise IndexError("breakpoint index out of range")
    return breakpoint._weak(sim, ids[index])


@_api
def removeBp(index, /):
    sim = _session()
    ids = sorted(sim.breakpoints)
    if not 0 <= index < len(ids):
        raise IndexError("breakpoint index out of range")
    del sim.breakpoints[ids[index]]


@_api
def removeAllBp():
    _session().breakpoints.clear()


# -- sessions (section 5) -----------------------------------------------------------------
@_api
def initialize():
    global _INITIALIZED
    if _INITIALIZED:
        raise DbgException("pykd is already initialized")
    _INITIALIZED = True


@_api
def deinitialize():
    global _INITIALIZED, _SIM
    _INITIALIZED = False
    _SIM = None


@_api
def attachKernel(connectOptions=""):
    global _INITIALIZED, _SIM
    if _SIM is not None and _SIM.in_callback:
        raise DbgException("attachKernel called from a breakpoint callback")
    if _PENDING is None:
        raise DbgException("failed to attach kernel: no target answered (%s)" % (connectOptions or "local"))
    _INITIALIZED = True
    _SIM = _PENDING
    _SIM.attach_options = connectOptions
    _SIM.calls.append("attachKernel")


@_api
def loadDump(fileName, /):
    global _INITIALIZED, _SIM
    if _PENDING is None:
        raise DbgException("cannot open dump %s" % fileName)
    _INITIALIZED = True
    _SIM = _PENDING
    _SIM.mode = "dump"
    return 0


@_api
def isDumpAnalyzing():
    return _session().mode == "dump"


@_api
def isKernelDebugging():
    return _session().mode in ("live", "dump")


@_api
def isLocalKernelDebuggerEnabled():
    return False


@_api
def isWindbgExt():
    # exactly pykd's rule: the bootstrapper's stdout has writedml
    return hasattr(sys.stdout, "writedml")


@_api
def detachAllProcesses():
    _session().detached = True


@_api
def detachProcess(id=-1):  # noqa: A002
    _session().detached = True


@_api
def getDumpType():
    if _session().mode != "dump":
        raise DbgException("Target is not a dump")
    return dumpType.Full


# -- symbols and types (section 6) --------------------------------------------------------
def _module_of(sim: Simulator, name: str) -> Tuple[str, int, int]:
    for module_name, base, size in sim.modules:
        if module_name.lower() == name.lower():
            return module_name, base, size
    raise DbgException("module %s not found" % name)


@_api
def getOffset(name, /):
    sim = _session()
    if "!" in name:
        module_name, _ = name.split("!", 1)
        _module_of(sim, module_name)
        if name in sim.symbols:
            return sim.symbols[name]
    else:
        for full, address in sim.symbols.items():
            if full.split("!", 1)[1] == name:
                return address
    raise SymbolException("symbol %s not found" % name)


@_api
def findSymbol(offset, showDisplacement=True):
    sim = _session()
    for module_name, base, size in sim.modules:
        if base <= offset < base + size:
            best = None
            for full, address in sim.symbols.items():
                if full.split("!")[0] == module_name and address <= offset and (best is None or address > best[1]):
                    best = (full, address)
            if best is None:
                return "%s+%x" % (module_name, offset - base)
            disp = offset - best[1]
            return best[0] + ("+%x" % disp if disp and showDisplacement else "")
    return "%x" % offset


class module:  # noqa: N801
    """A loaded module, by name or by an address inside it."""

    def __init__(self, name):
        sim = _session()
        if isinstance(name, int):
            for module_name, base, size in sim.modules:
                if base <= name < base + size:
                    self._info = (module_name, base, size)
                    return
            raise DbgException("no module at 0x%x" % name)
        self._info = _module_of(sim, name)

    def name(self):
        return self._info[0]

    def begin(self):
        return self._info[1]

    def end(self):
        return self._info[1] + self._info[2]

    def size(self):
        return self._info[2]

    def offset(self, name):
        return getOffset.__wrapped__(self._info[0] + "!" + name)  # type: ignore[attr-defined]


@_api
def getModulesList():
    sim = _session()
    return [module(name) for name, _, _ in sim.modules]


class typeInfo:  # noqa: N801
    """A type from the symbols: ``typeInfo("mod!Type")``."""

    def __init__(self, name):
        sim = _session()
        if name not in sim.types:
            raise SymbolException("type %s not found" % name)
        self._name = name
        self._spec = sim.types[name]

    def name(self):
        return self._name

    def size(self):
        return int(self._spec.get("size", 0))

    def fieldOffset(self, name):
        fields = self._spec.get("fields") or {}
        if name not in fields:
            raise TypeException("%s has no field %s" % (self._name, name))
        return int(fields[name])

    def hasField(self, name):
        return name in (self._spec.get("fields") or {})

    def fields(self):
        return list((self._spec.get("fields") or {}).items())


@_api
def sizeof(name, /):
    return typeInfo(name).size()


# -- output (section 7) -------------------------------------------------------------------
@_api
def dprint(str, dml=False):  # noqa: A002 - pykd's argument name
    out = sys.stdout
    if dml and hasattr(out, "writedml"):
        out.writedml(str)
    else:
        out.write(str)


@_api
def dprintln(str, dml=False):  # noqa: A002
    dprint.__wrapped__(str + "\n", dml)  # type: ignore[attr-defined]


@_api
def dbgCommand(command, suppressOutput=True, outputMask=outputFlag.Normal):
    sim = _session()
    text = command.strip()
    if text.startswith("~") and text.endswith("s") and text[1:-1].isdigit():
        setCurrentThreadId.__wrapped__(sim.thread_ids[int(text[1:-1])])  # type: ignore[attr-defined]
        return None
    return None


# a subprocess (the `!py` emulator, windbg_py.py) names its simulated target here
if os.environ.get("VTDBG_STANDIN_SPEC"):
    _install(Simulator.from_json(os.environ["VTDBG_STANDIN_SPEC"]))
