"""Run a SQL query on ClickHouse and format its result as text: the core of ``ezstream sql``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Literal

#: Output formats of :func:`format_result`.
Format = Literal["table", "csv", "json"]
FORMATS: tuple[str, ...] = ("table", "csv", "json")


def run_query(client: Any, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` and return its column names and rows.

    :param client: a clickhouse-connect client (see :func:`connectors.clickhouse.get_client`).
    :raises clickhouse_connect.driver.exceptions.ClickHouseError: the query failed.
    """
    result = client.query(sql)
    return list(result.column_names), [tuple(row) for row in result.result_rows]


def format_result(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: Format = "table") -> str:
    """The result as text.

    - ``table``: aligned columns under a header (numbers right-aligned), NULL for nulls;
    - ``csv``: a header line, then one line per row (empty field for nulls);
    - ``json``: a list of objects, one per row; dates and times in ISO 8601, decimals and UUIDs
      as strings, non-finite floats null.

    Dates and times are ISO 8601 in every format; arrays and maps are JSON in table and csv cells.

    :raises ValueError: ``fmt`` is none of :data:`FORMATS`.
    """
    if fmt == "table":
        return _table(columns, rows)
    if fmt == "csv":
        return _csv(columns, rows)
    if fmt == "json":
        objects = [{name: _json_value(value) for name, value in zip(columns, row)} for row in rows]
        return json.dumps(objects, indent=2, ensure_ascii=False)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_table_text(value) for value in row] for row in rows]
    widths = [len(name) for name in columns]
    for line in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, line)]
    numeric = [
        bool(rows) and all(_is_number(row[i]) or row[i] is None for row in rows) for i in range(len(columns))
    ]

    def render(line: Sequence[str]) -> str:
        parts = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(line, widths, numeric)]
        return " | ".join(parts).rstrip()

    out = [render(columns), "-+-".join("-" * width for width in widths)]
    out.extend(render(line) for line in cells)
    return "\n".join(out)


def _csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if value is None else _text(value) for value in row])
    return buffer.getvalue()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def _table_text(value: Any) -> str:
    if value is None:
        return "NULL"
    # A line break inside a cell would break the alignment of every column after it.
    return _text(value).replace("\r", "\\r").replace("\n", "\\n")


def _text(value: Any) -> str:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_json_value(value), ensure_ascii=False)
    return str(value)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    # Decimals stay exact as text; UUIDs, IP addresses, dates and bytes are text anyway.
    return _text(value)
