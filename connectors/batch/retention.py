"""Retention: rows older than the configured days leave the lake and ClickHouse.

Both stores follow one rule on ``event_time``: the run covering ``day`` keeps the UTC event
dates from ``day - (days - 1)`` on, ``days`` being ``EZ_LAKE_RETENTION_DAYS`` for the lake and
``EZ_CLICKHOUSE_TTL_DAYS`` for ClickHouse. The lake drops the older ``event_date`` partitions
(a Delta delete, a metadata-only commit for whole partitions; their files go with a later
vacuum); ClickHouse the rows with ``event_time`` before that date's midnight, from the event
tables and from their per-minute rollups. The cut-off is computed from the day the run covers,
not from the clock, so a rerun deletes the same thing.

ClickHouse's table TTL (``event_time + INTERVAL {ttl_days} DAY``, migration 007) is
the same rule on the server's clock, applied by merges (eventually: a TTL merge runs at most every
``merge_with_ttl_timeout``): a row goes some time after it is ``ttl_days`` old. So the job's
cut-off for ``day`` is where the TTL stands when ``day`` ends, and as the next day goes by the
TTL moves on by the hour (at its next merge) while the job waits for the next run: then
ClickHouse may lack the first hours of the oldest date the lake keeps, and a row inserted into
them later goes at the next TTL merge. The job deletes at once what the TTL would leave until
parts merge. Reconciliation compares only the hours both stores keep (:func:`kept_by_both`), and
none that ClickHouse's TTL no longer keeps by the clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from connectors.batch.lake import EVENT_DATE, EVENT_TIME, event_table_names, open_table
from connectors.clickhouse import get_client
from connectors.clickhouse.migrations import mutation_target, storage_table
from connectors.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Removed:
    """Rows one table lost, in one store."""

    store: str
    table: str
    before: str
    rows: int


def lake_cutoff(settings: Settings, day: date) -> date:
    """The first event date the lake keeps when the run covers ``day``."""
    return _first_kept(settings.lake_retention_days, day)


def clickhouse_cutoff(settings: Settings, day: date) -> datetime:
    """The first instant ClickHouse keeps when the run covers ``day``: the midnight that starts
    its first kept event date."""
    return _midnight(_first_kept(settings.clickhouse_ttl_days, day))


def kept_by_both(settings: Settings, day: date) -> datetime:
    """The first instant both stores keep when the run covers ``day`` (the later cut-off)."""
    return max(_midnight(lake_cutoff(settings, day)), clickhouse_cutoff(settings, day))


def _first_kept(days: int, day: date) -> date:
    # ``days`` dates are kept: the run's day and the ``days - 1`` before it.
    return day - timedelta(days=days - 1)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


def apply_retention(settings: Settings, day: date, tables: list[str] | None = None) -> list[Removed]:
    """Delete, for the run covering ``day``, what is older than the retention; what went."""
    return retain_lake(settings, day, tables) + retain_clickhouse(settings, day, tables)


def retain_lake(settings: Settings, day: date, tables: list[str] | None = None) -> list[Removed]:
    """Delete the lake's event dates before :func:`lake_cutoff`; what went, per table."""
    cutoff = lake_cutoff(settings, day)
    removed = []
    for table in event_table_names(tables):
        delta = open_table(settings, table)
        if delta is None or not delta.file_uris(file_pruning_predicate=[(EVENT_DATE, "<", cutoff.isoformat())]):
            continue
        metrics = delta.delete(f"{EVENT_DATE} < '{cutoff.isoformat()}'")
        rows = int(metrics.get("num_deleted_rows") or 0)
        removed.append(Removed("lake", table, cutoff.isoformat(), rows))
        log.info("lake %s: %d rows before %s deleted (version %d)", table, rows, cutoff, delta.version())
    return removed


def retain_clickhouse(settings: Settings, day: date, tables: list[str] | None = None) -> list[Removed]:
    """Delete ClickHouse's event rows and rollup minutes before :func:`clickhouse_cutoff`; what
    went, per table."""
    cutoff = clickhouse_cutoff(settings, day)
    client = get_client(settings)
    db = settings.clickhouse_database
    existing = {name: engine for name, engine in client.query(
        "SELECT name, engine FROM system.tables WHERE database = %(db)s", parameters={"db": db}).result_rows}
    targets = [(t, EVENT_TIME) for t in event_table_names(tables) if t in existing]
    # The per-minute rollups of those tables (migration 002: ``<table>_1m``, keyed by ``minute``).
    targets += [(f"{t}_1m", "minute") for t, _ in list(targets)
                if existing.get(storage_table(settings, f"{t}_1m"), "").endswith("AggregatingMergeTree")]
    removed = []
    for table, column in targets:
        where = f"{column} < %(cutoff)s"
        rows = int(client.query(f"SELECT count() FROM {db}.{table} WHERE {where}",
                                parameters={"cutoff": cutoff}).result_rows[0][0])
        if not rows:
            continue
        client.command(f"ALTER TABLE {mutation_target(settings, table)} DELETE WHERE {where}",
                       parameters={"cutoff": cutoff}, settings={"mutations_sync": 2})
        removed.append(Removed("clickhouse", table, cutoff.isoformat(), rows))
        log.info("ClickHouse %s.%s: %d rows before %s deleted", db, table, rows, cutoff)
    return removed
