"""model_recommendations (daily): per tenant, agent type and queue, the cheapest model whose quality
is within ``EZ_RECOMMEND_QUALITY_TOLERANCE`` of the model used now, with the projected monthly saving.

From the lake's ``task_events`` and ``llm_calls`` of the day; written, the day replaced, to the
Delta table ``reports/model_recommendations`` and the ClickHouse table ``model_recommendations``.
Runs before ``daily_cost_report``, whose HTML file shows them. Logic:
:mod:`connectors.batch.recommend`.
"""

from __future__ import annotations

import logging

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from connectors.batch import DEFAULT_ARGS, TAGS

log = logging.getLogger(__name__)


@dag(
    dag_id="model_recommendations",
    schedule=CronDataIntervalTimetable("15 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "lake", "clickhouse", "report"],
    doc_md=__doc__,
)
def model_recommendations():
    @task
    def recommend(data_interval_start=None) -> dict:
        """Compute the interval's day's recommendations and replace that day in the lake and ClickHouse."""
        from connectors.batch.recommend import model_recommendations as compute
        from connectors.settings import load_settings

        done = compute(load_settings(), data_interval_start.date())
        log.info("%s: %d recommendations over %d groups, projected monthly saving $%.2f",
                 done.day, done.rows.num_rows, done.groups, done.monthly_saving_usd)
        return {"day": done.day, "groups": done.groups, "recommendations": done.rows.num_rows,
                "monthly_saving_usd": done.monthly_saving_usd}

    recommend()


model_recommendations()
