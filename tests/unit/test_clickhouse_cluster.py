"""The cluster form of the ClickHouse migrations (``EZ_CLICKHOUSE_CLUSTER``), rendered, not run.

No ClickHouse cluster runs here (chDB has no Keeper, no distributed DDL queue, no TCP server for
a Distributed table to reach), so these tests check the rendered statements: ON CLUSTER on every
DDL, replicated local tables, Distributed tables under the names the code uses, materialized views
from local to local table; and that ClickHouse's own parser (chDB's ``EXPLAIN AST``) accepts each.
Without the setting, the statements are exactly the migration files' and the sink's inserts
carry no cluster setting.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from connectors.clickhouse.migrations import (
    CLUSTER_WIDE_PATH,
    LOCAL_SUFFIX,
    REPLICA_NAME,
    REPLICA_PATH,
    apply_migrations,
    bookkeeping_statements,
    load_migrations,
    render_migration,
)
from connectors.clickhouse.schema_check import expected_columns
from connectors.clickhouse.sink import INSERT_SETTINGS, ClickHouseSink
from connectors.errors import ConfigError
from connectors.settings import Settings
from connectors.sink import PARTITION_COLUMN, TABLES, OffsetRange, SinkBatch

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
CLUSTER = "ezstream"
DB = "analytics"
ON_CLUSTER = f" ON CLUSTER '{CLUSTER}'"
HEADER = re.compile(
    r"^(?:CREATE (?:DATABASE|TABLE|MATERIALIZED VIEW|VIEW) IF NOT EXISTS|ALTER TABLE) (?P<name>[\w.]+)(?P<after>.*)$", re.M
)
#: Rollup and state tables filled by materialized views, beside the event tables of the sink.
VIEW_TARGETS = {"llm_calls_1m", "task_events_1m", "task_state_agg", "inference_vectors"}


def _settings(cluster: str | None) -> Settings:
    return Settings(clickhouse_database=DB, clickhouse_ttl_days=30, clickhouse_cluster=cluster)


def _single() -> list[str]:
    settings = _settings(None)
    return [s for m in load_migrations() for s in render_migration(m, settings)]


def _cluster() -> list[str]:
    settings = _settings(CLUSTER)
    return bookkeeping_statements(settings) + [s for m in load_migrations() for s in render_migration(m, settings)]


def _created(statements: list[str]) -> dict[str, str]:
    """Statement by the name it creates (database-qualified)."""
    return {HEADER.match(s)["name"]: s for s in statements if s.startswith("CREATE")}


def _altered(statements: list[str]) -> list[tuple[str, str]]:
    """(name, statement) of each ALTER TABLE, in order."""
    return [(HEADER.match(s)["name"], s) for s in statements if s.startswith("ALTER")]


def _storage_tables() -> set[str]:
    return {name.split(".", 1)[1] for name, s in _created(_single()).items() if "MergeTree" in s}


def test_without_a_cluster_the_statements_are_the_files_as_written():
    values = {"db": DB, "ttl_days": "30"}
    for migration in load_migrations():
        assert render_migration(migration, _settings(None)) == migration.statements(values)
    assert bookkeeping_statements(_settings(None)) == [
        f"CREATE DATABASE IF NOT EXISTS {DB}",
        f"CREATE TABLE IF NOT EXISTS {DB}.schema_migrations (version UInt32, name String, checksum String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version",
    ]
    assert not any("CLUSTER" in s or "Replicated" in s or "Distributed" in s for s in _single())


def test_every_ddl_runs_on_the_cluster():
    statements = _cluster()
    assert len(statements) > len(_single())
    for statement in statements:
        header = HEADER.match(statement)
        assert header, statement.splitlines()[0]
        assert header["after"].startswith(ON_CLUSTER), header.group(0)


def test_each_storage_table_is_a_replicated_local_table_under_a_distributed_one():
    created = _created(_cluster())
    tables = _storage_tables()
    assert set(TABLES.values()) | VIEW_TARGETS | {"ingest_batches"} <= tables
    for table in tables:
        local = created[f"{DB}.{table}{LOCAL_SUFFIX}"]
        engine = re.search(r"^ENGINE = (Replicated\w*MergeTree)\('([^']*)', '([^']*)'(.*)\)$", local, re.M)
        assert engine, f"{table}: {local}"
        assert (engine[2], engine[3]) == (REPLICA_PATH, REPLICA_NAME) == (
            "/clickhouse/tables/{shard}/{database}/{table}", "{replica}")
        assert "non_replicated_deduplication_window" not in local
        key = "cityHash64(agent_id)" if re.search(r"^\s*agent_id\s", local, re.M) else None
        key = {"ingest_batches": "cityHash64(topic, partition)",
               "task_state_agg": "cityHash64(tenant_id, task_id)",
               "model_recommendations": "cityHash64(tenant_id)"}.get(table, key)
        assert created[f"{DB}.{table}"] == (
            f"CREATE TABLE IF NOT EXISTS {DB}.{table}{ON_CLUSTER} AS {DB}.{table}_local "
            f"ENGINE = Distributed('{CLUSTER}', '{DB}', '{table}_local', {key})"
        )
    engines = {t: re.search(r"^ENGINE = (\w+)", created[f"{DB}.{t}_local"], re.M)[1] for t in tables}
    assert engines["llm_calls"] == "ReplicatedMergeTree"
    assert engines["llm_calls_1m"] == engines["task_state_agg"] == "ReplicatedAggregatingMergeTree"
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', written)" in (
        created[f"{DB}.ingest_batches_local"])


def test_a_local_table_is_the_single_node_table_but_for_name_engine_and_window():
    single, cluster = _created(_single()), _created(_cluster())
    for table in _storage_tables():
        undone = (
            re.sub(r"ENGINE = Replicated(\w+)\('[^']*', '[^']*'(?:, )?([^)]*)\)",
                   lambda m: f"ENGINE = {m[1]}" + (f"({m[2]})" if m[2] else ""), cluster[f"{DB}.{table}_local"])
            .replace(f"{table}_local{ON_CLUSTER}", table, 1)
            .replace("replicated_deduplication_window", "non_replicated_deduplication_window")
        )
        assert undone == single[f"{DB}.{table}"], table


def test_dedup_window_survives_on_the_replicated_tables():
    single, cluster = _created(_single()), _created(_cluster())
    for table in _storage_tables():
        if "non_replicated_deduplication_window = 10000" in single[f"{DB}.{table}"]:
            assert "SETTINGS replicated_deduplication_window = 10000" in cluster[f"{DB}.{table}_local"]


def test_materialized_views_read_and_write_local_tables():
    views = {n: s for n, s in _created(_cluster()).items() if s.startswith("CREATE MATERIALIZED VIEW")}
    assert {n.split(".")[1] for n in views} == {"llm_calls_1m_mv", "task_events_1m_mv", "task_state_mv",
                                                  "inference_vectors_mv"}
    tables = _storage_tables()
    for name, view in views.items():
        target = re.search(rf"{ON_CLUSTER} TO {DB}\.(\w+) AS\n", view)
        assert target and target[1].endswith(LOCAL_SUFFIX) and target[1].removesuffix(LOCAL_SUFFIX) in tables, name
        sources = re.findall(rf"\b(?:FROM|JOIN) {DB}\.(\w+)", view)
        assert sources and all(s.endswith(LOCAL_SUFFIX) for s in sources), name
    assert f"FROM {DB}.llm_calls_local\n" in views[f"{DB}.llm_calls_1m_mv"]


def test_plain_views_read_the_distributed_tables():
    view = _created(_cluster())[f"{DB}.task_state"]
    assert view.startswith(f"CREATE VIEW IF NOT EXISTS {DB}.task_state{ON_CLUSTER} AS\n")
    assert f"FROM {DB}.task_state_agg\n" in view and "_local" not in view


def test_the_migrations_table_is_replicated_to_every_node():
    create_db, create_table = bookkeeping_statements(_settings(CLUSTER))
    assert create_db == f"CREATE DATABASE IF NOT EXISTS {DB}{ON_CLUSTER}"
    assert create_table.startswith(f"CREATE TABLE IF NOT EXISTS {DB}.schema_migrations{ON_CLUSTER} (")
    assert CLUSTER_WIDE_PATH == "/clickhouse/tables/all/{database}/{table}"  # no {shard}: one table for all
    assert f"ENGINE = ReplicatedMergeTree('{CLUSTER_WIDE_PATH}', '{{shard}}-{{replica}}') ORDER BY version" in create_table


def test_clickhouse_parses_every_cluster_statement():
    """ClickHouse's own parser (chDB's EXPLAIN AST), in a process of its own: chDB allows one engine per process."""
    statements = _cluster()
    script = (
        "import json, sys, chdb\n"
        "out = []\n"
        "for s in json.load(sys.stdin):\n"
        "    try:\n"
        "        out.append(str(chdb.query('EXPLAIN AST ' + s, 'TabSeparatedRaw')))\n"
        "    except Exception as exc:\n"
        "        out.append('ERROR ' + str(exc))\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(statements), capture_output=True,
                          text=True, timeout=120, check=True)
    asts = json.loads(done.stdout.strip().splitlines()[-1])
    for statement, ast in zip(statements, asts, strict=True):
        assert not ast.startswith("ERROR"), f"{statement.splitlines()[0]}: {ast}"
        assert ast.splitlines()[0].startswith(("CreateQuery", "AlterQuery")), ast
    engines = "\n".join(asts)
    assert engines.count("Function Distributed") == len(_storage_tables())
    assert "Function ReplicatedReplacingMergeTree" in engines


class _Client:
    """Records what apply_migrations and the sink send; answers queries with ``rows``, and those of
    the event tables' columns with the columns the sinks insert."""

    def __init__(self, rows=()):
        self.rows = list(rows)
        self.commands: list[str] = []
        self.inserts: list[tuple[str, dict]] = []

    def command(self, sql, **_):
        self.commands.append(sql)

    def query(self, sql, **_):
        if "system.columns" in sql:
            rows = [(table, c.name, c.clickhouse_type) for table, cs in expected_columns().items() for c in cs]
            return type("Result", (), {"result_rows": rows})()
        return type("Result", (), {"result_rows": self.rows})()

    def insert(self, table, rows, column_names=None, settings=None, **_):
        self.inserts.append((table, settings))

    def insert_arrow(self, table, rows, database=None, settings=None):
        self.inserts.append((f"{database}.{table}", settings))


