"""Every pykd name vtdbg uses is documented in shared/reference/pykd-api.md (the truth about
the released pykd 0.3.4.15) and exists in the stand-in with the signature the page gives,
so vtdbg never calls something the real binary lacks and the stand-in cannot drift."""
from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).resolve().parent / "pykd.py"
# pytest put this folder (it has no __init__.py) on sys.path to import this file; take it
# off again, or every later `import pykd` in the session would silently get the stand-in
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != STANDIN.parent]
#: methods vtdbg calls on objects pykd returns: class -> methods
METHODS = {"breakpoint": ["remove"], "module": ["name", "begin", "size"], "typeInfo": ["fieldOffset"]}
_SPAN = re.compile(r"`([^`]+)`")
_FORM = re.compile(r"^([A-Za-z_]\w*(?:\s*/\s*[A-Za-z_]\w*)*)\((.*)\)(?:\s*->.*)?$", re.S)


def standin() -> Any:
    spec = importlib.util.spec_from_file_location("pykd_standin_surface", str(STANDIN))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def used_names() -> Set[str]:
    """``pykd.X`` attributes anywhere in the vtdbg package (``pykd`` is how the code names it)."""
    names: Set[str] = set()
    for path in (ROOT / "vtdbg").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pykd":
                names.add(node.attr)
    return names


def documented_forms(text: str) -> Dict[str, List[List[str]]]:
    """name -> the argument lists of every ``name(args)`` form in backticks on the page."""
    forms: Dict[str, List[List[str]]] = {}
    for span in _SPAN.findall(text):
        match = _FORM.match(" ".join(span.split()))
        if not match:
            continue
        args = [a.strip() for a in match.group(2).split(",") if a.strip()]
        if any("(" in a or "…" in a or "..." in a for a in args):
            continue
        for name in re.split(r"\s*/\s*", match.group(1)):
            if args not in forms.setdefault(name, []):
                forms[name].append(args)
    return forms


def _default(text: str, module: Any) -> Any:
    try:
        return ast.literal_eval(text)
    except ValueError:
        owner, member = text.split(".")
        return getattr(getattr(module, owner), member)


def _is_name(arg: str) -> bool:
    return re.fullmatch(r"[A-Za-z_]\w*", arg) is not None


def _check_name(name: str, fn: Any, forms: List[List[str]], module: Any) -> List[str]:
    """Problems with ``fn`` against the page's forms of ``name``.

    The page mixes signatures (``loadBytes(offset, count, phyAddr=False)``) with calls
    (``loadBytes(pa, n, phyAddr=True)``, ``rdmsr(0xC0000080)``) and bare mentions
    (``rdmsr()``).  So: every form with arguments must bind; a keyword's stand-in default
    must be one of the values the page gives it; with a single form, positional names must
    match and no extra argument may be accepted."""
    problems: List[str] = []
    if any(forms):
        forms = [f for f in forms if f]  # drop bare mentions like `rdmsr()`
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    values: Dict[str, List[Any]] = {}
    for form in forms:
        for arg in form:
            if "=" in arg:
                key, value = (p.strip() for p in arg.split("=", 1))
                values.setdefault(key, []).append(_default(value, module))
    for key, seen in values.items():
        param = sig.parameters.get(key)
        if param is None or param.default is inspect.Parameter.empty:
            problems.append("%s: no keyword %s with a default" % (name, key))
        elif param.default not in seen:
            problems.append("%s: default of %s is %r, the page gives %r" % (name, key, param.default, seen))
    single = len(forms) == 1
    for form in forms:
        positional = [0 for a in form if "=" not in a]
        keywords = {k: v[0] for k, v in values.items() if any(a.startswith(k + "=") for a in form)}
        try:
            sig.bind(*positional, **keywords)
        except TypeError as exc:
            problems.append("%s%s does not bind: %s" % (name, tuple(form), exc))
        if not single:
            continue
        for i, arg in enumerate(a for a in form if "=" not in a):
            if _is_name(arg) and (i >= len(params) or params[i].name != arg):
                problems.append("%s: argument %d is %r, the page says %r"
                                % (name, i, params[i].name if i < len(params) else None, arg))
        try:
            sig.bind(*(positional + [0] * (len(keywords) + 1)))
            problems.append("%s accepts more arguments than the page gives" % name)
        except TypeError:
            pass
    return problems


def test_vtdbg_uses_pykd_and_the_collector_sees_it():
    names = used_names()
    # the backend's bulk read and the WinDbg check must be found, or this test proves nothing
    assert {"loadBytes", "isWindbgExt", "setBp", "rdmsr", "DbgException"} <= names


