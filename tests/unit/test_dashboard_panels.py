"""The dashboard's panel queries (streams/dashboard/panels.py) on a scratch embedded engine with
the migrations applied and known rows inserted: each panel's figures are the inserted ones.

chDB opens one engine per process, so the engine runs in a child process of its own (as
``schema_check`` does): it inserts the rows, runs every panel through the read-only query path
(:func:`streams.query_server.run_query`) and prints the results as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from streams.dashboard import panels

REPO = Path(__file__).resolve().parents[2]
DB = "dash"


def _child(folder: str, with_recommendations: bool) -> None:
    """In the child: scratch engine, migrations, rows, every panel; JSON on stdout."""
    from connectors.clickhouse import get_client
    from connectors.clickhouse.migrations import apply_migrations
    from connectors.settings import load_settings
    from streams.intelligence.alerts import Budgets
    from streams.query_server import run_query

    settings = load_settings(clickhouse_dsn=f"chdb://{folder}", clickhouse_database=DB, clickhouse_cluster=None)
    client = get_client(settings)
    apply_migrations(client, settings)
    now = datetime.now(timezone.utc)
    # Recent calls are today's and of the last hour whatever the time: not before midnight UTC.
    recent = max(now - timedelta(minutes=2), now.replace(hour=0, minute=0, second=0, microsecond=0))
    old = now - timedelta(hours=3)
    calls = [  # tenant, agent, provider, model, cost, latency, status, time
        ("acme", "dev-01", "anthropic", "claude-3-haiku", 1.25, 100.0, "ok", recent),
        ("acme", "dev-01", "anthropic", "claude-3-haiku", 0.75, 300.0, "error", recent),
        ("acme", "dev-02", "openai", "gpt-4", 4.0, 900.0, "ok", recent),
        ("beta", "res-01", "groq", "mixtral-8x7b", 0.5, 50.0, "ok", recent),
        ("beta", "res-01", "groq", "mixtral-8x7b", 2.0, 60.0, "ok", old),
        ("beta", "res-01", "groq", "mixtral-8x7b", 9.0, 60.0, "ok", now - timedelta(days=2)),
    ]
    values = ", ".join(
        f"(generateUUIDv4(), '{at:%Y-%m-%d %H:%M:%S.%f}', '{agent}', 'development', '{tenant}', 'tr', 'c{i}', "
        f"'{provider}', '{model}', 'k', 100, 10, {cost}, 'v', {latency}, '{status}', false, 0, {i})"
        for i, (tenant, agent, provider, model, cost, latency, status, at) in enumerate(calls))
    client.command(f"INSERT INTO {DB}.llm_calls (event_id, event_time, agent_id, agent_type, tenant_id, trace_id, "
                   f"call_id, provider, model, api_key_alias, input_tokens, output_tokens, cost_usd, price_version, "
                   f"latency_ms, status, cache_hit, kafka_partition, kafka_offset) VALUES {values}")
    tasks = [  # queue, status, queue wait
        ("normal", "started", 1000), ("normal", "started", 3000), ("normal", "completed", 1000),
        ("normal", "failed", 3000), ("high_priority", "started", 10), ("high_priority", "completed", 10),
    ]
    values = ", ".join(
        f"(generateUUIDv4(), '{recent:%Y-%m-%d %H:%M:%S}', 'dev-01', 'development', 'acme', 'tr', 't{i}', "
        f"'{status}', '{queue}', 1, {wait}, 0, 'v', 0, {i})" for i, (queue, status, wait) in enumerate(tasks))
    client.command(f"INSERT INTO {DB}.task_events (event_id, event_time, agent_id, agent_type, tenant_id, trace_id, "
                   f"task_id, status, queue, attempt, queue_wait_ms, cost_usd, price_version, kafka_partition, "
                   f"kafka_offset) VALUES {values}")
    forecast = "{'projected_at': '%s', 'projected_spend_usd': '%s', 'budget_usd': '%s', 'burn_rate_usd_per_hour': '%s'}"
    alerts = [  # alert_id, kind, state, subject, seconds ago, details
        ("a1", "budget", "firing", "acme", 50, "{}"),
        ("a2", "error_rate", "firing", "openai/gpt-4", 40, "{}"),
        ("a2", "error_rate", "resolved", "openai/gpt-4", 30, "{}"),
        ("a3", "silent_agent", "firing", "dev-09", 30, "{}"),
        ("a3", "silent_agent", "resolved", "dev-09", 30, "{}"),  # same time: resolved wins
        ("f1", "budget_forecast", "firing", "acme", 60, forecast % ("2026-12-05T18:00:00Z", 120, 100, 12.5)),
        ("f2", "budget_forecast", "firing", "acme", 20, forecast % ("2026-12-05T16:00:00Z", 140, 100, 20)),
        ("f3", "budget_forecast", "firing", "dev-02", 20, forecast % ("2026-12-05T17:00:00Z", 30, 20, 4)),
        ("f3", "budget_forecast", "resolved", "dev-02", 10, forecast % ("2026-12-05T17:00:00Z", 30, 20, 4)),
    ]
    values = ", ".join(
        f"(generateUUIDv4(), now64(3, 'UTC') - INTERVAL {ago} SECOND, 'p', 'alerts', 'acme', 'tr', '{alert_id}', "
        f"'{kind}', 'warning', '{state}', '{subject}', '{kind} {subject}', 1, 1, now64(3, 'UTC'), now64(3, 'UTC'), "
        f"{details}, 0, {i})" for i, (alert_id, kind, state, subject, ago, details) in enumerate(alerts))
    client.command(f"INSERT INTO {DB}.alerts (event_id, event_time, agent_id, agent_type, tenant_id, trace_id, "
                   f"alert_id, kind, severity, state, subject, message, value, threshold, first_seen, last_seen, "
                   f"details, kafka_partition, kafka_offset) VALUES {values}")
    if with_recommendations:
        # Made by its migration where the repository has it; the columns the dashboard reads.
        client.command(f"""CREATE TABLE IF NOT EXISTS {DB}.model_recommendations (day Date, tenant_id String,
            agent_type String, queue String, current_provider String, current_model String, current_quality Float64,
            current_cost_per_success_usd Float64, recommended_provider String, recommended_model String,
            recommended_quality Float64, recommended_cost_per_success_usd Float64, monthly_saving_usd Float64,
            successful_tasks UInt64) ENGINE = MergeTree ORDER BY day""")
        client.command(f"""INSERT INTO {DB}.model_recommendations (day, tenant_id, agent_type, queue,
            current_provider, current_model, current_quality, current_cost_per_success_usd, recommended_provider,
            recommended_model, recommended_quality, recommended_cost_per_success_usd, monthly_saving_usd,
            successful_tasks) VALUES
            ('2026-12-03', 'acme', 'development', 'normal', 'openai', 'gpt-4', 0.9, 0.5, 'anthropic',
             'claude-3-haiku', 0.88, 0.05, 999, 10),
            ('2026-12-04', 'acme', 'development', 'normal', 'openai', 'gpt-4', 0.9, 0.5, 'anthropic',
             'claude-3-sonnet', 0.9, 0.2, 300, 12),
            ('2026-12-04', 'beta', 'research', 'batch', 'openai', 'gpt-4', 0.8, 0.3, 'groq',
             'mixtral-8x7b', 0.8, 0.01, 450, 30)""")

    def run(sql):
        return run_query(settings, sql)

    budgets = Budgets(tenant_daily_usd=10.0, agent_overrides={"dev-02": 8.0})
    out = {
        "now": now.isoformat(), "old_today": old.date() == now.date(),
        "spend_now": panels.spend_now(run, DB),
        **{f"spend_by_{by}": panels.spend_by(run, DB, by) for by in panels.SPEND_KEYS},
        "spend_per_hour": panels.spend_per_hour(run, DB, "tenant"),
        "budget_use": panels.budget_use(run, DB, budgets),
        "budget_forecasts": panels.budget_forecasts(run, DB),
        "alert_counts": panels.alert_counts(run, DB),
        "alerts": panels.alerts(run, DB),
        "llm_health": panels.llm_health(run, DB),
        "tasks": panels.tasks(run, DB),
        "recommendations": panels.recommendations(run, DB),
    }
    print(json.dumps(out, default=str))


def run_child(folder: Path, with_recommendations: bool) -> dict:
    code = f"from tests.unit.test_dashboard_panels import _child; _child({str(folder)!r}, {with_recommendations})"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    return run_child(tmp_path_factory.mktemp("dashboard-chdb"), with_recommendations=True)


def test_spend_today_and_last_hour(result):
    recent = 1.25 + 0.75 + 4.0 + 0.5
    today = recent + (2.0 if result["old_today"] else 0.0)
    now = result["spend_now"]
    assert now["today_usd"] == pytest.approx(today)
    assert now["last_hour_usd"] == pytest.approx(6.5)
    by_tenant = {r["tenant_id"]: (r["today_usd"], r["last_hour_usd"]) for r in result["spend_by_tenant"]}
    assert by_tenant["acme"][1] == pytest.approx(6.0) and by_tenant["beta"][1] == pytest.approx(0.5)
    assert {(r["provider"], r["model"]) for r in result["spend_by_model"]} >= {
        ("anthropic", "claude-3-haiku"), ("openai", "gpt-4")}
    assert result["spend_by_provider"][0]["provider"] == "openai"  # dearest first
    hours = {(r["hour"], r["key"]): r["cost_usd"] for r in result["spend_per_hour"]}
    assert sum(v for (_, key), v in hours.items() if key == "acme") == pytest.approx(6.0)
    assert sum(v for (_, key), v in hours.items() if key == "beta") == pytest.approx(2.5)  # not 2 days ago


def test_budget_use_against_the_budgets(result):
    use = {(r["scope"], r["subject"]): r for r in result["budget_use"]}
    # Tenants have 10 USD a day; agents none, but dev-02 has 8.
    assert set(use) == {("tenant", "acme"), ("tenant", "beta"), ("agent", "dev-02")}
    assert use[("tenant", "acme")]["spend_usd"] == pytest.approx(6.0)
    assert use[("tenant", "acme")]["used_pct"] == pytest.approx(60.0)
    assert use[("agent", "dev-02")]["used_pct"] == pytest.approx(50.0)
    assert result["budget_use"][0]["subject"] == "acme"  # tenants first, the most used first


def test_budget_forecasts_latest_firing_per_subject(result):
    # acme: f2 is its latest firing forecast; dev-02's only forecast is resolved.
    assert result["budget_forecasts"] == [{
        "subject": "acme", "projected_at": "2026-12-05T16:00:00Z", "projected_spend_usd": 140.0,
        "budget_usd": 100.0, "burn_rate_usd_per_hour": 20.0, "raised_at": result["budget_forecasts"][0]["raised_at"],
        "message": "budget_forecast acme"}]


def test_alerts_latest_state_per_alert(result):
    # Firing now: a1 (budget) and f1, f2 (forecasts); a2 and a3 resolved (a3 at its firing's time).
    assert result["alert_counts"] == {"active": 3, "resolved_last_hour": 3}
    states = [(r["kind"], r["subject"], r["state"]) for r in result["alerts"]]
    assert len(states) == 6
    assert [s[2] for s in states] == ["firing"] * 3 + ["resolved"] * 3


def test_llm_latency_and_errors(result):
    health = {(r["provider"], r["model"]): r for r in result["llm_health"]}
    haiku = health[("anthropic", "claude-3-haiku")]
    assert (haiku["calls"], haiku["errors"], haiku["error_pct"]) == (2, 1, 50.0)
    assert haiku["p50_ms"] == pytest.approx(200.0)
    assert health[("openai", "gpt-4")]["p99_ms"] == pytest.approx(900.0)


def test_tasks_success_and_queue_wait(result):
    queues = {r["queue"]: r for r in result["tasks"]}
    normal = queues["normal"]
    assert (normal["started"], normal["completed"], normal["failed"], normal["cancelled"]) == (2, 1, 1, 0)
    assert normal["success_pct"] == 50.0
    assert normal["wait_p50_ms"] == pytest.approx(2000.0)  # the started attempts' waits only
    assert queues["high_priority"]["success_pct"] == 100.0


def test_recommendations_of_the_latest_day(result):
    assert [(r["recommended_on"], r["tenant_id"], r["recommended_model"], r["monthly_saving_usd"])
            for r in result["recommendations"]] == [
        ("2026-12-04", "beta", "mixtral-8x7b", 450.0), ("2026-12-04", "acme", "claude-3-sonnet", 300.0)]


def test_no_recommendations_while_the_table_does_not_exist():
    asked = []

    def run(sql):
        asked.append(sql)
        return ["n"], [[0]]

    assert panels.recommendations(run, DB) == [] and len(asked) == 1


def test_spend_by_refuses_an_unknown_breakdown():
    with pytest.raises(ValueError, match="tenant, provider, model"):
        panels.spend_by(lambda sql: ([], []), DB, "region")
