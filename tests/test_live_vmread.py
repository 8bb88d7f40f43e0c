"""Live VMREAD/VMWRITE and layout discovery on the pykd stand-in, whose go()/trace() run the
real stub bytes in a small x86-64 interpreter with a simulated VMX CPU (tests/support/vmx_emu).

The simulated machine: the Bochs lab's first MiB of RAM, a Windows-like kernel mapping
(4 KiB pages whose Accessed/Dirty bits start clear, so the MMU model sets them), the lab's
VMCS current on CPU 0 with an on-die copy that differs from the page in RAM (as real CPUs
may), and a VMX model that writes VMCS data to memory in its own layout on VMCLEAR, with
access rights packed into 16 bits (unlike Bochs), so discovery has something to find.

Every operation is checked against a full snapshot of the machine (memory, registers of all
CPUs, current CPU, breakpoints, VMX state) before and after, also when a read, a write, a
register change, the stub itself or the connection fails at any step.
"""
from __future__ import annotations

import copy
import importlib.util
import io
import json
import random
import struct
import sys
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tests.conftest import ROOT
from tests.support import vmx_emu
from tests.support.lab import lab_memory
from vtdbg.arch.fields import all_fields, lookup_field
from vtdbg.commands.registry import Context
from vtdbg.core import discover, live
from vtdbg.core import vmread_stub as stub
from vtdbg.frontends.cli import run
from vtdbg.target.pykd_backend import PykdTarget
from vtdbg.target.record import RecordingTarget

STANDIN = ROOT / "tests" / "pykd_standin" / "pykd.py"
KVA = 0xFFFFF80000000000
#: physical layout of the simulated machine beyond the lab's first MiB
PML4, PDPT, PD, PT = 0x300000, 0x301000, 0x302000, 0x303000
KERNEL_PA = 0x200000          # KVA + i maps KERNEL_PA + i (256 pages)
SCRATCH_OFF = 0x80000         # KVA + 0x80000 = PA 0x280000: free, zero
SCRATCH_VA, SCRATCH_PA = KVA + SCRATCH_OFF, KERNEL_PA + SCRATCH_OFF
HANDLER = KVA + 0x1000        # where the CPU is stopped (the "exit handler")
GADGETS = KVA + 0x2000        # vmread rax, rdx / vmwrite rdx, rax live here
MODEL = "corei7_skylake_x"


# -- the simulated machine ------------------------------------------------------------------------
def _q(value: int) -> bytes:
    return value.to_bytes(8, "little")


def load_standin() -> Any:
    """A fresh stand-in module (its state is module-global)."""
    spec = importlib.util.spec_from_file_location("pykd", str(STANDIN))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def hardware_layout(encodings: List[int]) -> Dict[int, Tuple[int, int, Optional[str]]]:
    """A made-up 'hardware' layout: fields shuffled into 8-byte slots, access rights packed
    into 16 bits, 16-bit fields in 2 bytes."""
    order = sorted(encodings)
    random.Random(7).shuffle(order)
    layout: Dict[int, Tuple[int, int, Optional[str]]] = {}
    offset = 0x40
    for encoding in order:
        width = {0: 2, 1: 8, 2: 4, 3: 8}[(encoding >> 13) & 3]
        if encoding in discover.AR_FIELDS:
            layout[encoding] = (offset, 2, "packed16")
        else:
            layout[encoding] = (offset, width, None)
        offset += 8
    assert offset <= 0x1000
    return layout


