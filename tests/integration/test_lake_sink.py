"""The lake sink on a real local folder and on the test stack's MinIO: exactly-once appends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from connectors.errors import TerminalError, TransientError
from connectors.kafka.codec import default_codec
from connectors.lake import storage_options, table_uri
from connectors.lake.query import connect, lake_query, list_tables, register_tables
from connectors.lake.sink import LakeSink, app_id, lake_schema
from connectors.settings import Settings, load_settings
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, ResumePoint, SinkBatch
from tests.integration.apps.lake_writer import TOPIC, batch, cost

REPO = Path(__file__).resolve().parents[2]
TABLE = "llm_calls"


def s3_lake(stack, stack_overrides, prefix: str, **more) -> Settings:
    """Settings with the lake under ``prefix`` of the test stack's MinIO bucket."""
    return load_settings(**{
        **stack_overrides,
        "lake_uri": f"s3://{stack.settings.minio_bucket}/{prefix}",
        "s3_endpoint": stack.minio.endpoint,
        "s3_access_key_id": stack.settings.minio_root_user,
        "s3_secret_access_key": stack.settings.minio_root_password.get_secret_value(),
        **more,
    })


@pytest.fixture(params=["file", "s3"])
def lake(request, stack, stack_overrides, tmp_path, unique) -> Settings:
    """A lake of this test's own: a local folder, or a prefix in the MinIO bucket."""
    if request.param == "file":
        return load_settings(**{**stack_overrides, "lake_uri": f"file://{tmp_path}/lake"})
    return s3_lake(stack, stack_overrides, unique)


@pytest.fixture
def sink(lake, unique):
    sink = LakeSink(lake, group=f"g.{unique}")
    sink.setup()
    yield sink
    sink.close()


def read(lake: Settings, table: str = TABLE) -> DeltaTable:
    return DeltaTable(table_uri(lake, table), storage_options=storage_options(lake))


def offsets(delta: DeltaTable) -> list[tuple[int, int]]:
    """(partition, offset) of every row, sorted: a duplicate shows up twice."""
    rows = pa.table(delta.to_pyarrow_table(columns=[PARTITION_COLUMN, OFFSET_COLUMN]))
    return sorted(zip(rows[PARTITION_COLUMN].to_pylist(), rows[OFFSET_COLUMN].to_pylist()))


def expected_cost(pairs) -> float:
    return sum(cost(p, o) for p, o in pairs)


def test_write_reads_back_partitioned_by_event_date(lake, sink):
    sink.write(batch({0: range(0, 40), 2: range(100, 130)}))

    delta = read(lake)
    rows = pa.table(delta.to_pyarrow_table())
    wanted = [(0, o) for o in range(40)] + [(2, o) for o in range(100, 130)]
    assert offsets(delta) == wanted
    assert pc.sum(rows["cost_usd"]).as_py() == pytest.approx(expected_cost(wanted))
    assert delta.metadata().partition_columns == ["event_date"]
    assert rows.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    # event_date is the UTC date of event_time: 23:00 on the 25th, 00:00 on the 26th.
    dates = pc.cast(pc.cast(rows["event_time"], pa.timestamp("us")), pa.date32())
    assert rows["event_date"].to_pylist() == dates.to_pylist()
    files = pa.table(delta.get_add_actions(flatten=True))
    assert {path.split("/")[0] for path in files["path"].to_pylist()} == {
        "event_date=2026-11-25", "event_date=2026-11-26",
    }
    assert len(files) == 2  # one commit of both partitions: one file per date
    assert [h["operation"] for h in delta.history()] == ["WRITE", "CREATE TABLE"]


def test_same_batch_twice_is_written_once(lake, sink):
    first = batch({0: range(0, 10), 1: range(0, 10)})
    sink.write(first)
    version = read(lake).version()
    sink.write(first)
    LakeSink(lake, sink.group).write(first)  # a restarted worker replaying it

    delta = read(lake)
    assert delta.version() == version  # nothing committed
    assert offsets(delta) == [(p, o) for p in (0, 1) for o in range(10)]


def test_resume_points_follow_the_commits(lake, sink):
    assert sink.resume_points(TOPIC, [0, 1, 2]) == {}
    sink.write(batch({0: range(0, 10), 1: range(0, 5)}))
    sink.write(batch({0: range(10, 20)}))

    expected = {0: ResumePoint(20), 1: ResumePoint(5)}
    assert sink.resume_points(TOPIC, [0, 1, 2]) == expected
    fresh = LakeSink(lake, sink.group)
    fresh.setup()
    assert fresh.resume_points(TOPIC, [0, 1, 2]) == expected
    assert LakeSink(lake, "another-group").resume_points(TOPIC, [0, 1, 2]) == {}


