"""The Bochs lab fixtures as checker inputs (tests/fixtures/lab/<model>/, see its README).

Each scenario of ``entry_failures.json`` is a VMCS with one rule broken: ``fields`` is the
lab's VMREAD of every supported field before VMLAUNCH, the ``.vmcs.bin`` page the pre-launch
copy (its launch state word tells clear from launched), and ``phys.img.gz`` the guest RAM
holding the MSR-load areas and link-pointer pages the scenarios use.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

from tests.conftest import FIXTURES
from vtdbg.core.check.caps import Caps
from vtdbg.core.check.context import Environment
from vtdbg.core.check.facts import INVALID_POINTER
from vtdbg.core.check.memory import TargetMemory
from vtdbg.core.check.snapshot import parse_fields
from vtdbg.core.vmcs import Vmcs, choose_layout
from vtdbg.target.image import ImageTarget

LAB = FIXTURES / "lab"


@dataclass
class LabModel:
    """One model's fixtures."""

    name: str
    path: Path
    truth: Dict[str, Any]
    scenarios: List[Dict[str, Any]]

    @property
    def caps(self) -> Caps:
        return Caps.from_mapping(self.truth, "lab ground truth of %s" % self.name)

    @property
    def memory(self) -> TargetMemory:
        return _image(str(self.path))

    def page(self, scenario: Dict[str, Any]) -> bytes:
        return (self.path / "entry_failures" / ("%s.vmcs.bin" % scenario["scenario"])).read_bytes()


@functools.lru_cache(maxsize=1)
def _image(path: str) -> TargetMemory:
    # the image backend inflates the gzip lazily; keep one model's image at a time
    return TargetMemory(ImageTarget(str(Path(path) / "phys.img.gz")))


def models() -> List[str]:
    """Models whose fixtures have entry-failure scenarios."""
    if not LAB.is_dir():
        return []
    return sorted(p.name for p in LAB.iterdir() if (p / "entry_failures.json").is_file()
                  and json.loads((p / "entry_failures.json").read_text()))


def all_models() -> List[str]:
    """Models with a ground truth (normal runs)."""
    if not LAB.is_dir():
        return []
    return sorted(p.name for p in LAB.iterdir() if (p / "ground_truth.json").is_file())


@functools.lru_cache(maxsize=None)
def load(name: str) -> LabModel:
    path = LAB / name
    truth = json.loads((path / "ground_truth.json").read_text())
    scenarios_file = path / "entry_failures.json"
    scenarios = json.loads(scenarios_file.read_text()) if scenarios_file.is_file() else []
    return LabModel(name, path, truth, scenarios)


def scenario_inputs(model: LabModel, scenario: Dict[str, Any]) -> Tuple[Vmcs, Environment]:
    """The VMCS and the VMM state of one scenario.

    The VMM-side facts a scenario sets up (MOV SS right before VMLAUNCH, VMRESUME instead of
    VMLAUNCH, no current VMCS) are not in the VMCS; they come from what the scenario says it
    does, never from its observed outcome.
    """
    page = model.page(scenario)
    launch_state = choose_layout(page).layout.launch_state(page)
    env = Environment()
    env.set("vmxon_pa", model.truth["vmxon_pa"], "lab ground truth")
    address = scenario["vmcs_pa"]
    if scenario["rule"] == "PRE-MOVSS":
        env.set("mov_ss_blocking", True, "scenario")
    if scenario["rule"] == "PRE-NO-VMCS":
        address = INVALID_POINTER
    if "VMRESUME" in scenario["description"]:
        env.set("instruction", "vmresume", "scenario")
    vmcs = Vmcs("memory", model.truth["revision_id"], False, parse_fields(scenario["fields"]), address=address,
                launch_state=launch_state, trust="lab scenario %s" % scenario["scenario"])
    return vmcs, env
