"""The lake sink: every batch is one atomic Delta append that also records its Kafka offsets.

Exactly-once rests on Delta app transactions. A commit carries, next to its data files, one
``txn`` action per Kafka partition of the batch: app id ``<group>/<topic>/<partition>``, version
the last offset written. Data and offsets land in the same commit or not at all, so after a crash
the table itself says where each partition resumes (:meth:`LakeSink.resume_points`).

delta-rs does not refuse a commit whose app id already has that version (delta-rs issue 2580), so
:meth:`LakeSink.write` drops, before committing, every row and range at or below the version the
table already holds: a retried or replayed batch writes nothing twice. A commit that lost a race
is checked by delta-rs' conflict checker, which fails it when the winning commit recorded one of
the same app ids (a zombie worker after a rebalance); the write then reloads the table, drops what
the winner wrote and tries again.

Tables are partitioned by ``event_date`` (the UTC date of ``event_time``). Delta stores
timestamps in microseconds, so ``timestamp[ms]`` columns are stored as ``timestamp[us, UTC]``:
same instants, wider unit.
"""

from __future__ import annotations

import random
import re
import time

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError, TableNotFoundError

from connectors.errors import TerminalError, TransientError
from connectors.kafka.codec import Codec, default_codec
from connectors.lake import is_s3, storage_options, table_uri
from connectors.settings import Settings
from connectors.sink import (
    OFFSET_COLUMN,
    PARTITION_COLUMN,
    TABLES,
    OffsetRange,
    ResumePoint,
    Sink,
    SinkBatch,
)

#: Partition column of every lake table: the UTC date of ``event_time``.
EVENT_DATE_COLUMN = "event_date"
#: The event column ``event_date`` is derived from.
EVENT_TIME_COLUMN = "event_time"

#: Data files are cut at this size. The loop's batches are usually smaller, so one commit writes
#: one file per event date; compaction (optimize) merges small files later.
TARGET_FILE_SIZE = 128 * 1024 * 1024
#: Rows per Parquet row group: readers (DuckDB, Spark) parallelise and skip by row group, so a
#: large file still scans on several threads.
ROW_GROUP_ROWS = 256 * 1024
#: Commits that lose a race are retried by delta-rs itself; these are the attempts after a real
#: conflict (the winner touched the same app ids or the table's metadata).
COMMIT_ATTEMPTS = 5
#: Error text kept in an exception message; store errors can carry whole XML responses.
MAX_CAUSE_CHARS = 600

_WRITER_PROPERTIES = WriterProperties(compression="ZSTD", max_row_group_size=ROW_GROUP_ROWS)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def lake_schema(event_schema: pa.Schema) -> pa.Schema:
    """The columns of a lake table of an event with Arrow schema ``event_schema``.

    The event's columns (timestamps in microseconds, which Delta requires), then
    :data:`~connectors.sink.PARTITION_COLUMN`, :data:`~connectors.sink.OFFSET_COLUMN` and
    :data:`EVENT_DATE_COLUMN`.
    """
    fields = [_lake_field(field) for field in event_schema]
    fields += [
        pa.field(PARTITION_COLUMN, pa.int32(), nullable=False),
        pa.field(OFFSET_COLUMN, pa.int64(), nullable=False),
        pa.field(EVENT_DATE_COLUMN, pa.date32(), nullable=False),
    ]
    return pa.schema(fields)


def app_id(group: str, topic: str, partition: int) -> str:
    """The Delta app transaction id that records how far ``group`` wrote ``topic``/``partition``."""
    return f"{group}/{topic}/{partition}"