class Machine:
    """The stand-in session plus the emulator attached to it."""

    def __init__(self, pykd: Any, misc29: bool = True, root_vmcs: bool = True, cpus: int = 2,
                 fresh_scratch: bool = False) -> None:
        image, truth = lab_memory(MODEL)
        self.truth = truth
        phys = bytearray(image[:0x400000])
        # 4-level tables: PML4[0x1f0] -> PDPT -> PD -> PT, 256 x 4 KiB pages (A/D clear)
        phys[PML4 + 0x1F0 * 8:PML4 + 0x1F0 * 8 + 8] = _q(PDPT | 0x23)
        phys[PDPT:PDPT + 8] = _q(PD | 0x23)
        phys[PD:PD + 8] = _q(PT | 0x23)
        for i in range(256):
            # pages in use have Accessed/Dirty set; with fresh_scratch the scratch pages have not
            # been touched yet, so the stub's own accesses set the bits (and vtdbg must clear them)
            used = 0 if fresh_scratch and i >= SCRATCH_OFF >> 12 else 0x60
            phys[PT + 8 * i:PT + 8 * i + 8] = _q((KERNEL_PA + 0x1000 * i) | 0x3 | used)
        # the "hypervisor image": gadgets
        phys[KERNEL_PA + 0x2000:KERNEL_PA + 0x2003] = bytes.fromhex("0f78d0")   # vmread rax, rdx
        phys[KERNEL_PA + 0x2010:KERNEL_PA + 0x2013] = bytes.fromhex("0f79d0")   # vmwrite rdx, rax
        msrs = {int(k, 16): v for k, v in truth["msrs"].items()}
        if not misc29:
            msrs[0x485] &= ~(1 << 29)
        cpu_specs = []
        for cpu in range(cpus):
            regs = {"rax": 0x1111 + cpu, "rbx": 0x2222, "rcx": 0x3333, "rdx": 0x4444, "rsi": 0x5555,
                    "rdi": 0x6666, "rbp": 0x7777, "rsp": KVA + 0x7000 - 0x100 * cpu, "rip": HANDLER + 0x10 * cpu,
                    "efl": 0x246, "cs": 0x10, "ss": 0x18, "ds": 0x2B, "es": 0x2B, "fs": 0x53, "gs": 0x2B,
                    "cr0": 0x80050033, "cr2": 0, "cr3": PML4, "cr4": 0x3526F8, "cr8": 0, "dr0": 0, "dr1": 0,
                    "dr2": 0, "dr3": 0, "dr6": 0xFFFF0FF0, "dr7": 0x400, "gdtr": KVA + 0x6000, "gdtl": 0x57,
                    "idtr": KVA + 0x6100, "idtl": 0xFFF, "tr": 0x40, "ldtr": 0}
            for n in range(8, 16):
                regs["r%d" % n] = 0x1000 * n
            cpu_specs.append({"regs": regs, "msrs": msrs})
        self.pykd = pykd
        self.sim = pykd._install(pykd.Simulator.from_spec({
            "mode": "live", "image": bytes(phys), "cpus": cpu_specs, "current": 0,
            "modules": [{"name": "nt", "base": KVA + 0x100000, "size": 0x1000}],
        }))
        fields = {int(k, 16): v for k, v in truth["fields"].items()}
        self.supported = {e for e in fields if not (e & 1 and (e >> 13) & 3 == 1)}
        self.layout = hardware_layout(sorted(self.supported))
        self.on_die = {e: fields[e] for e in self.supported}
        # the CPU's copy is newer than the page in RAM: live must see this value
        self.on_die[0x681E] = fields[0x681E] + 0x10
        self.on_die[0x4400] = 0
        self.vmx: Dict[int, vmx_emu.VmxCpu] = {}
        for cpu in range(cpus):
            model = vmx_emu.VmxCpu(
                revision=truth["revision_id"], misc=msrs[0x485], supported=set(self.supported),
                layout=self.layout, read_phys=lambda pa, n: bytes(self.sim.phys[pa:pa + n]),
                write_phys=self._write_phys, vmxon=truth["vmxon_pa"] + 0x10000 * cpu)
            if root_vmcs:
                pointer = truth["vmcs_pa"] if cpu == 0 else 0x2B000
                model.active[pointer] = dict(self.on_die)
                model.current = pointer
            self.vmx[cpu] = model
        self.emu = vmx_emu.attach(pykd, self.sim, self.vmx)

    def _write_phys(self, pa: int, data: bytes) -> None:
        self.sim.phys[pa:pa + len(data)] = data

    def target(self) -> PykdTarget:
        return PykdTarget(self.pykd)

    def snapshot(self) -> Dict[str, Any]:
        """Everything a live operation must leave as it found it."""
        return {"phys": bytes(self.sim.phys), "regs": [copy.deepcopy(c.regs) for c in self.sim.cpus],
                "current": self.sim.current, "breakpoints": sorted(b["offset"] for b in self.sim.breakpoints.values()),
                "vmx": [(m.current, copy.deepcopy(m.active)) for m in self.vmx.values()]}

    def scratch(self, target: Any) -> live.Scratch:
        return live.scratch_at(target, SCRATCH_PA, 0x4000, va=SCRATCH_VA)

    def pykd_calls(self, start: int) -> List[str]:
        return self.sim.calls[start:]


