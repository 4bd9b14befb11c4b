"""The real local stack for integration tests, started through infra/local.

One stack per test session, under a temporary EZ_HOME on free ports, so a running demo stack is
never touched; it is stopped at the end. Each test gets unique topic and group names.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from connectors.kafka.topics import TopicSpec, catalogue, ensure_topics
from connectors.settings import Settings, load_settings
from infra.local import Stack
from infra.local.net import free_port
from tests.integration.pipeline import Worker

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def otel_ports() -> dict[str, int]:
    """Three different free ports for the collector (free_port may answer the same one twice)."""
    ports: list[int] = []
    while len(ports) < 3:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return dict(zip(("otel_grpc_port", "otel_http_port", "otel_health_port"), ports))


@pytest.fixture(scope="session")
def stack_overrides(tmp_path_factory) -> dict[str, Any]:
    """Explicit settings for the test stack (explicit arguments win over any EZ_* in the env)."""
    home = tmp_path_factory.mktemp("ezhome")
    return {
        "home": home,
        "kafka_bootstrap": f"127.0.0.1:{free_port()}",
        "minio_address": f"127.0.0.1:{free_port()}",
        # The OpenTelemetry Collector's OTLP endpoints: stack.otelcol.http_endpoint / grpc_endpoint.
        **otel_ports(),
        "lake_uri": f"file://{home / 'lake'}",
        "clickhouse_dsn": f"chdb://{home / 'clickhouse'}",
    }


@pytest.fixture(scope="session")
def stack(stack_overrides) -> Stack:
    """The running stack; stopped when the session ends, even after a failure."""
    stack = Stack(load_settings(**stack_overrides))
    try:
        stack.up(echo=lambda line: None)
        yield stack
    finally:
        stack.down(echo=lambda line: None)


@pytest.fixture(scope="session")
def settings(stack) -> Settings:
    """Settings pointing at the test stack, lake on the local folder."""
    return stack.settings


@pytest.fixture(scope="session")
def s3_settings(stack, stack_overrides) -> Settings:
    """The same, with the lake on the test stack's MinIO."""
    return load_settings(**{
        **stack_overrides,
        "lake_uri": f"s3://{stack.settings.minio_bucket}/lake",
        "s3_endpoint": stack.minio.endpoint,
        "s3_access_key_id": stack.settings.minio_root_user,
        "s3_secret_access_key": stack.settings.minio_root_password.get_secret_value(),
    })


@pytest.fixture
def unique(request) -> str:
    """A name no other test uses: the test's name plus a random suffix."""
    base = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name).strip("-").lower()[:40]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_pipe(stack, stack_overrides, unique, tmp_path):
    """``make_pipe(**overrides)``: settings of this test's own pipeline (topics, lake folder,
    ClickHouse folder and database), its topics created."""

    def make(**overrides: Any) -> Settings:
        settings = load_settings(**{
            **stack_overrides,
            "topic_prefix": f"t.{unique}.",
            "topic_partitions": 3,
            "lake_uri": f"file://{tmp_path}/lake",
            "clickhouse_dsn": f"chdb://{tmp_path}/clickhouse",
            "clickhouse_database": "ez_" + uuid.uuid4().hex[:8],
            "lake_flush_seconds": 1.0,
            "clickhouse_flush_seconds": 0.5,
            **overrides,
        })
        ensure_topics(settings, catalogue(settings))
        return settings

    return make


@pytest.fixture
def pipe(make_pipe):
    """This test's pipeline with small batches and short back-offs."""
    return make_pipe(lake_flush_rows=5_000, clickhouse_flush_rows=2_000, sink_retry_max_seconds=2.0)


@pytest.fixture
def workers(tmp_path):
    """Start workers with ``workers(settings, roles)``; all are stopped at the end."""
    started: list[Worker] = []

    def start(settings, roles="lake,clickhouse", name=None, failpoints=""):
        worker = Worker(settings, roles, tmp_path / (name or roles.replace(",", "-")), failpoints)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def make_topic(settings, unique):
    """Create a fresh topic for this test: ``make_topic("in", partitions=3)`` -> its name."""

    def make(suffix: str, partitions: int = 3) -> str:
        name = f"t.{unique}.{suffix}"
        ensure_topics(settings, [TopicSpec(name, partitions, 1, {})])
        return name

    return make


class Hook:
    """A webhook endpoint that answers the scripted statuses in turn, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, str, bytes]] = []  # path, content type, body
        self.lock = threading.Lock()


@pytest.fixture
def hook() -> Iterator[tuple[Hook, str]]:
    state = Hook([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.requests.append((self.path, self.headers["Content-Type"], body))
                status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free one
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_port}/services/T000/B000/secret-token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
