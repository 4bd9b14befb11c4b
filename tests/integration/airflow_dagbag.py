"""Loads the DAG folder into a DagBag, in Airflow's virtualenv, and writes what it found as JSON.

Run by tests/unit/test_dags.py: ``python airflow_dagbag.py DAGS_FOLDER OUT.json``. Besides the
DAGs and import errors it records which heavy modules parsing the DAG files imported: DAG files
must stay thin (the scheduler parses them again and again).
"""

from __future__ import annotations

import json
import sys
import time

#: Modules a DAG file must not import at parse time (the tasks import them when they run).
HEAVY = ("pyarrow", "deltalake", "duckdb", "clickhouse_connect", "chdb", "plotly", "boto3", "connectors.batch.")


def _mapped(task) -> bool:
    return any(c.__name__ == "MappedOperator" for c in type(task).__mro__)


def main(folder: str, out: str) -> None:
    from airflow.dag_processing.dagbag import DagBag

    started = time.monotonic()
    bag = DagBag(dag_folder=folder)
    seconds = time.monotonic() - started
    report = {
        "import_errors": bag.import_errors,
        "parse_seconds": seconds,
        "heavy_modules": sorted(m for m in sys.modules if m.startswith(HEAVY) or m in {h.rstrip(".") for h in HEAVY}
                                if not m == "connectors.batch"),
        "dags": {
            dag_id: {
                "fileloc": dag.fileloc,
                "schedule": repr(dag.timetable) if dag.timetable is not None else None,
                "tags": sorted(dag.tags),
                "catchup": dag.catchup,
                "params": sorted(dag.params.keys()),
                "tasks": {t.task_id: {"owner": t.owner, "retries": t.retries, "mapped": _mapped(t)}
                          for t in dag.tasks},
            }
            for dag_id, dag in bag.dags.items()
        },
    }
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
