"""retention (daily): event rows older than the configured days leave the lake and ClickHouse.

The lake keeps ``EZ_LAKE_RETENTION_DAYS`` event dates, ClickHouse ``EZ_CLICKHOUSE_TTL_DAYS``
days, both counted back from the run's day (never from the clock). Logic:
:mod:`connectors.batch.retention`.
"""

from __future__ import annotations

import logging

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from connectors.batch import DEFAULT_ARGS, TAGS

log = logging.getLogger(__name__)


@dag(
    dag_id="retention",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "lake", "clickhouse"],
    doc_md=__doc__,
)
def retention():
    @task
    def lake_retention(data_interval_start=None) -> list[dict]:
        """Delete the lake's event dates older than the lake retention."""
        from dataclasses import asdict

        from connectors.batch.retention import retain_lake
        from connectors.settings import load_settings

        return [asdict(r) for r in retain_lake(load_settings(), data_interval_start.date())]

    @task
    def clickhouse_retention(data_interval_start=None) -> list[dict]:
        """Delete ClickHouse rows (events and rollups) older than the ClickHouse retention."""
        from dataclasses import asdict

        from connectors.batch.retention import retain_clickhouse
        from connectors.settings import load_settings

        return [asdict(r) for r in retain_clickhouse(load_settings(), data_interval_start.date())]

    lake_retention() >> clickhouse_retention()


retention()
