"""daily_cost_report (daily): the day's LLM cost per tenant, agent, provider and model.

Against budgets (``EZ_BUDGETS_FILE``) and the day before; written as the Delta tables
``reports/daily_cost`` and ``reports/daily_budget_use`` and as ``reports/html/daily-cost-<day>.html``
under the lake: summary and charts, the day's model recommendations (``model_recommendations``
runs at 00:15), then the ``top_n`` largest rows of each table. Logic: :mod:`connectors.batch.cost_report`.
"""

from __future__ import annotations

import logging

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from connectors.batch import DEFAULT_ARGS, TAGS

log = logging.getLogger(__name__)


@dag(
    dag_id="daily_cost_report",
    schedule=CronDataIntervalTimetable("30 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "lake", "report"],
    params={"top_n": Param(20, type="integer", minimum=1, description="Rows in each table and chart of the HTML report.")},
    doc_md=__doc__,
)
def daily_cost_report():
    @task
    def cost_report(params=None, data_interval_start=None) -> dict:
        """Build the report of the interval's day and write its tables and HTML file."""
        from dataclasses import asdict

        from connectors.batch.cost_report import daily_cost_report
        from connectors.settings import load_settings

        report = daily_cost_report(load_settings(), data_interval_start.date(), top_n=int(params["top_n"]))
        log.info("%s: $%.6f over %d calls, day before $%.6f; %s", report.day, report.total_usd, report.calls,
                 report.previous_total_usd, report.html_uri)
        return asdict(report)

    cost_report()


daily_cost_report()