def assert_same(before: Dict[str, Any], after: Dict[str, Any]) -> None:
    """Compare two snapshots, naming the first difference."""
    if before["phys"] != after["phys"]:
        first = next(i for i in range(len(before["phys"])) if before["phys"][i] != after["phys"][i])
        raise AssertionError("physical memory differs first at 0x%x" % first)
    for key in ("regs", "current", "breakpoints", "vmx"):
        assert before[key] == after[key], key


@pytest.fixture
def pykd(monkeypatch):
    monkeypatch.delenv("VTDBG_STANDIN_SPEC", raising=False)
    module = load_standin()
    monkeypatch.setitem(sys.modules, "pykd", module)
    yield module
    module._install(None)


@pytest.fixture
def machine(pykd):
    return Machine(pykd)


def budget(calls: List[str]) -> Tuple[int, int]:
    """(transactions beyond register set-up, register transactions) of pykd calls."""
    registers = sum(1 for c in calls if c in ("reg", "setReg"))
    return len(calls) - registers, registers


# -- the stubs themselves ---------------------------------------------------------------------------
def test_compact_reader_fits_one_bochs_setpmem_line():
    # 15 setpmem commands of 4 bytes fit Bochs's 480-character line: the tail plus the reader
    assert len(stub.TAIL) + len(stub.ENUM_CODE) <= 60
    assert stub.TAIL[stub.TAIL_INVD:stub.TAIL_INVD + 2] == b"\x0f\x08"
    assert stub.TAIL[stub.TAIL_STOP:] == b"\xeb\xfe"
    assert stub.ENUM_CODE[stub.ENUM_STOP:] == b"\xeb\xfe" and stub.LIST_CODE[stub.LIST_STOP:] == b"\xeb\xfe"


def test_enumeration_order_covers_every_table_field():
    order = stub.enum_encodings(0x29)
    assert len(order) == 16 * 0x2A and len(set(order)) == len(order)
    assert not any(e & 0x1001 for e in order)  # FULL encodings, reserved bit 12 clear
    assert {f.encoding for f in all_fields()} <= set(order)
    assert order == sorted(order)


def test_gadget_finder_reads_modrm_and_rex():
    code = bytes.fromhex("90 0f78d0 90 410f79c3 66 0f78c0 0f78 07 0f78e0")
    found = stub.find_gadgets(code, 0x1000)
    assert [(g.address, g.kind, g.source, g.dest, g.length) for g in found] == [
        (0x1001, "vmread", "rdx", "rax", 3), (0x1005, "vmwrite", "rax", "r11", 4)]


def test_markers_are_distinct_in_every_stored_form():
    encodings = [f.encoding for f in all_fields()]
    markers = discover.choose_markers(encodings)
    forms = [(e, form) for e in encodings for _, form in discover.stored_forms(e, markers[e])]
    for owner, form in forms:
        for other_owner, other in forms:
            if owner != other_owner:  # one field's packed form may well be inside its plain form
                assert form not in other, (hex(owner), hex(other_owner))


# -- reading ----------------------------------------------------------------------------------------
def test_list_read_equals_vmread_and_restores_everything(machine):
    target = machine.target()
    scratch = machine.scratch(target)
    before = machine.snapshot()
    start = len(machine.sim.calls)
    read = live.live_read(target, scratch, assume_root=True)
    calls = machine.pykd_calls(start)
    assert_same(before, machine.snapshot())
    vmcs = read.vmcs
    assert read.method == "list" and vmcs.source == "live"
    for encoding in machine.supported:
        if encoding in {f.encoding for f in all_fields()}:
            assert vmcs.values[encoding] == machine.on_die[encoding], hex(encoding)
    assert vmcs.values[0x681E] == machine.on_die[0x681E]  # the on-die copy, not the stale page
    unsupported = {f.encoding for f in all_fields()} - machine.supported
    assert all(vmcs.status[e] == "vmfail_valid" for e in unsupported)
    assert vmcs.values[0x4400] == 0 and machine.vmx[0].active[0x21000][0x4400] == 0
    assert vmcs.address == 0x21000 and vmcs.revision_id == machine.truth["revision_id"]
    doc = vmcs.to_json()
    assert doc["source"] == "live" and doc["status"]["GUEST_RIP"] == "ok"
    beyond, registers = budget(calls)
    # save, write, setBp, go, read back, remove, restore, verify (the scratch was checked before)
    assert [c for c in calls if c not in ("reg", "setReg")] == [
        "loadBytes", "writeBytes", "setBp", "go", "loadBytes", "writeBytes", "loadBytes"], calls
    assert beyond <= 8


