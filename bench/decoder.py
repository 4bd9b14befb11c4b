"""Decoder throughput: the native batch decoder vs the fastavro path, on the same LlmCall messages.

The messages are LlmCall events from ``streams/simulate.py`` (seeded), encoded once with the
codec before any clock starts, and the same events as JSON objects (what any Kafka client may
send, connectors/kafka/jsonrecord.py). Each run decodes all of them, in batches of ``--batch``
(one batch by default), into Arrow tables: :class:`NativeCodec` (native/, the Rust extension) on
the Avro messages and on the JSON ones, and :meth:`Codec.decode_batch_arrow` (fastavro) on the
Avro ones, ``--runs`` times each after a first run not counted.
Both are single-threaded; CPU seconds are given beside wall seconds because the machine may be
shared (``uptime`` says how busy it was). Checks once that both give the same table, then prints
figures.

    .venv/bin/python bench/decoder.py --events 200000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone

from connectors.kafka.codec import default_codec
from connectors.kafka.events import LlmCall
from connectors.kafka.native import NativeCodec
from streams.simulate import generate


def messages(count: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` LlmCall events as Avro messages, and the same events as JSON messages."""
    codec = default_codec()
    avro, as_json = [], []
    for event in generate(13, start_time=datetime(2026, 11, 26, tzinfo=timezone.utc)):
        if isinstance(event, LlmCall):
            record = event.to_record()
            avro.append(codec.encode(event.EVENT, record))
            record["event_time"] = round(record["event_time"].timestamp() * 1000)
            as_json.append(json.dumps(record).encode())
            if len(avro) == count:
                return avro, as_json
    raise AssertionError("generate() is endless")


def measure(decode: Callable[[list[bytes]], object], batch: list[bytes], size: int, runs: int) -> tuple[list, list]:
    """Seconds of wall and CPU time of each run, after one run not counted (it warms the allocator)."""
    walls, cpus = [], []
    decode(batch[:size])
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(batch), size):
            decode(batch[start:start + size])
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def report(name: str, count: int, walls: list[float], cpus: list[float]) -> None:
    def rate(seconds: float) -> str:
        return f"{count / seconds:>12,.0f}"

    print(f"{name:<28} events/s  wall: best {rate(min(walls))}  median {rate(statistics.median(walls))}"
          f"   cpu: best {rate(min(cpus))}  median {rate(statistics.median(cpus))}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=0, help="messages per decode call (0: all in one)")
    args = parser.parse_args()
    codec, native = default_codec(), NativeCodec()
    batch, as_json = messages(args.events)
    size = args.batch or len(batch)
    print(f"{len(batch):,} LlmCall messages, {sum(map(len, batch)) / len(batch):.0f} bytes each as Avro, "
          f"{sum(map(len, as_json)) / len(as_json):.0f} as JSON, {size:,} per decode call")
    expected = codec.decode_batch_arrow(batch[:size], "llm_call")
    actual = native.decode_batch_arrow(batch[:size], "llm_call")
    assert actual.table.equals(expected.table) and not actual.failures and not expected.failures
    from_json = native.decode_batch_arrow(as_json[:size], "llm_call")
    assert from_json.table.equals(actual.table) and not from_json.failures

    print(f"before: {uptime()}")
    report("native (ezstream_native)", len(batch), *measure(
        lambda b: native.decode_batch_arrow(b, "llm_call"), batch, size, args.runs))
    print(f"between: {uptime()}")
    report("native, JSON messages", len(as_json), *measure(
        lambda b: native.decode_batch_arrow(b, "llm_call"), as_json, size, args.runs))
    print(f"between: {uptime()}")
    report("fastavro (Codec)", len(batch), *measure(
        lambda b: codec.decode_batch_arrow(b, "llm_call"), batch, size, args.runs))
    print(f"after: {uptime()}")


if __name__ == "__main__":
    main()
