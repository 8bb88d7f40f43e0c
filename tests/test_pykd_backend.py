"""The pykd backend on the pykd stand-in (tests/pykd_standin): the target contract for a live
session and a dump, transaction budgets, state left as found after every command (also
when a read fails or a breakpoint handler raises), `--cpu all`, `caps`, and WinDbg hosting
through an emulation of `!py` on every Python we support."""
from __future__ import annotations

import functools
import gc
import gzip
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tests.conftest import FIXTURES, ROOT
from tests.contract.contract import ContractSetup, TargetContract
from vtdbg.commands.registry import Context
from vtdbg.commands.result import Heading, KeyValues, Link, Result, Table, Text
from vtdbg.core.vmcs import STALE_VMCS_WARNING
from vtdbg.frontends.cli import run
from vtdbg.lib.errors import CapabilityError, MemoryReadError, TargetError, UsageError
from vtdbg.render.dml import DmlContext, render_dml
from vtdbg.target.base import Capability
from vtdbg.target.image import ImageTarget
from vtdbg.target.pykd_backend import DUMP_CAPS, LIVE_CAPS, NOT_INSTALLED, PykdTarget
from vtdbg.target.record import RecordingTarget

STANDIN = ROOT / "tests" / "pykd_standin"
KVA = 0xFFFFF80000000000
HANDLER = KVA + 0x8100
GUEST_RIP = 0x681E


# -- the simulated machine ------------------------------------------------------------------
#: the simulated machine's RAM is the lab image's first MiB (VMXON, VMCS, tables, guest);
#: the lab keeps many more VMCS-looking test pages above it, which would be "CPUs" to a scan
LOW_MEMORY = 0x100000


@functools.lru_cache(maxsize=None)
def lab() -> Tuple[str, bytes, Dict[str, Any]]:
    """(model, the first MiB of physical memory, ground truth) of the first Bochs lab fixture."""
    base = FIXTURES / "lab"
    models = sorted(p for p in base.iterdir() if (p / "phys.img.gz").is_file()) if base.is_dir() else []
    if not models:
        pytest.skip("no Bochs lab fixture (tests/fixtures/lab/*/phys.img.gz)")
    model = models[0]
    image = gzip.decompress((model / "phys.img.gz").read_bytes())[:LOW_MEMORY]
    truth = json.loads((model / "ground_truth.json").read_text())
    assert truth["vmcs_pa"] + 0x1000 <= LOW_MEMORY and truth["host_cr3"] < LOW_MEMORY
    return model.name, image, truth


def kernel_base(image: bytes) -> int:
    """Where the simulated Windows structures live: above the lab image, 2 MiB aligned."""
    return (len(image) + 0x1FFFFF) & ~0x1FFFFF


def _q(value: int) -> bytes:
    return value.to_bytes(8, "little")


