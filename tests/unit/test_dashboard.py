"""``ezstream dashboard``'s process (infra/local/dashboard.py): its settings reach the page through
the environment only, it listens on loopback with Streamlit's usage statistics off, a bad or taken
port names EZ_DASHBOARD_PORT, and ``ezstream down`` stops it by its pid."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from connectors.errors import ConfigError, ServiceError
from connectors.settings import load_settings
from infra.local import dashboard as dashboard_module
from infra.local.dashboard import Dashboard, settings_environment
from infra.local.net import free_port

SECRETS = {"kafka_sasl_password": "sasl-secret-1", "clickhouse_dsn": "https://u:ch-secret-2@ch.example:8443/db",
           "minio_root_password": "minio-secret-3"}


def secret_settings(tmp_path: Path, **more):
    return load_settings(home=tmp_path / "home", kafka_security_protocol="SASL_SSL",
                         kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="ops",
                         kafka_extra={"client.id": "dash"}, capture_snippets=True, topic_prefix="staging.",
                         dashboard_port=free_port(), **SECRETS, **more)


def test_the_environment_gives_the_child_the_same_settings(tmp_path, monkeypatch):
    settings = secret_settings(tmp_path)
    monkeypatch.setenv("EZ_TOPIC_PREFIX", "other.")  # the parent's environment loses to its settings
    env = settings_environment(settings)
    assert env["EZ_TOPIC_PREFIX"] == "staging." and env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] == "false"
    monkeypatch.setattr(os, "environ", env)
    assert load_settings() == settings


def test_it_listens_on_loopback_without_usage_statistics_and_no_secret_in_its_arguments(tmp_path, monkeypatch):
    settings = secret_settings(tmp_path)
    started = {}
    board = Dashboard(settings)
    monkeypatch.setattr(board.proc, "start", lambda argv, **kw: started.update(argv=argv, **kw))
    monkeypatch.setattr(board.proc, "wait_ready", lambda *args: None)
    assert board.up() == "started"
    argv = " ".join(started["argv"])
    assert f"--server.address 127.0.0.1 --server.port {settings.dashboard_port}" in argv
    assert "--browser.gatherUsageStats false" in argv and "--server.headless true" in argv
    assert started["marker"] in argv
    for secret in ("sasl-secret-1", "ch-secret-2", "minio-secret-3"):
        assert secret not in argv
    assert started["env"]["EZ_KAFKA_SASL_PASSWORD"] == "sasl-secret-1"


@pytest.mark.parametrize("value", ["0", "65536", "http"])
def test_a_bad_port_names_the_setting(monkeypatch, value):
    monkeypatch.setenv("EZ_DASHBOARD_PORT", value)
    with pytest.raises(ConfigError, match="EZ_DASHBOARD_PORT"):
        load_settings()


def test_a_taken_port_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(dashboard_module, "port_in_use", lambda host, port: True)
    with pytest.raises(ServiceError, match="port .* is taken .* EZ_DASHBOARD_PORT"):
        Dashboard(load_settings(home=tmp_path)).up()


def test_ezstream_dashboard_runs_until_ezstream_down(tmp_path):
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EZ_")},
           "EZ_HOME": str(tmp_path / "home"), "EZ_DASHBOARD_PORT": str(port),
           "EZ_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    ezstream = [sys.executable, "-m", "streams.cli"]
    run = lambda *args: subprocess.run([*ezstream, *args], env=env, capture_output=True, text=True,  # noqa: E731
                                       timeout=180, cwd=tmp_path)
    started = run("dashboard")
    assert started.returncode == 0, started.stderr
    assert f"http://127.0.0.1:{port}  started" in started.stdout
    pid = int((tmp_path / "home" / "run" / "dashboard.pid").read_text())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as resp:
            assert resp.status == 200
        assert "already running" in run("dashboard").stdout
        stopped = run("down")
        assert stopped.returncode == 0 and "dashboard   stopped" in stopped.stdout, stopped.stderr
        assert not (tmp_path / "home" / "run" / "dashboard.pid").exists()
        assert not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:  # stops it only while its pid still runs the dashboard (the marker)
        Dashboard(load_settings(home=tmp_path / "home", dashboard_port=port)).down()
