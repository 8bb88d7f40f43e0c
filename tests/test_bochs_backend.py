"""The live Bochs backend (``bochs:CONFIG.bxrc``).

Three groups:

* parser tests on transcripts captured from Bochs 2.7 (always run);
* a tiny boot sector (built here with nasm) that fills memory with a known pattern,
  prints to port 0xE9, stops on two magic breakpoints and then spins, halts or triple
  faults as the test chooses: the target contract, stops, breakpoints, registers and --
  most important -- that no Bochs process survives any way a session can end;
* the vtdbg lab hypervisor (tests/lab): a VMCS decode at every VM exit matches the exit
  reasons the lab prints, MSR and MAXPHYADDR reads match its ground truth.

The Bochs groups are marked ``lab`` and skipped when bochs-bin, nasm or unshare is missing.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List

import pytest

from tests.contract.contract import ContractSetup, TargetContract
from vtdbg.lib.errors import MemoryReadError, MemoryWriteError, TargetError
from vtdbg.target import bochs_parse as bp
from vtdbg.target.bochs_pty import MAX_LINE, pack_lines

ROOT = Path(__file__).resolve().parents[1]
ROM = Path("/usr/share/bochs/BIOS-bochs-latest")


def _missing_tools() -> str:
    for tool in ("bochs-bin", "nasm", "unshare"):
        if shutil.which(tool) is None:
            return "%s is not installed (apt-get install bochs bochsbios vgabios nasm)" % tool
    return ""


needs_bochs = pytest.mark.skipif(bool(_missing_tools()), reason=_missing_tools() or "tools present")


def bochs_children() -> List[int]:
    """PIDs of bochs-bin processes (zombies included) whose parent is this test process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                stat = handle.read().decode("latin-1")
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if name == "bochs-bin" and ppid == os.getpid():
            found.append(int(entry))
    return found


# --------------------------------------------------------------------------------------------
# parsers (no Bochs needed)
# --------------------------------------------------------------------------------------------

XP_4 = ("[bochs]:\n0x0000000000008000 <bogus+       0>:\t0x706050403020100\t0xf0e0d0c0b0a0908\n"
        "0x0000000000008010 <bogus+      16>:\t0x00000000\t0xffffffffffffffff\n")
REGS = """CPU0:
rax: 11223344_55667788
rbx: 00000000_0000b99c
rcx: 00000000_00090000
r8 : 00000000_00000001
rip: 00000000_0000bc27
eflags 0x00000046: id vip vif ac vm rf nt IOPL=0 of df if tf sf ZF af PF cf
CR0=0xe0000031: PG CD NW ac wp NE ET ts em mp PE
CR2=page fault laddr=0x0000000000000000
CR3=0x000000030000
    PCD=page-level cache disable=0
CR4=0x00002020: pks cet pke smap smep keylock osxsave pcid fsgsbase smx VMX la57 umip osxmmexcpt
CR8: 0x0
EFER=0x00000500: ffxsr nxe LMA LME sce
cs:0x0008, dh=0x00209b00, dl=0x0000ffff, valid=1
\tCode segment, base=0x00000000, limit=0x0000ffff, Execute/Read, Non-Conforming, Accessed, 64-bit
ldtr:0x0000, dh=0x00000000, dl=0x00000000, valid=0
tr:0x0020, dh=0x00008b00, dl=0x10000067, valid=1
gdtr:base=0x0000000000007c90, limit=0xffff
show param name: <cpu0.FS.base>
base = 0x12345678abcd
"""


def test_dump_parser_checks_addresses_and_counts():
    assert bp.parse_dump(XP_4, 0x8000, 4) == [0x706050403020100, 0xF0E0D0C0B0A0908, 0, 2**64 - 1]
    assert bp.dump_bytes(bp.parse_dump(XP_4, 0x8000, 4))[:9] == bytes(range(9))
    with pytest.raises(bp.DumpError):
        bp.parse_dump(XP_4, 0x8008, 4)  # first line is at another address
    with pytest.raises(bp.DumpError):
        bp.parse_dump(XP_4, 0x8000, 5)  # a value missing
    failed = "[bochs]:\n0x00007fffffff0000 <bogus+       0>:bx_dbg_read_linear: physical address not available\n"
    with pytest.raises(bp.DumpError, match="not available"):
        bp.parse_dump(failed, 0x7FFFFFFF0000, 2)


