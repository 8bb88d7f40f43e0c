"""The interactive shell, driven through prompt_toolkit's pipe input (no terminal).

The image is the Bochs lab's physical memory (the committed fixture when there is one,
else the synthetic image with the lab's layout, tests/support/lab.py); its ground truth
gives the VMCS address the commands must find.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

pytest.importorskip("prompt_toolkit")

from prompt_toolkit.document import Document  # noqa: E402
from prompt_toolkit.input import create_pipe_input  # noqa: E402
from prompt_toolkit.output import DummyOutput  # noqa: E402

from tests.support.lab import lab_memory  # noqa: E402
from vtdbg.frontends.shell import ShellContext, ShellSession, Vocabulary, make_completer, start  # noqa: E402
from vtdbg.target.image import ImageTarget  # noqa: E402


class CountingImage(ImageTarget):
    """An image target that counts how often it is opened and closed."""

    opened = 0

    def __init__(self, path: str) -> None:
        super().__init__(path)
        CountingImage.opened += 1
        self.close_calls = 0

    def close(self) -> None:
        self.close_calls += 1
        super().close()


@pytest.fixture
def lab_image(tmp_path: Path) -> Tuple[Path, dict]:
    image, truth = lab_memory()
    # the regions the tests use sit in the first MiB; the lab keeps many VMCS-looking test
    # pages above it, which a scan would count as further CPUs
    keep = max(0x100000, (max(truth["vmcs_pa"], truth["vmxon_pa"]) + 0x1000 + 0xFFFFF) & ~0xFFFFF)
    path = tmp_path / "lab.img"
    path.write_bytes(bytes(image[:keep]))
    return path, truth


@pytest.fixture
def pipe() -> Iterator[Any]:
    with create_pipe_input() as inp:
        yield inp


def _session(path: Path, inp: Any, targets: List[CountingImage]) -> Tuple[ShellSession, io.StringIO, io.StringIO]:
    def opener(uri: str) -> CountingImage:
        assert uri.startswith("image:")
        target = CountingImage(uri[len("image:"):])
        targets.append(target)
        return target

    out, err = io.StringIO(), io.StringIO()
    ctx = ShellContext(target_uri="image:%s" % path, opener=opener)
    session = start(ctx, out, err, input=inp, output=DummyOutput(), history_path="")
    return session, out, err


def test_commands_share_one_target_and_it_is_closed_at_exit(lab_image, pipe):
    path, truth = lab_image
    targets: List[CountingImage] = []
    session, out, err = _session(path, pipe, targets)
    assert len(targets) == 1, "the target is opened when the shell starts"
    pipe.send_text("vmcs --at 0x%x --json\n" % truth["vmcs_pa"])
    pipe.send_text("vmxon --at 0x%x\n" % truth["vmxon_pa"])
    pipe.send_text("regions --json\n")
    pipe.send_text("quit\n")
    status = session.loop()
    assert status == 0, err.getvalue()
    assert len(targets) == 1, "every command reused the one target"
    assert targets[0].close_calls >= 1 and session.closed
    text = out.getvalue()
    first = json.loads(text[: text.index("\n}\n") + 2])
    assert first["source"] == "memory" and first["revision_id"] == truth["revision_id"]
    assert "VMXON" in text
    regions = json.loads(text[text.index("\n[") + 1:])
    assert regions[0]["vmcs_pa"] == truth["vmcs_pa"]
    assert session.commands_run == 3


def test_errors_do_not_end_the_session(lab_image, pipe):
    path, truth = lab_image
    targets: List[CountingImage] = []
    session, out, err = _session(path, pipe, targets)
    pipe.send_text("vmcs --at 0x7fffffff000\n")  # beyond the image: a clean error
    pipe.send_text("no-such-command\n")
    pipe.send_text("vmcs --at 'unterminated\n")
    pipe.send_text("vmxon --at 0x%x --json\n" % truth["vmxon_pa"])
    pipe.send_text("exit\n")
    session.loop()
    errors = err.getvalue()
    assert errors.count("vtdbg: error:") >= 3
    assert json.loads(out.getvalue())["pa"] == truth["vmxon_pa"]
    assert targets[0].close_calls >= 1


def test_ctrl_c_cancels_the_line_and_ctrl_d_leaves(lab_image, pipe):
    path, truth = lab_image
    targets: List[CountingImage] = []
    session, out, err = _session(path, pipe, targets)
    pipe.send_text("vmxon --at 0x%x --json" % truth["vmxon_pa"])
    pipe.send_text("\x03")  # Ctrl-C: the half-typed line is dropped
    pipe.send_text("help\n")
    pipe.send_text("\x04")  # Ctrl-D on an empty line: leave
    session.loop()
    assert '"pa"' not in out.getvalue(), "the cancelled line must not run"
    assert "quit, exit, Ctrl-D" in out.getvalue()
    assert session.commands_run == 0 and targets[0].close_calls >= 1


def test_builtins_and_guards(lab_image, pipe):
    path, truth = lab_image
    session, out, err = _session(path, pipe, [])
    session.state["trace"] = [1, 2, 3]
    for line in ("target", "state", "open other.img", "fields --image other.img", "help vmxon", "# a comment", ""):
        session.run_line(line)
    text = out.getvalue()
    assert "lab.img" in text and "trace: list (3 items)" in text
    assert "usage:" in text and "--at" in text  # `help vmxon` shows the command's argparse help
    assert err.getvalue().count("vtdbg: error:") == 2
    assert session.run_line("quit") is None
    session.close()


def test_state_outlives_commands(lab_image, pipe):
    path, _ = lab_image
    session, out, err = _session(path, pipe, [])
    session.context.state["step"] = 7
    session.run_line("fields --json")
    assert session.context.state["step"] == 7 and session.state is session.context.state
    session.close()


def test_completion_offers_commands_fields_layouts_reasons_and_cpus():
    vocabulary = Vocabulary(cpu_count=4)
    completer = make_completer(vocabulary)

    def complete(text: str) -> List[str]:
        return [c.text for c in completer.get_completions(Document(text), None)]

    assert "vmcs" in complete("vm") and "regions" in complete("reg")
    assert {"shell", "attach", "open", "quit", "help"} <= set(complete(""))
    assert "GUEST_RIP" in complete("field GUEST_R")
    assert "guest_rip" not in complete("field guest_r") and "GUEST_RIP" in complete("field guest_r")
    assert "EPT_VIOLATION" in complete("exit-reason EPT_")
    assert "bochs_2_7" in complete("vmcs --layout boch")
    assert complete("vmcs --cpu ") == ["0", "1", "2", "3", "all"]
    assert "--at" in complete("vmcs --")
    assert "hfs_part8" in complete("regions --profile hfs")


def test_history_file_only_in_an_existing_home(isolated_home, lab_image, pipe):
    path, _ = lab_image
    out, err = io.StringIO(), io.StringIO()
    ctx = ShellContext(target_uri="image:%s" % path)
    session = start(ctx, out, err, input=pipe, output=DummyOutput())
    pipe.send_text("fields --width 16\nquit\n")
    session.loop()
    assert not isolated_home.exists(), "nothing is created in $VTDBG_HOME"
    isolated_home.mkdir()
    ctx = ShellContext(target_uri="image:%s" % path)
    with create_pipe_input() as again:
        session = start(ctx, out, err, input=again, output=DummyOutput())
        again.send_text("fields --width 16\nquit\n")
        session.loop()
    assert "fields --width 16" in (isolated_home / "shell_history").read_text()


def test_shell_command_through_the_cli(lab_image, monkeypatch):
    """`vtdbg open FILE` with piped stdin runs the lines as a script (no terminal needed)."""
    from vtdbg.frontends.cli import run

    path, truth = lab_image
    monkeypatch.setattr("sys.stdin", io.StringIO("vmxon --at 0x%x --json\nquit\n" % truth["vmxon_pa"]))
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    status = run(["open", "image:%s" % path], out, err)
    assert status == 0, err.getvalue()
    assert json.loads(out.getvalue())["pa"] == truth["vmxon_pa"]
    status = run(["shell", str(path), "--image", str(path)], io.StringIO(), err)
    assert status == 2 and "not both" in err.getvalue()
