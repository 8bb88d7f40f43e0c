"""Running ``bochs-bin`` under a pseudo-terminal and talking to its internal debugger.

Why a pty: Bochs's stdout is line-buffered only on a terminal (on a pipe the debugger's
answers would sit in a buffer), and its readline prompt ``<bochs:N> `` marks where every
answer ends.  The prompt is the only synchronisation we rely on: a command line is written,
and everything up to the next prompt is its answer (the first line being readline's echo).

Facts this module depends on (Bochs 2.7, measured):

* one line may hold several commands separated by ``;`` and costs one prompt, but Bochs
  copies the line into a 512-byte buffer and silently cuts the rest, so lines are refused
  above :data:`MAX_LINE`;
* SIGINT stops a running simulation and returns to the prompt (``Next at t=...``);
* port-0xE9 output and debugger output share stdout; the guest only prints while it runs;
* the log file named by ``log:`` is flushed as it is written (used to notice a halted CPU);
* typed-ahead input is buffered by the tty and consumed later, so nothing is ever written
  before the prompt has been seen.

The process is always reaped: :meth:`BochsProcess.close` quits, then terminates, then
kills, and waits in every case; an ``atexit`` hook closes whatever callers forgot.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import time
import weakref
from typing import Callable, List, Optional, Sequence, Tuple

from vtdbg.lib.errors import TargetError

#: longest command line we send (Bochs keeps 510 characters of a line and drops the rest)
MAX_LINE = 480
#: how long a stopped Bochs may take to print its prompt after SIGINT or ``quit``
SETTLE_SECONDS = 5.0

_PROMPT = re.compile(rb"<bochs:(\d+)> $")
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

_live: weakref.WeakSet[BochsProcess] = weakref.WeakSet()


def _close_all() -> None:
    """atexit hook: no Bochs outlives the Python process that started it."""
    for process in list(_live):
        process.close()


atexit.register(_close_all)


class BochsEnded(TargetError):
    """Bochs exited (or closed its terminal) while we waited for it; ``partial`` holds what
    it printed before."""

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


class BochsTimeout(TargetError):
    """Bochs did not print its prompt in time; ``partial`` holds what it printed."""

    def __init__(self, message: str, partial: str) -> None:
        super().__init__(message)
        self.partial = partial


def default_overrides(workdir: str) -> List[str]:
    """The bochsrc lines appended after the user's config (later lines win in Bochs).

    They make Bochs controllable without a display or sound card and keep its logs where
    we can read them: rfb with ``timeout=0`` never waits for a VNC client (and ``nogui``
    is not built in Debian's package), the dummy sound drivers avoid a crash in containers
    without ALSA, magic breakpoints and port 0xE9 are the lab's interface, and ``panic:
    action=fatal`` turns a triple fault into an exit we can report instead of a hang.
    ``info: action=report`` keeps the "HLT with IF=0" message we detect halts with.
    """
    return [
        'display_library: rfb, options="timeout=0"',
        "sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy",
        "magic_break: enabled=1",
        "port_e9_hack: enabled=1",
        "log: %s" % os.path.join(workdir, "bochs.log"),
        "debugger_log: %s" % os.path.join(workdir, "debugger.log"),
        "panic: action=fatal",
        "info: action=report",
    ]


def isolation_prefix() -> List[str]:
    """``unshare`` arguments that give Bochs an empty network namespace.

    rfb listens on port 5900 of every interface; in a namespace of its own it is unreachable
    and several Bochs can run at once.  Root can create the namespace directly, anyone else
    needs a user namespace too (``-r``).
    """
    exe = shutil.which("unshare")
    if exe is None:
        raise TargetError("unshare is not installed (util-linux); it keeps Bochs's VNC port off the network")
    return [exe, "-n"] if os.geteuid() == 0 else [exe, "-rn"]


class BochsProcess:
    """One ``bochs-bin`` with its debugger on a pty.  Not thread-safe."""

    def __init__(self, config: str, bochs: str = "bochs-bin", overrides: Optional[Sequence[str]] = None,
                 extra: Sequence[str] = (), workdir: Optional[str] = None, isolate: bool = True,
                 startup_timeout: float = 30.0, cwd: Optional[str] = None) -> None:
        exe = shutil.which(bochs) if os.sep not in bochs else bochs
        if exe is None or not os.path.exists(exe):
            raise TargetError("%s is not installed (apt-get install bochs bochsbios vgabios)" % bochs)
        self.own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="vtdbg-bochs-")
        self.log_path = os.path.join(self.workdir, "bochs.log")
        self.stderr_path = os.path.join(self.workdir, "stderr.txt")
        lines = list(default_overrides(self.workdir) if overrides is None else overrides) + list(extra)
        self.argv = (isolation_prefix() if isolate else []) + [exe, "-q", "-f", config] + lines
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.master = -1
        self.at_prompt = False
        self.prompt_number = 0
        self.lines_sent = 0
        self.returncode: Optional[int] = None
        self.banner = ""
        self._buffer = bytearray()
        self._closed = False
        self._spawn(cwd, startup_timeout)

    # -- start-up ---------------------------------------------------------------------------
    def _spawn(self, cwd: Optional[str], timeout: float) -> None:
        master, slave = pty.openpty()
        try:
            # wide enough that readline never scrolls or wraps a command line
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 4096, 0, 0))
            attrs = termios.tcgetattr(slave)
            attrs[1] &= ~termios.OPOST  # pass the guest's bytes through untranslated
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            env = dict(os.environ, TERM="dumb", INPUTRC=os.devnull)
            with open(self.stderr_path, "wb") as errors:
                # a session of its own: a Ctrl-C typed at the user's terminal reaches
                # Python (which then closes Bochs), not Bochs directly
                self.proc = subprocess.Popen(self.argv, stdin=slave, stdout=slave, stderr=errors, cwd=cwd,
                                             env=env, start_new_session=True, close_fds=True)
        except BaseException:
            os.close(master)
            os.close(slave)
            self._cleanup_files()
            raise
        os.close(slave)
        self.master = master
        _live.add(self)
        try:
            self.banner = self.read_until_prompt(time.monotonic() + timeout)
        except BochsTimeout as exc:
            self.close()
            raise TargetError("Bochs printed no debugger prompt within %.0f s (is bochs-bin built with the "
                              "internal debugger?); it printed: %s" % (timeout, _tail(exc.partial, 400))) from None
        except BaseException:
            self.close()
            raise

    # -- I/O --------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def read_until_prompt(self, deadline: float, poll: Optional[Callable[[], bool]] = None) -> str:
        """Everything Bochs prints until its prompt (prompt excluded), as latin-1 text.

        ``poll`` is called about every 50 ms while waiting; when it returns True the wait
        ends early.  On a timeout :class:`BochsTimeout` is raised and what was read so far
        is kept, so a following :meth:`interrupt` returns the whole answer.
        """
        self.at_prompt = False
        while True:
            match = _PROMPT.search(self._buffer[-32:]) if self._buffer else None
            if match is not None:
                self.prompt_number = int(match.group(1))
                self.at_prompt = True
                text = self._buffer[:len(self._buffer) - len(match.group(0))].decode("latin-1")
                self._buffer = bytearray()
                return text
            now = time.monotonic()
            if now >= deadline or (poll is not None and poll()):
                raise BochsTimeout("Bochs did not stop in time", self._buffer.decode("latin-1"))
            self._read_some(min(0.05, max(deadline - now, 0.0)))

    def _read_some(self, wait: float) -> None:
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return
        try:
            chunk = os.read(self.master, 1 << 16)
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            chunk = b""
        if not chunk:
            partial = self._buffer.decode("latin-1")
            self._buffer = bytearray()
            self._reap_quietly()
            raise BochsEnded("Bochs exited%s%s" % (self._exit_text(), self.failure_detail()), partial)
        self._buffer += chunk

    def send(self, line: str) -> None:
        """Write one command line (must be at the prompt)."""
        if not self.alive:
            self._reap_quietly()
            raise BochsEnded("Bochs is not running%s%s" % (self._exit_text(), self.failure_detail()))
        if not self.at_prompt:
            raise TargetError("Bochs is not at its prompt; the previous command did not finish")
        if "\n" in line or len(line) > MAX_LINE:
            raise TargetError("internal error: a Bochs command line must be one line of at most %d characters"
                              % MAX_LINE)
        self.at_prompt = False
        self._buffer = bytearray()
        self.lines_sent += 1
        os.write(self.master, line.encode("latin-1") + b"\n")

    def command(self, line: str, timeout: float = 30.0) -> str:
        """Send ``line`` and return its answer without the echo, prompt or carriage returns."""
        self.send(line)
        return clean_answer(self.read_until_prompt(time.monotonic() + timeout))

    def run(self, line: str, deadline: float, poll: Optional[Callable[[], bool]] = None) -> str:
        """Send a line that runs the guest; return the answer with only the echo removed
        (the guest's console bytes stay as they were)."""
        self.send(line)
        return strip_echo(self.read_until_prompt(deadline, poll))

    def interrupt(self) -> Tuple[str, bool]:
        """Stop a running simulation; returns (the whole answer of the running command with
        its echo removed, whether SIGINT was needed).

        The prompt may have arrived just as the wait gave up, so pending output is read
        first: a SIGINT that reached Bochs at its prompt would be taken by readline and
        never answered.
        """
        if not self.alive or self.proc is None:
            raise BochsEnded("Bochs is not running%s%s" % (self._exit_text(), self.failure_detail()))
        try:
            return strip_echo(self.read_until_prompt(time.monotonic() + 0.1)), False
        except BochsTimeout:
            pass
        os.kill(self.proc.pid, signal.SIGINT)
        return strip_echo(self.read_until_prompt(time.monotonic() + SETTLE_SECONDS)), True

    # -- diagnostics -------------------------------------------------------------------------
    def log_text(self, limit: int = 1 << 20) -> str:
        """The last ``limit`` bytes of the Bochs log."""
        return _read_tail(self.log_path, limit)

    def failure_detail(self) -> str:
        """A short excerpt of the log/stderr explaining an exit (PANIC lines first)."""
        log = self.log_text(64 << 10)
        # Bochs log lines are "<ticks><level>[<module>] text"; p = panic, e = error
        lines = [ln for ln in log.splitlines() if re.match(r"\d*[pe]\[", ln)]
        excerpt = lines[-3:] if lines else log.splitlines()[-3:]
        if not excerpt:
            excerpt = _read_tail(self.stderr_path, 4096).splitlines()[-3:]
        return ("; log: " + " | ".join(ln.strip() for ln in excerpt)) if excerpt else ""

    def _exit_text(self) -> str:
        if self.proc is None or self.proc.returncode is None:
            return ""
        code = self.proc.returncode
        return " (killed by signal %d)" % -code if code < 0 else " (status %d)" % code

    # -- shutdown ---------------------------------------------------------------------------
    def _reap_quietly(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.wait(timeout=SETTLE_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.returncode = self.proc.returncode

    def close(self) -> None:
        """Quit Bochs politely, else terminate, else kill; always wait; idempotent."""
        if self._closed:
            return
        self._closed = True
        _live.discard(self)
        proc = self.proc
        try:
            if proc is not None and proc.poll() is None:
                self._stop(proc)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()
                self.returncode = proc.returncode
            if self.master >= 0:
                os.close(self.master)
                self.master = -1
            self._cleanup_files()

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            if not self.at_prompt:
                # a command is still running (timeout, Ctrl-C): stop it so quit is read
                os.kill(proc.pid, signal.SIGINT)
                self.read_until_prompt(time.monotonic() + 2.0)
            os.write(self.master, b"quit\n")
            proc.wait(timeout=SETTLE_SECONDS)
            return
        except (OSError, TargetError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass

    def _cleanup_files(self) -> None:
        if self.own_workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __del__(self) -> None:  # pragma: no cover - safety net only
        try:
            self.close()
        except Exception:
            pass


def pack_lines(groups: List[List[str]]) -> List[str]:
    """Join groups of commands with ``;`` into as few lines as Bochs keeps whole.

    A group never straddles two lines (a "set ...; s; r" run must stay together); a single
    group longer than :data:`MAX_LINE` is an internal error caught by :meth:`BochsProcess.send`.
    """
    lines: List[str] = []
    current = ""
    for group in groups:
        text = "; ".join(group)
        candidate = text if not current else current + "; " + text
        if len(candidate) > MAX_LINE and current:
            lines.append(current)
            current = text
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def strip_echo(raw: str) -> str:
    """Drop readline's echo of the command line: everything up to the first newline.

    With TERM=dumb and a 4096-column window readline never wraps, so the echo is exactly
    one line; what follows is Bochs's answer, byte for byte (guest console text included).
    """
    newline = raw.find("\n")
    return raw[newline + 1:] if newline >= 0 else ""


def clean_answer(raw: str) -> str:
    """A debugger answer without echo, carriage returns and terminal escapes."""
    return _ESCAPES.sub("", strip_echo(raw).replace("\r", ""))


def _read_tail(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("latin-1")
    except OSError:
        return ""


def _tail(text: str, limit: int) -> str:
    text = text.replace("\r", "").strip()
    return text if len(text) <= limit else "..." + text[-limit:]