def test_apply_runs_the_cluster_form_and_records_each_migration():
    client = _Client()
    applied = apply_migrations(client, _settings(CLUSTER))
    assert applied == [m.name for m in load_migrations()]
    assert client.commands == _cluster()
    assert [table for table, _ in client.inserts] == [f"{DB}.schema_migrations"] * len(applied)


def test_apply_refuses_a_database_migrated_for_one_server():
    with pytest.raises(ConfigError, match="migrated for one server"):
        apply_migrations(_Client(rows=[("MergeTree",)]), _settings(CLUSTER))


def test_a_statement_without_a_cluster_form_is_refused(tmp_path):
    (tmp_path / "001_alter.sql").write_text("ALTER TABLE {db}.llm_calls ADD COLUMN x UInt8;\n")
    (migration,) = load_migrations(tmp_path)
    assert render_migration(migration, _settings(None), [migration]) == [f"ALTER TABLE {DB}.llm_calls ADD COLUMN x UInt8"]
    with pytest.raises(ConfigError, match="001_alter: `ALTER TABLE .*` has no cluster form"):
        render_migration(migration, _settings(CLUSTER), [migration])


def test_an_alter_of_a_table_alters_its_local_table_and_the_distributed_one_when_columns_change(tmp_path):
    (tmp_path / "001_t.sql").write_text(
        "CREATE TABLE IF NOT EXISTS {db}.t\n(\n    agent_id String,\n    at DateTime64(3, 'UTC')\n)\n"
        "ENGINE = ReplacingMergeTree\nORDER BY agent_id;\n"
    )
    (tmp_path / "002_alter.sql").write_text(
        "ALTER TABLE {db}.t ADD COLUMN IF NOT EXISTS x UInt8, MODIFY COLUMN at DateTime64(3, 'UTC');\n"
        "ALTER TABLE {db}.t MODIFY TTL at + INTERVAL 7 DAY GROUP BY agent_id SET at = max(at), x = max(x);\n"
    )
    migrations = load_migrations(tmp_path)
    columns, ttl = render_migration(migrations[1], _settings(None), migrations)
    assert render_migration(migrations[1], _settings(CLUSTER), migrations) == [
        columns.replace(f"{DB}.t ", f"{DB}.t_local{ON_CLUSTER} "),
        columns.replace(f"{DB}.t ", f"{DB}.t{ON_CLUSTER} "),
        ttl.replace(f"{DB}.t ", f"{DB}.t_local{ON_CLUSTER} "),
    ]


