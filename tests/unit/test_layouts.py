"""The shipped layouts: identical offsets to the researched references, self-consistent,
and the schema refuses bad user files."""
from __future__ import annotations

import json
import random

import pytest

from vtdbg.layouts.model import TRANSFORMS, parse_layout
from vtdbg.layouts.registry import all_layouts, builtin_layouts, candidates_for, get_layout
from vtdbg.lib.errors import LayoutError

REFERENCE_GROUPS = ("fields", "encoded_fields", "optional_fields", "uncertain_fields")


def test_every_reference_layout_is_shipped_with_identical_offsets(shared_reference):
    shipped = builtin_layouts()
    files = sorted((shared_reference / "layouts").glob("*.json"))
    assert len(files) >= 15
    for path in files:
        ref = json.loads(path.read_text())
        layout = shipped[path.stem]
        mine = {(f.encoding, f.certain): f for f in layout.fields}
        count = 0
        for group in REFERENCE_GROUPS:
            for name, entry in ref.get(group, {}).items():
                enc = int(entry["encoding"], 16) if isinstance(entry["encoding"], str) else entry["encoding"]
                item = mine[(enc, group != "uncertain_fields")]
                assert (item.offset, item.size) == (entry["offset"], entry["size"]), (path.stem, name)
                count += 1
        assert count == len(layout.fields), path.stem


def test_bochs_2_7_offsets_follow_the_source_formula():
    layout = get_layout("bochs")
    assert layout.name == "bochs_2_7"
    for f in layout.fields:
        width, kind, index = (f.encoding >> 13) & 3, (f.encoding >> 10) & 3, f.encoding & 0x3FF
        assert f.offset == 0x10 + (((width << 2) | kind) * 64 + index) * 4, f.name


def test_bochs_access_rights_are_rotated_and_nothing_else_is():
    for name in ("bochs_2_7", "bochs_2_8_3_0", "bochs_git_post_3_0"):
        rotated = {f.encoding for f in get_layout(name).fields if f.transform == "rol8"}
        assert rotated == set(range(0x4814, 0x4823, 2)), name


def test_certain_fields_do_not_overlap():
    for layout in builtin_layouts().values():
        spans = sorted((f.offset, f.offset + f.size, f.name) for f in layout.fields if f.certain)
        for (_, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
            assert a1 <= b0, "%s: %s overlaps %s" % (layout.name, an, bn)


def test_build_and_decode_round_trip_every_layout():
    rng = random.Random(1234)
    for layout in builtin_layouts().values():
        fields = layout.field_map()
        values = {}
        for enc, f in fields.items():
            if f.transform == "packed16":
                value = rng.getrandbits(16) & 0xF0FF | rng.getrandbits(1) << 16
            elif f.transform == "rol8":
                value = rng.getrandbits(32)
            else:
                value = rng.getrandbits(8 * f.size)
            values[enc] = value
        page = layout.build_page(values)
        assert all(fields[e].decode(page) == v for e, v in values.items() if fields[e].certain), layout.name


def test_transforms_invert():
    from vtdbg.layouts.model import INVERSE_TRANSFORMS

    for ar in (0xA09B, 0xC093, 0x1008B, 0x10000, 0x8B):
        for name in TRANSFORMS:
            assert TRANSFORMS[name](INVERSE_TRANSFORMS[name](ar)) == ar


def test_bochs_rotation_matches_the_recipe_bytes():
    # bochs-lab.md 4: GUEST_CS_AR 0xA09B is stored as bytes 00 9b a0 00
    cs = get_layout("bochs_2_7").field_map()[0x4816]
    assert cs.encode(0xA09B) == bytes([0x00, 0x9B, 0xA0, 0x00])
    assert cs.decode(b"\0" * cs.offset + bytes([0x00, 0x00, 0x00, 0x01]) + b"\0" * 4096) == 0x10000


def test_revision_collisions_give_several_candidates():
    assert {l.name for l in candidates_for(0x2B)} >= {"bochs_2_7", "bochs_2_8_3_0"}
    assert {l.name for l in candidates_for(0x04)} >= {"bochs_2_7", "intel_coffeelake_rev0x04"}
    assert {l.name for l in candidates_for(0x11E57ED0)} >= {"kvm_vmcs12", "kvm_vmcs12_linux3x_legacy"}
    assert "vmware_nested_partial" not in {l.name for l in candidates_for(1)}


@pytest.mark.parametrize("doc, message", [
    ({"schema": "nope"}, "schema"),
    ({"schema": "vtdbg-layout/1", "name": "x y", "fields": [], "revision_ids": [1]}, "name"),
    ({"schema": "vtdbg-layout/1", "name": "u", "fields": [{"encoding": 1, "offset": 4095, "size": 8}],
      "revision_ids": [1]}, "do not fit"),
    ({"schema": "vtdbg-layout/1", "name": "u", "fields": [{"encoding": 1, "offset": 8, "size": 4,
                                                           "transform": "weird"}], "revision_ids": [1]}, "transform"),
    ({"schema": "vtdbg-layout/1", "name": "u", "fields": [], "revision_ids": []}, "revision_ids"),
    ({"schema": "vtdbg-layout/1", "name": "u", "fields": [{"encoding": True, "offset": 8, "size": 4}],
      "revision_ids": [1]}, "integer"),
])
def test_bad_layout_documents_are_refused(doc, message):
    with pytest.raises(LayoutError, match=message):
        parse_layout(doc, "user.json", builtin=False)


def test_user_layouts_join_but_cannot_shadow(isolated_home):
    folder = isolated_home / "layouts"
    folder.mkdir(parents=True)
    mine = {"schema": "vtdbg-layout/1", "name": "my_cpu", "revision_ids": ["0x99"],
            "fields": [{"encoding": "0x681e", "offset": 16, "size": 8}]}
    (folder / "mine.json").write_text(json.dumps(mine))
    (folder / "shadow.json").write_text(json.dumps(dict(mine, name="bochs_2_7")))
    (folder / "broken.json").write_text("{not json")
    layouts, warnings = all_layouts()
    names = [l.name for l in layouts]
    assert "my_cpu" in names and names.count("bochs_2_7") == 1
    assert any("built in" in w for w in warnings) and any("broken.json" in w for w in warnings)
    # exact revision matches come first; Xen vVMCS pages may carry any hardware revision id
    assert [l.name for l in candidates_for(0x99)] == ["my_cpu", "xen_vvmcs"]


def test_unknown_layout_name_lists_known_ones():
    with pytest.raises(LayoutError, match="bochs_2_7"):
        get_layout("nonexistent")
