"""End-to-end: build and run the Bochs lab and compare with the committed fixtures.

Marked ``lab``; skipped when bochs-bin, nasm or unshare is missing, or when the
installed Bochs is not the release the fixtures were made with (the VMCS layout
differs between 2.7 and 2.8+, so only like is compared with like).  Each model
takes about 2 s.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Dict

import pytest

from tests.lab import run as lab

pytestmark = pytest.mark.lab

FIXTURES = lab.FIXTURES_ROOT


def committed(model: str, name: str) -> Any:
    """Load a committed JSON fixture."""
    return json.loads((FIXTURES / model / name).read_text())


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Dict[int, Path]:
    """The lab images (1 CPU, and 2 CPUs built with -DSMP), assembled once."""
    reason = lab.tools_available()
    if reason is not None:
        pytest.skip(reason)
    return {
        1: lab.build_image(tmp_path_factory.mktemp("lab-image")),
        2: lab.build_image(tmp_path_factory.mktemp("lab-image-smp"), defines=("SMP",)),
    }


@pytest.mark.parametrize("model", lab.MODELS + lab.SMP_MODELS)
def test_regenerated_ground_truth_equals_fixtures(model: str, images: Dict[int, Path], tmp_path: Path) -> None:
    """A fresh run reproduces ground truth, scenarios, snapshots and memory image."""
    image = images[lab.split_model(model)[1]]
    gt_committed: Dict[str, Any] = committed(model, "ground_truth.json")
    version = lab.bochs_version()
    if version != gt_committed["bochs_version"]:
        pytest.skip(f"fixtures were made with Bochs {gt_committed['bochs_version']}, this is {version}")
    run = lab.run_lab(model, tmp_path / model, timeout=120.0, image=image)
    dest = tmp_path / "fixtures"
    lab.write_fixtures(run, dest)
    assert committed(model, "entry_failures.json") == json.loads((dest / "entry_failures.json").read_text())
    assert gt_committed == json.loads((dest / "ground_truth.json").read_text())
    for snap in gt_committed["exit_snapshots"]:
        assert (dest / snap["file"]).read_bytes() == (FIXTURES / model / snap["file"]).read_bytes()
    pages = FIXTURES / model / "entry_failures"
    for page in pages.iterdir() if pages.is_dir() else []:
        assert (dest / "entry_failures" / page.name).read_bytes() == page.read_bytes()
    assert gzip.decompress((dest / "phys.img.gz").read_bytes()) == gzip.decompress(
        (FIXTURES / model / "phys.img.gz").read_bytes()
    )
