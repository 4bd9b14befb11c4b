"""``ezstream status``: the operator's view of one ``EZ_HOME`` and its topics.

Services and their health, the live dashboard (whether it runs, its URL), the workers of this
home, consumer lag per group and topic (from the broker: committed offsets against partition
ends), the last write of each sink, DLQ sizes and the alerts role's state. Every part that cannot
be read says why instead of failing the whole view.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any

from connectors.kafka import client_config
from connectors.kafka.topics import EVENT_TOPICS, FOREIGN_TOPICS, OTLP_SPANS, dlq_topic, topic_name
from connectors.settings import Settings
from connectors.sink import TABLES


def consumer_groups(settings: Settings) -> dict[str, list[str]]:
    """Each consumer group of the project with the topics it reads (names on the broker)."""
    names = lambda bases: [topic_name(settings, b) for b in bases]  # noqa: E731
    prefix = settings.topic_prefix
    return {
        f"{prefix}ezstream.lake": names(TABLES),
        f"{prefix}ezstream.clickhouse": names(TABLES),
        **{f"{prefix}ezstream.alerts.positions" + (f".{i}" if i else ""): names(("agent.tasks", "agent.llm_calls", "agent.telemetry"))
           for i in range(settings.alerts_shards)},  # one group per shard of the alerts role
        f"{prefix}ezstream.inference": names(("inference.requests",)),
        f"{prefix}ezstream.spans": names((OTLP_SPANS,)),
    }


def lag(settings: Settings, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Per group, topic and partition: committed offset, end offset and lag (end - committed,
    the whole partition when nothing was committed)."""
    from confluent_kafka import Consumer, TopicPartition

    rows = []
    probe = Consumer(client_config(settings, **{"group.id": f"{settings.topic_prefix}ezstream.status",
                                                "enable.auto.commit": False}))
    try:
        metadata = probe.list_topics(timeout=timeout_s)
        ends: dict[tuple[str, int], tuple[int, int]] = {}
        for group, topics in consumer_groups(settings).items():
            tps = [TopicPartition(t, p) for t in topics if t in metadata.topics
                   for p in sorted(metadata.topics[t].partitions)]
            if not tps:
                continue
            reader = Consumer(client_config(settings, **{"group.id": group, "enable.auto.commit": False}))
            try:
                committed = reader.committed(tps, timeout=timeout_s)
            finally:
                reader.close()
            for tp in committed:
                key = (tp.topic, tp.partition)
                if key not in ends:
                    ends[key] = probe.get_watermark_offsets(TopicPartition(*key), timeout=timeout_s)
                low, high = ends[key]
                position = tp.offset if tp.offset >= 0 else None
                rows.append({"group": group, "topic": tp.topic, "partition": tp.partition,
                             "committed": position, "end": high,
                             "lag": high - (position if position is not None else low)})
    finally:
        probe.close()
    return rows


def dlq_sizes(settings: Settings, timeout_s: float = 10.0) -> dict[str, int]:
    """Messages held by each DLQ topic (end - start over its partitions)."""
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer(client_config(settings, **{"group.id": f"{settings.topic_prefix}ezstream.status",
                                                "enable.auto.commit": False}))
    try:
        metadata = probe.list_topics(timeout=timeout_s)
        sizes = {}
        for base in (*EVENT_TOPICS, *FOREIGN_TOPICS):
            topic = dlq_topic(topic_name(settings, base))
            if topic not in metadata.topics:
                continue
            total = 0
            for p in metadata.topics[topic].partitions:
                low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                total += high - low
            sizes[topic] = total
        return sizes
    finally:
        probe.close()


def workers(settings: Settings) -> list[dict[str, Any]]:
    """The background workers of this ``EZ_HOME`` (``ezstream worker --detach``, the demo)."""
    found = []
    for pid_file in sorted(settings.run_dir.glob("*worker*.pid")):
        name = pid_file.stem
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
            alive = True
        except (ValueError, OSError):
            pid, alive = None, False
        ready = (settings.run_dir / f"{name}.ready").exists()
        try:  # what each role of the worker is doing: running, or restarting after a crash
            roles = json.loads((settings.run_dir / f"{name}.roles.json").read_text()) if alive else {}
        except (OSError, ValueError):
            roles = {}
        found.append({"name": name, "pid": pid, "alive": alive, "ready": ready, "roles": roles})
    return found


def last_lake_writes(settings: Settings) -> dict[str, str | None]:
    """Time of the latest commit of each lake table."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from connectors.lake import storage_options, table_uri

    out: dict[str, str | None] = {}
    for table in TABLES.values():
        try:
            history = DeltaTable(table_uri(settings, table), storage_options=storage_options(settings)).history(1)
        except TableNotFoundError:
            continue
        ts = history[0].get("timestamp") if history else None
        out[table] = None if ts is None else datetime.fromtimestamp(ts / 1000, timezone.utc).isoformat()
    return out


def last_clickhouse_writes(settings: Settings) -> dict[str, str]:
    """Time of the latest batch the ClickHouse sink wrote, per topic (from ``ingest_batches``)."""
    from streams.query_server import query

    db = settings.clickhouse_database
    _, rows = query(settings, f"SELECT topic, toString(max(recorded_at)) FROM {db}.ingest_batches "
                              f"WHERE written GROUP BY topic ORDER BY topic", timeout_s=10)
    return {topic: at for topic, at in rows}


def alerts_role(settings: Settings) -> dict[str, Any] | None:
    """The alerts role's status file; with shards, ``{"shards": {index: status}}`` of those found."""
    name = f"alerts-{settings.topic_prefix or 'default'}"
    if settings.alerts_shards == 1:
        paths = {0: settings.run_dir / f"{name}.status.json"}
    else:
        paths = {i: settings.run_dir / f"{name}.shard-{i}.status.json" for i in range(settings.alerts_shards)}
    found = {}
    for index, path in paths.items():
        try:
            found[index] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    if settings.alerts_shards == 1:
        return found.get(0)
    return {"shards": found} if found else None


