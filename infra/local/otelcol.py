"""An OpenTelemetry Collector on loopback: OTLP in (gRPC and HTTP), the ``otlp_spans`` topic out.

The binary is built once with the OpenTelemetry collector builder (``go install
go.opentelemetry.io/collector/cmd/builder``) from a manifest of four components of one release
(otlpreceiver, batchprocessor, the contrib kafkaexporter and healthcheckextension) into
``$EZ_CACHE_DIR/otelcol/<core>-<contrib>/``. Go's module and build caches live under
``$EZ_CACHE_DIR/otelcol/go`` too, so a rebuild takes seconds and nothing lands in the clone.

:func:`collector_config` is the one pipeline configuration: the local stack writes it as JSON (a
YAML document the collector reads), and the docker-compose and Kubernetes collectors carry the
same pipeline (tests/unit/test_manifests.py compares them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from connectors.errors import ServiceError
from connectors.kafka.topics import OTLP_SPANS, catalogue, dlq_topic, ensure_topics, topic_name
from connectors.settings import KafkaSaslMechanism, KafkaSecurityProtocol, Settings
from infra.local.net import port_in_use
from infra.local.process import ManagedProcess

BUILDER = "go.opentelemetry.io/collector/cmd/builder"
CORE = "go.opentelemetry.io/collector"
CONTRIB = "github.com/open-telemetry/opentelemetry-collector-contrib"
DIST_NAME = "otelcol-ezstream"
HOST = "127.0.0.1"
#: The environment variable the collector reads the Kafka SASL password from (``${env:…}`` in its
#: configuration), so the password is in neither the configuration file nor the command line.
PASSWORD_ENV = "EZ_KAFKA_SASL_PASSWORD"
#: SASL mechanisms the kafkaexporter speaks, among those of the settings.
SASL_MECHANISMS = (KafkaSaslMechanism.PLAIN, KafkaSaslMechanism.SCRAM_SHA_256, KafkaSaslMechanism.SCRAM_SHA_512)


def builder_manifest(settings: Settings, output_path: Path) -> dict[str, Any]:
    """The collector builder's manifest: the four components, pinned to one release.

    Providers and the telemetry module are left to the builder's defaults, which are those of
    its own release (EZ_OTEL_COLLECTOR_VERSION).
    """
    core, contrib = f"v{settings.otel_collector_version}", f"v{settings.otel_contrib_version}"
    return {
        "dist": {
            "name": DIST_NAME,
            "description": "EzAigent Streams OpenTelemetry Collector (OTLP in, Kafka out)",
            "version": settings.otel_collector_version,
            "output_path": str(output_path),
        },
        "receivers": [{"gomod": f"{CORE}/receiver/otlpreceiver {core}"}],
        "processors": [{"gomod": f"{CORE}/processor/batchprocessor {core}"}],
        "exporters": [{"gomod": f"{CONTRIB}/exporter/kafkaexporter {contrib}"}],
        "extensions": [{"gomod": f"{CONTRIB}/extension/healthcheckextension {contrib}"}],
    }


def kafka_client_config(settings: Settings) -> dict[str, Any]:
    """The kafkaexporter's connection to the project's Kafka: brokers, TLS and SASL from the settings.

    The password stays out of it: ``${env:EZ_KAFKA_SASL_PASSWORD}`` is read by the collector.
    """
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {"brokers": settings.kafka_bootstrap.split(","), "client_id": DIST_NAME}
    if protocol in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL):
        if settings.kafka_ssl_key_password is not None:
            raise ServiceError("OpenTelemetry Collector: EZ_KAFKA_SSL_KEY_PASSWORD is set, but the collector's "
                               "Kafka client takes an unencrypted client key only")
        tls = {"ca_file": settings.kafka_ssl_ca_location, "cert_file": settings.kafka_ssl_certificate_location,
               "key_file": settings.kafka_ssl_key_location}
        config["tls"] = {key: str(path) for key, path in tls.items() if path is not None}
    if protocol in (KafkaSecurityProtocol.SASL_PLAINTEXT, KafkaSecurityProtocol.SASL_SSL):
        mechanism = settings.kafka_sasl_mechanism
        if mechanism not in SASL_MECHANISMS:
            raise ServiceError(
                f"OpenTelemetry Collector: EZ_KAFKA_SASL_MECHANISM {mechanism.value if mechanism else ''} is not "
                f"supported here; use one of {', '.join(m.value for m in SASL_MECHANISMS)}")
        config["auth"] = {"sasl": {"mechanism": mechanism.value, "username": settings.kafka_sasl_username or "",
                                   "password": "${env:" + PASSWORD_ENV + "}"}}
    return config


def collector_config(settings: Settings, *, listen_host: str = HOST) -> dict[str, Any]:
    """The collector's configuration: OTLP/gRPC and OTLP/HTTP receivers, a batch processor, and a
    Kafka exporter writing ``otlp_spans`` as ``otlp_proto``, keyed and partitioned by trace id.

    ``listen_host`` is where the receivers and the health check listen (loopback locally, every
    address in a container); the ports are EZ_OTEL_GRPC_PORT, EZ_OTEL_HTTP_PORT and EZ_OTEL_HEALTH_PORT.
    """
    return {
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": f"{listen_host}:{settings.otel_grpc_port}"},
            "http": {"endpoint": f"{listen_host}:{settings.otel_http_port}"},
        }}},
        "processors": {"batch": {}},
        "exporters": {"kafka": {
            **kafka_client_config(settings),
            "traces": {"topic": topic_name(settings, OTLP_SPANS), "encoding": "otlp_proto"},
            "partition_traces_by_id": True,
            # Every in-sync replica acknowledges; the topic exists before the collector starts
            # (`ezstream up`, the Strimzi KafkaTopic, the compose topics job), so none is auto-created.
            "producer": {"required_acks": -1, "allow_auto_topic_creation": False},
        }},
        "extensions": {"health_check": {"endpoint": f"{listen_host}:{settings.otel_health_port}"}},
        "service": {
            "extensions": ["health_check"],
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["kafka"]}},
            # No metrics endpoint: its default port (8888) would clash between two stacks on one machine.
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
        },
    }


class OtelCollector:
    """The collector of one ``EZ_HOME`` on 127.0.0.1: OTLP/gRPC, OTLP/HTTP and a health check."""

    name = "otelcol"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc = ManagedProcess(self.name, settings.run_dir, settings.logs_dir)
        self.dir = settings.home / "otelcol"

    @property
    def address(self) -> str:
        """The OTLP/HTTP endpoint, what OTEL_EXPORTER_OTLP_ENDPOINT is set to."""
        return self.http_endpoint

    @property
    def http_endpoint(self) -> str:
        return f"http://{HOST}:{self.settings.otel_http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"{HOST}:{self.settings.otel_grpc_port}"

    @property
    def health_url(self) -> str:
        return f"http://{HOST}:{self.settings.otel_health_port}/"

    @property
    def config_file(self) -> Path:
        return self.dir / "config.yaml"

    def binary(self) -> Path:
        """The collector in the cache, built with the collector builder on first use."""
        s = self.settings
        root = s.cache_dir / "otelcol"
        dist = root / f"{s.otel_collector_version}-contrib-{s.otel_contrib_version}"
        binary = dist / DIST_NAME
        if binary.exists():
            return binary
        go = shutil.which("go")
        if go is None:
            raise ServiceError("OpenTelemetry Collector: `go` is not on PATH; infra/local builds the collector "
                               "with the collector builder")
        s.logs_dir.mkdir(parents=True, exist_ok=True)
        build_log = s.logs_dir / "otelcol-build.log"
        src = dist / "src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        builder_bin = root / "builder" / s.otel_collector_version
        env = {
            **os.environ,
            "GOPATH": str(root / "go"),
            "GOMODCACHE": str(root / "go" / "pkg" / "mod"),
            "GOCACHE": str(root / "go" / "build-cache"),
            "GOBIN": str(builder_bin),
            "CGO_ENABLED": "0",
            # Module files writable, so the cache folder can be removed like any other.
            "GOFLAGS": "-modcacherw",
        }
        manifest = src / "manifest.yaml"
        manifest.write_text(json.dumps(builder_manifest(s, src), indent=2))
        print(f"building the OpenTelemetry Collector {s.otel_collector_version} (contrib "
              f"{s.otel_contrib_version}) with the collector builder (first time only, a few minutes)…", flush=True)
        steps = [
            [go, "install", f"{BUILDER}@v{s.otel_collector_version}"],
            [str(builder_bin / "builder"), f"--config={manifest}"],
        ]
        with open(build_log, "wb") as log:
            for argv in steps:
                log.write(f"$ {' '.join(argv)}\n".encode())
                log.flush()
                result = subprocess.run(argv, env=env, cwd=src, stdout=log, stderr=subprocess.STDOUT)
                if result.returncode != 0:
                    break
        built = src / DIST_NAME
        if result.returncode != 0 or not built.exists():
            tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-20:])
            raise ServiceError(f"OpenTelemetry Collector: building {DIST_NAME} failed (log: {build_log}):\n{tail}")
        built.replace(binary)
        return binary

    def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=timeout_s) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def up(self) -> str:
        """Start the collector unless ours already runs (Kafka must answer: its topics are made first)."""
        if self.proc.pid() is not None:
            self.proc.wait_ready(self.healthy, self.settings.start_timeout_s, "OpenTelemetry Collector")
            return "already running"
        ports = {"EZ_OTEL_GRPC_PORT": self.settings.otel_grpc_port, "EZ_OTEL_HTTP_PORT": self.settings.otel_http_port,
                 "EZ_OTEL_HEALTH_PORT": self.settings.otel_health_port}
        for setting, port in ports.items():
            if port_in_use(HOST, port):
                raise ServiceError(f"OpenTelemetry Collector: port {port} on {HOST} is taken by another process; "
                                   f"stop it or set {setting} to a free port")
        config = collector_config(self.settings)
        binary = self.binary()
        self.ensure_topics()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(config, indent=2))
        env = dict(os.environ)
        password = self.settings.kafka_sasl_password
        if "auth" in config["exporters"]["kafka"] and password is not None:
            env[PASSWORD_ENV] = password.get_secret_value()
        argv = [str(binary), f"--config={self.config_file}"]
        self.proc.start(argv, env=env, marker=str(self.config_file), state={
            "grpc": self.grpc_endpoint, "http": self.http_endpoint, "health": self.health_url})
        self.proc.wait_ready(self.healthy, self.settings.start_timeout_s, "OpenTelemetry Collector")
        return "started"

    def ensure_topics(self) -> None:
        """``otlp_spans`` and its ``.dlq``, as the catalogue declares them, before the collector writes."""
        topic = topic_name(self.settings, OTLP_SPANS)
        names = {topic, dlq_topic(topic)}
        ensure_topics(self.settings, [spec for spec in catalogue(self.settings) if spec.name in names])

    def down(self) -> bool:
        return self.proc.stop(timeout_s=30)
