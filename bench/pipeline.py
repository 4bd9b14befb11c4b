"""End-to-end pipeline benchmark: Kafka -> worker -> lake + ClickHouse, against raw Kafka.

Needs the local stack (``ezstream up``). Uses topics of its own (a fresh ``EZ_TOPIC_PREFIX``) and
a lake and ClickHouse folder of its own under ``$EZ_HOME/bench``. Prints, asserts nothing:

1. durable throughput: from the first produce of N pre-encoded events to the last one written
   (and committed) by both the lake and the ClickHouse sink (one worker process, or one per sink
   with ``--split``), and when each sink got there. The workers flush at least every second
   (``--lake-flush-seconds``), so the figure is not the flush interval's, and a caught-up sink
   writes its batch once it is ``--flush-quiet-seconds`` old (the ClickHouse default, 0.2 s;
   ``0``: at the flush interval, as before);
2. the raw confluent-kafka consume rate of the same topics in the same run, and the ratio;
3. freshness at a fixed rate: event time (= send time) -> ``ingested_at`` in ClickHouse, p50/p99;
4. the workers' peak RSS, and their RSS every 5 s while they catch up;
5. catch-up: the workers stopped, N more events produced, the workers started again: from their
   being ready to the last event durable, what they do with a backlog (as the raw consume rate
   is measured), with the workers' and the broker's CPU seconds meanwhile;
6. with ``--json``, the catch-up again on N more events sent as JSON objects (what any Kafka
   client may produce, connectors/kafka/jsonrecord.py) instead of Avro, printed beside the Avro
   catch-up of the same run;
7. with ``--peers``, ``bench/peers.py`` on the same events: ClickHouse's own Kafka table engine.

    .venv/bin/python bench/pipeline.py --events 300000 [--split] [--json] [--peers]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.kafka import client_config
from connectors.kafka.codec import default_codec
from connectors.kafka.producer import PRODUCER_DEFAULTS
from connectors.kafka.topics import catalogue, delete_topics_with_prefix, ensure_topics, topic_name
from connectors.settings import load_settings
from connectors.sink import TABLES
from streams.query_server import query
from streams.simulate import generate

REPO = Path(__file__).resolve().parents[1]


def encoded_events(n: int, seed: int, start: datetime, as_json: bool = False) -> list[tuple[str, str, bytes]]:
    """(topic, key, message) of ``n`` simulated events: Avro single-object, or JSON objects with
    epoch-millisecond times."""
    codec = default_codec()
    out = []
    for event in generate(seed, start_time=start, count=n, rate=5000):
        record = event.to_record()
        if as_json:
            record["event_time"] = round(record["event_time"].timestamp() * 1000)
            value = json.dumps(record, default=str).encode()
        else:
            value = codec.encode(event.EVENT, record)
        out.append((event.TOPIC, event.agent_id, value))
    return out


def produce(settings, events) -> None:
    producer = Producer(client_config(settings, **PRODUCER_DEFAULTS))
    for topic, key, value in events:
        while True:
            try:
                producer.produce(topic_name(settings, topic), value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(120) == 0


def lag(settings, group: str) -> int:
    consumer = Consumer(client_config(settings, **{"group.id": group, "enable.auto.commit": False}))
    try:
        tps = [TopicPartition(topic_name(settings, t), p) for t in TABLES for p in range(settings.topic_partitions)]
        total = 0
        for tp in consumer.committed(tps, timeout=10):
            total += consumer.get_watermark_offsets(tp, timeout=10)[1] - max(tp.offset, 0)
        return total
    finally:
        consumer.close()


def raw_consume_rate(settings, expected: int) -> float:
    consumer = Consumer(client_config(settings, **{
        "group.id": f"{settings.topic_prefix}bench.raw", "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }))
    consumer.subscribe([topic_name(settings, t) for t in TABLES])
    got, started = 0, None
    while got < expected:
        batch = consumer.consume(10_000, timeout=1.0)
        if batch and started is None:
            started = time.perf_counter()
        got += sum(1 for m in batch if m.error() is None)
    elapsed = time.perf_counter() - started
    consumer.close()
    return expected / elapsed


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak resident memory (``VmRSS``: its current one), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (its threads included); 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kafka_pid(settings) -> int | None:
    """The local broker's pid (``ezstream up``), if this machine runs it."""
    try:
        return int((settings.home / "run" / "kafka.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--fresh-rate", type=float, default=10_000, help="events/s of the freshness phase")
    parser.add_argument("--fresh-seconds", type=float, default=20)
    parser.add_argument("--lake-flush-seconds", type=float, default=1.0,
                        help="EZ_LAKE_FLUSH_SECONDS of the workers: a batch's longest wait, which bounds how soon "
                             "the last events of a burst are durable (the default 30 s would dominate the figure)")
    parser.add_argument("--clickhouse-flush-seconds", type=float, default=1.0,
                        help="EZ_CLICKHOUSE_FLUSH_SECONDS of the workers: the ClickHouse batch's longest wait, which "
                             "bounds the freshness figure from below")
    parser.add_argument("--flush-quiet-seconds", type=float, default=0.2,
                        help="EZ_LAKE_FLUSH_QUIET_SECONDS and EZ_CLICKHOUSE_FLUSH_QUIET_SECONDS of the workers: a "
                             "caught-up sink writes its batch once it is this old (0: only at the flush interval; "
                             "the lake's default is 0, ClickHouse's 0.2)")
    parser.add_argument("--split", action="store_true",
                        help="one worker process per sink role (--only lake, --only clickhouse) instead of one for both")
    parser.add_argument("--json", action="store_true",
                        help="then catch up on as many events again, sent as JSON objects, and print that rate beside "
                             "the Avro catch-up's")
    parser.add_argument("--peers", action="store_true",
                        help="then run bench/peers.py on the same events (ClickHouse's own Kafka table engine), in "
                             "a process of its own, and print its figures with these")
    args = parser.parse_args()

    base = load_settings()
    run = f"bench{int(time.time())}"
    home = base.home / "bench" / run
    settings = load_settings(
        home=home, topic_prefix=f"{run}.", lake_uri=f"file://{home}/lake",
        clickhouse_dsn=f"chdb://{home}/clickhouse", clickhouse_database="bench",
    )
    ensure_topics(settings, catalogue(settings))
    print(f"preparing {args.events:,} encoded events…", flush=True)
    events = encoded_events(args.events, seed=11, start=datetime(2026, 11, 26, tzinfo=timezone.utc))

    env = {**os.environ, "EZ_HOME": str(home), "EZ_TOPIC_PREFIX": settings.topic_prefix,
           "EZ_LAKE_URI": settings.lake_uri, "EZ_CLICKHOUSE_DSN": settings.clickhouse_dsn.get_secret_value(),
           "EZ_CLICKHOUSE_DATABASE": "bench", "EZ_LAKE_FLUSH_SECONDS": str(args.lake_flush_seconds),
           "EZ_CLICKHOUSE_FLUSH_SECONDS": str(args.clickhouse_flush_seconds),
           "EZ_LAKE_FLUSH_QUIET_SECONDS": str(args.flush_quiet_seconds),
           "EZ_CLICKHOUSE_FLUSH_QUIET_SECONDS": str(args.flush_quiet_seconds)}
    home.mkdir(parents=True, exist_ok=True)
    role_sets = [["lake"], ["clickhouse"]] if args.split else [["lake", "clickhouse"]]

    def start_workers(phase: str) -> list[tuple[Path, subprocess.Popen]]:
        started = []
        for roles in role_sets:
            name = "-".join(roles)
            with open(home / f"worker-{name}-{phase}.log", "wb") as log:
                started.append((home / "run" / f"worker-{name}.ready", subprocess.Popen(
                    [sys.executable, "-m", "streams.cli", "worker", "--only", ",".join(roles)],
                    cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)))
        for ready, worker in started:
            while not ready.exists():
                if worker.poll() is not None:
                    raise SystemExit(f"worker exited; see the logs in {home}")
                time.sleep(0.05)
        return started

    def stop_workers(running) -> None:
        for _, worker in running:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
        for _, worker in running:
            worker.wait(120)

    workers = start_workers("first")
    try:

        started = time.perf_counter()
        produce(settings, events)
        produced = time.perf_counter() - started
        groups = [f"{settings.topic_prefix}ezstream.{role}" for role in ("lake", "clickhouse")]
        done: dict[str, float] = {}
        timeline: list[float] = []  # the workers' resident memory every 5 s while they catch up
        while len(done) < len(groups):
            for role, group in zip(("lake", "clickhouse"), groups):
                if role not in done and not lag(settings, group):
                    done[role] = time.perf_counter() - started
            if time.perf_counter() - started >= 5 * len(timeline):
                timeline.append(sum(peak_rss_mb(worker.pid, "VmRSS") for _, worker in workers))
            time.sleep(0.1)
        durable = max(done.values())
        raw = raw_consume_rate(settings, args.events)

        fresh_n = int(args.fresh_rate * args.fresh_seconds)
        print(f"freshness phase: {fresh_n:,} events at {args.fresh_rate:,.0f}/s…", flush=True)
        mark = datetime.now(timezone.utc)
        codec = default_codec()
        producer = Producer(client_config(settings, **PRODUCER_DEFAULTS))
        t0 = time.perf_counter()
        for i, event in enumerate(generate(12, start_time=mark, count=fresh_n, rate=args.fresh_rate)):
            while time.perf_counter() - t0 < i / args.fresh_rate:
                producer.poll(0.0005)
            event.event_time = datetime.now(timezone.utc)
            producer.produce(topic_name(settings, event.TOPIC), key=event.agent_id,
                             value=codec.encode(event.EVENT, event.to_record()))
            producer.poll(0)
        producer.flush(60)
        while any(lag(settings, g) for g in groups):
            time.sleep(0.2)
        _, rows = query(settings, f"""
            SELECT count(), quantiles(0.5, 0.99)(dateDiff('millisecond', event_time, ingested_at))
            FROM (SELECT event_time, ingested_at FROM bench.llm_calls UNION ALL
                  SELECT event_time, ingested_at FROM bench.task_events)
            WHERE event_time >= '{mark.strftime('%Y-%m-%d %H:%M:%S')}'""")
        fresh_count, (p50, p99) = rows[0]
        rss = sum(peak_rss_mb(worker.pid) for _, worker in workers)
        stop_workers(workers)

        def catch_up_phase(phase: str, day: int, as_json: bool) -> tuple[float, dict[str, float], float, float]:
            """Produce N events with the workers stopped, start them: seconds to durable, per role,
            and the workers' and the broker's CPU seconds meanwhile."""
            nonlocal workers
            print(f"{phase} phase: {args.events:,} more events produced{' as JSON' if as_json else ''}, "
                  "then the workers started…", flush=True)
            produce(settings, encoded_events(args.events, seed=12 + day, as_json=as_json,
                                             start=datetime(2026, 11, day, tzinfo=timezone.utc)))
            workers = start_workers(phase)
            broker_cpu = cpu_seconds(kafka_pid(base))
            worker_cpu = sum(cpu_seconds(worker.pid) for _, worker in workers)
            started = time.perf_counter()
            caught_up: dict[str, float] = {}
            while len(caught_up) < len(groups):
                for role, group in zip(("lake", "clickhouse"), groups):
                    if role not in caught_up and not lag(settings, group):
                        caught_up[role] = time.perf_counter() - started
                time.sleep(0.05)
            return (max(caught_up.values()), caught_up,
                    sum(cpu_seconds(worker.pid) for _, worker in workers) - worker_cpu,
                    cpu_seconds(kafka_pid(base)) - broker_cpu)

        catch_up, caught_up, worker_cpu, broker_cpu = catch_up_phase("catch-up", 27, as_json=False)
        if args.json:
            stop_workers(workers)
            json_catch_up, json_caught_up, json_worker_cpu, _ = catch_up_phase("json", 28, as_json=True)
    finally:
        stop_workers(workers)

    n = args.events
    layout = "a worker per sink" if args.split else "one worker, both sinks"
    print(f"\nevents: {n:,} on {settings.topic_partitions} partitions x {len(TABLES)} topics; {layout}")
    print(f"produce (raw, pre-encoded):             {n / produced:>10,.0f} events/s")
    print(f"end-to-end durable (lake + ClickHouse): {n / durable:>10,.0f} events/s  ({durable:.1f} s; lake "
          f"{done['lake']:.1f} s, ClickHouse {done['clickhouse']:.1f} s; lake flush {args.lake_flush_seconds:g} s, quiet "
          f"{args.flush_quiet_seconds:g} s)")
    print(f"raw confluent-kafka consume, same run:  {raw:>10,.0f} events/s")
    print(f"pipeline / raw consume:                 {n / durable / raw:>10.2f}")
    print(f"freshness at {args.fresh_rate:,.0f}/s ({fresh_count:,} rows): p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(f"worker peak RSS (sum of workers):       {rss:>10.0f} MiB")
    print(f"worker RSS every 5 s while writing:     {', '.join(f'{m:.0f}' for m in timeline)} MiB")
    print(f"catch-up from a backlog of {n:,}:      {n / catch_up:>10,.0f} events/s  ({catch_up:.1f} s from the "
          f"workers' start; lake {caught_up['lake']:.1f} s, ClickHouse {caught_up['clickhouse']:.1f} s; CPU s: "
          f"workers {worker_cpu:.1f}, broker {broker_cpu:.1f})")
    print(f"catch-up / raw consume:                 {n / catch_up / raw:>10.2f}")
    if args.json:
        print(f"catch-up of {n:,} as JSON:             {n / json_catch_up:>10,.0f} events/s  ({json_catch_up:.1f} s; "
              f"lake {json_caught_up['lake']:.1f} s, ClickHouse {json_caught_up['clickhouse']:.1f} s; CPU s: workers "
              f"{json_worker_cpu:.1f})")
        print(f"  beside the Avro catch-up, same run:   {n / catch_up:>10,.0f} events/s; JSON / Avro: "
              f"{catch_up / json_catch_up:.2f}")
    if args.peers:
        print("\npeer, same events, after the workers stopped:", flush=True)
        peers = subprocess.run([sys.executable, str(REPO / "bench" / "peers.py"), "--events", str(n)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
        shown = [line for line in peers.stdout.splitlines() if line and not line.startswith("preparing")]
        print("\n".join(shown) or f"bench/peers.py failed ({peers.returncode}):\n{peers.stderr[-2000:]}")
    gone = delete_topics_with_prefix(settings, settings.topic_prefix)
    print(f"\nthis run's {len(gone)} topics ({settings.topic_prefix}*) deleted; its files stay in {home}")


if __name__ == "__main__":
    main()
