"""Every DAG run end to end (``airflow dags test`` in Airflow's own virtualenv) on seeded data.

The lake is a folder or the test stack's MinIO; ClickHouse is an embedded engine in a folder of
the test's own, opened only by the DAG run and by ``airflow_seed`` subprocesses (the test process
holds the session's engine already).
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from pydantic import SecretStr

from connectors.batch.lake import BUDGET_TABLE, COST_TABLE
from connectors.lake import storage_options, table_uri
from connectors.settings import Settings
from tests.integration.airflow_harness import AirflowCli, chdb
from tests.integration.airflow_seed import seed

DAY = date(2026, 11, 20)
START = datetime(2026, 11, 20, 8, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def cli(settings, tmp_path_factory) -> AirflowCli:
    """Airflow's CLI on a metadata database of this module's."""
    return AirflowCli(settings, tmp_path_factory.mktemp("airflow-home"))


@pytest.fixture
def dag_settings(settings, tmp_path, unique) -> Settings:
    """A lake folder and an embedded ClickHouse of this test's own."""
    return settings.model_copy(update={
        "lake_uri": f"file://{tmp_path / 'lake'}",
        "clickhouse_dsn": SecretStr(f"chdb://{tmp_path / 'clickhouse'}"),
        "clickhouse_database": "ez_" + unique.replace("-", "_"),
    })


def lake_folder(settings: Settings) -> Path:
    return Path(settings.lake_uri.removeprefix("file://"))


def lake_table(settings: Settings, table: str, version: int | None = None) -> pa.Table:
    delta = DeltaTable(table_uri(settings, table), storage_options=storage_options(settings), version=version)
    return delta.to_pyarrow_table()


def sorted_rows(rows: pa.Table) -> pa.Table:
    return rows.sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])


def lake_hour(settings: Settings, table: str, start: datetime, end: datetime) -> tuple[int, float, int]:
    rows = lake_table(settings, table)
    time = rows["event_time"]
    rows = rows.filter(pc.and_(pc.greater_equal(time, pa.scalar(start, time.type)), pc.less(time, pa.scalar(end, time.type))))
    cost = (pc.sum(rows["cost_usd"]).as_py() or 0.0) if "cost_usd" in rows.column_names else 0.0
    return rows.num_rows, round(cost, 6), len(set(rows["event_id"].to_pylist()))


def clickhouse_hour(settings: Settings, table: str, start: datetime, end: datetime) -> tuple[int, float, int]:
    cost = "sum(cost_usd)" if table in ("task_events", "llm_calls") else "0"
    db = settings.clickhouse_database
    [[n, total, ids]] = chdb(settings, "sql", f"SELECT count(), {cost}, uniqExact(event_id) FROM {db}.{table} "
                             f"WHERE event_time >= '{start:%Y-%m-%d %H:%M:%S}' AND event_time < '{end:%Y-%m-%d %H:%M:%S}'")
    return int(n), round(float(total), 6), int(ids)


def test_lake_maintenance_compacts_files_and_keeps_data(cli, s3_settings, unique):
    settings = s3_settings.model_copy(update={"lake_uri": f"{s3_settings.lake_uri}-{unique}"})
    tables = ("task_events", "llm_calls", "telemetry")
    seed(settings, START, 1500, seed_=11, splits=6)

    def table(name: str) -> DeltaTable:
        return DeltaTable(table_uri(settings, name), storage_options=storage_options(settings))

    before = {t: sorted_rows(lake_table(settings, t)) for t in tables}
    versions = {t: table(t).version() for t in tables}
    assert {t: len(table(t).file_uris()) for t in tables} == dict.fromkeys(tables, 6)

    # The hour 08:00-09:00 of a day still being written: its small files are bin-packed.
    output = cli.dags_test("lake_maintenance", START + timedelta(hours=1), settings)
    assert "compact task_events 2026-11-20: 6 files -> 1" in output
    for name in tables:
        assert len(table(name).file_uris()) == 1, name
        assert sorted_rows(table(name).to_pyarrow_table()).equals(before[name]), f"{name} changed by compaction"
        # Readers of the version before compaction still find every file (vacuum keeps them).
        assert sorted_rows(lake_table(settings, name, versions[name])).equals(before[name])

    # A rerun of the same hour finds nothing to do.
    again = cli.dags_test("lake_maintenance", START + timedelta(hours=1), settings)
    assert "files -> " not in again
    assert {t: table(t).version() for t in tables} == {t: v + 1 for t, v in versions.items()}

    # The run whose hour ends the day z-orders it; a late batch's file goes into it too.
    seed(settings, START, 300, seed_=19, splits=1, first_offset=1_000_000)
    late = {t: sorted_rows(lake_table(settings, t)) for t in tables}
    output = cli.dags_test("lake_maintenance", datetime(2026, 11, 21, tzinfo=timezone.utc), settings)
    assert "z-order llm_calls 2026-11-20: 2 files -> 1" in output
    for name in tables:
        assert len(table(name).file_uris()) == 1, name
        assert sorted_rows(table(name).to_pyarrow_table()).equals(late[name]), f"{name} changed by z-order"


