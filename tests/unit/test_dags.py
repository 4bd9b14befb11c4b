"""The DagBag test: every DAG imports, is owned, retried, tagged and thin.

Airflow lives in a virtualenv of its own (infra/local/airflow.py, ``make airflow-install``), so
the DagBag is loaded there, by tests/integration/airflow_dagbag.py, and its findings checked here.
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

from connectors.settings import load_settings
from infra.local import airflow

REPO = Path(__file__).resolve().parents[2]
#: Each DAG's schedule: cron intervals in UTC; backfill only when triggered.
DAGS = {
    "lake_maintenance": "expression='0 * * * *', timezone='UTC'",
    "reconcile_lake_clickhouse": "expression='0 * * * *', timezone='UTC'",
    "daily_cost_report": "expression='30 0 * * *', timezone='UTC'",
    "model_recommendations": "expression='15 0 * * *', timezone='UTC'",
    "retention": "expression='0 2 * * *', timezone='UTC'",
    "backfill": "NullTimetable",
}
#: What a DAG file may import at top level.
ALLOWED_IMPORTS = {"__future__", "logging", "pendulum", "airflow.sdk", "connectors.batch"}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory) -> dict:
    settings = load_settings(home=tmp_path_factory.mktemp("ezhome"))
    python = airflow.python_bin(settings)
    if not python.exists():
        pytest.fail(f"Airflow's virtualenv {airflow.venv_dir(settings)} is missing: run `make airflow-install`")
    home = tmp_path_factory.mktemp("airflow-home")
    out = home / "dagbag.json"
    env = airflow.airflow_env(settings, home, 8080)
    helper = REPO / "tests/integration/airflow_dagbag.py"
    result = subprocess.run([str(python), str(helper), str(airflow.DAGS_FOLDER), str(out)],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_dag_imports_without_errors(dagbag):
    assert dagbag["import_errors"] == {}
    assert sorted(dagbag["dags"]) == sorted(DAGS)


def test_schedules(dagbag):
    for dag_id, summary in DAGS.items():
        assert summary in dagbag["dags"][dag_id]["schedule"], (dag_id, dagbag["dags"][dag_id]["schedule"])
        assert dagbag["dags"][dag_id]["catchup"] is False


def test_every_task_has_an_owner_retries_and_tags(dagbag):
    for dag_id, dag in dagbag["dags"].items():
        assert "ezstream" in dag["tags"], dag_id
        for task_id, task in dag["tasks"].items():
            assert task["owner"] not in ("", "airflow"), (dag_id, task_id)
            assert task["retries"] >= 1, (dag_id, task_id)


def test_reconcile_maps_over_the_event_tables(dagbag):
    tasks = dagbag["dags"]["reconcile_lake_clickhouse"]["tasks"]
    assert sorted(tasks) == ["event_tables", "reconcile", "report"]
    assert tasks["reconcile"]["mapped"] and not tasks["report"]["mapped"]


def test_backfill_takes_tables_and_a_date_range(dagbag):
    assert dagbag["dags"]["backfill"]["params"] == ["end", "start", "tables"]


def test_dag_files_do_no_heavy_work_at_top_level(dagbag):
    assert dagbag["heavy_modules"] == []
    assert dagbag["parse_seconds"] < 30
    for path in sorted(airflow.DAGS_FOLDER.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert set(names) <= ALLOWED_IMPORTS, f"{path.name} imports {names} at top level"


def test_airflow_requirements_pin_airflow_and_every_task_dependency():
    """Airflow's virtualenv is installed from the lock file alone (``--no-deps``): it must pin
    Airflow itself and every dependency the DAG tasks import (core and ``airflow-tasks``)."""
    import re
    import tomllib

    pins = {}
    for line in airflow.REQUIREMENTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert pins.get("apache-airflow") == airflow.AIRFLOW_VERSION
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["airflow-tasks"]
    for requirement in needed:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()
        assert name in pins, f"{requirement} is not pinned in {airflow.REQUIREMENTS.name}"
    assert "faust-streaming" not in pins


def test_a_run_touches_the_event_dates_of_its_interval():
    from datetime import date, datetime, timezone

    from connectors.batch.lake import event_dates

    at = lambda *a: datetime(*a, tzinfo=timezone.utc)  # noqa: E731
    assert event_dates(at(2026, 11, 20, 8), at(2026, 11, 20, 9)) == [date(2026, 11, 20)]
    # An interval that ends at midnight does not touch the next day.
    assert event_dates(at(2026, 11, 20, 23), at(2026, 11, 21)) == [date(2026, 11, 20)]
    assert event_dates(at(2026, 11, 19, 0, 30), at(2026, 11, 20, 0, 30)) == [date(2026, 11, 19), date(2026, 11, 20)]
    assert event_dates(at(2026, 11, 20, 9), at(2026, 11, 20, 9)) == []


def test_retention_counts_back_from_the_run_day_never_from_the_clock():
    from datetime import date, datetime, timezone

    from connectors.batch.retention import clickhouse_cutoff, lake_cutoff

    settings = load_settings(lake_retention_days=30, clickhouse_ttl_days=1)
    # 30 days kept: the run's day and the 29 before it.
    assert lake_cutoff(settings, date(2026, 11, 20)) == date(2026, 10, 22)
    assert clickhouse_cutoff(settings, date(2026, 11, 20)) == datetime(2026, 11, 20, tzinfo=timezone.utc)
