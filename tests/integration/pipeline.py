"""Harness for the pipeline tests: worker processes, produced truth, and totals per store."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from connectors.kafka.producer import EventProducer
from connectors.kafka.schemas import TOPIC_EVENTS
from connectors.kafka.topics import topic_name
from connectors.lake import storage_options, table_uri
from connectors.settings import Settings
from connectors.sink import TABLES
from streams.query_server import query
from streams.simulate import generate
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
START = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)

def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a worker process the same settings."""
    env = {
        "EZ_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "EZ_TOPIC_PREFIX": settings.topic_prefix,
        "EZ_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "EZ_LAKE_URI": settings.lake_uri,
        "EZ_CLICKHOUSE_DSN": settings.clickhouse_dsn.get_secret_value(),
        "EZ_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "EZ_LAKE_FLUSH_SECONDS": str(settings.lake_flush_seconds),
        "EZ_LAKE_FLUSH_ROWS": str(settings.lake_flush_rows),
        "EZ_CLICKHOUSE_FLUSH_SECONDS": str(settings.clickhouse_flush_seconds),
        "EZ_CLICKHOUSE_FLUSH_ROWS": str(settings.clickhouse_flush_rows),
        "EZ_SINK_RETRY_MAX_SECONDS": str(settings.sink_retry_max_seconds),
        "EZ_LAKE_RETENTION_DAYS": str(settings.lake_retention_days),
        "EZ_CLICKHOUSE_TTL_DAYS": str(settings.clickhouse_ttl_days),
        "EZ_EVENT_TIME_FUTURE_TOLERANCE_S": str(settings.event_time_future_tolerance_s),
        "EZ_MAX_STRING_BYTES": str(settings.max_string_bytes),
    }
    for name in ("budgets_file", "alerts_config_file"):
        if getattr(settings, name) is not None:
            env[f"EZ_{name.upper()}"] = str(getattr(settings, name))
    if settings.alerts_webhook_url is not None:
        env["EZ_ALERTS_WEBHOOK_URL"] = settings.alerts_webhook_url.get_secret_value()
    env["EZ_ALERTS_CHECKPOINT_SECONDS"] = str(settings.alerts_checkpoint_seconds)
    env["EZ_ALERTS_SHARDS"] = str(settings.alerts_shards)
    if settings.metrics_port is not None:
        env["EZ_METRICS_PORT"] = str(settings.metrics_port)
    env["EZ_LOG_FORMAT"] = settings.log_format
    env["EZ_CAPTURE_SNIPPETS"] = str(settings.capture_snippets).lower()
    env["EZ_SNIPPET_MAX_CHARS"] = str(settings.snippet_max_chars)
    env["EZ_KAFKA_SECURITY_PROTOCOL"] = settings.kafka_security_protocol.value
    if settings.kafka_sasl_mechanism is not None:
        env["EZ_KAFKA_SASL_MECHANISM"] = settings.kafka_sasl_mechanism.value
    if settings.kafka_sasl_username is not None:
        env["EZ_KAFKA_SASL_USERNAME"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        env["EZ_KAFKA_SASL_PASSWORD"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location is not None:
        env["EZ_KAFKA_SSL_CA_LOCATION"] = str(settings.kafka_ssl_ca_location)
    if settings.s3_endpoint:
        env["EZ_S3_ENDPOINT"] = settings.s3_endpoint
    if settings.s3_access_key_id:
        env["AWS_ACCESS_KEY_ID"] = settings.s3_access_key_id
    if settings.s3_secret_access_key is not None:
        env["AWS_SECRET_ACCESS_KEY"] = settings.s3_secret_access_key.get_secret_value()
    return env


@dataclass
class Worker:
    """An ``ezstream worker`` subprocess with its own EZ_HOME."""

    settings: Settings
    roles: str
    home: Path
    failpoints: str = ""
    proc: subprocess.Popen | None = None
    restarts: int = 0

    @property
    def log(self) -> Path:
        return self.home / "logs" / f"worker-{self.roles.replace(',', '-')}.out"

    @property
    def ready_file(self) -> Path:
        return self.home / "run" / f"worker-{self.roles.replace(',', '-')}.ready"

    def start(self, timeout_s: float = 90) -> "Worker":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("EZ_", "AWS_"))},
               **settings_env(self.settings), "EZ_FAILPOINTS": self.failpoints, "PYTHONPATH": str(REPO)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--only", self.roles, "--home", str(self.home)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        # Its own session: CI stops what a dead pytest left by this pid (.ci/run).
        (self.home / "worker.pid").write_text(str(self.proc.pid))
        wait_for(lambda: self.alive() and self.ready_file.exists(), timeout_s, f"worker {self.roles} ready")
        return self

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"worker {self.roles} is not running; log:\n{self.tail()}")
        return True

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def rss_mb(self) -> float:
        """Resident memory of the worker process, MiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout_s: float = 90) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"worker {self.roles} did not stop on SIGTERM; log:\n{self.tail()}")


@dataclass
class Truth:
    """What was produced: counts and cost per table, and every event id."""

    count: Counter = field(default_factory=Counter)
    #: Per table, each event's cost: totals are summed with math.fsum, the same in any order (a
    #: running sum and the stores' sums differ in the last bits, which rounding can turn into a
    #: difference in the sixth decimal: a CI run saw 264.720845 against 264.720844).
    costs: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, table: str, cost: float) -> None:
        self.count[table] += 1
        self.costs[table].append(cost)


#: The catalogue topics the simulator (and so :func:`produce_simulated`) writes.
SIMULATED = ("agent.tasks", "agent.llm_calls", "agent.telemetry")


def produce_simulated(settings: Settings, count: int, seed: int, truth: Truth) -> None:
    """Produce ``count`` simulated events and record them in ``truth``."""
    tables = {TOPIC_EVENTS[topic]: table for topic, table in TABLES.items()}
    with EventProducer(settings) as producer:
        for event in generate(seed, start_time=START, count=count, rate=500):
            producer.send(event)
            truth.add(tables[event.EVENT], getattr(event, "cost_usd", 0.0))
    assert sum(producer.delivered.values()) == count



def lake_totals(settings: Settings) -> dict[str, tuple[int, float, int]]:
    """Per lake table: rows, sum(cost_usd) (0 where there is none), distinct Kafka positions."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    totals = {}
    for table in TABLES.values():
        try:
            data = DeltaTable(table_uri(settings, table), storage_options=storage_options(settings)).to_pyarrow_table()
        except TableNotFoundError:
            continue
        cost = math.fsum(v or 0.0 for v in data.column("cost_usd").to_pylist()) if "cost_usd" in data.column_names else 0.0
        positions = set(zip(data.column("kafka_partition").to_pylist(), data.column("kafka_offset").to_pylist()))
        totals[table] = (data.num_rows, round(cost, 6), len(positions))
    return totals


