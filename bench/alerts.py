"""Alert path benchmark: produce of the triggering event -> alert readable on agent.alerts.

Needs the local stack (``ezstream up``). Runs an ``ezstream worker --only alerts`` of its own on
fresh topics (a new ``EZ_TOPIC_PREFIX``) under ``$EZ_HOME/bench``, sends LLM calls at a fixed rate
(default 1,000 events/s) in which every 100th call is the first call of a new agent costing 90 %
of the per-agent daily budget, and times each of those calls from ``produce()`` to its budget
alert arriving at a consumer of ``agent.alerts``, after ``--warmup`` seconds (5) of the same
traffic untimed: each run's worker and forwarder are new processes on new topics, whose first
seconds are slower than the steady state (first writes to each partition, first calls of each
code path). Prints, asserts nothing:

0. throughput: ``--events`` events of the simulator's mix (tasks, LLM calls, telemetry; event
   times in the last minutes) produced first, then an alerts worker started: events/s from its
   activation to its having read them all (its log), and to its first commit covering them with
   no closed window left to produce (its status file): every alert and window of those events
   committed on Kafka with the state that produced them. With its CPU seconds meanwhile: the
   role is one thread of Python, so events per CPU second is its rate on one core. Then the
   same events with 1 and with 2 alerts workers (``EZ_ALERTS_SHARDS`` = workers), each run on
   topics of its own: the workers start on empty topics and settle (a shard each, caught up),
   then the events go in one Kafka transaction, whose commit hands them the whole backlog at
   once; timed from that commit to every shard's commit covering them (CPU: all workers);
1. the raw-Kafka baseline measured in the same run: the same traffic through a plain
   confluent-kafka forwarder process (consume, produce the tagged messages to an output topic,
   no decoding, no rules), timed the same way: the two Kafka hops any processor pays; then
   the same through a transactional forwarder (read_committed; for each fetch with a tagged
   message a transaction of its own: a 2 KiB state record, the tagged messages, the commit):
   the floor of any processor whose outputs commit with its state, as the role's do;
2. the alert path through the alerts role, p50/p99/max; then split by the alert's own Kafka
   timestamp (when the role produced it) into the hop to the alert's produce (fetch, rules,
   any wait for the commit before) and the hop from there to readable (the commit, the
   reader's fetch): medians, and each of the slowest 2 % (10 at most) as total=first+second ms;
3. the worker's RSS at the end.

Every p99 comes with its 95 % confidence interval (:func:`quantile_ci`: distribution-free, from
the ranks of the samples). With 1 in 100 events timed, 30 s at 1,000 events/s time 300, too few
to bound a p99 from above (that takes 368; the interval then says "above the max"): each rate's
run lasts long enough to time ``--min-timed`` alerts (1,000: 100 s at 1,000 events/s, 30 s, the
``--seconds`` default, at 20,000). And every timed part runs beside a probe of the machine
itself (:data:`STALL_PROBE`: a process that sleeps 1 ms at a time and records how late it woke,
about 1 % of a core): the stalls any process saw meanwhile (its core busy with others, or the
machine not running), the context of the run's tail.

Each run's topics (its prefix's) are deleted when it ends. A broker started minutes before
answers transactions slower than one that has run a while (its JVM compiles the transaction
paths after some thousands of calls): ``bench/txn_floor.py`` shows how far along it is.

    .venv/bin/python bench/alerts.py [--rate 1000 --rate 20000] [--seconds 30] [--min-timed 1000] [--warmup 5] [--events 300000]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from connectors.kafka import client_config
from connectors.kafka.codec import default_codec
from connectors.kafka.events import LlmCall
from connectors.kafka.topics import TopicSpec, catalogue, delete_topics_with_prefix, ensure_topics, topic_name
from connectors.kafka.producer import PRODUCER_DEFAULTS
from connectors.settings import load_settings
from streams.intelligence.processor import SOURCES
from streams.simulate import generate

REPO = Path(__file__).resolve().parents[1]
#: One event in this many is tagged and timed (an alert's trigger on the alerts role's path).
TAG_EVERY = 100
#: Client settings of both paths: no lingering, so latency is the pipeline's, not batching's.
LOW_LATENCY = {"linger.ms": 0, "enable.idempotence": True, "acks": "all"}

FORWARDER = """
import sys, time
from confluent_kafka import Consumer, Producer
bootstrap, source, target, group = sys.argv[1:5]
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": True, "fetch.wait.max.ms": 100})
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": True, "acks": "all"})
consumer.subscribe([source])
print("ready", flush=True)
while True:
    first = consumer.poll(0.05)
    if first is None:
        producer.poll(0)
        continue
    for msg in [first, *consumer.consume(1000, 0)]:
        if msg.error() is None and msg.headers():
            producer.produce(target, key=msg.key(), value=msg.value())
    producer.poll(0)
