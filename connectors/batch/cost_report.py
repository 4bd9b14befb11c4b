"""The daily cost report: LLM spend per tenant, agent, provider and model, against budgets.

Computed from the lake's ``llm_calls`` (the exact record) for one UTC day and the day before.
Written, for that day, into two Delta tables under the lake's ``reports/`` (the day's partition
replaced, so a rerun leaves one copy) and as one self-contained HTML file with plotly charts
(the plotting library is inlined; the file opens offline):

- ``reports/daily_cost``: one row per (tenant, agent, provider, model): calls, tokens, cost, the
  day before's cost and the change in percent;
- ``reports/daily_budget_use``: one row per tenant and per agent with spend: cost, daily budget
  (from ``EZ_BUDGETS_FILE``, the budget alerts' TOML file; none when unset) and the share of it used;
- ``reports/html/daily-cost-<day>.html``.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from connectors.batch.lake import BUDGET_TABLE, COST_TABLE, REPORTS, open_table, read_rows, write_file
from connectors.lake import storage_options, table_uri
from connectors.settings import Settings
from streams.intelligence.alerts import Budgets

log = logging.getLogger(__name__)

KEYS = ("tenant_id", "agent_id", "provider", "model")
_COLUMNS = [*KEYS, "cost_usd", "input_tokens", "output_tokens"]


@dataclass(frozen=True)
class CostReport:
    """Where the day's report went, and its totals."""

    day: str
    total_usd: float
    previous_total_usd: float
    calls: int
    rows: int
    html_uri: str


def daily_cost_report(settings: Settings, day: date) -> CostReport:
    """Build and write the report of ``day`` (UTC)."""
    budgets = Budgets.load(settings.budgets_file) if settings.budgets_file is not None else Budgets()
    today, yesterday = _day_calls(settings, day), _day_calls(settings, day - timedelta(days=1))
    costs = _cost_rows(day, today, yesterday)
    budget_use = _budget_rows(day, today, budgets)
    _replace_day(settings, COST_TABLE, costs, day)
    _replace_day(settings, BUDGET_TABLE, budget_use, day)
    total = float(pc.sum(today["cost_usd"]).as_py() or 0.0)
    previous = float(pc.sum(yesterday["cost_usd"]).as_py() or 0.0)
    page = _html(day, costs, budget_use, total, previous, today.num_rows)
    uri = write_file(settings, f"{REPORTS}/html/daily-cost-{day.isoformat()}.html", page.encode())
    log.info("cost report %s: $%.6f over %d calls (day before $%.6f); %s", day, total, today.num_rows, previous, uri)
    return CostReport(day.isoformat(), total, previous, today.num_rows, costs.num_rows, uri)


def _day_calls(settings: Settings, day: date) -> pa.Table:
    start = datetime.combine(day, time(), tzinfo=timezone.utc)
    delta = open_table(settings, "llm_calls")
    if delta is None:
        return pa.table({c: pa.array([], pa.float64() if c == "cost_usd" else pa.int32() if "tokens" in c else pa.string())
                         for c in _COLUMNS})
    return read_rows(delta, start, start + timedelta(days=1), _COLUMNS)