def clickhouse_totals(settings: Settings, worker: "Worker") -> dict[str, tuple[int, float, int]]:
    """Per ClickHouse table: rows, sum(cost_usd), distinct Kafka positions.

    Asked through ``worker``, the process that holds the embedded engine (it announces its query
    endpoint under its own EZ_HOME).
    """
    settings = settings.model_copy(update={"home": worker.home})
    totals = {}
    db = settings.clickhouse_database
    for table in TABLES.values():
        # Compensated: within a unit in the last place of the exact sum, as math.fsum is exact.
        cost = "sumKahan(cost_usd)" if table in ("task_events", "llm_calls") else "0"
        columns, rows = query(settings, f"SELECT count(), {cost}, uniqExact(kafka_partition, kafka_offset) FROM {db}.{table}")
        n, total, positions = rows[0]
        if n:
            totals[table] = (int(n), round(float(total), 6), int(positions))
    return totals


def expected(truth: Truth) -> dict[str, tuple[int, float, int]]:
    return {t: (n, round(math.fsum(truth.costs.get(t, ())), 6), n) for t, n in truth.count.items()}


def wait_exact(settings: Settings, truth: Truth, workers: list[Worker], timeout_s: float = 120) -> None:
    """Wait until the lake and ClickHouse hold exactly what was produced, no more, no less.

    ``workers`` must run meanwhile; the one with the clickhouse role answers the queries.
    """
    want = expected(truth)
    clickhouse = next(w for w in workers if "clickhouse" in w.roles)
    state: dict[str, Any] = {}

    def done() -> bool:
        for worker in workers:
            worker.alive()
        state["lake"], state["clickhouse"] = lake_totals(settings), clickhouse_totals(settings, clickhouse)
        return state["lake"] == want and state["clickhouse"] == want

    try:
        wait_for(done, timeout_s, "exact totals", interval_s=1.0)
    except AssertionError:
        raise AssertionError(
            f"want {want}\nlake {state.get('lake')}\nclickhouse {state.get('clickhouse')}\n"
            f"{partition_report(settings, clickhouse)}\n{sink_log(workers)}") from None


