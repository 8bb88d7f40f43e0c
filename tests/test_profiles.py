"""Target profiles, `vtdbg regions` and VMX root-mode detection against a fake debugger.

The fake target has what a pykd session offers (module list, symbols, type offsets,
per-CPU registers) over real x86-64 page tables in a byte array, and lays out the
Hypervisor From Scratch part 8 structures exactly as the profile describes them: the
GuestState global points to a pool array of VIRTUAL_MACHINE_STATE, EptState to an
EPT_STATE, VMXON/VMCS pages carry a revision id, and so on.
"""
from __future__ import annotations

import io
import json
import re
import struct
from typing import Dict, List, Optional, Tuple

import pytest

from tests.support.lab import lab_vmcs_values, synthetic_lab
from vtdbg.commands.registry import Context
from vtdbg.core import rootmode
from vtdbg.core.regions import detect_profile, find_regions
from vtdbg.frontends.cli import run
from vtdbg.layouts.registry import get_layout
from vtdbg.lib.errors import CapabilityError
from vtdbg.profiles import (
    ProfileError,
    all_profiles,
    builtin_profiles,
    explain_bugcheck,
    get_profile,
    parse_profile,
    user_profiles,
)
from vtdbg.target.base import Capability, Target
from vtdbg.target.image import ImageTarget

PAGE = 0x1000
KERNEL = 0xFFFFF80000000000  # where the fake maps its kernel pool
MODULE = "MyHypervisorDriver"


