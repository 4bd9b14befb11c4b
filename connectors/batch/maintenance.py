"""Lake maintenance: compaction (optimize with z-order) and vacuum, with deltalake's own operations.

The lake sink commits one small file per table and event date per batch. Compaction rewrites the
files of an event date into few large ones, clustered by ``agent_id`` and ``event_time`` (z-order)
so per-agent time-range reads skip most row groups. It commits a new table version holding the
same rows; the replaced files stay (tombstoned) for readers of older versions until vacuum.

Vacuum deletes tombstoned files only once they are older than the retention, which must outlast
the longest read: a query that started on an older version still finds its files. Delta's own
minimum (``delta.deletedFileRetentionDuration``, 7 days by default) is enforced on top.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from connectors.batch.lake import EVENT_DATE, event_dates, event_table_names, open_table
from connectors.settings import Settings

log = logging.getLogger(__name__)

#: The clustering of compacted files: the columns the stores are ordered by.
Z_ORDER = ("agent_id", "event_time")
#: Default age (hours) of a tombstoned file before vacuum deletes it: Delta's default retention.
VACUUM_RETENTION_HOURS = 168
#: An event date with fewer data files is left as it is.
MIN_FILES = 2


@dataclass(frozen=True)
class Compaction:
    """What compaction did to one event date of one table."""

    table: str
    event_date: str
    files_before: int
    files_after: int
    version: int


def compact(settings: Settings, start: datetime, end: datetime, tables: list[str] | None = None,
            min_files: int = MIN_FILES) -> list[Compaction]:
    """Z-order the event dates of ``[start, end)`` of each table that have ``min_files`` files or more.

    A date already compacted has one file and is skipped, so a rerun rewrites nothing.
    """
    done = []
    for table in event_table_names(tables):
        delta = open_table(settings, table)
        if delta is None:
            continue
        for day in event_dates(start, end):
            partition = [(EVENT_DATE, "=", day.isoformat())]
            before = len(delta.file_uris(partition_filters=partition))
            if before < min_files:
                continue
            delta.optimize.z_order(list(Z_ORDER), partition_filters=partition)
            after = len(delta.file_uris(partition_filters=partition))
            done.append(Compaction(table, day.isoformat(), before, after, delta.version()))
            log.info("compacted %s %s=%s: %d files -> %d (version %d)",
                     table, EVENT_DATE, day, before, after, delta.version())
    return done


def vacuum(settings: Settings, retention_hours: int = VACUUM_RETENTION_HOURS,
           tables: list[str] | None = None) -> dict[str, int]:
    """Delete each table's files that were replaced more than ``retention_hours`` ago; count per table."""
    deleted = {}
    for table in event_table_names(tables):
        delta = open_table(settings, table)
        if delta is None:
            continue
        files = delta.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=True)
        deleted[table] = len(files)
        log.info("vacuumed %s: %d files older than %d h deleted", table, len(files), retention_hours)
    return deleted
