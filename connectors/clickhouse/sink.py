"""The ClickHouse sink: decoded batches into the event tables, exactly once.

A batch is what the loop flushes of one topic: one offset range for each partition it holds, and
their rows as one insert, so a flush costs one insert per table whatever the partition count
(an insert's fixed cost, its materialized views' above all, dwarfs its cost per row at the
sizes a one-second flush gathers: see bench/clickhouse_write.py). Exactly once rests on three
things (see ``migrations/``):

1. Before its insert, each range of a batch is recorded in ``ingest_batches`` (``written``
   false) with the batch's token (:func:`~connectors.sink.batch_token`, which names every range
   of the batch); once the insert returned, again with ``written`` true. Both records of a batch
   are one insert each, so a batch is recorded whole or not at all.
2. Every insert carries ``insert_deduplication_token`` = the batch's token. The event tables and
   the rollup tables keep a deduplication window, so a block whose token they already hold is
   dropped, and the materialized views that fill the rollups are deduplicated the same way
   (``deduplicate_blocks_in_dependent_materialized_views``).
3. On assignment, :meth:`ClickHouseSink.resume_points` names, for a partition whose newest
   recorded range is not marked written, the whole batch it belongs to: the loop reads every
   range of that batch again, other partitions' included, and writes the same rows under the same
   token, which either land or are dropped as a duplicate. Whoever holds any partition of the
   batch may do so, as often as it comes: the token makes every such write the same one. A batch
   marked written is not replayed, which keeps it exact even after its block has left the
   deduplication window. Because a recorded batch may be replayed whole by another worker, it is
   never written in another composition (:meth:`ClickHouseSink.recorded`).

ClickHouse refuses an insert block that touches more partitions (months of ``event_time``) than
``max_partitions_per_insert_block``; a batch spanning more is inserted as several blocks of at
most that many months each, in month order, with tokens ``<token>:<k>/<n>``. The same batch
always splits the same way, so a replayed one is deduplicated block by block.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.exceptions import ClickHouseError, error_name_from_body

from connectors.clickhouse import get_client
from connectors.clickhouse.migrations import apply_migrations
from connectors.errors import EzStreamError, TerminalError, TransientError
from connectors.failpoints import failpoint
from connectors.settings import Settings
from connectors.sink import PARTITION_COLUMN, OffsetRange, ResumePoint, Sink, SinkBatch, batch_token, parse_batch_token

#: Settings of every insert. ``async_insert`` is off because chDB turns it on by default, and an
#: asynchronous insert is buffered (not durable when the call returns) and deduplicated by other
#: rules than the token. ``optimize_on_insert`` is off: the rollups and the task state are filled
#: by views that already GROUP BY their table's key, so merging each inserted block again by that
#: key does nothing but cost (about a fifth of an insert into task_events with its views, see
#: bench/clickhouse_write.py); every read of those tables merges by key anyway (-Merge, GROUP BY,
#: the resume points' GROUP BY of ingest_batches).
INSERT_SETTINGS: dict[str, int] = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "async_insert": 0,
    "optimize_on_insert": 0,
}

#: Added to every insert on a cluster (``EZ_CLICKHOUSE_CLUSTER``), where the tables written are
#: Distributed: a foreground insert returns only once each shard's replicated table took its rows
#: under the batch's insert_deduplication_token. A background one would return with the rows still
#: queued on the node, and the batch would be marked written before it is stored.
CLUSTER_INSERT_SETTINGS: dict[str, int] = {"distributed_foreground_insert": 1}


def insert_settings(settings: Settings) -> dict[str, int]:
    """Settings of every insert: the dedup window, and on a cluster a foreground Distributed
    insert, so the dedup token reaches each shard's replicated table within the insert."""
    return {**INSERT_SETTINGS, **(CLUSTER_INSERT_SETTINGS if settings.clickhouse_cluster else {})}

