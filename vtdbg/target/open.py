"""Opening a target from a URI (shared/DESIGN.md, "Targets").

``image:FILE`` raw physical image; ``replay:FILE.jsonl`` a recorded session;
``dump:FILE`` a dump whose format is sniffed; ``bochs:CONFIG.bxrc`` live Bochs;
``kd:<attachKernel string>`` pykd kernel attach.  A bare path is sniffed.  Backends are
imported only when used, so one-shot commands never load pykd or pexpect-like modules.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable, Dict, Tuple

from vtdbg.lib.errors import TargetError, UsageError
from vtdbg.target.base import Target

#: scheme -> (module, factory function name); the factory takes the URI remainder
SCHEMES: Dict[str, Tuple[str, str]] = {
    "image": ("vtdbg.target.image", "ImageTarget"),
    "replay": ("vtdbg.target.record", "_replay_from_path"),
    "dump": ("vtdbg.target.sniff", "open_dump"),
    "bochs": ("vtdbg.target.bochs", "open_bochs"),
    "kd": ("vtdbg.target.pykd_backend", "open_kd"),
}


def _factory(scheme: str) -> Callable[[str], Target]:
    module_name, attr = SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError("the %s: backend is not available here (%s)" % (scheme, exc)) from None
    return getattr(module, attr)  # type: ignore[no-any-return]


def split_uri(uri: str) -> Tuple[str, str]:
    """(scheme, rest); a bare path (or a Windows drive path like C:\\x) gets scheme ''."""
    if ":" in uri:
        scheme, rest = uri.split(":", 1)
        if scheme.lower() in SCHEMES and not (len(scheme) == 1 and os.name == "nt"):
            return scheme.lower(), rest
    return "", uri


def open_target(uri: str) -> Target:
    """Open ``uri``; a bare path is sniffed (recordings by their header, else dumps/images)."""
    scheme, rest = split_uri(uri)
    if not rest:
        raise UsageError("target %r names nothing after the scheme" % uri)
    if scheme:
        return _factory(scheme)(rest)
    if not os.path.exists(rest):
        raise TargetError("no such file: %s (targets: image:FILE, dump:FILE, replay:FILE, bochs:CONFIG, kd:...)"
                          % rest)
    with open(rest, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b'{"format": "vtdbg-recording"'):
        return _factory("replay")(rest)
    return _factory("dump")(rest)
