"""``ezstream demo``: the whole pipeline on one machine, from nothing to matching totals.

Starts the local stack, creates the topics, starts a worker in the background, sends a minute of
simulated agent traffic, waits until the lake and ClickHouse have written all of it, then prints
an analytics summary from ClickHouse and the same totals from the lake, side by side.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from connectors.kafka.config import client_config
from connectors.kafka.topics import catalogue, ensure_topics, topic_name
from connectors.settings import Settings, load_settings
from connectors.sink import TABLES
from streams.intelligence.processor import OUTPUTS as ALERTS_OUTPUTS

#: The demo's sinks write often, so the lake catches up within seconds of the traffic.
DEMO_BUDGETS = Path(__file__).resolve().parents[1] / "infra" / "local" / "demo-budgets.toml"
DEMO_FLUSH = {"EZ_LAKE_FLUSH_SECONDS": "5", "EZ_CLICKHOUSE_FLUSH_SECONDS": "1"}

SUMMARY = [
    ("Cost by provider and model", """
        SELECT provider, model, count() AS calls, round(sum(cost_usd), 4) AS cost_usd,
               round(100 * countIf(status != 'ok') / count(), 2) AS error_pct
        FROM {db}.llm_calls GROUP BY provider, model ORDER BY cost_usd DESC, calls DESC"""),
    ("Top agents by cost", """
        SELECT agent_id, agent_type, tenant_id, count() AS calls, round(sum(cost_usd), 4) AS cost_usd
        FROM {db}.llm_calls GROUP BY agent_id, agent_type, tenant_id ORDER BY cost_usd DESC LIMIT 5"""),
    ("Task success rate by queue (finished tasks)", """
        SELECT queue, countIf(status = 'completed') AS completed, countIf(status = 'failed') AS failed,
               countIf(status = 'cancelled') AS cancelled,
               round(100 * countIf(status = 'completed') / count(), 1) AS success_pct
        FROM {db}.task_events WHERE status IN ('completed', 'failed', 'cancelled')
        GROUP BY queue ORDER BY queue"""),
    ("LLM latency by provider, from the per-minute rollup (ms)", """
        SELECT provider, countMerge(calls) AS calls,
               round(quantilesMerge(0.5, 0.95, 0.99)(latency_ms_quantiles)[1], 1) AS p50,
               round(quantilesMerge(0.5, 0.95, 0.99)(latency_ms_quantiles)[2], 1) AS p95,
               round(quantilesMerge(0.5, 0.95, 0.99)(latency_ms_quantiles)[3], 1) AS p99
        FROM {db}.llm_calls_1m GROUP BY provider ORDER BY p95 DESC"""),
    ("Alerts raised by the alerts role (agent.alerts)", """
        SELECT kind, severity, state, count() AS alerts, substring(any(message), 1, 90) AS example
        FROM {db}.alerts GROUP BY kind, severity, state ORDER BY alerts DESC"""),
    ("Closed one-minute windows (agent.llm_windows)", """
        SELECT provider, count() AS windows, sum(calls) AS calls, sum(errors) AS errors,
               round(max(latency_p99_ms)) AS worst_p99_ms
        FROM {db}.llm_windows GROUP BY provider ORDER BY calls DESC"""),
]

COST_TABLES = ("task_events", "llm_calls")


def run_demo(rate: float, duration_s: float, seed: int, echo: Callable[[str], None] = print) -> bool:
    """Run the demo; True when the lake and ClickHouse totals agree."""
    from connectors.clickhouse.query import format_result
    from infra.local import Stack
    from streams.query_server import query
    from streams.simulate import format_report, run_simulation
    from streams.worker import ROLES, start_detached, stop_detached

    for name, value in DEMO_FLUSH.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("EZ_BUDGETS_FILE", str(DEMO_BUDGETS))
    settings = load_settings()

    echo("== Local stack")
    Stack(settings).up(echo=echo)
    for name, outcome in ensure_topics(settings, catalogue(settings)).items():
        if outcome == "created":
            echo(f"topic {name} created")
    echo("\n== Workers: one process per role (lake, ClickHouse, alerts, spans), so each has a core of its own")
    # Workers left by an earlier run may predate this checkout's code and migrations: start afresh.
    for name in stop_detached(settings):
        echo(f"{name} (from an earlier run) stopped")
    for role in ROLES:
        echo(f"worker ({role}) {start_detached(settings, [role])}; log: {settings.logs_dir}/worker-{role}.log")
    dashboard = _start_dashboard(settings, echo)

    echo(f"\n== Simulated agent traffic: {rate:,.0f} events/s for {duration_s:.0f} s (seed {seed})")
    report = run_simulation(settings, rate=rate, duration_s=duration_s, seed=seed)
    echo(format_report(report))

    echo("\n== Waiting for the alerts role to close the last one-minute windows")
    waited = _wait_windows_closed(settings, timeout_s=120)
    echo(f"every window closed and committed ({waited:.1f} s after the traffic: the stream idle, they close "
         "on the wall clock)")

    echo("\n== Waiting for the lake and ClickHouse to write everything")
    marks = _marks(settings)
    waited = _wait_caught_up(settings, marks, timeout_s=180)
    echo(f"both sinks caught up with the topics ({waited:.1f} s after the last event was sent)")

    db = settings.clickhouse_database
    for title, sql in SUMMARY:
        echo(f"\n== {title}")
        echo(format_result(*query(settings, sql.format(db=db)), "table"))

    echo("\n== Totals: ClickHouse vs lake")
    agree = _print_totals(settings, marks, echo)
    echo("\n== Services")
    for row in Stack(settings).status():
        echo(f"{row.name:<11} {row.address:<44} {row.state:<9} {'ok' if row.healthy else 'DOWN'}")
    echo("")
    echo("Query further:")
    echo(f"  .venv/bin/ezstream sql \"SELECT provider, sum(cost_usd) FROM {db}.llm_calls GROUP BY provider\"")
    echo("  .venv/bin/ezstream lake-sql \"SELECT agent_type, count(*) FROM llm_calls GROUP BY 1\"")
    echo("  .venv/bin/ezstream dlq list")
    if dashboard is not None:
        echo(f"Live dashboard (stays up until make down): {dashboard}")
    echo("Stop everything: make down")
    return agree


def _start_dashboard(settings: Settings, echo: Callable[[str], None]) -> str | None:
    """Start the dashboard afresh (one of an earlier run may predate this checkout); its URL, or
    None when it could not start (the demo goes on without it)."""
    from connectors.errors import ServiceError
    from infra.local.dashboard import Dashboard

    dashboard = Dashboard(settings)
    dashboard.down()
    try:
        outcome = dashboard.up()
    except ServiceError as exc:
        echo(f"dashboard not started: {exc}")
        return None
    echo(f"\n== Live dashboard: {dashboard.url} ({outcome}; refreshed every {settings.dashboard_refresh_seconds:g} s)")
    return dashboard.url


def _wait_windows_closed(settings: Settings, timeout_s: float) -> float:
    """Wait until the alerts role's latest commit holds no open window and no closed one still to
    produce (its status files); the seconds waited. Windows close on event time, and once the
    traffic stops on the wall clock after the windows' idle period."""
    import json

    started = time.monotonic()
    pattern = f"alerts-{settings.topic_prefix or 'default'}*.status.json"

    def open_windows() -> int | None:
        files = list(settings.run_dir.glob(pattern))
        if not files:
            return None
        total = 0
        for path in files:
            try:
                state = json.loads(path.read_text()).get("state")
            except (OSError, ValueError):
                return None  # being replaced: read again
            if state is None:
                return None
            total += state["entries"]["windows"] + state["pending_windows"]
        return total

    while open_windows() != 0:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the alerts role did not close its windows within {timeout_s:.0f} s; "
                               f"see {settings.logs_dir}/worker-alerts.log")
        time.sleep(0.5)
    return time.monotonic() - started


