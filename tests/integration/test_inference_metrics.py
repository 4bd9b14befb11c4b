"""The inference worker's Prometheus endpoint after a known load: every figure matches what was sent."""

from __future__ import annotations

import pytest

from connectors.kafka.events import InferenceRequest
from connectors.kafka.producer import EventProducer
from connectors.kafka.topics import catalogue, ensure_topics, topic_name
from connectors.settings import Settings
from infra.local.net import free_port
from tests.conftest import wait_for
from tests.integration.test_inference import InferenceWorkerProcess, read_results
from tests.integration.test_metrics import scrape, total

MAX_BATCH = 8


@pytest.fixture
def inf(settings, unique) -> Settings:
    s = settings.model_copy(update={"topic_prefix": f"im.{unique}.", "topic_partitions": 2})
    ensure_topics(s, catalogue(s))
    return s


@pytest.fixture
def worker(inf, tmp_path):
    port = free_port()
    w = InferenceWorkerProcess(inf, tmp_path / "w1", "w1", {
        "EZ_METRICS_PORT": str(port), "EZ_INFERENCE_MAX_BATCH": str(MAX_BATCH), "EZ_INFERENCE_MAX_WAIT_MS": "20"})
    w.port = port
    yield w
    w.kill()


def request(i: int, inputs: list[str], model: str = "all-MiniLM-L6-v2") -> InferenceRequest:
    return InferenceRequest(agent_id=f"agent-{i % 5}", agent_type="research", tenant_id="t", trace_id="x",
                            correlation_id=f"c-{i}", model=model, task="embed", inputs=inputs)


def test_metrics_of_the_inference_worker_match_the_load(inf, worker):
    worker.start()
    before = scrape(worker.port)
    assert ("ezstream_inference_queue_texts", ()) in before  # exposed from the start, at 0
    assert total(before, "ezstream_inference_queue_texts") == 0

    good = [request(i, [f"text {i} number {j}" for j in range(1 + i % 4)]) for i in range(40)]
    bad = [request(100, ["hello"], model="no-such-model"), request(101, [""]), request(102, [])]
    texts = sum(len(r.inputs) for r in good)
    with EventProducer(inf) as producer:
        for r in good + bad:
            producer.send(r)
        for _ in range(2):  # no request at all: a dead letter, no result
            producer.send_encoded(topic_name(inf, InferenceRequest.TOPIC), "agent-x", b"not avro")
    results = wait_for(lambda: (found := read_results(inf)) and len(found) >= len(good) + len(bad) and found,
                       120, "every result")
    assert len(results) == len(good) + len(bad)

    # Results are counted once their transaction committed, a moment after readers may see them.
    samples = wait_for(lambda: (s := scrape(worker.port)) and total(s, "ezstream_inference_results_total")
                       >= len(results) and s, 10, "the results counted")
    assert total(samples, "ezstream_inference_results_total") == len(good) + len(bad)
    assert total(samples, "ezstream_inference_requests_total") == len(good) + len(bad)
    assert total(samples, "ezstream_inference_errors_total") == len(bad)
    assert total(samples, "ezstream_events_in_total", role="inference", topic="inference.requests") == \
        len(good) + len(bad) + 2
    assert total(samples, "ezstream_dead_letters_total", role="inference", error_class="RequestError") == len(bad)
    assert total(samples, "ezstream_dead_letters_total", role="inference", error_class="BadMarker") == 2

    # Every computed text went through exactly one forward pass, of at most MAX_BATCH texts.
    passes = total(samples, "ezstream_inference_batch_texts_count")
    assert total(samples, "ezstream_inference_batch_texts_sum") == texts
    assert -(-texts // MAX_BATCH) <= passes <= texts
    assert total(samples, "ezstream_inference_batch_texts_bucket", le=str(float(MAX_BATCH))) == passes
    assert total(samples, "ezstream_inference_forward_seconds_count") == passes
    assert total(samples, "ezstream_inference_forward_seconds_sum") > 0
    assert total(samples, "ezstream_inference_queue_texts") == 0

    worker.stop()