def test_register_parser_reads_hex_without_letters_and_descriptors():
    regs = bp.parse_registers(REGS)
    assert regs["rcx"] == 0x90000  # not 90000 decimal
    assert regs["rax"] == 0x1122334455667788 and regs["r8"] == 1 and regs["rip"] == 0xBC27
    assert regs["rflags"] == 0x46 and regs["cr0"] == 0xE0000031 and regs["cr3"] == 0x30000
    assert regs["efer"] == 0x500 and regs["cr8"] == 0 and regs["cr4"] == 0x2020
    assert regs["cs"] == 8 and regs["cs_ar"] == 0x209B and regs["cs_base"] == 0
    assert regs["tr_base"] == 0x1000 and regs["tr_limit"] == 0x67 and regs["tr_ar"] == 0x8B
    assert regs["ldtr_ar"] & 0x10000  # invalid cache = unusable
    assert regs["gdtr_base"] == 0x7C90 and regs["fs_base"] == 0x12345678ABCD
    assert all(k == k.lower() for k in regs)


def test_stop_split_keeps_console_text_that_lacks_a_newline():
    text = ("EXIT 01 reason=0A\nabc(0) Caught VMEXIT breakpoint\nNext at t=187727046\n"
            "(0) [0x00000000bc27] 0008:000000000000bc27 (unk. ctxt): mov qword ptr ds:0x28000, rax ; 48890425\n")
    console, report, rest = bp.split_stop(text)
    assert console == "EXIT 01 reason=0A\nabc"
    assert report is not None and report.kind == "vmexit" and report.cpu == 0 and report.ticks == 187727046
    assert report.cpus[0][:3] == (0xBC27, 8, 0xBC27) and rest == ""
    console, report, _ = bp.split_stop("(1) Breakpoint 2, 0x000000000000bb15 in ?? ()\nNext at t=5\n"
                                       "(0) [0x0000bb00] 0008:bb00 (unk. ctxt): nop ; 90\n"
                                       "(1) [0x0000bb15] 0008:bb15 (unk. ctxt): wrmsr ; 0f30\n")
    assert console == "" and report is not None and report.kind == "breakpoint" and report.breakpoint == 2
    assert report.cpu == 1 and set(report.cpus) == {0, 1}
    assert bp.split_stop("no stop here")[1] is None
    # with two CPUs, CPU 1's header comes among the CPU lines, after "Next at t="
    console, report, rest = bp.split_stop("AP done\nNext at t=9\n"
                                          "(0) [0x00000000c419] 0008:000000000000c419 (unk. ctxt): loop .-5 ; e2fb\n"
                                          "(1) Caught VMEXIT breakpoint\n"
                                          "(1) [0x00000000c603] 0008:000000000000c603 (unk. ctxt): nop ; 90\n")
    assert console == "AP done\n" and report is not None and report.kind == "vmexit" and report.cpu == 1
    assert report.cpus[1][2] == 0xC603 and report.cpus[0][2] == 0xC419 and rest == ""
    _, report, _ = bp.split_stop("Next at t=5\n(0) [0x0000bb00] 0008:bb00 (unk. ctxt): nop ; 90\n"
                                 "(1) Breakpoint 3, 0x000000000000c603 in ?? ()\n"
                                 "(1) [0x0000c603] 0008:c603 (unk. ctxt): nop ; 90\n")
    assert report is not None and (report.kind, report.cpu, report.breakpoint) == ("breakpoint", 1, 3)
    # a debugger complaint between the CPU lines does not end the report
    _, report, _ = bp.split_stop("(0) Caught write watch point at 0x0000fee00300\nNext at t=7\n"
                                 "(0) [0x0000000e1af6] 0010:00000000000e1af6 (unk. ctxt): nop ; 90\n"
                                 "bx_dbg_read_pmode_descriptor: selector (0xf000) > GDT size limit\n"
                                 "(1) [0x0000fffffff0] f000:fff0 (unk. ctxt): jmpf 0xf000:e05b ; ea5be000f0\n")
    assert report is not None and report.kind == "other" and set(report.cpus) == {0, 1}


