"""OpenTelemetry GenAI spans end to end: an app traced with the OpenTelemetry SDK exports OTLP/HTTP
to a real collector (infra/local), the collector writes ``otlp_spans``, the ``spans`` role maps them
to LlmCall and TaskEvent events in Kafka transactions, and the sinks write those to the lake and
ClickHouse: each exactly once, through a kill -9 of the mapper mid-transaction.

This test runs a collector of its own, writing to its own topic prefix (the session stack's
collector writes the unprefixed ``otlp_spans``).
"""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer

from connectors.kafka import client_config
from connectors.kafka.dlq import ERROR_CLASS, read_dead_letters
from connectors.kafka.topics import OTLP_SPANS, dlq_topic, topic_name
from connectors.pricing import PRICE_TABLES_DIR
from infra.local.otelcol import OtelCollector
from streams.query_server import query
from tests.conftest import wait_for
from tests.integration.conftest import otel_ports
from tests.integration.pipeline import Truth, wait_exact

#: (model, attributes) of the GenAI calls of each task, and a span that is no GenAI call.
CALLS = [
    ("anthropic", "claude-3-5-sonnet", {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                                        "gen_ai.request.model": "claude-3-5-sonnet",
                                        "gen_ai.usage.input_tokens": 2000, "gen_ai.usage.output_tokens": 500,
                                        "gen_ai.usage.cache_read.input_tokens": 1200,
                                        "gen_ai.usage.cache_creation.input_tokens": 300}),
    ("openai", "gpt-4o", {"gen_ai.operation.name": "chat", "gen_ai.system": "openai",
                          "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1000,
                          "gen_ai.usage.output_tokens": 200}),
    ("openai", "text-embedding-3-small", {"gen_ai.operation.name": "embeddings", "gen_ai.provider.name": "openai",
                                          "gen_ai.request.model": "text-embedding-3-small",
                                          "gen_ai.usage.input_tokens": 4000}),
    ("openai", "gpt-4o", {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                          "gen_ai.request.model": "gpt-4o", "http.response.status_code": 429,
                          "error.type": "429"}),
]


def expected_cost(provider: str, model: str, attrs: dict) -> float:
    """The cost of a call from the snapshot's row, read as JSON and computed by hand."""
    rows = json.loads(sorted(PRICE_TABLES_DIR.glob("*.json"))[-1].read_text())["prices"]
    r = next(row for row in rows if (row["provider"], row["model"]) == (provider, model))
    read = attrs.get("gen_ai.usage.cache_read.input_tokens", 0)
    write = attrs.get("gen_ai.usage.cache_creation.input_tokens", 0)
    fresh = attrs.get("gen_ai.usage.input_tokens", 0) - read - write
    return (fresh * r["input_usd_per_mtok"] + read * r.get("cache_read_usd_per_mtok", 0)
            + write * r.get("cache_write_usd_per_mtok", 0)
            + attrs.get("gen_ai.usage.output_tokens", 0) * r["output_usd_per_mtok"]) / 1e6


TASK_COST = sum(expected_cost(p, m, a) for p, m, a in CALLS)


@pytest.fixture
def collector(make_pipe, tmp_path):
    """A collector writing to this test's ``otlp_spans`` (its topic prefix), stopped afterwards."""
    settings = make_pipe(home=tmp_path / "otelcol-home", **otel_ports())
    otelcol = OtelCollector(settings)
    otelcol.up()
    yield otelcol
    otelcol.down()