def test_reconcile_repairs_a_planted_mismatch(cli, dag_settings):
    settings = dag_settings
    chdb(settings, "seed", START.isoformat(), "2000", "12", "3", "0", "--clickhouse")
    db, hour = settings.clickhouse_database, (START, START + timedelta(hours=1))
    where = f"event_time >= '{START:%Y-%m-%d %H}:00:00' AND event_time < '{START:%Y-%m-%d} 09:00:00'"
    chdb(settings, "sql", f"ALTER TABLE {db}.task_events DELETE WHERE {where} AND kafka_offset % 7 = 0")
    chdb(settings, "sql", f"INSERT INTO {db}.llm_calls SELECT * FROM {db}.llm_calls WHERE {where} "
                          "ORDER BY event_id LIMIT 3")
    truth = {t: lake_hour(settings, t, *hour) for t in ("task_events", "llm_calls", "telemetry")}
    planted = {t: clickhouse_hour(settings, t, *hour) for t in truth}
    assert planted["task_events"][0] < truth["task_events"][0]
    assert planted["llm_calls"][0] == truth["llm_calls"][0] + 3
    assert planted["telemetry"] == truth["telemetry"]

    # Runs check the hour before their data interval: the interval [09:00, 10:00) checks 08:00.
    output = cli.dags_test("reconcile_lake_clickhouse", START + timedelta(hours=2), settings)

    for table, expected in truth.items():
        assert clickhouse_hour(settings, table, *hour) == expected, table
    report = json.loads((lake_folder(settings) / f"reports/reconcile/{START:%Y-%m-%dT%H}.json").read_text())
    checks = {c["table"]: c for c in report["checks"]}
    assert checks["task_events"]["inserted"] == truth["task_events"][0] - planted["task_events"][0]
    assert checks["llm_calls"]["deleted"] == 6 and checks["llm_calls"]["inserted"] == 3
    assert checks["telemetry"]["inserted"] == checks["telemetry"]["deleted"] == 0
    assert all(c["matches"] for c in report["checks"])
    assert "repaired" in output

    cli.dags_test("reconcile_lake_clickhouse", START + timedelta(hours=2), settings)
    for table, expected in truth.items():
        assert clickhouse_hour(settings, table, *hour) == expected, f"{table} after a second run"