def test_accessed_dirty_bits_set_by_the_run_are_put_back(pykd):
    machine = Machine(pykd, fresh_scratch=True)
    target = machine.target()
    scratch = machine.scratch(target)
    pte = PT + 8 * (SCRATCH_OFF >> 12)
    original = bytes(machine.sim.phys[pte:pte + 8])
    assert not int.from_bytes(original, "little") & 0x60
    before = machine.snapshot()
    start = len(machine.sim.calls)
    live.live_read(target, scratch, assume_root=True)
    assert bytes(machine.sim.phys[pte:pte + 8]) == original
    assert_same(before, machine.snapshot())
    # one read per paging entry that had a bit clear and maps a page the run used, plus
    # a write when the run set it: pages the run did not use are not even looked at
    assert budget(machine.pykd_calls(start))[0] == 7 + 2


def test_the_mmu_model_does_set_accessed_dirty_bits(pykd):
    # without the restore the run would leave them set: the check above is not vacuous
    machine = Machine(pykd, fresh_scratch=True)
    target = machine.target()
    scratch = machine.scratch(target)
    scratch.paging = []  # forget what the mapping looked like
    pte = PT + 8 * (SCRATCH_OFF >> 12)
    live.live_read(target, scratch, assume_root=True)
    assert int.from_bytes(bytes(machine.sim.phys[pte:pte + 8]), "little") & 0x60 == 0x60


def test_compact_reader_on_the_standin(machine):
    target = machine.target()
    before = machine.snapshot()
    read = live.live_read(target, machine.scratch(target), assume_root=True, method="enum")
    assert_same(before, machine.snapshot())
    for encoding in machine.supported:
        assert read.vmcs.values[encoding] == machine.on_die[encoding], hex(encoding)
    assert read.vmcs.values[0x4400] == 0


def test_without_vmwrite_to_read_only_fields_only_baseline_fields_are_tried(pykd):
    machine = Machine(pykd, misc29=False)
    target = machine.target()
    before = machine.snapshot()
    read = live.live_read(target, machine.scratch(target), assume_root=True)
    assert_same(before, machine.snapshot())
    assert set(read.vmcs.values) <= live.BASELINE_FIELDS
    assert live.BASELINE_FIELDS <= machine.supported  # the baseline is real: every model has it
    assert not [e for e, s in read.vmcs.status.items() if s != "ok"]
    assert any("IA32_VMX_MISC[29]" in w for w in read.vmcs.warnings)
    assert not any(line.startswith("vmread") and line[7:] not in
                   {"%04x" % e for e in live.BASELINE_FIELDS | {0x4400}} for line in machine.vmx[0].log)


def test_no_current_vmcs_is_reported_and_nothing_changes(pykd):
    machine = Machine(pykd, root_vmcs=False)
    target = machine.target()
    before = machine.snapshot()
    with pytest.raises(live.LiveError, match="no VMCS is current"):
        live.live_read(target, machine.scratch(target), assume_root=True)
    assert_same(before, machine.snapshot())


def test_without_root_mode_evidence_the_read_is_refused(machine):
    target = machine.target()
    before = machine.snapshot()
    with pytest.raises(live.LiveError, match="--assume-root"):
        live.live_read(target, machine.scratch(target))
    assert_same(before, machine.snapshot())
    assert not machine.emu.executed


def test_non_root_verdict_refuses(machine, monkeypatch):
    monkeypatch.setattr(live, "_root_mode_evidence", lambda target, cpu: (False, ["RSP off the VMM stack"]))
    target = machine.target()
    with pytest.raises(live.LiveError, match="non-root"):
        live.live_read(target, machine.scratch(target))
    monkeypatch.setattr(live, "_root_mode_evidence", lambda target, cpu: (True, ["RIP in the exit handler"]))
    assert live.live_read(target, machine.scratch(target)).vmcs.values