class LakeSink(Sink):
    """Appends decoded batches to the Delta tables of the lake, exactly once per Kafka offset.

    :param settings: the lake root (``EZ_LAKE_URI``) and its S3 settings.
    :param group: the consumer group; part of every app transaction id, so two groups writing the
        same table keep separate offsets.
    :param codec: decodes the events; its reader schemas define the tables' columns.
    """

    name = "lake"
    multi_partition_writes = True

    def __init__(self, settings: Settings, group: str, codec: Codec | None = None) -> None:
        self.settings = settings
        self.group = group
        self.codec = codec or default_codec()
        self._options = storage_options(settings)
        if is_s3(settings):
            # The loop retries a failed write with back-off while the partitions stay paused; the
            # store client's own default (retrying for up to 3 minutes) would hold the loop still.
            self._options["retry_timeout"] = "30s"
        self._tables: dict[str, DeltaTable] = {}

    def setup(self) -> None:
        """Open the catalogue tables that exist already, which also proves the lake is reachable."""
        self._tables.clear()
        for table in TABLES.values():
            self._open(table, ())

    def resume_points(self, topic: str, partitions: list[int]) -> dict[int, ResumePoint]:
        """The offset after the last one each partition committed to the topic's table.

        A commit holds all of a batch or nothing, so there is never a batch to replay.
        """
        table = self._table_name(topic)
        delta = self._open(table, (), refresh=True)
        if delta is None:
            return {}
        points = {}
        for partition in partitions:
            version = delta.transaction_version(app_id(self.group, topic, partition))
            if version is not None:
                points[partition] = ResumePoint(version + 1)
        return points

    def write(self, batch: SinkBatch) -> None:
        """Append ``batch`` and record its ranges in one commit; what the table holds is skipped.

        :raises TerminalError: the rows do not fit the event's schema or the table's.
        :raises TransientError: the store is unreachable or the commit kept conflicting.
        """
        partitions = [r.partition for r in batch.ranges]
        if len(set(partitions)) != len(partitions):
            raise ValueError(f"lake table {batch.table}: one range per partition in a batch, got "
                             f"{', '.join(r.token for r in batch.ranges)}")
        schema = lake_schema(self._event_schema(batch))
        try:
            rows = _to_lake_rows(batch.rows, schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            # The value rules (connectors/validation.py) keep such rows out; should one pass them,
            # it is these rows that are wrong, not the store.
            raise TerminalError(f"{self._context(batch.table, batch.ranges)}: rows do not convert to the "
                                f"table's columns: {self._cause(exc)}") from None
        delta = self._open(batch.table, batch.ranges) or self._create(batch.table, schema, batch.ranges)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                fresh_rows, ranges = self._unwritten(delta, rows, batch.ranges)
                if not ranges:
                    return
                self._commit(delta, fresh_rows, ranges)
                return
            except CommitFailedError as exc:
                if attempt == COMMIT_ATTEMPTS:
                    self._tables.pop(batch.table, None)
                    raise TransientError(f"{self._context(batch.table, batch.ranges)}: commit still "
                                         f"conflicting after {attempt} attempts: {self._cause(exc)}") from None
            except (DeltaError, OSError) as exc:
                raise self._error(exc, batch.table, batch.ranges) from None
            time.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.5))
            self._refresh(delta, batch.table, batch.ranges)

    def close(self) -> None:
        """Forget the cached tables."""
        self._tables.clear()

    def _commit(self, delta: DeltaTable, rows: pa.Table, ranges: list[OffsetRange]) -> None:
        # With no rows the commit holds only the txn actions: that is how ranges whose every
        # message went to the DLQ move their partition forward.
        transactions = [Transaction(app_id(self.group, r.topic, r.partition), r.last) for r in ranges]
        table_names = set(pa.schema(delta.schema().to_arrow()).names)
        write_deltalake(
            delta,
            rows,
            mode="append",
            # A new reader schema version adds columns; merge adds them to the table (and fills
            # them with nulls for rows of workers not yet upgraded). Equal schemas never merge, so
            # ordinary commits carry no metadata action that would conflict with other writers.
            schema_mode="merge" if table_names != set(rows.schema.names) else None,
            target_file_size=TARGET_FILE_SIZE,
            writer_properties=_WRITER_PROPERTIES,
            commit_properties=CommitProperties(app_transactions=transactions),
        )

    def _unwritten(
        self, delta: DeltaTable, rows: pa.Table, ranges: tuple[OffsetRange, ...]
    ) -> tuple[pa.Table, list[OffsetRange]]:
        """The rows and ranges of the batch above the offsets the table has recorded."""
        keep_ranges = []
        drop = None
        for r in ranges:
            stored = delta.transaction_version(app_id(self.group, r.topic, r.partition))
            if stored is not None and stored >= r.last:
                written = pc.equal(rows[PARTITION_COLUMN], r.partition)
            elif stored is not None and stored >= r.first:
                keep_ranges.append(r)
                written = pc.and_(pc.equal(rows[PARTITION_COLUMN], r.partition),
                                  pc.less_equal(rows[OFFSET_COLUMN], stored))
            else:
                keep_ranges.append(r)
                continue
            drop = written if drop is None else pc.or_(drop, written)
        if drop is not None:
            rows = rows.filter(pc.invert(drop))
        return rows, keep_ranges

    def _event_schema(self, batch: SinkBatch) -> pa.Schema:
        event_schema = self.codec.arrow_schema(batch.event)
        if EVENT_TIME_COLUMN not in event_schema.names:
            raise TerminalError(f"{self._context(batch.table, batch.ranges)}: event {batch.event} has no "
                                f"{EVENT_TIME_COLUMN} column to partition by")
        expected = {f.name: f.type for f in event_schema}
        expected |= {PARTITION_COLUMN: pa.int32(), OFFSET_COLUMN: pa.int64()}
        actual = {f.name: f.type for f in batch.rows.schema}
        problems = [f"missing {name}" for name in expected if name not in actual]
        problems += [f"unexpected {name}" for name in actual if name not in expected]
        problems += [f"{name} is {actual[name]}, expected {kind}"
                     for name, kind in expected.items() if name in actual and actual[name] != kind]
        if problems:
            raise TerminalError(f"{self._context(batch.table, batch.ranges)}: rows do not match event "
                                f"{batch.event}: {'; '.join(problems)}")
        return event_schema

    def _open(self, table: str, ranges: tuple[OffsetRange, ...], refresh: bool = False) -> DeltaTable | None:
        """The cached table, loaded on first use (None while it does not exist)."""
        delta = self._tables.get(table)
        if delta is not None:
            if refresh:
                self._refresh(delta, table, ranges)
            return delta
        try:
            delta = DeltaTable(table_uri(self.settings, table), storage_options=dict(self._options))
        except TableNotFoundError:
            return None
        except (DeltaError, OSError) as exc:
            raise self._error(exc, table, ranges) from None
        self._tables[table] = delta
        return delta

    def _create(self, table: str, schema: pa.Schema, ranges: tuple[OffsetRange, ...]) -> DeltaTable:
        try:
            DeltaTable.create(
                table_uri(self.settings, table), schema, mode="ignore", partition_by=[EVENT_DATE_COLUMN],
                name=table, storage_options=dict(self._options),
                # A creation that lost the race for version 0 would otherwise be retried as a later
                # version: a second CREATE TABLE commit that resets the table's metadata.
                commit_properties=CommitProperties(max_commit_retries=0),
            )
        except CommitFailedError:
            pass  # another worker created it first: open theirs
        except (DeltaError, OSError) as exc:
            raise self._error(exc, table, ranges) from None
        delta = self._open(table, ranges)
        if delta is None:
            raise TransientError(f"{self._context(table, ranges)}: table not found right after creating it")
        return delta

    def _refresh(self, delta: DeltaTable, table: str, ranges: tuple[OffsetRange, ...]) -> None:
        try:
            delta.update_incremental()
        except (DeltaError, OSError) as exc:
            raise self._error(exc, table, ranges) from None

    def _table_name(self, topic: str) -> str:
        base = topic.removeprefix(self.settings.topic_prefix)
        if base not in TABLES:
            raise ValueError(f"topic {topic} has no lake table; tables: "
                             + ", ".join(f"{t} -> {n}" for t, n in TABLES.items()))
        return TABLES[base]

    def _error(self, exc: Exception, table: str, ranges: tuple[OffsetRange, ...]) -> TransientError | TerminalError:
        """The project error for a delta-rs or store error: terminal only when the data cannot fit."""
        # The cached snapshot may be behind what the failed call did; the next use reloads it.
        self._tables.pop(table, None)
        message = f"{self._context(table, ranges)}: {self._cause(exc)}"
        if isinstance(exc, SchemaMismatchError) or (
            isinstance(exc, DeltaError) and ("Cast error" in str(exc) or "Invalid data found" in str(exc))
        ):
            return TerminalError(message)
        return TransientError(message)

    def _context(self, table: str, ranges: tuple[OffsetRange, ...]) -> str:
        where = f"lake table {table} at {table_uri(self.settings, table)}"
        return f"{where}, offsets {', '.join(r.token for r in ranges)}" if ranges else where

    def _cause(self, exc: Exception) -> str:
        """The error's text on one line, without terminal colours, secret or endless XML."""
        text = " ".join(_ANSI.sub("", str(exc)).replace("↳", " ").split())
        secret = self.settings.s3_secret_access_key
        if secret is not None and secret.get_secret_value():
            text = text.replace(secret.get_secret_value(), "***")
        if len(text) > MAX_CAUSE_CHARS:
            text = text[:MAX_CAUSE_CHARS] + "…"
        return f"{type(exc).__name__}: {text}"


def _lake_field(field: pa.Field) -> pa.Field:
    if pa.types.is_timestamp(field.type):
        return field.with_type(pa.timestamp("us", tz="UTC"))
    return field


def _to_lake_rows(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    # Dropping the time zone keeps the stored UTC instants, so the date is the UTC one whatever
    # zone the column is labelled with.
    event_time = rows[EVENT_TIME_COLUMN]
    utc = pc.cast(event_time, pa.timestamp(event_time.type.unit))
    rows = rows.append_column(EVENT_DATE_COLUMN, pc.cast(utc, pa.date32()))
    return rows.select(schema.names).cast(schema)