def test_param_tree_and_vmx_summary():
    tree = bp.parse_param_tree("show param name: <cpu0.VMX>\nVMX = {\n  vmcsptr = 0x21000\n"
                               "  vmxonptr = 0xffffffffffffffff\n  in_vmx = true\n  in_vmx_guest = false\n"
                               "  VMCS_CACHE = {\n    VMEXEC_CTRLS = {\n      vm_cr3_target_cnt = 0\n"
                               "      vmexec_ctrls1 = 0x00000017\n    }\n  }\n}\n")
    state = bp.vmx_summary(tree)
    assert state["vmcsptr"] == 0x21000 and state["vmxonptr"] is None
    assert state["in_vmx"] is True and state["in_vmx_guest"] is False
    assert state["cache"]["VMEXEC_CTRLS"]["vmexec_ctrls1"] == 0x17
    assert bp.parse_param_tree("show param name: <cpu0.MSR.EFER>\nEFER = 0x00000500\n") == {"EFER": 0x500}


def test_versions_choose_layouts():
    assert bp.banner_version("=====\n   Bochs x86 Emulator 2.7\n  Built from SVN") == "2.7"
    assert bp.banner_version("Bochs x86 Emulator 3.0.devel") == "3.0.devel"
    assert bp.banner_version("nothing") is None
    assert bp.layout_for_version("2.7") == "bochs_2_7"
    assert bp.layout_for_version("2.6.11") == "bochs_2_7"
    assert bp.layout_for_version("2.8") == "bochs_2_8_3_0"
    assert bp.layout_for_version("3.0") == "bochs_2_8_3_0"
    assert bp.layout_for_version("3.1") == "bochs_git_post_3_0"
    assert bp.layout_for_version(None) is None and bp.layout_for_version("2.5") is None


def test_small_parsers():
    assert bp.parse_blist("Num Type           Disp Enb Address\n  2 lbreakpoint    keep y   0x000000000000baef \n"
                          "  1 pbreakpoint    keep y   0x00000000bc27 \n") == [(2, "lbreakpoint", 0xBAEF),
                                                                               (1, "pbreakpoint", 0xBC27)]
    assert bp.parse_page("linear page 0x000000000000b000 maps to physical page 0x00000004b000", 0xB123) == 0x4B123
    assert bp.parse_page("physical address not available for linear 0x00007fffffff0000", 0) is None
    assert bp.parse_pages("linear page 0x000000000000b000 maps to physical page 0x00000004b000\n"
                          "PML4: 0x0000000000000000    ps         a pcd pwt S R p\n"
                          "physical address not available for linear 0x00007fffffff0123\n") == {
        0xB000: 0x4B000, 0x7FFFFFFF0000: None}
    assert bp.parse_disasm("0000000000007c22: (                    ): mov si, 0x7c49            ; be497c\n") == [
        (0x7C22, 3, "mov si, 0x7c49")]
    log = ("00000000000i[MEM0  ] 64.00MB\n00000000000i[MEM0  ] rom at 0xfffe0000/131072 ('/x')\n"
           "00000000000i[MEM0  ] rom at 0xc0000/38400 ('/y')\n"
           "00153222385i[CPU0  ] WARNING: HLT instruction with IF=0!\n")
    assert bp.memory_layout(log) == (64 << 20, [(0xFFFE0000, 131072), (0xC0000, 38400)])
    assert bp.halted_cpus(log) == [0]
    assert bp.console_msrs("x\nMSR 00000480 00D810000000002B\nMSR 3A 5\n") == {0x480: 0xD810000000002B, 0x3A: 5}
    assert bp.console_info("INFO maxphyaddr 28\n") == {"maxphyaddr": 0x28}


def test_lines_never_exceed_what_bochs_keeps():
    groups = [["setpmem 0x%x 4 0x%08x" % (0x9000 + 4 * i, i)] for i in range(300)]
    lines = pack_lines(groups)
    assert all(len(line) <= MAX_LINE for line in lines)
    assert sum(line.count("setpmem") for line in lines) == 300
    assert pack_lines([["set rcx = 0x480", "s", "r"]] * 20)[0].endswith("s; r")


