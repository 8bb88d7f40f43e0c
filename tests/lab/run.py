"""Build and run the vtdbg Bochs lab hypervisor, collect ground truth, write fixtures.

The lab (``tests/lab/lab.asm``) is a bare-metal floppy image that Bochs boots
headless.  It enters VMX operation, runs a list of VM-entry failure scenarios,
launches a 64-bit guest with EPT that provokes a varied set of VM exits and
finally prints ground truth on port 0xE9.  This module:

* assembles the image with nasm (:func:`build_image`),
* writes the bochsrc and the debugger script and runs ``bochs-bin`` inside
  ``unshare -n`` with a timeout (:func:`run_lab`),
* parses the port-0xE9/debugger output (:func:`parse_output`),
* turns a run into the committed fixtures (:func:`write_fixtures`).

Command line::

    python3 tests/lab/run.py --model corei7_skylake_x --out DIR [--fixtures DIR]

Output protocol of the lab (one record per line, hex without ``0x``)::

    REVISION <rev>
    PROBE supported=<n>
    SCENARIO <i> <id> <rule> <vmcs_pa> <description...>
    SF <id> <enc> <value>                       pre-launch VMREAD of a scenario VMCS
    OUTCOME <i> <id> <result> err=<e> reason=<r> qual=<q>
    FEATURES <bits>
    EXIT <n> reason=.. qual=.. rip=.. len=.. gpa=.. gla=.. intr=.. err=.. idtv=.. idte=.. iinfo=.. rsp=.. rflags=..
    DONE exits=<n>
    F <enc> <value>                             VMREAD of the main VMCS after the last exit
    MSR <index> <value>
    INFO <key> <value>
    GT END
    AP EXIT <n> ... / AF <enc> <value> / AP GT END    two-CPU variant: the AP's exits and VMREAD

Memory layout and fixture format: tests/fixtures/lab/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

LAB_DIR = Path(__file__).resolve().parent
LAB_ASM = LAB_DIR / "lab.asm"
REPO_ROOT = LAB_DIR.parent.parent
FIXTURES_ROOT = REPO_ROOT / "tests" / "fixtures" / "lab"

#: CPU models the lab supports (all have VMX with EPT in Bochs 2.7).
MODELS: Tuple[str, ...] = ("corei7_skylake_x", "tigerlake", "corei7_haswell_4770")

#: Two-CPU variants: "<bochs model>_2cpu" boots the lab built with -DSMP on
#: ``cpu: count=2``; the AP does its own VMXON/VMCS/VMLAUNCH (see lab.asm).
SMP_SUFFIX = "_2cpu"
SMP_MODELS: Tuple[str, ...] = ("corei7_skylake_x_2cpu",)

#: Must match MAX_STOPS in lab.asm: debugger stops consumed after BREAK 0.
MAX_STOPS = 32

# Physical layout (must match lab.asm).
VMXON_PA = 0x20000
VMCS_PA = 0x21000
AP_VMXON_PA = 0x2A000
AP_VMCS_PA = 0x2B000
INFO_PA = 0x3F000
EXIT_LOG_PA = 0x26000
EPT_PML4_PA = 0x30000
SCEN_VMCS_BASE = 0x100000
SCEN_SAVE_BASE = 0x140000
PROBE_TABLE_PA = 0x180000
PROBE_ENTRIES = 16384
GUEST_MEMORY_MIB = 64

#: Largest gzip'ed memory image committed as a fixture before truncation.
MAX_IMAGE_GZ = 1536 * 1024

#: VMCS encodings Bochs 2.7 knows (its VMCS field map); 64-bit fields also
#: have a HIGH encoding (enc | 1).  "unsupported" in the ground truth lists
#: those of them (FULL and HIGH) that VMREAD rejects on the model.
KNOWN_ENCODINGS: Tuple[int, ...] = (
    0x0000, 0x0002, 0x0004,
    0x0800, 0x0802, 0x0804, 0x0806, 0x0808, 0x080A, 0x080C, 0x080E, 0x0810, 0x0812,
    0x0C00, 0x0C02, 0x0C04, 0x0C06, 0x0C08, 0x0C0A, 0x0C0C,
    0x2000, 0x2002, 0x2004, 0x2006, 0x2008, 0x200A, 0x200C, 0x200E, 0x2010, 0x2012,
    0x2014, 0x2016, 0x2018, 0x201A, 0x201C, 0x201E, 0x2020, 0x2022, 0x2024, 0x2026,
    0x2028, 0x202A, 0x202C, 0x202E, 0x2030, 0x2032,
    0x2400,
    0x2800, 0x2802, 0x2804, 0x2806, 0x2808, 0x280A, 0x280C, 0x280E, 0x2810, 0x2812,
    0x2814, 0x2818,
    0x2C00, 0x2C02, 0x2C04, 0x2C06,
    0x4000, 0x4002, 0x4004, 0x4006, 0x4008, 0x400A, 0x400C, 0x400E, 0x4010, 0x4012,
    0x4014, 0x4016, 0x4018, 0x401A, 0x401C, 0x401E, 0x4020, 0x4022,
    0x4400, 0x4402, 0x4404, 0x4406, 0x4408, 0x440A, 0x440C, 0x440E,
    0x4800, 0x4802, 0x4804, 0x4806, 0x4808, 0x480A, 0x480C, 0x480E, 0x4810, 0x4812,
    0x4814, 0x4816, 0x4818, 0x481A, 0x481C, 0x481E, 0x4820, 0x4822, 0x4824, 0x4826,
    0x4828, 0x482A, 0x482E,
    0x4C00,
    0x6000, 0x6002, 0x6004, 0x6006, 0x6008, 0x600A, 0x600C, 0x600E,
    0x6400, 0x6402, 0x6404, 0x6406, 0x6408, 0x640A,
    0x6800, 0x6802, 0x6804, 0x6806, 0x6808, 0x680A, 0x680C, 0x680E, 0x6810, 0x6812,
    0x6814, 0x6816, 0x6818, 0x681A, 0x681C, 0x681E, 0x6820, 0x6822, 0x6824, 0x6826,
    0x6828, 0x682A, 0x682C,
    0x6C00, 0x6C02, 0x6C04, 0x6C06, 0x6C08, 0x6C0A, 0x6C0C, 0x6C0E, 0x6C10, 0x6C12,
    0x6C14, 0x6C16, 0x6C18, 0x6C1A, 0x6C1C,
)

#: EXIT line keys -> ground-truth exit record keys.
EXIT_KEYS: Dict[str, str] = {
    "reason": "reason",
    "qual": "qualification",
    "rip": "guest_rip",
    "len": "instruction_len",
    "gpa": "guest_physical_address",
    "gla": "guest_linear_address",
    "intr": "intr_info",
    "err": "intr_error_code",
    "idtv": "idt_vectoring_info",
    "idte": "idt_vectoring_error_code",
    "iinfo": "instruction_info",
    "rsp": "guest_rsp",
    "rflags": "guest_rflags",
}

#: Basic exit reason -> short name (for readability of the fixtures).
EXIT_NAMES: Dict[int, str] = {
    0: "exception_or_nmi",
    1: "external_interrupt",
    10: "cpuid",
    12: "hlt",
    14: "invlpg",
    16: "rdtsc",
    18: "vmcall",
    28: "cr_access",
    29: "mov_dr",
    30: "io_instruction",
    31: "rdmsr",
    32: "wrmsr",
    33: "entry_failure_guest_state",
    34: "entry_failure_msr_load",
    48: "ept_violation",
}

BOCHSRC_TEMPLATE = """\
display_library: rfb, options="timeout=0"
cpu: model={model}, count={cpus}, ips=50000000, reset_on_triple_fault=0
memory: guest={mem}, host={mem}
floppya: 1_44="{image}", status=inserted
boot: floppy
clock: sync=none, time0=946684800
speaker: enabled=0
sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy
magic_break: enabled=1
port_e9_hack: enabled=1
log: "{log}"
panic: action=fatal
error: action=report
info: action=report
"""


class LabError(RuntimeError):
    """The lab could not be built or run, or its output is inconsistent."""


class ToolMissing(LabError):
    """bochs-bin, nasm or unshare is not installed."""


@dataclass
class LabRun:
    """The result of one lab run under Bochs."""

    model: str
    out_dir: Path
    bochs_version: str
    returncode: int
    seconds: float
    stdout: str
    parsed: Dict[str, Any]
    exit_snapshots: List[Path] = field(default_factory=list)
    phys_path: Optional[Path] = None

    def phys_image(self) -> bytes:
        """Return the raw physical memory image captured at BREAK 1."""
        if self.phys_path is None:
            raise LabError("no memory image was captured")
        return self.phys_path.read_bytes()


# ------------------------------------------------------------------ tools ----
def find_tool(name: str) -> str:
    """Return the path of an executable or raise :class:`ToolMissing`."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} not found on PATH")
    return path


