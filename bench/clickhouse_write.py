"""The ClickHouse write path alone: cost per row of the sink's writes at the batch shapes it uses.

Embedded engine (chDB) in a folder of its own, the project's migrations applied. Simulated
LlmCall and TaskEvent messages (seeded) are encoded and decoded by the native decoder before any
clock starts, with the loop's partition and offset columns, so each timed call is exactly what
:class:`~connectors.clickhouse.sink.ClickHouseSink` does for a flush: for each (topic, partition)
batch of ``--rows`` rows, its range recorded in ``ingest_batches``, its insert (materialized views
and their rollups included), its range marked written. Printed per shape, CPU and wall time per
row (CPU includes the engine's own threads: background merges run while it inserts):

- ``sink``: ``ClickHouseSink.write``, one call per partition batch (what the loop does today);
- ``insert only``: the same inserts without the two ``ingest_batches`` records;
- ``no views``: the same inserts into copies of the tables without materialized views.

    .venv/bin/python bench/clickhouse_write.py --rows 1000,5000,20000 --batches 30
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from connectors.clickhouse import get_client
from connectors.clickhouse.sink import ClickHouseSink
from connectors.kafka.codec import default_codec
from connectors.kafka.native import NativeCodec
from connectors.settings import load_settings
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, TABLES, OffsetRange, SinkBatch
from streams.simulate import generate

#: Catalogue topic -> event of the tables measured (the two busiest topics, each with its views).
MEASURED = {"agent.llm_calls": "llm_call", "agent.tasks": "task_event"}


def decoded_rows(count: int) -> dict[str, pa.Table]:
    """``count`` rows of each measured event, as the loop hands them to a sink."""
    codec, native = default_codec(), NativeCodec()
    wanted = {event: [] for event in MEASURED.values()}
    for event in generate(17, start_time=datetime(2026, 11, 26, tzinfo=timezone.utc)):
        bodies = wanted.get(event.EVENT)
        if bodies is not None and len(bodies) < count:
            bodies.append(codec.encode(event.EVENT, event.to_record()))
        if all(len(b) == count for b in wanted.values()):
            break
    tables = {}
    for event, bodies in wanted.items():
        table = native.decode_batch_arrow(bodies, event).table
        table = table.append_column(PARTITION_COLUMN, pa.array([0] * count, pa.int32()))
        tables[event] = table.append_column(OFFSET_COLUMN, pa.array(range(count), pa.int64()))
    return tables


def cpu_s() -> float:
    """CPU seconds of this process, every thread (the engine's merges and views) included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000,5000,20000", help="rows per partition batch, comma-separated")
    parser.add_argument("--batches", type=int, default=30, help="partition batches per event and shape")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    shapes = [int(r) for r in args.rows.split(",")]
    home = Path(tempfile.mkdtemp(prefix="ezstream-chbench-"))
    settings = load_settings(home=home, clickhouse_dsn=f"chdb://{home}/clickhouse", clickhouse_database="chbench")
    sink = ClickHouseSink(settings, group="bench")
    sink.setup()
    client = get_client(settings)
    for event_table in (TABLES[t] for t in MEASURED):
        client.command(f"CREATE TABLE chbench.{event_table}_noviews AS chbench.{event_table}")
    rows = decoded_rows(max(shapes))
    print(f"chDB in {home}; {args.batches} partition batches per event and shape, {args.runs} runs; {uptime()}")
    offset = 0

    def timed(write, size: int) -> tuple[float, float]:
        """CPU and wall seconds per row of writing ``args.batches`` batches of ``size`` rows of each event."""
        nonlocal offset
        wall, cpu, total = time.perf_counter(), cpu_s(), 0
        for _ in range(args.batches):
            for topic, event in MEASURED.items():
                table = rows[event].slice(0, size)
                rng = OffsetRange(f"bench.{topic}", 0, offset, offset + size - 1)
                write(SinkBatch(TABLES[topic], event, table, (rng,)))
                total += size
            offset += size
        return (cpu_s() - cpu) / total, (time.perf_counter() - wall) / total

    ways = {
        "sink": sink.write,
        "insert only": lambda b: sink._insert(b.table, b.rows, b.ranges[0].token),
        "no views": lambda b: sink._insert(f"{b.table}_noviews", b.rows, b.ranges[0].token),
    }
    for size in shapes:
        for name, write in ways.items():
            figures = [timed(write, size) for _ in range(args.runs)]
            cpus = sorted(c for c, _ in figures)
            walls = sorted(w for _, w in figures)
            print(f"{size:>7,} rows/batch  {name:<12} µs/row  cpu: min {cpus[0] * 1e6:6.2f} median "
                  f"{statistics.median(cpus) * 1e6:6.2f}   wall: min {walls[0] * 1e6:6.2f} median "
                  f"{statistics.median(walls) * 1e6:6.2f}   ({1 / statistics.median(walls):>9,.0f} rows/s)")
    print(f"after: {uptime()}")


if __name__ == "__main__":
    main()
