"""reconcile_lake_clickhouse (hourly): per table and hour, the lake against ClickHouse.

A run checks the hour before its data interval (``lag_hours``, 1 by default), so both sinks have
long written it. Counts and sum(cost_usd) of the hour are compared; a table whose hour differs is repaired in
ClickHouse from the lake (the exact record), idempotently. An hour older than the retention of
either store (counted from the run's day) is skipped, one outside the event times ClickHouse
keeps is only counted; every check, with its status, goes into the report
``reports/reconcile/<hour>.json`` under the lake. Logic: :mod:`connectors.batch.reconcile`.
"""

from __future__ import annotations

import logging

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, TriggerRule, dag, task

from connectors.batch import DEFAULT_ARGS, TAGS

log = logging.getLogger(__name__)


@dag(
    dag_id="reconcile_lake_clickhouse",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # One task at a time: an embedded ClickHouse engine opens in one process only.
    max_active_tasks=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "lake", "clickhouse"],
    params={
        "lag_hours": Param(1, type="integer", minimum=0,
                           description="Hours between the checked hour and the run's data interval."),
    },
    doc_md=__doc__,
)
def reconcile_lake_clickhouse():
    @task
    def event_tables() -> list[str]:
        """The lake's event tables (one mapped reconcile task each)."""
        from connectors.sink import TABLES

        return list(TABLES.values())

    @task(map_index_template="{{ task.op_kwargs['table'] }}")
    def reconcile(table: str, data_interval_start=None, data_interval_end=None, params=None) -> list[dict]:
        """Compare the table's hours in the lagged interval and repair ClickHouse where they differ."""
        from datetime import timedelta

        from connectors.batch.reconcile import reconcile
        from connectors.settings import load_settings

        lag = timedelta(hours=int(params["lag_hours"]))
        checks = reconcile(load_settings(), data_interval_start - lag, data_interval_end - lag, [table],
                           progress=log.info, day=data_interval_start.date())
        return [c.to_dict() for c in checks]

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def report(checks: list, data_interval_start=None, params=None) -> str:
        """Write every table's checks (repairs included) as one JSON report under the lake."""
        import json
        from datetime import timedelta

        from connectors.batch.lake import REPORTS, write_file
        from connectors.settings import load_settings

        start = data_interval_start - timedelta(hours=int(params["lag_hours"]))
        rows = [c for table in checks if table for c in table]
        body = json.dumps({"start": start.isoformat(), "checks": rows}, indent=1)
        uri = write_file(load_settings(), f"{REPORTS}/reconcile/{start:%Y-%m-%dT%H}.json", body.encode())
        repaired = [c for c in rows if c["inserted"] or c["deleted"]]
        left = {s: sum(c["status"] == s for c in rows) for s in ("skipped", "unstorable")}
        log.info("%d table hours checked, %d repaired, %d skipped (before the retention), %d outside the "
                 "event times ClickHouse keeps; report %s", len(rows), len(repaired), left["skipped"],
                 left["unstorable"], uri)
        return uri

    report(reconcile.expand(table=event_tables()))


reconcile_lake_clickhouse()
