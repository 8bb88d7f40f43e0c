"""VM-exit stops on a two-CPU Bochs machine: the lab built with -DSMP.

The BSP starts the AP with INIT-SIPI-SIPI; the AP makes its own VMXON/VMCS and takes a
CPUID and a VMCALL exit, then the BSP runs the usual 17-exit main guest.  Bochs's
``vmexitbp`` is per CPU and an INIT clears it, so this checks that `trace` and `step` see
the exits of both CPUs, each with its own CPU number, in the order of the ground truth
per CPU, and that no bochs-bin process is left behind.

Marked ``lab``; skipped without bochs-bin/nasm/unshare or when the installed Bochs is not
the release the fixtures were made with.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from tests.conftest import run_cli
from tests.lab import run as lab
from tests.test_bochs_backend import _missing_tools, bochs_children

pytestmark = pytest.mark.lab

MODEL = "corei7_skylake_x_2cpu"


def truth_per_cpu() -> Dict[int, List[Tuple[int, int]]]:
    """CPU -> [(exit reason, guest RIP)] in the order the lab made them."""
    truth = json.loads((lab.FIXTURES_ROOT / MODEL / "ground_truth.json").read_text())
    found: Dict[int, List[Tuple[int, int]]] = {}
    for entry in truth["cpus"]:
        exits = entry.get("exits", truth["exits"] if entry["cpu"] == 0 else [])
        assert entry.get("exit_count", len(exits)) == len(exits)
        found[entry["cpu"]] = [(e["reason"], e["guest_rip"]) for e in exits]
    return found


def per_cpu(docs: List[Dict[str, Any]]) -> Dict[int, List[Tuple[int, int]]]:
    found: Dict[int, List[Tuple[int, int]]] = {}
    for doc in docs:
        found.setdefault(doc["cpu"], []).append((doc["exit_reason_full"], doc["guest_rip"]))
    return found


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _missing_tools() or lab.tools_available()
    if reason:
        pytest.skip(reason)
    truth = json.loads((lab.FIXTURES_ROOT / MODEL / "ground_truth.json").read_text())
    version = lab.bochs_version()
    if version != truth["bochs_version"]:
        pytest.skip("fixtures were made with Bochs %s, this is %s" % (truth["bochs_version"], version))
    folder = tmp_path_factory.mktemp("smp-lab")
    image = lab.build_image(folder, defines=("SMP",))
    cpu_model, cpus = lab.split_model(MODEL)
    path = folder / "lab.bxrc"
    path.write_text(lab.bochsrc_text(cpu_model, image.resolve(), folder / "bochs.log", cpus))
    return path


def test_trace_sees_the_exits_of_both_cpus(config):
    want = truth_per_cpu()
    assert set(want) == {0, 1} and len(want[1]) == 2
    count = sum(len(v) for v in want.values())
    status, out, err = run_cli("--target", "bochs:%s" % config, "trace", "--count", str(count), "--json",
                               "--timeout", "120")
    assert status == 0, err
    docs = json.loads(out)
    assert len(docs) == count
    assert per_cpu(docs) == want
    # every record's VMCS is its own CPU's (the AP's is at 0x2B000)
    truth = json.loads((lab.FIXTURES_ROOT / MODEL / "ground_truth.json").read_text())
    vmcs = {entry["cpu"]: entry["vmcs_pa"] for entry in truth["cpus"]}
    assert all(d["vmcs_pa"] == vmcs[d["cpu"]] for d in docs if "vmcs_pa" in d)
    assert bochs_children() == []


def test_step_walks_the_exits_of_both_cpus(config):
    from tests.test_trace_lab import Session

    want = truth_per_cpu()
    count = sum(len(v) for v in want.values())
    session = Session(config)
    try:
        walked: List[Dict[str, Any]] = []
        for _ in range(count):
            status, docs, err = session("step")
            assert status == 0, err
            assert len(docs) == 1
            walked += docs
        assert per_cpu(walked) == want
        assert session.target.vmexit_rearms >= 1  # the INIT that woke the AP cleared its stop
        status, docs, err = session("step")  # both CPUs end parked: nothing more to see
        assert status == 2 and docs == []
    finally:
        session.close()
    assert bochs_children() == []
