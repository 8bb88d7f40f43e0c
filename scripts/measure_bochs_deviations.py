#!/usr/bin/env python3
"""Measure what Bochs does for the VM-entry rules it is known to treat differently from the SDM,
and write tests/check/fixtures/bochs_deviations.json (the ground truth of the deviations table).

The Bochs lab (tests/lab/lab.asm, run by tests/lab/run.py) runs a table of entry-failure
scenarios, each breaking one rule of a valid baseline.  This script builds a variant of the
lab whose scenario table holds the deviation scenarios below instead (the lab file itself is
not changed), runs it on every lab model, and stores each scenario as a `vtdbg check`
snapshot together with the outcome Bochs reported.  Needs bochs-bin and nasm; about 3 s per
model.

    python3 scripts/measure_bochs_deviations.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.lab import run as lab  # noqa: E402

OUT = ROOT / "tests" / "check" / "fixtures" / "bochs_deviations.json"

#: NASM routines the scenario rows below use (they run with the scenario VMCS current; the
#: helpers VMW, vm_or and REQUIRE_ALLOWED1 are the lab's own).
ROUTINES = """
dv_debugctl:
        REQUIRE_ALLOWED1 msr_entry, 32 + 2
        VMW     0x2802, 1 << 3
        mov     eax, 1 << 2
        mov     edx, 0x4012
        jmp     vm_or

dv_guest_perf:
        REQUIRE_ALLOWED1 msr_entry, 32 + 13
        mov     rax, 1 << 40
        mov     edx, 0x2808
        call    vmw
        mov     eax, 1 << 13
        mov     edx, 0x4012
        jmp     vm_or

dv_host_perf:
        REQUIRE_ALLOWED1 msr_exit, 32 + 12
        mov     rax, 1 << 40
        mov     edx, 0x2C04
        call    vmw
        mov     eax, 1 << 12
        mov     edx, 0x400C
        jmp     vm_or

dv_bs:
        VMW     0x6820, 0x202
        VMW     0x4824, 1
        VMW     0x6822, 0x4000
        ret

dv_hlt_gp:
        VMW     0x4826, 1
        VMW     0x4016, 0x80000B0D
        VMW     0x4018, 0
        ret

dv_nmi_sti:
        VMW     0x6820, 0x202
        VMW     0x4824, 1
        VMW     0x4016, 0x80000202
        ret

dv_vnmi:
        REQUIRE_ALLOWED1 msr_pin, 32 + 5
        mov     eax, (1 << 3) | (1 << 5)
        mov     edx, 0x4000
        call    vm_or
        VMW     0x4824, 8
        VMW     0x4016, 0x80000202
        ret

dv_shutdown_sw18:
        VMW     0x4826, 2
        VMW     0x4016, 0x80000612
        VMW     0x401A, 1
        ret

dv_msr_unknown:
        mov     dword [MSR_AREA_PA + 0x300], 0x123
        VMW     0x200A, MSR_AREA_PA + 0x300
        VMW     0x4014, 1
        ret

dv_msr_efer_lme:
        mov     dword [MSR_AREA_PA + 0x400], 0xC0000080
        mov     dword [MSR_AREA_PA + 0x408], 0x401
        VMW     0x200A, MSR_AREA_PA + 0x400
        VMW     0x4014, 1
        ret

dv_errcode_extint:
        VMW     0x6820, 0x202
        VMW     0x4016, 0x80000830
        ret

dv_ss_null:
        VMW     0x0804, 0
        VMW     0x4818, 0xC091
        ret

dv_ss_null_np:
        VMW     0x0804, 0
        VMW     0x4818, 0xC013
        ret

dv_ss_null_lim:
        VMW     0x0804, 0
        VMW     0x4804, 0xFFFFF000
        ret

dv_ss_null_sys:
        VMW     0x0804, 0
        VMW     0x4818, 0xC083
        ret

dv_ss_null_rsv:
        VMW     0x0804, 0
        VMW     0x4818, 0xC193
        ret

