"""The ClickHouse migrations on the embedded engine: a schema version's column arrives through its
migration, TTLs that do not wrap past 2106, and the TTL roll-up of ``ingest_batches``.

Each test has a database of its own in the session's one chDB engine folder (chDB allows one per
process); none needs the Kafka stack.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from connectors.clickhouse import get_client
from connectors.clickhouse.migrations import MIGRATIONS_DIR, apply_migrations
from connectors.clickhouse.schema_check import MissingColumns
from connectors.clickhouse.sink import ClickHouseSink
from connectors.kafka.codec import Codec
from connectors.kafka.events import LlmCall
from connectors.kafka.schemas import SCHEMAS_DIR
from connectors.settings import Settings, load_settings
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, TABLES, OffsetRange, ResumePoint, SinkBatch

NOW = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
TTL_DAYS = 30


@pytest.fixture
def ch(stack_overrides, unique) -> Iterator[Settings]:
    """Settings of the session's engine folder with a database of this test's own (dropped afterwards)."""
    mine = load_settings(**{
        **stack_overrides,
        "clickhouse_database": f"t_{unique.replace('-', '_')}",
        "clickhouse_ttl_days": TTL_DAYS,
    })
    yield mine
    get_client(mine).command(f"DROP DATABASE IF EXISTS {mine.clickhouse_database}")


def scalar(settings: Settings, sql: str):
    return get_client(settings).query(sql.format(db=settings.clickhouse_database)).result_rows[0][0]


def column(settings: Settings, sql: str) -> list:
    return [row[0] for row in get_client(settings).query(sql.format(db=settings.clickhouse_database)).result_rows]


# --- a new schema version: LlmCall v2 and its migration ---------------------------------------


def without_the_v2_migration(root: Path) -> Path:
    """The repository's migrations up to the one before LlmCall v2's (010)."""
    folder = root / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    (folder / "010_llm_call_v2.sql").unlink()
    return folder


def llm_call(i: int, **tokens: int) -> LlmCall:
    return LlmCall(
        event_time=NOW, agent_id="research-1", agent_type="research", tenant_id="tenant-1", trace_id=f"trace-{i}",
        call_id=f"call-{i}", provider="anthropic", model="claude-3-haiku", api_key_alias="key-01",
        input_tokens=2000, output_tokens=300, cost_usd=0.001, price_version="2026-11-01", latency_ms=50.0,
        status="ok", cache_hit=False, **tokens,
    )


#: (cache read, cache write, reasoning) of the v2 calls of :func:`v2_batch`.
V2_TOKENS = [(0, 0, 0), (1024, 0, 0), (0, 1500, 0), (512, 256, 120)]


def v2_batch(codec: Codec, topic: str) -> SinkBatch:
    """Four calls written with v2 and one written with v1, as the loop hands them over: decoded
    into v2, the reader (the v1 call with the schema's defaults, 0)."""
    messages = [codec.encode("llm_call", llm_call(i, cache_read_tokens=r, cache_write_tokens=w,
                                                  reasoning_tokens=z).to_record())
                for i, (r, w, z) in enumerate(V2_TOKENS)]
    v1 = llm_call(len(V2_TOKENS)).to_record()
    v1_names = {f["name"] for f in json.loads((SCHEMAS_DIR / "llm_call" / "v1.avsc").read_text())["fields"]}
    messages.append(codec.encode("llm_call", {k: v for k, v in v1.items() if k in v1_names}, version=1))
    decoded = codec.decode_batch_arrow(messages, "llm_call")
    assert decoded.failures == []
    n = decoded.table.num_rows
    rows = decoded.table.append_column(PARTITION_COLUMN, pa.array([0] * n, pa.int32()))
    rows = rows.append_column(OFFSET_COLUMN, pa.array(range(n), pa.int64()))
    return SinkBatch(TABLES["agent.llm_calls"], "llm_call", rows, (OffsetRange(topic, 0, 0, n - 1),))


def test_llm_call_v2_reaches_clickhouse_and_its_rollup_through_its_migration_and_not_without(ch, tmp_path, unique):
    client = get_client(ch)

    # Without the migration: refused once migrated, naming event, table, column and the migration.
    with pytest.raises(MissingColumns) as refused:
        apply_migrations(client, ch, without_the_v2_migration(tmp_path))
    message = str(refused.value)
    for field in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
        assert f"llm_call v2 adds field '{field}': llm_calls has no column {field}" in message
    assert f"{ch.clickhouse_database}" in message and "_llm_call_v2.sql" in message

    # A sink applies the package's migrations at start: 010 with them, so the columns arrive and
    # the rollup's view sums them.
    sink = ClickHouseSink(ch, group=f"g.{unique}")
    sink.setup()
    assert apply_migrations(client, ch) == []
    topic = f"it.{unique}.agent.llm_calls"
    sink.write(v2_batch(Codec(), topic))

    db = ch.clickhouse_database
    stored = client.query(
        f"SELECT cache_read_tokens, cache_write_tokens, reasoning_tokens FROM {db}.llm_calls ORDER BY call_id"
    ).result_rows
    assert stored == [*V2_TOKENS, (0, 0, 0)]
    rollup = client.query(
        f"SELECT countMerge(calls), sumMerge(input_tokens_sum), sumMerge(cache_read_tokens_sum), "
        f"sumMerge(cache_write_tokens_sum), sumMerge(reasoning_tokens_sum) FROM {db}.llm_calls_1m"
    ).result_rows
    assert rollup == [(5, 5 * 2000, *(sum(t[k] for t in V2_TOKENS) for k in range(3)))]
    assert sink.resume_points(topic, [0]) == {0: ResumePoint(5)}
    sink.close()


# --- TTLs -------------------------------------------------------------------------------------

#: Event times around both ends of DateTime's range (1970…2106-02-07) and inside DateTime64's (1900…2299).
TIMES = {
    "1900": "1900-01-01 00:00:00.000",
    "1969": "1969-12-31 23:59:59.999",
    "1970": "1970-01-01 00:00:00.000",
    "2000": "2000-01-01 00:00:00.000",
    "now": NOW.strftime("%Y-%m-%d %H:%M:%S.000"),
    "2140": "2140-01-01 00:00:00.000",
    "2200": "2200-01-01 00:00:00.000",
    "2299": "2299-12-31 23:59:59.999",
}
#: Those the TTL keeps: younger than TTL_DAYS.
KEPT = {"now", "2140", "2200", "2299"}


def test_ttls_keep_rows_past_2106_and_drop_those_before_1970(ch):
    apply_migrations(get_client(ch), ch)
    db = ch.clickhouse_database
    client = get_client(ch)
    # What the TTL of migration 001 computed: a wrapped DateTime, in the past for 2140 and far off for 1900.
    assert scalar(ch, f"SELECT toDateTime(toDateTime64('{TIMES['2140']}', 3, 'UTC')) + INTERVAL 30 DAY < now()") == 1
    assert scalar(ch, f"SELECT toYear(toDateTime(toDateTime64('{TIMES['1900']}', 3, 'UTC')) + INTERVAL 30 DAY)") > 2030

    for table in [*TABLES.values(), "inference_vectors"]:
        ddl = scalar(ch, f"SHOW CREATE TABLE {{db}}.{table}")
        assert f"TTL event_time + toIntervalDay({TTL_DAYS})" in ddl, table
    assert f"TTL last_event_at + toIntervalDay({TTL_DAYS})" in scalar(ch, "SHOW CREATE TABLE {db}.task_state_agg")
    for table in ("llm_calls_1m", "task_events_1m"):
        assert f"TTL toDateTime64(minute, 0, 'UTC') + toIntervalDay({TTL_DAYS})" in scalar(
            ch, f"SHOW CREATE TABLE {{db}}.{table}")

    for label, at in TIMES.items():
        when = f"toDateTime64('{at}', 3, 'UTC')"
        for table in TABLES.values():
            extra = {"task_events": ", task_id", "inference_results": ", embeddings"}.get(table, "")
            values = {"task_events": f", 'task-{label}'", "inference_results": ", [[1.0, 0.0]]"}.get(table, "")
            client.command(f"INSERT INTO {db}.{table} (event_time, agent_id, trace_id{extra}) "
                           f"SELECT {when}, 'agent-1', '{label}'{values}")
    stored = [*TABLES.values(), "inference_vectors", "task_state_agg", "llm_calls_1m", "task_events_1m"]
    for table in stored:
        client.command(f"OPTIMIZE TABLE {db}.{table} FINAL")

    for table in TABLES.values():
        assert set(column(ch, f"SELECT trace_id FROM {{db}}.{table}")) == KEPT, table
    assert set(column(ch, "SELECT trace_id FROM {db}.inference_vectors")) == KEPT
    assert set(column(ch, "SELECT task_id FROM {db}.task_state_agg")) == {f"task-{label}" for label in KEPT}
    # A rollup's minute is a DateTime, so the rows past 2106 share its last second; the TTL keeps them.
    for table, count in (("llm_calls_1m", "countMerge(calls)"), ("task_events_1m", "countMerge(events)")):
        assert scalar(ch, f"SELECT {count} FROM {{db}}.{table}") == len(KEPT), table


# --- the TTL of ingest_batches ----------------------------------------------------------------

BATCH_COLUMNS = ["topic", "partition", "first_offset", "last_offset", "rows", "written", "consumer_group", "recorded_at"]


def recorded_batches(topic: str) -> list[list]:
    """The records of batches, as the sink makes them (written false, then true), 30 days old but
    for partition 0's newest: each partition ends differently."""
    old = NOW - timedelta(days=30)
    rows: list[list] = []

    def batch(partition, first, n, at, group="g.old", written=(False, True)):
        rows.extend([topic, partition, first, first + n - 1, n, w, group, at] for w in written)

    for i in range(40):  # partition 0: a long history, then a few recent batches
        batch(0, 100 * i, 100, old + timedelta(minutes=i))
    for i in range(40, 43):
        batch(0, 100 * i, 100, NOW, group="g.new")
    for i in range(30):  # partition 1: only old batches, all written
        batch(1, 10 * i, 10, old + timedelta(minutes=i))
    for i in range(10):  # partition 2: old batches, the newest recorded but never marked written
        batch(2, 50 * i, 50, old + timedelta(minutes=i))
    batch(2, 500, 50, old + timedelta(minutes=11), written=(False,))
    for i in range(5):  # partition 3: old batches, the newest without rows (all of them dead-lettered)
        batch(3, 10 * i, 10, old)
    rows.append([topic, 3, 50, 59, 0, True, "g.old", old + timedelta(minutes=5)])
    return rows


def test_ingest_batches_ttl_rolls_up_old_batches_and_keeps_every_resume_point(ch, unique):
    sink = ClickHouseSink(ch, group=f"g.{unique}")
    sink.setup()
    client = get_client(ch)
    db = ch.clickhouse_database
    assert "GROUP BY topic, partition" in scalar(ch, "SHOW CREATE TABLE {db}.ingest_batches")
    topic = f"it.{unique}.agent.llm_calls"
    rows = recorded_batches(topic)
    for start in range(0, len(rows), 9):  # many parts, as many inserts make
        client.insert(f"{db}.ingest_batches", rows[start:start + 9], column_names=BATCH_COLUMNS)
    partitions = [0, 1, 2, 3]
    before = sink.resume_points(topic, partitions)
    assert before == {0: ResumePoint(4300), 1: ResumePoint(300), 2: ResumePoint(550, replay=(OffsetRange(topic, 2, 500, 549),)),
                      3: ResumePoint(60)}

    client.command(f"OPTIMIZE TABLE {db}.ingest_batches FINAL")

    assert sink.resume_points(topic, partitions) == before
    kept = client.query(
        f"SELECT partition, first_offset, last_offset, rows, written, consumer_group FROM {db}.ingest_batches "
        "ORDER BY partition, first_offset"
    ).result_rows
    assert len(kept) == 4 + 3, kept  # one row for the old batches of each partition, and the 3 recent ones
    assert [row for row in kept if row[0] == 0] == [
        (0, 3900, 3999, 100, True, "g.old"), (0, 4000, 4099, 100, True, "g.new"),
        (0, 4100, 4199, 100, True, "g.new"), (0, 4200, 4299, 100, True, "g.new"),
    ]
    assert [row for row in kept if row[0] != 0] == [
        (1, 290, 299, 10, True, "g.old"), (2, 500, 549, 50, False, "g.old"), (3, 50, 59, 0, True, "g.old"),
    ]
    # The roll-up keeps each part in ORDER BY order (a row out of order would corrupt its index).
    by_part: dict[str, list[tuple]] = {}
    for part, *key in client.query(
        f"SELECT _part, topic, partition, first_offset, last_offset FROM {db}.ingest_batches ORDER BY _part, _part_offset"
    ).result_rows:
        by_part.setdefault(part, []).append(tuple(key))
    assert all(keys == sorted(keys) for keys in by_part.values()), by_part
    newest = scalar(ch, "SELECT max(recorded_at) FROM {db}.ingest_batches WHERE partition = 1")
    assert newest.replace(tzinfo=None) == (NOW - timedelta(days=30, minutes=-29)).replace(tzinfo=None)

    # The sink goes on from there.
    sink.write(SinkBatch("llm_calls", "llm_call", pa.table({"agent_id": pa.array([], pa.string())}),
                         (OffsetRange(topic, 1, 300, 309),)))
    assert sink.resume_points(topic, [1]) == {1: ResumePoint(310)}
    sink.close()
