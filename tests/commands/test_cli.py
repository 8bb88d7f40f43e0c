"""CLI conventions of shared/DESIGN.md: option placement, errors, exit codes, JSON."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


def test_no_arguments_prints_help():
    status, out, _ = run_cli()
    assert status == 0 and "vtdbg" in out and "layouts" in out


@pytest.mark.parametrize("argv, message", [
    (["no-such-command"], "invalid choice"),
    (["layout"], "required"),
    (["layout", "nope"], "unknown layout 'nope'"),
    (["vmcs", "--image", "/nonexistent/file.img", "--at", "0x1000"], "no such image file"),
    (["vmcs", "--at", "0x1000"], "needs a target"),
    (["layouts", "--target", "image:a", "--image", "b"], "not both"),
])
def test_user_mistakes_are_one_line_errors_with_status_2(argv, message):
    status, out, err = run_cli(*argv)
    assert status == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_debug_shows_the_traceback():
    status, _, err = run_cli("--debug", "layout", "nope")
    assert status == 2 and "Traceback" in err and "unknown layout" in err


@pytest.mark.parametrize("argv", [
    ["--json", "layout", "kvm"],
    ["layout", "--json", "kvm"],
    ["layout", "kvm", "--json"],
])
def test_json_is_accepted_anywhere(argv):
    status, out, _ = run_cli(*argv)
    assert status == 0
    doc = json.loads(out)
    assert doc["name"] == "kvm_vmcs12" and doc["revision_ids"] == [0x11E57ED0]
    assert all(isinstance(f["offset"], int) and isinstance(f["encoding"], int) for f in doc["fields"])


def test_layouts_json_contract():
    status, out, _ = run_cli("layouts", "--json")
    assert status == 0
    rows = json.loads(out)
    assert {"name", "revision_ids", "source"} <= set(rows[0])
    by_name = {r["name"]: r for r in rows}
    assert by_name["bochs_2_7"]["revision_ids"] == [0x2B, 0x04]
    assert len(rows) >= 15


def test_layout_json_fields_have_the_contract_keys():
    status, out, _ = run_cli("layout", "bochs", "--json")
    doc = json.loads(out)
    cs = [f for f in doc["fields"] if f["encoding"] == 0x4816][0]
    assert {"encoding", "offset", "size", "transform", "certain"} <= set(cs)
    assert (cs["offset"], cs["size"], cs["transform"], cs["certain"]) == (2664, 4, "rol8", True)
    status, out, _ = run_cli("layout", "intel_haswell_rev0x12", "--json")
    haswell = json.loads(out)
    assert any(not f["certain"] and f["transform"] == "packed16" for f in haswell["fields"])


def test_command_index_matches_registration():
    from vtdbg.commands.registry import command_index, load_all

    index = command_index()
    registered = {}
    for cmd in load_all().values():
        module = cmd.run.__module__.rsplit(".", 1)[1]
        registered[cmd.name] = module
        registered.update({alias: module for alias in cmd.aliases})
    assert index == registered


def test_a_one_shot_command_imports_only_its_own_module():
    import subprocess
    import sys

    code = ("import io, sys\n"
            "from vtdbg.frontends.cli import run\n"
            "assert run(['error', '7'], io.StringIO(), io.StringIO()) == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith('vtdbg.commands.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['vtdbg.commands.reference', 'vtdbg.commands.registry', 'vtdbg.commands.result']"


@pytest.mark.parametrize("argv", [["--cpu", "all", "--json", "fields"], ["--target", "x", "fields"],
                                  ["fields", "--cpu", "0"]])
def test_global_options_with_values_do_not_hide_the_command(argv):
    from vtdbg.frontends.cli import _command_word

    assert _command_word(argv) == "fields"


def test_every_command_has_help_with_examples_and_accepts_json():
    from vtdbg.commands.registry import load_all
    from vtdbg.frontends.cli import build_parser

    commands = load_all()
    assert len(commands) >= 30
    for name, cmd in commands.items():
        assert cmd.help and cmd.examples, name
        assert all(e.startswith("vtdbg ") or e.startswith("!py") for e in cmd.examples), name
    parser = build_parser()
    for name in commands:
        args = parser.parse_args([name, "--json"] + _required(name))
        assert args.json is True


def _required(name):
    # the positionals a command cannot parse without (values never reach a target here)
    return {"field": ["GUEST_RIP"], "exit-reason": ["1"], "error": ["7"], "qual": ["28", "0"],
            "msr": ["0x480", "0"], "layout": ["bochs"], "stats": ["x.jsonl"]}.get(name, [])
