"""The lake against ClickHouse, per table and hour; ClickHouse repaired from the lake.

The lake is the exact record (one row per Kafka offset, see :mod:`connectors.lake.sink`), so
when an hour's row count or cost differ, ClickHouse is brought to the lake's rows:

- rows of the lake that ClickHouse lacks (by ``event_id``) are inserted, with an
  ``insert_deduplication_token`` built from the table, the hour and the inserted ids, so a retried
  repair of the same rows is dropped as a duplicate;
- rows ClickHouse holds more than once are deleted (a synchronous mutation) and inserted again
  once;
- rows ClickHouse holds that the lake does not are counted (``clickhouse_only``), never deleted:
  the lake sink may just be behind, and the hour stays a mismatch until it catches up.

An hour's cost is compared as the sum of its finite ``cost_usd`` values and the count of the
others (NaN, ±inf): one NaN makes a plain sum NaN on both sides, and NaN never equals NaN.

Some hours are not repaired, since no insert can make them agree; each still gets a check, whose
:attr:`HourCheck.status` says why:

- ``skipped``: the hour is older than what both stores keep for the run's day
  (:func:`connectors.batch.retention.kept_by_both`), or than what ClickHouse's TTL keeps by the
  clock today, whatever day the run covers: the retention of one store deletes it, and
  ClickHouse's TTL drops such rows once they are inserted (at its next merge, so an insert would
  be counted for a while and then go);
- ``unstorable``: the hour lies outside the event times ClickHouse keeps (its TTL converts
  ``event_time`` to a 32-bit ``DateTime``, see :mod:`connectors.validation`); inserted, such a row
  is dropped at once or kept by a TTL that went wrong, so the lake's rows are only counted.

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
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from connectors.batch.lake import EVENT_TIME, clickhouse_rows, event_of, event_table_names, open_table, read_rows, utc
from connectors.batch.retention import clickhouse_cutoff, kept_by_both
from connectors.clickhouse import get_client
from connectors.clickhouse.migrations import apply_migrations
from connectors.clickhouse.migrations import mutation_target
from connectors.clickhouse.sink import insert_settings
from connectors.kafka.codec import default_codec
from connectors.settings import Settings
from connectors.validation import END_TIME_MS, MIN_TIME_MS

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
#: Rows per repair insert.
INSERT_ROWS = 100_000
#: Sums of cost agree when they differ by less than this (float sums in another order).
COST_TOLERANCE = 1e-6
#: The column summed besides the count, in the tables that have it.
COST = "cost_usd"
#: The event times ClickHouse keeps, ``[first, end)``: the range of the ``DateTime`` its TTL reads.
CLICKHOUSE_TIMES = (datetime.fromtimestamp(MIN_TIME_MS / 1000, timezone.utc),
                    datetime.fromtimestamp(END_TIME_MS / 1000, timezone.utc))
#: Query settings that let ``toStartOfHour`` return a ``DateTime64``: a ``DateTime`` would fold
#: hours outside :data:`CLICKHOUSE_TIMES` into its first or last hour.
HOURS_OF_ANY_TIME = {"enable_extended_results_for_datetime_functions": 1}


class Tally(NamedTuple):
    """One store's rows of an hour: how many, the sum of their finite costs, how many costs are
    NaN or infinite."""

    rows: int = 0
    cost: float = 0.0
    nonfinite: int = 0


@dataclass(frozen=True)
class HourCheck:
    """One table's hour in both stores, and what the repair did.

    ``lake_cost`` and ``clickhouse_cost`` sum the finite costs; ``lake_nonfinite`` and
    ``clickhouse_nonfinite`` count the NaN and infinite ones. ``unstorable`` counts the lake's rows
    of an hour outside :data:`CLICKHOUSE_TIMES`; ``skipped`` marks an hour before the retention
    cut-off. Neither kind of hour is repaired (see :attr:`status`).
    """

    table: str
    hour: str
    lake_rows: int
    lake_cost: float
    clickhouse_rows: int
    clickhouse_cost: float
    inserted: int = 0
    deleted: int = 0
    clickhouse_only: int = 0
    lake_nonfinite: int = 0
    clickhouse_nonfinite: int = 0
    unstorable: int = 0
    skipped: bool = False

    @property
    def matches(self) -> bool:
        """Whether both stores hold the same number of rows and the same costs."""
        return (self.lake_rows == self.clickhouse_rows
                and self.lake_nonfinite == self.clickhouse_nonfinite
                and math.isclose(self.lake_cost, self.clickhouse_cost, abs_tol=COST_TOLERANCE))

    @property
    def status(self) -> str:
        """``skipped`` (before the retention cut-off, not compared), ``unstorable`` (outside the
        event times ClickHouse keeps), else ``matches``, ``repaired`` (matches after a repair) or
        ``mismatch``; only a mismatch fails a repairing run."""
        if self.skipped:
            return "skipped"
        if self.unstorable:
            return "unstorable"
        if not self.matches:
            return "mismatch"
        return "repaired" if self.inserted or self.deleted else "matches"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "matches": self.matches, "status": self.status}


class Mismatch(Exception):
    """Hours that still disagree after the repair; ``checks`` holds every check of the call."""

    def __init__(self, message: str, checks: list[HourCheck]) -> None:
        super().__init__(message)
        self.checks = checks


def reconcile(settings: Settings, start: datetime, end: datetime, tables: list[str] | None = None,
              repair: bool = True, progress: Callable[[str], None] = log.info,
              day: date | None = None) -> list[HourCheck]:
    """Compare (and with ``repair``, fix) each table's hours in ``[start, end)``; one check per hour
    that has rows in either store, after the repair.

    ``day`` is the day the run covers, from which the retention cut-off is counted; by default the
    last date of ``[start, end)``. ClickHouse's TTL, on the clock, may cut later: hours before
    either cut-off are checked as ``skipped``, never repaired.

    :raises Mismatch: with ``repair``, when an hour still disagrees afterwards.
    """
    client = get_client(settings)
    apply_migrations(client, settings)
    db = settings.clickhouse_database
    # ClickHouse's TTL runs on the clock: a run for an old day still cannot keep what it drops.
    kept = max(kept_by_both(settings, day or (utc(end) - timedelta(microseconds=1)).date()),
               clickhouse_cutoff(settings, datetime.now(timezone.utc).date()))
    checks = []
    for table in event_table_names(tables):
        lake = _lake_hours(settings, table, start, end)
        house = _clickhouse_hours(client, db, table, start, end)
        for hour in sorted(set(lake) | set(house)):
            ours, theirs = lake.get(hour, Tally()), house.get(hour, Tally())
            check = HourCheck(table, hour.isoformat(), ours.rows, ours.cost, theirs.rows, theirs.cost,
                              lake_nonfinite=ours.nonfinite, clickhouse_nonfinite=theirs.nonfinite,
                              unstorable=0 if _storable(hour) else ours.rows, skipped=hour < kept)
            if check.status == "mismatch" and repair:
                inserted, deleted, clickhouse_only = _repair(settings, client, table, hour)
                after = _clickhouse_hours(client, db, table, hour, hour + HOUR).get(hour, Tally())
                check = replace(check, clickhouse_rows=after.rows, clickhouse_cost=after.cost,
                                clickhouse_nonfinite=after.nonfinite, inserted=inserted, deleted=deleted,
                                clickhouse_only=clickhouse_only)
            progress(_describe(check, hour, kept))
            checks.append(check)
    wrong = [c for c in checks if c.status == "mismatch"]
    if wrong and repair:
        raise Mismatch(f"{len(wrong)} table hours still differ after repair: "
                       + ", ".join(f"{c.table} {c.hour}" for c in wrong[:10]), checks)
    return checks


def has_cost(table: str) -> bool:
    """Whether the rows of ``table`` carry ``cost_usd``."""
    return COST in default_codec().arrow_schema(event_of(table)).names


def _storable(hour: datetime) -> bool:
    first, end = CLICKHOUSE_TIMES
    return first <= hour and hour + HOUR <= end


def _describe(check: HourCheck, hour: datetime, kept: datetime) -> str:
    def side(rows: int, cost: float, nonfinite: int) -> str:
        return f"{rows} rows ${cost:.6f}" + (f" (+{nonfinite} NaN/inf costs)" if nonfinite else "")

    first, end = CLICKHOUSE_TIMES
    return (f"{check.table} {hour:%Y-%m-%d %H}h: lake {side(check.lake_rows, check.lake_cost, check.lake_nonfinite)}, "
            f"ClickHouse {side(check.clickhouse_rows, check.clickhouse_cost, check.clickhouse_nonfinite)}"
            + (f", repaired: {check.inserted} inserted, {check.deleted} deleted"
               if check.inserted or check.deleted else "")
            + (f", {check.clickhouse_only} rows not in the lake" if check.clickhouse_only else "")
            + {"skipped": f"  SKIPPED: before the retention cut-off {kept:%Y-%m-%d}",
               "unstorable": f"  UNSTORABLE: {check.unstorable} lake rows outside the event times ClickHouse keeps "
                             f"({first:%Y-%m-%d} .. {end:%Y-%m-%d %H:%M:%S})",
               "mismatch": "  MISMATCH"}.get(check.status, ""))


def _lake_hours(settings: Settings, table: str, start: datetime, end: datetime) -> dict[datetime, Tally]:
    delta = open_table(settings, table)
    if delta is None:
        return {}
    columns = [EVENT_TIME] + ([COST] if has_cost(table) else [])
    rows = read_rows(delta, start, end, columns)
    if not rows.num_rows:
        return {}
    hours = pa.table({"hour": pc.floor_temporal(rows[EVENT_TIME], unit="hour")})
    if has_cost(table):
        finite = pc.fill_null(pc.is_finite(rows[COST]), False)
        hours = hours.append_column(COST, pc.if_else(finite, rows[COST], 0.0))
        nonfinite = pc.and_(pc.invert(finite), pc.is_valid(rows[COST]))
        hours = hours.append_column("nonfinite", pc.cast(nonfinite, pa.int64()))
    else:
        hours = hours.append_column(COST, pa.array([0.0] * rows.num_rows))
        hours = hours.append_column("nonfinite", pa.array([0] * rows.num_rows, pa.int64()))
    grouped = hours.group_by("hour").aggregate([("hour", "count"), (COST, "sum"), ("nonfinite", "sum")])
    return {utc(h): Tally(int(n), float(c or 0.0), int(x or 0)) for h, n, c, x in zip(
        grouped["hour"].to_pylist(), grouped["hour_count"].to_pylist(), grouped[f"{COST}_sum"].to_pylist(),
        grouped["nonfinite_sum"].to_pylist())}


def _clickhouse_hours(client: Any, db: str, table: str, start: datetime, end: datetime) -> dict[datetime, Tally]:
    cost = f"sumIf({COST}, isFinite({COST})), countIf(NOT isFinite({COST}))" if has_cost(table) else "0, 0"
    result = client.query(
        f"SELECT toStartOfHour(event_time) AS hour, count(), {cost} FROM {db}.{table} "
        "WHERE event_time >= %(start)s AND event_time < %(end)s GROUP BY hour",
        parameters={"start": utc(start), "end": utc(end)}, settings=HOURS_OF_ANY_TIME,
    )
    return {utc(h): Tally(int(n), float(c), int(x)) for h, n, c, x in result.result_rows}


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
