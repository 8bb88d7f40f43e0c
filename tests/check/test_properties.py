"""Property tests: the valid baseline stays valid under legal changes, and each single-rule
mutation is reported by exactly that rule (with that rule's outcome).

Profiles: the section-5 capability profile of the rule catalog, and every Bochs lab model's
capability MSRs (the baseline's controls fitted to them as a VMM would).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.check import labdata
from tests.check.baseline import BASELINE_MSRS, LINK_SPARE_PA, VMCS_PA, baseline_caps, baseline_snapshot
from vtdbg.arch import controls
from vtdbg.core.check.caps import Caps
from vtdbg.core.check.checker import check_vmcs
from vtdbg.core.check.engine import Report
from vtdbg.core.check.facts import ctl_mask, reg_get
from vtdbg.core.check.rules import rule as rule_of
from vtdbg.core.check.snapshot import snapshot_from_json
from vtdbg.lib.bits import MASK64

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MSR_AREA = 0x3005000
ENTRY_VALID = (2 << 8) | (1 << 31)  # valid NMI (vector added by callers)


def rich_caps() -> Caps:
    """The baseline profile with every optional control allowed (posted interrupts, tertiary
    and secondary exit controls, SPP, PT, CET, PKRS, BNDCFGS), EPT without A/D flags, and a
    processor with CET, SGX, RTM and known RTIT/LBR control masks: it reaches the rules the
    other profiles cannot."""
    msrs = dict(BASELINE_MSRS)
    for index in (0x481, 0x48D):
        msrs[index] |= 0x80 << 32                        # posted interrupts
    for index in (0x482, 0x48E):
        msrs[index] |= (1 << 17) << 32                   # activate tertiary controls
    msrs[0x48B] = 0xFFFFFFFF << 32
    for index in (0x483, 0x48F):
        msrs[index] = (0xFFFFFFFF << 32) | (msrs[index] & 0xFFFFFFFF)
    for index in (0x484, 0x490):
        msrs[index] = (0x00FFFFFF << 32) | (msrs[index] & 0xFFFFFFFF)
    msrs[0x489] |= (1 << 23) | (1 << 24)                 # CR4.CET, CR4.PKS may be 1
    msrs[0x48C] &= ~(1 << 21)                            # no EPT A/D flags
    msrs[0x492] = 0xFF
    msrs[0x493] = 0xB
    processor = {"cet": True, "sgx": True, "rtm": True, "rtit_ctl_valid_mask": "0x2007ffff",
                 "lbr_ctl_valid_mask": "0x7f000f"}
    return Caps(msrs, 46, processor, "rich test profile")


def _profiles() -> Dict[str, Caps]:
    out = {"baseline": baseline_caps(), "rich": rich_caps()}
    for model in labdata.models():
        out[model] = labdata.load(model).caps
    return out


PROFILES = _profiles()


def run(doc: Dict[str, Any], caps: Caps) -> Report:
    snap = snapshot_from_json(doc)
    return check_vmcs(snap.vmcs, caps, snap.memory, snap.environment)


def base(caps: Caps) -> Dict[str, Any]:
    return baseline_snapshot(caps)


# -- strategies -----------------------------------------------------------------------------------

def canonical(bits: int = 48) -> st.SearchStrategy[int]:
    half = 1 << (bits - 1)
    return st.one_of(st.integers(0, half - 1), st.integers(MASK64 - half + 1, MASK64))


def noncanonical(bits: int = 48) -> st.SearchStrategy[int]:
    half = 1 << (bits - 1)
    return st.integers(half, MASK64 - half)


def below(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << bits) - 1)


def page_below(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << (bits - 12)) - 1).map(lambda n: n << 12)


PAT_TYPES = (0, 1, 4, 5, 6, 7)
pat_valid = st.lists(st.sampled_from(PAT_TYPES), min_size=8, max_size=8).map(
    lambda b: sum(v << (8 * i) for i, v in enumerate(b)))


@st.composite
def pat_invalid(draw: Any) -> int:
    value = draw(pat_valid)
    index = draw(st.integers(0, 7))
    bad = draw(st.sampled_from([2, 3] + list(range(8, 256))))
    return (value & ~(0xFF << (8 * index))) | (bad << (8 * index))


def flexible(caps: Caps, group: str, name: str) -> bool:
    allowed = caps.allowed(group)
    mask = ctl_mask(group, name)
    return not allowed.must1 & mask and bool(allowed.may1 & mask)


def allowed1(caps: Caps, group: str, name: str) -> bool:
    return bool(caps.allowed(group).may1 & ctl_mask(group, name))


def setbit(doc: Dict[str, Any], group: str, name: str, on: bool = True) -> None:
    field = controls.group(group).field
    if on:
        doc["fields"][field] |= ctl_mask(group, name)
    else:
        doc["fields"][field] &= ~ctl_mask(group, name)


# -- legal changes ----------------------------------------------------------------------------------

#: controls that no rule ties to another control or field of the baseline
INDEPENDENT = {
    "pin": ["VMX_PREEMPTION_TIMER"],
    "proc": ["INTR_WINDOW_EXITING", "USE_TSC_OFFSETTING", "HLT_EXITING", "INVLPG_EXITING", "MWAIT_EXITING",
             "RDPMC_EXITING", "RDTSC_EXITING", "CR3_LOAD_EXITING", "CR3_STORE_EXITING", "CR8_LOAD_EXITING",
             "CR8_STORE_EXITING", "MOV_DR_EXITING", "UNCOND_IO_EXITING", "MONITOR_TRAP_FLAG", "MONITOR_EXITING",
             "PAUSE_EXITING"],
    "proc2": ["DESC", "ENABLE_RDTSCP", "WBINVD_EXITING", "RDRAND_EXITING", "ENABLE_INVPCID", "RDSEED_EXITING",
              "ENABLE_XSAVES", "PAUSE_LOOP_EXITING"],
    "exit": ["SAVE_DEBUG_CONTROLS", "SAVE_IA32_PAT", "SAVE_IA32_EFER", "ACK_INTR_ON_EXIT"],
}


@st.composite
def legal_changes(draw: Any, caps: Caps) -> Dict[str, Any]:
    doc = base(caps)
    f = doc["fields"]
    phys = caps.maxphyaddr
    choices: Dict[str, Callable[[], None]] = {
        "rip": lambda: f.__setitem__("GUEST_RIP", draw(canonical())),
        "rsp": lambda: f.__setitem__("GUEST_RSP", draw(below(64))),
        "host_rsp": lambda: f.__setitem__("HOST_RSP", draw(below(64))),
        "host_rip": lambda: f.__setitem__("HOST_RIP", draw(canonical())),
        "rflags": lambda: f.__setitem__("GUEST_RFLAGS", 0x202 | draw(st.sampled_from(
            [0, 0x1, 0x4, 0x10, 0x40, 0x80, 0x100, 0x400, 0x800, 0x3000, 0x4000, 0x10000, 0x40000, 0x200000,
             0x180000]))),
        "bases": lambda: [f.__setitem__(n, draw(canonical())) for n in (
            "GUEST_FS_BASE", "GUEST_GS_BASE", "GUEST_TR_BASE", "GUEST_GDTR_BASE", "GUEST_IDTR_BASE",
            "GUEST_SYSENTER_ESP", "GUEST_SYSENTER_EIP", "HOST_FS_BASE", "HOST_GS_BASE", "HOST_TR_BASE",
            "HOST_GDTR_BASE", "HOST_IDTR_BASE", "HOST_IA32_SYSENTER_ESP", "HOST_IA32_SYSENTER_EIP")],
        "data_bases": lambda: [f.__setitem__("GUEST_%s_BASE" % s, draw(below(32))) for s in ("DS", "ES", "SS")],
        "cr3": lambda: (f.__setitem__("GUEST_CR3", draw(below(phys))), f.__setitem__("HOST_CR3", draw(below(phys)))),
        "pat": lambda: (f.__setitem__("GUEST_IA32_PAT", draw(pat_valid)),
                        f.__setitem__("HOST_IA32_PAT", draw(pat_valid))),
        "eptp": lambda: f.__setitem__("EPT_POINTER", draw(page_below(phys)) | 0x1E),
        "vpid": lambda: f.__setitem__("VIRTUAL_PROCESSOR_ID", draw(st.integers(1, 0xFFFF))),
        "bitmaps": lambda: [f.__setitem__(n, draw(page_below(phys))) for n in
                            ("IO_BITMAP_A", "IO_BITMAP_B", "MSR_BITMAP")],
        "cr3_targets": lambda: f.__setitem__("CR3_TARGET_COUNT", draw(st.integers(
            0, reg_get("vmx_misc", "cr3_target_count", caps.misc)))),
        "masks": lambda: [f.__setitem__(n, draw(below(32 if n in ("EXCEPTION_BITMAP", "PAGE_FAULT_ERROR_CODE_MASK",
                                                                  "PAGE_FAULT_ERROR_CODE_MATCH") else 64)))
                          for n in ("EXCEPTION_BITMAP", "PAGE_FAULT_ERROR_CODE_MASK", "PAGE_FAULT_ERROR_CODE_MATCH",
                                    "CR0_GUEST_HOST_MASK", "CR4_GUEST_HOST_MASK", "CR0_READ_SHADOW",
                                    "CR4_READ_SHADOW", "TSC_OFFSET")],
        "dr7": lambda: f.__setitem__("GUEST_DR7", draw(below(32))),
        "host_selectors": lambda: [f.__setitem__("HOST_%s_SELECTOR" % s, draw(st.integers(
            1 if s in ("CS", "TR") else 0, 0x1FFF)) << 3) for s in ("ES", "CS", "SS", "DS", "FS", "GS", "TR")],
        "dtr_limits": lambda: [f.__setitem__(n, draw(st.integers(0, 0xFFFF))) for n in
                               ("GUEST_GDTR_LIMIT", "GUEST_IDTR_LIMIT")],
        "nmi_blocking": lambda: f.__setitem__("GUEST_INTERRUPTIBILITY_INFO", 8),
        "unusable_data": lambda: [f.__setitem__("GUEST_%s_AR_BYTES" % s, 0x10000) for s in
                                  draw(st.lists(st.sampled_from(["DS", "ES", "FS", "GS"]), unique=True))],
        "msr_load": lambda: _legal_msr_load(draw, doc, caps),
        "controls": lambda: [setbit(doc, g, n, draw(st.booleans())) for g, names in INDEPENDENT.items()
                             for n in names if flexible(caps, g, n)],
    }
    for key in draw(st.lists(st.sampled_from(sorted(choices)), unique=True, max_size=len(choices))):
        choices[key]()
    return doc


def _legal_msr_load(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    entries = draw(st.lists(st.sampled_from(["star", "lstar", "sysenter_cs", "kernel_gs", "pat"]), max_size=4))
    values = {"star": (0xC0000081, draw(below(64))), "lstar": (0xC0000082, draw(canonical())),
              "sysenter_cs": (0x174, draw(below(64))), "kernel_gs": (0xC0000102, draw(canonical())),
              "pat": (0x277, draw(pat_valid))}
    _msr_area(doc, [values[e] for e in entries])


def _msr_area(doc: Dict[str, Any], entries: List[Tuple[int, int]]) -> None:
    doc["fields"]["VM_ENTRY_MSR_LOAD_COUNT"] = len(entries)
    doc["fields"]["VM_ENTRY_MSR_LOAD_ADDR"] = MSR_AREA
    for number, (low, value) in enumerate(entries):
        doc["memory"].append({"address": MSR_AREA + 16 * number, "size": 8, "value": low})
        doc["memory"].append({"address": MSR_AREA + 16 * number + 8, "size": 8, "value": value})


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_baseline_is_valid(profile: str) -> None:
    report = run(base(PROFILES[profile]), PROFILES[profile])
    assert report.outcome.result == "ok", [v.to_json() for v in report.violations]
    assert not report.violations and not report.not_checked


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_legal_changes_stay_valid(profile: str) -> None:
    caps = PROFILES[profile]

    @SETTINGS
    @given(legal_changes(caps))
    def check(doc: Dict[str, Any]) -> None:
        report = run(doc, caps)
        assert report.outcome.result == "ok", [v.to_json() for v in report.violations]
        assert not report.not_checked, [n.to_json() for n in report.not_checked]

    check()


# -- single-rule mutations -------------------------------------------------------------------------

Mutation = Callable[[Any, Dict[str, Any], Caps], Optional[int]]
MUTATIONS: Dict[str, Tuple[Callable[[Caps], bool], Mutation]] = {}


def mutation(rule_id: str, applies: Callable[[Caps], bool] = lambda caps: True) -> Callable[[Mutation], Mutation]:
    """Register a mutation that breaks exactly ``rule_id``; it may return the expected
    qualification (MSR-load entry index)."""
    def wrap(func: Mutation) -> Mutation:
        MUTATIONS[rule_id] = (applies, func)
        return func
    return wrap


def _reserved_candidates(caps: Caps, group: str) -> List[Tuple[int, bool]]:
    """(bit, set?) pairs that leave the allowed settings without touching a defined control
    that other rules look at: clear a must-be-1 bit, or set a may-not-be-1 bit that is reserved
    or undefined (or a defined control no other rule reads)."""
    allowed = caps.allowed(group)
    safe_defined = {"proc2": {"ENCLS_EXITING", "PASID_TRANSLATION", "ENABLE_USR_WAIT_PAUSE", "ENABLE_PCONFIG",
                              "ENCLV_EXITING", "BUS_LOCK_DETECTION", "NOTIFY_VM_EXITING", "PT_CONCEAL_VMX"},
                    "exit": {"CLEAR_UINV", "CLEAR_IA32_LBR_CTL", "PT_CONCEAL_PIP", "CLEAR_BNDCFGS"},
                    "entry": {"LOAD_UINV", "PT_CONCEAL_PIP"}}.get(group, set())
    defined = {b.bit: b for b in controls.bits(group)}
    out: List[Tuple[int, bool]] = []
    for bit in range(32):
        mask = 1 << bit
        item = defined.get(bit)
        harmless = item is None or item.reserved or item.name in safe_defined
        if allowed.must1 & mask and (item is None or item.reserved):
            out.append((bit, False))
        elif not allowed.may1 & mask and harmless:
            out.append((bit, True))
    return out


def _reserved_mutation(group: str) -> Mutation:
    def mutate(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
        bit, on = draw(st.sampled_from(_reserved_candidates(caps, group)))
        field = controls.group(group).field
        doc["fields"][field] = doc["fields"][field] | (1 << bit) if on else doc["fields"][field] & ~(1 << bit)
    return mutate


for _rule, _group in (("CTL-PIN-RESERVED", "pin"), ("CTL-PROC-RESERVED", "proc"), ("CTL-PROC2-RESERVED", "proc2"),
                      ("CTL-EXIT-RESERVED", "exit"), ("CTL-ENTRY-RESERVED", "entry")):
    mutation(_rule, lambda caps, g=_group: bool(_reserved_candidates(caps, g)))(_reserved_mutation(_group))


def field_mutation(rule_id: str, field: str, values: Callable[[Caps], st.SearchStrategy[int]],
                   applies: Callable[[Caps], bool] = lambda caps: True) -> None:
    def mutate(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
        doc["fields"][field] = draw(values(caps))
    mutation(rule_id, applies)(mutate)


def misaligned_or_wide(caps: Caps, align: int = 0x1000) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, (1 << caps.maxphyaddr) - 1).filter(lambda v: v % align != 0),
                     st.integers(caps.maxphyaddr, 63).map(lambda b: 1 << b))


field_mutation("CTL-CR3-TARGET-COUNT", "CR3_TARGET_COUNT",
               lambda c: st.integers(reg_get("vmx_misc", "cr3_target_count", c.misc) + 1, 0xFFFFFFFF))
field_mutation("CTL-IO-BITMAP-ADDR", "IO_BITMAP_B", misaligned_or_wide)
field_mutation("CTL-MSR-BITMAP-ADDR", "MSR_BITMAP", misaligned_or_wide)
field_mutation("CTL-VAPIC-ADDR", "VIRTUAL_APIC_PAGE_ADDR", misaligned_or_wide)
field_mutation("CTL-TPR-THRESHOLD-RSVD", "TPR_THRESHOLD", lambda c: st.integers(1, 0x0FFFFFFF).map(lambda v: v << 4))
field_mutation("CTL-TPR-THRESHOLD-VTPR", "TPR_THRESHOLD", lambda c: st.integers(1, 15))
field_mutation("CTL-VPID-ZERO", "VIRTUAL_PROCESSOR_ID", lambda c: st.just(0))
field_mutation("CTL-EPTP-MEMTYPE", "EPT_POINTER", lambda c: st.sampled_from([1, 2, 3, 4, 5, 7]).map(
    lambda t: 0x3000000 | (3 << 3) | t))
field_mutation("CTL-EPTP-WALK-LENGTH", "EPT_POINTER", lambda c: st.sampled_from([0, 1, 2, 5, 6, 7]).map(
    lambda w: 0x3000000 | (w << 3) | 6))
field_mutation("CTL-EPTP-RESERVED", "EPT_POINTER", lambda c: st.one_of(
    st.integers(1, 15).map(lambda r: 0x3000000 | (r << 8) | 0x1E),
    st.integers(c.maxphyaddr, 63).map(lambda b: (1 << b) | 0x3000000 | 0x1E)))
field_mutation("HOST-CR3-WIDTH", "HOST_CR3", lambda c: st.integers(c.maxphyaddr, 63).map(lambda b: (1 << b) | 0x1AD000))
field_mutation("HOST-SYSENTER-ESP-CANON", "HOST_IA32_SYSENTER_ESP", lambda c: noncanonical())
field_mutation("HOST-SYSENTER-EIP-CANON", "HOST_IA32_SYSENTER_EIP", lambda c: noncanonical())
field_mutation("HOST-PAT", "HOST_IA32_PAT", lambda c: pat_invalid())
field_mutation("HOST-EFER-RESERVED", "HOST_IA32_EFER", lambda c: st.integers(0, 63).filter(
    lambda b: not (1 << b) & 0xD01).map(lambda b: 0xD01 | (1 << b)))
field_mutation("HOST-EFER-LMA-LME", "HOST_IA32_EFER", lambda c: st.sampled_from([0x401, 0x101, 0x001, 0x801]))
field_mutation("HOST-CS-NULL", "HOST_CS_SELECTOR", lambda c: st.just(0))
field_mutation("HOST-TR-NULL", "HOST_TR_SELECTOR", lambda c: st.just(0))
field_mutation("HOST-64-RIP-CANON", "HOST_RIP", lambda c: noncanonical())
field_mutation("HOST-64-CR4-PAE", "HOST_CR4", lambda c: st.just(0x1526E0 & ~0x20))
field_mutation("GUEST-CR3-WIDTH", "GUEST_CR3",
               lambda c: st.integers(c.maxphyaddr, 63).map(lambda b: (1 << b) | 0x13000))
field_mutation("GUEST-DR7-HIGH", "GUEST_DR7", lambda c: st.integers(1, 0xFFFFFFFF).map(lambda h: (h << 32) | 0x400))
field_mutation("GUEST-SYSENTER-ESP-CANON", "GUEST_SYSENTER_ESP", lambda c: noncanonical())
field_mutation("GUEST-SYSENTER-EIP-CANON", "GUEST_SYSENTER_EIP", lambda c: noncanonical())
field_mutation("GUEST-PAT", "GUEST_IA32_PAT", lambda c: pat_invalid())
field_mutation("GUEST-EFER-RESERVED", "GUEST_IA32_EFER", lambda c: st.integers(0, 63).filter(
    lambda b: not (1 << b) & 0xD01).map(lambda b: 0xD01 | (1 << b)))
field_mutation("GUEST-EFER-LMA", "GUEST_IA32_EFER", lambda c: st.sampled_from([0x001, 0x801, 0x0]))
field_mutation("GUEST-EFER-LME", "GUEST_IA32_EFER", lambda c: st.sampled_from([0x401, 0xC01]))
field_mutation("GUEST-IA32E-PG-PAE", "GUEST_CR4", lambda c: st.just(0x26A0 & ~0x20))
field_mutation("GUEST-DEBUGCTL-RSVD", "GUEST_IA32_DEBUGCTL", lambda c: st.integers(0, 63).filter(
    lambda b: not (1 << b) & c.mask("debugctl_valid_mask")).map(lambda b: 1 << b))
field_mutation("GUEST-TR-SEL-TI", "GUEST_TR_SELECTOR", lambda c: st.just(0x18 | 4))
field_mutation("GUEST-LDTR-SEL-TI", "GUEST_LDTR_SELECTOR", lambda c: st.integers(0, 0x1FFF).map(lambda s: (s << 3) | 4))
field_mutation("GUEST-SS-RPL-EQ-CS-RPL", "GUEST_CS_SELECTOR", lambda c: st.integers(1, 3).map(lambda r: 0x08 | r))
field_mutation("GUEST-BASE-CANON-TR-FS-GS", "GUEST_GS_BASE", lambda c: noncanonical())
field_mutation("GUEST-LDTR-BASE-CANON", "GUEST_LDTR_BASE", lambda c: noncanonical())
field_mutation("GUEST-CS-BASE-HIGH", "GUEST_CS_BASE", lambda c: st.integers(1, 0xFFFFFFFF).map(lambda h: h << 32))
field_mutation("GUEST-SEG-BASE-HIGH", "GUEST_ES_BASE", lambda c: st.integers(1, 0xFFFFFFFF).map(lambda h: h << 32))
field_mutation("GUEST-CS-TYPE", "GUEST_CS_AR_BYTES", lambda c: st.sampled_from(list(range(0, 9)) + [10, 12, 14]).map(
    lambda t: 0xA090 | t))
field_mutation("GUEST-SS-TYPE", "GUEST_SS_AR_BYTES", lambda c: st.sampled_from([0, 1, 2, 4, 5, 6]).map(
    lambda t: 0xC090 | t))
field_mutation("GUEST-DATA-TYPE-ACCESSED", "GUEST_DS_AR_BYTES", lambda c: st.sampled_from([0, 2, 4, 6]).map(
    lambda t: 0xC090 | t))
field_mutation("GUEST-DATA-TYPE-CODE-READABLE", "GUEST_FS_AR_BYTES", lambda c: st.sampled_from([9, 13]).map(
    lambda t: 0xC090 | t))
field_mutation("GUEST-SEG-S", "GUEST_ES_AR_BYTES", lambda c: st.just(0xC083))
field_mutation("GUEST-SEG-P", "GUEST_GS_AR_BYTES", lambda c: st.just(0xC013))
field_mutation("GUEST-SEG-AR-RSVD", "GUEST_DS_AR_BYTES", lambda c: st.sampled_from(
    list(range(8, 12)) + list(range(17, 32))).map(lambda b: 0xC093 | (1 << b)))
field_mutation("GUEST-CS-L-DB", "GUEST_CS_AR_BYTES", lambda c: st.just(0xE09B))
field_mutation("GUEST-SEG-LIMIT-G", "GUEST_DS_LIMIT", lambda c: st.integers(0, 0xFFFFFFFF).filter(
    lambda v: v & 0xFFF != 0xFFF))
field_mutation("GUEST-TR-TYPE", "GUEST_TR_AR_BYTES", lambda c: st.sampled_from([0, 1, 2, 3, 9, 13]).map(
    lambda t: 0x80 | t))
field_mutation("GUEST-TR-S", "GUEST_TR_AR_BYTES", lambda c: st.just(0x9B))
field_mutation("GUEST-TR-P", "GUEST_TR_AR_BYTES", lambda c: st.just(0x0B))
field_mutation("GUEST-TR-AR-RSVD", "GUEST_TR_AR_BYTES", lambda c: st.sampled_from(
    list(range(8, 12)) + list(range(17, 32))).map(lambda b: 0x8B | (1 << b)))
field_mutation("GUEST-TR-LIMIT-G", "GUEST_TR_AR_BYTES", lambda c: st.just(0x808B))
field_mutation("GUEST-TR-UNUSABLE", "GUEST_TR_AR_BYTES", lambda c: st.just(0x1008B))
field_mutation("GUEST-LDTR-TYPE", "GUEST_LDTR_AR_BYTES", lambda c: st.sampled_from([0, 1, 3, 9, 11]).map(
    lambda t: 0x80 | t))
field_mutation("GUEST-LDTR-S", "GUEST_LDTR_AR_BYTES", lambda c: st.just(0x92))
field_mutation("GUEST-LDTR-P", "GUEST_LDTR_AR_BYTES", lambda c: st.just(0x02))
field_mutation("GUEST-LDTR-AR-RSVD", "GUEST_LDTR_AR_BYTES", lambda c: st.just(0x20082))
field_mutation("GUEST-LDTR-LIMIT-G", "GUEST_LDTR_AR_BYTES", lambda c: st.just(0x8082))
field_mutation("GUEST-DTR-BASE-CANON", "GUEST_IDTR_BASE", lambda c: noncanonical())
field_mutation("GUEST-DTR-LIMIT", "GUEST_GDTR_LIMIT", lambda c: st.integers(0x10000, 0xFFFFFFFF))
field_mutation("GUEST-RIP-CANON", "GUEST_RIP", lambda c: noncanonical())
field_mutation("GUEST-RFLAGS-RSVD", "GUEST_RFLAGS", lambda c: st.one_of(
    st.sampled_from([3, 5, 15] + list(range(22, 64))).map(lambda b: 0x202 | (1 << b)), st.just(0x200)))
field_mutation("GUEST-ACTIVITY-VALID", "GUEST_ACTIVITY_STATE", lambda c: st.integers(4, 0xFFFFFFFF))
field_mutation("GUEST-INTR-RSVD", "GUEST_INTERRUPTIBILITY_INFO", lambda c: st.integers(
    5 if c.default("sgx") else 4, 31).map(lambda b: 1 << b))
field_mutation("GUEST-INTR-STI-MOVSS", "GUEST_INTERRUPTIBILITY_INFO", lambda c: st.just(3))
field_mutation("GUEST-INTR-SMI-NOT-SMM", "GUEST_INTERRUPTIBILITY_INFO", lambda c: st.just(4))
# bit 16 is reserved only without RTM; with RTM it belongs to GUEST-PENDDBG-RTM
field_mutation("GUEST-PENDDBG-RSVD", "GUEST_PENDING_DBG_EXCEPTIONS", lambda c: st.sampled_from(
    list(range(4, 12)) + [13, 15] + ([] if c.default("rtm") else [16]) + list(range(17, 64))).map(lambda b: 1 << b))
field_mutation("GUEST-LINK-PTR-ADDR", "VMCS_LINK_POINTER", lambda c: misaligned_or_wide(c).filter(
    lambda v: v != MASK64))
field_mutation("GUEST-LINK-PTR-SELF", "VMCS_LINK_POINTER", lambda c: st.just(VMCS_PA))


@mutation("HOST-CR0-FIXED")
def _host_cr0(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    fixed0, fixed1 = caps.fixed("cr0")
    bit = draw(st.sampled_from([b for b in range(64) if (fixed0 >> b) & 1 or not (fixed1 >> b) & 1]))
    doc["fields"]["HOST_CR0"] ^= 1 << bit


@mutation("HOST-CR4-FIXED")
def _host_cr4(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    fixed0, fixed1 = caps.fixed("cr4")
    bit = draw(st.sampled_from([b for b in range(64) if (fixed0 >> b) & 1 or not (fixed1 >> b) & 1]))
    doc["fields"]["HOST_CR4"] ^= 1 << bit


@mutation("GUEST-CR0-FIXED")
def _guest_cr0(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    fixed0, fixed1 = caps.fixed("cr0")
    # PE and PG have rules of their own (PG without PE, IA-32e needs PG)
    bits = [b for b in range(64) if ((fixed0 >> b) & 1 and b not in (0, 31)) or not (fixed1 >> b) & 1]
    doc["fields"]["GUEST_CR0"] ^= 1 << draw(st.sampled_from(bits))


@mutation("GUEST-CR4-FIXED")
def _guest_cr4(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    fixed0, fixed1 = caps.fixed("cr4")
    bits = [b for b in range(64) if (fixed0 >> b) & 1 or not (fixed1 >> b) & 1]
    doc["fields"]["GUEST_CR4"] ^= 1 << draw(st.sampled_from(bits))


@mutation("HOST-SEL-RPL-TI")
def _host_sel(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    seg = draw(st.sampled_from(["ES", "CS", "SS", "DS", "FS", "GS", "TR"]))
    doc["fields"]["HOST_%s_SELECTOR" % seg] |= draw(st.integers(1, 7))


@mutation("HOST-BASE-CANON")
def _host_base(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    name = draw(st.sampled_from(["HOST_FS_BASE", "HOST_GS_BASE", "HOST_GDTR_BASE", "HOST_IDTR_BASE", "HOST_TR_BASE"]))
    doc["fields"][name] = draw(noncanonical())


@mutation("HOST-ADDR-SIZE-LMA")
def _addr_size(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["environment"]["host_ia32e"] = False


@mutation("HOST-PERF-GLOBAL-CTRL", lambda caps: allowed1(caps, "exit", "LOAD_IA32_PERF_GLOBAL_CTRL"))
def _host_perf(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "exit", "LOAD_IA32_PERF_GLOBAL_CTRL")
    bit = draw(st.integers(0, 63).filter(lambda b: not (1 << b) & caps.mask("perf_global_ctrl_valid_mask")))
    doc["fields"]["HOST_IA32_PERF_GLOBAL_CTRL"] = 1 << bit


@mutation("GUEST-PERF-GLOBAL-CTRL", lambda caps: allowed1(caps, "entry", "LOAD_IA32_PERF_GLOBAL_CTRL"))
def _guest_perf(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "entry", "LOAD_IA32_PERF_GLOBAL_CTRL")
    bit = draw(st.integers(0, 63).filter(lambda b: not (1 << b) & caps.mask("perf_global_ctrl_valid_mask")))
    doc["fields"]["GUEST_IA32_PERF_GLOBAL_CTRL"] = 1 << bit


@mutation("CTL-VNMI-NEEDS-NMI-EXITING", lambda caps: flexible(caps, "pin", "NMI_EXITING"))
def _vnmi(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "pin", "NMI_EXITING", False)


@mutation("CTL-NMI-WINDOW-NEEDS-VNMI", lambda caps: flexible(caps, "pin", "VIRTUAL_NMIS")
          and allowed1(caps, "proc", "NMI_WINDOW_EXITING"))
def _nmi_window(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "pin", "VIRTUAL_NMIS", False)
    setbit(doc, "proc", "NMI_WINDOW_EXITING")


@mutation("CTL-APICV-NEEDS-TPR-SHADOW", lambda caps: flexible(caps, "proc", "TPR_SHADOW")
          and allowed1(caps, "proc2", "APIC_REGISTER_VIRT"))
def _apicv(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc", "TPR_SHADOW", False)
    setbit(doc, "proc2", "APIC_REGISTER_VIRT")


@mutation("CTL-X2APIC-VS-APIC-ACCESS", lambda caps: allowed1(caps, "proc2", "VIRTUALIZE_X2APIC_MODE")
          and allowed1(caps, "proc2", "VIRTUALIZE_APIC_ACCESSES"))
def _x2apic(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "VIRTUALIZE_X2APIC_MODE")
    setbit(doc, "proc2", "VIRTUALIZE_APIC_ACCESSES")


@mutation("CTL-APIC-ACCESS-ADDR", lambda caps: allowed1(caps, "proc2", "VIRTUALIZE_APIC_ACCESSES"))
def _apic_access(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "VIRTUALIZE_APIC_ACCESSES")
    doc["fields"]["APIC_ACCESS_ADDR"] = draw(misaligned_or_wide(caps))


@mutation("CTL-VID-NEEDS-EXTINT-EXIT", lambda caps: allowed1(caps, "proc2", "VIRTUAL_INTR_DELIVERY")
          and flexible(caps, "pin", "EXT_INTR_MASK"))
def _vid(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "VIRTUAL_INTR_DELIVERY")
    setbit(doc, "pin", "EXT_INTR_MASK", False)


def _ept_off_with(control: str) -> Tuple[Callable[[Caps], bool], Mutation]:
    def applies(caps: Caps) -> bool:
        return flexible(caps, "proc2", "ENABLE_EPT") and allowed1(caps, "proc2", control)

    def mutate(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
        setbit(doc, "proc2", "ENABLE_EPT", False)
        setbit(doc, "proc2", control)
    return applies, mutate


for _rule, _control in (("CTL-PML-NEEDS-EPT", "ENABLE_PML"), ("CTL-URG-NEEDS-EPT", "UNRESTRICTED_GUEST"),
                        ("CTL-MBEC-NEEDS-EPT", "MODE_BASED_EPT_EXEC")):
    MUTATIONS[_rule] = _ept_off_with(_control)


@mutation("CTL-PML-ADDR", lambda caps: allowed1(caps, "proc2", "ENABLE_PML"))
def _pml_addr(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "ENABLE_PML")
    doc["fields"]["PML_ADDRESS"] = draw(misaligned_or_wide(caps))


@mutation("CTL-VMFUNC-RESERVED", lambda caps: allowed1(caps, "proc2", "ENABLE_VMFUNC"))
def _vmfunc(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "ENABLE_VMFUNC")
    bit = draw(st.integers(0, 63).filter(lambda b: not (1 << b) & caps.vmfunc))
    doc["fields"]["VM_FUNCTION_CONTROL"] = 1 << bit
    doc["fields"]["EPTP_LIST_ADDRESS"] = 0


@mutation("CTL-EPTP-SWITCH-NEEDS-EPT", lambda caps: allowed1(caps, "proc2", "ENABLE_VMFUNC")
          and flexible(caps, "proc2", "ENABLE_EPT") and bool(caps.vmfunc & 1))
def _eptp_switch(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "ENABLE_VMFUNC")
    setbit(doc, "proc2", "ENABLE_EPT", False)
    doc["fields"]["VM_FUNCTION_CONTROL"] = 1
    doc["fields"]["EPTP_LIST_ADDRESS"] = draw(page_below(caps.maxphyaddr))


@mutation("CTL-EPTP-LIST-ADDR", lambda caps: allowed1(caps, "proc2", "ENABLE_VMFUNC") and bool(caps.vmfunc & 1))
def _eptp_list(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "ENABLE_VMFUNC")
    doc["fields"]["VM_FUNCTION_CONTROL"] = 1
    doc["fields"]["EPTP_LIST_ADDRESS"] = draw(misaligned_or_wide(caps))


@mutation("CTL-VMCS-SHADOW-BITMAPS", lambda caps: allowed1(caps, "proc2", "SHADOW_VMCS"))
def _shadow(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "SHADOW_VMCS")
    doc["fields"]["VMREAD_BITMAP"] = draw(misaligned_or_wide(caps))
    doc["fields"]["VMWRITE_BITMAP"] = 0


@mutation("CTL-VE-INFO-ADDR", lambda caps: allowed1(caps, "proc2", "EPT_VIOLATION_VE"))
def _ve(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "EPT_VIOLATION_VE")
    doc["fields"]["VE_INFORMATION_ADDRESS"] = draw(misaligned_or_wide(caps))


@mutation("CTL-TSC-MULTIPLIER-ZERO", lambda caps: allowed1(caps, "proc2", "TSC_SCALING"))
def _tsc(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "TSC_SCALING")
    doc["fields"]["TSC_MULTIPLIER"] = 0


@mutation("CTL-EXIT-PREEMPT-SAVE", lambda caps: allowed1(caps, "exit", "SAVE_VMX_PREEMPTION_TIMER"))
def _preempt(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "exit", "SAVE_VMX_PREEMPTION_TIMER")


def _area_mutation(count: str, addr: str) -> Mutation:
    def mutate(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
        entries = draw(st.integers(1, 64))
        doc["fields"][count] = entries
        choices = [st.integers(0, (1 << caps.maxphyaddr) - 1).filter(lambda v: v % 16),
                   st.integers(caps.maxphyaddr, 63).map(lambda b: 1 << b)]
        if entries > 1:  # an aligned area whose last entry crosses MAXPHYADDR
            choices.append(st.just((1 << caps.maxphyaddr) - 16 * (entries - 1)))
        doc["fields"][addr] = draw(st.one_of(choices))
    return mutate


for _rule, _count, _addr in (("CTL-EXIT-MSR-STORE-ADDR", "VM_EXIT_MSR_STORE_COUNT", "VM_EXIT_MSR_STORE_ADDR"),
                             ("CTL-EXIT-MSR-LOAD-ADDR", "VM_EXIT_MSR_LOAD_COUNT", "VM_EXIT_MSR_LOAD_ADDR"),
                             ("CTL-ENTRY-MSR-LOAD-ADDR", "VM_ENTRY_MSR_LOAD_COUNT", "VM_ENTRY_MSR_LOAD_ADDR")):
    MUTATIONS[_rule] = ((lambda caps: True), _area_mutation(_count, _addr))


@mutation("CTL-ENTRY-SMM", lambda caps: allowed1(caps, "entry", "DEACT_DUAL_MONITOR"))
def _smm(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "entry", "DEACT_DUAL_MONITOR")


@mutation("CTL-EVENT-TYPE")
def _event_type(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = (1 << 31) | (1 << 8) | draw(st.integers(0, 255))


@mutation("CTL-EVENT-VECTOR")
def _event_vector(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    kind, vector = draw(st.one_of(st.tuples(st.just(2), st.integers(0, 255).filter(lambda v: v != 2)),
                                  st.tuples(st.just(3), st.integers(32, 255))))
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = (1 << 31) | (kind << 8) | vector


@mutation("CTL-EVENT-RESERVED")
def _event_reserved(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    # an external interrupt (vector 0x20) with one of bits 30:12 set
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = (1 << 31) | (1 << draw(st.integers(12, 30))) | 0x20


@mutation("CTL-EVENT-ERRCODE-DELIVER", lambda caps: not reg_get("vmx_basic", "no_hw_error_code_check", caps.basic))
def _event_errcode(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    vector = draw(st.integers(0, 31).filter(lambda v: v not in (1, 2, 18)))
    with_code = {8, 10, 11, 12, 13, 14, 17} | ({21} if caps.default("cet") else set())
    deliver = 0 if vector in with_code else 1
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = (1 << 31) | (3 << 8) | (deliver << 11) | vector


@mutation("CTL-EVENT-ERRCODE-VALUE")
def _event_errcode_value(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = (1 << 31) | (3 << 8) | (1 << 11) | 13
    doc["fields"]["VM_ENTRY_EXCEPTION_ERROR_CODE"] = draw(st.integers(0x10000, 0xFFFFFFFF))


@mutation("CTL-EVENT-INSTR-LEN")
def _event_len(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = (1 << 31) | (4 << 8) | 0x80
    doc["fields"]["VM_ENTRY_INSTRUCTION_LEN"] = draw(st.integers(16, 0xFFFFFFFF))


@mutation("GUEST-CS-DPL")
def _cs_dpl(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_CS_AR_BYTES"] = 0xA09B | (draw(st.integers(1, 3)) << 5)


@mutation("GUEST-SS-DPL-RPL")
def _ss_dpl(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    dpl = draw(st.integers(1, 3))
    doc["fields"]["GUEST_SS_AR_BYTES"] = 0xC093 | (dpl << 5)
    doc["fields"]["GUEST_CS_AR_BYTES"] = 0xA09B | (dpl << 5)


@mutation("GUEST-DATA-DPL-RPL")
def _data_dpl(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_DS_SELECTOR"] = 0x10 | draw(st.integers(1, 3))


@mutation("GUEST-RFLAGS-IF-EXTINT")
def _if_extint(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_RFLAGS"] = 0x2
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = (1 << 31) | draw(st.integers(32, 255))


def _hlt(caps: Caps) -> bool:
    return bool(reg_get("vmx_misc", "activity_hlt", caps.misc))


@mutation("GUEST-ACTIVITY-HLT-SSDPL", _hlt)
def _hlt_dpl(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    f = doc["fields"]
    f["GUEST_ACTIVITY_STATE"] = 1
    f["GUEST_SS_AR_BYTES"] = 0xC0F3
    f["GUEST_CS_AR_BYTES"] = 0xA0FB
    f["GUEST_SS_SELECTOR"] = 0x13
    f["GUEST_CS_SELECTOR"] = 0x0B


@mutation("GUEST-ACTIVITY-BLOCKING", _hlt)
def _hlt_blocking(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_ACTIVITY_STATE"] = 1
    doc["fields"]["GUEST_INTERRUPTIBILITY_INFO"] = draw(st.sampled_from([1, 2]))


@mutation("GUEST-ACTIVITY-EVENT", _hlt)
def _hlt_event(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_ACTIVITY_STATE"] = 1
    vector = draw(st.sampled_from([0, 3, 4, 5, 6, 7, 16, 19]))
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = (1 << 31) | (3 << 8) | vector


@mutation("GUEST-INTR-STI-IF")
def _sti_if(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_INTERRUPTIBILITY_INFO"] = 1
    doc["fields"]["GUEST_RFLAGS"] = 0x2


@mutation("GUEST-INTR-EXTINT")
def _intr_extint(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_INTERRUPTIBILITY_INFO"] = draw(st.sampled_from([1, 2]))
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = (1 << 31) | draw(st.integers(32, 255))


@mutation("GUEST-INTR-NMI-MOVSS")
def _nmi_movss(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_INTERRUPTIBILITY_INFO"] = 2
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = ENTRY_VALID | 2


@mutation("GUEST-INTR-NMI-STI")
def _nmi_sti(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_INTERRUPTIBILITY_INFO"] = 1
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = ENTRY_VALID | 2


@mutation("GUEST-INTR-VNMI")
def _vnmi_blocking(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_INTERRUPTIBILITY_INFO"] = 8
    doc["fields"]["VM_ENTRY_INTR_INFO_FIELD"] = ENTRY_VALID | 2


@mutation("GUEST-PENDDBG-BS")
def _bs(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_INTERRUPTIBILITY_INFO"] = draw(st.sampled_from([1, 2]))
    doc["fields"]["GUEST_PENDING_DBG_EXCEPTIONS"] = 1 << 14


@mutation("GUEST-LINK-PTR-REVID")
def _link_revid(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["VMCS_LINK_POINTER"] = LINK_SPARE_PA
    doc["memory"] = [m for m in doc["memory"] if m["address"] != LINK_SPARE_PA]
    header = draw(st.integers(0, 0xFFFFFFFF).filter(lambda v: v != caps.revision_id))
    doc["memory"].append({"address": LINK_SPARE_PA, "size": 4, "value": header})


def pae_guest(doc: Dict[str, Any]) -> None:
    """Turn the baseline into a 32-bit PAE guest (a legal change on its own)."""
    f = doc["fields"]
    f["VM_ENTRY_CONTROLS"] &= ~ctl_mask("entry", "IA32E_MODE")
    f["GUEST_IA32_EFER"] = 0x1
    f["GUEST_CS_AR_BYTES"] = 0xC09B
    f["GUEST_RIP"] = 0x401000
    for n in range(4):
        f["GUEST_PDPTR%d" % n] = 0x14000 + 0x1000 * n + 1


@mutation("GUEST-PDPTE-RSVD")
def _pdpte(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    pae_guest(doc)
    entry = draw(st.integers(0, 3))
    bit = draw(st.sampled_from([1, 2, 5, 6, 7, 8] + list(range(caps.maxphyaddr, 64))))
    doc["fields"]["GUEST_PDPTR%d" % entry] |= 1 << bit
    return 2  # qualification: PDPTE loading


def v86_guest(doc: Dict[str, Any]) -> None:
    """A 32-bit PAE guest in virtual-8086 mode (legal on its own)."""
    pae_guest(doc)
    f = doc["fields"]
    f["GUEST_RFLAGS"] = 0x20202
    for seg in ("CS", "SS", "DS", "ES", "FS", "GS"):
        f["GUEST_%s_SELECTOR" % seg] = 0x1000
        f["GUEST_%s_BASE" % seg] = 0x10000
        f["GUEST_%s_LIMIT" % seg] = 0xFFFF
        f["GUEST_%s_AR_BYTES" % seg] = 0xF3


def host32(doc: Dict[str, Any]) -> None:
    """A 32-bit VMM (IA32_EFER.LMA = 0) entering a 32-bit PAE guest (legal on its own)."""
    pae_guest(doc)
    f = doc["fields"]
    doc["environment"]["host_ia32e"] = False
    f["VM_EXIT_CONTROLS"] &= ~ctl_mask("exit", "HOST_ADDR_SPACE_SIZE")
    f["HOST_IA32_EFER"] = 0x1
    f["HOST_RIP"] = 0x100000
    f["HOST_CR4"] &= ~(1 << 17)  # no PCIDE outside IA-32e mode
    for name in ("HOST_GS_BASE", "HOST_TR_BASE", "HOST_GDTR_BASE", "HOST_IDTR_BASE"):
        f[name] &= 0xFFFFFFFF


def _urg(caps: Caps) -> bool:
    return allowed1(caps, "proc2", "UNRESTRICTED_GUEST")


@mutation("GUEST-V86-BASE")
def _v86_base(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    v86_guest(doc)
    seg = draw(st.sampled_from(["CS", "SS", "DS", "ES", "FS", "GS"]))
    doc["fields"]["GUEST_%s_BASE" % seg] = draw(below(32).filter(lambda v: v != 0x10000))


@mutation("GUEST-V86-LIMIT")
def _v86_limit(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    v86_guest(doc)
    seg = draw(st.sampled_from(["CS", "SS", "DS", "ES", "FS", "GS"]))
    doc["fields"]["GUEST_%s_LIMIT" % seg] = draw(below(32).filter(lambda v: v != 0xFFFF))


@mutation("GUEST-V86-AR")
def _v86_ar(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    v86_guest(doc)
    seg = draw(st.sampled_from(["CS", "SS", "DS", "ES", "FS", "GS"]))
    doc["fields"]["GUEST_%s_AR_BYTES" % seg] = draw(st.sampled_from([0xF1, 0xF2, 0xD3, 0x93, 0x10F3, 0xFB]))


@mutation("GUEST-RFLAGS-VM", _urg)
def _rflags_vm(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    v86_guest(doc)
    setbit(doc, "proc2", "UNRESTRICTED_GUEST")
    doc["fields"]["GUEST_CR0"] &= ~0x80000001  # real mode: PE = PG = 0


@mutation("GUEST-CR0-PG-WITHOUT-PE", _urg)
def _pg_pe(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "UNRESTRICTED_GUEST")
    doc["fields"]["GUEST_CR0"] &= ~1


@mutation("GUEST-SS-DPL-ZERO", _urg)
def _ss_dpl_zero(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "UNRESTRICTED_GUEST")
    doc["fields"]["GUEST_CS_AR_BYTES"] = 0xC093
    doc["fields"]["GUEST_SS_AR_BYTES"] = 0xC093 | (draw(st.integers(1, 3)) << 5)


@mutation("GUEST-RIP-HIGH")
def _rip_high(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_CS_AR_BYTES"] = 0xC09B  # compatibility-mode code: RIP is 32 bits
    doc["fields"]["GUEST_RIP"] = draw(st.integers(1 << 32, MASK64))


@mutation("GUEST-CR4-PCIDE-NOT-IA32E", lambda caps: bool(caps.fixed("cr4")[1] & (1 << 17)))
def _pcide(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    pae_guest(doc)
    doc["fields"]["GUEST_CR4"] |= 1 << 17


@mutation("HOST-SS-NULL")
def _host_ss(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    host32(doc)
    doc["fields"]["HOST_SS_SELECTOR"] = 0


@mutation("HOST-32-CR4-PCIDE", lambda caps: bool(caps.fixed("cr4")[1] & (1 << 17)))
def _host_pcide(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    host32(doc)
    doc["fields"]["HOST_CR4"] |= 1 << 17


@mutation("HOST-32-RIP-HIGH")
def _host_rip_high(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    host32(doc)
    doc["fields"]["HOST_RIP"] = draw(st.integers(1 << 32, MASK64))


def _smm(caps: Caps) -> bool:
    return allowed1(caps, "entry", "SMM")


@mutation("GUEST-INTR-SMI-ENTRY-SMM", _smm)
def _smi_entry(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["environment"]["in_smm"] = True
    setbit(doc, "entry", "SMM")


@mutation("GUEST-ACTIVITY-SIPI-SMM", lambda caps: _smm(caps) and bool(
    reg_get("vmx_misc", "activity_wait_for_sipi", caps.misc)))
def _sipi_smm(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["environment"]["in_smm"] = True
    setbit(doc, "entry", "SMM")
    doc["fields"]["GUEST_INTERRUPTIBILITY_INFO"] = 4
    doc["fields"]["GUEST_ACTIVITY_STATE"] = 3


def _field_with(control: Tuple[str, str], field: str, values: Callable[[Caps], st.SearchStrategy[int]],
                extra: Optional[Dict[str, int]] = None) -> Tuple[Callable[[Caps], bool], Mutation]:
    """Turn a control on and give a field a bad value (plus neutral values for other fields
    the rule reads)."""
    def applies(caps: Caps) -> bool:
        return allowed1(caps, *control)

    def mutate(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
        setbit(doc, *control)
        doc["fields"].update(extra or {})
        doc["fields"][field] = draw(values(caps))
    return applies, mutate


MUTATIONS["CTL-PROC3-RESERVED"] = _field_with(("proc", "ACTIVATE_TERTIARY_CONTROLS"), "TERTIARY_VM_EXEC_CONTROL",
                                              lambda c: st.integers(8, 63).map(lambda b: 1 << b))
MUTATIONS["CTL-EXIT2-RESERVED"] = _field_with(("exit", "ACTIVATE_SECONDARY_CONTROLS"), "SECONDARY_VM_EXIT_CONTROLS",
                                              lambda c: st.sampled_from([2] + list(range(4, 64))).map(lambda b: 1 << b))
_CET_FIELDS = {"HOST_S_CET": 0, "HOST_SSP": 0, "HOST_INTR_SSP_TABLE": 0}
MUTATIONS["HOST-CET-STATE"] = _field_with(("exit", "LOAD_CET_STATE"), "HOST_S_CET", lambda c: st.one_of(
    st.integers(6, 9).map(lambda b: 1 << b), st.just(0xC00), noncanonical().map(lambda v: v & ~0xFFF)), _CET_FIELDS)
MUTATIONS["HOST-PKRS"] = _field_with(("exit", "LOAD_IA32_PKRS"), "HOST_IA32_PKRS",
                                     lambda c: st.integers(1, 0xFFFFFFFF).map(lambda h: h << 32))
_GCET_FIELDS = {"GUEST_S_CET": 0, "GUEST_SSP": 0, "GUEST_INTR_SSP_TABLE": 0}
MUTATIONS["GUEST-CET-STATE"] = _field_with(("entry", "LOAD_CET_STATE"), "GUEST_SSP", lambda c: st.one_of(
    st.integers(1, 3), noncanonical().map(lambda v: v & ~3)), _GCET_FIELDS)
MUTATIONS["GUEST-PKRS"] = _field_with(("entry", "LOAD_IA32_PKRS"), "GUEST_IA32_PKRS",
                                      lambda c: st.integers(1, 0xFFFFFFFF).map(lambda h: h << 32))
MUTATIONS["GUEST-BNDCFGS-RSVD"] = _field_with(("entry", "LOAD_BNDCFGS"), "GUEST_BNDCFGS",
                                              lambda c: st.integers(2, 11).map(lambda b: (1 << b) | 1))
MUTATIONS["GUEST-BNDCFGS-CANON"] = _field_with(("entry", "LOAD_BNDCFGS"), "GUEST_BNDCFGS",
                                               lambda c: noncanonical().map(lambda v: (v & ~0xFFF) | 1))
MUTATIONS["GUEST-RTIT-CTL"] = _field_with(("entry", "LOAD_IA32_RTIT_CTL"), "GUEST_IA32_RTIT_CTL",
                                          lambda c: st.integers(0, 63).filter(
                                              lambda b: not (1 << b) & 0x2007FFFF).map(lambda b: 1 << b))
MUTATIONS["GUEST-LBR-CTL"] = _field_with(("entry", "LOAD_IA32_LBR_CTL"), "GUEST_IA32_LBR_CTL",
                                         lambda c: st.integers(0, 63).filter(
                                             lambda b: not (1 << b) & 0x7F000F).map(lambda b: 1 << b))
_PI = {"POSTED_INTR_NV": 0xF2, "POSTED_INTR_DESC_ADDR": 0x3006000}


def _posted(caps: Caps) -> bool:
    return allowed1(caps, "pin", "POSTED_INTR") and allowed1(caps, "proc2", "VIRTUAL_INTR_DELIVERY")


def _with_pi(doc: Dict[str, Any], vid: bool = True) -> None:
    setbit(doc, "pin", "POSTED_INTR")
    setbit(doc, "proc2", "VIRTUAL_INTR_DELIVERY", vid)
    doc["fields"].update(_PI)


@mutation("CTL-PI-NEEDS-VID", _posted)
def _pi_vid(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    _with_pi(doc, vid=False)


@mutation("CTL-PI-NEEDS-ACK-INTR", lambda caps: _posted(caps) and flexible(caps, "exit", "ACK_INTR_ON_EXIT"))
def _pi_ack(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    _with_pi(doc)
    setbit(doc, "exit", "ACK_INTR_ON_EXIT", False)


@mutation("CTL-PI-VECTOR", _posted)
def _pi_vector(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    _with_pi(doc)
    doc["fields"]["POSTED_INTR_NV"] = draw(st.integers(0x100, 0xFFFF))


@mutation("CTL-PI-DESC-ADDR", _posted)
def _pi_desc(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    _with_pi(doc)
    doc["fields"]["POSTED_INTR_DESC_ADDR"] = draw(misaligned_or_wide(caps, 64))


@mutation("CTL-EPTP-AD", lambda caps: not reg_get("ept_vpid_cap", "ad_flags", caps.ept_vpid_cap))
def _eptp_ad(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["EPT_POINTER"] |= 0x40


MUTATIONS["CTL-SPP-NEEDS-EPT"] = _ept_off_with("ENABLE_SPP")
MUTATIONS["CTL-SPPTP-ADDR"] = _field_with(("proc2", "ENABLE_SPP"), "SPPT_POINTER", misaligned_or_wide)


@mutation("CTL-PT-GPA", lambda caps: allowed1(caps, "proc2", "PT_USE_GPA"))
def _pt_gpa(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    setbit(doc, "proc2", "PT_USE_GPA")


@mutation("HOST-CR4-CET-WP", lambda caps: bool(caps.fixed("cr4")[1] & (1 << 23)))
def _host_cet_wp(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["HOST_CR4"] |= 1 << 23
    doc["fields"]["HOST_CR0"] &= ~(1 << 16)


@mutation("GUEST-CR4-CET-WP", lambda caps: bool(caps.fixed("cr4")[1] & (1 << 23)))
def _guest_cet_wp(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_CR4"] |= 1 << 23
    doc["fields"]["GUEST_CR0"] &= ~(1 << 16)


@mutation("GUEST-INTR-ENCLAVE", lambda caps: bool(caps.default("sgx")))
def _enclave(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["fields"]["GUEST_INTERRUPTIBILITY_INFO"] = 0x12


@mutation("GUEST-PENDDBG-RTM", lambda caps: bool(caps.default("rtm")))
def _penddbg_rtm(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    # bit 12 clear, or a B0-B3 bit beside it: both break the RTM rule only
    doc["fields"]["GUEST_PENDING_DBG_EXCEPTIONS"] = (1 << 16) | draw(st.sampled_from([0, 1, 2, 4, 8]))


def _bad_entry(draw: Any, doc: Dict[str, Any], bad: Tuple[int, int]) -> int:
    good = [(0xC0000081, 0), (0x174, 0x10), (0xC0000102, 0)]
    before = draw(st.integers(0, 3))
    entries = [good[i % 3] for i in range(before)] + [bad] + [good[i % 3] for i in range(draw(st.integers(0, 2)))]
    _msr_area(doc, entries)
    return before + 1


def _msrload(rule_id: str, bad: Callable[[Any, Caps], Tuple[int, int]]) -> None:
    def mutate(draw: Any, doc: Dict[str, Any], caps: Caps) -> int:
        return _bad_entry(draw, doc, bad(draw, caps))
    mutation(rule_id)(mutate)


_msrload("MSRLOAD-RSVD", lambda d, c: ((d(st.integers(1, 0xFFFFFFFF)) << 32) | 0x174, 0))
_msrload("MSRLOAD-FS-GS-BASE", lambda d, c: (d(st.sampled_from([0xC0000100, 0xC0000101])), 0))
_msrload("MSRLOAD-X2APIC", lambda d, c: (d(st.integers(0x800, 0x8FF)), 0))
_msrload("MSRLOAD-SMM-ONLY", lambda d, c: (0x9B, 0))
_msrload("MSRLOAD-MODEL-SPECIFIC", lambda d, c: (d(st.sampled_from([0x79, 0x8B])), 0))
_msrload("MSRLOAD-WRMSR-FAULT", lambda d, c: d(st.one_of(
    st.tuples(st.just(0xC0000082), noncanonical()),
    st.tuples(st.just(0x277), pat_invalid()),
    st.tuples(st.just(0xC0000080), st.sampled_from([0xD01 | (1 << 1), 0xC01, 0x401])),
    st.tuples(st.integers(0x480, 0x491), below(64)))))


def _env_mutation(rule_id: str, **env: Any) -> None:
    def mutate(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
        doc["environment"].update(env)
    mutation(rule_id)(mutate)


_env_mutation("PRE-MOVSS", mov_ss_blocking=True)
_env_mutation("PRE-VMX-MODE", cpu_mode="compatibility")


@mutation("PRE-CPL")
def _cpl(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["environment"]["cpl"] = draw(st.integers(1, 3))


@mutation("PRE-LAUNCH-STATE")
def _launch(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    if draw(st.booleans()):
        doc["launch_state"] = "launched"
        doc["environment"]["instruction"] = "vmlaunch"
    else:
        doc["environment"]["instruction"] = "vmresume"


@mutation("PRE-NO-VMCS")
def _no_vmcs(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["vmcs_pa"] = MASK64


@mutation("PRE-SHADOW-VMCS")
def _shadow_vmcs(draw: Any, doc: Dict[str, Any], caps: Caps) -> None:
    doc["shadow"] = True


def _cases() -> List[Any]:
    out = []
    for profile, caps in sorted(PROFILES.items()):
        for rule_id, (applies, _) in sorted(MUTATIONS.items()):
            if applies(caps):
                out.append(pytest.param(profile, rule_id, id="%s-%s" % (profile, rule_id)))
    return out


@pytest.mark.parametrize("variant", [pae_guest, v86_guest, host32])
def test_variants_are_valid(variant: Callable[[Dict[str, Any]], None]) -> None:
    """The 32-bit PAE guest, virtual-8086 guest and 32-bit host variants the mutations start
    from are legal themselves."""
    for caps in PROFILES.values():
        doc = base(caps)
        variant(doc)
        report = run(doc, caps)
        assert report.outcome.result == "ok", report.violated()
        assert not report.not_checked


def test_mutations_cover_most_rules() -> None:
    """Every rule has a single-rule mutation except HOST-32-IA32E-GUEST (it always comes with
    HOST-ADDR-SIZE-LMA) and the advisories (see test_memory_rules)."""
    from vtdbg.core.check.rules import table

    covered = set(MUTATIONS)
    assert {r.id for r in table().rules} - covered == {"HOST-32-IA32E-GUEST", "CTL-MSR-LIST-TOO-LONG",
                                                        "ADV-POINTER-OUTSIDE-MEMORY"}
    assert len(covered) >= 170, len(covered)
    assert covered <= {r.id for r in table().rules}


@pytest.mark.parametrize("profile,rule_id", _cases())
def test_single_rule_mutation(profile: str, rule_id: str) -> None:
    caps = PROFILES[profile]
    _, mutate = MUTATIONS[rule_id]
    expected = rule_of(rule_id).outcome

    @st.composite
    def mutated(draw: Any) -> Tuple[Dict[str, Any], Optional[int]]:
        doc = copy.deepcopy(base(caps))
        return doc, mutate(draw, doc, caps)

    @SETTINGS
    @given(mutated())
    def check(case: Tuple[Dict[str, Any], Optional[int]]) -> None:
        doc, qualification = case
        report = run(doc, caps)
        assert report.violated() == [rule_id], [v.to_json() for v in report.violations]
        assert report.rule == rule_id
        want = expected if qualification is None else expected.with_qualification(qualification)
        if rule_id == "PRE-LAUNCH-STATE":
            assert report.outcome.result == "vmfail" and report.outcome.error in (4, 5)
        else:
            assert report.outcome.same_as(want), (report.outcome, want)

    check()