# ClickHouse errors (besides CANNOT_PARSE_*) that say these rows cannot be stored: retrying cannot
# help. Any other refusal, a column the table lacks (a missing migration) included, is retried:
# it holds for every batch, and dead-lettering them all would empty the topic into its DLQ.
_DATA_ERRORS = frozenset({
    "TYPE_MISMATCH",
    "CANNOT_CONVERT_TYPE",
    "INCORRECT_DATA",
    "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    "DECIMAL_OVERFLOW",
    "TOO_LARGE_STRING_SIZE",
    "TOO_LARGE_ARRAY_SIZE",
    "ARGUMENT_OUT_OF_BOUND",
})

#: A refusal of the block's shape, not of the server's state: ``TOO_MANY_PARTS`` names both this
#: and a server whose merges fall behind (which passes), so the message tells them apart.
_SHAPE_REFUSAL = "partitions for single insert block"

_BATCHES_COLUMNS = ["topic", "partition", "first_offset", "last_offset", "rows", "written", "consumer_group", "batch"]
#: Their types (migrations 003, 009), given with each record so the client asks the server for none.
_BATCHES_TYPES = ["String", "Int32", "Int64", "Int64", "UInt32", "Bool", "LowCardinality(String)", "String"]


class ClickHouseSink(Sink):
    """Writes batches into ``{database}.<table>`` (see :data:`connectors.sink.TABLES`).

    :param settings: where ClickHouse is (``EZ_CLICKHOUSE_DSN``) and which database to use.
    :param group: consumer group of the worker, recorded with each batch for the audit trail.
        Resume points do not depend on it: what the tables hold is the truth, whoever wrote it.
    """

    name = "clickhouse"

    def __init__(self, settings: Settings, group: str) -> None:
        self.settings = settings
        self.group = group
        self.database = settings.clickhouse_database
        self._insert_settings = insert_settings(settings)
        self._client: Any = None
        #: The server's max_partitions_per_insert_block (0: no limit); read by setup.
        self.max_partitions = 0

    @property
    def client(self) -> Any:
        """The clickhouse-connect client; set by :meth:`setup`."""
        if self._client is None:
            raise RuntimeError("ClickHouseSink.setup() was not called")
        return self._client

    def setup(self) -> None:
        """Connect and bring the database up to the latest migration."""
        self._client = get_client(self.settings)
        apply_migrations(self._client, self.settings)
        try:
            limit = self._client.query(
                "SELECT value FROM system.settings WHERE name = 'max_partitions_per_insert_block'").result_rows
        except (ClickHouseError, OSError) as exc:
            raise self._error(exc, "reading max_partitions_per_insert_block") from None
        self.max_partitions = int(limit[0][0]) if limit else 0

    def resume_points(self, topic: str, partitions: list[int]) -> dict[int, ResumePoint]:
        """From the newest recorded range of each partition: after it, and its whole batch again if
        that is not marked written."""
        if not partitions:
            return {}
        # One row per range even before ReplacingMergeTree merged its two records.
        sql = (
            "SELECT partition, first_offset, last_offset, max(written), any(batch) "
            f"FROM {self.database}.ingest_batches "
            "WHERE topic = %(topic)s AND partition IN %(partitions)s "
            "GROUP BY partition, first_offset, last_offset "
            "ORDER BY partition, last_offset DESC LIMIT 1 BY partition"
        )
        try:
            rows = self.client.query(sql, parameters={"topic": topic, "partitions": list(partitions)}).result_rows
        except (ClickHouseError, OSError) as exc:
            raise self._error(exc, f"reading the resume points of {topic}") from None
        points = {}
        for partition, first, last, written, batch in rows:
            if written:
                points[int(partition)] = ResumePoint(last + 1)
            else:
                # Ranges recorded before batches spanned partitions carry no batch token: their own.
                replay = parse_batch_token(batch) if batch else (OffsetRange(topic, int(partition), first, last),)
                points[int(partition)] = ResumePoint(last + 1, replay=replay)
        return points

    def write(self, batch: SinkBatch) -> None:
        """Record the batch's ranges, insert its rows (deduplicated by the batch's token), mark them written.

        :raises TransientError: ClickHouse is unreachable or refused for a reason that may pass.
        :raises TerminalError: ClickHouse cannot store these rows; the message names the table and token.
        """
        token = batch_token(batch.ranges)
        rows = batch.rows.num_rows
        if rows:
            failpoint("clickhouse.before_record")
            self._record(batch, token, written=False)
            failpoint("clickhouse.after_record")
            for block, block_token in self.blocks(batch.rows, token):
                self._insert(batch.table, block, block_token)
            failpoint("clickhouse.after_insert")
        self._record(batch, token, written=True)

    def recorded(self, batch: SinkBatch) -> bool:
        """Whether ``ingest_batches`` holds this batch (recorded by an attempt that then failed).

        :raises TransientError: ClickHouse cannot be asked.
        """
        token = batch_token(batch.ranges)
        first = batch.ranges[0]
        try:
            rows = self.client.query(
                f"SELECT count() FROM {self.database}.ingest_batches WHERE topic = %(topic)s "
                "AND partition = %(partition)s AND first_offset = %(first)s AND batch = %(batch)s",
                parameters={"topic": first.topic, "partition": first.partition, "first": first.first, "batch": token},
            ).result_rows
        except (ClickHouseError, OSError) as exc:
            raise self._error(exc, f"looking up batch {token}") from None
        return bool(rows and rows[0][0])

    def blocks(self, rows: pa.Table, token: str) -> list[tuple[pa.Table, str]]:
        """``rows`` as insert blocks of at most :attr:`max_partitions` months each, with their tokens."""
        if "event_time" not in rows.column_names or self.max_partitions <= 0:
            return [(rows, token)]
        event_time = rows["event_time"]
        months = pc.add(pc.multiply(pc.year(event_time), 12), pc.month(event_time))
        distinct = pc.unique(months).to_pylist()
        if len(distinct) <= self.max_partitions:
            return [(rows, token)]
        distinct.sort()
        groups = [distinct[i:i + self.max_partitions] for i in range(0, len(distinct), self.max_partitions)]
        return [(rows.filter(pc.is_in(months, value_set=pa.array(group, months.type))), f"{token}:{k}/{len(groups)}")
                for k, group in enumerate(groups, start=1)]

    def close(self) -> None:
        """Forget the client; it is process-wide (see :func:`~connectors.clickhouse.get_client`), so it stays open."""
        self._client = None

    def _record(self, batch: SinkBatch, token: str, written: bool) -> None:
        counts: dict[int, int] = {}
        if batch.rows.num_rows:
            per_partition = pc.value_counts(batch.rows[PARTITION_COLUMN])
            counts = dict(zip(per_partition.field("values").to_pylist(), per_partition.field("counts").to_pylist()))
        records = [[r.topic, r.partition, r.first, r.last, counts.get(r.partition, 0), written, self.group, token]
                   for r in batch.ranges]
        try:
            self.client.insert(
                f"{self.database}.ingest_batches", records, column_names=_BATCHES_COLUMNS,
                column_type_names=_BATCHES_TYPES, settings=self._insert_settings,
            )
        except (ClickHouseError, OSError) as exc:
            raise self._error(exc, f"recording batch {token}") from None

    def _insert(self, table: str, rows: pa.Table, token: str) -> None:
        doing = f"inserting batch {token} into {self.database}.{table}"
        try:
            self.client.insert_arrow(
                table, rows, database=self.database, settings={**self._insert_settings, "insert_deduplication_token": token}
            )
        except (ClickHouseError, OSError) as exc:
            raise self._error(exc, doing) from None

    def _error(self, exc: ClickHouseError | OSError, doing: str) -> EzStreamError:
        where = f"ClickHouse at {self.settings.clickhouse_dsn_redacted}"
        # Only a server that answered gives an error code; without one it was not reached. The
        # driver's text is left out then: it may quote the connection's URL.
        if getattr(exc, "code", None) is None:
            return TransientError(f"{where} is unavailable while {doing} ({type(exc).__name__})")
        message = str(exc).splitlines()[0]
        name = getattr(exc, "name", None) or error_name_from_body(message) or ""
        if (name in _DATA_ERRORS or name.startswith("CANNOT_PARSE")
                or (name == "TOO_MANY_PARTS" and _SHAPE_REFUSAL in message.lower())):
            return TerminalError(f"{where} refused {doing}: {message}")
        return TransientError(f"{where} failed {doing}: {message}")
