"""backfill (manual): reload ClickHouse from the lake for some tables and a range of days.

Trigger it with the params ``tables`` (empty: every event table), ``start`` and ``end`` (UTC
days, inclusive). Idempotent: hours ClickHouse already holds exactly are left alone; progress is
logged day by day. Logic: :mod:`connectors.batch.backfill`.
"""

from __future__ import annotations

import logging

import pendulum
from airflow.sdk import Param, dag, task

from connectors.batch import DEFAULT_ARGS, TAGS

log = logging.getLogger(__name__)


@dag(
    dag_id="backfill",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "lake", "clickhouse"],
    params={
        "tables": Param([], type="array", items={"type": "string"},
                        description="Event tables to reload (task_events, llm_calls, telemetry, alerts); empty: all."),
        # No defaults: the range is chosen at trigger time.
        "start": Param(type="string", format="date", description="First day (UTC) to reload."),
        "end": Param(type="string", format="date", description="Last day (UTC) to reload, inclusive."),
    },
    doc_md=__doc__,
)
def backfill():
    @task
    def reload_clickhouse(params=None, data_interval_start=None, dag_run=None) -> dict:
        """Bring ClickHouse to the lake's rows, day by day, hour by hour."""
        from datetime import date

        from connectors.batch.backfill import backfill
        from connectors.settings import load_settings

        # A manual run may have no data interval (no logical date): then its day is when it runs.
        when = data_interval_start or getattr(dag_run, "run_after", None)
        run_day = when.date() if when is not None else None
        checks = backfill(load_settings(), date.fromisoformat(params["start"]), date.fromisoformat(params["end"]),
                          list(params["tables"]), progress=log.info, run_day=run_day)
        return {"hours": len(checks), "rows": sum(c.lake_rows for c in checks),
                "inserted": sum(c.inserted for c in checks)}

    reload_clickhouse()


backfill()