def build_spec(cpus: int = 2, mode: str = "live", thread_ids: Optional[List[int]] = None,
               events: Optional[List[Tuple[int, int]]] = None, json_ready: bool = False,
               no_vmx_cpus: Tuple[int, ...] = ()) -> Dict[str, Any]:
    """A stand-in spec: the lab's memory plus a small Windows-like kernel region (page tables
    mapping KVA, nt!MmPhysicalMemoryBlock, copies of the lab VMCS for CPUs 1..3)."""
    _, image, truth = lab()
    base = kernel_base(image)
    region = bytearray(0x10000)
    region[0x0000 + 0x1F0 * 8:0x0000 + 0x1F0 * 8 + 8] = _q(base + 0x1000 | 3)  # PML4[0x1f0] -> PDPT
    region[0x1000:0x1008] = _q(base + 0x2000 | 3)  # PDPT[0] -> PD
    region[0x2000:0x2008] = _q(base + 0x3000 | 3)  # PD[0] -> PT
    for i in range(16):
        region[0x3000 + 8 * i:0x3008 + 8 * i] = _q(base + 0x1000 * i | 3)  # KVA + i pages
    region[0x4000:0x4008] = _q(KVA + 0x4100)  # nt!MmPhysicalMemoryBlock -> descriptor
    region[0x4080] = cpus  # nt!KeNumberProcessors
    descriptor = (2).to_bytes(4, "little") + bytes(4) + _q((len(image) >> 12) + 0x10)
    descriptor += _q(0) + _q(len(image) >> 12) + _q(base >> 12) + _q(0x10)
    region[0x4100:0x4100 + len(descriptor)] = descriptor
    vmcs_pa = truth["vmcs_pa"]
    for cpu in range(1, cpus):
        region[0x4000 + 0x1000 * cpu:0x5000 + 0x1000 * cpu] = image[vmcs_pa:vmcs_pa + 0x1000]
    msrs = {k: v for k, v in truth["msrs"].items()}
    memory_rip = int(truth.get("fields", {}).get("0x681e", 0))
    cpu_specs = []
    for cpu in range(cpus):
        regs = {"rax": 0x1000 + cpu, "rbx": 0, "rcx": cpu, "rdx": 0, "rsi": 0, "rdi": 0, "rbp": 0,
                "rsp": KVA + 0x7F00 - 0x100 * cpu, "rip": HANDLER + 0x10 * cpu, "efl": 0x202,
                "cs": 0x10, "ss": 0x18, "ds": 0x2B, "es": 0x2B, "fs": 0x53, "gs": 0x2B, "cr0": 0x80050033,
                "cr2": 0, "cr3": base, "cr4": 0x3506F8 | 0x2000, "cr8": 0, "dr0": 0, "dr1": 0, "dr2": 0,
                "dr3": 0, "dr6": 0xFFFF0FF0, "dr7": 0x400, "gdtr": KVA + 0x6000, "gdtl": 0x57,
                "idtr": KVA + 0x6100, "idtl": 0xFFF, "tr": 0x40, "ldtr": 0}
        for n in range(8, 16):
            regs["r%d" % n] = n
        vmcs = vmcs_pa if cpu == 0 else base + 0x4000 + 0x1000 * cpu
        cpu_specs.append({"regs": regs, "msrs": {} if cpu in no_vmx_cpus else msrs,
                          # on-die copy: what VMREAD returns differs from the page in RAM
                          "vmcs": {"current": vmcs, "vmread": {"0x681e": memory_rip + 0x1000 + cpu}}})
    spec: Dict[str, Any] = {
        "mode": mode, "cpus": cpu_specs, "thread_ids": thread_ids or list(range(cpus)), "current": 0,
        "modules": [{"name": "nt", "base": KVA, "size": 0x8000}, {"name": "hv", "base": KVA + 0x8000, "size": 0x8000}],
        "symbols": {"nt!MmPhysicalMemoryBlock": KVA + 0x4000, "nt!KeNumberProcessors": KVA + 0x4080,
                    "hv!VmxVmexitHandler": HANDLER, "hv!g_GuestState": KVA + 0x8200},
        "types": {"hv!_VIRTUAL_MACHINE_STATE": {"size": 0x10, "fields": {"VmxonRegion": 0, "VmcsRegion": 8}}},
        "events": [list(e) for e in events or []],
    }
    if json_ready:
        spec["memory"] = [{"pa": 0, "hex": image.hex()}, {"pa": base, "hex": bytes(region).hex()}]
    else:
        spec["image"] = image
        spec["memory"] = [{"pa": base, "data": bytes(region)}]
    return spec


def load_standin() -> Any:
    """A fresh copy of the stand-in module (its state is module-global)."""
    spec = importlib.util.spec_from_file_location("pykd", str(STANDIN / "pykd.py"))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture
def pykd(monkeypatch):
    """The stand-in, importable as ``pykd`` for the duration of a test."""
    monkeypatch.delenv("VTDBG_STANDIN_SPEC", raising=False)
    module = load_standin()
    monkeypatch.setitem(sys.modules, "pykd", module)
    yield module
    module._install(None)


def session(pykd: Any, **kwargs: Any) -> Any:
    """Install a simulator built from :func:`build_spec` and return it."""
    return pykd._install(pykd.Simulator.from_spec(build_spec(**kwargs)))


def cli(target: Any, *argv: str) -> Tuple[int, str, str]:
    """Run the CLI in-process against an already open target."""
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(target_uri="test:", opener=lambda uri: target)
    status = run(list(argv), out, err, context=ctx)
    return status, out.getvalue(), err.getvalue()