def _marks(settings: Settings) -> dict[tuple[str, int], int]:
    """The end offset of every partition the sinks read, now: what "caught up" is measured to.

    The alerts role keeps producing after the traffic stops (windows close on the wall clock),
    so the stores are compared up to these marks, not to a moving end.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(client_config(settings, **{"group.id": f"{settings.topic_prefix}ezstream.demo",
                                                   "enable.auto.commit": False}))
    try:
        marks = {}
        for base in TABLES:
            topic = topic_name(settings, base)
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                # The alerts role writes in transactions: such a partition ends with the commit's
                # marker, which no consumer reads and no sink commits past.
                marks[(topic, p)] = high - 1 if base in ALERTS_OUTPUTS and high > low else high
        return marks
    finally:
        consumer.close()


def _lag(settings: Settings, marks: dict[tuple[str, int], int]) -> int:
    """Messages below ``marks`` not yet written by every sink (they commit after writing)."""
    from confluent_kafka import Consumer, TopicPartition

    total = 0
    for role in ("lake", "clickhouse"):
        consumer = Consumer(client_config(settings, **{"group.id": f"{settings.topic_prefix}ezstream.{role}",
                                                       "enable.auto.commit": False}))
        try:
            tps = [TopicPartition(topic, p) for topic, p in marks]
            for tp in consumer.committed(tps, timeout=10):
                total += max(0, marks[(tp.topic, tp.partition)] - max(tp.offset, 0))
        finally:
            consumer.close()
    return total


def _wait_caught_up(settings: Settings, marks: dict[tuple[str, int], int], timeout_s: float) -> float:
    started = time.monotonic()
    while _lag(settings, marks) > 0:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the sinks did not catch up within {timeout_s:.0f} s; see {settings.logs_dir}")
        time.sleep(0.5)
    return time.monotonic() - started


def _below(settings: Settings, table: str, marks: dict[tuple[str, int], int]) -> str:
    """SQL condition: rows from Kafka positions below the marks of ``table``'s topic."""
    topic = next(topic_name(settings, t) for t, name in TABLES.items() if name == table)
    parts = [f"(kafka_partition = {p} AND kafka_offset < {end})" for (t, p), end in sorted(marks.items())
             if t == topic and end > 0]
    return " OR ".join(parts) or "false"


