"""The lake against ClickHouse, per table and hour; ClickHouse repaired from the lake.

The lake is the exact record (one row per Kafka offset, see :mod:`connectors.lake.sink`), so
when an hour's row count or ``sum(cost_usd)`` differ, ClickHouse is brought to the lake's rows:

- rows of the lake that ClickHouse lacks (by ``event_id``) are inserted, with an
  ``insert_deduplication_token`` built from the table, the hour and the inserted ids, so a retried
  repair of the same rows is dropped as a duplicate;
- rows ClickHouse holds more than once are deleted (a synchronous mutation) and inserted again
  once;
- rows ClickHouse holds that the lake does not are counted (``clickhouse_only``), never deleted:
  the lake sink may just be behind, and the hour stays a mismatch until it catches up.

Checking first makes a repair idempotent: an hour that agrees is left alone. Inserts go through
the materialized views like the sink's, so the rollups stay exact for missing rows; deleting
duplicates does not take them out of the per-minute rollups (an AggregatingMergeTree keeps what
its view added), so each check says how many rows were deleted, for such an hour to be traced.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from connectors.batch.lake import EVENT_TIME, clickhouse_rows, event_of, event_table_names, open_table, read_rows, utc
from connectors.clickhouse import get_client
from connectors.clickhouse.migrations import apply_migrations
from connectors.clickhouse.migrations import mutation_target
from connectors.clickhouse.sink import insert_settings
from connectors.kafka.codec import default_codec
from connectors.settings import Settings

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
#: Rows per repair insert.
INSERT_ROWS = 100_000
#: Sums of cost agree when they differ by less than this (float sums in another order).
COST_TOLERANCE = 1e-6
#: The column summed besides the count, in the tables that have it.
COST = "cost_usd"


@dataclass(frozen=True)
class HourCheck:
    """One table's hour in both stores, and what the repair did."""

    table: str
    hour: str
    lake_rows: int
    lake_cost: float
    clickhouse_rows: int
    clickhouse_cost: float
    inserted: int = 0
    deleted: int = 0
    clickhouse_only: int = 0

    @property
    def matches(self) -> bool:
        return (self.lake_rows == self.clickhouse_rows
                and math.isclose(self.lake_cost, self.clickhouse_cost, abs_tol=COST_TOLERANCE))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "matches": self.matches}


class Mismatch(Exception):
    """Hours that still disagree after the repair; ``checks`` holds every check of the call."""

    def __init__(self, message: str, checks: list[HourCheck]) -> None:
        super().__init__(message)
        self.checks = checks


def reconcile(settings: Settings, start: datetime, end: datetime, tables: list[str] | None = None,
              repair: bool = True, progress: Callable[[str], None] = log.info) -> list[HourCheck]:
    """Compare (and with ``repair``, fix) each table's hours in ``[start, end)``; one check per hour
    that has rows in either store, after the repair.

    :raises Mismatch: with ``repair``, when an hour still disagrees afterwards.
    """
    client = get_client(settings)
    apply_migrations(client, settings)
    db = settings.clickhouse_database
    checks = []
    for table in event_table_names(tables):
        lake = _lake_hours(settings, table, start, end)
        house = _clickhouse_hours(client, db, table, start, end)
        for hour in sorted(set(lake) | set(house)):
            check = HourCheck(table, hour.isoformat(), *lake.get(hour, (0, 0.0)), *house.get(hour, (0, 0.0)))
            if not check.matches and repair:
                repaired = _repair(settings, client, table, hour)
                after = _clickhouse_hours(client, db, table, hour, hour + HOUR).get(hour, (0, 0.0))
                check = HourCheck(table, hour.isoformat(), check.lake_rows, check.lake_cost, *after, *repaired)
            progress(f"{table} {hour:%Y-%m-%d %H}h: lake {check.lake_rows} rows ${check.lake_cost:.6f}, "
                     f"ClickHouse {check.clickhouse_rows} rows ${check.clickhouse_cost:.6f}"
                     + (f", repaired: {check.inserted} inserted, {check.deleted} deleted"
                        if check.inserted or check.deleted else "")
                     + (f", {check.clickhouse_only} rows not in the lake" if check.clickhouse_only else "")
                     + ("" if check.matches else "  MISMATCH"))
            checks.append(check)
    wrong = [c for c in checks if not c.matches]
    if wrong and repair:
        raise Mismatch(f"{len(wrong)} table hours still differ after repair: "
                       + ", ".join(f"{c.table} {c.hour}" for c in wrong[:10]), checks)
    return checks


