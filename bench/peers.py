"""The alternative a ClickHouse user would pick: ClickHouse's own Kafka table engine, side by side.

Needs the local stack (``ezstream up``). Produces a JSONEachRow copy of the same events
``bench/pipeline.py`` uses (same seed and count) to topics of its own, and has the embedded engine
(chDB, the Kafka engine compiled in) read them with a Kafka table per topic and a materialized
view into the project's own tables, with their rollup views (the migrations applied as the sink
applies them). Prints the durable rate (first produce -> the tables hold every row) and the
engine's CPU seconds; asserts nothing.

Its exactness is not ours: the Kafka engine commits offsets after inserting a block, so a crash
in between inserts that block again (at least once), and a row that does not parse stops the
table's stream unless ``kafka_skip_broken_messages`` drops it silently.

Runs the engine in this process without importing the ``chdb`` package: its import opens and
closes an engine, which shuts down the registry of streaming tables for the rest of the process
(a Kafka table then fails with "Shutdown was called"). The extension module is loaded directly.

    .venv/bin/python bench/peers.py --events 300000
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import resource
import sys
import time
import types
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from connectors.clickhouse.migrations import load_migrations
from connectors.kafka.topics import TopicSpec, delete_topics_with_prefix, ensure_topics, topic_name
from connectors.settings import load_settings
from streams.simulate import generate

from pipeline import produce  # bench/pipeline.py, next to this script: the same raw producer loop

#: The simulated topics and the project's tables they fill.
SIMULATED = {"agent.tasks": "task_events", "agent.llm_calls": "llm_calls", "agent.telemetry": "telemetry"}
#: Columns the Kafka engine's view fills from the message's place, or the table from its default.
PLACE = {"kafka_partition": "_partition", "kafka_offset": "_offset"}


def raw_engine() -> Any:
    """chDB's extension module, loaded without running ``chdb/__init__.py`` (see the docstring)."""
    import site

    folder = next(Path(p) / "chdb" for p in site.getsitepackages() if (Path(p) / "chdb").is_dir())
    package = types.ModuleType("chdb")
    package.__path__ = [str(folder)]
    sys.modules["chdb"] = package
    cwd = os.getcwd()
    os.chdir(folder)  # as chdb/__init__.py does: the module finds its companion libraries there
    try:
        ctypes.CDLL(str(folder / "_chdb.abi3.so"), mode=sys.getdlopenflags() | 0x8)  # RTLD_DEEPBIND
        return importlib.import_module("chdb._chdb")
    finally:
        os.chdir(cwd)


def json_events(n: int, seed: int, start: datetime) -> list[tuple[str, str, bytes]]:
    """The pipeline bench's events as JSON objects: timestamps as ClickHouse reads them."""
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        if isinstance(value, uuid.UUID):
            return str(value)
        if hasattr(value, "value"):  # enums
            return value.value
        return value

    out = []
    for event in generate(seed, start_time=start, count=n, rate=5000):
        record = {k: plain(v) for k, v in event.to_record().items()}
        out.append((event.TOPIC, event.agent_id, json.dumps(record, separators=(",", ":")).encode()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    base = load_settings()
    run = f"peers{int(time.time())}"
    home = base.home / "bench" / run
    settings = load_settings(home=home, topic_prefix=f"{run}.json.")
    topics = {topic: topic_name(settings, topic) for topic in SIMULATED}
    ensure_topics(settings, [TopicSpec(name, settings.topic_partitions, settings.topic_replication,
                                       {"cleanup.policy": "delete"}) for name in topics.values()])
    print(f"preparing {args.events:,} JSON events…", flush=True)
    events = json_events(args.events, seed=11, start=datetime(2026, 11, 26, tzinfo=timezone.utc))
    want = {SIMULATED[t]: sum(1 for topic, _, _ in events if topic == t) for t in SIMULATED}

    engine = raw_engine()
    home.mkdir(parents=True, exist_ok=True)
    conn = engine.connect(str(home / "clickhouse"))

    def sql(statement: str) -> str:
        return conn.query(statement, "TSVRaw").bytes().decode()

    db = "peer"
    sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    for migration in load_migrations():
        for statement in migration.statements({"db": db, "ttl_days": "36500"}):
            sql(statement)
    for topic, table in SIMULATED.items():
        columns = [line.split("\t") for line in sql(
            f"SELECT name, type FROM system.columns WHERE database = '{db}' AND table = '{table}' "
            "AND default_kind = '' ORDER BY position").splitlines()]
        body = [(name, kind) for name, kind in columns if name not in PLACE]
        sql(f"""CREATE TABLE {db}.kafka_{table} ({', '.join(f'{n} {k}' for n, k in body)})
                ENGINE = Kafka SETTINGS kafka_broker_list = '{settings.kafka_bootstrap}',
                kafka_topic_list = '{topics[topic]}', kafka_group_name = '{run}.{table}',
                kafka_format = 'JSONEachRow', kafka_num_consumers = 1,
                kafka_flush_interval_ms = 1000""")  # as often as the sinks flush (EZ_CLICKHOUSE_FLUSH_SECONDS)
        select = ", ".join([n for n, _ in body] + [f"{PLACE[n]} AS {n}" for n in PLACE])
        sql(f"CREATE MATERIALIZED VIEW {db}.kafka_{table}_mv TO {db}.{table} AS SELECT {select} FROM {db}.kafka_{table}")

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    produce(settings, events)
    produced = time.perf_counter() - started
    held: dict[str, int] = {}
    while time.perf_counter() - started < args.timeout:
        held = {t: int(sql(f"SELECT count() FROM {db}.{t}") or 0) for t in want}
        if held == want:
            break
        time.sleep(0.1)
    durable = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    rollup = sql(f"SELECT countMerge(calls) FROM {db}.llm_calls_1m").strip()
    for table in SIMULATED.values():
        sql(f"DROP TABLE {db}.kafka_{table}_mv")
        sql(f"DROP TABLE {db}.kafka_{table}")
    conn.close()
    gone = delete_topics_with_prefix(settings, settings.topic_prefix)
    print(f"this run's {len(gone)} topics ({settings.topic_prefix}*) deleted; its files stay in {home}")

    n = args.events
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    print(f"\nevents: {n:,} on {settings.topic_partitions} partitions x {len(SIMULATED)} topics, JSONEachRow")
    if held != want:
        print(f"ClickHouse Kafka engine: NOT DONE after {args.timeout:.0f} s: holds {held}, want {want}")
        return
    print(f"produce (raw, pre-encoded JSON):        {n / produced:>10,.0f} events/s")
    print(f"ClickHouse Kafka engine, durable:       {n / durable:>10,.0f} events/s  ({durable:.1f} s; into the "
          f"project's tables and rollups, llm_calls_1m counts {rollup} calls)")
    print(f"this process's CPU meanwhile:           {cpu:>10.1f} s  ({cpu / n * 1e6:.1f} µs per event; "
          "the producer's included)")


if __name__ == "__main__":
    main()