def test_the_shipped_alters_go_to_the_local_tables_and_columns_to_the_distributed_ones_too():
    altered = _altered(_cluster())
    assert altered, "the migrations alter tables (007, 008, 009, 010)"
    tables = _storage_tables()
    views = [(name, statement) for name, statement in altered if " MODIFY QUERY" in statement]
    altered = [pair for pair in altered if pair not in views]
    # A view's new query reads the local table, as the view's CREATE did (010).
    assert [name for name, _ in views] == [f"{DB}.llm_calls_1m_mv"]
    assert views[0][1].startswith(f"ALTER TABLE {DB}.llm_calls_1m_mv{ON_CLUSTER} MODIFY QUERY")
    assert f"FROM {DB}.llm_calls_local\n" in views[0][1]
    for name, statement in altered:
        assert name.split(".")[1].removesuffix(LOCAL_SUFFIX) in tables, statement
        if " TTL " in statement:  # TTLs are the local tables': a Distributed table has none
            assert name.endswith(LOCAL_SUFFIX), statement
        else:
            assert " ADD COLUMN " in statement, statement
    assert f"{DB}.ingest_batches_local" in dict(altered)
    # A column reaches the replicated table and the Distributed one over it (009).
    assert {name for name, statement in altered if "ADD COLUMN IF NOT EXISTS batch " in statement} == {
        f"{DB}.ingest_batches_local", f"{DB}.ingest_batches"}


