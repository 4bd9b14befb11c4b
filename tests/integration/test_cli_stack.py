"""`ezstream up | down | status | topics` against real services, and the dashboard in `status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from connectors.kafka.topics import (EVENT_TOPICS, FOREIGN_TOPICS, catalogue, delete_topics_with_prefix, describe_topics,
                                     dlq_topic, ensure_topics)
from infra.local.dashboard import Dashboard
from infra.local.net import free_port
from tests.integration.conftest import otel_ports


def ezstream(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )


def stack_env(settings) -> dict[str, str]:
    return {
        "EZ_HOME": str(settings.home),
        "EZ_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "EZ_MINIO_ADDRESS": settings.minio_address,
        "EZ_OTEL_GRPC_PORT": str(settings.otel_grpc_port),
        "EZ_OTEL_HTTP_PORT": str(settings.otel_http_port),
        "EZ_OTEL_HEALTH_PORT": str(settings.otel_health_port),
    }


def test_status_reports_every_service_healthy(settings):
    result = ezstream("status", "--json", env=stack_env(settings))
    assert result.returncode == 0, result.stderr
    services = {row["name"]: row for row in json.loads(result.stdout)["services"]}
    assert set(services) == {"kafka", "minio", "clickhouse", "otelcol"}
    assert services["kafka"] == {
        "name": "kafka", "address": settings.kafka_bootstrap, "state": "running", "healthy": True,
    }
    assert services["minio"]["state"] == "running" and services["minio"]["healthy"]
    assert services["clickhouse"]["state"] == "embedded"
    assert services["otelcol"] == {
        "name": "otelcol", "address": f"http://127.0.0.1:{settings.otel_http_port}", "state": "running",
        "healthy": True,
    }


def test_status_shows_whether_the_dashboard_runs_and_where(settings, tmp_path):
    # A home of its own: the dashboard is started and stopped here, nowhere another test looks.
    own = settings.model_copy(update={"home": tmp_path / "home", "dashboard_port": free_port()})
    env = {**stack_env(own), "EZ_DASHBOARD_PORT": str(own.dashboard_port)}
    url = f"http://127.0.0.1:{own.dashboard_port}"
    dashboard = Dashboard(own)
    try:
        assert dashboard.up() == "started"
        running = ezstream("status", env=env)
        assert running.returncode == 0, running.stdout + running.stderr
        assert f"dashboard   {url:<44} running   ok" in running.stdout.splitlines(), running.stdout
        as_json = json.loads(ezstream("status", "--json", env=env).stdout)
        assert as_json["dashboard"] == {"name": "dashboard", "address": url, "state": "running", "healthy": True}
    finally:
        dashboard.down()
    stopped = ezstream("status", env=env)
    # The stack is as healthy as before: a dashboard not running fails nothing.
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"dashboard   {url:<44} stopped   DOWN (ezstream dashboard starts it)" in stopped.stdout.splitlines(), \
        stopped.stdout


def test_up_is_idempotent(settings):
    result = ezstream("up", env=stack_env(settings))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already running") == 3


def test_up_then_down_leaves_nothing_running(tmp_path):
    home = tmp_path / "own-stack"
    env = {
        "EZ_HOME": str(home),
        "EZ_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "EZ_MINIO_ADDRESS": f"127.0.0.1:{free_port()}",
        **{f"EZ_{name.upper()}": str(port) for name, port in otel_ports().items()},
    }
    try:
        up = ezstream("up", env=env)
        assert up.returncode == 0, up.stderr + up.stdout
        assert up.stdout.count("started") == 3
        ours = _processes_mentioning(str(home))
        assert len(ours) == 3, ours
    finally:
        down = ezstream("down", env=env)
    assert down.returncode == 0, down.stderr
    assert _processes_mentioning(str(home)) == []
    status = ezstream("status", env=env)
    assert status.returncode == 1
    assert "DOWN" in status.stdout


def test_port_taken_by_someone_else_is_a_clear_error(settings, tmp_path):
    env = {"EZ_HOME": str(tmp_path / "other"), "EZ_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "EZ_MINIO_ADDRESS": f"127.0.0.1:{free_port()}"}
    result = ezstream("up", env=env)
    assert result.returncode == 2
    assert f"port {settings.kafka_bootstrap.rsplit(':', 1)[1]}" in result.stderr
    assert "EZ_KAFKA_BOOTSTRAP" in result.stderr


def test_bad_setting_fails_at_start_naming_it(tmp_path):
    result = ezstream("status", env={"EZ_HOME": str(tmp_path), "EZ_KAFKA_BOOTSTRAP": "nope"})
    assert result.returncode == 2
    assert "EZ_KAFKA_BOOTSTRAP" in result.stderr


def test_topics_create_is_idempotent_with_settings(settings):
    first = ensure_topics(settings, catalogue(settings))
    second = ensure_topics(settings, catalogue(settings))
    bases = [*EVENT_TOPICS, *FOREIGN_TOPICS]
    names = set(bases) | {dlq_topic(t) for t in bases}
    assert set(first) == set(second) == names
    assert set(second.values()) == {"exists"}
    described = {row["topic"]: row for row in describe_topics(settings, sorted(names))}
    assert described["agent.llm_calls"]["partitions"] == settings.topic_partitions
    assert described["agent.llm_calls"]["retention.ms"] == str(settings.topic_retention_ms)
    assert described["agent.llm_calls.dlq"]["retention.ms"] == str(settings.dlq_retention_ms)
    assert described["agent.tasks"]["cleanup.policy"] == "delete"


def test_a_runs_topics_are_deleted_by_their_prefix_and_no_other(settings, make_topic, unique):
    from confluent_kafka.admin import AdminClient

    from connectors.kafka import client_config

    own = [make_topic("run.a"), make_topic("run.b", partitions=1)]
    other = make_topic("runner")  # shares the prefix's letters, not its dot
    assert delete_topics_with_prefix(settings, f"t.{unique}.run.") == sorted(own)
    left = set(AdminClient(client_config(settings)).list_topics(timeout=10).topics)
    assert other in left and not set(own) & left
    assert delete_topics_with_prefix(settings, f"t.{unique}.run.") == []
    with pytest.raises(ValueError, match="non-empty prefix"):
        delete_topics_with_prefix(settings, "")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and ("kafka.Kafka" in cmdline or "minio server" in cmdline or "otelcol" in cmdline):
            found.append(cmdline)
    return found
