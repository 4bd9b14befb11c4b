"""lake_maintenance (hourly): compact the hour's event dates of every lake table, then vacuum.

Small files of the day being written are bin-packed every hour; a day is z-ordered by
(agent_id, event_time) by the run whose interval ends it.

Logic: :mod:`connectors.batch.maintenance`.
"""

from __future__ import annotations

import logging

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from connectors.batch import DEFAULT_ARGS, TAGS

log = logging.getLogger(__name__)


@dag(
    dag_id="lake_maintenance",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "lake"],
    params={
        "vacuum_retention_hours": Param(
            168, type="integer", minimum=168,
            description="Age of a replaced file before vacuum deletes it; must outlast the longest lake read.",
        ),
    },
    doc_md=__doc__,
)
def lake_maintenance():
    @task
    def compact(data_interval_start=None, data_interval_end=None) -> list[dict]:
        """Bin-pack the interval's event dates; z-order the day the interval ends."""
        from dataclasses import asdict

        from connectors.batch.maintenance import compact
        from connectors.settings import load_settings

        done = compact(load_settings(), data_interval_start, data_interval_end)
        for c in done:
            log.info("%s %s %s: %d files -> %d", c.kind, c.table, c.event_date, c.files_before, c.files_after)
        return [asdict(c) for c in done]

    @task
    def vacuum(params=None) -> dict[str, int]:
        """Delete the files replaced longer ago than the retention."""
        from connectors.batch.maintenance import vacuum
        from connectors.settings import load_settings

        return vacuum(load_settings(), int(params["vacuum_retention_hours"]))

    compact() >> vacuum()


lake_maintenance()
