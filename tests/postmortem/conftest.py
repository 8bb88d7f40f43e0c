"""Fixtures for the post-mortem tests: real lab images as files, once per session."""
from __future__ import annotations

import gzip
import json

import pytest

from tests.support.lab import FIXTURES, real_lab_models


@pytest.fixture(scope="session")
def lab_images(tmp_path_factory):
    """model -> (raw image path, ground truth) for every committed lab model."""
    models = real_lab_models()
    if not models:
        pytest.skip("no lab fixtures under tests/fixtures/lab")
    folder = tmp_path_factory.mktemp("lab")
    out = {}
    for model in models:
        path = folder / ("%s.img" % model)
        with gzip.open(FIXTURES / "lab" / model / "phys.img.gz", "rb") as handle:
            path.write_bytes(handle.read())
        truth = json.loads((FIXTURES / "lab" / model / "ground_truth.json").read_text())
        out[model] = (path, truth)
    return out


@pytest.fixture(scope="session")
def haswell(lab_images):
    """The corei7_haswell_4770 lab image (or the first model) and its ground truth."""
    return lab_images.get("corei7_haswell_4770") or next(iter(lab_images.values()))