def test_batch_without_rows_still_advances_the_partition(lake, sink):
    sink.write(batch({0: range(0, 10)}))
    dead_letters = batch({0: range(10, 20), 1: range(0, 3)}, dlq={0: range(10, 20), 1: range(0, 3)})
    assert dead_letters.rows.num_rows == 0
    sink.write(dead_letters)

    assert sink.resume_points(TOPIC, [0, 1]) == {0: ResumePoint(20), 1: ResumePoint(3)}
    delta = read(lake)
    assert offsets(delta) == [(0, o) for o in range(10)]
    assert delta.history(1)[0]["operationMetrics"]["num_added_files"] == 0


def test_batch_with_some_dead_letters(lake, sink):
    sink.write(batch({0: range(0, 10)}, dlq={0: range(3, 5)}))
    assert sink.resume_points(TOPIC, [0]) == {0: ResumePoint(10)}
    assert offsets(read(lake)) == [(0, o) for o in range(10) if o not in (3, 4)]


def test_overlapping_batch_writes_only_new_offsets(lake, sink):
    sink.write(batch({0: range(0, 10), 1: range(0, 10)}))
    # Partition 0 overlaps (5..14), partition 1 was fully written: only 0/10..14 is new.
    sink.write(batch({0: range(5, 15), 1: range(0, 10)}))

    delta = read(lake)
    wanted = [(0, o) for o in range(15)] + [(1, o) for o in range(10)]
    assert offsets(delta) == wanted
    assert delta.history(1)[0]["operationMetrics"]["num_added_rows"] == 5
    assert delta.transaction_version(app_id(sink.group, TOPIC, 0)) == 14
    assert delta.transaction_version(app_id(sink.group, TOPIC, 1)) == 9


def test_stale_writer_loses_the_race_and_writes_nothing_twice(lake, sink):
    """A zombie whose snapshot predates another worker's commit of the same offsets."""
    sink.write(batch({0: range(0, 5)}))
    other = LakeSink(lake, sink.group)
    other.write(batch({0: range(5, 10)}))

    # `sink` still holds the snapshot before `other`'s commit: delta-rs' conflict checker fails
    # its commit (same app id), the sink reloads and finds nothing left to write.
    sink.write(batch({0: range(5, 12)}))

    delta = read(lake)
    assert offsets(delta) == [(0, o) for o in range(12)]
    assert delta.history(1)[0]["operationMetrics"]["num_added_rows"] == 2
    assert delta.transaction_version(app_id(sink.group, TOPIC, 0)) == 11


def test_tables_take_new_columns_and_rows_without_them(lake, sink):
    """Schema evolution: a newer reader version adds a column; an older worker's rows lack one."""
    calls = lake_schema(default_codec().arrow_schema("llm_call"))
    DeltaTable.create(table_uri(lake, TABLE), calls.remove(calls.get_field_index("region")),
                      partition_by=["event_date"], storage_options=storage_options(lake))
    tasks = lake_schema(default_codec().arrow_schema("task_event"))
    DeltaTable.create(table_uri(lake, "task_events"), tasks.append(pa.field("added_later", pa.string())),
                      partition_by=["event_date"], storage_options=storage_options(lake))

    sink.write(batch({0: range(0, 5)}))
    sink.write(batch({0: range(0, 5)}, event="task_event"))

    assert "region" in pa.schema(read(lake).schema().to_arrow()).names
    assert offsets(read(lake)) == [(0, o) for o in range(5)]
    tasks_back = pa.table(read(lake, "task_events").to_pyarrow_table())
    assert tasks_back["added_later"].null_count == tasks_back.num_rows == 5


def test_rows_that_do_not_match_the_event_are_terminal(lake, sink):
    good = batch({0: range(0, 3)})
    bad = SinkBatch(good.table, good.event, good.rows.drop_columns(["cost_usd"]), good.ranges)
    with pytest.raises(TerminalError, match=r"llm_calls.*agent\.llm_calls:0:0:2.*missing cost_usd"):
        sink.write(bad)
    tokens = good.rows.schema.get_field_index("input_tokens")
    retyped = good.rows.set_column(tokens, "input_tokens", pc.cast(good.rows["input_tokens"], pa.string()))
    with pytest.raises(TerminalError, match="input_tokens is string, expected int32"):
        sink.write(SinkBatch(good.table, good.event, retyped, good.ranges))


