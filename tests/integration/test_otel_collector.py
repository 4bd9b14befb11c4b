"""The local OpenTelemetry Collector: an app traced with the OpenTelemetry SDK sends OTLP/HTTP to it,
and its spans arrive on ``otlp_spans`` as OTLP protobuf, each trace on one partition."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from connectors.kafka import client_config
from connectors.kafka.topics import OTLP_SPANS, topic_name
from connectors.settings import load_settings
from infra.local.kafka import KafkaBroker
from infra.local.net import free_port
from infra.local.otelcol import OtelCollector
from tests.conftest import wait_for
from tests.integration.conftest import otel_ports

GEN_AI = {"gen_ai.system": "anthropic", "gen_ai.request.model": "claude-sonnet", "gen_ai.usage.input_tokens": 812,
          "gen_ai.usage.output_tokens": 96, "gen_ai.operation.name": "chat"}


def _value(any_value) -> Any:
    """An OTLP AnyValue as the Python value the SDK was given (the kinds this test sends)."""
    return getattr(any_value, any_value.WhichOneof("value"))


class SpanReader:
    """Reads ``otlp_spans`` from the beginning and keeps the spans of one service (the test's own)."""

    def __init__(self, settings, topic: str, service: str, group: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.service = service
        self.consumer = Consumer(client_config(settings, **{"group.id": group, "enable.auto.commit": False}))
        self.partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.partitions])
        #: trace id (hex) -> [(span name, attributes)], and where its messages were.
        self.spans: dict[str, list[tuple[str, dict]]] = {}
        self.messages: dict[str, list[tuple[int, int, bytes]]] = {}  # partition, offset, key

    def poll(self) -> None:
        from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

        for message in self.consumer.consume(100, timeout=0.5):
            assert message.error() is None, message.error()
            data = TracesData.FromString(message.value())
            for resource_spans in data.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                if resource.get("service.name") != self.service:
                    continue  # another test's spans on the shared topic
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        trace_id = span.trace_id.hex()
                        self.spans.setdefault(trace_id, []).append(
                            (span.name, {a.key: _value(a.value) for a in span.attributes}))
                        where = (message.partition(), message.offset(), message.key())
                        if where not in self.messages.setdefault(trace_id, []):
                            self.messages[trace_id].append(where)

    def count(self) -> int:
        self.poll()
        return sum(len(spans) for spans in self.spans.values())


@pytest.fixture
def tracer_provider(stack, unique, monkeypatch):
    """An app's OpenTelemetry SDK, exporting OTLP/HTTP to the stack's collector as the README says."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The base endpoint, as an agent sets it; the exporter adds /v1/traces.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", stack.otelcol.http_endpoint)
    provider = TracerProvider(resource=Resource.create({"service.name": unique}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    yield provider
    provider.shutdown()


def test_spans_from_an_instrumented_app_land_on_otlp_spans_one_partition_per_trace(
        stack, unique, tracer_provider):
    from opentelemetry import trace

    settings = stack.settings
    assert stack.otelcol.healthy()
    topic = topic_name(settings, OTLP_SPANS)
    reader = SpanReader(settings, topic, unique, group=f"{unique}-reader")
    assert len(reader.partitions) == settings.topic_partitions
    tracer = tracer_provider.get_tracer("ezstream.tests")
    sent: dict[str, list[tuple[str, dict]]] = {}
    try:
        # Three agent tasks with zero, one and two LLM calls. The calls are exported (and read back)
        # before their tasks end, so a trace with calls reaches Kafka in two messages at least.
        roots = []
        for task in range(3):
            attrs = {"agent.id": f"agent-{task}", "agent.task.queue": "normal"}
            root = tracer.start_span("agent.task", attributes=attrs)
            trace_id = format(root.get_span_context().trace_id, "032x")
            sent[trace_id] = [("agent.task", attrs)]
            roots.append(root)
            for call in range(task):
                name, call_attrs = f"chat claude-sonnet #{call}", {**GEN_AI, "ezstream.call": call}
                tracer.start_span(name, context=trace.set_span_in_context(root), attributes=call_attrs).end()
                sent[trace_id].append((name, call_attrs))
        calls = sum(len(spans) - 1 for spans in sent.values())
        assert tracer_provider.force_flush(timeout_millis=30_000), "the SDK could not export to the collector"
        wait_for(lambda: reader.count() >= calls, 60, f"{calls} LLM-call spans on {topic}", interval_s=0)
        for root in roots:
            root.end()
        assert tracer_provider.force_flush(timeout_millis=30_000), "the SDK could not export to the collector"
        total = sum(len(spans) for spans in sent.values())
        wait_for(lambda: reader.count() >= total, 60, f"{total} spans on {topic}", interval_s=0)
    finally:
        reader.consumer.close()

    assert set(reader.spans) == set(sent)
    for trace_id, spans in sent.items():
        assert sorted(reader.spans[trace_id], key=repr) == sorted(spans, key=repr), trace_id
        messages = reader.messages[trace_id]
        assert len(messages) >= min(len(spans), 2), messages
        # partition_traces_by_id: every message of a trace is keyed by its trace id (hex), so all
        # of them are on one partition.
        assert {key for _, _, key in messages} == {trace_id.encode()}
        assert len({partition for partition, _, _ in messages}) == 1, f"trace {trace_id}: {messages}"


def test_collector_writes_to_a_sasl_ssl_broker_with_the_password_only_in_its_environment(tmp_path, unique):
    """A broker of its own with TLS and SCRAM-SHA-512, as `ezstream up` starts it for such settings."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    password = "kafka-" + secrets.token_urlsafe(18)
    settings = load_settings(
        home=tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="ezstream-app", kafka_sasl_password=password,
        kafka_ssl_ca_location=tmp_path / "client" / "ca.pem", topic_partitions=2, **otel_ports())
    broker, collector = KafkaBroker(settings), OtelCollector(settings)
    try:
        assert broker.up() == "started"
        assert collector.up() == "started"
        provider = TracerProvider(resource=Resource.create({"service.name": unique}))
        exporter = OTLPSpanExporter(endpoint=f"{collector.http_endpoint}/v1/traces")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("ezstream.tests").start_as_current_span("agent.task") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
        provider.shutdown()
        reader = SpanReader(settings, topic_name(settings, OTLP_SPANS), unique, group=f"{unique}-reader")
        try:
            wait_for(lambda: reader.count() >= 1, 60, "the span on the SASL_SSL broker", interval_s=0)
        finally:
            reader.consumer.close()
        assert reader.spans == {trace_id: [("agent.task", {})]}
        # The password reaches the collector through its environment only.
        pid = collector.proc.pid()
        assert password not in collector.config_file.read_text()
        assert password not in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        assert password not in collector.proc.log_file.read_text()
    finally:
        collector.down()
        broker.down()
