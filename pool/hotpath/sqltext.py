"""Statement text: placeholders laid out once per statement, values laid out per execution.

Statement texts depend only on the shape of a request (which steps it needs), so each is built once
and kept; an execution only lays out its values (`Sql.params`). Values go over the wire as JSON
(a batch's rows) or as array literals, which are cheaper to pass than lists psycopg would adapt
element by element.
"""

import re
from decimal import Decimal

import orjson


class Sql:
    """A statement's text with positional placeholders, built once, and the order its values go in.

    `value(name)` writes a placeholder for a value each execution supplies by name; `fragment(f)`
    writes a compiled rule fragment, whose own values are constants. Both write `%s` (as Django
    compiles the fragments); `finish(text)` turns them into PostgreSQL's own, $1, $2… (`pg`, for
    pool.hotpath.db's raw cursors). `params(values)` lays one execution's values out in placeholder
    order.
    """

    def __init__(self):
        self._slots: list[tuple[bool, object]] = []  # (is a name, name or constant)
        self.pg = ""

    def finish(self, text: str) -> None:
        self.pg = _dollar_placeholders(text)

    def value(self, name: str) -> str:
        self._slots.append((True, name))
        return "%s"

    def fragment(self, fragment: tuple[str, tuple]) -> str:
        text, constants = fragment
        self._slots.extend((False, c) for c in constants)
        return text

    def params(self, values: dict) -> list:
        return [values[slot] if named else slot for named, slot in self._slots]


def _dollar_placeholders(sql: str) -> str:
    """`%s` placeholders as $1, $2… in order (a statement here has no literal `%`)."""
    counter = iter(range(1, sql.count("%s") + 1))
    return re.sub(r"%s", lambda _: f"${next(counter)}", sql)


def _json_value(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def pg_array(values) -> str:
    """A PostgreSQL array literal of numbers, dates or plain words (cast in the statement), in order:
    cheaper to pass than a list psycopg would adapt element by element."""
    items = sorted(str(v) for v in values)
    assert all(item.replace("_", "").replace("-", "").isalnum() for item in items)
    return "{" + ",".join(items) + "}"


def json_rows(rows: list[dict]) -> str:
    """Rows as JSON for json_to_recordset (dates and times in ISO 8601, decimals as strings)."""
    return orjson.dumps(rows, default=_json_value).decode()