def test_unreachable_store_is_transient_and_keeps_the_secret(stack, stack_overrides, unique):
    from infra.local.net import free_port

    down = s3_lake(stack, stack_overrides, unique, s3_endpoint=f"http://127.0.0.1:{free_port()}")
    sink = LakeSink(down, group=f"g.{unique}")
    secret = down.s3_secret_access_key.get_secret_value()
    with pytest.raises(TransientError) as setup_error:
        sink.setup()
    with pytest.raises(TransientError) as write_error:
        sink.write(batch({0: range(0, 3)}))
    with pytest.raises(TransientError) as list_error:
        list_tables(down)
    for error in (setup_error.value, write_error.value, list_error.value):
        assert secret not in str(error)
    assert "agent.llm_calls:0:0:2" in str(write_error.value)
    assert f"s3://{stack.settings.minio_bucket}/{unique}/llm_calls" in str(write_error.value)


@pytest.mark.parametrize("where", ["file", "s3"])
def test_two_processes_commit_to_one_table(where, stack, stack_overrides, tmp_path, unique):
    """Two worker processes append different partitions to one (not yet created) table at once."""
    if where == "file":
        lake = load_settings(**{**stack_overrides, "lake_uri": f"file://{tmp_path}/lake"})
    else:
        lake = s3_lake(stack, stack_overrides, unique)
    group, commits, rows = f"g.{unique}", 15, 20
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "EZ_HOME": str(lake.home),
        "EZ_LAKE_URI": lake.lake_uri,
        "EZ_S3_ENDPOINT": lake.s3_endpoint or "",
        "EZ_S3_ACCESS_KEY_ID": lake.s3_access_key_id or "",
        "EZ_S3_SECRET_ACCESS_KEY": lake.s3_secret_access_key.get_secret_value() if lake.s3_secret_access_key else "",
    }
    start_at = time.time() + 3  # both interpreters are up by then, so their commits interleave
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.apps.lake_writer", group, str(p), str(commits), str(rows),
             str(start_at)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for p in (3, 4)
    ]
    for writer in writers:
        output, _ = writer.communicate(timeout=300)
        assert writer.returncode == 0, output.decode(errors="replace")[-3000:]

    delta = read(lake)
    assert offsets(delta) == [(p, o) for p in (3, 4) for o in range(commits * rows)]
    for p in (3, 4):
        assert delta.transaction_version(app_id(group, TOPIC, p)) == commits * rows - 1
    operations = [h["operation"] for h in delta.history()]
    assert operations.count("WRITE") == 2 * commits
    assert operations.count("CREATE TABLE") == 1
    assert delta.version() == 2 * commits  # version 0 is the creation: no commit lost or doubled
    retried = sum(h.get("operationMetrics", {}).get("num_retries", 0) for h in delta.history())
    print(f"{where}: {2 * commits} commits from two processes, {retried} commit retries")


def test_duckdb_views_agree_with_the_delta_reader(lake, sink):
    sink.write(batch({0: range(0, 50), 1: range(0, 30)}))
    sink.write(batch({0: range(50, 60)}, dlq={0: range(55, 60)}))
    sink.write(batch({0: range(0, 40)}, event="task_event"))

    calls = pa.table(read(lake).to_pyarrow_table())
    tasks = pa.table(read(lake, "task_events").to_pyarrow_table())
    con = connect(lake)
    assert register_tables(con, lake) == [TABLE, "task_events"]
    count, total, dates = con.execute(
        "SELECT count(*), sum(cost_usd), count(DISTINCT event_date) FROM llm_calls"
    ).fetchone()
    assert count == calls.num_rows == 85
    assert total == pytest.approx(pc.sum(calls["cost_usd"]).as_py())
    assert dates == 2

    by_status = con.execute("""
        SELECT t.status, count(*), sum(c.cost_usd)
        FROM llm_calls c JOIN task_events t USING (task_id)
        GROUP BY t.status ORDER BY t.status
    """).fetchall()
    joined = calls.select(["task_id", "cost_usd"]).join(
        tasks.select(["task_id", "status"]), "task_id", join_type="inner"
    )
    expected = joined.group_by("status").aggregate([("cost_usd", "count"), ("cost_usd", "sum")]).sort_by("status")
    assert [s for s, _, _ in by_status] == expected["status"].to_pylist() == ["completed", "failed"]
    assert [n for _, n, _ in by_status] == expected["cost_usd_count"].to_pylist()
    assert [c for _, _, c in by_status] == pytest.approx(expected["cost_usd_sum"].to_pylist())

    columns, rows = lake_query(lake, "SELECT kafka_partition, max(kafka_offset) FROM llm_calls GROUP BY 1 ORDER BY 1")
    assert columns == ["kafka_partition", "max(kafka_offset)"]
    assert rows == [(0, 54), (1, 29)]