def test_cpl3_is_refused(machine):
    machine.sim.cpus[0].regs["cs"] = 0x33
    target = machine.target()
    before = machine.snapshot()
    with pytest.raises(live.LiveError, match="CPL 3"):
        live.live_read(target, machine.scratch(target), assume_root=True)
    assert_same(before, machine.snapshot())


def test_scratch_must_be_mapped_writable_and_executable(machine):
    target = machine.target()
    with pytest.raises(live.LiveError, match="not mapped"):
        live.scratch_at(target, SCRATCH_PA, 0x4000)  # identity is not mapped here
    with pytest.raises(live.LiveError, match="maps physical"):
        live.scratch_at(target, SCRATCH_PA, 0x4000, va=SCRATCH_VA + 0x1000)
    pte = PT + 8 * (SCRATCH_OFF >> 12)
    machine.sim.phys[pte + 7] |= 0x80  # NX
    live._VALIDATED.clear()
    with pytest.raises(live.LiveError, match="no-execute"):
        live.scratch_at(target, SCRATCH_PA, 0x4000, va=SCRATCH_VA)


def test_other_cpu_is_read_and_the_debugger_returns_to_cpu_0(machine):
    target = machine.target()
    before = machine.snapshot()
    with target.select_cpu(1):
        read = live.live_read(target, machine.scratch(target), assume_root=True)
    assert read.vmcs.address == 0x2B000
    assert_same(before, machine.snapshot())


# -- every step can fail: the target is restored all the same --------------------------------------
FAULTS = [
    ("loadBytes", 0, "save read"),
    ("writeBytes", 0, "stub write"),
    ("setReg", 2, "register set-up"),
    ("setBp", 0, "stop breakpoint"),
    ("go", 0, "resume"),
    ("loadBytes", 1, "read-back"),
    ("writeBytes", 1, "restore write (retried)"),
    ("loadBytes", 2, "verify read (retried)"),
    ("setReg", 12, "register restore (retried)"),
]


@pytest.mark.parametrize("function,after,step", FAULTS, ids=[f[2] for f in FAULTS])
def test_a_failure_at_any_step_leaves_the_target_as_it_was(machine, function, after, step):
    target = machine.target()
    scratch = machine.scratch(target)
    before = machine.snapshot()
    machine.sim.inject(function, machine.pykd.DbgException("injected failure (%s)" % step), after)
    try:
        live.live_read(target, scratch, assume_root=True)
    except live.LiveError as exc:
        assert "injected failure" in str(exc) or "restored" in str(exc)
    assert_same(before, machine.snapshot())


def test_a_lost_connection_during_the_run_is_survived(machine):
    target = machine.target()
    scratch = machine.scratch(target)
    before = machine.snapshot()
    machine.emu.fail_go = machine.pykd.DbgException("target disconnected")
    with pytest.raises(live.LiveError, match="disconnected"):
        live.live_read(target, scratch, assume_root=True)
    assert_same(before, machine.snapshot())


def test_a_target_that_stays_gone_is_reported_not_hidden(machine):
    target = machine.target()
    scratch = machine.scratch(target)
    inner_go = machine.pykd.go

    def go_then_vanish() -> Any:
        inner_go()
        for function in ("loadBytes", "writeBytes", "setReg", "reg", "removeBp"):
            for _ in range(200):
                machine.sim.inject(function, machine.pykd.DbgException("target gone"))
        raise machine.pykd.DbgException("target gone")

    machine.pykd.go = go_then_vanish
    with pytest.raises(live.RestoreError) as caught:
        live.live_read(target, scratch, assume_root=True)
    message = str(caught.value)
    assert "target gone" in message and "writing back" in message and "restoring registers" in message


def test_ctrl_c_during_the_run_restores_then_interrupts(machine):
    target = machine.target()
    scratch = machine.scratch(target)
    before = machine.snapshot()
    machine.emu.fail_go = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        live.live_read(target, scratch, assume_root=True)
    assert_same(before, machine.snapshot())


