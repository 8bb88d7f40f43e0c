"""The decoder against a real VT-x implementation: the Bochs lab's own VMREAD log.

For every CPU model with committed fixtures (tests/fixtures/lab/<model>/), the VMCS decoded
from the lab's physical memory image must agree with the lab's VMREAD of every field the
layout supplies, and each per-exit VMCS snapshot must show the exit the lab logged.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES, lab_models
from vtdbg.arch.fields import resolve_encoding
from vtdbg.core.vmcs import decode_vmcs_page, read_vmcs
from vtdbg.layouts.registry import get_layout
from vtdbg.target.image import ImageTarget

MODELS = lab_models()
pytestmark = pytest.mark.skipif(not MODELS, reason="no lab fixtures committed yet")


def _truth(model):
    return json.loads((FIXTURES / "lab" / model / "ground_truth.json").read_text())


def _expected_layout(truth):
    return "bochs_2_7" if str(truth["bochs_version"]).startswith("2.7") else "bochs_2_8_3_0"


@pytest.mark.parametrize("model", MODELS)
def test_memory_decode_equals_the_labs_vmread_on_every_field(model):
    truth = _truth(model)
    target = ImageTarget(str(FIXTURES / "lab" / model / truth["memory_image"]))
    vmcs = read_vmcs(target, truth["vmcs_pa"])
    assert vmcs.layout == _expected_layout(truth)
    assert vmcs.revision_id == truth["revision_id"]
    compared = mismatched = 0
    for key, value in truth["fields"].items():
        field, high = resolve_encoding(int(key, 16))
        if field.encoding not in vmcs.values:
            continue
        decoded = vmcs.values[field.encoding]
        if high:
            decoded >>= 32  # a HIGH encoding reads bits 63:32 of the 64-bit field
        if field.name == "VM_INSTRUCTION_ERROR":
            continue  # the lab's scan of unsupported encodings sets it (bochs-lab.md 4, note 3)
        compared += 1
        if decoded != value:
            mismatched += 1
    supplied = len(vmcs.values)
    print("%s: %d VMREAD values compared, %d mismatches, layout supplies %d fields" % (
        model, compared, mismatched, supplied))
    assert mismatched == 0
    assert compared >= 120


@pytest.mark.parametrize("model", MODELS)
def test_every_exit_snapshot_shows_the_exit_the_lab_logged(model):
    truth = _truth(model)
    exits = truth["exits"]
    assert truth["exit_snapshots"], "no per-exit snapshots"
    for snap in truth["exit_snapshots"]:
        page = (FIXTURES / "lab" / model / snap["file"]).read_bytes()
        vmcs = decode_vmcs_page(page, _expected_layout(truth))
        logged = exits[snap["index"]]
        assert vmcs.get("VM_EXIT_REASON") == logged["reason"] == snap["reason"]
        assert vmcs.get("EXIT_QUALIFICATION") == logged["qualification"]
        assert vmcs.get("GUEST_RIP") == logged["guest_rip"]
        assert vmcs.get("VM_EXIT_INSTRUCTION_LEN") == logged["instruction_len"]


@pytest.mark.parametrize("model", MODELS)
def test_auto_layout_is_confident_on_real_pages(model):
    truth = _truth(model)
    for snap in truth["exit_snapshots"]:
        page = (FIXTURES / "lab" / model / snap["file"]).read_bytes()
        vmcs = decode_vmcs_page(page)
        assert vmcs.layout == _expected_layout(truth) and vmcs.layout_confidence >= 0.9
    assert get_layout(_expected_layout(truth))
