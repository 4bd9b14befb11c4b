"""Producer throughput: the SDK (validate + encode + send) vs a raw confluent-kafka loop.

Both send the same LlmCall events to fresh topics on the configured broker (start it first with
``ezstream up``); the raw loop sends bytes encoded before the clock starts, with the same
producer settings, so the difference is the SDK's per-event work. Prints figures, asserts nothing.

    .venv/bin/python bench/produce.py --events 200000
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from confluent_kafka import Producer

from connectors.kafka import client_config
from connectors.kafka.codec import default_codec
from connectors.kafka.events import LlmCall
from connectors.kafka.producer import PRODUCER_DEFAULTS, EventProducer
from connectors.kafka.topics import TopicSpec, delete_topics_with_prefix, ensure_topics
from connectors.settings import load_settings


def events(n: int) -> list[LlmCall]:
    start = datetime(2026, 11, 26, tzinfo=timezone.utc)
    models = [("anthropic", "claude-3-haiku"), ("openai", "gpt-4"), ("groq", "mixtral-8x7b")]
    out = []
    for i in range(n):
        provider, model = models[i % 3]
        out.append(LlmCall(
            agent_id=f"development-{i % 38:02d}", agent_type="development", tenant_id=f"tenant-{i % 4}",
            trace_id=f"trace-{i:09d}", call_id=f"call-{i:09d}", provider=provider, model=model,
            api_key_alias=f"{provider}-key-{i % 15:02d}", input_tokens=800 + i % 900, output_tokens=150 + i % 300,
            cost_usd=0.0012, price_version="2026-11-01", latency_ms=250.0 + i % 700, status="ok",
            cache_hit=i % 7 == 0, event_time=start,
        ))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    settings = load_settings()
    run = f"bench.produce.{int(time.time())}"
    sdk_topic, raw_topic = f"{run}.sdk", f"{run}.raw"
    ensure_topics(settings, [TopicSpec(t, settings.topic_partitions, 1, {"retention.ms": "3600000"})
                             for t in (sdk_topic, raw_topic)])
    batch = events(args.events)

    codec = default_codec()
    encoded = [(e.agent_id, codec.encode(e.EVENT, e.to_record())) for e in batch]
    size = sum(len(v) for _, v in encoded) / len(encoded)

    raw = Producer(client_config(settings, **PRODUCER_DEFAULTS))
    t0 = time.perf_counter()
    for key, value in encoded:
        while True:
            try:
                raw.produce(raw_topic, value=value, key=key)
                break
            except BufferError:
                raw.poll(0.05)
        raw.poll(0)
    assert raw.flush(60) == 0
    raw_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    with EventProducer(settings) as producer:
        for event in batch:
            producer.send(event, topic=sdk_topic)
    sdk_s = time.perf_counter() - t0
    assert sum(producer.delivered.values()) == args.events

    n = args.events
    print(f"events: {n:,}, mean message size: {size:.0f} bytes, partitions: {settings.topic_partitions}")
    print(f"raw confluent-kafka loop (pre-encoded bytes): {n / raw_s:>10,.0f} events/s  ({raw_s:.2f} s)")
    print(f"EventProducer (validate + encode + send):     {n / sdk_s:>10,.0f} events/s  ({sdk_s:.2f} s)")
    print(f"SDK / raw: {raw_s / sdk_s:.2f}")
    gone = delete_topics_with_prefix(settings, f"{run}.")
    print(f"this run's {len(gone)} topics ({run}.*) deleted")


if __name__ == "__main__":
    main()