def test_a_fault_inside_the_stub_is_contained(machine):
    target = machine.target()
    scratch = machine.scratch(target)
    before = machine.snapshot()
    del machine.sim.cpus[0].msrs[0x485]  # RDMSR of IA32_VMX_MISC raises #GP in the stub
    with pytest.raises(live.LiveError, match="did not reach its stop"):
        live.live_read(target, scratch, assume_root=True)
    assert machine.emu.faults and machine.emu.faults[-1].kind == "#GP"
    machine.sim.cpus[0].msrs[0x485] = int(machine.truth["msrs"]["0x485"])
    assert_same(before, machine.snapshot())


def test_a_page_fault_in_the_middle_of_the_stub_is_contained(machine):
    target = machine.target()
    scratch = machine.scratch(target)
    lay = live.StubRunner(target, scratch).layout(stub.list_program(stub.reads([0x681E] * 200)), 0)
    machine.emu.no_write.add(lay["data_va"] + stub.HEADER_SIZE + 40 * stub.ENTRY_SIZE + 8)
    before = machine.snapshot()
    with pytest.raises(live.LiveError, match="did not reach its stop"):
        live.live_read(target, scratch, assume_root=True)
    assert machine.emu.faults[-1].kind == "#PF"
    assert_same(before, machine.snapshot())


def test_a_stub_that_never_stops_is_contained(machine):
    target = machine.target()
    scratch = machine.scratch(target)
    machine.emu.max_steps = 50  # the "user" breaks in long before the stub is done
    before = machine.snapshot()
    with pytest.raises(live.LiveError, match="did not reach its stop"):
        live.live_read(target, scratch, assume_root=True)
    assert_same(before, machine.snapshot())


# -- writing ----------------------------------------------------------------------------------------
def test_vmwrite_changes_only_the_field(machine):
    target = machine.target()
    before = machine.snapshot()
    written = live.live_write(target, machine.scratch(target), 0x681E, 0x401000, assume_root=True)
    assert (written.before, written.status, written.after) == (machine.on_die[0x681E], "ok", 0x401000)
    after = machine.snapshot()
    assert machine.vmx[0].active[0x21000][0x681E] == 0x401000
    machine.vmx[0].active[0x21000][0x681E] = machine.on_die[0x681E]
    assert_same(before, machine.snapshot())
    assert after["phys"] == before["phys"]


def test_vmwrite_of_a_read_only_field_without_misc29_is_skipped(pykd):
    machine = Machine(pykd, misc29=False)
    target = machine.target()
    before = machine.snapshot()
    written = live.live_write(target, machine.scratch(target), 0x4402, 0x30, assume_root=True)
    assert written.status == "skipped" and written.after == written.before
    assert_same(before, machine.snapshot())


def test_vmwrite_of_an_unsupported_field_keeps_the_error_field(machine):
    target = machine.target()
    before = machine.snapshot()
    unsupported = min({f.encoding for f in all_fields()} - machine.supported)
    written = live.live_write(target, machine.scratch(target), unsupported, 1, assume_root=True)
    assert written.status == "vmfail_valid" and written.before is None
    assert_same(before, machine.snapshot())


# -- the gadget fallback -------------------------------------------------------------------------------
def test_gadget_read_writes_no_memory(machine):
    target = machine.target()
    gadgets = live.find_image_gadgets(target, GADGETS, 0x20)
    assert [g.kind for g in gadgets] == ["vmread", "vmwrite"]
    before = machine.snapshot()
    writes = machine.sim.writes
    read = live.gadget_read(target, gadgets, assume_root=True)
    assert machine.sim.writes == writes
    assert_same(before, machine.snapshot())
    for encoding in machine.supported & {f.encoding for f in all_fields()}:
        assert read.vmcs.values[encoding] == machine.on_die[encoding]
    assert read.vmcs.values[0x4400] == 0


def test_gadget_read_failure_restores_registers(machine):
    target = machine.target()
    gadgets = live.find_image_gadgets(target, GADGETS, 0x20)
    before = machine.snapshot()
    machine.sim.inject("trace", machine.pykd.DbgException("injected"), 5)
    with pytest.raises(live.LiveError, match="injected"):
        live.gadget_read(target, gadgets, assume_root=True)
    # a failed VMREAD (POSTED_INTR_NV) had changed the error field: the VMWRITE gadget put it back
    assert [line for line in machine.vmx[0].log if line.startswith("vmwrite 4400")]
    assert_same(before, machine.snapshot())