def _attempt(what: str, action, errors: dict[str, str]):
    try:
        return action()
    except Exception as exc:  # noqa: BLE001  one unreadable part must not hide the others
        errors[what] = f"{type(exc).__name__}: {exc}"
        return None


def operator_view(settings: Settings) -> dict[str, Any]:
    """Everything ``ezstream status`` shows, as one JSON-friendly dict."""
    from infra.local import Stack

    errors: dict[str, str] = {}
    stack = Stack(settings)
    services = [row.__dict__ for row in stack.status()]
    kafka_up = any(s["name"] == "kafka" and s["healthy"] for s in services)
    view: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "services": services,
        # Started on demand (`ezstream dashboard`, the demo): shown, but not one of the services
        # whose health `ezstream status` exits 1 on.
        "dashboard": stack.dashboard_status().__dict__,
        "workers": workers(settings),
        "lag": (_attempt("lag", lambda: lag(settings), errors) or []) if kafka_up else [],
        "dlq": (_attempt("dlq", lambda: dlq_sizes(settings), errors) or {}) if kafka_up else {},
        "last_write": {
            "lake": _attempt("lake", lambda: last_lake_writes(settings), errors) or {},
            "clickhouse": _attempt("clickhouse", lambda: last_clickhouse_writes(settings), errors) or {},
        },
        "alerts": alerts_role(settings),
    }
    if not kafka_up:
        errors["kafka"] = "the broker is down: no lag or DLQ figures"
    view["errors"] = errors
    return view


def format_view(view: dict[str, Any]) -> str:
    """The view as tables readable at a glance."""
    lines = [f"{'SERVICE':<11} {'ADDRESS':<44} {'STATE':<9} HEALTH"]
    for s in view["services"]:
        lines.append(f"{s['name']:<11} {s['address']:<44} {s['state']:<9} {'ok' if s['healthy'] else 'DOWN'}")
    board = view["dashboard"]
    health = "ok" if board["healthy"] else "DOWN (ezstream dashboard starts it)" if board["state"] == "stopped" else "DOWN"
    lines.append(f"{board['name']:<11} {board['address']:<44} {board['state']:<9} {health}")
    if view["workers"]:
        lines += ["", f"{'WORKER':<34} {'PID':>8}  STATE"]
        for w in view["workers"]:
            state = "ready" if w["alive"] and w["ready"] else "starting" if w["alive"] else "dead"
            lines.append(f"{w['name']:<34} {w['pid'] or '-':>8}  {state}")
            for role, r in sorted(w.get("roles", {}).items()):
                restarts = f", {r['restarts']} restart(s), last: {r['last_error']}" if r.get("restarts") else ""
                lines.append(f"  role {role:<27} {'':>8}  {r.get('state')} since {r.get('since')}{restarts}")
    totals: dict[tuple[str, str], list[int]] = {}
    for row in view["lag"]:
        entry = totals.setdefault((row["group"], row["topic"]), [0, 0, 0])
        entry[0] += row["lag"]
        entry[1] += 1
        entry[2] += row["committed"] is None
    if totals:
        lines += ["", f"{'CONSUMER GROUP':<40} {'TOPIC':<34} {'LAG':>10}  PARTITIONS"]
        for (group, topic), (total, parts, never) in sorted(totals.items()):
            note = f"{parts}" + (f" ({never} never committed)" if never else "")
            lines.append(f"{group:<40} {topic:<34} {total:>10,}  {note}")
    writes = [(sink, table, at) for sink, tables in view["last_write"].items() for table, at in tables.items()]
    if writes:
        lines += ["", f"{'SINK':<11} {'TABLE / TOPIC':<34} LAST WRITE (UTC)"]
        lines += [f"{sink:<11} {table:<34} {at or '-'}" for sink, table, at in sorted(writes)]
    if view["dlq"]:
        lines += ["", f"{'DLQ':<44} {'MESSAGES':>10}"]
        lines += [f"{topic:<44} {n:>10,}" for topic, n in sorted(view["dlq"].items())]
    shards = (view["alerts"] or {}).get("shards")
    for label, alerts in ([(f"alerts shard {i}", shards[i]) for i in sorted(shards)] if shards
                          else [("alerts role", view["alerts"])]):
        if not alerts:
            continue
        state = "active" if alerts.get("active") else "standing by / stopped"
        lines += ["", f"{label}: {state}, caught up: {alerts.get('caught_up')}, "
                      f"commit {alerts.get('commit')} (snapshot {alerts.get('snapshot')}), "
                      f"late events {alerts.get('late_events')}"]
        held = alerts.get("state")
        if held:
            lines.append(f"alerts state: {sum(held['entries'].values()):,} entries "
                         f"({', '.join(f'{rule} {n:,}' for rule, n in sorted(held['entries'].items()))}), "
                         f"snapshot {held.get('snapshot_bytes', 0):,} bytes")
        clock = alerts.get("event_time")
        if clock and clock.get("low_ms") is not None:
            low = datetime.fromtimestamp(clock["low_ms"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            lines.append(f"alerts event time: {low} UTC on the slowest LLM-call partition, partitions "
                         f"{clock['skew_ms'] / 1000:,.1f} s apart" + (", catching up" if clock.get("catching_up") else ""))
    for what, error in view["errors"].items():
        lines.append(f"({what}: {error})")
    return "\n".join(lines)

