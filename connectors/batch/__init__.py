"""Batch jobs over the lake and ClickHouse, run by the Airflow DAGs in ``airflow_dags/``.

Each job is a plain function of the settings and a time interval (a DAG run's data interval,
or a backfill's date range), never of the wall clock, so running it again for the same interval
does the same thing: every job is idempotent. Only ``connectors`` and the core dependencies are
imported (Airflow's virtualenv has no stream-processing extra); plotting is imported by the cost
report only.

- :mod:`~connectors.batch.maintenance`: compaction (optimize, z-order) and vacuum of the lake.
- :mod:`~connectors.batch.reconcile`: per table and hour, the lake against ClickHouse; repairs
  ClickHouse from the lake. :mod:`~connectors.batch.backfill` reloads ClickHouse the same way.
- :mod:`~connectors.batch.cost_report`: the daily cost report (Delta tables and HTML).
- :mod:`~connectors.batch.retention`: deletes rows older than the configured days.
"""

from datetime import timedelta

#: Arguments every DAG's tasks share: who owns them, and retries with back-off (every task is
#: idempotent, so a retry is always safe).
DEFAULT_ARGS: dict = {
    "owner": "data-platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
}
#: Tags of every DAG of the project, for the UI's filter.
TAGS = ["ezstream"]