def test_scratch_in_the_image_padding(pykd):
    machine = Machine(pykd)
    image = KERNEL_PA + 0x10000  # a driver at KVA + 0x10000: headers, .text, .data
    header = bytearray(0x1000)
    header[0:2] = b"MZ"
    struct.pack_into("<I", header, 0x3C, 0x80)
    header[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HH", header, 0x84, 0x8664, 2)       # machine, 2 sections
    struct.pack_into("<H", header, 0x94, 0xF0)             # size of the optional header
    table = 0x80 + 24 + 0xF0
    sections = [(b".text", 0x1000, 0x1000 - 0x300, 0x60000020), (b".data", 0x3000, 0xB00, 0xC0000040)]
    for number, (name, rva, size, flags) in enumerate(sections):
        at = table + 40 * number
        header[at:at + len(name)] = name
        struct.pack_into("<II", header, at + 8, size, rva)
        struct.pack_into("<I", header, at + 36, flags)
    machine.sim.phys[image:image + 0x1000] = header
    machine.sim.phys[image + 0x1000:image + 0x1D00] = b"\xcc" * 0xD00  # code, then 0x300 bytes of padding
    machine.sim.phys[image + 0x3000:image + 0x3B00] = b"\x11" * 0xB00  # data, then 0x500 bytes of padding
    pte = PT + 8 * 0x11
    machine.sim.phys[pte + 7] |= 0x80  # .text is executable, the rest of the image is not
    for page in (0x10, 0x12, 0x13):
        machine.sim.phys[PT + 8 * page + 7] |= 0x80
    machine.sim.phys[pte] &= ~0x2  # .text is read-only
    machine.sim.phys[pte + 7] &= 0x7F
    target = machine.target()
    scratch = live.scratch_from_image(target, "drv", KVA + 0x10000, 0x4000)
    assert scratch.code.va == KVA + 0x11D00 and scratch.data is not None and scratch.data.va == KVA + 0x13B00
    before = machine.snapshot()
    start = len(machine.sim.calls)
    read = live.live_read(target, scratch, assume_root=True)
    assert_same(before, machine.snapshot())
    assert machine.pykd_calls(start).count("go") == 3  # 0x500 bytes of data padding: three runs
    assert read.vmcs.values[0x681E] == machine.on_die[0x681E]
    assert read.vmcs.values[0x4400] == 0


# -- discovery -------------------------------------------------------------------------------------------
def test_discovery_measures_the_simulated_layout(machine):
    target = machine.target()
    before = machine.snapshot()
    found = discover.discover_layout(target, machine.scratch(target), assume_root=True)
    assert_same(before, machine.snapshot())
    assert set(found.written) == machine.supported
    for encoding in machine.supported:
        hit = found.hits[encoding]
        assert (hit.offset, hit.size, hit.transform) == machine.layout[encoding], hex(encoding)
    assert found.original_pointer == 0x21000 and machine.vmx[0].current == 0x21000
    assert found.revision_id == machine.truth["revision_id"] and found.cpu_signature == 0x50654
    # the original VMCS was never cleared (its launch state stays launched)
    assert not [line for line in machine.vmx[0].log if line.startswith("vmclear 21000")]
    doc = found.layout_doc()
    from vtdbg.layouts.model import parse_layout

    layout = parse_layout(json.loads(json.dumps(doc)), "x", builtin=False)
    ar = layout.field_map()[0x4816]
    assert ar.transform == "packed16" and ar.size == 2


def test_discovery_when_the_scratch_vmcs_cannot_be_loaded(machine):
    target = machine.target()
    before = machine.snapshot()
    for model in machine.vmx.values():
        model.revision += 1  # VMPTRLD of the scratch region now fails (revision mismatch)
    with pytest.raises(live.LiveError, match="VMPTRLD of the scratch region failed"):
        discover.discover_layout(target, machine.scratch(target), assume_root=True)
    for model in machine.vmx.values():
        model.revision -= 1
    # no marker ever reached the original VMCS
    assert not [line for line in machine.vmx[0].log if line.startswith("vmwrite") and "4400" not in line]
    assert_same(before, machine.snapshot())


# -- the command line -----------------------------------------------------------------------------------
def cli(target: Any, *argv: str) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out, err, context=Context(target_uri="test:", opener=lambda uri: target))
    return status, out.getvalue(), err.getvalue()


