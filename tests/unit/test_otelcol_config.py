"""The OpenTelemetry Collector's builder manifest and pipeline configuration (infra/local/otelcol.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from connectors.errors import ServiceError
from connectors.kafka.topics import OTLP_SPANS, catalogue, dlq_topic
from connectors.settings import Settings
from infra.local.otelcol import PASSWORD_ENV, builder_manifest, collector_config

PASSWORD = "do-not-leak-this-password"


def _settings(**overrides) -> Settings:
    return Settings(home="/tmp/ez-otelcol-test", **overrides)


def test_manifest_pins_the_four_components_to_one_release(tmp_path):
    manifest = builder_manifest(_settings(otel_collector_version="0.165.0", otel_contrib_version="0.165.1"), tmp_path)
    assert manifest["dist"]["output_path"] == str(tmp_path)
    modules = {kind: [entry["gomod"] for entry in manifest[kind]]
               for kind in ("receivers", "processors", "exporters", "extensions")}
    assert modules == {
        "receivers": ["go.opentelemetry.io/collector/receiver/otlpreceiver v0.165.0"],
        "processors": ["go.opentelemetry.io/collector/processor/batchprocessor v0.165.0"],
        "exporters": ["github.com/open-telemetry/opentelemetry-collector-contrib/exporter/kafkaexporter v0.165.1"],
        "extensions": [
            "github.com/open-telemetry/opentelemetry-collector-contrib/extension/healthcheckextension v0.165.1"],
    }


def test_pipeline_receives_otlp_on_loopback_and_writes_otlp_spans_keyed_by_trace_id():
    settings = _settings(kafka_bootstrap="127.0.0.1:19092,127.0.0.1:19093", otel_grpc_port=14317,
                         otel_http_port=14318, otel_health_port=23133, topic_prefix="staging.")
    config = collector_config(settings)
    assert config["receivers"]["otlp"]["protocols"] == {
        "grpc": {"endpoint": "127.0.0.1:14317"}, "http": {"endpoint": "127.0.0.1:14318"}}
    kafka = config["exporters"]["kafka"]
    assert kafka["brokers"] == ["127.0.0.1:19092", "127.0.0.1:19093"]
    assert kafka["traces"] == {"topic": "staging.otlp_spans", "encoding": "otlp_proto"}
    assert kafka["partition_traces_by_id"] is True
    assert kafka["producer"] == {"required_acks": -1, "allow_auto_topic_creation": False}
    assert "auth" not in kafka and "tls" not in kafka
    assert config["extensions"]["health_check"] == {"endpoint": "127.0.0.1:23133"}
    assert config["service"]["extensions"] == ["health_check"]
    assert config["service"]["pipelines"] == {
        "traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["kafka"]}}
    assert config["service"]["telemetry"]["metrics"] == {"level": "none"}


def test_sasl_ssl_reads_the_password_from_the_environment_only():
    settings = _settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                         kafka_sasl_username="ezstream-worker", kafka_sasl_password=SecretStr(PASSWORD),
                         kafka_ssl_ca_location="/etc/kafka-ca/ca.crt")
    config = collector_config(settings, listen_host="0.0.0.0")
    kafka = config["exporters"]["kafka"]
    assert kafka["auth"] == {"sasl": {"mechanism": "SCRAM-SHA-512", "username": "ezstream-worker",
                                      "password": "${env:" + PASSWORD_ENV + "}"}}
    assert kafka["tls"] == {"ca_file": "/etc/kafka-ca/ca.crt"}
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    assert PASSWORD not in json.dumps(config)


@pytest.mark.parametrize("overrides, named", [
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "GSSAPI"}, "EZ_KAFKA_SASL_MECHANISM"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_key_password": SecretStr(PASSWORD)}, "EZ_KAFKA_SSL_KEY_PASSWORD"),
])
def test_kafka_settings_the_collector_cannot_use_are_named(overrides, named):
    with pytest.raises(ServiceError, match=named) as raised:
        collector_config(_settings(**overrides))
    assert PASSWORD not in str(raised.value)


def test_otlp_spans_and_its_dlq_are_in_the_catalogue():
    settings = _settings(topic_prefix="t.")
    specs = {spec.name: spec for spec in catalogue(settings)}
    topic = "t." + OTLP_SPANS
    assert topic in specs and dlq_topic(topic) in specs
    assert specs[topic].partitions == settings.topic_partitions
    assert specs[topic].config["retention.ms"] == str(settings.topic_retention_ms)
