"""The local Airflow (``airflow standalone``, as ``make airflow`` starts it) serves its UI: headless
Chromium logs in and sees every DAG; its scheduler runs a triggered DAG with the project's settings."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import SecretStr

from infra.local.airflow import USER, AirflowServer, password, password_file, python_bin
from infra.local.net import free_port
from tests.conftest import wait_for
from tests.integration.airflow_harness import DAG_IDS, chdb, require_venv
from tests.integration.airflow_seed import seed
from tests.integration.pipeline import REPO

#: Kept after the run (gitignored): what the browser saw.
ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.fixture
def server(settings, tmp_path, unique):
    require_venv(settings)
    own = settings.model_copy(update={
        "home": tmp_path / "home",
        "lake_uri": f"file://{tmp_path / 'lake'}",
        "clickhouse_dsn": SecretStr(f"chdb://{tmp_path / 'clickhouse'}"),
    })
    server = AirflowServer(own, port=free_port())
    try:
        server.up(echo=lambda line: None)
        yield server
    finally:
        server.down()


def api(server: AirflowServer, method: str, path: str, body: dict | None = None) -> dict:
    token_request = urllib.request.Request(
        f"{server.url}/auth/token", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"username": USER, "password": password(server.home)}).encode())
    with urllib.request.urlopen(token_request, timeout=30) as resp:
        token = json.loads(resp.read())["access_token"]
    request = urllib.request.Request(
        f"{server.url}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def test_ui_login_lists_every_dag(server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "airflow-dags.png"
    screenshot.unlink(missing_ok=True)
    result = subprocess.run(
        [str(python_bin(server.settings)), str(Path(__file__).with_name("airflow_browser.py")), server.url, USER,
         str(password_file(server.home)), str(screenshot), *DAG_IDS],
        capture_output=True, text=True, timeout=420,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-4000:]}"
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["seen"] == sorted(DAG_IDS) and seen["url"].endswith("/dags")
    assert screenshot.stat().st_size > 10_000


def test_scheduler_runs_a_triggered_backfill(server):
    settings = server.settings
    rows = seed(settings, datetime(2026, 11, 20, 8, tzinfo=timezone.utc), 600, seed_=21, splits=2)
    wait_for(lambda: api(server, "GET", "/api/v2/dags?dag_id_pattern=backfill")["total_entries"], 120,
             "the DAG processor to parse backfill")
    api(server, "PATCH", "/api/v2/dags/backfill", {"is_paused": False})
    run = api(server, "POST", "/api/v2/dags/backfill/dagRuns",
              {"logical_date": None, "conf": {"tables": [], "start": "2026-11-20", "end": "2026-11-20"}})

    def finished() -> str | None:
        state = api(server, "GET", f"/api/v2/dags/backfill/dagRuns/{run['dag_run_id']}")["state"]
        return state if state in ("success", "failed") else None

    assert wait_for(finished, 300, "the backfill run to finish", interval_s=2) == "success"
    db = settings.clickhouse_database
    for table, n in rows.items():
        assert chdb(settings, "sql", f"SELECT count() FROM {db}.{table}") == [[n]], table
