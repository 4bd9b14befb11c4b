"""Backfill: reload ClickHouse from the lake for some tables and a range of days.

It is the reconciliation with repair (:func:`connectors.batch.reconcile.reconcile`), one day at
a time: an hour that ClickHouse already holds exactly is left alone, any other is brought to the
lake's rows. So a backfill can be run again, or over a range ClickHouse partly holds, and ends
with each hour exact; progress goes to ``progress`` (the task log) day by day.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone

from connectors.batch.reconcile import HourCheck, reconcile
from connectors.settings import Settings

log = logging.getLogger(__name__)


def backfill(settings: Settings, first_day: date, last_day: date, tables: list[str] | None = None,
             progress: Callable[[str], None] = log.info, run_day: date | None = None) -> list[HourCheck]:
    """Make ClickHouse hold exactly the lake's rows of ``tables`` (all when empty) from
    ``first_day`` to ``last_day`` (inclusive, UTC); the checks of every hour with rows.

    ``run_day`` is the day of the run (its data interval), from which the retention cut-off is
    counted, as in the reconcile DAG; hours the stores no longer both keep are skipped, not
    reloaded. By default ``last_day``.
    """
    if last_day < first_day:
        raise ValueError(f"backfill range ends ({last_day}) before it starts ({first_day})")
    days = (last_day - first_day).days + 1
    checks: list[HourCheck] = []
    for i in range(days):
        day = first_day + timedelta(days=i)
        start = datetime.combine(day, time(), tzinfo=timezone.utc)
        done = reconcile(settings, start, start + timedelta(days=1), tables, repair=True, progress=progress,
                         day=run_day or last_day)
        checks += done
        rows = sum(c.lake_rows for c in done)
        inserted = sum(c.inserted for c in done)
        progress(f"backfill day {i + 1}/{days} ({day}): {rows} lake rows, {inserted} inserted into ClickHouse")
    return checks