def tools_available() -> Optional[str]:
    """Return None when bochs-bin, nasm and unshare exist, else a reason string."""
    for name in ("bochs-bin", "nasm", "unshare"):
        if shutil.which(name) is None:
            return f"{name} is not installed (apt-get install bochs bochsbios vgabios nasm)"
    return None


def bochs_version(bochs: Optional[str] = None) -> str:
    """Return the Bochs release from its banner, e.g. ``"2.7"``."""
    exe = bochs or find_tool("bochs-bin")
    proc = subprocess.run(
        [exe, "-help", "cpu"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )
    return version_from_banner(proc.stdout + proc.stderr)


def version_from_banner(text: str) -> str:
    """Extract the version from a ``Bochs x86 Emulator X.Y`` banner line."""
    match = re.search(r"Bochs x86 Emulator\s+(\S+)", text)
    if match is None:
        raise LabError("no Bochs banner in the output")
    return match.group(1)


# ------------------------------------------------------------------ build ----
def build_image(
    out_dir: Path,
    asm: Path = LAB_ASM,
    nasm: Optional[str] = None,
    defines: Sequence[str] = (),
) -> Path:
    """Assemble the lab into ``out_dir/lab.img`` (a 1.44 MB floppy) and return its path."""
    exe = nasm or find_tool("nasm")
    out_dir.mkdir(parents=True, exist_ok=True)
    image = out_dir / "lab.img"
    cmd = [exe, "-f", "bin", "-w+all"] + [f"-D{d}" for d in defines] + [str(asm), "-o", str(image)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise LabError(f"nasm failed:\n{proc.stdout}{proc.stderr}")
    if image.stat().st_size != 1474560:
        raise LabError(f"unexpected image size {image.stat().st_size}")
    return image


def bochsrc_text(model: str, image: Path, log: Path, cpus: int = 1) -> str:
    """Return the bochsrc for one headless run."""
    return BOCHSRC_TEMPLATE.format(model=model, cpus=cpus, mem=GUEST_MEMORY_MIB, image=image, log=log)


def split_model(model: str) -> Tuple[str, int]:
    """Return (Bochs CPU model, CPU count) for a lab model name."""
    if model.endswith(SMP_SUFFIX):
        return model[: -len(SMP_SUFFIX)], 2
    return model, 1


def script_text(out_dir: Path, max_stops: int = MAX_STOPS, cpus: int = 1) -> str:
    """Return the Bochs debugger script.

    BREAK 0 sits right before the main VMLAUNCH.  From there ``vmexitbp`` makes
    ``c`` stop after every VM exit; the lab pads the exits with BREAK 1 stops so
    that exactly ``max_stops + 1`` stops follow BREAK 0 whatever the number of
    exits.  The last of them is where the memory image is taken.
    """
    lines = ["c", "vmexitbp"]
    stops = out_dir / "stops"
    for i in range(1, max_stops + 1):
        lines += ["c", f'writemem "{stops}/{i:02d}.bin" {VMCS_PA:#x} 4096']
    lines += [
        "c",
        f'writemem "{out_dir}/phys.bin" 0 {GUEST_MEMORY_MIB << 20:#x}',
        f'writemem "{out_dir}/vmxon.bin" {VMXON_PA:#x} 4096',
        f'writemem "{out_dir}/vmcs.bin" {VMCS_PA:#x} 4096',
        f'writemem "{out_dir}/ept.bin" {EPT_PML4_PA:#x} 12288',
        f'writemem "{out_dir}/info.bin" {INFO_PA:#x} 4096',
        'show "cpu0.VMX"',
        "creg",
    ]
    if cpus > 1:
        lines += [
            f'writemem "{out_dir}/ap_vmxon.bin" {AP_VMXON_PA:#x} 4096',
            f'writemem "{out_dir}/ap_vmcs.bin" {AP_VMCS_PA:#x} 4096',
            'show "cpu1.VMX"',
        ]
    lines += [
        "c",
        f'writemem "{out_dir}/vmcs_after_vmclear.bin" {VMCS_PA:#x} 4096',
        "c",
        "quit",
    ]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- run ----
def run_lab(
    model: str,
    out_dir: Path,
    timeout: float = 120.0,
    image: Optional[Path] = None,
) -> LabRun:
    """Build (unless ``image`` is given) and run the lab on ``model``; parse the results.

    ``model`` is a Bochs CPU model name, or ``<model>_2cpu`` for the two-CPU
    variant (then ``image`` must have been built with ``defines=("SMP",)``).

    ``out_dir`` receives lab.img, lab.bxrc, dump.rc, run.txt, stderr.txt,
    bochs.log, stops/NN.bin (VMCS page at each debugger stop), exits/NN.vmcs.bin
    (the stops that were VM exits), phys.bin and the page dumps.
    """
    bochs = find_tool("bochs-bin")
    unshare = find_tool("unshare")
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("stops", "exits"):
        if (out_dir / sub).exists():
            shutil.rmtree(out_dir / sub)
        (out_dir / sub).mkdir()
    cpu_model, cpus = split_model(model)
    if image is None:
        image = build_image(out_dir, defines=("SMP",) if cpus > 1 else ())
    rc_file = out_dir / "lab.bxrc"
    rc_file.write_text(bochsrc_text(cpu_model, image.resolve(), out_dir / "bochs.log", cpus))
    script = out_dir / "dump.rc"
    script.write_text(script_text(out_dir, cpus=cpus))
    cmd = [unshare, "-n", bochs, "-q", "-f", str(rc_file), "-rc", str(script)]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            cwd=str(out_dir),
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"bochs timed out after {timeout} s on {model}") from exc
    seconds = time.monotonic() - start
    stdout = proc.stdout.decode("latin-1")
    (out_dir / "run.txt").write_text(stdout, encoding="latin-1")
    (out_dir / "stderr.txt").write_bytes(proc.stderr)
    if proc.returncode != 0:
        raise LabError(f"bochs exited with {proc.returncode} on {model}; see {out_dir}/stderr.txt")
    parsed = parse_output(stdout)
    log_path = out_dir / "bochs.log"
    if log_path.exists():
        messages = scenario_log_messages(log_path.read_text(encoding="latin-1"))
        for entry in parsed["scenarios"]:
            entry["bochs_log"] = messages.get(entry["index"], [])
    if parsed["fatal"]:
        raise LabError(f"the lab reported a fatal error on {model}: {parsed['fatal_lines']}")
    if cpus > 1 and not parsed["ap"]["done"]:
        raise LabError(f"the AP did not finish on {model}: {parsed['fatal_lines']}")
    exits = parsed["exits"]
    stops = parsed["stops"]
    # stop 0 is BREAK 0; stops 1..n must be the n VM exits, then BREAK 1 padding
    expected = ["magic"] + ["vmexit"] * len(exits) + ["magic"] * (MAX_STOPS + 3 - len(exits))
    if stops != expected:
        raise LabError(f"unexpected debugger stops for {len(exits)} VM exits: {stops}")
    snapshots = []
    for i in range(len(exits)):
        src = out_dir / "stops" / f"{i + 1:02d}.bin"
        dst = out_dir / "exits" / f"{i:02d}.vmcs.bin"
        shutil.copyfile(src, dst)
        snapshots.append(dst)
    phys = out_dir / "phys.bin"
    return LabRun(
        model=model,
        out_dir=out_dir,
        bochs_version=parsed["bochs_version"] or bochs_version(bochs),
        returncode=proc.returncode,
        seconds=seconds,
        stdout=stdout,
        parsed=parsed,
        exit_snapshots=snapshots,
        phys_path=phys if phys.exists() else None,
    )


# ------------------------------------------------------------------ parse ----
_KV = re.compile(r"(\w+)=([0-9A-Fa-f]+)")


def _hex(text: str) -> int:
    return int(text, 16)


def _exit_record(rest: str) -> Dict[str, Any]:
    """Parse the part of an EXIT line after the word EXIT."""
    number, _, kvs = rest.partition(" ")
    record: Dict[str, Any] = {"index": _hex(number) - 1}  # 0-based
    for key, value in _KV.findall(kvs):
        record[EXIT_KEYS[key]] = _hex(value)
    record["reason"] &= 0xFFFFFFFF
    record["name"] = EXIT_NAMES.get(record["reason"] & 0xFFFF, "other")
    return record


def parse_output(text: str) -> Dict[str, Any]:
    """Parse the interleaved port-0xE9 and debugger output of a lab run.

    Returns a dict with the keys ``bochs_version``, ``revision_id``,
    ``probe_supported``, ``features``, ``scenarios`` (list of dicts with
    ``index``, ``scenario``, ``rule``, ``vmcs_pa``, ``description``,
    ``fields``, ``result``, ``error``, ``exit_reason_full``, ``qualification``),
    ``exits`` (list of dicts keyed like the ground truth), ``fields``
    (encoding -> value), ``msrs`` (index -> value), ``info`` (key -> value),
    ``stops`` (``"vmexit"`` / ``"magic"`` per debugger stop, in order),
    ``done``, ``fatal``, ``fatal_lines`` and ``ap`` (two-CPU variant:
    ``exits``, ``fields`` and ``done`` of the application processor).
    """
    result: Dict[str, Any] = {
        "bochs_version": None,
        "revision_id": None,
        "probe_supported": None,
        "features": None,
        "scenarios": [],
        "exits": [],
        "fields": {},
        "msrs": {},
        "info": {},
        "stops": [],
        "done": False,
        "gt_end": False,
        "fatal": False,
        "fatal_lines": [],
        "ap": {"exits": [], "fields": {}, "done": False},
    }
    by_id: Dict[str, Dict[str, Any]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if "Bochs x86 Emulator" in line and result["bochs_version"] is None:
            result["bochs_version"] = version_from_banner(line)
            continue
        if "Caught VMEXIT breakpoint" in line:
            result["stops"].append("vmexit")
            continue
        if "Magic breakpoint" in line:
            result["stops"].append("magic")
            continue
        head, _, rest = line.partition(" ")
        if head == "AP" and rest.startswith("EXIT "):
            head, _, rest = rest.partition(" ")
            result["ap"]["exits"].append(_exit_record(rest))
            continue
        if line == "AP GT END":
            result["ap"]["done"] = True
            continue
        if head == "AF":
            enc, value = rest.split()
            result["ap"]["fields"][_hex(enc)] = _hex(value)
            continue
        if head == "F":
            enc, value = rest.split()
            result["fields"][_hex(enc)] = _hex(value)
        elif head == "SF":
            sid, enc, value = rest.split()
            by_id[sid]["fields"][_hex(enc)] = _hex(value)
        elif head == "EXIT":
            result["exits"].append(_exit_record(rest))
        elif head == "SCENARIO" and not rest.startswith("VMCS"):
            index, sid, rule, pa, desc = (rest.split(" ", 4) + [""])[:5]
            entry = {
                "index": _hex(index),
                "scenario": sid,
                "rule": rule,
                "vmcs_pa": _hex(pa),
                "description": desc,
                "fields": {},
                "result": None,
                "error": 0,
                "exit_reason_full": 0,
                "qualification": 0,
            }
            by_id[sid] = entry
            result["scenarios"].append(entry)
        elif head == "OUTCOME":
            parts = rest.split()
            entry = by_id[parts[1]]
            entry["result"] = parts[2]
            kv = dict(_KV.findall(rest))
            entry["error"] = _hex(kv["err"])
            entry["exit_reason_full"] = _hex(kv["reason"])
            entry["qualification"] = _hex(kv["qual"])
        elif head == "MSR":
            index, value = rest.split()
            result["msrs"][_hex(index)] = _hex(value)
        elif head == "INFO":
            key, value = rest.split()
            result["info"][key] = _hex(value)
        elif head == "REVISION":
            result["revision_id"] = _hex(rest.split()[0])
        elif head == "PROBE" and rest.startswith("supported="):
            result["probe_supported"] = _hex(rest.split("=", 1)[1])
        elif head == "FEATURES":
            result["features"] = _hex(rest.split()[0])
        elif head == "DONE":
            result["done"] = True
        elif line == "GT END":
            result["gt_end"] = True
        elif head == "FATAL":
            result["fatal"] = True
        elif "FAIL" in line or head in ("HOSTEXC", "UNEXPECTED", "TOO"):
            result["fatal_lines"].append(line)
    return result


_LOG_LINE = re.compile(r"^\d+([a-z])\[([^\]]*)\]\s?(.*)$")
_MARKER = re.compile(r"VMREAD: not supported field 0x0*1([0-9a-f]{3})$")


def scenario_log_messages(log: str) -> Dict[int, List[str]]:
    """Map scenario index -> the error-level bochs.log messages of its VMLAUNCH.

    Before each scenario's launch the lab does a failing VMREAD of encoding
    ``0x1000 + index`` on its probe VMCS, which Bochs logs; the messages up to
    the next marker belong to that scenario (``0x1000 + 64`` ends the list).
    """
    messages: Dict[int, List[str]] = {}
    current: Optional[int] = None
    for raw in log.splitlines():
        match = _LOG_LINE.match(raw.strip())
        if match is None or match.group(1) != "e":
            continue
        text = match.group(3).strip()
        marker = _MARKER.search(text)
        if marker is not None:
            index = int(marker.group(1), 16)
            current = index if index < 0x40 else None
            if current is not None:
                messages[current] = []
            continue
        if current is not None:
            messages[current].append(text)
    return messages


# --------------------------------------------------------------- fixtures ----
def hexkey(enc: int) -> str:
    """Format a VMCS encoding as a fixture key (``0x681e``)."""
    return f"0x{enc:04x}"


def outcome_record(entry: Dict[str, Any]) -> Dict[str, Any]:
    """Turn a parsed OUTCOME into the ``outcome`` object of entry_failures.json."""
    result = entry["result"]
    reason = entry["exit_reason_full"]
    if result == "vmfail_valid":
        return {"result": result, "error": entry["error"], "exit_reason": None, "qualification": None}
    if result in ("entry_failure", "ok"):
        return {
            "result": result,
            "error": None,
            "exit_reason": reason & 0xFFFF,
            "qualification": entry["qualification"],
        }
    return {"result": result, "error": None, "exit_reason": None, "qualification": None}


def _gzip_bytes(data: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(data)
    return buf.getvalue()


def ground_truth(run: LabRun) -> Dict[str, Any]:
    """Build the ground_truth.json object (without writing files)."""
    parsed = run.parsed
    info = parsed["info"]
    fields = parsed["fields"]
    known = set(KNOWN_ENCODINGS) | {e | 1 for e in KNOWN_ENCODINGS if (e >> 13) & 3 == 1}
    exits = []
    for rec in parsed["exits"]:
        exits.append(dict(rec))
    gt: Dict[str, Any] = {
        "bochs_version": run.bochs_version,
        "model": run.model,
        "revision_id": parsed["revision_id"],
        "vmxon_pa": info["vmxon"],
        "vmcs_pa": info["vmcs"],
        "eptp": info["eptp"],
        "maxphyaddr": info["maxphyaddr"],
        "info_block_pa": info["info_block"],
        "host_cr3": info["host_cr3"],
        "guest_cr3": info["guest_cr3"],
        "msrs": {f"0x{k:x}": v for k, v in sorted(parsed["msrs"].items())},
        "exits": exits,
        "fields": {hexkey(k): v for k, v in sorted(fields.items())},
        "unsupported": [hexkey(e) for e in sorted(known) if e not in fields],
        "memory_image": "phys.img.gz",
        "exit_snapshots": [
            {"index": rec["index"], "reason": rec["reason"], "file": f"exits/{rec['index']:02d}.vmcs.bin"}
            for rec in parsed["exits"]
        ],
    }
    if split_model(run.model)[1] > 1:
        gt["cpus"] = [
            {"cpu": 0, "vmxon_pa": info["vmxon"], "vmcs_pa": info["vmcs"], "exit_count": len(exits)},
            {
                "cpu": 1,
                "vmxon_pa": AP_VMXON_PA,
                "vmcs_pa": AP_VMCS_PA,
                "exits": parsed["ap"]["exits"],
                "fields": {hexkey(k): v for k, v in sorted(parsed["ap"]["fields"].items())},
            },
        ]
    return gt


def entry_failures(run: LabRun, phys: bytes) -> Tuple[List[Dict[str, Any]], Dict[str, bytes]]:
    """Build entry_failures.json and the pre-launch pages (scenario id -> 4 KiB)."""
    records = []
    pages: Dict[str, bytes] = {}
    for entry in run.parsed["scenarios"]:
        if entry["result"] in (None, "skipped", "anomaly"):
            continue
        records.append(
            {
                "scenario": entry["scenario"],
                "rule": entry["rule"],
                "description": entry["description"],
                "vmcs_pa": entry["vmcs_pa"],
                "fields": {hexkey(k): v for k, v in sorted(entry["fields"].items())},
                "outcome": outcome_record(entry),
                "bochs_log": entry.get("bochs_log", []),
            }
        )
        off = SCEN_SAVE_BASE + entry["index"] * 0x1000
        pages[entry["scenario"]] = phys[off : off + 0x1000]
    return records, pages


def _dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=False) + "\n"


def write_fixtures(run: LabRun, dest: Path) -> Dict[str, int]:
    """Write the fixtures of ``run`` into ``dest`` (tests/fixtures/lab/<model>).

    Returns a map of file name -> size in bytes.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("exits", "entry_failures"):
        if (dest / sub).exists():
            shutil.rmtree(dest / sub)
        (dest / sub).mkdir()
    phys = run.phys_image()
    gt = ground_truth(run)
    image = phys
    gz = _gzip_bytes(image)
    if len(gz) > MAX_IMAGE_GZ:
        image = phys[: 16 << 20]
        gz = _gzip_bytes(image)
    gt["memory_image_size"] = len(image)
    gt["memory_image_sha256"] = hashlib.sha256(image).hexdigest()
    (dest / "phys.img.gz").write_bytes(gz)
    for snap in run.exit_snapshots:
        shutil.copyfile(snap, dest / "exits" / snap.name)
    records, pages = entry_failures(run, phys)
    for sid, page in pages.items():
        (dest / "entry_failures" / f"{sid}.vmcs.bin").write_bytes(page)
    (dest / "ground_truth.json").write_text(_dump_json(gt))
    (dest / "entry_failures.json").write_text(_dump_json(records))
    stdout = run.stdout.encode("latin-1")
    for stale in ("run.txt", "run.txt.gz"):
        if (dest / stale).exists():
            (dest / stale).unlink()
    if len(stdout) > 256 * 1024:
        (dest / "run.txt.gz").write_bytes(_gzip_bytes(stdout))
    else:
        (dest / "run.txt").write_bytes(stdout)
    sizes = {}
    for path in sorted(dest.rglob("*")):
        if path.is_file():
            sizes[str(path.relative_to(dest))] = path.stat().st_size
    return sizes


# -------------------------------------------------------------------- CLI ----
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", choices=MODELS + SMP_MODELS, help="CPU model (repeatable; default: the 1-CPU ones)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (one subfolder per model)")
    parser.add_argument("--fixtures", type=Path, help="also write fixtures here (one subfolder per model)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per Bochs run")
    args = parser.parse_args(argv)
    models = args.model or list(MODELS)
    images: Dict[int, Path] = {}
    for model in models:
        cpus = split_model(model)[1]
        if cpus not in images:
            folder = args.out.resolve() / ("image" if cpus == 1 else "image-smp")
            images[cpus] = build_image(folder, defines=("SMP",) if cpus > 1 else ())
        run = run_lab(model, args.out / model, timeout=args.timeout, image=images[cpus])
        p = run.parsed
        results: Dict[str, int] = {}
        for s in p["scenarios"]:
            results[s["result"]] = results.get(s["result"], 0) + 1
        print(
            f"{model}: bochs {run.bochs_version}, {run.seconds:.2f} s, revision {p['revision_id']:#x}, "
            f"{len(p['exits'])} exits, {len(p['fields'])} fields, {len(p['scenarios'])} scenarios {results}"
        )
        if args.fixtures:
            sizes = write_fixtures(run, args.fixtures / model)
            print(f"  fixtures: {len(sizes)} files, {sum(sizes.values())} bytes")
    return 0


def page_field(page: bytes, enc: int) -> int:
    """Read field ``enc`` from a Bochs 2.7 VMCS page (formula layout, AR rotation undone)."""
    width = (enc >> 13) & 3
    ftype = (enc >> 10) & 3
    off = 0x10 + (width << 10) + (ftype << 8) + 4 * (enc & 0x3FF)
    if width == 0:
        value = struct.unpack_from("<H", page, off)[0]
    elif width == 1 and enc & 1:
        value = struct.unpack_from("<I", page, off)[0]
    elif width == 2:
        value = struct.unpack_from("<I", page, off)[0]
        if 0x4814 <= enc <= 0x4822:
            value = ((value >> 8) | (value << 24)) & 0xFFFFFFFF
    else:
        value = struct.unpack_from("<Q", page, off)[0]
    return value


if __name__ == "__main__":
    sys.exit(main())