def test_daily_cost_report_has_the_right_totals(cli, stack, s3_settings, tmp_path, unique):
    budgets = tmp_path / "budgets.toml"
    budgets.write_text("[tenant]\ndaily_usd = 10.0\n[agent]\ndaily_usd = 2.0\n")
    settings = s3_settings.model_copy(update={"lake_uri": f"{s3_settings.lake_uri}-{unique}", "budgets_file": budgets})
    seed(settings, START - timedelta(days=1), 800, seed_=13, splits=2)
    seed(settings, START, 1600, seed_=14, splits=2, first_offset=100_000)
    calls = lake_table(settings, "llm_calls")
    by_day = {d: calls.filter(pc.equal(calls["event_date"], pa.scalar(d, pa.date32()))) for d in (DAY, DAY - timedelta(days=1))}
    total = pc.sum(by_day[DAY]["cost_usd"]).as_py()
    previous = pc.sum(by_day[DAY - timedelta(days=1)]["cost_usd"]).as_py()

    # The daily interval that ends on the 21st at 00:30 is the report of the 20th.
    for _ in range(2):  # a rerun replaces the day's report, it never adds a second copy
        cli.dags_test("daily_cost_report", datetime(2026, 11, 21, 0, 30, tzinfo=timezone.utc), settings)

    report = lake_table(settings, COST_TABLE)
    report = report.filter(pc.equal(report["report_date"], pa.scalar(DAY, pa.date32())))
    assert pc.sum(report["cost_usd"]).as_py() == pytest.approx(total, abs=1e-6)
    assert pc.sum(report["previous_cost_usd"]).as_py() == pytest.approx(previous, abs=1e-6)
    assert pc.sum(report["calls"]).as_py() == by_day[DAY].num_rows
    budget = lake_table(settings, BUDGET_TABLE).to_pylist()
    tenants = [r for r in budget if r["scope"] == "tenant"]
    assert sum(r["cost_usd"] for r in tenants) == pytest.approx(total, abs=1e-6)
    assert all(r["budget_usd"] == 10.0 and r["used_pct"] == pytest.approx(r["cost_usd"] * 10) for r in tenants)
    agents = [r for r in budget if r["scope"] == "agent"]
    assert all(r["budget_usd"] == 2.0 and r["used_pct"] == pytest.approx(r["cost_usd"] * 50) for r in agents)
    bucket, _, prefix = settings.lake_uri.removeprefix("s3://").partition("/")
    key = f"{prefix}/reports/html/daily-cost-{DAY}.html"
    page = stack.minio.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert f"${total:.6f}" in page and "<svg" in page and "<script" not in page


def test_model_recommendations_replace_their_day(cli, dag_settings):
    settings = dag_settings
    seed(settings, START - timedelta(days=1), 800, seed_=21, splits=1)
    seed(settings, START, 3000, seed_=22, splits=2, first_offset=100_000)
    loose = {"EZ_RECOMMEND_MIN_SUCCESSFUL_TASKS": "2", "EZ_RECOMMEND_QUALITY_TOLERANCE": "0.05"}
    db = settings.clickhouse_database
    columns = ("tenant_id, agent_type, queue, current_model, recommended_model, successful_tasks, "
               "current_cost_per_success_usd, recommended_cost_per_success_usd, monthly_saving_usd")

    def stored() -> tuple[list, list]:
        rows = lake_table(settings, "reports/model_recommendations").to_pylist()
        lake = sorted([r[c.strip()] for c in columns.split(",")] for r in rows if r["day"] == DAY)
        return lake, chdb(settings, "sql", f"SELECT {columns} FROM {db}.model_recommendations "
                                           f"WHERE day = '{DAY}' ORDER BY ALL")

    # The daily interval that ends on the 21st at 00:15 is the 20th's.
    run_after = datetime(2026, 11, 21, 0, 15, tzinfo=timezone.utc)
    cli.dags_test("model_recommendations", run_after, settings, extra_env=loose)
    first = stored()
    cli.dags_test("model_recommendations", run_after, settings, extra_env=loose)
    lake, clickhouse = stored()
    assert lake and len(lake) == len(clickhouse) == len(first[0]) == len(first[1])
    for row, in_lake in zip(clickhouse, lake):
        assert row[:6] == in_lake[:6]
        *_, successes, current, recommended, saving = in_lake
        assert recommended < current and saving == pytest.approx(successes * 30 * (current - recommended))
        assert float(row[8]) == pytest.approx(saving)

    # Stricter settings, rerun: nothing qualifies and the day is empty in both stores.
    cli.dags_test("model_recommendations", run_after, settings,
                  extra_env={**loose, "EZ_RECOMMEND_MIN_SUCCESSFUL_TASKS": "100000"})
    assert stored() == ([], [])