# --------------------------------------------------------------------------------------------
# a tiny boot sector
# --------------------------------------------------------------------------------------------

TINY_ASM = r"""
bits 16
org 0x7c00
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7000
    mov byte [0x600], 0         ; the mode the test writes at the second stop
    mov di, 0x8000              ; known pattern: 00 01 02 ... ff at 0x8000
    mov cx, 256
    xor al, al
fill:
    stosb
    inc al
    loop fill
    mov si, hello
    call print
    xchg bx, bx                 ; magic breakpoint 1
    mov si, mode
    call print
    xchg bx, bx                 ; magic breakpoint 2
    mov al, [0x600]
    cmp al, 1
    je halt
    cmp al, 2
    je triple
spin:
    jmp spin                    ; mode 0: never stops by itself
halt:
    hlt                         ; mode 1: halted with interrupts off
    jmp halt
triple:
    lidt [null_idt]             ; mode 2: #BP without an IDT -> triple fault -> Bochs exits
    int3
null_idt:
    dw 0
    dd 0
hello: db "HELLO", 10, 0
mode: db "MODE", 10, 0
    times 0x100-($-$$) db 0
print:                          ; at 0x7d00
    lodsb
    test al, al
    jz print_done
    out 0xe9, al                ; at 0x7d05
    jmp print
print_done:
    ret
    times 510-($-$$) db 0
    dw 0xaa55
"""
PRINT_OUT = 0x7D05
TINY_RAM = 32 << 20
TINY_BXRC = """\
cpu: model=corei7_skylake_x, count=1, ips=50000000, reset_on_triple_fault=0
memory: guest=32, host=32
floppya: 1_44=tiny.img, status=inserted
boot: floppy
clock: sync=none, time0=946684800
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder with tiny.img and tiny.bxrc (the image path in the config is relative)."""
    if _missing_tools():
        pytest.skip(_missing_tools())
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.asm").write_text(textwrap.dedent(TINY_ASM))
    subprocess.run(["nasm", "-f", "bin", str(folder / "tiny.asm"), "-o", str(folder / "tiny.img")],
                   check=True, capture_output=True, timeout=60)
    image = folder / "tiny.img"
    with open(image, "r+b") as handle:
        handle.truncate(1474560)
    (folder / "tiny.bxrc").write_text(TINY_BXRC)
    return folder / "tiny.bxrc"


def open_tiny(config: Path, **options):
    from vtdbg.target.bochs import BochsTarget

    return BochsTarget(str(config), **options)


def to_second_stop(target) -> Dict[str, object]:
    first = target.cont()
    assert first["event"] == "magic" and first["console"] == "HELLO\n", first
    second = target.cont()
    assert second["event"] == "magic" and second["console"] == "MODE\n", second
    return second


@needs_bochs
@pytest.mark.lab
class TestBochsContract(TargetContract):
    """The target contract on the tiny machine, stopped at its first magic breakpoint."""

    @pytest.fixture(autouse=True)
    def _config(self, tiny):
        self.config = tiny

    def make_target(self, tmp_path):
        target = open_tiny(self.config)
        assert target.cont()["event"] == "magic"
        image = (self.config.parent / "tiny.img").read_bytes()
        known = {0x8000: bytes(range(256)), 0x7C00: image[:512]}
        if ROM.is_file():
            # the top 64 KiB of the 4 GiB space is the pristine BIOS ROM (0xF0000 is a
            # shadow copy the BIOS patches, so it differs)
            known[0xFFFF0000] = ROM.read_bytes()[-0x10000:]
        return ContractSetup(target, known, unreadable=(TINY_RAM - 8, 16))