def test_every_used_pykd_name_is_documented_and_mirrored(shared_reference):
    text = (shared_reference / "pykd-api.md").read_text(encoding="utf-8")
    forms = documented_forms(text)
    module = standin()
    problems: List[str] = []
    for name in sorted(used_names()):
        if not re.search(r"\b%s\b" % re.escape(name), text):
            problems.append("%s is not in pykd-api.md" % name)
            continue
        if not hasattr(module, name):
            problems.append("%s is missing from the stand-in" % name)
            continue
        obj = getattr(module, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue
        if inspect.isclass(obj) and issubclass(obj, int):  # enums: members named on the page
            continue
        if name not in forms:
            problems.append("%s: the page gives no signature" % name)
            continue
        fn = _unbound(obj) if inspect.isclass(obj) else obj
        problems += _check_name(name, fn, forms[name], module)
    assert problems == []


def _unbound(cls: Any) -> Any:
    """A class's constructor as a plain callable (without ``self``) for signature checks."""
    sig = inspect.signature(cls)

    def construct(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("never called")

    construct.__signature__ = sig  # type: ignore[attr-defined]
    return construct


def test_methods_used_on_pykd_objects_exist(shared_reference):
    text = (shared_reference / "pykd-api.md").read_text(encoding="utf-8")
    module = standin()
    for cls, methods in METHODS.items():
        for method in methods:
            assert re.search(r"\b%s\(" % method, text), "%s.%s is not documented" % (cls, method)
            assert callable(getattr(getattr(module, cls), method)), "%s.%s missing from the stand-in" % (cls, method)


def test_the_standin_mirrors_the_shapes_tests_rely_on():
    pykd = standin()
    assert pykd.__version__ == "0.3.4.15"
    assert issubclass(pykd.MemoryException, pykd.DbgException)
    assert issubclass(pykd.TypeException, pykd.SymbolException)
    assert int(pykd.executionStatus.NoDebuggee) == 3 and int(pykd.eventResult.NoChange) == 1
    with pytest.raises(pykd.DbgException, match="not initialized"):
        pykd.loadBytes(0, 1, phyAddr=True)
    sim = pykd._install(pykd.Simulator.from_spec({"memory": [{"pa": 0, "data": b"\x01\x02\x03"}]}))
    assert pykd.loadBytes(0, 3, phyAddr=True) == [1, 2, 3]
    with pytest.raises(TypeError):
        pykd.rdmsr(msrIndex=0x480)  # positional-only, like Boost.Python without names
    with pytest.raises(TypeError):
        pykd.writeBytes(0, (1,), phyAddr=True)  # a tuple is not a list
    with pytest.raises(OverflowError):
        pykd.loadBytes(-1, 1, phyAddr=True)
    with pytest.raises(pykd.MemoryException, match="target physical address"):
        pykd.loadBytes(2, 2, phyAddr=True)
    with pytest.raises(pykd.DbgException, match="already initialized"):
        pykd.initialize()
    # the ownership trap: a breakpoint whose object is dropped is gone at once
    pykd.setBp(0x1000, lambda: True)
    assert pykd.getNumberBreakpoints() == 0
    kept = pykd.setBp(0x1000, lambda: True)
    assert pykd.getNumberBreakpoints() == 1
    kept.remove()
    with pytest.raises(pykd.DbgException, match="detached"):
        kept.remove()
    # handler results: None proceeds, 1 (NoChange) stops a breakpoint, an exception stops
    sim.events = [(0, 0x2000), (0, 0x2000), (0, 0x2000)]
    results = iter([None, 1])
    holder = pykd.setBp(0x2000, lambda: next(results))
    assert pykd.go() == pykd.executionStatus.Break and sim.events == [(0, 0x2000)]
    del holder
    with pytest.raises(TypeError):
        pykd.loadBytes(0, 1, phyAddr=True, extra=1)
    assert not pykd.isWindbgExt()
    pykd._install(None)


def test_forms_parser_reads_combined_and_wrapped_signatures():
    text = "`writeBytes/writeWords/\nwriteDoubles(offset, values, phyAddr=False) -> None` and `reg(name) -> int`"
    forms = documented_forms(text)
    assert forms["writeDoubles"] == [["offset", "values", "phyAddr=False"]] and forms["reg"] == [["name"]]
    assert forms["writeBytes"] == forms["writeDoubles"]
