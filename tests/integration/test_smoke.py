"""Smoke tests: each real service of the local stack answers and round-trips data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer

from connectors.clickhouse import get_client
from connectors.kafka import client_config
from connectors.lake import storage_options, table_uri
from connectors.lake.query import connect as duckdb_connect
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]


def consume(settings, topic: str, group: str, expected: int, timeout_s: float = 60, alive=None) -> list:
    """Read ``expected`` messages of ``topic`` from the beginning with a fresh group.

    ``alive``, when given, is checked on each poll and fails the wait at once when it raises.
    """
    consumer = Consumer(client_config(settings, **{
        "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
    }))
    consumer.subscribe([topic])
    messages = []
    try:
        def got_all():
            if alive is not None:
                alive()
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                assert msg.error() is None, msg.error()
                messages.append(msg)
            return len(messages) >= expected

        wait_for(got_all, timeout_s, f"{expected} messages on {topic} (got {len(messages)})", interval_s=0)
    finally:
        consumer.close()
    return messages


def test_kafka_produce_consume_round_trip(settings, make_topic, unique):
    topic = make_topic("roundtrip", partitions=3)
    producer = Producer(client_config(settings, **{"enable.idempotence": True, "acks": "all"}))
    sent = {f"agent-{i % 7}".encode() + b"|" + str(i).encode(): f"event-{i}".encode() for i in range(200)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    got = consume(settings, topic, f"g.{unique}", expected=len(sent))
    assert {m.key(): m.value() for m in got} == sent
    assert len(got) == len(sent)  # nothing duplicated
    assert {m.partition() for m in got} == {0, 1, 2}


def test_faust_agent_consumes_and_produces(settings, make_topic, unique):
    source, sink = make_topic("in"), make_topic("out")
    env = {
        **os.environ,
        "EZ_HOME": str(settings.home),
        "EZ_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "EZ_TEST_APP_ID": f"app.{unique}",
        "EZ_TEST_IN": source,
        "EZ_TEST_OUT": sink,
        "PYTHONPATH": str(REPO),
    }
    log = settings.logs_dir / f"faust-{unique}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.apps.echo", "worker", "-l", "info"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    def worker_alive():
        assert worker.poll() is None, f"Faust worker exited early:\n{log.read_text()[-3000:]}"

    try:
        producer = Producer(client_config(settings))
        for i in range(50):
            producer.produce(source, key=f"k{i}".encode(), value=f"hello-{i}".encode())
        assert producer.flush(30) == 0

        got = consume(settings, sink, f"g.{unique}", expected=50, timeout_s=120, alive=worker_alive)
        assert sorted(m.value() for m in got) == sorted(f"HELLO-{i}".encode() for i in range(50))
        assert {m.key() for m in got} == {f"k{i}".encode() for i in range(50)}
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def test_minio_put_get_list(stack, unique):
    s3 = stack.minio.client()
    bucket = stack.settings.minio_bucket
    assert bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    body = os.urandom(256 * 1024)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"{unique}/object-{i}.bin", Body=body)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{unique}/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"{unique}/object-{i}.bin" for i in range(3)]
    assert all(o["Size"] == len(body) for o in listed)
    assert s3.get_object(Bucket=bucket, Key=f"{unique}/object-1.bin")["Body"].read() == body


def test_clickhouse_embedded_create_insert_query(settings, unique):
    client = get_client(settings)
    table = "smoke_" + unique.replace("-", "_")
    client.command(
        f"CREATE TABLE {table} (agent_id String, cost_usd Float64, tokens UInt32) "
        "ENGINE = MergeTree ORDER BY agent_id"
    )
    data = pa.table({
        "agent_id": [f"agent-{i % 5}" for i in range(1000)],
        "cost_usd": [0.001 * i for i in range(1000)],
        "tokens": pa.array(range(1000), pa.uint32()),
    })
    client.insert_arrow(table, data)
    count, cost, tokens = client.query(f"SELECT count(), sum(cost_usd), sum(tokens) FROM {table}").result_rows[0]
    assert count == 1000
    assert cost == pytest.approx(sum(0.001 * i for i in range(1000)))
    assert tokens == sum(range(1000))
    back = client.query_arrow(f"SELECT agent_id, count() AS n FROM {table} GROUP BY agent_id ORDER BY agent_id")
    assert back.column("n").to_pylist() == [200] * 5


def _events(n: int) -> pa.Table:
    return pa.table({
        "event_id": [f"e-{i}" for i in range(n)],
        "agent_id": [f"agent-{i % 4}" for i in range(n)],
        "cost_usd": [0.5 * i for i in range(n)],
        "event_date": ["2026-11-25" if i % 2 else "2026-11-26" for i in range(n)],
    })


@pytest.mark.parametrize("where", ["file", "s3"])
def test_delta_append_read_and_duckdb(where, settings, s3_settings, unique):
    from deltalake import DeltaTable, write_deltalake

    lake = settings if where == "file" else s3_settings
    uri = table_uri(lake, f"smoke_{unique.replace('-', '_')}")
    options = storage_options(lake)
    write_deltalake(uri, _events(100), partition_by=["event_date"], storage_options=options)
    write_deltalake(uri, _events(50), mode="append", partition_by=["event_date"], storage_options=options)

    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 1
    data = table.to_pyarrow_table()
    assert data.num_rows == 150
    assert sum(data.column("cost_usd").to_pylist()) == pytest.approx(0.5 * (sum(range(100)) + sum(range(50))))

    con = duckdb_connect(lake)
    rows, cost, dates = con.execute(
        f"SELECT count(*), sum(cost_usd), count(DISTINCT event_date) FROM delta_scan('{uri}')"
    ).fetchone()
    assert (rows, dates) == (150, 2)
    assert cost == pytest.approx(0.5 * (sum(range(100)) + sum(range(50))))
