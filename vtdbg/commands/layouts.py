"""`vtdbg layouts` and `vtdbg layout NAME`: the known in-memory VMCS layouts."""
from __future__ import annotations

import argparse

from vtdbg.commands.registry import Context, arguments, command
from vtdbg.commands.result import Heading, KeyValues, Result, Table, Text
from vtdbg.layouts.registry import ALIASES, all_layouts, get_layout
from vtdbg.target.base import Capability


def _ids(ids: tuple) -> str:
    return ", ".join("0x%x" % r for r in ids)


def _layouts_args(parser: argparse.ArgumentParser) -> None:
    from vtdbg.commands.discover import _args as discover_args

    parser.add_argument("action", nargs="?", choices=["discover"],
                        help="discover: measure the live CPU's layout (same as `vtdbg discover-layout`)")
    discover_args(parser)


@command("layouts", help="list the known in-memory VMCS layouts (or `layouts discover` the CPU's own)",
         examples=["vtdbg layouts", "vtdbg layouts --json",
                   "vtdbg --target bochs:lab.bxrc layouts discover --scratch 0x1F0000 --save"])
@arguments(_layouts_args)
def layouts_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """Every built-in and user layout with its revision ids and provenance."""
    if args.action == "discover":
        from vtdbg.commands.discover import discover_cmd

        ctx.target.require(Capability.PHYS_READ | Capability.WRITE | Capability.LIVE, "`layouts discover`")
        return discover_cmd(ctx, args)
    layouts, warnings = all_layouts()
    data = [{"name": l.name, "revision_ids": list(l.revision_ids), "source": l.source, "kind": l.kind,
             "auto": l.auto, "fields": len(l.fields), "builtin": l.builtin, "title": l.title} for l in layouts]
    rows = [[l.name, _ids(l.revision_ids), l.kind + ("" if l.builtin else " (user)"),
             str(len(l.fields)), "yes" if l.auto else "no", l.title] for l in layouts]
    result = Result(data, warnings=warnings)
    result.add(Table(["layout", "revision ids", "kind", "fields", "auto", "description"], rows))
    result.add(Text("aliases: " + ", ".join("%s=%s" % kv for kv in sorted(ALIASES.items()))))
    return result


def _layout_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="layout name or alias (see `vtdbg layouts`)")


@command("layout", help="show one layout: every field's offset, size and stored form",
         examples=["vtdbg layout bochs", "vtdbg layout kvm_vmcs12 --json"])
@arguments(_layout_args)
def layout_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    """The fields of one layout, in encoding order."""
    from vtdbg.arch.fields import field_by_encoding

    layout = get_layout(args.name)
    fields = sorted(layout.fields, key=lambda f: (f.offset, f.encoding))
    data = {"name": layout.name, "title": layout.title, "revision_ids": list(layout.revision_ids),
            "source": layout.source, "kind": layout.kind, "auto": layout.auto, "coherence": layout.coherence,
            "header": layout.header, "fields": [f.to_json() for f in sorted(layout.fields, key=lambda f: f.encoding)]}
    rows = []
    for item in fields:
        known = field_by_encoding(item.encoding)
        rows.append(["0x%03x" % item.offset, str(item.size), "0x%04x" % item.encoding,
                     known.name if known else item.name, item.transform or "",
                     "" if item.certain else "uncertain"])
    result = Result(data)
    result.add(KeyValues([["layout", layout.name], ["title", layout.title], ["revision ids", _ids(layout.revision_ids)],
                          ["source", layout.source], ["trust", layout.coherence],
                          ["auto", "yes" if layout.auto else "no (only with --layout %s)" % layout.name]]))
    result.add(Heading("%d fields" % len(fields)))
    result.add(Table(["offset", "size", "encoding", "field", "stored as", "note"], rows))
    return result