def partition_report(settings: Settings, clickhouse: "Worker") -> str:
    """Per partition, where the stores differ from the broker: its end offset, and the rows, lowest
    and highest offset each store holds. Tells a partition not read to its end (the highest offset
    is behind) from a hole (as far, fewer rows)."""
    from tests.integration.topics import end_offsets

    topics = {topic_name(settings, t): table for t, table in TABLES.items()}
    ends = end_offsets(settings, list(topics))
    held = {"lake": _lake_partitions(settings), "clickhouse": _clickhouse_partitions(settings, clickhouse)}
    lines = []
    for (topic, partition), end in sorted(ends.items()):
        table = topics[topic]
        stores = {name: rows.get((table, partition), (0, None, None)) for name, rows in held.items()}
        if end == 0 or all(n == end and last == end - 1 for n, _, last in stores.values()):
            continue
        lines.append(f"  {table}[{partition}] end {end}: " + ", ".join(
            f"{name} {n} rows @{first}..{last}" for name, (n, first, last) in stores.items()))
    return "partitions the stores do not hold to their end:\n" + ("\n".join(lines) or "  none")


def sink_log(workers: list["Worker"], n: int = 40) -> str:
    """The sink loops' own lines of each worker's log (the framework's are left out)."""
    parts = []
    for worker in workers:
        lines = [line for line in worker.tail(4000).splitlines()
                 if any(f"{role}:" in line for role in ("lake", "clickhouse")) or "Traceback" in line]
        parts.append(f"--- worker {worker.roles} ({worker.home.name}), last sink lines:\n" + "\n".join(lines[-n:]))
    return "\n".join(parts)


def _lake_partitions(settings: Settings) -> dict[tuple[str, int], tuple[int, int, int]]:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    held = {}
    for table in TABLES.values():
        try:
            data = DeltaTable(table_uri(settings, table), storage_options=storage_options(settings)).to_pyarrow_table(
                columns=["kafka_partition", "kafka_offset"])
        except TableNotFoundError:
            continue
        by: dict[int, list[int]] = {}
        for partition, offset in zip(data.column("kafka_partition").to_pylist(), data.column("kafka_offset").to_pylist()):
            by.setdefault(partition, []).append(offset)
        held.update({(table, p): (len(o), min(o), max(o)) for p, o in by.items()})
    return held


def _clickhouse_partitions(settings: Settings, worker: "Worker") -> dict[tuple[str, int], tuple[int, int, int]]:
    settings = settings.model_copy(update={"home": worker.home})
    held = {}
    for table in TABLES.values():
        _, rows = query(settings, f"SELECT kafka_partition, count(), min(kafka_offset), max(kafka_offset) "
                                  f"FROM {settings.clickhouse_database}.{table} GROUP BY kafka_partition")
        held.update({(table, int(p)): (int(n), int(lo), int(hi)) for p, n, lo, hi in rows})
    return held