dv_tsc_mult:
        REQUIRE_ALLOWED1 msr_proc2, 32 + 25
        mov     eax, 1 << 31
        mov     edx, 0x4002
        call    vm_or
        mov     eax, 1 << 25
        mov     edx, 0x401E
        call    vm_or
        VMW     0x2032, 0
        ret
"""

#: The scenarios: id, rule broken, lab flags, routine (0: write enc := value), enc, value, what it does.
SCENARIOS: List[Tuple[str, str, str, str, str, str, str]] = [
    ("dev_debugctl_reserved", "GUEST-DEBUGCTL-RSVD", "0", "dv_debugctl", "0", "0",
     "load debug controls, GUEST_IA32_DEBUGCTL bit 3 (reserved)"),
    ("dev_guest_perf_reserved", "GUEST-PERF-GLOBAL-CTRL", "0", "dv_guest_perf", "0", "0",
     "load IA32_PERF_GLOBAL_CTRL on entry, bit 40 set"),
    ("dev_host_perf_reserved", "HOST-PERF-GLOBAL-CTRL", "0", "dv_host_perf", "0", "0",
     "load IA32_PERF_GLOBAL_CTRL on exit, bit 40 set"),
    ("dev_pending_bs_sti", "GUEST-PENDDBG-BS", "0", "dv_bs", "0", "0",
     "blocking by STI, RFLAGS.TF = 0, pending BS = 1"),
    ("dev_hlt_inject_gp", "GUEST-ACTIVITY-EVENT", "0", "dv_hlt_gp", "0", "0",
     "HLT activity state with an injected #GP"),
    ("dev_nmi_under_sti", "GUEST-INTR-NMI-STI", "0", "dv_nmi_sti", "0", "0",
     "NMI injection under blocking by STI"),
    ("dev_entry_to_smm", "CTL-ENTRY-SMM", "FL_OR", "0", "0x4012", "1 << 10",
     "entry to SMM outside SMM"),
    ("dev_vnmi_blocking", "GUEST-INTR-VNMI", "0", "dv_vnmi", "0", "0",
     "virtual NMIs, blocking by NMI, NMI injected"),
    ("dev_ss_type_64bit", "GUEST-SS-TYPE", "0", "0", "0x4818", "0xC091",
     "64-bit guest, SS RPL 0, SS type 1 (read-only)"),
    ("dev_shutdown_sw_exc_18", "GUEST-ACTIVITY-EVENT", "0", "dv_shutdown_sw18", "0", "0",
     "shutdown state with a software exception of vector 18"),
    ("dev_msr_load_unknown", "MSRLOAD-WRMSR-FAULT", "0", "dv_msr_unknown", "0", "0",
     "VM-entry MSR-load of MSR 0x123 (not implemented)"),
    ("dev_msr_load_efer_lme", "MSRLOAD-WRMSR-FAULT", "0", "dv_msr_efer_lme", "0", "0",
     "VM-entry MSR-load of IA32_EFER clearing LME while CR0.PG = 1"),
    ("dev_errcode_extint", "CTL-EVENT-ERRCODE-DELIVER", "0", "dv_errcode_extint", "0", "0",
     "external interrupt injected with deliver-error-code set"),
    ("dev_tsc_multiplier_zero", "CTL-TSC-MULTIPLIER-ZERO", "0", "dv_tsc_mult", "0", "0",
     "TSC scaling with multiplier 0"),
    ("dev_smi_blocking", "GUEST-INTR-SMI-NOT-SMM", "0", "0", "0x4824", "4",
     "blocking by SMI outside SMM"),
    ("dev_ss_null_type", "GUEST-SS-TYPE", "0", "dv_ss_null", "0", "0",
     "64-bit guest, null SS selector, usable SS of type 1"),
    ("dev_ss_null_not_present", "GUEST-SEG-P", "0", "dv_ss_null_np", "0", "0",
     "64-bit guest, null SS selector, usable SS not present"),
    ("dev_ss_null_limit_g", "GUEST-SEG-LIMIT-G", "0", "dv_ss_null_lim", "0", "0",
     "64-bit guest, null SS selector, limit 0xFFFFF000 with G = 1"),
    ("dev_ss_null_system", "GUEST-SEG-S", "0", "dv_ss_null_sys", "0", "0",
     "64-bit guest, null SS selector, usable SS with S = 0"),
    ("dev_ss_null_ar_reserved", "GUEST-SEG-AR-RSVD", "0", "dv_ss_null_rsv", "0", "0",
     "64-bit guest, null SS selector, access-rights bit 8 set"),
]

#: Memory each scenario's checks read (the MSR-load areas), saved into the snapshots.
ENTRY_MSR_LOAD_COUNT = "0x4014"
ENTRY_MSR_LOAD_ADDR = "0x200a"


def variant_source() -> str:
    """lab.asm with the scenario table replaced by :data:`SCENARIOS`."""
    text = lab.LAB_ASM.read_text()
    start = text.index("scen_list:\n")
    end = text.index("        dq      0\n", start)
    rows = "".join('        SCEN "%s", "%s", %s, %s, %s, %s, "%s"\n' % row for row in SCENARIOS)
    return text[:start] + ROUTINES.lstrip("\n") + "\nscen_list:\n" + rows + text[end:]


def snapshot(scenario: Dict[str, Any], truth: Dict[str, Any], memory: bytes) -> Dict[str, Any]:
    """One scenario as a snapshot plus what Bochs did."""
    fields = scenario["fields"]
    saved: List[Dict[str, int]] = []
    count = fields.get(ENTRY_MSR_LOAD_COUNT, 0)
    if count:
        base = fields[ENTRY_MSR_LOAD_ADDR]
        for offset in range(0, 16 * count, 8):
            value = int.from_bytes(memory[base + offset:base + offset + 8], "little")
            saved.append({"address": base + offset, "size": 8, "value": value})
    return {
        "scenario": scenario["scenario"],
        "rule": scenario["rule"],
        "description": scenario["description"],
        "outcome": scenario["outcome"],
        "bochs_log": scenario.get("bochs_log", []),
        "snapshot": {
            "fields": fields,
            "memory": saved,
            "unlisted_memory": "unknown",
            "vmcs_pa": scenario["vmcs_pa"],
            "launch_state": "clear",
            "revision_id": truth["revision_id"],
            "environment": {"vmxon_pa": truth["vmxon_pa"]},
        },
    }


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep the Bochs runs in this folder")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="vtdbg-deviations-"))
    asm = work / "lab_deviations.asm"
    work.mkdir(parents=True, exist_ok=True)
    asm.write_text(variant_source())
    image = lab.build_image(work / "image", asm=asm)
    doc: Dict[str, Any] = {
        "schema": "vtdbg-bochs-deviations/1",
        "made_by": "scripts/measure_bochs_deviations.py",
        "models": {},
    }
    for model in lab.MODELS:
        result = lab.run_lab(model, work / model, image=image)
        fixtures = work / "fixtures" / model
        lab.write_fixtures(result, fixtures)
        truth = json.loads((fixtures / "ground_truth.json").read_text())
        memory = gzip.open(str(fixtures / "phys.img.gz")).read()
        scenarios = json.loads((fixtures / "entry_failures.json").read_text())
        doc["models"][model] = {
            "bochs_version": truth["bochs_version"],
            "caps": {"msrs": truth["msrs"], "maxphyaddr": truth["maxphyaddr"]},
            "scenarios": [snapshot(s, truth, memory) for s in scenarios if s["outcome"]["result"] != "skipped"],
            "skipped": [s["scenario"] for s in scenarios if s["outcome"]["result"] == "skipped"],
        }
        print("%s: %d scenarios" % (model, len(doc["models"][model]["scenarios"])))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