def test_retention_removes_old_data_only(cli, dag_settings):
    settings = dag_settings
    old = datetime(2026, 9, 1, 8, tzinfo=timezone.utc)
    chdb(settings, "seed", old.isoformat(), "600", "15", "1", "0", "--clickhouse")
    chdb(settings, "seed", START.isoformat(), "900", "16", "1", "100000", "--clickhouse")
    recent = {t: lake_hour(settings, t, START, START + timedelta(days=1)) for t in ("task_events", "llm_calls")}
    cutoff = datetime(2026, 10, 22, tzinfo=timezone.utc)
    db = settings.clickhouse_database
    assert chdb(settings, "sql", f"SELECT count() FROM {db}.llm_calls WHERE event_time < '2026-10-22'")[0][0] > 0

    # The run of the 20th keeps 30 days: 2026-10-22 and later.
    cli.dags_test("retention", datetime(2026, 11, 21, 2, tzinfo=timezone.utc), settings,
                  extra_env={"EZ_LAKE_RETENTION_DAYS": "30", "EZ_CLICKHOUSE_TTL_DAYS": "30"})

    for table in ("task_events", "llm_calls", "telemetry"):
        dates = set(lake_table(settings, table)["event_date"].to_pylist())
        assert dates and min(dates) >= cutoff.date(), f"{table}: {sorted(dates)}"
        assert chdb(settings, "sql", f"SELECT count() FROM {db}.{table} WHERE event_time < '2026-10-22'") == [[0]]
    assert chdb(settings, "sql", f"SELECT count() FROM {db}.llm_calls_1m WHERE minute < '2026-10-22'") == [[0]]
    for table, expected in recent.items():
        assert lake_hour(settings, table, START, START + timedelta(days=1)) == expected
        assert clickhouse_hour(settings, table, START, START + timedelta(days=1)) == expected


def test_backfill_reloads_clickhouse_exactly(cli, dag_settings):
    settings = dag_settings
    seed(settings, START - timedelta(days=1), 700, seed_=17, splits=2)
    seed(settings, START, 1400, seed_=18, splits=3, first_offset=100_000)
    days = (datetime(2026, 11, 19, tzinfo=timezone.utc), datetime(2026, 11, 21, tzinfo=timezone.utc))
    tables = ("task_events", "llm_calls", "telemetry")
    truth = {t: lake_hour(settings, t, *days) for t in tables}

    cli.dags_test("backfill", days[1], settings, conf={"tables": ["llm_calls"], "start": "2026-11-19", "end": "2026-11-20"})
    assert clickhouse_hour(settings, "llm_calls", *days) == truth["llm_calls"]
    assert clickhouse_hour(settings, "task_events", *days)[0] == 0

    output = cli.dags_test("backfill", days[1], settings, conf={"tables": [], "start": "2026-11-19", "end": "2026-11-20"})
    assert "backfill day 2/2 (2026-11-20)" in output
    for table in tables:
        assert clickhouse_hour(settings, table, *days) == truth[table], table

    again = cli.dags_test("backfill", days[1], settings, conf={"tables": [], "start": "2026-11-19", "end": "2026-11-20"})
    assert "inserted into ClickHouse" in again and "repaired" not in again
    for table in tables:
        assert clickhouse_hour(settings, table, *days) == truth[table], f"{table} after a rerun"


def test_reconcile_never_deletes_rows_the_lake_lacks(settings, tmp_path, unique):
    """Rows only ClickHouse holds may be rows the lake sink has not written yet: they are counted
    and the hour stays a mismatch (the task fails and is retried), nothing is deleted.

    Runs the reconciliation in this process, on the session's embedded engine (a database of its own).
    """
    from connectors.batch.reconcile import Mismatch, reconcile
    from connectors.clickhouse import get_client

    settings = settings.model_copy(update={"lake_uri": f"file://{tmp_path / 'lake'}",
                                           "clickhouse_database": "ez_" + unique.replace("-", "_")})
    seed(settings, START, 400, seed_=23, splits=1, clickhouse=True)
    db, hour = settings.clickhouse_database, (START, START + timedelta(hours=1))
    client = get_client(settings)
    client.command(f"INSERT INTO {db}.llm_calls SELECT * REPLACE (generateUUIDv4() AS event_id) "
                   f"FROM {db}.llm_calls WHERE event_time < '2026-11-20 09:00:00' ORDER BY event_id LIMIT 2")
    held = client.query(f"SELECT count() FROM {db}.llm_calls").result_rows[0][0]

    with pytest.raises(Mismatch, match="llm_calls 2026-11-20T08:00") as failed:
        reconcile(settings, *hour)
    checks = {c.table: c for c in failed.value.checks}
    assert checks["llm_calls"].clickhouse_only == 2 and checks["llm_calls"].inserted == 0
    assert checks["llm_calls"].clickhouse_rows == checks["llm_calls"].lake_rows + 2
    assert client.query(f"SELECT count() FROM {db}.llm_calls").result_rows[0][0] == held
    assert checks["task_events"].matches and checks["telemetry"].matches