"""

TXN_FORWARDER = """
import sys
from confluent_kafka import Consumer, Producer
bootstrap, source, target, state, group = sys.argv[1:6]
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": True, "fetch.wait.max.ms": 100, "isolation.level": "read_committed"})
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "transactional.id": group})
producer.init_transactions(30)
consumer.subscribe([source])
print("ready", flush=True)
while True:
    first = consumer.poll(0.05)
    if first is None:
        continue
    tagged = [msg for msg in [first, *consumer.consume(1000, 0)] if msg.error() is None and msg.headers()]
    if tagged:
        producer.begin_transaction()
        producer.produce(state, key=b"state", value=bytes(2048))
        for msg in tagged:
            producer.produce(target, key=msg.key(), value=msg.value())
        producer.commit_transaction(30)
"""


STALL_PROBE = """
import json, sys, time
delay, seconds, period = map(float, sys.argv[1:4])
time.sleep(delay)
late = []
end = time.perf_counter() + seconds
while (start := time.perf_counter()) < end:
    time.sleep(period)
    late.append((time.perf_counter() - start - period) * 1000)
print(json.dumps(sorted(late)))
"""


def call(agent: str, cost: float) -> LlmCall:
    return LlmCall(event_time=datetime.now(timezone.utc), agent_id=agent, agent_type="development",
                   tenant_id="bench", trace_id=uuid.uuid4().hex, call_id=uuid.uuid4().hex, provider="anthropic",
                   model="claude-3-haiku", api_key_alias="anthropic-01", input_tokens=900, output_tokens=200,
                   cost_usd=cost, price_version="2026-11-01", latency_ms=850.0, status="ok", cache_hit=False)


class Timer:
    """Send times of tagged messages and their arrival at a consumer; with the arriving message's
    own timestamp (when its producer produced it: the processor's output), each latency split in
    two hops: send to output produced, output produced to readable (milliseconds, wall clock)."""

    def __init__(self) -> None:
        self.sent: dict[str, tuple[float, float]] = {}
        self.sends = 0  # tagged messages sent to be timed
        self.latencies: list[float] = []
        self.hops: list[tuple[float, float, float]] = []  # (latency, to produced, produced to readable)
        #: How late each wake-up of the machine probe was meanwhile (ms, sorted; see STALL_PROBE).
        self.stalls: list[float] = []
        self.lock = threading.Lock()

    def send(self, tag: str) -> None:
        self.sent[tag] = time.perf_counter(), time.time()
        self.sends += 1

    def arrived(self, tag: str, produced_ms: int | None = None) -> None:
        now, wall = time.perf_counter(), time.time()
        with self.lock:
            started = self.sent.pop(tag, None)
        if started is not None:
            latency = (now - started[0]) * 1000
            self.latencies.append(latency)
            if produced_ms is not None:
                self.hops.append((latency, produced_ms - started[1] * 1000, wall * 1000 - produced_ms))


def watch(settings, topic: str, tag_of, timer: Timer, stop: threading.Event, ready: threading.Event) -> None:
    from confluent_kafka import TopicPartition

    consumer = Consumer(client_config(settings, **{"group.id": "bench-" + uuid.uuid4().hex,
                                                   "fetch.wait.max.ms": 100}))
    # From the current end of every partition, fixed before anything is sent: nothing is missed.
    deadline = time.monotonic() + 30
    while not (partitions := consumer.list_topics(topic, timeout=10).topics[topic].partitions):
        if time.monotonic() > deadline:  # a topic just created may not have its metadata yet
            raise SystemExit(f"no partitions for {topic}")
        time.sleep(0.2)
    consumer.assign([TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                     for p in partitions])
    ready.set()
    try:
        while not stop.is_set():
            first = consumer.poll(0.05)
            if first is None:
                continue
            for msg in [first, *consumer.consume(1000, 0)]:
                if msg.error() is None:
                    tag = tag_of(msg)
                    if tag:
                        timer.arrived(tag, msg.timestamp()[1])
    finally:
        consumer.close()


@contextlib.contextmanager
def machine_probe(timer: Timer, delay: float, seconds: float) -> Iterator[None]:
    """The machine probe (:data:`STALL_PROBE`) over ``seconds`` after ``delay``, beside the block:
    its wake-ups in ``timer.stalls`` once the block is done; killed if the block fails."""
    probe = subprocess.Popen([sys.executable, "-c", STALL_PROBE, str(delay), str(seconds), "0.001"],
                             stdout=subprocess.PIPE, text=True)
    try:
        yield
        timer.stalls = json.loads(probe.communicate(timeout=60)[0])
    finally:
        if probe.poll() is None:  # the run failed: the probe goes with it
            probe.kill()
            probe.wait()


def drive(settings, topic_of, rate: float, seconds: float, timer: Timer, tagged, warmup: float = 0.0) -> int:
    """Send ``rate`` events/s for ``warmup`` + ``seconds``; one in :data:`TAG_EVERY` is tagged, and
    timed once the warm-up is over, beside the machine probe. Returns the count."""
    codec = default_codec()
    producer = Producer(client_config(settings, **LOW_LATENCY))
    background = [codec.encode("llm_call", call(f"agent-{i:03d}", 0.0).to_record()) for i in range(200)]
    with machine_probe(timer, warmup, seconds):
        started = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - started) < warmup + seconds:
            due = int(elapsed * rate)
            while sent < due:
                if sent % TAG_EVERY == TAG_EVERY // 2:
                    tag, key, value, headers = tagged(codec, sent)
                    if elapsed >= warmup:
                        timer.send(tag)
                    producer.produce(topic_of, key=key, value=value, headers=headers)
                else:
                    producer.produce(topic_of, key=f"agent-{sent % 200:03d}", value=background[sent % 200])
                sent += 1
            producer.poll(0)
            time.sleep(0.0005)
        producer.flush(30)
    return sent


def _at(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of ``ordered`` samples (sorted): the sample at rank ``n * q``."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def quantile_ci(ordered: list[float], q: float, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The ``q`` quantile's ``confidence`` interval from ``ordered`` samples (sorted), whatever
    their distribution: the samples of ranks r and s such that the count of samples below the
    quantile, Binomial(n, q), is in [r, s) with at least that probability. None for a bound the
    samples cannot set (too few of them: for a p99 and 95 %, fewer than 368)."""
    n = len(ordered)
    if n == 0:
        return None, None
    log_q, log_p = math.log(q), math.log1p(-q)
    pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_q + (n - k) * log_p)
           for k in range(n + 1)]
    below = list(itertools.accumulate(pmf))  # below[k]: P(count <= k)
    above = list(itertools.accumulate(reversed(pmf)))[::-1]  # above[k]: P(count >= k)
    tail = (1 - confidence) / 2
    # x_(r) <= quantile when at least r samples are below it: r the largest with P(count < r) <= tail.
    r = max((rank for rank in range(1, n + 1) if below[rank - 1] <= tail), default=None)
    # x_(s) > quantile when fewer than s are: s the smallest with P(count >= s) <= tail.
    s = min((rank for rank in range(1, n + 1) if above[rank] <= tail), default=None)
    return (ordered[r - 1] if r else None), (ordered[s - 1] if s else None)


