"""The ClickHouse sink on the embedded engine: migrations, exactly-once inserts, rollups, resume points.

Batches are built the way the sink loop builds them: events encoded with the codec, decoded in
one call to an Arrow table, the Kafka partition and offset columns appended. Every test has its
own database in the session's one chDB engine folder (chDB allows one per process).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from connectors.clickhouse import get_client
from connectors.clickhouse.migrations import MIGRATIONS_DIR, apply_migrations
from connectors.clickhouse.sink import ClickHouseSink
from connectors.errors import ConfigError, TerminalError, TransientError
from connectors.kafka.events import Alert, InferenceResult, LlmCall, LlmWindow, TaskEvent, Telemetry
from connectors.settings import Settings, load_settings
from connectors.sink import TABLES, OffsetRange, ResumePoint, SinkBatch
from infra.local.net import free_port

from tests.integration.clickhouse_batches import PREFIX, combine, make_batch

NOW = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=5)


class Crash(Exception):
    """Stands for the worker dying at that point."""


@pytest.fixture
def ch_settings(settings, stack_overrides, unique) -> Iterator[Settings]:
    """The test stack's settings with a database of this test's own (dropped afterwards)."""
    mine = load_settings(**{
        **stack_overrides,
        "clickhouse_database": f"t_{unique.replace('-', '_')}",
        "clickhouse_ttl_days": 30,
        "topic_prefix": PREFIX,
    })
    assert mine.clickhouse_dsn == settings.clickhouse_dsn  # the session's one engine folder
    yield mine
    get_client(mine).command(f"DROP DATABASE IF EXISTS {mine.clickhouse_database}")


@pytest.fixture
def sink(ch_settings, unique) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(ch_settings, group=f"g.{unique}")
    sink.setup()
    yield sink
    sink.close()


def llm_calls(n: int, start: int = 0) -> list[LlmCall]:
    return [
        LlmCall(
            event_time=NOW + timedelta(seconds=i % 90),
            agent_id=f"research-{i % 3}", agent_type="research", tenant_id="tenant-1", trace_id=f"trace-{i}",
            call_id=f"call-{i}", provider="anthropic" if i % 2 else "openai",
            model="claude-3-haiku" if i % 2 else "gpt-4", api_key_alias="key-01",
            input_tokens=100 + i, output_tokens=10 + i, cost_usd=0.001 * (i + 1), price_version="2026-11-01",
            latency_ms=50.0 + 7 * i, status="ok" if i % 5 else "rate_limited", cache_hit=i % 7 == 0,
        )
        for i in range(start, start + n)
    ]


def task_events(n: int) -> list[TaskEvent]:
    return [
        TaskEvent(
            event_time=NOW + timedelta(seconds=i), agent_id=f"dev-{i % 2}", agent_type="development",
            tenant_id="tenant-1", trace_id=f"trace-{i}", task_id=f"task-{i // 2}",
            status="completed" if i % 2 else "started", queue="high_priority" if i % 3 else "batch", attempt=1,
            queue_wait_ms=200 + i, duration_ms=1000 * i if i % 2 else None,
            quality_score=0.9 if i % 2 else None, cost_usd=0.01 * i, price_version="2026-11-01",
            region="eu-west-1" if i % 2 else None,
        )
        for i in range(n)
    ]


def telemetry(n: int) -> list[Telemetry]:
    return [
        Telemetry(
            event_time=NOW + timedelta(seconds=10 * i), agent_id=f"content-{i % 2}", agent_type="content",
            tenant_id="tenant-2", trace_id=f"trace-{i}", cpu_percent=10.0 + i, memory_percent=40.0,
            memory_mb=512.0 + i, response_time_ms=120.0, error_count=i % 3, queue_depth=i,
        )
        for i in range(n)
    ]


def alerts(n: int) -> list[Alert]:
    return [
        Alert(
            event_time=NOW, agent_id="budget-processor", agent_type="processor", tenant_id="tenant-1",
            trace_id=f"trace-{i}", alert_id=f"budget:tenant-1:{80 + 10 * i}", kind="budget",
            severity="critical" if i else "warning", state="firing", subject="tenant-1",
            message=f"tenant-1 spent {80 + 10 * i}% of its budget", value=80.0 + 10 * i, threshold=100.0,
            window_start=NOW - timedelta(hours=1) if i else None, window_end=NOW if i else None,
            first_seen=NOW, last_seen=NOW, details={"budget_usd": "100", "level": str(80 + 10 * i)} if i else {},
        )
        for i in range(n)
    ]


def windows(n: int) -> list[LlmWindow]:
    return [
        LlmWindow(
            event_time=NOW, agent_id=f"dev-{i}", agent_type="development", tenant_id="tenant-1", trace_id="t",
            provider="openai", model="gpt-4o", window_start=NOW - timedelta(minutes=1), window_end=NOW,
            calls=10 + i, errors=i, rate_limited=0, input_tokens=1000, output_tokens=200, cost_usd=0.25 * i,
            latency_p50_ms=400.0, latency_p95_ms=900.0, latency_p99_ms=1200.0 + i,
            latency_sketch='{"relative_accuracy":0.01,"zero_count":0.0,"bins":[[300,10.0]]}', closed_by="watermark",
        )
        for i in range(n)
    ]


def results(n: int) -> list[InferenceResult]:
    return [
        InferenceResult(
            event_time=NOW, agent_id=f"dev-{i}", agent_type="development", tenant_id="tenant-1", trace_id="t",
            correlation_id=f"corr-{i}", model="all-MiniLM-L6-v2", model_version="0.1.0+abc",
            embeddings=[[0.25, -0.5, 1.0], [0.125 * i, 0.0, -1.0]], queue_ms=1.5, compute_ms=12.0, error=None,
        )
        for i in range(n)
    ]


def scalar(settings: Settings, sql: str):
    return get_client(settings).query(sql.format(db=settings.clickhouse_database)).result_rows[0][0]


def rollup(settings: Settings) -> tuple:
    return get_client(settings).query(
        "SELECT countMerge(calls), sumMerge(errors), sumMerge(cost_usd_sum), sumMerge(input_tokens_sum), "
        f"quantilesMerge(0.5, 0.95, 0.99)(latency_ms_quantiles) FROM {settings.clickhouse_database}.llm_calls_1m"
    ).result_rows[0]


def expected_rollup(events: list[LlmCall], settings: Settings) -> tuple:
    # The quantiles of the same values computed over the event table: same function, same states.
    latency = scalar(settings, "SELECT quantiles(0.5, 0.95, 0.99)(latency_ms) FROM {db}.llm_calls")
    return (
        len(events), sum(e.status != "ok" for e in events), pytest.approx(sum(e.cost_usd for e in events)),
        sum(e.input_tokens for e in events), latency,
    )


def test_migrations_apply_once(sink, ch_settings):
    client = get_client(ch_settings)
    assert apply_migrations(client, ch_settings) == []
    recorded = client.query(
        f"SELECT name FROM {ch_settings.clickhouse_database}.schema_migrations ORDER BY version"
    ).result_rows
    assert [name for (name,) in recorded] == sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))


def test_changed_applied_migration_is_refused(ch_settings, tmp_path):
    client = get_client(ch_settings)
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    shipped = sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))
    assert apply_migrations(client, ch_settings, folder) == shipped
    assert apply_migrations(client, ch_settings, folder) == []

    (folder / "999_note.sql").write_text(
        "CREATE TABLE IF NOT EXISTS {db}.notes (id UInt32) ENGINE = MergeTree ORDER BY id;\n"
    )
    assert apply_migrations(client, ch_settings, folder) == ["999_note"]

    rollups = folder / "002_rollups.sql"
    rollups.write_text(rollups.read_text() + "\n-- an edit after the fact\n")
    with pytest.raises(ConfigError, match="002_rollups"):
        apply_migrations(client, ch_settings, folder)


def test_tables_have_order_partition_ttl_and_dedup_window(sink, ch_settings):
    for table in TABLES.values():
        ddl = scalar(ch_settings, f"SHOW CREATE TABLE {{db}}.{table}")
        assert "ENGINE = MergeTree" in ddl, table
        assert "PARTITION BY toYYYYMM(event_time)" in ddl, table
        assert "ORDER BY (agent_id, event_time)" in ddl, table
        assert "TTL event_time + toIntervalDay(30)" in ddl, table
        assert "non_replicated_deduplication_window = 10000" in ddl, table
    for table in ("llm_calls_1m", "task_events_1m"):
        ddl = scalar(ch_settings, f"SHOW CREATE TABLE {{db}}.{table}")
        assert "ENGINE = AggregatingMergeTree" in ddl, table
        assert "non_replicated_deduplication_window = 10000" in ddl, table


def test_same_batch_twice_is_stored_once_in_the_table_and_the_rollup(sink, ch_settings):
    events = llm_calls(200)
    batch = make_batch(events, partition=2, first=1000)
    sink.write(batch)
    sink.write(batch)

    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls") == 200
    assert scalar(ch_settings, "SELECT uniqExact(kafka_offset) FROM {db}.llm_calls") == 200
    assert rollup(ch_settings) == expected_rollup(events, ch_settings)


def test_a_rebuilt_batch_is_recognised_by_its_offsets_not_its_bytes(sink, ch_settings):
    # A worker upgraded between a crash and the replay may rebuild the rows differently; without
    # the token, ClickHouse would only drop a block with the very same bytes.
    events = llm_calls(50)
    batch = make_batch(events, partition=0, first=0)
    sink.write(batch)
    reordered = batch.rows.take(list(reversed(range(batch.rows.num_rows))))
    sink.write(SinkBatch(batch.table, batch.event, reordered, batch.ranges))

    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls") == 50
    assert rollup(ch_settings) == expected_rollup(events, ch_settings)


def test_two_batches_are_both_stored(sink, ch_settings):
    first, second = llm_calls(100), llm_calls(50, start=100)
    sink.write(make_batch(first, first=0))
    sink.write(make_batch(second, first=100))

    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls") == 150
    assert rollup(ch_settings) == expected_rollup(first + second, ch_settings)


def test_resume_points_follow_the_newest_batch_of_each_partition(sink, ch_settings):
    sink.write(make_batch(llm_calls(10), partition=0, first=0))
    sink.write(make_batch(llm_calls(10), partition=0, first=10))
    sink.write(make_batch(llm_calls(5), partition=1, first=40))
    sink.write(make_batch(task_events(4), partition=0, first=7))  # another topic, same partition number
    topic = PREFIX + LlmCall.TOPIC

    points = sink.resume_points(topic, [0, 1, 2])
    assert points == {0: ResumePoint(20), 1: ResumePoint(45)}
    assert sink.resume_points(PREFIX + TaskEvent.TOPIC, [0]) == {0: ResumePoint(11)}
    assert sink.resume_points(LlmCall.TOPIC, [0, 1]) == {}  # topic names are taken as given

    restarted = ClickHouseSink(ch_settings, group="another-group")
    restarted.setup()
    assert restarted.resume_points(topic, [0, 1, 2]) == points


def test_batch_of_dead_letters_only_is_recorded(sink, ch_settings):
    empty = make_batch(llm_calls(3), partition=0, first=0)
    empty = SinkBatch(empty.table, empty.event, empty.rows.slice(0, 0), (OffsetRange(PREFIX + LlmCall.TOPIC, 0, 0, 2),))
    sink.write(empty)

    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls") == 0
    assert sink.resume_points(PREFIX + LlmCall.TOPIC, [0]) == {0: ResumePoint(3)}


def test_crash_between_record_and_insert_replays_the_batch(sink, ch_settings, monkeypatch):
    events = llm_calls(30)
    batch = make_batch(events, partition=1, first=500)
    sink.write(make_batch(llm_calls(10), partition=1, first=490))

    def crash(*args, **kwargs):
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(get_client(ch_settings), "insert_arrow", crash)
        with pytest.raises(Crash):
            sink.write(batch)
    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls") == 10

    restarted = ClickHouseSink(ch_settings, group="g")
    restarted.setup()
    assert restarted.resume_points(PREFIX + LlmCall.TOPIC, [1]) == {1: ResumePoint(530, replay=(OffsetRange(PREFIX + LlmCall.TOPIC, 1, 500, 529),))}
    restarted.write(make_batch(events, partition=1, first=500))  # the loop rebuilds the same batch

    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls WHERE kafka_offset >= 500") == 30
    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls") == 40
    assert restarted.resume_points(PREFIX + LlmCall.TOPIC, [1]) == {1: ResumePoint(530)}


def test_a_batch_of_several_partitions_is_one_insert_and_is_replayed_whole(sink, ch_settings, monkeypatch):
    events = llm_calls(120)
    batch = combine([make_batch(events[40 * p:40 * (p + 1)], partition=p, first=100 * p) for p in range(3)])
    topic = PREFIX + LlmCall.TOPIC
    client = get_client(ch_settings)
    insert, insert_arrow = client.insert, client.insert_arrow
    event_inserts = []

    def crash_on_mark(table, data, *args, **kwargs):
        if table.endswith("ingest_batches") and data[0][5]:  # the written = true records
            raise Crash
        return insert(table, data, *args, **kwargs)

    def counted(table, *args, **kwargs):
        event_inserts.append(table)
        return insert_arrow(table, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(client, "insert", crash_on_mark)
        patch.setattr(client, "insert_arrow", counted)
        with pytest.raises(Crash):
            sink.write(batch)
    assert event_inserts == ["llm_calls"]  # one insert for the three partitions
    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls") == 120
    recorded = get_client(ch_settings).query(
        f"SELECT partition, first_offset, last_offset, rows, written FROM {ch_settings.clickhouse_database}"
        ".ingest_batches ORDER BY partition").result_rows
    assert recorded == [(p, 100 * p, 100 * p + 39, 40, False) for p in range(3)]

    # Whichever partition a worker resumes, it is told to write the whole batch again…
    points = sink.resume_points(topic, [0, 1, 2])
    assert points == {p: ResumePoint(100 * p + 40, replay=batch.ranges) for p in range(3)}
    assert sink.recorded(batch)
    assert not sink.recorded(combine([make_batch(events[:40], partition=0, first=0)]))
    # …and that write, by one worker or by each, adds nothing twice, rollups included.
    for _ in range(2):
        restarted = ClickHouseSink(ch_settings, group="another")
        restarted.setup()
        restarted.write(batch)
    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls") == 120
    assert rollup(ch_settings) == expected_rollup(events, ch_settings)
    assert sink.resume_points(topic, [0, 1, 2]) == {p: ResumePoint(100 * p + 40) for p in range(3)}


def test_crash_after_insert_before_mark_replays_without_duplicates(sink, ch_settings, monkeypatch):
    events = llm_calls(120)
    client = get_client(ch_settings)
    insert = client.insert

    def crash_on_mark(table, data, *args, **kwargs):
        if table.endswith("ingest_batches") and data[0][5]:  # the written = true record
            raise Crash
        return insert(table, data, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(client, "insert", crash_on_mark)
        with pytest.raises(Crash):
            sink.write(make_batch(events, partition=0, first=0))
    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls") == 120

    assert sink.resume_points(PREFIX + LlmCall.TOPIC, [0]) == {0: ResumePoint(120, replay=(OffsetRange(PREFIX + LlmCall.TOPIC, 0, 0, 119),))}
    sink.write(make_batch(events, partition=0, first=0))

    assert scalar(ch_settings, "SELECT count() FROM {db}.llm_calls") == 120
    assert rollup(ch_settings) == expected_rollup(events, ch_settings)
    assert sink.resume_points(PREFIX + LlmCall.TOPIC, [0]) == {0: ResumePoint(120)}


def test_rows_that_cannot_be_stored_are_a_terminal_error(sink, ch_settings):
    batch = make_batch(llm_calls(3), partition=0, first=0)
    bad = batch.rows.set_column(0, "event_id", pa.array(["not-a-uuid"] * 3))
    with pytest.raises(TerminalError) as raised:
        sink.write(SinkBatch(batch.table, batch.event, bad, batch.ranges))
    message = str(raised.value)
    assert f"{ch_settings.clickhouse_database}.llm_calls" in message
    assert batch.ranges[0].token in message


def test_every_event_type_reads_back_exactly(sink, ch_settings):
    tasks, calls, health, raised, closed = task_events(40), llm_calls(60), telemetry(25), alerts(3), windows(2)
    answered = results(2)
    for offset, events in enumerate((tasks, calls, health, raised, closed, answered)):
        sink.write(make_batch(events, partition=offset, first=100 * offset))

    client = get_client(ch_settings)
    db = ch_settings.clickhouse_database
    counts = {table: scalar(ch_settings, f"SELECT count() FROM {{db}}.{table}") for table in TABLES.values()}
    assert counts == {"task_events": 40, "llm_calls": 60, "telemetry": 25, "alerts": 3, "llm_windows": 2,
                      "inference_results": 2}
    # One vector per input, as Float32, for the knowledge store.
    assert client.query(f"SELECT correlation_id, input_index, embedding FROM {db}.inference_vectors "
                        "ORDER BY correlation_id, input_index").result_rows == [
        ("corr-0", 0, [0.25, -0.5, 1.0]), ("corr-0", 1, [0.0, 0.0, -1.0]),
        ("corr-1", 0, [0.25, -0.5, 1.0]), ("corr-1", 1, [0.125, 0.0, -1.0])]
    assert client.query(f"SELECT agent_id, calls, cost_usd, latency_p99_ms, closed_by FROM {db}.llm_windows "
                        "ORDER BY agent_id").result_rows == [
        (w.agent_id, w.calls, w.cost_usd, w.latency_p99_ms, w.closed_by) for w in closed]
    assert scalar(ch_settings, "SELECT sum(cost_usd) FROM {db}.task_events") == pytest.approx(
        sum(e.cost_usd for e in tasks)
    )
    assert scalar(ch_settings, "SELECT sum(cost_usd) FROM {db}.llm_calls") == pytest.approx(
        sum(e.cost_usd for e in calls)
    )
    assert scalar(ch_settings, "SELECT sum(queue_depth) FROM {db}.telemetry") == sum(e.queue_depth for e in health)
    assert scalar(ch_settings, "SELECT countIf(region IS NULL) FROM {db}.task_events") == 20

    got = client.query(
        f"SELECT alert_id, details, window_start IS NULL, toString(event_id) FROM {db}.alerts ORDER BY value"
    ).result_rows
    assert [(a, d, bool(w), e) for a, d, w, e in got] == [
        (a.alert_id, a.details, a.window_start is None, a.event_id) for a in raised
    ]

    completed = client.query(
        "SELECT countMerge(events), sumMerge(duration_ms_sum), avgMerge(quality_score_avg) "
        f"FROM {db}.task_events_1m WHERE status = 'completed'"
    ).result_rows[0]
    done = [e for e in tasks if e.status == "completed"]
    assert completed == (len(done), sum(e.duration_ms for e in done), pytest.approx(0.9))


def test_unreachable_server_is_transient_and_keeps_the_password_out(stack_overrides, unique):
    # No chdb:// here: the DSN names a server on a port nothing listens on.
    down = load_settings(**{**stack_overrides, "clickhouse_dsn": f"http://ezstream:s3cret-pw@127.0.0.1:{free_port()}"})
    with pytest.raises(TransientError) as raised:
        ClickHouseSink(down, group=f"g.{unique}").setup()
    assert "s3cret-pw" not in str(raised.value)
    assert "ezstream:***@127.0.0.1" in str(raised.value)