@needs_bochs
@pytest.mark.lab
def test_identity_console_memory_and_registers(tiny):
    from vtdbg.target.base import Capability
    from vtdbg.target.open import open_target

    with open_target("bochs:" + str(tiny)) as target:
        assert target.kind == "bochs" and target.last_stop["event"] == "start"
        assert target.last_stop["pa"] == 0xFFFFFFF0  # the reset vector
        assert target.bochs_version and target.preferred_layout == bp.layout_for_version(target.bochs_version)
        for cap in ("PHYS_READ", "VIRT_READ", "MSR_READ", "REGS", "WRITE", "BREAKPOINTS", "RESUME", "STEP", "LIVE"):
            assert target.has(Capability[cap]), cap
        assert not target.has(Capability.CPU_SELECT) and target.cpu_count() == 1
        assert target.phys_ranges()[0] == (0, TINY_RAM)
        first = target.cont()
        assert first["event"] == "magic" and first["cpu"] == 0 and first["console"] == "HELLO\n"
        before = target.transactions
        assert target.read_phys(0x8000, 4096)[:256] == bytes(range(256))
        assert target.read_virt(0x8000, 16) == bytes(range(16))  # real mode: linear = physical
        assert target.transactions - before == 3  # xp; page; xp
        regs = target.registers()
        assert regs["rip"] == first["rip"] and regs["cr0"] & 1 == 0 and regs["rsp"] == 0x7000
        assert target.registers() == regs and target.transactions - before == 4  # cached until the next stop
        with pytest.raises(MemoryReadError):
            target.read_phys(0x100000000, 8)  # beyond RAM: refused before Bochs sees it
        with pytest.raises(MemoryWriteError):
            target.write_phys(0xFFFF0000, b"\0")
        # real mode: 64-bit names are set through their 32-bit form
        generation = target.stop_generation
        target.set_register("rax", 0x1234)
        assert target.registers()["rax"] == 0x1234 and target.stop_generation > generation
        with pytest.raises(TargetError, match="64-bit mode"):
            target.set_register("rbx", 1 << 40)
        with pytest.raises(TargetError, match="cannot change cr3"):
            target.set_register("cr3", 0)
        target.set_register("rflags", 0x47)
        assert target.registers()["rflags"] == 0x47
        target.set_register("rflags", regs["rflags"])
        target.set_register("rax", regs["rax"])
        # MSRs from Bochs's parameter tree; others are refused with a reason
        assert target.read_msr(0x3A) & 1  # IA32_FEATURE_CONTROL locked by the BIOS
        assert target.read_msr(0xC0000080) == regs["efer"]
        with pytest.raises(TargetError, match="not readable"):
            target.read_msr(0x10)
        # CPUID on the target (injected at RIP, restored): vendor string and MAXPHYADDR
        _eax, ebx, ecx, edx = target.cpuid(0)
        assert b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)) == b"GenuineIntel"
        assert 36 <= target.maxphyaddr() <= 52
        assert target.registers() == regs
        second = target.cont()  # the guest still runs correctly after the injections
        assert second["event"] == "magic" and second["console"] == "MODE\n"
        assert target.console_output() == "HELLO\nMODE\n"
        target.step()
        assert target.last_stop["event"] == "step" and target.last_stop["pa"] == second["pa"] + 3
    assert bochs_children() == []


@needs_bochs
@pytest.mark.lab
def test_breakpoints_decide_with_on_hit_and_are_removed(tiny):
    with open_tiny(tiny) as target:
        assert target.cont()["event"] == "magic"
        assert target.read_phys(PRINT_OUT, 1) == b"\xe6"  # out imm8, al
        hits: List[int] = []

        def on_hit(cpu: int) -> bool:
            hits.append(cpu)
            return len(hits) == 3  # continue past the first two hits

        handle = target.break_at(PRINT_OUT, on_hit)
        event = target.cont()
        assert event["event"] == "breakpoint" and event["pa"] == PRINT_OUT and hits == [0, 0, 0]
        assert event["console"] == "MO"  # printed by the two hits continued past
        handle.remove()
        handle.remove()
        assert "lbreakpoint" not in target.command("blist")
        event = target.cont()
        assert event["event"] == "magic" and event["console"] == "DE\n"
        physical = target.break_at(0x7C00, lambda cpu: True, physical=True)
        assert "pbreakpoint" in target.command("blist")
        physical.remove()


