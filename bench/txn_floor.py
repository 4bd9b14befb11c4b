"""Kafka's transactional floor on this broker, alone: what any processor whose outputs commit
with its state pays per step, with nothing else running.

Needs the local stack (``ezstream up``). On two fresh topics (``out`` and ``state``), ``--count``
transactions (1,000) at ``--rate`` a second (10) after ``--warmup`` untimed ones (50), each as the
alerts role's step for a live alert: ``begin_transaction``, a tombstone on the state partition
(the role registers that partition with the transaction so, as it begins), ``--gap`` ms later
(50, the step's own work) one record to the next partition of ``out`` and a 2 KiB state record,
``commit_transaction``; a ``read_committed`` consumer reads ``out`` (bench/alerts.py's reader).
Prints, asserts nothing, each stage's p50, p99 with its 95 % confidence interval and max:

- records acknowledged: the output partition joining the transaction (``AddPartitionsToTxn``),
  then its produce, which the broker checks with the coordinator before appending
  (``transaction.partition.verification.enable``, KIP-890's server-side defence);
- the commit: ``EndTxn``;
- readable: from the commit's end until the reader has the record (the coordinator's markers,
  the reader's fetch);
- in all, from the produce to readable, with bench/alerts.py's machine probe beside it.

A processor's alert path can be no quicker than the last line: it is this plus the first hop
(the triggering event read) and the processor's own work. Each run's topics are deleted when it
ends.

    .venv/bin/python bench/txn_floor.py [--count 1000] [--rate 10] [--warmup 50] [--gap 50]
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

from confluent_kafka import Producer

from alerts import Timer, machine_probe, report, wait_drained, watch  # bench/alerts.py, next to this script
from connectors.kafka.config import producer_config
from connectors.kafka.topics import TopicSpec, delete_topics_with_prefix, ensure_topics, topic_name
from connectors.settings import load_settings

#: The state record of each transaction, as bench/alerts.py's transactional forwarder writes it.
STATE_BYTES = 2048


class StageTimer(Timer):
    """bench/alerts.py's timer, keeping when each record became readable."""

    def __init__(self) -> None:
        super().__init__()
        self.readable: dict[str, float] = {}

    def arrived(self, tag: str, produced_ms: int | None = None) -> None:
        self.readable[tag] = time.perf_counter()
        super().arrived(tag, produced_ms)


def stage(name: str, samples: list[float]) -> None:
    """A stage's durations (ms, sorted) printed as bench/alerts.py prints a path's."""
    timer = Timer()
    timer.latencies, timer.sends = samples, len(samples)
    report(name, timer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="transactions timed (368 bound a p99 from above)")
    parser.add_argument("--rate", type=float, default=10.0, help="transactions a second")
    parser.add_argument("--warmup", type=int, default=50, help="transactions before the timed ones, not timed")
    parser.add_argument("--gap", type=float, default=50.0,
                        help="ms from a transaction's begin to its records (the role's step between them)")
    args = parser.parse_args()

    base = load_settings()
    prefix = f"bench.floor.{int(time.time())}."
    settings = load_settings(topic_prefix=prefix, topic_partitions=base.topic_partitions)
    out, state = topic_name(settings, "out"), topic_name(settings, "state")
    ensure_topics(settings, [TopicSpec(t, settings.topic_partitions, 1, {}) for t in (out, state)])
    print(f"Kafka transactions alone: {args.count:,} at {args.rate:g}/s after {args.warmup} untimed "
          f"(broker {settings.kafka_bootstrap}, topics {prefix}*)")
    # The alerts role's producer settings (streams/intelligence/processor.py, ShardProcessor._activate).
    producer = Producer(producer_config(settings, **{"transactional.id": f"bench-floor-{uuid.uuid4().hex}",
                                                      "linger.ms": 0, "retry.backoff.ms": 10}))
    producer.init_transactions(60)
    timer, stop, ready = StageTimer(), threading.Event(), threading.Event()
    watcher = threading.Thread(target=watch, args=(settings, out, lambda m: m.value().decode(), timer, stop, ready))
    watcher.start()
    acked, committed, ended = {}, {}, {}
    period = 1 / args.rate
    try:
        ready.wait(30)
        state_value = bytes(STATE_BYTES)
        with machine_probe(timer, args.warmup * period, args.count * period):
            started = time.perf_counter()
            for n in range(args.warmup + args.count):
                while time.perf_counter() < started + n * period:
                    time.sleep(0.0005)
                producer.begin_transaction()
                producer.produce(state, key=b"begin", value=None, partition=0)
                producer.poll(0)
                time.sleep(args.gap / 1000)
                tag = f"floor-{n}"
                timed = n >= args.warmup
                if timed:
                    timer.send(tag)
                sent = time.perf_counter()
                producer.produce(out, key=tag.encode(), value=tag.encode(), partition=n % settings.topic_partitions)
                producer.produce(state, key=b"state", value=state_value, partition=0)
                producer.flush(30)
                flushed = time.perf_counter()
                producer.commit_transaction(30)
                if timed:
                    ended[tag] = time.perf_counter()
                    acked[tag], committed[tag] = (flushed - sent) * 1000, (ended[tag] - flushed) * 1000
            wait_drained(timer)
    finally:
        stop.set()
        watcher.join()
        delete_topics_with_prefix(settings, prefix)
    readable = [tag for tag in ended if tag in timer.readable]
    stage("records acknowledged", sorted(acked.values()))
    stage("commit_transaction", sorted(committed.values()))
    # A record may be read before commit_transaction returns to this thread: negative then.
    stage("commit's end to readable", sorted((timer.readable[t] - ended[t]) * 1000 for t in readable))
    report("produce to readable, in all", timer)


if __name__ == "__main__":
    main()
