"""Shared test fixtures: an isolated $VTDBG_HOME, paths to shared/ and the lab fixtures."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import settings

# CI runs property tests derandomized (the same examples every run), so a red CI always
# means a real regression; developers' runs keep exploring new examples
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets an empty VTDBG_HOME so user files never leak in."""
    home = tmp_path / "vtdbg-home"
    monkeypatch.setenv("VTDBG_HOME", str(home))
    monkeypatch.setenv("NO_COLOR", "1")
    return home


@pytest.fixture
def shared_reference() -> Path:
    """../shared/reference (skips when the checkout has no shared/ beside it)."""
    ref = SHARED / "reference"
    if not ref.is_dir():
        pytest.skip("../shared/reference is not present")
    return ref


def run_cli(*argv: str) -> Tuple[int, str, str]:
    """Run the vtdbg CLI in-process; returns (status, stdout, stderr)."""
    from vtdbg.frontends.cli import run

    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


def lab_models() -> List[str]:
    """Models that have committed lab fixtures."""
    base = FIXTURES / "lab"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "ground_truth.json").is_file())


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (long fuzz runs, 4 GiB images) run only when asked for, with
    ``-m slow`` or VTDBG_SLOW=1, so the README's test command and CI stay short."""
    import os

    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("VTDBG_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or VTDBG_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
