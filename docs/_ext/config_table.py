"""``{config-table} TASK``: every config key of a task's family with its type, default and valid values, read from
the family's ``DEFAULTS`` and ``SCHEMA`` (``resnet_jax.configs``), so the table cannot drift from the checks."""

from __future__ import annotations

import json

from docutils import nodes
from docutils.parsers.rst import Directive

from resnet_jax import configs
from resnet_jax.configs import base

INVALID = object()
"""A value no checker accepts: each checker then answers with the phrase that says what is valid."""
TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "mapping",
         type(None): "null by default"}


def rows(task: str) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, valid values)`` per key of ``task``'s schema, in the schema's order."""
    family = configs.family(task)
    defaults = base.flatten(family.DEFAULTS)
    return [(key, TYPES.get(type(defaults.get(key)), type(defaults.get(key)).__name__),
             json.dumps(defaults.get(key)), checker(INVALID) or "any value")
            for key, checker in family.SCHEMA.items()]


def _table(header: list[str], body: list[tuple[str, ...]]) -> nodes.table:
    group = nodes.tgroup(cols=len(header))
    group += [nodes.colspec(colwidth=1) for _ in header]
    group += nodes.thead("", _row(header, literal=False))
    group += nodes.tbody("", *[_row(r, literal=True) for r in body])
    return nodes.table("", group)


def _row(cells, *, literal: bool) -> nodes.row:
    row = nodes.row()
    for i, text in enumerate(cells):
        inner = nodes.literal(text=text) if literal and i in (0, 2) else nodes.Text(text)
        row += nodes.entry("", nodes.paragraph("", "", inner))
    return row


class ConfigTable(Directive):
    """The config keys of the task named by the directive's argument."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        return [_table(["key", "type", "default", "valid values"], rows(self.arguments[0]))]


def setup(app):
    app.add_directive("config-table", ConfigTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
