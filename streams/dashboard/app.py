"""The dashboard page: ``streamlit run`` runs this script (see infra/local/dashboard.py).

Every panel's figures come from :mod:`streams.dashboard.panels`; the page only lays them out and
refreshes them every ``EZ_DASHBOARD_REFRESH_SECONDS``; every browser on the page shares one reading
per refresh period. A panel that cannot be read says why and the others go on. Each panel sits in a container keyed ``panel-<name>`` (the CSS class
``st-key-panel-<name>``), and its headline figures are ``st.metric``s, so a browser finds them.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import streamlit as st

from connectors.settings import load_settings
from streams.dashboard import panels
from streams.intelligence.alerts import Budgets

#: Rows of the longer tables: the agents most used against their budgets, the latest alerts.
AGENTS_SHOWN = 20
ALERTS_SHOWN = 25

settings = load_settings()
db = settings.clickhouse_database
run = panels.source(settings)

st.set_page_config(page_title="EzAigent Streams", layout="wide")


@st.cache_data(ttl=settings.dashboard_refresh_seconds, show_spinner=False)
def read(panel: str, *args: object) -> object:
    """A panel's rows, shared by every browser session for one refresh period (errors are not kept)."""
    if panel in ("consumer_lag", "dlq_sizes"):
        return getattr(panels, panel)(settings, *args)
    if panel == "budget_use":
        budgets = Budgets.load(settings.budgets_file) if settings.budgets_file else Budgets()
        return panels.budget_use(run, db, budgets)
    return getattr(panels, panel)(run, db, *args)

st.title("EzAigent Streams")


def usd(value: float | None) -> str:
    return "-" if value is None else f"${float(value):,.2f}"


def attempt(what: str, action):
    """``action()``, or None with the reason shown, so one unreadable panel hides nothing else."""
    try:
        return action()
    except Exception as exc:  # noqa: BLE001
        st.warning(f"{what}: {exc}")
        return None


def table(rows: list[dict], empty: str, **formats: str) -> None:
    if not rows:
        st.caption(empty)
        return
    frame = pd.DataFrame(rows)
    st.table(frame.style.format({column: fmt for column, fmt in formats.items() if column in frame}, na_rep="-")
             .hide(axis="index"))