# -- the target contract ----------------------------------------------------------------------
def _contract_setup(pykd: Any, mode: str) -> ContractSetup:
    _, image, truth = lab()
    sim = session(pykd, cpus=3, mode=mode)
    base = kernel_base(image)
    vmcs_pa = truth["vmcs_pa"]
    known = {0: image[:16], vmcs_pa: image[vmcs_pa:vmcs_pa + 0x1000], len(image) - 8: image[-8:],
             base + 0x4100: bytes(sim.phys[base + 0x4100:base + 0x4140])}
    return ContractSetup(PykdTarget(pykd), known, unreadable=(base + 0x10000 - 8, 16))


class TestLiveSession(TargetContract):
    @pytest.fixture
    def setup(self, pykd, tmp_path):
        made = _contract_setup(pykd, "live")
        yield made
        made.target.close()


class TestDumpSession(TargetContract):
    @pytest.fixture
    def setup(self, pykd, tmp_path):
        made = _contract_setup(pykd, "dump")
        yield made
        made.target.close()


# -- the backend itself -----------------------------------------------------------------------
def test_without_pykd_the_error_is_clean(monkeypatch):
    from vtdbg.target.open import open_target

    monkeypatch.setitem(sys.modules, "pykd", None)  # `import pykd` now raises ImportError
    with pytest.raises(TargetError) as caught:
        open_target("kd:net:port=50000,key=1.2.3.4")
    assert str(caught.value) == NOT_INSTALLED
    status, _, err = cli_uri("kd:net:port=50000,key=1.2.3.4", "vmcs", "--at", "0x1000")
    assert status == 2 and NOT_INSTALLED in err