def _cost_rows(day: date, today: pa.Table, yesterday: pa.Table) -> pa.Table:
    aggregate = [("cost_usd", "count"), ("cost_usd", "sum"), ("input_tokens", "sum"), ("output_tokens", "sum")]
    now = {tuple(r[k] for k in KEYS): r for r in today.group_by(list(KEYS)).aggregate(aggregate).to_pylist()}
    before = {tuple(r[k] for k in KEYS): r["cost_usd_sum"]
              for r in yesterday.group_by(list(KEYS)).aggregate([("cost_usd", "sum")]).to_pylist()}
    rows = []
    for key in sorted(set(now) | set(before)):
        row = now.get(key, {})
        cost, prev = float(row.get("cost_usd_sum") or 0.0), float(before.get(key) or 0.0)
        rows.append({
            "report_date": day, **dict(zip(KEYS, key)),
            "calls": int(row.get("cost_usd_count") or 0),
            "input_tokens": int(row.get("input_tokens_sum") or 0),
            "output_tokens": int(row.get("output_tokens_sum") or 0),
            "cost_usd": cost, "previous_cost_usd": prev,
            "change_pct": (cost - prev) / prev * 100 if prev else None,
        })
    schema = pa.schema([("report_date", pa.date32()), *[(k, pa.string()) for k in KEYS], ("calls", pa.int64()),
                        ("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("cost_usd", pa.float64()),
                        ("previous_cost_usd", pa.float64()), ("change_pct", pa.float64())])
    return pa.Table.from_pylist(rows, schema)


def _budget_rows(day: date, today: pa.Table, budgets: Budgets) -> pa.Table:
    rows = []
    for scope, column in (("tenant", "tenant_id"), ("agent", "agent_id")):
        for r in today.group_by(column).aggregate([("cost_usd", "sum")]).sort_by(column).to_pylist():
            budget = budgets.daily_usd(scope, r[column])
            cost = float(r["cost_usd_sum"] or 0.0)
            rows.append({"report_date": day, "scope": scope, "subject": r[column], "cost_usd": cost,
                         "budget_usd": budget, "used_pct": cost / budget * 100 if budget else None})
    schema = pa.schema([("report_date", pa.date32()), ("scope", pa.string()), ("subject", pa.string()),
                        ("cost_usd", pa.float64()), ("budget_usd", pa.float64()), ("used_pct", pa.float64())])
    return pa.Table.from_pylist(rows, schema)


def _replace_day(settings: Settings, table: str, rows: pa.Table, day: date) -> None:
    """The day's partition of ``table`` becomes ``rows`` in one commit."""
    write_deltalake(table_uri(settings, table), rows, mode="overwrite", partition_by=["report_date"],
                    predicate=f"report_date = '{day.isoformat()}'", storage_options=storage_options(settings))


def _html(day: date, costs: pa.Table, budget_use: pa.Table, total: float, previous: float, calls: int) -> str:
    import plotly.graph_objects as go

    rows = costs.to_pylist()
    by_model: dict[tuple[str, str], float] = {}
    by_agent: dict[str, list[float]] = {}
    for r in rows:
        by_model[(r["provider"], r["model"])] = by_model.get((r["provider"], r["model"]), 0.0) + r["cost_usd"]
        agent = by_agent.setdefault(r["agent_id"], [0.0, 0.0])
        agent[0] += r["cost_usd"]
        agent[1] += r["previous_cost_usd"]
    models = sorted(by_model.items(), key=lambda kv: -kv[1])
    model_chart = go.Figure(go.Bar(x=[f"{p} / {m}" for (p, m), _ in models], y=[c for _, c in models]))
    model_chart.update_layout(title=f"Cost per provider / model, {day}", yaxis_title="USD")
    agents = sorted(by_agent.items(), key=lambda kv: -kv[1][0])[:20]
    agent_chart = go.Figure([
        go.Bar(name=str(day - timedelta(days=1)), x=[a for a, _ in agents], y=[c[1] for _, c in agents]),
        go.Bar(name=str(day), x=[a for a, _ in agents], y=[c[0] for _, c in agents]),
    ])
    agent_chart.update_layout(title="Top agents by cost, day over day", barmode="group", yaxis_title="USD")
    tenants = [r for r in budget_use.to_pylist() if r["scope"] == "tenant"]
    budget_chart = go.Figure(go.Bar(x=[r["subject"] for r in tenants],
                                    y=[r["used_pct"] if r["used_pct"] is not None else 0.0 for r in tenants]))
    budget_chart.update_layout(title="Tenant budget used (%)", yaxis_title="% of daily budget")
    budget_chart.add_hline(y=100, line_dash="dash")
    charts = [model_chart.to_html(full_html=False, include_plotlyjs=True),
              agent_chart.to_html(full_html=False, include_plotlyjs=False),
              budget_chart.to_html(full_html=False, include_plotlyjs=False)]
    change = _percent((total - previous) / previous * 100 if previous else None)
    table_rows = "".join(
        f"<tr><td>{html.escape(r['tenant_id'])}</td><td>{html.escape(r['agent_id'])}</td>"
        f"<td>{html.escape(r['provider'])}</td><td>{html.escape(r['model'])}</td><td>{r['calls']}</td>"
        f"<td>{r['cost_usd']:.6f}</td><td>{r['previous_cost_usd']:.6f}</td>"
        f"<td>{_percent(r['change_pct'])}</td></tr>"
        for r in sorted(rows, key=lambda r: -r["cost_usd"]))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Daily cost report {day}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style></head>
<body><h1>Daily cost report {day}</h1>
<p id="totals">Total: <b>${total:.6f}</b> over {calls} LLM calls; day before: ${previous:.6f}; change: {change}</p>
{''.join(charts)}
<h2>Cost per tenant, agent, provider and model</h2>
<table><tr><th>tenant</th><th>agent</th><th>provider</th><th>model</th><th>calls</th><th>cost USD</th>
<th>day before USD</th><th>change</th></tr>{table_rows}</table>
</body></html>
"""


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"