def report(name: str, timer: Timer) -> None:
    lat = sorted(timer.latencies)
    if not lat:
        print(f"{name:<34} no samples (of {timer.sends})")
        return
    low, high = quantile_ci(lat, 0.99)
    interval = "unbounded" if low is None else f"{low:.1f}–" + ("above the max" if high is None else f"{high:.1f}")
    print(f"{name:<34} p50 {statistics.median(lat):7.2f} ms   p99 {_at(lat, 0.99):7.2f} ms (95 % CI {interval})"
          f"   max {lat[-1]:7.2f} ms   ({len(lat)} of {timer.sends} timed)")
    if timer.hops:
        # The slowest 2 % by hop, the slowest 10 of them at most (message timestamps have
        # millisecond resolution): which hop the tail is in.
        slow = sorted(timer.hops)[-min(10, max(1, len(timer.hops) // 50)):]
        to_out = statistics.median(h[1] for h in timer.hops)
        to_read = statistics.median(h[2] for h in timer.hops)
        print(f"{'  hops, all (median)':<34} to output produced {to_out:6.1f} ms   produced to readable {to_read:6.1f} ms")
        print(f"{'  hops, slowest 2 % (10 at most)':<34} " + "  ".join(f"{h[0]:.1f}={h[1]:.0f}+{h[2]:.0f}" for h in slow))
    if timer.stalls:
        late = timer.stalls
        print(f"{'  machine meanwhile':<34} a 1 ms sleep woke late by p50 {_at(late, 0.5):.2f}, "
              f"p99 {_at(late, 0.99):.2f}, p99.9 {_at(late, 0.999):.1f}, max {late[-1]:.1f} ms; "
              f"{sum(x > 5 for x in late)} of {len(late):,} over 5 ms, {sum(x > 10 for x in late)} over 10 ms")


def wait_drained(timer: Timer, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while timer.sent and time.monotonic() < deadline:
        time.sleep(0.05)


def run_baseline(settings, rate: float, seconds: float, warmup: float, transactional: bool = False) -> Timer:
    """The tagged messages through a forwarder process: raw, or each fetch with one in a
    transaction of its own with a state record (:data:`TXN_FORWARDER`)."""
    name = "txn" if transactional else "raw"
    topics = [topic_name(settings, f"bench.{name}.{t}") for t in ("in", "out", "state")[:3 if transactional else 2]]
    ensure_topics(settings, [TopicSpec(t, settings.topic_partitions, 1, {}) for t in topics])
    source, target = topics[:2]
    proc = subprocess.Popen([sys.executable, "-c", TXN_FORWARDER if transactional else FORWARDER,
                             settings.kafka_bootstrap, *topics, "bench-forwarder-" + uuid.uuid4().hex],
                            stdout=subprocess.PIPE, text=True)
    timer, stop, ready = Timer(), threading.Event(), threading.Event()
    watcher = threading.Thread(target=watch, args=(settings, target, lambda m: m.value().decode(), timer, stop, ready))
    try:
        assert proc.stdout.readline().strip() == "ready"
        watcher.start()
        ready.wait(30)
        time.sleep(5)  # the forwarder's group join (initial rebalance delay) must not count

        def tagged(codec, n):
            tag = f"raw-{n}"
            return tag, tag, tag.encode(), [("tag", b"1")]

        drive(settings, source, rate, seconds, timer, tagged, warmup)
        wait_drained(timer)
    finally:
        stop.set()
        watcher.join()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return timer


def run_alerts(settings, home: Path, rate: float, seconds: float, warmup: float) -> tuple[Timer, float]:
    budgets = home / "budgets.toml"
    budgets.write_text("[agent]\ndaily_usd = 1.0\n")
    env = {**os.environ, "EZ_TOPIC_PREFIX": settings.topic_prefix, "EZ_BUDGETS_FILE": str(budgets),
           "EZ_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "EZ_TOPIC_PARTITIONS": str(settings.topic_partitions),
           "PYTHONPATH": str(REPO)}
    log = open(home / "worker.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--only", "alerts", "--home", str(home)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ready_file = home / "run" / "worker-alerts.ready"
    codec = default_codec()
    timer, stop, ready = Timer(), threading.Event(), threading.Event()

    def tag_of(msg) -> str | None:
        alert = codec.decode(msg.value(), "alert")[1]
        return alert["subject"] if alert["details"].get("percent") == "80" else None

    watcher = threading.Thread(target=watch, args=(settings, topic_name(settings, "agent.alerts"), tag_of,
                                                   timer, stop, ready))
    try:
        deadline = time.monotonic() + 120
        while not ready_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the alerts worker did not start; see {home / 'worker.log'}")
            time.sleep(0.2)
        watcher.start()
        ready.wait(30)

        def tagged(codec, n):
            agent = f"trigger-{n:07d}"  # a new agent: its first call crosses 80 % of its budget
            return agent, agent, codec.encode("llm_call", call(agent, 0.9).to_record()), None

        drive(settings, topic_name(settings, "agent.llm_calls"), rate, seconds, timer, tagged, warmup)
        wait_drained(timer)
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    return timer, rss


def cpu_seconds(pid: int) -> float:
    """CPU seconds of process ``pid`` and of the processes it started that are still running (the
    alerts role's snapshot process): the role's whole cost."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, CPU seconds)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            stats[int(entry)] = int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    family, grew = {pid}, True
    while grew:
        grew = False
        for child, (parent, _) in stats.items():
            if parent in family and child not in family:
                family.add(child)
                grew = True
    return sum(stats[member][1] for member in family if member in stats)


def simulated(events: int) -> tuple[list[tuple[str, str, bytes]], int]:
    """``events`` of the simulator's mix, event times in the last minutes, encoded: (topic base,
    key, value) each; and how many of them are on the alerts role's topics."""
    codec = default_codec()
    start = datetime.now(timezone.utc) - timedelta(seconds=events / 5000 + 120)
    messages = [(event.TOPIC, event.agent_id, codec.encode(event.EVENT, event.to_record()))
                for event in generate(21, start_time=start, count=events, rate=5000)]
    return messages, sum(topic in SOURCES for topic, _, _ in messages)


def produce_all(settings, messages: list[tuple[str, str, bytes]], **config) -> Any:
    """A producer (of ``config``) with every message sent to this prefix's topics, not flushed."""
    producer = Producer(client_config(settings, **PRODUCER_DEFAULTS, **config))
    if "transactional.id" in config:
        producer.init_transactions(30)
        producer.begin_transaction()
    for topic, key, value in messages:
        while True:
            try:
                producer.produce(topic_name(settings, topic), key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    return producer


class Workers:
    """``n`` alerts workers (``EZ_ALERTS_SHARDS`` = n) on fresh topics, homes under ``$EZ_HOME/bench``."""

    def __init__(self, base, n: int, tag: str) -> None:
        self.prefix = f"bench.alerts.{tag}.{int(time.time())}.{n}."
        self.settings = load_settings(topic_prefix=self.prefix, topic_partitions=base.topic_partitions)
        ensure_topics(self.settings, catalogue(self.settings))
        (base.home / "bench").mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"alerts-{tag}-", dir=base.home / "bench"))
        (self.dir / "budgets.toml").write_text("[tenant]\ndaily_usd = 50.0\n[agent]\ndaily_usd = 2.0\n")
        self.homes = [self.dir / f"worker-{i}" for i in range(n)]
        self.names = ([f"alerts-{self.prefix}.status.json"] if n == 1
                      else [f"alerts-{self.prefix}.shard-{i}.status.json" for i in range(n)])
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        env = {**os.environ, "EZ_TOPIC_PREFIX": self.prefix, "EZ_BUDGETS_FILE": str(self.dir / "budgets.toml"),
               "EZ_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap, "EZ_ALERTS_SHARDS": str(len(self.homes)),
               "EZ_TOPIC_PARTITIONS": str(self.settings.topic_partitions), "PYTHONPATH": str(REPO)}
        for home in self.homes:
            home.mkdir()
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--only", "alerts", "--home", str(home)],
                cwd=REPO, env=env, stdout=open(home / "worker.log", "ab"), stderr=subprocess.STDOUT,
                start_new_session=True))

    def log(self) -> str:
        return "".join((home / "worker.log").read_text(errors="replace") for home in self.homes)

    def active(self, home: Path) -> dict[str, dict]:
        """The statuses of the shards the worker of ``home`` is active for, by file name."""
        found = {}
        for name in self.names:
            try:
                status = json.loads((home / "run" / name).read_text())
            except (OSError, ValueError):
                continue
            if status.get("active"):
                found[name] = status
        return found

    def shards(self) -> list[dict]:
        """Each shard's status, from the worker active for it (a shard none is active for: left out)."""
        return list({name: s for home in self.homes for name, s in self.active(home).items()}.values())

    def all_out(self, sources: int) -> bool:
        """Every shard committed past ``sources`` events with no closed window left to produce."""
        shards = self.shards()
        return len(shards) == len(self.names) and all(
            sum(s.get("positions", {}).values()) >= sources and s.get("state", {}).get("pending_windows") == 0
            for s in shards)

    def settled(self) -> bool:
        """Each worker active for one shard, caught up."""
        return all(len([s for s in self.active(home).values() if s.get("caught_up")]) == 1 for home in self.homes)

    def cpu(self) -> float:
        return sum(cpu_seconds(proc.pid) for proc in self.procs)

    def wait(self, condition, what: str, timeout_s: float = 600) -> tuple[float, float]:
        """Poll ``condition`` every 20 ms; (time, the workers' CPU seconds) when it held."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if any(proc.poll() is not None for proc in self.procs) or time.monotonic() > deadline:
                raise SystemExit(f"the alerts workers did not get to {what}; see {self.dir}/worker-*/worker.log")
            time.sleep(0.02)
        return time.perf_counter(), self.cpu()

    def stop(self) -> None:
        """Stop the workers, then delete the run's topics (a broker kept for days would otherwise
        hold every run's partitions)."""
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            proc.wait(60)
        delete_topics_with_prefix(self.settings, self.prefix)


def line(what: str, sources: int, begin: tuple[float, float], end: tuple[float, float]) -> None:
    seconds, cpu = end[0] - begin[0], end[1] - begin[1]
    print(f"{what:<34} {sources / seconds:>9,.0f} events/s   ({sources:,} events in {seconds:.1f} s; "
          f"CPU {cpu:.1f} s: {sources / max(cpu, 1e-9):,.0f} events per CPU second)")


def run_throughput(base, messages: list[tuple[str, str, bytes]], sources: int) -> None:
    """The messages produced first, then an alerts worker started: its catch-up, timed."""
    workers = Workers(base, 1, "tp")
    assert produce_all(workers.settings, messages).flush(120) == 0
    workers.start()
    try:
        active = workers.wait(lambda: re.search(r"alerts: active from commit", workers.log()), "activation")
        read = workers.wait(lambda: re.search(r"alerts: caught up", workers.log()), "catching up")
        out = workers.wait(lambda: workers.all_out(sources), "all outputs out")
    finally:
        workers.stop()
    line("alerts role, read", sources, active, read)
    line("alerts role, all outputs out", sources, active, out)


def run_burst(base, messages: list[tuple[str, str, bytes]], sources: int, n: int) -> None:
    """``n`` workers started on empty topics and settled (a shard each, caught up); then the
    messages in one Kafka transaction: its commit hands the whole backlog over at once."""
    workers = Workers(base, n, "burst")
    workers.start()
    try:
        workers.wait(workers.settled, "a shard each")
        producer = produce_all(workers.settings, messages, **{"transactional.id": f"{workers.prefix}bench"})
        producer.commit_transaction(120)
        begin = time.perf_counter(), workers.cpu()
        out = workers.wait(lambda: workers.all_out(sources), "all outputs out")
    finally:
        workers.stop()
    line(f"{n} alerts worker{'s' if n > 1 else ''}, burst, all out", sources, begin, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, action="append",
                        help="events per second of an alert-path run; repeat for several (default 1,000 and 20,000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run's timed part, at least")
    parser.add_argument("--min-timed", type=int, default=1000,
                        help=f"each rate's timed part lasts long enough for this many alerts (1 in {TAG_EVERY} events): "
                        "a p99's 95 %% confidence interval needs 368 to be bounded")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of the same traffic before each run's timed part (a process started for "
                        "the run, its new topics' first writes): sent, not timed")
    parser.add_argument("--events", type=int, default=300_000,
                        help="events of the throughput phase (0: skip it)")
    parser.add_argument("--workers", type=int, action="append",
                        help="alerts workers (and shards) of a burst run; repeat for several (default 1 and 2)")
    args = parser.parse_args()

    base = load_settings()
    if args.events:
        messages, sources = simulated(args.events)
        run_throughput(base, messages, sources)
        for n in args.workers or [1, 2]:
            run_burst(base, messages, sources, n)
    for rate in args.rate or [1000.0, 20000.0]:
        seconds = max(args.seconds, args.min_timed * TAG_EVERY / rate)
        # Fresh topics per rate: each run's worker starts with nothing to catch up on.
        prefix = f"bench.alerts.{int(time.time())}.{int(rate)}."
        settings = load_settings(topic_prefix=prefix, topic_partitions=base.topic_partitions)
        ensure_topics(settings, catalogue(settings))
        (base.home / "bench").mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix="alerts-", dir=base.home / "bench"))
        print(f"alert path at {rate:,.0f} events/s for {seconds:.0f} s each after {args.warmup:.0f} s of warm-up, "
              f"1 in {TAG_EVERY} triggering "
              f"(broker {settings.kafka_bootstrap}, topics {prefix}*)")
        try:
            report("raw Kafka, 2 hops (baseline)", run_baseline(settings, rate, seconds, args.warmup))
            report("Kafka, 2 hops + transaction", run_baseline(settings, rate, seconds, args.warmup, True))
            alerts, rss = run_alerts(settings, home, rate, seconds, args.warmup)
            report("alert path (alerts role)", alerts)
            print(f"{'alerts worker RSS':<34} {rss:,.0f} MiB")
        finally:
            delete_topics_with_prefix(settings, prefix)


if __name__ == "__main__":
    main()
