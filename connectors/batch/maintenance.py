"""Lake maintenance: compaction (optimize, z-order) and vacuum, with deltalake's own operations.

The lake sink commits one small file per table and event date per batch. Each hourly run
bin-packs the small files of the event dates its interval touches (``optimize.compact``: files
already at the target size stay as they are), so the day being written never has more than an
hour's worth of small files. Once a day is over (the run's interval ends after it), that day is
z-ordered by ``agent_id`` and ``event_time``: one rewrite per day that clusters its rows, so
per-agent time-range reads skip most row groups. Either commits a new table version holding the
same rows; the replaced files stay (tombstoned) for readers of older versions until vacuum.
Compaction commits do not conflict with the sink's appends.

Vacuum deletes tombstoned files only once they are older than the retention, which must outlast
the longest read: a query that started on an older version still finds its files. Delta's own
minimum (``delta.deletedFileRetentionDuration``, 7 days by default) is enforced on top.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from connectors.batch.lake import (
    EVENT_DATE,
    REPORT_TABLES,
    event_dates,
    event_table_names,
    open_table,
    utc,
)
from connectors.settings import Settings

log = logging.getLogger(__name__)

#: The clustering of compacted files: the columns the stores are ordered by.
Z_ORDER = ("agent_id", "event_time")
#: Default age (hours) of a tombstoned file before vacuum deletes it: Delta's default retention.
VACUUM_RETENTION_HOURS = 168
#: A date still being written with fewer data files is left as it is.
MIN_FILES = 2


@dataclass(frozen=True)
class Compaction:
    """What compaction did to one event date of one table."""

    table: str
    event_date: str
    #: ``compact`` (bin-packing) or ``z-order``.
    kind: str
    files_before: int
    files_after: int
    version: int


def compact(settings: Settings, start: datetime, end: datetime, tables: list[str] | None = None,
            min_files: int = MIN_FILES) -> list[Compaction]:
    """Compact the event dates of ``[start, end)`` of each table; z-order those that ``end`` closes.

    A date still being written is bin-packed when it has ``min_files`` files or more, so a rerun
    of the same interval rewrites nothing new.
    """
    done = []
    for table in event_table_names(tables):
        delta = open_table(settings, table)
        if delta is None:
            continue
        for day in event_dates(start, end):
            partition = [(EVENT_DATE, "=", day.isoformat())]
            before = len(delta.file_uris(partition_filters=partition))
            finished = day < utc(end).date()
            if before == 0 or (not finished and before < min_files):
                continue
            if finished:
                kind = "z-order"
                delta.optimize.z_order(list(Z_ORDER), partition_filters=partition)
            else:
                kind = "compact"
                delta.optimize.compact(partition_filters=partition)
            after = len(delta.file_uris(partition_filters=partition))
            done.append(Compaction(table, day.isoformat(), kind, before, after, delta.version()))
            log.info("%s %s %s=%s: %d files -> %d (version %d)",
                     kind, table, EVENT_DATE, day, before, after, delta.version())
    return done


def vacuum(settings: Settings, retention_hours: int = VACUUM_RETENTION_HOURS,
           tables: list[str] | None = None) -> dict[str, int]:
    """Delete the files of each table (the event tables and, unless ``tables`` names some, the
    report tables) replaced more than ``retention_hours`` ago; count per table."""
    deleted = {}
    for table in event_table_names(tables) + ([] if tables else list(REPORT_TABLES)):
        delta = open_table(settings, table)
        if delta is None:
            continue
        files = delta.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=True)
        deleted[table] = len(files)
        log.info("vacuumed %s: %d files older than %d h deleted", table, len(files), retention_hours)
    return deleted