def _print_totals(settings: Settings, marks: dict[tuple[str, int], int], echo: Callable[[str], None]) -> bool:
    from connectors.lake.query import lake_query, list_tables
    from streams.query_server import query

    db = settings.clickhouse_database
    in_lake = set(list_tables(settings))
    echo(f"{'table':<18} {'ClickHouse rows':>16} {'lake rows':>12} {'ClickHouse cost':>16} {'lake cost':>12}")
    echo("(up to the Kafka offsets once the traffic ended and the last windows closed)")
    agree = True
    for table in TABLES.values():
        cost = "sum(cost_usd)" if table in COST_TABLES else "0"
        below = _below(settings, table, marks)
        _, ch = query(settings, f"SELECT count(), {cost} FROM {db}.{table} WHERE {below}")
        # A table nothing was written to yet has no Delta table either.
        lake = lake_query(settings, f"SELECT count(*), coalesce({cost}, 0) FROM {table} WHERE {below}")[1] \
            if table in in_lake else [(0, 0.0)]
        (ch_rows, ch_cost), (lake_rows, lake_cost) = ch[0], lake[0]
        same = ch_rows == lake_rows and abs(float(ch_cost) - float(lake_cost)) < 1e-6
        agree &= same
        echo(f"{table:<18} {ch_rows:>16,} {lake_rows:>12,} {float(ch_cost):>16.4f} {float(lake_cost):>12.4f}  "
             f"{'match' if same else 'DIFFER'}")
    return agree