@needs_bochs
@pytest.mark.lab
@pytest.mark.parametrize("mode,expected", [(0, "timeout"), (1, "halted"), (2, "ended")])
def test_every_way_a_run_ends_is_reported_and_reaped(tiny, mode, expected):
    started = time.monotonic()
    target = open_tiny(tiny, timeout=1.5)
    try:
        to_second_stop(target)
        target.write_phys(0x600, bytes([mode]))
        event = target.cont()
        assert event["event"] == expected, event
        if expected == "timeout":
            assert 1.4 <= event["seconds"] < 5
            assert target.registers()["rip"] >= 0x7C00  # stopped, usable
        elif expected == "halted":
            assert event["seconds"] < 1.4  # noticed from the log, not by the timeout
        else:
            assert "PANIC" in event["detail"] or "exited" in event["detail"]
            with pytest.raises(TargetError, match="ended"):
                target.read_phys(0, 8)
    finally:
        target.close()
    assert bochs_children() == []
    assert time.monotonic() - started < 15


@needs_bochs
@pytest.mark.lab
def test_no_bochs_survives_exceptions_interrupts_kills_and_failed_starts(tiny, tmp_path):
    # an exception inside the with block
    with pytest.raises(ZeroDivisionError):
        with open_tiny(tiny) as target:
            target.cont()
            1 / 0  # noqa: B018
    assert bochs_children() == []
    # Ctrl-C while the guest runs (the spinning mode): Bochs is stopped, then reaped
    target = open_tiny(tiny, timeout=30)

    def interrupt(*_args: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with target:
                to_second_stop(target)
                target.write_phys(0x600, b"\0")
                signal.setitimer(signal.ITIMER_REAL, 0.5)
                target.cont()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert bochs_children() == []
    # Bochs killed behind our back: a clean error, and close() still reaps
    target = open_tiny(tiny)
    pid = bochs_children()[0]
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TargetError, match="Bochs"):
        target.read_phys(0x8000, 8)
    target.close()
    target.close()
    assert bochs_children() == []
    # a configuration Bochs refuses: the error quotes its log, nothing is left running
    bad = tmp_path / "bad.bxrc"
    bad.write_text(TINY_BXRC.replace("corei7_skylake_x", "no_such_model"))
    with pytest.raises(TargetError, match="cpu directive"):
        open_tiny(bad, startup_timeout=20)
    assert bochs_children() == []
    with pytest.raises(TargetError, match="no such Bochs configuration"):
        open_tiny(tmp_path / "nothing.bxrc")


@needs_bochs
@pytest.mark.lab
def test_a_forgotten_target_is_closed_at_interpreter_exit(tiny):
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from vtdbg.target.bochs import BochsTarget\n"
              "t = BochsTarget(%r)\n"
              "print(t._bochs.proc.pid, flush=True)\n") % (str(ROOT), str(tiny))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[0])
    assert not os.path.exists("/proc/%d" % pid)


@needs_bochs
@pytest.mark.lab
def test_smp_cpu_selection(tiny):
    extra = ["cpu: model=corei7_skylake_x, count=2, ips=50000000, reset_on_triple_fault=0"]
    with open_tiny(tiny, extra_lines=extra) as target:
        assert target.cpu_count() == 2
        with target.select_cpu(1):
            assert target.current_cpu() == 1 and target.vmx_state()["cpu"] == 1
            assert target.registers()["rip"] == 0xFFF0
            target.step()
            assert target.last_stop["cpu"] == 1
        assert target.current_cpu() == 0
        with pytest.raises(TargetError):
            with target.select_cpu(2):
                pass


# --------------------------------------------------------------------------------------------
# the vtdbg lab hypervisor
# --------------------------------------------------------------------------------------------

def _lab_module():
    path = ROOT / "tests" / "lab" / "run.py"
    if not path.is_file():
        pytest.skip("tests/lab/run.py is not present")
    name = "vtdbg_lab_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, str(path))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def lab_config(tmp_path_factory) -> Path:
    if _missing_tools():
        pytest.skip(_missing_tools())
    lab = _lab_module()
    folder = tmp_path_factory.mktemp("lab")
    image = lab.build_image(folder)
    config = folder / "lab.bxrc"
    config.write_text(lab.bochsrc_text(lab.MODELS[0], image, folder / "ignored.log"))
    return config


