"""Statistics over traced VM exits, in the manner of ``perf kvm stat``.

Input is exit records as JSON objects (a `vtdbg trace --log` file read back, or the
records of a running trace).  Output, per exit reason and per (reason, CPU): the count,
its share, the rate, and -- where the trace measured it -- the time between the exit and
the resume of the guest (``handler_seconds`` wall clock or ``handler_ticks``, Bochs's
instruction counter), with min/avg/max/stddev.  Also a text histogram and the points of a
timeline for the HTML report.  Pure data in, data out: nothing here reads a target.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from vtdbg.arch.exit_reasons import exit_reason_name

#: widest histogram bar, in characters
BAR_WIDTH = 40


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _spread(samples: Sequence[float]) -> Optional[Dict[str, float]]:
    """min/avg/max/stddev (population) of ``samples``; None when empty."""
    if not samples:
        return None
    mean = sum(samples) / len(samples)
    variance = sum((s - mean) ** 2 for s in samples) / len(samples)
    return {"samples": len(samples), "min": min(samples), "avg": mean, "max": max(samples),
            "stddev": math.sqrt(variance), "total": sum(samples)}


def _handler(records: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Handler-time statistics, in ticks when every measured record has ticks (exact and
    free of debugger overhead), else in seconds."""
    ticks = [t for t in (_number(r.get("handler_ticks")) for r in records) if t is not None]
    if ticks:
        spread = _spread(ticks)
        assert spread is not None
        return dict(spread, unit="ticks")
    seconds = [s for s in (_number(r.get("handler_seconds")) for r in records) if s is not None]
    spread = _spread(seconds)
    return dict(spread, unit="seconds") if spread is not None else None


def _span(records: Sequence[Dict[str, Any]], key: str) -> Optional[float]:
    values = [v for v in (_number(r.get(key)) for r in records) if v is not None]
    if len(values) < 2:
        return None
    return max(values) - min(values)


def _row(records: Sequence[Dict[str, Any]], total: int, seconds: Optional[float],
         tick_span: Optional[float]) -> Dict[str, Any]:
    count = len(records)
    return {
        "count": count,
        "percent": round(100.0 * count / total, 3) if total else 0.0,
        "rate_per_second": round(count / seconds, 3) if seconds else None,
        "rate_per_mtick": round(count * 1e6 / tick_span, 6) if tick_span else None,
        "handler": _handler(records),
    }


def exit_stats(records: Iterable[Dict[str, Any]], seconds: Optional[float] = None) -> Dict[str, Any]:
    """Statistics of ``records`` (exit JSON objects).  ``seconds``: the trace's duration
    (else the span of the records' ``time``); rates are per second of that, and per
    million ticks when the records carry Bochs ticks."""
    items = [r for r in records if isinstance(r, dict) and isinstance(r.get("exit_reason"), int)]
    total = len(items)
    duration = seconds if seconds else _span(items, "time")
    tick_span = _span(items, "ticks")
    reasons: Dict[Tuple[int, bool], List[Dict[str, Any]]] = {}
    pairs: Dict[Tuple[int, bool, int], List[Dict[str, Any]]] = {}
    cpus: Dict[int, List[Dict[str, Any]]] = {}
    for record in items:
        reason = int(record["exit_reason"])
        failure = bool(record.get("entry_failure"))
        cpu = int(record.get("cpu") or 0)
        reasons.setdefault((reason, failure), []).append(record)
        pairs.setdefault((reason, failure, cpu), []).append(record)
        cpus.setdefault(cpu, []).append(record)

    def named(reason: int, failure: bool) -> Dict[str, Any]:
        return {"exit_reason": reason, "reason_name": exit_reason_name(reason), "entry_failure": failure}

    by_reason = [dict(named(reason, failure), **_row(group, total, duration, tick_span))
                 for (reason, failure), group in reasons.items()]
    by_reason.sort(key=lambda row: (-row["count"], row["exit_reason"]))
    by_pair = [dict(named(reason, failure), cpu=cpu, **_row(group, total, duration, tick_span))
               for (reason, failure, cpu), group in pairs.items()]
    by_pair.sort(key=lambda row: (-row["count"], row["exit_reason"], row["cpu"]))
    by_cpu = [dict(cpu=cpu, **_row(group, total, duration, tick_span)) for cpu, group in sorted(cpus.items())]
    return {
        "exits": total,
        "seconds": duration,
        "ticks": tick_span,
        "cpus": sorted(cpus),
        "handler": _handler(items),
        "by_reason": by_reason,
        "by_reason_cpu": by_pair,
        "by_cpu": by_cpu,
    }


def histogram(stats: Dict[str, Any], width: int = BAR_WIDTH) -> List[str]:
    """One text bar per exit reason, longest = ``width`` characters of ``#``."""
    rows = stats.get("by_reason") or []
    if not rows:
        return []
    top = max(row["count"] for row in rows) or 1
    label = max(len(_label(row)) for row in rows)
    lines = []
    for row in rows:
        bar = "#" * max(1, int(round(width * row["count"] / top)))
        lines.append("%-*s  %-*s %d" % (label, _label(row), width, bar, row["count"]))
    return lines


def _label(row: Dict[str, Any]) -> str:
    return row["reason_name"] + (" (entry failure)" if row.get("entry_failure") else "")


def timeline(records: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Points for a timeline chart: ``x`` is the exit's time (seconds since the trace
    began), or its index when the trace has no times; ``reason``, ``cpu``."""
    points = []
    for position, record in enumerate(r for r in records if isinstance(r.get("exit_reason"), int)):
        moment = _number(record.get("time"))
        points.append({"x": moment if moment is not None else float(position), "index": position,
                       "exit_reason": int(record["exit_reason"]), "reason_name": exit_reason_name(
                           int(record["exit_reason"])), "cpu": int(record.get("cpu") or 0),
                       "entry_failure": bool(record.get("entry_failure"))})
    return points


def format_handler(handler: Optional[Dict[str, Any]]) -> Tuple[str, str, str]:
    """(min, max, "avg +- stddev") text for a handler-time object ('-' when unmeasured)."""
    if not handler:
        return "-", "-", "-"
    if handler.get("unit") == "ticks":
        def fmt(value: float) -> str:
            return "%dt" % round(value)
    else:
        def fmt(value: float) -> str:
            return "%.1fus" % (value * 1e6)
    return fmt(handler["min"]), fmt(handler["max"]), "%s +- %s" % (fmt(handler["avg"]), fmt(handler["stddev"]))
