"""Architecture rules that keep vtdbg portable between hosts (shared/DESIGN.md, "Layers")."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vtdbg"
HOST_LIBRARIES = {"pykd", "prompt_toolkit", "pygments", "kdmp_parser"}
#: the only vtdbg.target modules that core code may use
CORE_TARGET_MODULES = {"vtdbg.target.base", "vtdbg.target.paging"}
LOW_LAYERS = ("lib", "arch", "layouts", "profiles", "core")
HIGH_PACKAGES = ("vtdbg.commands", "vtdbg.render", "vtdbg.frontends")


def _imports(path: Path) -> Iterator[Tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def test_low_layers_import_no_host_library_backend_or_upper_layer():
    problems = []
    for layer in LOW_LAYERS:
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for line, name in _imports(path):
                top = name.split(".")[0]
                if top in HOST_LIBRARIES:
                    problems.append("%s:%d imports %s" % (path.relative_to(ROOT), line, name))
                if name.startswith("vtdbg.target") and name not in CORE_TARGET_MODULES and name != "vtdbg.target":
                    problems.append("%s:%d imports backend %s" % (path.relative_to(ROOT), line, name))
                if name.startswith(HIGH_PACKAGES):
                    problems.append("%s:%d imports upper layer %s" % (path.relative_to(ROOT), line, name))
    assert not problems, "\n".join(problems)


def test_only_frontends_print():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "frontends" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append("%s:%d" % (path.relative_to(ROOT), node.lineno))
    assert not offenders, "commands return data; renderers print: " + ", ".join(offenders)


def test_reference_commands_do_not_load_colour_or_shell_libraries():
    code = ("import io, sys\n"
            "from vtdbg.frontends.cli import run\n"
            "for argv in (['fields'], ['exit-reason', '48'], ['fields', '--json'], ['layouts']):\n"
            "    assert run(argv, io.StringIO(), io.StringIO()) == 0, argv\n"
            "bad = sorted(m for m in ('prompt_toolkit', 'pygments', 'pykd') if m in sys.modules)\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_generated_reference_docs_are_current():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
