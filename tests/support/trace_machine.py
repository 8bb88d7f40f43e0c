"""A simulated multi-CPU hypervisor on the pykd stand-in, for the trace tests and the benchmark.

The stand-in (tests/pykd_standin/pykd.py) delivers queued (cpu, address) events to
breakpoints.  :func:`scripted_simulator` subclasses its Simulator so that each queued event
can also change the machine first, the way a real VM exit does: the exiting CPU's VMCS page
gets the exit's fields (Bochs 2.7 layout, otherwise the lab's plausible baseline VMCS) and
its registers the guest's RAX/RCX.  Every exit is delivered at the entry stub, then at the
per-reason handler function (when the profile names one), then at the resume function.

The machine: kernel pages mapped at KVA through a 4-level table, a driver module ``simhv``
with symbols for the entry stub, two per-reason handlers and the resume function, a per-CPU
array ``g_Vcpus`` holding each CPU's VMCS physical address, and the matching user profile
(:func:`write_profile`), so `vtdbg trace` finds everything as it would on a real target.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from tests.support.lab import lab_vmcs_values
from vtdbg.arch.fields import lookup_field
from vtdbg.layouts.registry import get_layout

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "pykd_standin" / "pykd.py"

KVA = 0xFFFFF80000000000
ENTRY = KVA + 0x100
C_HANDLER = KVA + 0x180
HANDLE_CPUID = KVA + 0x200
HANDLE_MSR_READ = KVA + 0x280
RESUME = KVA + 0x300
VCPUS = KVA + 0x1000
FRAMES = KVA + 0x2000
FRAME_ORDER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
               "r14", "r15")
VCPU_SIZE = 0x20
VMCS_BASE = 0x40000
GUEST_CR3 = 0x5000
_PML4, _PDPT, _PD, _PT = 0x1000, 0x2000, 0x3000, 0x4000
_KERNEL_PHYS = 0x10000
_MEMORY = 0x80000

HANDLERS = {"CPUID": HANDLE_CPUID, "MSR_READ": HANDLE_MSR_READ}
REASONS = {"EXCEPTION_NMI": 0, "EXTERNAL_INTERRUPT": 1, "CPUID": 10, "HLT": 12, "INVLPG": 14, "RDTSC": 16,
           "VMCALL": 18, "CR_ACCESS": 28, "DR_ACCESS": 29, "IO_INSTRUCTION": 30, "MSR_READ": 31, "MSR_WRITE": 32,
           "INVALID_STATE": 33, "EPT_VIOLATION": 48}


def load_standin() -> Any:
    """A fresh copy of the stand-in module (its state is module-global)."""
    spec = importlib.util.spec_from_file_location("pykd", str(STANDIN))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Exit:
    """One scripted VM exit: the CPU, the reason name, and the fields that make it."""

    cpu: int
    reason: str
    qualification: int = 0
    rax: int = 0
    rcx: int = 0
    intr_info: int = 0
    gpa: int = 0
    rip: int = 0x401000
    entry_failure: bool = False
    extra: Dict[str, int] = field(default_factory=dict)

    @property
    def number(self) -> int:
        """Basic exit reason."""
        return REASONS[self.reason]

    def vmcs_values(self) -> Dict[int, int]:
        """VMREAD values of the VMCS right after this exit."""
        named = {
            "VM_EXIT_REASON": self.number | (1 << 31 if self.entry_failure else 0),
            "EXIT_QUALIFICATION": self.qualification, "GUEST_RIP": self.rip, "GUEST_RSP": 0x7FF000,
            "VM_EXIT_INTR_INFO": self.intr_info, "GUEST_PHYSICAL_ADDRESS": self.gpa,
            "VM_EXIT_INSTRUCTION_LEN": 2, "HOST_RIP": ENTRY, "GUEST_CR3": GUEST_CR3,
        }
        named.update(self.extra)
        values = lab_vmcs_values()
        values.update({lookup_field(k).encoding: v for k, v in named.items()})
        return values


#: a varied run on three CPUs (every filter in the tests selects a known subset)
DEFAULT_SCRIPT: Tuple[Exit, ...] = (
    Exit(0, "CPUID", rax=0),
    Exit(1, "CPUID", rax=0x40000000),
    Exit(2, "CPUID", rax=0x40000000),
    Exit(0, "MSR_READ", rcx=0x174),
    Exit(2, "MSR_READ", rcx=0xC0000080),
    Exit(1, "MSR_WRITE", rcx=0xC0000080),
    Exit(1, "IO_INSTRUCTION", qualification=0x710048),      # IN AL, 0x71
    Exit(0, "IO_INSTRUCTION", qualification=0x800040),      # OUT 0x80, AL
    Exit(2, "IO_INSTRUCTION", qualification=0x710048),      # IN AL, 0x71
    Exit(0, "CR_ACCESS", qualification=0x3),                # MOV CR3, RAX
    Exit(1, "CR_ACCESS", qualification=0x18),               # MOV RAX, CR8
    Exit(2, "EXCEPTION_NMI", intr_info=0x80000B0E, qualification=0x800123),  # #PF
    Exit(0, "EXCEPTION_NMI", intr_info=0x80000306),         # #UD
    Exit(1, "EXCEPTION_NMI", intr_info=0x80000202),         # NMI
    Exit(2, "EPT_VIOLATION", qualification=0x181, gpa=0x600123),
    Exit(0, "EPT_VIOLATION", qualification=0x182, gpa=0x7000),
    Exit(1, "INVALID_STATE", entry_failure=True),
    Exit(0, "VMCALL", rax=0x600D),
    Exit(2, "HLT"),
)


def _q(image: bytearray, pa: int, value: int) -> None:
    image[pa:pa + 8] = value.to_bytes(8, "little")


def spec(cpus: int = 3) -> Dict[str, Any]:
    """The stand-in spec of the machine (before any exit)."""
    image = bytearray(_MEMORY)
    _q(image, _PML4 + ((KVA >> 39) & 0x1FF) * 8, _PDPT | 3)
    _q(image, _PDPT, _PD | 3)
    _q(image, _PD, _PT | 3)
    for i in range(16):
        _q(image, _PT + 8 * i, (_KERNEL_PHYS + 0x1000 * i) | 3)
    layout = get_layout("bochs_2_7")
    for cpu in range(cpus):
        _q(image, _KERNEL_PHYS + 0x1000 + VCPU_SIZE * cpu + 8, VMCS_BASE + 0x1000 * cpu)
        page = layout.build_page(Exit(cpu, "HLT").vmcs_values(), launch_state="launched")
        image[VMCS_BASE + 0x1000 * cpu:VMCS_BASE + 0x1000 * (cpu + 1)] = page
    regs = []
    for cpu in range(cpus):
        regs.append({"regs": {"rax": 0, "rbx": 0, "rcx": 0, "rdx": 0, "rsi": 0, "rdi": 0, "rbp": 0,
                              "rsp": KVA + 0x8000 - 0x100 * cpu, "rip": KVA + 0x400, "efl": 0x202, "cs": 0x10,
                              "ss": 0x18, "cr0": 0x80050033, "cr3": _PML4, "cr4": 0x2020}})
    return {
        "mode": "live", "image": bytes(image), "cpus": regs, "thread_ids": list(range(cpus)), "current": 0,
        "modules": [{"name": "simhv", "base": KVA, "size": 0x10000}],
            "symbols": {"simhv!g_Vcpus": VCPUS, "simhv!SimExitEntry": ENTRY, "simhv!SimExitHandler": C_HANDLER,
                    "simhv!SimHandleCpuid": HANDLE_CPUID,
                    "simhv!SimHandleMsrRead": HANDLE_MSR_READ, "simhv!SimResume": RESUME},
    }


PROFILE = {
    "schema": "vtdbg-profile/1", "name": "simhv", "title": "vtdbg test hypervisor (simulated)",
    "verified": False, "sources": ["tests/support/trace_machine.py"], "modules": ["simhv"],
    "detect": {"symbols": ["g_Vcpus", "SimExitEntry"]},
    "per_cpu": {"type": "VCPU", "element_size": VCPU_SIZE, "how": "g_Vcpus is an array of VCPU",
                "path": [{"symbol": ["g_Vcpus"]}, {"index": "element"}], "count": "cpu_count",
                "fields": {"vmcs": {"names": ["VmcsPhysical"], "offset": 8, "size": 8, "kind": "physical"}}},
    "exit_handler": {"entry": ["SimExitEntry"], "handler": ["SimExitHandler"], "resume": ["SimResume"],
                     "root_only": ["SimExitEntry", "SimHandleCpuid", "SimHandleMsrRead", "SimResume"]},
    "exit_reason_handlers": {"CPUID": "SimHandleCpuid", "MSR_READ": "SimHandleMsrRead"},
    "register_frame": {"pointer": "rcx: first argument of SimExitHandler", "slot_size": 8,
                       "order": list(FRAME_ORDER)},
}


def write_profile(home: Path) -> Path:
    """The machine's profile as a user profile in ``home`` ($VTDBG_HOME)."""
    folder = home / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "simhv.json"
    path.write_text(json.dumps(PROFILE))
    return path