def scratch_args() -> List[str]:
    return ["--scratch", hex(SCRATCH_PA), "--scratch-va", hex(SCRATCH_VA), "--assume-root"]


def test_cli_live_json_and_text(machine):
    target = machine.target()
    before = machine.snapshot()
    status, out, err = cli(target, "vmcs", "--live", *scratch_args(), "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["source"] == "live" and doc["cpu"] == 0
    assert doc["fields"]["GUEST_RIP"] == machine.on_die[0x681E]
    assert doc["status"]["GUEST_RIP"] == "ok" and doc["status"]["POSTED_INTR_NV"] == "vmfail_valid"
    assert doc["live"]["method"] == "list"
    status, out, err = cli(target, "vmcs", *scratch_args())  # a scratch on a live target: live by default
    assert status == 0 and "live VMREAD" in out
    assert_same(before, machine.snapshot())


def test_cli_memory_stays_the_default_without_a_scratch(machine):
    status, out, err = cli(machine.target(), "vmcs", "--at", hex(machine.truth["vmcs_pa"]), "--json")
    assert status == 0 and json.loads(out)["source"] == "memory"


def test_cli_set_needs_yes(machine):
    target = machine.target()
    status, _, err = cli(target, "vmcs", *scratch_args(), "--set", "GUEST_RIP", "0x1000")
    assert status == 2 and "--yes" in err
    status, out, err = cli(target, "vmcs", *scratch_args(), "--set", "GUEST_RIP", "0x1000", "--yes", "--json")
    assert status == 0 and json.loads(out)["after"] == 0x1000
    status, _, err = cli(target, "vmcs", *scratch_args(), "--set", "EPT_POINTER_HIGH", "1", "--yes")
    assert status == 2 and "FULL" in err


def test_cli_discover_saves_a_layout_the_registry_uses(machine, isolated_home):
    target = machine.target()
    status, out, err = cli(target, "discover-layout", *scratch_args(), "--save", "--name", "simcpu", "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["saved"].endswith("simcpu.json") and doc["found"] == len(machine.supported)
    from vtdbg.layouts.registry import candidates_for

    assert "simcpu" in [l.name for l in candidates_for(machine.truth["revision_id"])]
    status, _, err = cli(target, "discover-layout", *scratch_args(), "--save", "--name", "simcpu")
    assert status == 2 and "--overwrite" in err
    status, _, err = cli(target, "discover-layout", *scratch_args(), "--save", "--name", "bochs_2_7")
    assert status == 2 and "built-in" in err


def test_recording_counts_the_whole_session(machine):
    # (no sink: RecordingTarget cannot write a break_at record yet -- its result, the
    # Breakpoint handle, is not JSON; the Bochs lab test records a whole session)
    target = RecordingTarget(machine.target())
    scratch = machine.scratch(target)
    before = dict(target.counts)
    live.live_read(target, scratch, assume_root=True)
    used = {op: n - before.get(op, 0) for op, n in target.counts.items() if n - before.get(op, 0)}
    assert {op: n for op, n in used.items() if op not in ("registers", "set_register", "set_registers")} == {
        "read_phys": 3, "write_phys": 2, "break_at": 1, "resume": 1, "remove_breakpoint": 1}
    assert lookup_field("GUEST_RIP").encoding == 0x681E


def test_discovery_fault_after_loading_the_scratch_vmcs_is_repaired(machine):
    target = machine.target()
    before = machine.snapshot()
    machine.vmx[0].fault_after_vmwrites = 40  # a #GP in the middle of the marker writes
    with pytest.raises(live.LiveError, match="did not reach its stop.*repair stub"):
        discover.discover_layout(target, machine.scratch(target), assume_root=True)
    assert machine.vmx[0].current == 0x21000
    assert_same(before, machine.snapshot())


def test_compact_reader_fault_is_repaired(machine):
    target = machine.target()
    before = machine.snapshot()
    machine.emu.max_steps = 2000  # stops part-way, after failing reads changed the error field
    with pytest.raises(live.LiveError, match="repair stub"):
        live.live_read(target, machine.scratch(target), assume_root=True, method="enum")
    assert_same(before, machine.snapshot())
