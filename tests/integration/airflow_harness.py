"""Running the project's Airflow (its own virtualenv, see infra/local/airflow.py) from the tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from connectors.settings import Settings
from infra.local import airflow
from tests.integration.pipeline import REPO

#: The project's DAGs; every one is shown in the UI and run by a test.
DAG_IDS = ("lake_maintenance", "reconcile_lake_clickhouse", "daily_cost_report", "model_recommendations",
           "retention", "backfill")


def require_venv(settings: Settings) -> Path:
    """Airflow's virtualenv; the test fails (not skips) when ``make airflow-install`` did not run."""
    if not airflow.airflow_bin(settings).exists():
        pytest.fail(f"Airflow's virtualenv {airflow.venv_dir(settings)} is missing: run `make airflow-install`")
    return airflow.venv_dir(settings)


class AirflowCli:
    """``airflow`` commands on a metadata database of its own (SQLite under ``home``)."""

    def __init__(self, settings: Settings, home: Path) -> None:
        require_venv(settings)
        self.settings = settings
        self.home = home
        self.run("db", "migrate")

    def run(self, *args: str, settings: Settings | None = None, extra_env: dict[str, str] | None = None,
            timeout_s: float = 300) -> str:
        env = {**airflow.airflow_env(settings or self.settings, self.home, 8080), **(extra_env or {})}
        result = subprocess.run([str(airflow.airflow_bin(self.settings)), *args], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=timeout_s)
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} exited {result.returncode}:\n{output[-6000:]}")
        return output

    def dags_test(self, dag_id: str, run_after: datetime, settings: Settings, conf: dict | None = None,
                  extra_env: dict[str, str] | None = None) -> str:
        """Run the whole DAG once (``airflow dags test``) for the data interval that ends at
        ``run_after``; its output, after checking that the run succeeded."""
        args = ["dags", "test", dag_id, run_after.isoformat()]
        if conf is not None:
            args += ["-c", json.dumps(conf)]
        output = self.run(*args, settings=settings, extra_env=extra_env)
        finished = re.search(r"DagRun Finished: dag_id=" + re.escape(dag_id) + r".*?state=(\w+)", output)
        assert finished and finished.group(1) == "success", f"{dag_id} run did not succeed:\n{output[-8000:]}"
        return output


def chdb(settings: Settings, *args: str) -> list:
    """Run ``tests/integration/airflow_seed.py`` in a process of its own (it may open the
    embedded ClickHouse of ``settings``, which this process cannot); its JSON answer."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("EZ_", "AWS_"))},
           **airflow.settings_env(settings), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "tests.integration.airflow_seed", *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"airflow_seed {args[0]} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])
