"""Physical memory like the Bochs lab's (shared/reference/bochs-lab.md), for tests.

:func:`lab_memory` returns the real lab image (tests/fixtures/lab/<model>/phys.img.gz with
its ground_truth.json) when one is committed, else :func:`synthetic_lab`: an image with the
lab's layout built from facts in bochs-lab.md (host page tables at 0x10000, guest PML4 copy
at 0x13000, VMXON 0x20000, a Bochs 2.7 VMCS at 0x21000 as the lab leaves it after its
VMCALL exit, EPT at 0x30000 mapping 1 GiB with 2 MiB identity entries).
"""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from vtdbg.arch.fields import lookup_field
from vtdbg.layouts.registry import get_layout

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MiB = 1 << 20

HOST_PML4, HOST_PDPT, HOST_PD, GUEST_PML4 = 0x10000, 0x11000, 0x12000, 0x13000
VMXON_PA, VMCS_PA = 0x20000, 0x21000
EPT_PML4, EPT_PDPT, EPT_PD = 0x30000, 0x31000, 0x32000
EPTP = EPT_PML4 | (3 << 3) | 6
HOST_RIP = 0x8AB7


def lab_vmcs_values(**overrides: int) -> Dict[int, int]:
    """VMREAD values of the lab's VMCS after its last (VMCALL) exit, by encoding."""
    named = {
        "PIN_BASED_VM_EXEC_CONTROL": 0x16, "CPU_BASED_VM_EXEC_CONTROL": 0x840061F2,
        "SECONDARY_VM_EXEC_CONTROL": 0x2, "VM_EXIT_CONTROLS": 0x36FFB, "VM_ENTRY_CONTROLS": 0x13FB,
        "EXCEPTION_BITMAP": 0xFFFFFFFF, "VMCS_LINK_POINTER": 0xFFFFFFFFFFFFFFFF, "EPT_POINTER": EPTP,
        "HOST_CS_SELECTOR": 0x08, "HOST_SS_SELECTOR": 0x10, "HOST_DS_SELECTOR": 0x10, "HOST_ES_SELECTOR": 0x10,
        "HOST_FS_SELECTOR": 0x10, "HOST_GS_SELECTOR": 0x10, "HOST_TR_SELECTOR": 0x20,
        "HOST_CR0": 0x80000031, "HOST_CR3": HOST_PML4, "HOST_CR4": 0x2020, "HOST_RSP": 0x70000,
        "HOST_RIP": HOST_RIP, "HOST_TR_BASE": 0x15000, "HOST_GDTR_BASE": 0x14000,
        "GUEST_CR0": 0x80000031, "GUEST_CR3": GUEST_PML4, "GUEST_CR4": 0x2020, "GUEST_RIP": 0x8AB1,
        "GUEST_RSP": 0x60000, "GUEST_RFLAGS": 0x2, "GUEST_DR7": 0x400, "GUEST_IA32_EFER": 0x500,
        "GUEST_CS_SELECTOR": 0x08, "GUEST_CS_AR_BYTES": 0xA09B, "GUEST_CS_LIMIT": 0xFFFFFFFF,
        "GUEST_SS_SELECTOR": 0x10, "GUEST_SS_AR_BYTES": 0xC093, "GUEST_DS_SELECTOR": 0x10,
        "GUEST_DS_AR_BYTES": 0xC093, "GUEST_TR_SELECTOR": 0x20, "GUEST_TR_AR_BYTES": 0x8B,
        "GUEST_TR_LIMIT": 0x67, "GUEST_LDTR_AR_BYTES": 0x10000,
        "VM_EXIT_REASON": 0x12, "EXIT_QUALIFICATION": 0, "GUEST_PHYSICAL_ADDRESS": 0x200123,
        "VM_EXIT_INSTRUCTION_LEN": 3, "VM_INSTRUCTION_ERROR": 0,
    }
    named.update(overrides)
    return {lookup_field(name).encoding: value for name, value in named.items()}


def _put(image: bytearray, pa: int, value: int) -> None:
    struct.pack_into("<Q", image, pa, value)


def synthetic_lab(size: int = 8 * MiB, **vmcs_overrides: int) -> Tuple[bytearray, Dict[str, Any]]:
    """A lab-shaped image (see the module docstring) and its ground truth."""
    image = bytearray(size)
    # host tables: PML4[0] -> PDPT, PDPT[0] -> PD, 512 x 2 MiB identity pages (P|RW|PS)
    _put(image, HOST_PML4, HOST_PDPT | 0x3)
    _put(image, HOST_PDPT, HOST_PD | 0x3)
    for index in range(512):
        _put(image, HOST_PD + 8 * index, (index << 21) | 0x83)
    image[GUEST_PML4:GUEST_PML4 + 0x1000] = image[HOST_PML4:HOST_PML4 + 0x1000]
    # VMXON: only the revision id
    struct.pack_into("<I", image, VMXON_PA, 0x2B)
    page = get_layout("bochs_2_7").build_page(lab_vmcs_values(**vmcs_overrides), launch_state="launched")
    image[VMCS_PA:VMCS_PA + 0x1000] = page
    # EPT: PML4[0] -> PDPT (RWX), PDPT[0] -> PD (RWX), 512 x 2 MiB WB RWX large pages
    _put(image, EPT_PML4, EPT_PDPT | 0x7)
    _put(image, EPT_PDPT, EPT_PD | 0x7)
    for index in range(512):
        _put(image, EPT_PD + 8 * index, (index << 21) | 0xB7)
    # info block, as the lab writes it
    image[0x3F000:0x3F008] = b"VTDBGLAB"
    truth = {"model": "synthetic", "vmxon_pa": VMXON_PA, "vmcs_pa": VMCS_PA, "eptp": EPTP,
             "host_rip": HOST_RIP, "host_cr3": HOST_PML4, "guest_cr3": GUEST_PML4, "revision_id": 0x2B,
             "layout": "bochs_2_7"}
    return image, truth


def real_lab_models() -> list:
    """Models with a committed lab image and ground truth."""
    base = FIXTURES / "lab"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir()
                  if (p / "ground_truth.json").is_file() and (p / "phys.img.gz").is_file())


def lab_memory(model: Optional[str] = None) -> Tuple[bytearray, Dict[str, Any]]:
    """The real lab image of ``model`` (or the first committed one), else the synthetic one."""
    models = real_lab_models()
    if model is None and models:
        model = models[0]
    if model is not None and model in models:
        base = FIXTURES / "lab" / model
        with gzip.open(base / "phys.img.gz", "rb") as handle:
            image = bytearray(handle.read())
        truth = json.loads((base / "ground_truth.json").read_text())
        truth.setdefault("model", model)
        return image, truth
    return synthetic_lab()