def cli_uri(uri: str, *argv: str) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(["--target", uri] + list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


def test_capabilities_follow_the_session(pykd):
    session(pykd, mode="live")
    live = PykdTarget(pykd)
    assert live.capabilities == LIVE_CAPS and live.kind == "kd"
    session(pykd, mode="dump")
    dump = PykdTarget(pykd)
    assert dump.capabilities == DUMP_CAPS and dump.kind == "dump"
    assert not dump.has(Capability.MSR_READ) and not dump.has(Capability.RESUME)
    with pytest.raises(CapabilityError):
        dump.read_msr(0x480)
    with pytest.raises(CapabilityError):
        dump.break_at(HANDLER, lambda cpu: True)
    session(pykd, mode="user")
    with pytest.raises(TargetError, match="kernel session"):
        PykdTarget(pykd)
    pykd._install(None)
    with pytest.raises(TargetError, match="not initialized"):
        PykdTarget(pykd)


def test_a_page_is_one_loadbytes_call_returning_bytes(pykd):
    _, image, truth = lab()
    sim = session(pykd)
    target = PykdTarget(pykd)
    sim.calls.clear()
    page = target.read_phys(truth["vmcs_pa"], 0x1000)
    assert isinstance(page, bytes) and page == image[truth["vmcs_pa"]:truth["vmcs_pa"] + 0x1000]
    assert sim.calls == ["loadBytes"]


@pytest.mark.parametrize("exc_name", ["MemoryException", "DbgException"])
def test_pykd_read_failures_become_memory_read_errors(pykd, exc_name):
    sim = session(pykd)
    target = PykdTarget(pykd)
    sim.inject("loadBytes", getattr(pykd, exc_name)("Memory exception at 0x1000 target physical address"))
    with pytest.raises(MemoryReadError, match="0x1000"):
        target.read_phys(0x1000, 16)
    with pytest.raises(MemoryReadError):
        target.read_phys(-1, 16)
    with pytest.raises(MemoryReadError):
        target.read_virt(KVA + 0x10000, 8)  # not mapped


def test_virtual_reads_use_pykd_or_the_page_walk(pykd):
    _, image, truth = lab()
    sim = session(pykd)
    target = PykdTarget(pykd)
    base = kernel_base(image)
    sim.calls.clear()
    # current context: one pykd virtual read for a range crossing a page boundary
    data = target.read_virt(KVA + 0x4FF0, 0x20)
    assert data == bytes(sim.phys[base + 0x4FF0:base + 0x5010])
    assert sim.calls == ["loadBytes"]
    # another address space (the hypervisor's host CR3): our walk, physical reads only
    host_cr3 = truth["host_cr3"]
    sim.cpus[1].regs["cr3"] = host_cr3
    sim.current = 1
    va = next((v for v in (truth["vmcs_pa"], 0x1000, 0x100000, 0x200000) if sim.translate(v) is not None), None)
    sim.current = 0
    if va is None:
        pytest.skip("the lab's host page tables map none of the probed addresses")
    sim.calls.clear()
    walked = target.read_virt(va, 64, cr3=host_cr3)
    sim.current = 1
    assert walked == sim.read_virt(va, 64)
    assert set(sim.calls) == {"loadBytes"} and len(sim.calls) >= 2


def test_cpu_selection_maps_engine_thread_ids_and_always_restores(pykd):
    sim = session(pykd, cpus=4, thread_ids=[5, 9, 2, 7])
    sim.current = 1
    target = PykdTarget(pykd)
    assert target.cpu_count() == 4 and target.current_cpu() == 1
    with target.select_cpu(2):
        assert sim.current == 2 and pykd.getCurrentThreadId() == 2 and target.current_cpu() == 2
        assert target.registers()["rip"] == HANDLER + 0x20
    assert sim.current == 1
    with pytest.raises(RuntimeError):
        with target.select_cpu(3):
            raise RuntimeError("boom")
    assert sim.current == 1
    sim.inject("setCurrentThreadId", pykd.DbgException("engine said no"))
    with pytest.raises(TargetError, match="cannot switch to CPU 0"):
        with target.select_cpu(0):
            pass
    assert sim.current == 1
    with pytest.raises(TargetError):
        with target.select_cpu(4):
            pass


def test_cpu_count_falls_back_to_ke_number_processors(pykd):
    sim = session(pykd, cpus=3)
    sim.inject("getNumberThreads", pykd.DbgException("no"))
    assert PykdTarget(pykd).cpu_count() == 3


def test_registers_msrs_and_writes(pykd):
    _, _, truth = lab()
    sim = session(pykd, cpus=2, no_vmx_cpus=(1,))
    target = PykdTarget(pykd)
    regs = target.registers()
    assert regs["rflags"] == 0x202 and regs["cr3"] == sim.cpus[0].regs["cr3"] and "efl" not in regs
    assert target.read_msr(0x480) == truth["msrs"]["0x480"]
    with target.select_cpu(1):
        assert target.registers()["rcx"] == 1
        with pytest.raises(TargetError, match="MSR 0x480 on CPU 1"):
            target.read_msr(0x480)
    generation = target.stop_generation
    target.set_register("rflags", 0x246)
    assert sim.cpus[0].regs["efl"] == 0x246 and target.stop_generation > generation
    target.write_phys(0x5000, b"\x01\x02")
    assert bytes(sim.phys[0x5000:0x5002]) == b"\x01\x02"


def test_symbols_modules_and_types(pykd):
    _, image, _ = lab()
    session(pykd)
    target = PykdTarget(pykd)
    assert target.modules() == [("nt", KVA, 0x8000), ("hv", KVA + 0x8000, 0x8000)]
    assert target.symbol("hv!VmxVmexitHandler") == HANDLER
    assert target.symbol("hv!NoSuchThing") is None and target.symbol("nomodule!x") is None
    assert target.field_offset("hv!_VIRTUAL_MACHINE_STATE", "VmcsRegion") == 8
    assert target.field_offset("hv!_VIRTUAL_MACHINE_STATE", "Nope") is None
    assert target.field_offset("hv!_NOPE", "VmcsRegion") is None
    assert target.phys_ranges() == [(0, len(image)), (kernel_base(image), 0x10000)]


def test_breakpoints_stay_alive_fire_per_cpu_and_are_removed(pykd):
    sim = session(pykd, cpus=2, events=[(0, HANDLER), (1, HANDLER), (0, HANDLER)])
    target = PykdTarget(pykd)
    seen: List[int] = []
    handle = target.break_at(HANDLER, lambda cpu: seen.append(cpu) or cpu == 1)
    gc.collect()  # the owning pykd object must survive: we hold it
    assert pykd.getNumberBreakpoints() == 1
    target.resume()
    assert seen == [0, 1] and target.current_cpu() == 1 and sim.current == 1
    handle.remove()
    handle.remove()
    assert pykd.getNumberBreakpoints() == 0
    target.break_at(HANDLER, lambda cpu: True)
    target.close()
    assert pykd.getNumberBreakpoints() == 0


def test_an_exception_in_a_breakpoint_handler_stops_and_is_raised(pykd, capsys):
    sim = session(pykd, cpus=2, events=[(1, HANDLER), (0, HANDLER)])
    target = PykdTarget(pykd)
    before = sim.snapshot()

    def explode(cpu: int) -> bool:
        raise ValueError("handler failed on cpu %d" % cpu)

    handle = target.break_at(HANDLER, explode)
    try:
        with pytest.raises(ValueError, match="cpu 1"):
            target.resume()
    finally:
        handle.remove()
    assert sim.events == [(0, HANDLER)]  # it stopped at the first hit
    assert sim.snapshot()["breakpoints"] == before["breakpoints"] == []
    assert "Traceback" not in capsys.readouterr().err  # we caught it, pykd printed nothing


def test_step_is_trace_and_dumps_cannot_run(pykd):
    sim = session(pykd)
    target = PykdTarget(pykd)
    sim.calls.clear()
    target.step()
    assert sim.calls[0] == "trace" and sim.cpus[0].regs["rip"] == HANDLER + 1
    session(pykd, mode="dump")
    dump = PykdTarget(pykd)
    for call in (dump.resume, dump.step):
        with pytest.raises(CapabilityError):
            call()


def test_open_kd_attaches_and_detaches(pykd, monkeypatch):
    from vtdbg.target.open import open_target

    sim = pykd.Simulator.from_spec(build_spec())
    pykd._prepare_attach(sim)
    target = open_target("kd:net:port=50000,key=1.2.3.4")
    assert sim.attach_options == "net:port=50000,key=1.2.3.4" and target.has(Capability.LIVE)
    target.close()
    target.close()
    assert sim.detached
    pykd._prepare_attach(None)
    pykd._install(None)
    with pytest.raises(TargetError, match="cannot attach"):
        open_target("kd:net:port=1,key=2")
    pykd._prepare_attach(pykd.Simulator.from_spec(build_spec()))
    local = open_target("kd:local")
    assert local.capabilities == Capability.PHYS_READ | Capability.VIRT_READ | Capability.SYMBOLS
    monkeypatch.setattr(sys, "stdout", _DmlStdout())
    with pytest.raises(UsageError, match="inside WinDbg"):
        open_target("kd:net:port=50000,key=1.2.3.4")


class _DmlStdout(io.StringIO):
    """A stdout that looks like the bootstrapper's (it has writedml)."""

    def writedml(self, text: str) -> None:
        self.write("[DML]" + text)


def test_windbg_session_needs_windbg(pykd, monkeypatch):
    from vtdbg.target.pykd_backend import open_windbg_session

    session(pykd)
    with pytest.raises(TargetError, match="not running inside WinDbg"):
        open_windbg_session()
    monkeypatch.setattr(sys, "stdout", _DmlStdout())
    assert open_windbg_session().kind == "kd"


# -- commands through the backend ------------------------------------------------------------
def test_vmcs_at_is_one_bulk_read_and_matches_the_image_backend(pykd):
    _, image, truth = lab()
    sim = session(pykd)
    recorder = RecordingTarget(PykdTarget(pykd))
    status, out, err = cli(recorder, "vmcs", "--at", hex(truth["vmcs_pa"]), "--json")
    assert status == 0, err
    assert dict(recorder.counts) == {"read_phys": 1}
    doc = json.loads(out)
    status, expected, _ = cli(ImageTarget.from_bytes(image), "vmcs", "--at", hex(truth["vmcs_pa"]), "--json")
    assert doc["fields"] == json.loads(expected)["fields"] and doc["source"] == "memory"
    # the memory copy is what we show, and it is not what VMREAD would say: say so
    assert doc["fields"]["GUEST_RIP"] != sim.vmread(0, GUEST_RIP)
    assert STALE_VMCS_WARNING in doc["warnings"] and "may be stale: the CPU can keep the current VMCS on-die" in err
    # the same command without the recorder: pykd calls = 2 session probes + 1 loadBytes
    sim.calls.clear()
    status, _, _ = cli(PykdTarget(pykd), "vmcs", "--at", hex(truth["vmcs_pa"]))
    assert status == 0
    assert sim.calls == ["isKernelDebugging", "isDumpAnalyzing", "loadBytes"]


def test_vmcs_from_a_dump_is_not_called_stale(pykd):
    _, _, truth = lab()
    session(pykd, mode="dump")
    status, out, err = cli(PykdTarget(pykd), "vmcs", "--at", hex(truth["vmcs_pa"]), "--json")
    assert status == 0 and STALE_VMCS_WARNING not in out + err


@pytest.mark.parametrize("cpus", [2, 4])
def test_vmcs_cpu_all_on_a_multi_cpu_target(pykd, cpus):
    _, image, truth = lab()
    session(pykd, cpus=cpus)
    status, out, err = cli(PykdTarget(pykd), "vmcs", "--cpu", "all", "--json")
    assert status == 0, err
    docs = json.loads(out)
    assert [d["cpu"] for d in docs] == list(range(cpus))
    base = kernel_base(image)
    assert [d["address"] for d in docs] == [truth["vmcs_pa"]] + [base + 0x4000 + 0x1000 * c for c in range(1, cpus)]
    assert all(d["fields"] == docs[0]["fields"] for d in docs)


def _expected_caps_indices(msrs: Dict[int, int]) -> List[int]:
    """The SDM rules of the brief, written independently of the code under test."""
    out = [0x3A] + list(range(0x480, 0x48B))
    proc, exit_, basic = msrs[0x482], msrs[0x483], msrs[0x480]
    proc2 = msrs.get(0x48B, 0)
    if proc >> 63 & 1:
        out.append(0x48B)
        if proc2 >> 33 & 1 or proc2 >> 37 & 1:
            out.append(0x48C)
    if basic >> 55 & 1:
        out += [0x48D, 0x48E, 0x48F, 0x490]
    if proc >> 63 & 1 and proc2 >> 45 & 1:
        out.append(0x491)
    if proc >> 49 & 1:
        out.append(0x492)
    if exit_ >> 63 & 1:
        out.append(0x493)
    return sorted(out)


def test_caps_reads_exactly_the_msrs_the_cpu_reports_and_saves_them(pykd, tmp_path):
    _, _, truth = lab()
    gt = {int(k, 16): v for k, v in truth["msrs"].items()}
    sim = session(pykd, cpus=2)
    sim.current = 1
    target = PykdTarget(pykd)
    saved = tmp_path / "caps.json"
    status, out, err = cli(target, "caps", "--save", str(saved), "--json")
    assert status == 0, err
    doc = json.loads(out)
    expected = _expected_caps_indices(gt)
    assert doc["cpu"] == 1 and sorted(int(k, 16) for k in doc["msrs"]) == expected
    assert sorted(set(sim.msr_reads)) == expected  # nothing else was read (it would #GP)
    assert doc["msrs"]["0x480"]["name"] == "IA32_VMX_BASIC" and doc["msrs"]["0x480"]["value"] == gt[0x480]
    flat = json.loads(saved.read_text())
    assert flat == [dict({"cpu": 1}, **{"0x%x" % i: gt[i] for i in expected})]
    from vtdbg.core.check.caps import Caps

    assert Caps.load(str(saved), cpu=1).msrs == {i: gt[i] for i in expected}
    assert sim.current == 1


def test_caps_rules_skip_msrs_the_controls_do_not_announce(pykd):
    _, _, truth = lab()
    sim = session(pykd, cpus=1)
    msrs = sim.cpus[0].msrs
    msrs[0x482] &= ~(1 << 63) & ~(1 << 49)  # no secondary, no tertiary controls
    msrs[0x480] &= ~(1 << 55)  # no TRUE_* MSRs
    msrs[0x483] |= 1 << 63  # but secondary exit controls are allowed
    msrs[0x493] = 0x5
    status, out, err = cli(PykdTarget(pykd), "caps", "--json")
    assert status == 0, err
    read = sorted(set(sim.msr_reads))
    assert read == [0x3A] + list(range(0x480, 0x48B)) + [0x493]
    assert "0x48b" in json.loads(out)["not_reported"]


def test_caps_cpu_all_reports_a_failing_cpu_and_refuses_dumps(pykd):
    session(pykd, cpus=3, no_vmx_cpus=(1,))
    status, out, err = cli(PykdTarget(pykd), "caps", "--cpu", "all", "--json")
    docs = json.loads(out)
    assert status == 0 and [d["cpu"] for d in docs] == [0, 1, 2]
    assert "error" in docs[1] and "0x480" in docs[1]["error"] and "msrs" in docs[2]
    session(pykd, cpus=2, no_vmx_cpus=(0, 1))
    status, out, _ = cli(PykdTarget(pykd), "caps", "--cpu", "all", "--json")
    assert status == 2
    session(pykd, mode="dump")
    status, _, err = cli(PykdTarget(pykd), "caps")
    assert status == 2 and "msr_read" in err and "dump" in err


COMMANDS = [
    ("vmcs", "--at", "VMCS"),
    ("vmcs", "--cpu", "all"),
    ("vmcs", "--cpu", "1"),
    ("caps",),
    ("caps", "--cpu", "all"),
    ("caps", "--cpu", "2"),
    # the rest of the target commands, so the whole set runs against the stand-in
    ("vmxon", "--at", "VMXON"),
    ("vmxon", "--check", "--at", "VMXON"),
    ("check", "--at", "VMCS"),
    ("check", "--cpu", "all"),
    ("regions", "--cpu", "all"),
    ("ept", "--at", "VMCS", "0x600123"),
    ("msr-bitmap", "--at", "VMCS"),
    ("io-bitmap", "--at", "VMCS"),
    ("scan",),
    ("triage",),
]
FAULTS = [
    None,
    ("loadBytes", "MemoryException", 0),
    ("loadBytes", "DbgException", 3),
    ("rdmsr", "DbgException", 0),
    ("rdmsr", "DbgException", 14),
    ("setCurrentThreadId", "DbgException", 1),
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
@pytest.mark.parametrize("fault", FAULTS, ids=[str(f) for f in FAULTS])
def test_commands_leave_the_target_as_they_found_it(pykd, argv, fault):
    _, _, truth = lab()
    sim = session(pykd, cpus=3)
    sim.current = 1
    before = sim.snapshot()
    if fault is not None:
        name, exc_name, after = fault
        sim.inject(name, getattr(pykd, exc_name)("injected %s failure" % name), after)
    places = {"VMCS": hex(truth["vmcs_pa"]), "VMXON": hex(truth["vmxon_pa"])}
    args = [places.get(a, a) for a in argv]
    status, out, err = cli(PykdTarget(pykd), *args, "--json")
    assert status in (0, 2), err
    if fault is None:
        assert status == 0, err  # without a fault every command works on the stand-in
    assert "internal error" not in err and "Traceback" not in err
    assert sim.snapshot() == before


def test_an_exception_in_a_breakpoint_callback_leaves_no_breakpoint(pykd):
    sim = session(pykd, cpus=2, events=[(1, HANDLER)])
    before = sim.snapshot()
    target = PykdTarget(pykd)

    def handler(cpu: int) -> bool:
        raise KeyError(cpu)

    with pytest.raises(KeyError):
        with target.select_cpu(0):
            handle = target.break_at(HANDLER, handler)
            try:
                target.resume()
            finally:
                handle.remove()
    target.close()
    after = sim.snapshot()
    assert after["breakpoints"] == [] and after["regs"][0] == before["regs"][0]


# -- DML ------------------------------------------------------------------------------------
def test_dml_links_escaping_and_layout():
    result = Result({}, [
        Heading("VMCS <1> & co"),
        KeyValues([["VMCS", Link("0x21000", "phys", 0x21000)], ["exit", Link("48", "exit_reason", 48)]]),
        Table(["field", "value"], [["GUEST_RIP", Link("0xb8b2", "guest_rip", 0xB8B2)],
                                   ["name", 'a "quoted" <b> \u2192 \u00e9']],
              title="Guest"),
        KeyValues([["CPU", Link("2", "cpu", 2)], ["more", Link("run", "command", "vtdbg exit-reason 1")]]),
        Text("careful", style="warning"),
    ])
    ctx = DmlContext("!py -3.9 -m vtdbg", ["vmcs", "--cpu", "all", "--all", "--target", "kd:net:a b"])
    dml = render_dml(result, ctx)
    assert dml.isascii()
    assert "<b>VMCS &lt;1&gt; &amp; co</b>" in dml
    assert '<link cmd="!dq 0x21000">0x21000</link>' in dml
    assert '<link cmd="!py -3.9 -m vtdbg exit-reason 48">48</link>' in dml
    assert '<link cmd="u 0xb8b2">0xb8b2</link>' in dml
    assert '<link cmd="~2s; !py -3.9 -m vtdbg vmcs --all --target &quot;kd:net:a b&quot;">2</link>' in dml
    assert '<link cmd="!py -3.9 -m vtdbg exit-reason 1">run</link>' in dml
    assert 'a "quoted" &lt;b&gt; -&gt; e' in dml
    assert '<col fg="warnfg">careful</col>' in dml
    # columns line up by visible width: the link row pads like the plain row
    lines = dml.splitlines()
    rip = next(line for line in lines if line.startswith("GUEST_RIP"))
    name = next(line for line in lines if line.startswith("name"))
    assert rip.index("<link") == name.index("a ")


# -- WinDbg hosting: `!py` emulated in a fresh process per command ----------------------------
def _pythons() -> List[str]:
    # the interpreter running the suite: CI runs the suite on 3.8, 3.9 and the default
    # python3, each in a venv that has vtdbg's dependencies (a bare pyenv Python has not)
    return [sys.executable]


def _py(python: str, tmp_path: Path, argv: List[str], spec: Dict[str, Any]) -> Tuple[int, str, str]:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.update({"VTDBG_STANDIN_SPEC": str(spec_path), "PYTHONPATH": os.pathsep.join([str(ROOT), str(STANDIN)]),
                "PATH": os.pathsep.join([str(ROOT / "scripts"), env.get("PATH", "")]), "NO_COLOR": "1",
                "VTDBG_HOME": str(tmp_path / "home")})
    proc = subprocess.run([python, str(STANDIN / "windbg_py.py")] + argv, cwd=str(tmp_path), env=env,
                          capture_output=True, timeout=300)
    return proc.returncode, proc.stdout.decode("ascii"), proc.stderr.decode("ascii")


def _dml_chunks(out: str) -> Tuple[List[str], str]:
    """(DML chunks, the plain text around them)."""
    chunks, plain, rest = [], [], out
    while "\x1e" in rest:
        before, rest = rest.split("\x1e", 1)
        chunk, rest = rest.split("\x1f", 1)
        plain.append(before)
        chunks.append(chunk)
    plain.append(rest)
    return chunks, "".join(plain)


@pytest.mark.parametrize("python", _pythons())
@pytest.mark.parametrize("mode", [["-m", "vtdbg"], ["vtdbg"]], ids=["module", "script"])
def test_py_vtdbg_runs_inside_emulated_windbg(python, mode, tmp_path):
    _, _, truth = lab()
    spec = build_spec(cpus=2, json_ready=True)
    status, out, err = _py(python, tmp_path, mode + ["vmcs", "--at", hex(truth["vmcs_pa"])], spec)
    assert status == 0, err
    chunks, plain = _dml_chunks(out)
    assert len(chunks) == 1 and "<link" not in plain
    dml = chunks[0]
    version = "-%s.%s" % tuple(subprocess.check_output(
        [python, "-c", "import sys; print(*sys.version_info[:2])"]).decode().split())
    prefix = "!py %s %s" % (version, " ".join(mode))
    assert '<link cmd="!dq 0x%x">' % truth["vmcs_pa"] in dml
    assert '<link cmd="u 0x' in dml and '<link cmd="%s exit-reason ' % prefix in dml
    assert "may be stale: the CPU can keep the current VMCS on-die" in err
    # JSON stays plain, and the default target is the session (no --target needed)
    status, out, err = _py(python, tmp_path, mode + ["caps", "--cpu", "all", "--json"], spec)
    assert status == 0, err
    assert [d["cpu"] for d in json.loads(out)] == [0, 1]
    # an error message with non-ASCII text must not crash the ASCII console
    status, out, err = _py(python, tmp_path, mode + ["vmcs", "--image", "/nonexistent/\u00e9t\u00e9.img"], spec)
    assert status == 0 and "vtdbg: error:" in err and "Traceback" not in err


def test_outside_windbg_nothing_imports_pykd(monkeypatch, pykd):
    from vtdbg.frontends.windbg import inside_windbg

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert not inside_windbg()
    monkeypatch.setattr(sys, "stdout", _DmlStdout())
    assert inside_windbg()