@needs_bochs
@pytest.mark.lab
def test_lab_vm_exits_decode_like_the_lab_says(lab_config, tmp_path):
    from vtdbg.core.vmcs import read_vmcs
    from vtdbg.target.bochs import BochsTarget
    from vtdbg.target.record import RecordingTarget

    lab = _lab_module()
    started = time.monotonic()
    with BochsTarget(str(lab_config), timeout=30) as target:
        # BREAK 0 sits right before the main VMLAUNCH (the entry-failure scenarios are done)
        first = target.cont()
        assert first["event"] == "magic" and "MAIN VMLAUNCH" in first["console"]
        assert target.vmx_state()["in_vmx"] is True
        recorder = RecordingTarget(target)
        decoded = []
        per_decode = []
        msrs: Dict[int, int] = {}
        while True:
            event = target.run_to_vm_exit()
            if event["event"] != "vmexit":
                break
            state = target.vmx_state()
            assert state["in_vmx"] and not state["in_vmx_guest"] and state["vmcsptr"]
            lines = target.transactions
            vmcs = read_vmcs(recorder, state["vmcsptr"], layout_name=target.preferred_layout or "auto")
            per_decode.append(target.transactions - lines)
            decoded.append((vmcs.get("VM_EXIT_REASON"), vmcs.get("GUEST_RIP"), event["cpu"]))
            if len(decoded) == 1:
                assert read_vmcs(target, state["vmcsptr"]).layout == target.preferred_layout  # auto agrees
                # long mode with paging: linear reads go through Bochs's translation
                assert target.read_virt(event["rip"], 16) == target.read_phys(event["pa"], 16)
                with pytest.raises(MemoryReadError, match="not mapped"):
                    target.read_virt(0x7FFFFFFF0000, 8)
                msrs = target.read_msrs(range(0x480, 0x492))
                maxphyaddr = target.maxphyaddr()
                assert target.registers()["rip"] == event["rip"]  # injections leave no trace
        # the lab ends with VMXOFF and HLT with interrupts off
        assert event["event"] == "halted", event
        assert recorder.counts["read_phys"] == len(decoded) and set(per_decode) == {1}
        parsed = lab.parse_output(target.console_output())
    assert bochs_children() == []
    exits = parsed["exits"]
    assert len(exits) >= 10
    assert [(r & 0xFFFF, rip, 0) for r, rip, _cpu in decoded] == [
        (e["reason"] & 0xFFFF, e["guest_rip"], 0) for e in exits]
    assert all(cpu == 0 for _r, _rip, cpu in decoded)
    assert {i: v for i, v in parsed["msrs"].items() if 0x480 <= i < 0x492} == msrs
    assert maxphyaddr == parsed["info"]["maxphyaddr"]
    assert time.monotonic() - started < 40


@needs_bochs
@pytest.mark.lab
def test_one_shot_helper_counts_exits_from_the_first(lab_config):
    from vtdbg.core.vmcs import read_vmcs
    from vtdbg.target.bochs import BochsTarget

    lab = _lab_module()
    with BochsTarget(str(lab_config), timeout=30) as target:
        seen: List[int] = []

        def at_exit(event: Dict[str, object]) -> None:
            pointer = target.vmx_state()["vmcsptr"]
            vmcs = read_vmcs(target, pointer, layout_name=target.preferred_layout or "auto")
            seen.append(pointer)
            # the very first VM exits are the lab's VM-entry failure scenarios (bit 31 set)
            assert vmcs.get("VM_EXIT_REASON") & 0x80000000

        summary = target.run_exits(2, on_exit=at_exit)
        assert summary["complete"] and len(summary["exits"]) == 2
        scenarios = lab.parse_output(target.console_output())["scenarios"]
        # the lab prints a scenario's OUTCOME after its exit: the last one has none yet
        failing = [s["vmcs_pa"] for s in scenarios if s["result"] in ("entry_failure", None)]
        assert seen == failing[:2]
        short = target.run_exits(1000, timeout=3)
        assert not short["complete"] and short["last"]["event"] in ("timeout", "halted")
    assert bochs_children() == []

