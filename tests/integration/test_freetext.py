"""Snippets of LLM calls through the real pipeline: dropped unless capture is on, then cut.

Both ends apply the policy: the producer SDK (its own settings) and the worker (its environment).
Each test gives the two different settings, so what lands in the lake and ClickHouse shows which
end did what; a raw producer (any Kafka client, bypassing the SDK) shows the worker's end alone.
"""

from __future__ import annotations


import pytest
from confluent_kafka import Producer

from connectors.kafka import client_config
from connectors.kafka.codec import encode
from connectors.kafka.events import LlmCall
from connectors.kafka.producer import EventProducer
from connectors.kafka.topics import topic_name
from connectors.lake import storage_options, table_uri
from connectors.settings import Settings
from streams.query_server import query
from tests.integration.pipeline import START, Truth, Worker, wait_exact

#: Long enough for any cap, with characters of two and four UTF-8 bytes.
LONG = "prompt ü 😀 " * 200


@pytest.fixture
def pipe(make_pipe):
    return make_pipe(topic_partitions=2)


@pytest.fixture
def worker(pipe, tmp_path):
    """``worker(capture, max_chars)`` starts a lake+ClickHouse worker with that snippet policy."""
    started: list[Worker] = []

    def start(capture: bool, max_chars: int = 256) -> Worker:
        settings = pipe.model_copy(update={"capture_snippets": capture, "snippet_max_chars": max_chars})
        w = Worker(settings, "lake,clickhouse", tmp_path / "worker")
        started.append(w)
        return w.start()

    yield start
    for w in started:
        w.stop()


def call(call_id: str, i: int) -> LlmCall:
    return LlmCall(
        event_time=START, agent_id=f"research-{i % 3:02d}", agent_type="research", tenant_id="acme",
        trace_id=f"tr-{call_id}", call_id=call_id, provider="anthropic", model="claude-3-haiku",
        api_key_alias="anthropic-key-01", input_tokens=100 + i, output_tokens=20, cost_usd=0.001 * (i + 1),
        price_version="2026-11-01", latency_ms=300.0, status="ok", cache_hit=False,
        prompt_snippet=LONG[i:], output_snippet=None if i % 4 == 3 else "out: " + LONG,
    )


def send_sdk(settings: Settings, prefix: str, n: int, truth: Truth, **policy) -> list[LlmCall]:
    events = [call(f"{prefix}-{i}", i) for i in range(n)]
    with EventProducer(settings.model_copy(update=policy)) as producer:
        for event in events:
            producer.send(event)
            truth.add("llm_calls", event.cost_usd)
    return events


def send_raw(settings: Settings, prefix: str, n: int, truth: Truth) -> list[LlmCall]:
    """Pre-encoded with the codec, through a plain client: no policy on this side."""
    events = [call(f"{prefix}-{i}", i) for i in range(n)]
    raw = Producer(client_config(settings))
    for event in events:
        raw.produce(topic_name(settings, LlmCall.TOPIC), key=event.agent_id.encode(),
                    value=encode(LlmCall.EVENT, event.to_record()))
        truth.add("llm_calls", event.cost_usd)
    assert raw.flush(30) == 0
    return events


def stored(settings: Settings, worker: Worker) -> tuple[dict, dict]:
    """``{call_id: (prompt_snippet, output_snippet)}`` in the lake and in ClickHouse."""
    from deltalake import DeltaTable

    lake = DeltaTable(table_uri(settings, "llm_calls"), storage_options=storage_options(settings)).to_pyarrow_table(
        columns=["call_id", "prompt_snippet", "output_snippet"])
    in_lake = {c: (p, o) for c, p, o in zip(*(lake.column(n).to_pylist() for n in lake.column_names))}
    _, rows = query(settings.model_copy(update={"home": worker.home}),
                    f"SELECT call_id, prompt_snippet, output_snippet FROM {settings.clickhouse_database}.llm_calls")
    return in_lake, {c: (p, o) for c, p, o in rows}


def cut(events: list[LlmCall], max_chars: int | None) -> dict:
    """What the store should hold for ``events``: cut to ``max_chars``, or nothing when None."""
    def keep(text):
        return None if text is None or max_chars is None else text[:max_chars]
    return {e.call_id: (keep(e.prompt_snippet), keep(e.output_snippet)) for e in events}


def test_capture_on_at_the_worker_stores_what_the_sdk_kept_and_caps_the_rest(pipe, worker):
    w = worker(capture=True, max_chars=40)
    truth = Truth()
    sdk_off = send_sdk(pipe, "sdk-off", 20, truth, capture_snippets=False)
    sdk_on = send_sdk(pipe, "sdk-on", 20, truth, capture_snippets=True, snippet_max_chars=25)
    raw = send_raw(pipe, "raw", 20, truth)
    wait_exact(pipe, truth, workers=[w])

    want = {**cut(sdk_off, None), **cut(sdk_on, 25), **cut(raw, 40)}
    lake, clickhouse = stored(pipe, w)
    assert lake == want
    assert clickhouse == want
    assert any(len(p.encode()) > len(p) for p, _ in want.values() if p)  # multi-byte characters were cut


def test_capture_off_at_the_worker_stores_no_snippet_whoever_produced(pipe, worker):
    w = worker(capture=False)
    truth = Truth()
    raw = send_raw(pipe, "raw", 30, truth)
    sdk_on = send_sdk(pipe, "sdk-on", 10, truth, capture_snippets=True, snippet_max_chars=25)
    wait_exact(pipe, truth, workers=[w])

    want = {**cut(raw, None), **cut(sdk_on, None)}
    lake, clickhouse = stored(pipe, w)
    assert lake == want
    assert clickhouse == want