@pytest.fixture
def tracer_provider(collector, unique):
    """An instrumented app: the OpenTelemetry SDK exporting OTLP/HTTP to the collector. Spans are
    exported when the test flushes, so the spans of one task reach the collector together."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({
        "service.name": f"{unique}-app", "tenant.id": "acme", "agent.type": "research", "cloud.region": "eu-west-1"}))
    exporter = OTLPSpanExporter(endpoint=f"{collector.http_endpoint}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000))
    yield provider
    provider.shutdown()


def run_task(provider, n: int) -> None:
    """One agent task: an invoke_agent span over the GenAI calls, a tool's HTTP request among them."""
    from opentelemetry.trace import Status, StatusCode

    tracer = provider.get_tracer("ezstream.tests")
    with tracer.start_as_current_span(f"invoke_agent planner-{n}", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}):
        for _, model, attrs in CALLS:
            with tracer.start_as_current_span(f"{attrs['gen_ai.operation.name']} {model}", attributes=attrs) as span:
                if "error.type" in attrs:
                    span.set_status(Status(StatusCode.ERROR, "rate limited"))
        with tracer.start_as_current_span("GET /search", attributes={"http.request.method": "GET"}):
            pass
    assert provider.force_flush(timeout_millis=30_000), "the SDK could not export to the collector"


def test_genai_spans_land_once_in_both_stores_through_a_kill_of_the_mapper(
        make_pipe, collector, tracer_provider, workers, unique):
    pipe = collector.settings
    truth = Truth()
    sinks = workers(pipe, roles="lake,clickhouse")
    mapper = workers(pipe, roles="spans", failpoints="spans.before_commit=1")

    # The first task's events are produced in a transaction the kill leaves open: never read.
    run_task(tracer_provider, 1)
    wait_for(mapper.exited, 60, "the mapper to die before its first commit")
    assert mapper.proc.returncode == -9
    workers(pipe, roles="spans", name="mapper-restarted")

    # Garbage on otlp_spans goes to its DLQ; the second task and the first, again, are mapped.
    source = topic_name(pipe, OTLP_SPANS)
    producer = Producer(client_config(pipe))
    producer.produce(source, value=b"not an OTLP message", key=b"garbage")
    assert producer.flush(10) == 0
    run_task(tracer_provider, 2)

    for _ in range(2):
        truth.count["llm_calls"] += len(CALLS)
        truth.costs["llm_calls"].append(TASK_COST)
        truth.count["task_events"] += 2
        truth.costs["task_events"].append(TASK_COST)
    wait_exact(pipe, truth, workers=[sinks], timeout_s=120)

    rows = query(pipe.model_copy(update={"home": sinks.home}), f"""
        SELECT provider, model, status, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
               price_version, tenant_id, agent_type, agent_id, isNotNull(task_id) AS in_task, count() AS n,
               uniqExact(event_id) AS ids
        FROM {pipe.clickhouse_database}.llm_calls
        GROUP BY ALL ORDER BY model, status""")[1]
    version = sorted(PRICE_TABLES_DIR.glob("*.json"))[-1].stem
    app = f"{unique}-app"
    assert [tuple(r) for r in rows] == [
        ("anthropic", "claude-3-5-sonnet", "ok", 2000, 500, 1200, 300, version, "acme", "research", app, 1, 2, 2),
        ("openai", "gpt-4o", "ok", 1000, 200, 0, 0, version, "acme", "research", app, 1, 2, 2),
        ("openai", "gpt-4o", "rate_limited", 0, 0, 0, 0, version, "acme", "research", app, 1, 2, 2),
        ("openai", "text-embedding-3-small", "ok", 4000, 0, 0, 0, version, "acme", "research", app, 1, 2, 2),
    ]
    tasks = query(pipe.model_copy(update={"home": sinks.home}), f"""
        SELECT status, count(), uniqExact(task_id) FROM {pipe.clickhouse_database}.task_events
        GROUP BY status ORDER BY status""")[1]
    assert [tuple(r) for r in tasks] == [("completed", 2, 2), ("started", 2, 2)]

    letters = read_dead_letters(pipe, dlq_topic(source))
    assert [(letter.value, letter.headers[ERROR_CLASS]) for letter in letters] == [
        (b"not an OTLP message", "UndecodableSpans")]
