"""``ezstream sql`` is read-only: through a worker's query endpoint, the path ``query()`` takes.

One worker with the clickhouse role holds the embedded engine (a chDB folder of this module's
own) after writing some simulated events; every statement below goes to its endpoint. Refused
statements must say why and change nothing; the project's own queries must still work.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest

from connectors.clickhouse import task_queries
from connectors.errors import TerminalError
from connectors.kafka.topics import catalogue, ensure_topics
from connectors.settings import Settings, load_settings
from connectors.sink import TABLES
from streams.demo import SUMMARY
from streams.operator_status import last_clickhouse_writes
from streams.query_server import announcement, query, query_worker
from tests.conftest import wait_for
from tests.integration.pipeline import REPO, Truth, Worker, clickhouse_totals, expected, produce_simulated, settings_env


@pytest.fixture(scope="module")
def served(stack, stack_overrides, tmp_path_factory):
    """``(settings, truth)``: settings that reach the running worker's endpoint, and what it wrote."""
    tmp = tmp_path_factory.mktemp("readonly")
    settings = load_settings(**{
        **stack_overrides,
        "topic_prefix": f"ro.{uuid.uuid4().hex[:8]}.",
        "topic_partitions": 2,
        "lake_uri": f"file://{tmp}/lake",
        "clickhouse_dsn": f"chdb://{tmp}/clickhouse",
        "clickhouse_database": "ez_" + uuid.uuid4().hex[:8],
        "clickhouse_flush_seconds": 0.5,
    })
    ensure_topics(settings, catalogue(settings))
    worker = Worker(settings, "clickhouse", tmp / "worker").start()
    try:
        at = settings.model_copy(update={"home": worker.home})
        # Never the engine in this process: every query below must be the worker's.
        assert query_worker(at, "SELECT currentDatabase()")[1] == [[at.clickhouse_database]]
        truth = Truth()
        produce_simulated(settings, 40, seed=11, truth=truth)
        want = expected(truth)
        wait_for(lambda: clickhouse_totals(settings, worker) == want, 90, "the events in ClickHouse", interval_s=0.5)
        yield at, truth
    finally:
        worker.stop()


def snapshot(at: Settings) -> dict:
    """The database's tables and the rows of each written one, ``ingest_batches`` included."""
    db = at.clickhouse_database
    _, tables = query(at, f"SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name")
    counts = {t: query(at, f"SELECT count() FROM {db}.{t}")[1][0][0] for t in ("ingest_batches", *TABLES.values())}
    _, databases = query(at, "SELECT name FROM system.databases ORDER BY name")
    return {"tables": tables, "counts": counts, "databases": databases}


REFUSED = [
    ("CREATE TABLE {db}.evil (x UInt8) ENGINE = Memory", "CREATE is not allowed"),
    ("CREATE DATABASE evil", "CREATE is not allowed"),
    ("DROP TABLE {db}.llm_calls", "DROP is not allowed"),
    ("INSERT INTO {db}.ingest_batches (topic, partition, first_offset, last_offset, rows, written, consumer_group)"
     " VALUES ('x', 0, 0, 99, 100, true, 'g')", "INSERT is not allowed"),
    ("ALTER TABLE {db}.ingest_batches DELETE WHERE 1", "ALTER is not allowed"),
    ("TRUNCATE TABLE {db}.llm_calls", "TRUNCATE is not allowed"),
    ("SET readonly = 0", "SET is not allowed"),
    ("KILL QUERY WHERE 1", "KILL is not allowed"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "table function file() is not allowed"),
    ("SELECT * FROM file('/proc/self/environ', 'LineAsString')", "table function file() is not allowed"),
    ("SELECT file('/proc/self/environ')", "file() reaches outside the database"),
    ("DESCRIBE file('/etc/passwd')", "table function file() is not allowed"),
    ("SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')", "table function url() is not allowed"),
    ("SELECT * FROM remote('127.0.0.1', system.one)", "table function remote() is not allowed"),
    ("SELECT * FROM cluster('default', system.one)", "table function cluster() is not allowed"),
    ("SELECT * FROM python(settings)", "table function python() is not allowed"),
    # Tricks: comments, case, quoting, nesting, a second statement, settings, output clauses.
    ("/* just a select */ DrOp TaBlE {db}.llm_calls -- SELECT", "DROP is not allowed"),
    ("select count() from {db}.llm_calls; DROP TABLE {db}.llm_calls", "one statement at a time"),
    ("SELECT 1;\nINSERT INTO {db}.ingest_batches (topic) VALUES ('x')", "one statement at a time"),
    ("SELECT * FROM FiLe('/etc/passwd', 'LineAsString')", "table function FiLe() is not allowed"),
    ("SELECT `file`('/etc/passwd')", "file() reaches outside the database"),
    ("SELECT count() FROM {db}.llm_calls WHERE provider IN (SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString'))",
     "table function url() is not allowed"),
    ("SELECT 1 IN url('http://127.0.0.1:1/', 'LineAsString')", "url() reaches outside the database"),
    ("SELECT * FROM view(SELECT * FROM file('/etc/passwd', 'LineAsString'))", "table function file() is not allowed"),
    ("SELECT 1 SETTINGS readonly = 0", "readonly mode"),
    ("SELECT 1 INTO OUTFILE '{home}/leak.txt'", "INTO OUTFILE is not allowed"),
    ("EXPLAIN AST CREATE TABLE {db}.evil (x UInt8) ENGINE = Memory", "EXPLAIN of a CreateQuery statement is not allowed"),
    ("SELECT 1 FORMAT JSON", "FORMAT clause is not allowed"),
]