def scripted_simulator(pykd: Any, script: Tuple[Exit, ...] = DEFAULT_SCRIPT, cpus: int = 3,
                       disconnect_after: Optional[int] = None) -> Any:
    """Install and return a simulator that plays ``script`` (see the module docstring).
    ``disconnect_after``: the target vanishes (go() answers NoDebuggee) after that many exits."""
    layout = get_layout("bochs_2_7")

    class Scripted(pykd.Simulator):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.script: List[Tuple[int, int, Optional[Callable[[Any], None]], str]] = []
            self.delivered: List[Tuple[int, int]] = []

        def run(self) -> Any:
            # the stand-in's delivery loop, plus: apply the exit to the machine first
            while self.script:
                cpu, address, effect, tag = self.script.pop(0)
                if tag == "disconnect":
                    return pykd.executionStatus.NoDebuggee
                if effect is not None:
                    effect(self)
                self.delivered.append((cpu, address))
                hits = [b for b in self.breakpoints.values() if b["offset"] == address]
                if not hits:
                    continue
                self.current = cpu
                self.cpus[cpu].regs["rip"] = address
                result = pykd.eventResult.NoChange
                for record in list(hits):
                    owner = record["owner"]() if record["owner"] is not None else None
                    outcome = pykd._call_handler(self, owner) if owner is not None else pykd.eventResult.NoChange
                    if outcome != pykd.eventResult.NoChange:
                        result = outcome
                if result == pykd.eventResult.Proceed:
                    continue
                return pykd.executionStatus.Break
            return pykd.executionStatus.Break

    sim = Scripted.from_spec(spec(cpus))

    def effect_of(item: Exit) -> Callable[[Any], None]:
        def apply(machine: Any) -> None:
            base = VMCS_BASE + 0x1000 * item.cpu
            machine.phys[base:base + 0x1000] = layout.build_page(item.vmcs_values(), launch_state="launched")
            machine.cpus[item.cpu].regs.update(rax=item.rax, rcx=item.rcx)
        return apply

    def frame_of(item: Exit) -> Callable[[Any], None]:
        def apply(machine: Any) -> None:
            # the entry stub saved the guest GPRs on its stack and passes the frame in RCX
            guest = dict(machine.cpus[item.cpu].regs)
            frame = FRAMES + 0x100 * item.cpu
            pa = _KERNEL_PHYS + (frame - KVA)
            for i, name in enumerate(FRAME_ORDER):
                value = guest.get(name, 0) if name != "rsp" else guest.get("rbp", 0)
                machine.phys[pa + 8 * i:pa + 8 * i + 8] = value.to_bytes(8, "little")
            machine.cpus[item.cpu].regs.update(rcx=frame, rax=0xDEAD)
        return apply

    for number, item in enumerate(script):
        if disconnect_after is not None and number == disconnect_after:
            sim.script.append((item.cpu, 0, None, "disconnect"))
            break
        sim.script.append((item.cpu, ENTRY, effect_of(item), "entry"))
        sim.script.append((item.cpu, C_HANDLER, frame_of(item), "c-handler"))
        handler = HANDLERS.get(item.reason)
        if handler is not None:
            sim.script.append((item.cpu, handler, None, "handler"))
        sim.script.append((item.cpu, RESUME, None, "resume"))
    return pykd._install(sim)