def test_an_alter_mixing_column_and_other_clauses_is_refused_on_a_cluster(tmp_path):
    (tmp_path / "001_t.sql").write_text(
        "CREATE TABLE IF NOT EXISTS {db}.t\n(\n    agent_id String\n)\nENGINE = MergeTree\nORDER BY agent_id;\n"
    )
    (tmp_path / "002_alter.sql").write_text("ALTER TABLE {db}.t ADD COLUMN x UInt8, MODIFY TTL now() + INTERVAL 1 DAY;\n")
    migrations = load_migrations(tmp_path)
    with pytest.raises(ConfigError, match="002_alter: .* mixes clauses .* split it into two statements"):
        render_migration(migrations[1], _settings(CLUSTER), migrations)


def test_a_table_without_agent_id_needs_a_sharding_key(tmp_path):
    (tmp_path / "001_t.sql").write_text("CREATE TABLE IF NOT EXISTS {db}.t\n(\n    x UInt8\n)\nENGINE = MergeTree\nORDER BY x;\n")
    (migration,) = load_migrations(tmp_path)
    with pytest.raises(ConfigError, match="t has no agent_id column.*SHARDING_KEYS"):
        render_migration(migration, _settings(CLUSTER), [migration])


@pytest.mark.parametrize("cluster", [None, CLUSTER])
def test_sink_inserts_in_the_foreground_only_on_a_cluster(cluster):
    sink = ClickHouseSink(_settings(cluster), group="g")
    sink._client = client = _Client()
    rows = pa.table({"agent_id": ["a"], PARTITION_COLUMN: pa.array([0], pa.int32())})
    sink.write(SinkBatch("llm_calls", "LlmCall", rows, (OffsetRange("agent.llm_calls", 0, 5, 9),)))
    assert [table for table, _ in client.inserts] == [f"{DB}.ingest_batches", f"{DB}.llm_calls", f"{DB}.ingest_batches"]
    extra = {"distributed_foreground_insert": 1} if cluster else {}
    token = OffsetRange("agent.llm_calls", 0, 5, 9).token
    assert client.inserts[0][1] == client.inserts[2][1] == {**INSERT_SETTINGS, **extra}
    assert client.inserts[1][1] == {**INSERT_SETTINGS, **extra, "insert_deduplication_token": token}


def test_the_workers_name_the_cluster_of_the_clickhouse_installation():
    docs = [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    (chi,) = [d for d in docs if d.get("kind") == "ClickHouseInstallation"]
    (cluster,) = chi["spec"]["configuration"]["clusters"]
    (config,) = [d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "ezstream-config"]
    assert config["data"]["EZ_CLICKHOUSE_CLUSTER"] == cluster["name"]
    # Every Deployment of the project's image; the OpenTelemetry Collector (otelcol.yaml) and Grafana
    # (grafana.yaml) read no settings.
    workers = [d for d in docs if d.get("kind") == "Deployment"
               and d["metadata"]["name"] not in ("ezstream-otelcol", "ezstream-grafana")]
    assert workers
    for deployment in workers:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"name": "ezstream-config"} in [src.get("configMapRef") for src in container["envFrom"]]
    assert Settings(clickhouse_cluster=cluster["name"]).clickhouse_cluster == cluster["name"]


def test_batch_jobs_mutate_the_local_tables_on_a_cluster_and_insert_in_the_foreground():
    from connectors.clickhouse.migrations import mutation_target, storage_table
    from connectors.settings import load_settings
    from connectors.clickhouse.sink import INSERT_SETTINGS, insert_settings

    single = load_settings(clickhouse_database="ezstream")
    cluster = load_settings(clickhouse_database="ezstream", clickhouse_cluster="ezstream")
    assert mutation_target(single, "llm_calls") == "ezstream.llm_calls"
    assert mutation_target(cluster, "llm_calls") == "ezstream.llm_calls_local ON CLUSTER 'ezstream'"
    assert storage_table(single, "llm_calls_1m") == "llm_calls_1m"
    assert storage_table(cluster, "llm_calls_1m") == "llm_calls_1m_local"
    assert insert_settings(single) == INSERT_SETTINGS
    assert insert_settings(cluster) == {**INSERT_SETTINGS, "distributed_foreground_insert": 1}