def has_cost(table: str) -> bool:
    """Whether the rows of ``table`` carry ``cost_usd``."""
    return COST in default_codec().arrow_schema(event_of(table)).names


def _lake_hours(settings: Settings, table: str, start: datetime, end: datetime) -> dict[datetime, tuple[int, float]]:
    delta = open_table(settings, table)
    if delta is None:
        return {}
    columns = [EVENT_TIME] + ([COST] if has_cost(table) else [])
    rows = read_rows(delta, start, end, columns)
    if not rows.num_rows:
        return {}
    rows = rows.append_column("hour", pc.floor_temporal(rows[EVENT_TIME], unit="hour"))
    if not has_cost(table):
        rows = rows.append_column(COST, pa.array([0.0] * rows.num_rows))
    grouped = rows.group_by("hour").aggregate([("hour", "count"), (COST, "sum")])
    return {utc(h): (int(n), float(c or 0.0)) for h, n, c in zip(
        grouped["hour"].to_pylist(), grouped["hour_count"].to_pylist(), grouped[f"{COST}_sum"].to_pylist())}


def _clickhouse_hours(
    client: Any, db: str, table: str, start: datetime, end: datetime
) -> dict[datetime, tuple[int, float]]:
    cost = f"sum({COST})" if has_cost(table) else "0"
    result = client.query(
        f"SELECT toStartOfHour(event_time) AS hour, count(), {cost} FROM {db}.{table} "
        "WHERE event_time >= %(start)s AND event_time < %(end)s GROUP BY hour",
        parameters={"start": utc(start), "end": utc(end)},
    )
    return {utc(h): (int(n), float(c)) for h, n, c in result.result_rows}


def _repair(settings: Settings, client: Any, table: str, hour: datetime) -> tuple[int, int, int]:
    """Give ClickHouse each lake row of ``table`` in ``hour`` exactly once; (inserted, deleted,
    rows not in the lake)."""
    db = settings.clickhouse_database
    delta = open_table(settings, table)
    lake_rows = read_rows(delta, hour, hour + HOUR) if delta is not None else None
    lake_ids = set(lake_rows["event_id"].to_pylist()) if lake_rows is not None else set()
    window = {"start": hour, "end": hour + HOUR}
    held = client.query(
        f"SELECT toString(event_id), count() FROM {db}.{table} "
        "WHERE event_time >= %(start)s AND event_time < %(end)s GROUP BY event_id",
        parameters=window,
    ).result_rows
    surplus = sorted(i for i, n in held if n > 1 and i in lake_ids)
    if surplus:
        client.command(
            f"ALTER TABLE {mutation_target(settings, table)} DELETE WHERE event_time >= %(start)s "
            "AND event_time < %(end)s "
            "AND toString(event_id) IN %(ids)s",
            parameters={**window, "ids": surplus}, settings={"mutations_sync": 2},
        )
    present = {i for i, n in held if n == 1 and i in lake_ids}
    inserted = 0
    if lake_rows is not None:
        missing = lake_rows.filter(pc.invert(pc.is_in(lake_rows["event_id"], pa.array(sorted(present), pa.string()))))
        missing = missing.sort_by("event_id")
        for offset in range(0, missing.num_rows, INSERT_ROWS):
            chunk = missing.slice(offset, INSERT_ROWS)
            ids = "\n".join(chunk["event_id"].to_pylist())
            token = f"repair:{table}:{hour:%Y%m%d%H}:{hashlib.sha256(ids.encode()).hexdigest()[:32]}"
            client.insert_arrow(table, clickhouse_rows(table, chunk), database=db,
                                settings={**insert_settings(settings), "insert_deduplication_token": token})
            inserted += chunk.num_rows
    deleted = sum(n for i, n in held if n > 1 and i in lake_ids)
    return inserted, deleted, sum(n for i, n in held if i not in lake_ids)
