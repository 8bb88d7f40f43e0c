"""A small self-contained HTML report of a VM-exit trace (`vtdbg stats FILE --html OUT`).

One file, no external assets, no script: inline CSS, the statistics tables, a bar chart
of exits per reason and a timeline (exit time against reason, one colour per CPU) drawn
as inline SVG.  Every piece of text from the trace is HTML-escaped.
"""
from __future__ import annotations

import html
from typing import Any, Dict, List, Optional, Sequence

from vtdbg.core.exit_stats import format_handler, timeline

#: CPU colours (colour-blind-friendly palette, cycled)
_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
.meta{color:#555;font-size:.9em}
svg text{font-family:system-ui,sans-serif;font-size:11px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else ("%.*f" % (digits, value))


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join('<th class="l">%s</th>' % _e(c) if i < left else "<th>%s</th>" % _e(c)
                   for i, c in enumerate(columns))
    body = "".join("<tr>%s</tr>" % "".join('<td class="l">%s</td>' % _e(v) if i < left else "<td>%s</td>" % _e(v)
                                           for i, v in enumerate(row)) for row in rows)
    return "<table><tr>%s</tr>%s</table>" % (head, body)


def _bars(rows: List[Dict[str, Any]]) -> str:
    """Horizontal bars: one per reason."""
    if not rows:
        return ""
    label_width, bar_width, height = 230, 420, 18
    top = max(r["count"] for r in rows) or 1
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" aria-label="exits per reason">'
             % (label_width + bar_width + 60, height * len(rows) + 4)]
    for i, row in enumerate(rows):
        y = i * height + 2
        width = max(1, round(bar_width * row["count"] / top))
        name = row["reason_name"] + (" (entry failure)" if row.get("entry_failure") else "")
        parts.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (label_width - 6, y + 13, _e(name)))
        parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="#0072b2"><title>%s: %d</title></rect>'
                     % (label_width, y + 2, width, height - 5, _e(name), row["count"]))
        parts.append('<text x="%d" y="%d">%d</text>' % (label_width + width + 4, y + 13, row["count"]))
    parts.append("</svg>")
    return "".join(parts)


def _timeline(records: Sequence[Dict[str, Any]]) -> str:
    """Exit time (x) against reason (one lane each), dots coloured by CPU."""
    points = timeline(records)
    if not points:
        return ""
    lanes: List[str] = []
    for point in points:
        name = point["reason_name"] + ("*" if point["entry_failure"] else "")
        if name not in lanes:
            lanes.append(name)
    label_width, plot_width, lane = 230, 640, 16
    left, right = min(p["x"] for p in points), max(p["x"] for p in points)
    span = (right - left) or 1.0
    height = lane * len(lanes) + 36
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" aria-label="exit timeline">'
             % (label_width + plot_width + 20, height)]
    for i, name in enumerate(lanes):
        y = i * lane + lane // 2 + 2
        parts.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (label_width - 6, y + 4, _e(name)))
        parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#eee"/>'
                     % (label_width, y, label_width + plot_width, y))
    for point in points:
        name = point["reason_name"] + ("*" if point["entry_failure"] else "")
        x = label_width + plot_width * (point["x"] - left) / span
        y = lanes.index(name) * lane + lane // 2 + 2
        colour = _COLOURS[point["cpu"] % len(_COLOURS)]
        parts.append('<circle cx="%.1f" cy="%d" r="3" fill="%s"><title>#%d %s cpu %d at %s</title></circle>'
                     % (x, y, colour, point["index"], _e(point["reason_name"]), point["cpu"], _num(point["x"], 6)))
    axis_y = lane * len(lanes) + 12
    parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>'
                 % (label_width, axis_y - 6, label_width + plot_width, axis_y - 6))
    unit = "s" if any(r.get("time") is not None for r in records) else "exit #"
    parts.append('<text x="%d" y="%d">%s</text>' % (label_width, axis_y + 8, _e("%s %s" % (_num(left, 3), unit))))
    parts.append('<text x="%d" y="%d" text-anchor="end">%s</text>'
                 % (label_width + plot_width, axis_y + 8, _e("%s %s" % (_num(right, 3), unit))))
    cpus = sorted({p["cpu"] for p in points})
    for i, cpu in enumerate(cpus):
        x = label_width + 120 + i * 70
        parts.append('<circle cx="%d" cy="%d" r="4" fill="%s"/><text x="%d" y="%d">cpu %d</text>'
                     % (x, axis_y + 4, _COLOURS[cpu % len(_COLOURS)], x + 7, axis_y + 8, cpu))
    parts.append("</svg>")
    return "".join(parts)


def render_html(stats: Dict[str, Any], records: Sequence[Dict[str, Any]], title: str = "vtdbg VM-exit trace",
                source: str = "") -> str:
    """The whole report as one HTML document."""
    def rows_for(items: List[Dict[str, Any]], with_cpu: bool) -> List[List[Any]]:
        out = []
        for row in items:
            low, high, avg = format_handler(row.get("handler"))
            cells: List[Any] = [row["reason_name"] + (" (entry failure)" if row.get("entry_failure") else "")]
            if with_cpu:
                cells.append(row["cpu"])
            cells += [row["count"], "%.2f%%" % row["percent"], _num(row.get("rate_per_second")), low, high, avg]
            out.append(cells)
        return out

    columns = ["VM exit", "samples", "samples %", "rate/s", "min time", "max time", "avg time"]
    meta = "%d exits, %s s, CPUs %s" % (stats.get("exits", 0), _num(stats.get("seconds"), 3),
                                         ", ".join(str(c) for c in stats.get("cpus", [])) or "-")
    body = [
        "<h1>%s</h1>" % _e(title),
        '<p class="meta">%s%s</p>' % (_e(meta), (" &middot; " + _e(source)) if source else ""),
        "<h2>Exits per reason</h2>", _bars(stats.get("by_reason") or []),
        _table(columns, rows_for(stats.get("by_reason") or [], False)),
        "<h2>Per reason and CPU</h2>",
        _table(columns[:1] + ["cpu"] + columns[1:], rows_for(stats.get("by_reason_cpu") or [], True)),
        "<h2>Timeline</h2>", _timeline(records),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>%s</title><style>%s</style>"
            "</head><body>%s</body></html>\n" % (_e(title), _CSS, "\n".join(body)))