class FakeKernel(Target):
    """A debugger session over a small physical memory with 4-level page tables."""

    kind = "fake"
    capabilities = (Capability.PHYS_READ | Capability.VIRT_READ | Capability.REGS | Capability.CPU_SELECT
                    | Capability.SYMBOLS)

    def __init__(self, cpus: int = 2, phys_size: int = 0x400000, with_types: bool = True) -> None:
        super().__init__("fake kernel")
        self.mem = bytearray(phys_size)
        self.cpus = cpus
        self.cpu = 0
        self.with_types = with_types
        self.symbols: Dict[str, int] = {}
        self.types: Dict[Tuple[str, str], int] = {}
        self.sizes: Dict[str, int] = {}
        self.regs: List[Dict[str, int]] = [{"rip": 0, "rsp": 0, "cr3": PAGE} for _ in range(cpus)]
        self.module_list = [("nt", 0xFFFFF80400000000, 0x1000000), (MODULE, KERNEL + 0x200000, 0x20000)]
        self.next_phys = 0x10000  # physical pages handed out from here
        self.next_tables = 0x2000  # page-table pages
        self.calls = 0

    # -- building ---------------------------------------------------------------------------
    def _table_page(self) -> int:
        page = self.next_tables
        self.next_tables += PAGE
        assert page < 0x10000, "fake ran out of page-table pages"
        return page

    def map_page(self, va: int, pa: int) -> None:
        table = PAGE  # PML4 at PA 0x1000
        for level in (4, 3, 2):
            index = (va >> (12 + 9 * (level - 1))) & 0x1FF
            entry_pa = table + index * 8
            (entry,) = struct.unpack_from("<Q", self.mem, entry_pa)
            if not entry & 1:
                entry = self._table_page() | 3
                struct.pack_into("<Q", self.mem, entry_pa, entry)
            table = entry & 0x000FFFFFFFFFF000
        struct.pack_into("<Q", self.mem, table + ((va >> 12) & 0x1FF) * 8, pa | 3)

    def alloc(self, va: int, size: int) -> int:
        """Back ``size`` bytes at ``va`` with fresh physical pages; returns the first PA."""
        first = None
        for offset in range(0, size, PAGE):
            pa = self.next_phys
            self.next_phys += PAGE
            self.map_page(va + offset, pa)
            first = pa if first is None else first
        assert first is not None
        return first

    def poke(self, va: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            pa = self.translate(va + i)
            self.mem[pa] = byte

    def poke_u64(self, va: int, value: int) -> None:
        self.poke(va, struct.pack("<Q", value))

    def translate(self, va: int) -> int:
        from vtdbg.target.paging import translate

        pa, _ = translate(self.read_phys, PAGE, va)
        return pa

    # -- the Target protocol --------------------------------------------------------------------
    def read_phys(self, pa: int, size: int) -> bytes:
        self.calls += 1
        if pa < 0 or pa + size > len(self.mem):
            from vtdbg.lib.errors import MemoryReadError

            raise MemoryReadError(pa, size, "outside the fake's memory")
        return bytes(self.mem[pa:pa + size])

    def phys_ranges(self) -> List[Tuple[int, int]]:
        return [(0, len(self.mem))]

    def registers(self) -> Dict[str, int]:
        return dict(self.regs[self.cpu])

    def cpu_count(self) -> int:
        return self.cpus

    def current_cpu(self) -> int:
        return self.cpu

    def _switch_cpu(self, cpu: int) -> None:
        self.cpu = cpu

    def modules(self) -> List[Tuple[str, int, int]]:
        return list(self.module_list)

    def symbol(self, name: str) -> Optional[int]:
        return self.symbols.get(name)

    def field_offset(self, type_name: str, field_name: str) -> Optional[int]:
        if not self.with_types:
            raise CapabilityError("no private symbols loaded")
        return self.types.get((type_name, field_name))

    def type_size(self, type_name: str) -> Optional[int]:
        return self.sizes.get(type_name) if self.with_types else None


class Hfs8:
    """The planted HFS part 8 state (addresses the tests check against)."""

    def __init__(self, cpus: int = 2, with_types: bool = True, eptp: int = 0x1234501E) -> None:
        k = self.k = FakeKernel(cpus, with_types=with_types)
        base = KERNEL + 0x200000
        self.guest_state_sym = base + 0x3000
        self.ept_state_sym = base + 0x3008
        self.handler = base + 0x1000  # AsmVmexitHandler
        self.c_handler = base + 0x1400  # VmxVmexitHandler
        k.alloc(base, 0x4000)  # driver image (code + data)
        for name, va in (("GuestState", self.guest_state_sym), ("EptState", self.ept_state_sym),
                         ("AsmVmexitHandler", self.handler), ("VmxVmexitHandler", self.c_handler),
                         ("VmxVmresume", base + 0x1800), ("GlobalNotifyRecord", base + 0x3010),
                         ("HvHandleCpuid", base + 0x1900)):
            k.symbols["%s!%s" % (MODULE, name)] = va
        vms = "%s!VIRTUAL_MACHINE_STATE" % MODULE
        for field_name, offset in (("IsOnVmxRootMode", 0), ("HasLaunched", 2), ("VmxonRegionPhysicalAddress", 8),
                                   ("VmxonRegionVirtualAddress", 0x10), ("VmcsRegionPhysicalAddress", 0x18),
                                   ("VmcsRegionVirtualAddress", 0x20), ("VmmStack", 0x28),
                                   ("MsrBitmapVirtualAddress", 0x30), ("MsrBitmapPhysicalAddress", 0x38)):
            k.types[(vms, field_name)] = offset
        k.types[("%s!EPT_STATE" % MODULE, "EptPointer")] = 0xF0
        k.sizes[vms] = 0x60
        # the pool array GuestState points to
        self.array = KERNEL + 0x400000
        k.alloc(self.array, PAGE)
        k.poke_u64(self.guest_state_sym, self.array)
        # EPT_STATE
        self.ept_state = KERNEL + 0x410000
        k.alloc(self.ept_state, PAGE)
        k.poke_u64(self.ept_state_sym, self.ept_state)
        k.poke_u64(self.ept_state + 0xF0, eptp)
        self.eptp = eptp
        self.per_cpu: List[Dict[str, int]] = []
        for cpu in range(cpus):
            element = self.array + cpu * 0x60
            vmxon_va = KERNEL + 0x500000 + cpu * 0x10000
            vmcs_va = vmxon_va + 0x4000
            vmxon_pa = k.alloc(vmxon_va, PAGE)
            vmcs_pa = k.alloc(vmcs_va, PAGE)
            k.poke(vmxon_va, struct.pack("<I", 0x12))
            k.poke(vmcs_va, struct.pack("<I", 0x12))
            stack = KERNEL + 0x600000 + cpu * 0x10000
            bitmap_va = KERNEL + 0x700000 + cpu * 0x10000
            bitmap_pa = k.alloc(bitmap_va, PAGE)
            fields = {"vmxon_pa": vmxon_pa, "vmcs_pa": vmcs_pa, "stack": stack, "bitmap_pa": bitmap_pa,
                      "element": element}
            k.poke(element, bytes([1 if cpu == 0 else 0, 0, 1]))
            for offset, value in ((8, vmxon_pa), (0x10, vmxon_va), (0x18, vmcs_pa), (0x20, vmcs_va), (0x28, stack),
                                  (0x30, bitmap_va), (0x38, bitmap_pa)):
                k.poke_u64(element + offset, value)
            self.per_cpu.append(fields)


def _run(argv: List[str], target: Target) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(target_uri="fake:", opener=lambda uri: target)
    status = run(argv, out, err, ctx)
    return status, out.getvalue(), err.getvalue()


# -- the profile files ------------------------------------------------------------------------
SOURCE_RE = re.compile(r"^[^/\s]+/[^@\s]+@[0-9a-f]{40}:.+")


def test_every_builtin_profile_loads_cites_sources_and_is_unverified():
    from vtdbg.arch.exit_reasons import all_exit_reasons

    reasons = {r.name for r in all_exit_reasons()}
    profiles = builtin_profiles()
    expected = {"hfs_part3", "hfs_part4", "hfs_part5", "hfs_part6", "hfs_part7", "hfs_part8", "hyperdbg",
                "hyperplatform", "simplevisor", "ksm", "gbhv", "hvpp", "hyperbone"}
    assert expected <= set(profiles)
    for name, profile in profiles.items():
        assert profile.verified is False, name
        assert any(SOURCE_RE.match(s) for s in profile.sources), name
        assert profile.path.endswith(name + ".json")
        for reason in profile.doc.get("exit_reason_handlers", {}):
            assert reason in reasons, (name, reason)
        for role, spec in profile.per_cpu.fields.items():
            assert spec.names, (name, role)


def test_hyperbone_and_hyperplatform_define_their_bugchecks():
    hb = explain_bugcheck(0x20001, [2, 0xFFFFF80012345678, 0xFFFFF80000001000, 0x1000])
    assert [m.profile for m in hb] == ["hyperbone"]
    assert "TRIPLE_FAULT" in hb[0].meaning
    assert hb[0].parameters[1]["meaning"] == "guest RIP"
    # MANUALLY_INITIATED_CRASH is generic: only sub-codes a profile defines match
    assert [m.profile for m in explain_bugcheck(0xE2, [1, 0, 0x401000, 0])] == ["hyperplatform"]
    assert [m.profile for m in explain_bugcheck(0xE2, [0xBAADBABE, 1, 2, 3])] == ["ksm"]
    assert explain_bugcheck(0xE2, [0x12345, 0, 0, 0]) == []
    assert explain_bugcheck(0x3B, [0, 0, 0, 0]) == []


def test_user_profile_joins_and_cannot_shadow_a_builtin(isolated_home):
    folder = isolated_home / "profiles"
    folder.mkdir(parents=True)
    doc = json.loads(open(get_profile("hfs_part8").path, encoding="utf-8").read())
    doc["name"] = "my_hfs_fork"
    doc["modules"] = ["MyFork"]
    (folder / "mine.json").write_text(json.dumps(doc), encoding="utf-8")
    shadow = dict(doc, name="hfs_part8")
    (folder / "shadow.json").write_text(json.dumps(shadow), encoding="utf-8")
    (folder / "broken.json").write_text("{", encoding="utf-8")
    users, warnings = user_profiles()
    assert list(users) == ["my_hfs_fork"] and users["my_hfs_fork"].builtin is False
    assert any("built in" in w for w in warnings) and any("cannot read" in w for w in warnings)
    assert "my_hfs_fork" in [p.name for p in all_profiles()[0]]
    assert get_profile("MY_HFS_FORK").name == "my_hfs_fork"


def test_profile_validation_names_the_problem():
    base = json.loads(open(get_profile("hfs_part3").path, encoding="utf-8").read())
    with pytest.raises(ProfileError, match="schema"):
        parse_profile(dict(base, schema="x"))
    with pytest.raises(ProfileError, match="unknown keys"):
        parse_profile(dict(base, colour="red"))
    with pytest.raises(ProfileError, match="owner/repo@commit:path"):
        parse_profile(dict(base, sources=["somewhere"]))
    bad = json.loads(json.dumps(base))
    bad["per_cpu"]["fields"]["vmcs"]["kind"] = "weird"
    with pytest.raises(ProfileError, match="kind"):
        parse_profile(bad)
    # user profiles need no commit-pinned citation
    assert parse_profile(dict(base, name="mine", sources=[]), builtin=False).name == "mine"


# -- detection --------------------------------------------------------------------------------
def test_detects_part8_from_modules_and_symbols():
    hfs = Hfs8()
    detection = detect_profile(hfs.k)
    assert detection.profile is not None and detection.profile.name == "hfs_part8"
    assert detection.module == MODULE


def test_part7_symbols_select_part7():
    hfs = Hfs8()
    del hfs.k.symbols["%s!GlobalNotifyRecord" % MODULE]
    hfs.k.symbols["%s!TargerCr3Count" % MODULE] = KERNEL + 0x203100
    assert detect_profile(hfs.k).profile.name == "hfs_part7"


def test_no_matching_module_detects_nothing():
    hfs = Hfs8()
    hfs.k.module_list = [("nt", 0xFFFFF80400000000, 0x1000000)]
    assert detect_profile(hfs.k).profile is None


# -- regions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("with_types", [True, False])
def test_regions_match_what_was_planted(with_types):
    hfs = Hfs8(cpus=3, with_types=with_types)
    found = find_regions(hfs.k)
    assert [r.cpu for r in found] == [0, 1, 2]
    for item, planted in zip(found, hfs.per_cpu):
        assert item.error is None, item.error
        assert item.profile == "hfs_part8"
        assert item.vmxon_pa == planted["vmxon_pa"]
        assert item.vmcs_pa == planted["vmcs_pa"]
        assert item.vmm_stack == planted["stack"]
        assert item.vmm_stack_size == 0x8000
        assert item.msr_bitmap_pa == planted["bitmap_pa"]
        assert item.eptp == hfs.eptp
        assert item.per_cpu_address == planted["element"]
        assert item.fields["launched"] == 1
        wanted = "type information" if with_types else "profile offset"
        assert wanted in item.sources["vmcs_pa"]


def test_one_cpu_and_bounds():
    hfs = Hfs8(cpus=2)
    [one] = find_regions(hfs.k, cpu=1)
    assert one.cpu == 1 and one.vmcs_pa == hfs.per_cpu[1]["vmcs_pa"]
    from vtdbg.lib.errors import UsageError

    with pytest.raises(UsageError):
        find_regions(hfs.k, cpu=2)


def test_cpu_beyond_zero_needs_an_element_size():
    hfs = Hfs8(cpus=2, with_types=False)
    profile = get_profile("hyperdbg")  # element_size is null in the profile
    hfs.k.module_list.append(("hyperhv", KERNEL + 0x800000, 0x1000))
    hfs.k.symbols["hyperhv!g_GuestState"] = hfs.guest_state_sym
    found = find_regions(hfs.k, profile=profile)
    assert found[0].error is None
    assert found[1].error is not None and "only CPU 0" in found[1].error


def test_null_pointer_gives_per_cpu_errors_not_a_crash():
    hfs = Hfs8()
    hfs.k.poke_u64(hfs.guest_state_sym, 0)
    found = find_regions(hfs.k)
    assert all("NULL pointer" in (r.error or "") for r in found)


def test_unlocatable_profile_falls_back_to_a_scan():
    hfs = Hfs8(cpus=1)
    page = get_layout("bochs_2_7").build_page(lab_vmcs_values(CPU_BASED_VM_EXEC_CONTROL=0x940061F2,
                                                              EPT_POINTER=0x501E, MSR_BITMAP=0x7000))
    hfs.k.mem[hfs.per_cpu[0]["vmcs_pa"]:hfs.per_cpu[0]["vmcs_pa"] + PAGE] = page
    warnings: List[str] = []
    found = find_regions(hfs.k, profile="hyperplatform", warnings=warnings)
    assert found[0].vmcs_pa == hfs.per_cpu[0]["vmcs_pa"]
    assert found[0].eptp == 0x501E and found[0].msr_bitmap_pa == 0x7000
    assert any("not reachable" in w for w in warnings)


def test_image_without_symbols_uses_the_scan():
    image, truth = synthetic_lab(SECONDARY_VM_EXEC_CONTROL=0)
    target = ImageTarget.from_bytes(bytes(image))
    [item] = find_regions(target)
    assert item.vmcs_pa == truth["vmcs_pa"] and item.profile is None
    assert item.eptp is None and item.msr_bitmap_pa is None  # EPT off, MSR bitmaps unused in that VMCS
    assert item.root_mode is None
    [item] = find_regions(ImageTarget.from_bytes(bytes(synthetic_lab()[0])))
    assert item.eptp == truth["eptp"]


# -- root mode --------------------------------------------------------------------------------
def test_root_mode_rip_inside_the_exit_handler():
    hfs = Hfs8(cpus=2)
    hfs.k.regs[0].update(rip=hfs.handler + 0x10, rsp=hfs.per_cpu[0]["stack"] + 0x7F00)
    hfs.k.regs[1].update(rip=0xFFFFF80400123456, rsp=0xFFFFD00012345000)
    cpu0, cpu1 = find_regions(hfs.k)
    assert cpu0.root_mode is True
    says = {e.source: e.says for e in cpu0.root_mode_evidence}
    assert says == {"flag": True, "rip": True, "rsp": True}
    assert cpu1.root_mode is False
    says = {e.source: e.says for e in cpu1.root_mode_evidence}
    assert says == {"flag": False, "rip": None, "rsp": False}
    assert hfs.k.cpu == 0, "select_cpu must restore the current CPU"


def test_root_mode_rip_at_the_c_handler_entry_and_by_symbol():
    hfs = Hfs8(cpus=1)
    hfs.k.poke(hfs.per_cpu[0]["element"], b"\x00")  # stale flag says non-root
    hfs.k.regs[0].update(rip=hfs.c_handler, rsp=0)
    [cpu0] = find_regions(hfs.k)
    assert cpu0.root_mode is True  # hardware clue wins over the flag
    hfs.k.regs[0].update(rip=hfs.c_handler + 0x40)
    hfs.k.symbol_at = lambda address: "%s!VmxVmexitHandler+0x40" % MODULE  # type: ignore[attr-defined]
    [cpu0] = find_regions(hfs.k)
    assert cpu0.root_mode is True
    assert any("VmxVmexitHandler+0x40" in e.detail for e in cpu0.root_mode_evidence)


def test_root_mode_without_registers_uses_the_flag_or_says_unknown():
    assert rootmode.judge(flag=1).root_mode is True
    assert rootmode.judge(flag=0).root_mode is False
    assert rootmode.judge(flag=None).root_mode is None
    assert rootmode.judge(has_flag=False).root_mode is None
    verdict = rootmode.judge(flag=1, rip=0x5000, rsp=0x9000, stack=(0x1000, 0x2000))
    assert verdict.root_mode is False  # off the VMM stack outranks a set flag
    assert [e.source for e in verdict.evidence] == ["flag", "rip", "rsp"]
    assert rootmode.judge(rip=0x1010, ranges=[("stub", 0x1000, 0x1060)], has_flag=False).root_mode is True
    # the inclusive top: HOST_RSP = VmmStack + size - 1, a fresh exit sits right there
    assert rootmode.rsp_evidence(0x3000, (0x1000, 0x2000)).says is True


# -- the command ------------------------------------------------------------------------------
def test_regions_command_json_and_text():
    hfs = Hfs8(cpus=2)
    status, out, err = _run(["regions", "--cpu", "all", "--json"], hfs.k)
    assert status == 0, err
    doc = json.loads(out)
    assert isinstance(doc, list) and [d["cpu"] for d in doc] == [0, 1]
    for item, planted in zip(doc, hfs.per_cpu):
        for key in ("cpu", "vmxon_pa", "vmcs_pa", "vmm_stack", "msr_bitmap_pa", "eptp", "root_mode",
                    "root_mode_evidence", "profile"):
            assert key in item
        assert item["vmcs_pa"] == planted["vmcs_pa"] and item["profile"] == "hfs_part8"
        assert all(isinstance(e["source"], str) for e in item["root_mode_evidence"])
    status, out, err = _run(["regions", "--cpu", "1"], hfs.k)
    assert status == 0 and "CPU 1 (profile hfs_part8)" in out and "VMCS" in out
    status, out, err = _run(["regions", "--json"], hfs.k)  # default: the current CPU only
    assert [d["cpu"] for d in json.loads(out)] == [0]
    status, out, err = _run(["regions", "--profile", "nonesuch"], hfs.k)
    assert status == 2 and "unknown profile" in err


def test_profiles_command():
    status, out, err = _run(["profiles", "--json"], Hfs8().k)
    assert status == 0
    names = [p["name"] for p in json.loads(out)]
    assert "hfs_part8" in names and "hyperbone" in names
    status, out, err = _run(["profiles", "--detect", "--json"], Hfs8().k)
    assert json.loads(out)["detected"] == "hfs_part8"
    status, out, err = _run(["profiles", "hfs_part8", "--json"], Hfs8().k)
    doc = json.loads(out)
    assert doc["per_cpu"]["fields"]["vmcs"]["offset"] == 0x18 and doc["vmm_stack"]["size"] == 0x8000
    status, out, err = _run(["profiles", "hyperbone"], Hfs8().k)
    assert status == 0 and "HYPERVISOR_ERROR" in out and "DarthTon/HyperBone@" in out


def test_regions_reads_little():
    """One virtual read per CPU structure plus a handful for globals (each read_phys here
    stands for the page-walk reads the fake does, so the bound is loose on purpose)."""
    hfs = Hfs8(cpus=2)
    hfs.k.calls = 0
    find_regions(hfs.k)
    assert hfs.k.calls < 80



# -- through the real pykd backend (tests/pykd_standin) ------------------------------------------
STANDIN = __import__("pathlib").Path(__file__).resolve().parent / "pykd_standin" / "pykd.py"


@pytest.fixture
def standin(monkeypatch):
    """The pykd stand-in as ``pykd`` (skipped until it exists in the tree)."""
    import importlib.util
    import sys

    if not STANDIN.is_file():
        pytest.skip("tests/pykd_standin/pykd.py not present")
    spec = importlib.util.spec_from_file_location("pykd", str(STANDIN))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    monkeypatch.setitem(sys.modules, "pykd", module)
    yield module
    module._install(None)


def test_regions_through_the_pykd_backend(standin):
    from vtdbg.target.pykd_backend import PykdTarget

    hfs = Hfs8(cpus=2)
    fields = {name: offset for (type_name, name), offset in hfs.k.types.items()
              if type_name.endswith("!VIRTUAL_MACHINE_STATE")}
    regs = [{"rip": hfs.handler + 8, "rsp": hfs.per_cpu[0]["stack"] + 0x7000, "cr3": PAGE},
            {"rip": 0xFFFFF80400123456, "rsp": 0xFFFFD00012345000, "cr3": PAGE}]
    sim = standin._install(standin.Simulator.from_spec({
        "mode": "live", "image": bytes(hfs.k.mem), "cpus": [{"regs": r} for r in regs],
        "symbols": dict(hfs.k.symbols),
        "modules": [{"name": n, "base": b, "size": s} for n, b, s in hfs.k.module_list],
        "types": {"%s!VIRTUAL_MACHINE_STATE" % MODULE: {"size": 0x60, "fields": fields},
                  "%s!EPT_STATE" % MODULE: {"size": 0x100, "fields": {"EptPointer": 0xF0}}},
    }))
    target = PykdTarget(standin)
    assert target.has(Capability.SYMBOLS)
    before = len(sim.calls)
    found = find_regions(target)
    # registers() is one pykd.reg call per register; everything else is counted
    calls = len([c for c in sim.calls[before:] if c != "reg"])
    assert [r.profile for r in found] == ["hfs_part8", "hfs_part8"]
    for item, planted in zip(found, hfs.per_cpu):
        assert item.error is None, item.error
        assert (item.vmxon_pa, item.vmcs_pa, item.msr_bitmap_pa) == (planted["vmxon_pa"], planted["vmcs_pa"],
                                                                     planted["bitmap_pa"])
        assert item.eptp == hfs.eptp and "type information" in item.sources["vmcs_pa"]
    assert [r.root_mode for r in found] == [True, False]
    assert sim.current == 0, "the current CPU is restored"
    assert calls <= 30, "debugger transactions besides register reads: %d" % calls
