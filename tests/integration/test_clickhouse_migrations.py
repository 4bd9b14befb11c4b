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

from connectors.clickhouse import get_client, schema_check
from connectors.clickhouse.migrations import MIGRATIONS_DIR, apply_migrations
from connectors.clickhouse.schema_check import MissingColumns
from connectors.clickhouse.sink import ClickHouseSink
from connectors.kafka.codec import Codec
from connectors.kafka.events import LlmCall
from connectors.kafka.schemas import SCHEMAS_DIR, SchemaRegistry
from connectors.settings import Settings, load_settings
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, TABLES, OffsetRange, ResumePoint, SinkBatch

NOW = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
TTL_DAYS = 30
NEW_FIELD = {"name": "reasoning_tokens", "type": ["null", "int"], "default": None,
             "doc": "Tokens the model spent reasoning; null where the provider does not say."}


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


# --- a new schema version ---------------------------------------------------------------------


def v2_folders(root: Path) -> tuple[Path, Path]:
    """A schemas folder with llm_call v2 (v1 plus one optional field), and a migrations folder
    with the migration that adds its column."""
    schemas, migrations = root / "schemas", root / "migrations"
    shutil.copytree(SCHEMAS_DIR, schemas)
    v2 = json.loads((schemas / "llm_call" / "v1.avsc").read_text())
    v2["fields"].append(NEW_FIELD)
    (schemas / "llm_call" / "v2.avsc").write_text(json.dumps(v2, indent=2))
    shutil.copytree(MIGRATIONS_DIR, migrations)
    version = max(int(path.name[:3]) for path in migrations.glob("*.sql")) + 1
    (migrations / f"{version:03d}_llm_call_v2.sql").write_text(
        "ALTER TABLE {db}.llm_calls ADD COLUMN IF NOT EXISTS reasoning_tokens Nullable(Int32);\n"
    )
    return schemas, migrations


def llm_call(i: int) -> LlmCall:
    return LlmCall(
        event_time=NOW, agent_id="research-1", agent_type="research", tenant_id="tenant-1", trace_id=f"trace-{i}",
        call_id=f"call-{i}", provider="anthropic", model="claude-3-haiku", api_key_alias="key-01",
        input_tokens=100, output_tokens=10, cost_usd=0.001, price_version="2026-11-01", latency_ms=50.0,
        status="ok", cache_hit=False,
    )


def v2_batch(codec: Codec, topic: str) -> SinkBatch:
    """Three calls written with v2 (reasoning_tokens null, 7, 42) and one written with v1, as the
    loop hands them over: decoded into v2, the reader."""
    messages = [codec.encode("llm_call", {**llm_call(i).to_record(), "reasoning_tokens": tokens})
                for i, tokens in enumerate([None, 7, 42])]
    messages.append(codec.encode("llm_call", llm_call(3).to_record(), version=1))
    decoded = codec.decode_batch_arrow(messages, "llm_call")
    assert decoded.failures == []
    n = decoded.table.num_rows
    rows = decoded.table.append_column(PARTITION_COLUMN, pa.array([0] * n, pa.int32()))
    rows = rows.append_column(OFFSET_COLUMN, pa.array(range(n), pa.int64()))
    return SinkBatch(TABLES["agent.llm_calls"], "llm_call", rows, (OffsetRange(topic, 0, 0, n - 1),))


def test_a_v2_field_reaches_clickhouse_through_its_migration_and_not_without(ch, tmp_path, unique, monkeypatch):
    schemas, migrations = v2_folders(tmp_path)
    registry = SchemaRegistry(schemas)
    client = get_client(ch)

    # Without the migration: refused once migrated, naming event, table, column and the migration.
    with pytest.raises(MissingColumns) as refused:
        apply_migrations(client, ch, MIGRATIONS_DIR, registry)
    message = str(refused.value)
    assert "llm_call v2 adds field 'reasoning_tokens': llm_calls has no column reasoning_tokens" in message
    assert f"{ch.clickhouse_database}" in message and "_llm_call_v2.sql" in message
    assert "ALTER TABLE {db}.llm_calls ADD COLUMN IF NOT EXISTS reasoning_tokens Nullable(Int32);" in message

    # A sink whose readers are v2 stops at start, rather than retrying its inserts forever.
    monkeypatch.setattr(schema_check, "default_registry", lambda: registry)
    sink = ClickHouseSink(ch, group=f"g.{unique}")
    with pytest.raises(MissingColumns, match="reasoning_tokens"):
        sink.setup()

    # With it, the column arrives and the sink starts.
    assert apply_migrations(client, ch, migrations, registry) == [sorted(migrations.glob("*.sql"))[-1].stem]
    sink.setup()
    topic = f"it.{unique}.agent.llm_calls"
    sink.write(v2_batch(Codec(registry), topic))

    stored = client.query(
        f"SELECT call_id, reasoning_tokens FROM {ch.clickhouse_database}.llm_calls ORDER BY call_id"
    ).result_rows
    assert stored == [("call-0", None), ("call-1", 7), ("call-2", 42), ("call-3", None)]
    assert sink.resume_points(topic, [0]) == {0: ResumePoint(4)}
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
