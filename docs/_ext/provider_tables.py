"""``.. connection-extras::``: the table of a ``dashscope`` connection's Extra fields.

Built at documentation time from the one table the hook parses the connection with
(``airflow_provider_aitryon.connection``) and the descriptions the connection form shows, so the
page, the form and the code cannot disagree.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _rows() -> list[tuple[str, str, str, str]]:
    from airflow_provider_aitryon import connection as c

    described: dict[str, str] = c.EXTRA_DESCRIPTIONS
    rows = []
    for name in c.EXTRA_TEXT_FIELDS:
        rows.append((name, "text", "", described[name]))
    for name, (kind, default, minimum) in c.EXTRA_FIELDS.items():
        what = "whole number" if kind is int else "number"
        rows.append((name, f"{what}, at least {minimum:g}", f"{default:g}", described[name]))
    for name, flag in c.EXTRA_BOOL_FIELDS.items():
        rows.append((name, "true / false", "true" if flag else "false", described[name]))
    for name in c.EXTRA_AMOUNT_FIELDS:
        rows.append((name, "amount in CNY, at least 0", "", described[name]))
    missing = set(described) - {row[0] for row in rows}
    if missing:
        raise ValueError(f"EXTRA_DESCRIPTIONS names fields the connection does not read: {sorted(missing)}")
    return rows


def _cell(*children: nodes.Node) -> nodes.entry:
    return nodes.entry("", nodes.paragraph("", "", *children))


def _table(header: list[str], rows: list[list[nodes.Node]], widths: list[int]) -> nodes.table:
    group = nodes.tgroup(cols=len(header))
    group += [nodes.colspec(colwidth=w) for w in widths]
    head = nodes.thead("", nodes.row("", *[_cell(nodes.Text(h)) for h in header]))
    body = nodes.tbody("", *[nodes.row("", *[_cell(c) for c in row]) for row in rows])
    group += [head, body]
    return nodes.table("", group)


class ConnectionExtras(SphinxDirective):
    """A table: field, value, default, meaning (built as nodes: it works in reST and MyST pages)."""

    def run(self) -> list[nodes.Node]:
        try:
            rows = _rows()
        except Exception as exc:
            raise self.error(f"connection-extras: {exc}") from None
        body = [
            [nodes.literal(name, name), nodes.Text(kind), nodes.Text(default or "—"), nodes.Text(meaning)]
            for name, kind, default, meaning in rows
        ]
        return [_table(["field", "value", "default", "meaning"], body, [18, 18, 8, 56])]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("connection-extras", ConnectionExtras)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