def clickhouse_panels() -> None:
    with st.container(key="panel-spend"):
        st.subheader("LLM spend")
        now = attempt("spend", lambda: read("spend_now"))
        if now is not None:
            left, middle, right = st.columns(3)
            left.metric("Spend today", usd(now["today_usd"]))
            middle.metric("Spend last hour", usd(now["last_hour_usd"]))
            right.metric("LLM calls today", f"{int(now['calls_today']):,}")
        by = st.radio("by", list(panels.SPEND_KEYS), horizontal=True, key="spend-by")
        hourly = attempt("spend per hour", lambda: read("spend_per_hour", by))
        if hourly:
            st.bar_chart(pd.DataFrame(hourly), x="hour", y="cost_usd", color="key", x_label="hour (UTC)",
                         y_label="USD")
        spend = attempt("spend", lambda: read("spend_by", by))
        if spend is not None:
            table(spend, "no LLM calls today", today_usd="${:,.2f}", last_hour_usd="${:,.2f}",
                  calls_today="{:,}")

    with st.container(key="panel-budgets"):
        st.subheader("Budgets (daily, EZ_BUDGETS_FILE)")
        if settings.budgets_file is None:
            st.caption("no budgets: set EZ_BUDGETS_FILE")
        use = attempt("budgets", lambda: read("budget_use"))
        if use is not None:
            over = [r for r in use if (r["used_pct"] or 0) >= 100]
            left, right = st.columns(2)
            left.metric("Budgets in use today", f"{len(use):,}")
            right.metric("Budgets spent", f"{len(over):,}")
            agents = [r for r in use if r["scope"] == "agent"]
            shown = [r for r in use if r["scope"] == "tenant"] + agents[:AGENTS_SHOWN]
            table(shown, "no spend against a budget today", spend_usd="${:,.2f}", budget_usd="${:,.2f}",
                  used_pct="{:,.1f}%")
            if len(shown) < len(use):
                st.caption(f"and {len(use) - len(shown):,} more agents, less used")
        st.markdown("**Forecasts**: spend projected past the budget (latest firing `budget_forecast` alert "
                    "per tenant or agent)")
        forecasts = attempt("forecasts", lambda: read("budget_forecasts"))
        if forecasts is not None:
            table(forecasts, "no budget forecast firing", projected_spend_usd="${:,.2f}", budget_usd="${:,.2f}",
                  burn_rate_usd_per_hour="${:,.2f}/h")

    with st.container(key="panel-alerts"):
        st.subheader("Alerts")
        counts = attempt("alerts", lambda: read("alert_counts"))
        if counts is not None:
            left, right = st.columns(2)
            left.metric("Active alerts", f"{int(counts['active']):,}")
            right.metric("Resolved in the last hour", f"{int(counts['resolved_last_hour']):,}")
        recent = attempt("alerts", lambda: read("alerts", ALERTS_SHOWN))
        if recent is not None:
            table(recent, "no alerts yet", value="{:,.2f}", threshold="{:,.2f}")

    with st.container(key="panel-llm"):
        st.subheader("LLM latency and errors, last hour")
        health = attempt("LLM calls", lambda: read("llm_health"))
        if health:
            st.bar_chart(pd.DataFrame(health).assign(model=lambda f: f["provider"] + "/" + f["model"]),
                         x="model", y=["p50_ms", "p95_ms", "p99_ms"], stack=False, y_label="ms")
        if health is not None:
            table(health, "no LLM calls in the last hour", calls="{:,}", errors="{:,}", error_pct="{:.2f}%",
                  p50_ms="{:,.1f}", p95_ms="{:,.1f}", p99_ms="{:,.1f}")

    with st.container(key="panel-tasks"):
        st.subheader("Tasks per queue, last hour")
        queues = attempt("tasks", lambda: read("tasks"))
        if queues is not None:
            table(queues, "no task events in the last hour", success_pct="{:.1f}%", wait_p50_ms="{:,.0f}",
                  wait_p95_ms="{:,.0f}", wait_p99_ms="{:,.0f}")


def lag_panel() -> None:
    with st.container(key="panel-lag"):
        st.subheader("Consumer lag and dead letters")
        lag = attempt("consumer lag", lambda: read("consumer_lag"))
        dlq = attempt("DLQ sizes", lambda: read("dlq_sizes"))
        left, right = st.columns(2)
        if lag is not None:
            left.metric("Consumer lag", f"{sum(r['lag'] for r in lag):,}")
        if dlq is not None:
            right.metric("Dead letters", f"{sum(r['messages'] for r in dlq):,}")
        if lag is not None:
            left.caption("messages not yet read, per group and topic")
            with left:
                table(lag, "no consumer group has read yet", lag="{:,}")
        if dlq is not None:
            right.caption("messages held per DLQ topic")
            with right:
                table(dlq, "no DLQ topic", messages="{:,}")


def recommendations_panel() -> None:
    with st.container(key="panel-recommendations"):
        st.subheader("Model recommendations")
        advice = attempt("recommendations", lambda: read("recommendations"))
        if advice is not None:
            table(advice, "no recommendations yet", monthly_saving_usd="${:,.2f}",
                  current_cost_per_success_usd="${:,.4f}", recommended_cost_per_success_usd="${:,.4f}",
                  current_quality="{:.3f}", recommended_quality="{:.3f}", successful_tasks="{:,}")


@st.fragment(run_every=settings.dashboard_refresh_seconds)
def live() -> None:
    st.caption(f"ClickHouse {settings.clickhouse_dsn_redacted}, database {db}; Kafka {settings.kafka_bootstrap}"
               f"{f', topic prefix {settings.topic_prefix}' if settings.topic_prefix else ''}. "
               f"Refreshed every {settings.dashboard_refresh_seconds:g} s, last at "
               f"{datetime.now(timezone.utc):%H:%M:%S} UTC; days are UTC days.")

    # One check first: without a worker holding the embedded engine every panel would say the same.
    reachable = attempt("ClickHouse", lambda: run("SELECT 1")) is not None
    if reachable:
        clickhouse_panels()
    lag_panel()
    if reachable:
        recommendations_panel()


live()
