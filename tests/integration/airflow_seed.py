"""Seeded data for the Airflow DAG tests, written the way the sinks write it, and SQL on chDB.

Run as a module in a process of its own when it touches ClickHouse: the test process already
holds the session's embedded engine, and chDB opens one data folder per process. Settings come
from the ``EZ_*`` environment (the same the DAG run gets)::

    python -m tests.integration.airflow_seed seed START COUNT SEED BATCHES FIRST_OFFSET [--clickhouse]
    python -m tests.integration.airflow_seed sql "SELECT …"      # JSON rows on stdout
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from datetime import datetime

import pyarrow as pa

from connectors.kafka.codec import default_codec, encode
from connectors.kafka.schemas import TOPIC_EVENTS
from connectors.lake.sink import LakeSink
from connectors.settings import Settings, load_settings
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, TABLES, OffsetRange, SinkBatch
from streams.simulate import generate

#: Topic prefix of the seeded batches (the sinks record the topic names as given).
PREFIX = "seed."


def batches(start: datetime, count: int, seed: int, splits: int, first_offset: int = 0) -> list[SinkBatch]:
    """``count`` simulated events from ``start`` (one per simulated 2 s), per table cut into
    ``splits`` batches of consecutive offsets on partition 0, starting at ``first_offset``."""
    by_topic: dict[str, list] = defaultdict(list)
    events = {name: topic for topic, name in TOPIC_EVENTS.items()}
    for event in generate(seed, start_time=start, count=count, rate=0.5):
        by_topic[events[event.EVENT]].append(event)
    out = []
    for topic, items in sorted(by_topic.items()):
        name = TOPIC_EVENTS[topic]
        decoded = default_codec().decode_batch_arrow([encode(name, e.to_record()) for e in items], name)
        assert not decoded.failures, decoded.failures
        size = -(-len(items) // splits)
        for first in range(0, len(items), size):
            rows = decoded.table.slice(first, size)
            n = rows.num_rows
            offset = first_offset + first
            rows = rows.append_column(PARTITION_COLUMN, pa.array([0] * n, pa.int32()))
            rows = rows.append_column(OFFSET_COLUMN, pa.array(range(offset, offset + n), pa.int64()))
            out.append(SinkBatch(TABLES[topic], name, rows, (OffsetRange(PREFIX + topic, 0, offset, offset + n - 1),)))
    return out


def seed(settings: Settings, start: datetime, count: int, seed_: int, splits: int, clickhouse: bool = False,
         first_offset: int = 0) -> dict[str, int]:
    """Write the seeded batches into the lake (and ClickHouse); rows per table."""
    sinks = [LakeSink(settings, "seed")]
    if clickhouse:
        from connectors.clickhouse.sink import ClickHouseSink

        sinks.append(ClickHouseSink(settings, "seed"))
    rows: dict[str, int] = defaultdict(int)
    for sink in sinks:
        sink.setup()
    for batch in batches(start, count, seed_, splits, first_offset):
        for sink in sinks:
            sink.write(batch)
        rows[batch.table] += batch.rows.num_rows
    return dict(rows)


def sql(settings: Settings, query: str) -> list[list]:
    from connectors.clickhouse import get_client
    from connectors.clickhouse.migrations import apply_migrations

    client = get_client(settings)
    apply_migrations(client, settings)
    if query.lstrip().upper().startswith(("ALTER", "INSERT", "OPTIMIZE")):
        client.command(query, settings={"mutations_sync": 2})
        return []
    return [list(r) for r in client.query(query).result_rows]


def main(argv: list[str]) -> None:
    settings = load_settings()
    if argv[0] == "seed":
        start, (count, seed_, splits, offset) = datetime.fromisoformat(argv[1]), map(int, argv[2:6])
        print(json.dumps(seed(settings, start, count, seed_, splits, "--clickhouse" in argv, offset)))
    elif argv[0] == "sql":
        print(json.dumps(sql(settings, argv[1]), default=str))
    else:
        raise SystemExit(f"unknown command {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
