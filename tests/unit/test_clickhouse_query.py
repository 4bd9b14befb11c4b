"""format_result: the text ``ezstream sql`` prints, in each format."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timezone
from decimal import Decimal
from uuid import UUID

import pytest

from connectors.clickhouse.query import format_result

COLUMNS = ["provider", "calls", "cost_usd", "minute"]
ROWS = [
    ("anthropic", 1200, 3.25, datetime(2026, 11, 25, 10, 1, tzinfo=timezone.utc)),
    ("openai", 7, None, datetime(2026, 11, 25, 10, 2, 30, 500000)),
]


def test_table_aligns_columns_under_the_header():
    lines = format_result(COLUMNS, ROWS, "table").splitlines()
    assert lines == [
        "provider  | calls | cost_usd | minute",
        "----------+-------+----------+---------------------------",
        "anthropic |  1200 |     3.25 | 2026-11-25T10:01:00+00:00",
        "openai    |     7 |     NULL | 2026-11-25T10:02:30.500000",
    ]


def test_table_keeps_one_line_per_row_and_shows_containers_as_json():
    text = format_result(["note", "details"], [("two\nlines", {"budget_usd": "100"})], "table")
    assert text.splitlines()[2] == "two\\nlines | {\"budget_usd\": \"100\"}"


def test_table_with_no_rows_is_the_header_only():
    assert format_result(["a", "bb"], [], "table").splitlines() == ["a | bb", "--+---"]


def test_csv_has_a_header_and_quotes_what_needs_it():
    text = format_result(["name", "n", "when"], [("a, b", 1, date(2026, 11, 25)), ('say "hi"', None, None)], "csv")
    assert text == 'name,n,when\n"a, b",1,2026-11-25\n"say ""hi""",,\n'
    assert list(csv.reader(io.StringIO(text)))[1] == ["a, b", "1", "2026-11-25"]


def test_json_is_a_list_of_objects_with_iso_times():
    objects = json.loads(format_result(COLUMNS, ROWS, "json"))
    assert objects == [
        {"provider": "anthropic", "calls": 1200, "cost_usd": 3.25, "minute": "2026-11-25T10:01:00+00:00"},
        {"provider": "openai", "calls": 7, "cost_usd": None, "minute": "2026-11-25T10:02:30.500000"},
    ]


def test_json_keeps_exact_and_odd_values_as_text():
    row = (Decimal("0.10"), UUID(int=1), float("nan"), [1, 2], {"k": datetime(2026, 1, 1)}, b"\x00ab", True)
    columns = ["d", "u", "nan", "arr", "map", "raw", "flag"]
    assert json.loads(format_result(columns, [row], "json")) == [{
        "d": "0.10", "u": "00000000-0000-0000-0000-000000000001", "nan": None, "arr": [1, 2],
        "map": {"k": "2026-01-01T00:00:00"}, "raw": "\x00ab", "flag": True,
    }]


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="xml"):
        format_result(["a"], [(1,)], "xml")  # type: ignore[arg-type]