@pytest.mark.parametrize(("sql", "why"), REFUSED, ids=[sql[:48] for sql, _ in REFUSED])
def test_a_statement_that_is_not_a_plain_read_is_refused_and_changes_nothing(served, sql, why):
    at, _ = served
    before = snapshot(at)
    with pytest.raises(TerminalError, match=re.escape(why)) as refused:
        query(at, sql.format(db=at.clickhouse_database, home=at.home))
    message = str(refused.value)
    assert "expected a JSON body" not in message
    assert "root:" not in message and "PATH=" not in message and "EZ_" not in message  # no file content
    assert snapshot(at) == before
    assert not (at.home / "leak.txt").exists()


def test_the_projects_own_queries_still_work(served):
    at, truth = served
    db = at.clickhouse_database
    for _, sql in SUMMARY:
        query(at, sql.format(db=db))
    for sql in (task_queries.stuck_tasks(db), task_queries.orphaned_tasks(db, 60),
                task_queries.queue_wait_percentiles(db, "now() - INTERVAL 1 DAY"),
                task_queries.cost_per_successful_task(db)):
        query(at, sql)
    assert last_clickhouse_writes(at)  # operator status: the latest batch per topic
    calls = truth.count["llm_calls"]
    assert query(at, f"SELECT count() FROM {db}.llm_calls")[1] == [[calls]]
    # Unqualified names, comments and a trailing semicolon are fine; so are SHOW, DESCRIBE,
    # EXPLAIN, WITH and the allowed table functions.
    assert query(at, "-- how many\nSELECT count() FROM llm_calls /* all of them */;  ")[1] == [[calls]]
    assert ["llm_calls"] in query(at, "SHOW TABLES")[1]
    assert ["cost_usd", "Float64"] in [row[:2] for row in query(at, "DESCRIBE TABLE llm_calls")[1]]
    assert query(at, "EXPLAIN SELECT count() FROM llm_calls")[1]
    assert query(at, "WITH 2 AS two SELECT two * number FROM numbers(3)")[1] == [[0], [2], [4]]
    assert query(at, "SELECT * FROM (SELECT 1 SETTINGS readonly = 0)")[1] == [[1]]


def test_a_value_python_cannot_hold_comes_back_as_text(served):
    at, truth = served
    db = at.clickhouse_database
    # A DateTime64 past the year 9999: ClickHouse holds it, Python's datetime cannot.
    far = f"SELECT reinterpret(toInt64(2534023008000), 'DateTime64(0)') AS far, count() AS n FROM {db}.llm_calls"
    columns, rows = query(at, far)
    assert columns == ["far", "n"]
    assert rows == [["9999-12-31 23:59:59", truth.count["llm_calls"]]]

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("EZ_", "AWS_"))},
           **settings_env(at), "EZ_HOME": str(at.home), "PYTHONPATH": str(REPO)}

    def cli(sql: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams.cli", "sql", sql, "--format", "json"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    shown = cli(far)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == [{"far": "9999-12-31 23:59:59", "n": truth.count["llm_calls"]}]
    refused = cli(f"DROP TABLE {db}.llm_calls")
    assert refused.returncode == 2
    assert "error: ezstream sql is read-only: DROP is not allowed" in refused.stderr


def test_a_bad_request_body_and_a_failed_query_are_told_apart(served):
    at, _ = served
    info = json.loads(announcement(at).read_text())

    def post(body: bytes) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{info['port']}/query", data=body,
                                         headers={"Authorization": f"Bearer {info['token']}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())["error"]

    assert post(b"not json") == (400, "expected a JSON body with 'sql'")
    assert post(b'{"query": "SELECT 1"}') == (400, "expected a JSON body with 'sql'")
    status, error = post(b'{"sql": "SELECT no_such_column FROM llm_calls"}')
    assert status == 400 and error.startswith("ClickHouse rejected the query") and "no_such_column" in error
    assert post(b'{"sql": "SELECT 1 AS one"}') == (200, {"columns": ["one"], "rows": [[1]]})


def test_the_announcement_is_for_its_owner_only(served):
    at, _ = served
    path = announcement(at)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(json.loads(path.read_text())) == {"pid", "port", "token", "dsn"}
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")] == []  # no temporary left
