"""The daily cost report: LLM spend per tenant, agent, provider and model, against budgets.

Computed from the lake's ``llm_calls`` (the exact record) for one UTC day and the day before.
Written, for that day, into two Delta tables under the lake's ``reports/`` (the day's partition
replaced, so a rerun leaves one copy) and as one self-contained HTML file:

- ``reports/daily_cost``: one row per (tenant, agent, provider, model): calls, tokens, cost, the
  day before's cost and the change in percent;
- ``reports/daily_budget_use``: one row per tenant and per agent with spend: cost, daily budget
  (from ``EZ_BUDGETS_FILE``, the budget alerts' TOML file; none when unset) and the share of it used;
- ``reports/html/daily-cost-<day>.html``: the summary and charts first (total against the day
  before, spend by provider and by model, budget use, top agents, the largest changes), then the
  day's model recommendations when :mod:`~connectors.batch.recommend` computed them, then the
  top-N tables (the full table stays in the lake). Charts are inline SVG (:mod:`~connectors.batch.charts`):
  no script, nothing fetched, the file opens offline.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from connectors.batch import charts
from connectors.batch.lake import BUDGET_TABLE, COST_TABLE, REPORTS, open_table, read_rows, write_file
from connectors.batch.recommend import read_recommendations
from connectors.lake import storage_options, table_uri
from connectors.settings import Settings
from streams.intelligence.alerts import Budgets

log = logging.getLogger(__name__)

KEYS = ("tenant_id", "agent_id", "provider", "model")
#: Rows in each of the report's tables and charts of the largest items.
DEFAULT_TOP_N = 20
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


def daily_cost_report(settings: Settings, day: date, top_n: int = DEFAULT_TOP_N) -> CostReport:
    """Build and write the report of ``day`` (UTC); its HTML tables and charts show the ``top_n``
    largest items."""
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    budgets = Budgets.load(settings.budgets_file) if settings.budgets_file is not None else Budgets()
    today, yesterday = _day_calls(settings, day), _day_calls(settings, day - timedelta(days=1))
    costs = _cost_rows(day, today, yesterday)
    budget_use = _budget_rows(day, today, budgets)
    _replace_day(settings, COST_TABLE, costs, day)
    _replace_day(settings, BUDGET_TABLE, budget_use, day)
    total = float(pc.sum(today["cost_usd"]).as_py() or 0.0)
    previous = float(pc.sum(yesterday["cost_usd"]).as_py() or 0.0)
    page = _html(day, costs, budget_use, total, previous, today.num_rows, read_recommendations(settings, day), top_n)
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


def _html(day: date, costs: pa.Table, budget_use: pa.Table, total: float, previous: float, calls: int,
          recommendations: pa.Table | None, top_n: int) -> str:
    """The page: summary and charts, the day's model recommendations, then the top-N tables."""
    rows = costs.to_pylist()
    by_provider: dict[str, list[float]] = {}
    by_model: dict[str, list[float]] = {}
    by_agent: dict[str, list[float]] = {}
    for r in rows:
        for totals, key in ((by_provider, r["provider"]), (by_model, f"{r['provider']} / {r['model']}"),
                            (by_agent, r["agent_id"])):
            pair = totals.setdefault(key, [0.0, 0.0])
            pair[0] += r["cost_usd"]
            pair[1] += r["previous_cost_usd"]
    days = (str(day), str(day - timedelta(days=1)))

    def largest(totals: dict[str, list[float]]) -> list[tuple[str, float, float]]:
        return [(k, v[0], v[1]) for k, v in sorted(totals.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))][:top_n]

    changes = sorted(((a, v[0] - v[1]) for a, v in by_agent.items() if v[0] != v[1]), key=lambda kv: (-abs(kv[1]), kv[0]))
    tenants = sorted((r for r in budget_use.to_pylist() if r["scope"] == "tenant" and r["used_pct"] is not None),
                     key=lambda r: (-r["used_pct"], r["subject"]))[:top_n]
    figures = [
        charts.paired_bars("Total spend, the day against the day before", [("all tenants", total, previous)], days,
                           chart_id="chart-total"),
        charts.paired_bars("Spend by provider", largest(by_provider), days, chart_id="chart-providers"),
        charts.paired_bars(f"Spend by model (top {top_n})", largest(by_model), days, chart_id="chart-models"),
        charts.bars(f"Tenant daily budget used (top {top_n})", [(r["subject"], r["used_pct"]) for r in tenants],
                    lambda v: f"{v:.1f}%", colors=[_budget_color(r["used_pct"]) for r in tenants],
                    markers=[(80, "80%"), (90, "90%"), (100, "100%")], chart_id="chart-budget",
                    empty="no tenant has a daily budget (EZ_BUDGETS_FILE)"),
        charts.paired_bars(f"Top {top_n} agents by spend, day over day", largest(by_agent), days, chart_id="chart-agents"),
        charts.change_bars(f"Largest day-over-day changes by agent (top {top_n})", changes[:top_n],
                           chart_id="chart-changes"),
    ]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Daily cost report {day}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} td.t,th.t{{text-align:left}}
.cards{{display:flex;flex-wrap:wrap;gap:1em}} .card{{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;min-width:12em}}
.card b{{font-size:1.4em;display:block}} figure{{margin:1em 0}}</style></head>
<body><h1>Daily cost report {day}</h1>
<section id="summary">{_summary(rows, budget_use, total, previous, calls, by_provider, recommendations)}</section>
<section id="charts">{''.join(f'<figure>{f}</figure>' for f in figures)}</section>
{_recommendations_section(recommendations, top_n)}
<section id="tables">{_tables(rows, budget_use, by_agent, top_n)}</section>
</body></html>
"""


def _summary(rows: list[dict], budget_use: pa.Table, total: float, previous: float, calls: int,
             by_provider: dict[str, list[float]], recommendations: pa.Table | None) -> str:
    change = _percent((total - previous) / previous * 100 if previous else None)
    cards = [
        ("Total spend", f"${total:.6f}", f"day before ${previous:.6f}; {charts.signed_usd(total - previous)} ({change})"),
        ("LLM calls", f"{calls:,}", f"{len({r['tenant_id'] for r in rows if r['calls']})} tenants, "
                                    f"{len({r['agent_id'] for r in rows if r['calls']})} agents"),
    ]
    if by_provider and total:
        name, (cost, _) = max(by_provider.items(), key=lambda kv: (kv[1][0], kv[0]))
        cards.append(("Largest provider", html.escape(name), f"{cost / total * 100:.1f}% of the spend"))
    for scope in ("tenant", "agent"):
        used = [r["used_pct"] for r in budget_use.to_pylist() if r["scope"] == scope and r["used_pct"] is not None]
        if used:
            cards.append((f"{scope.capitalize()} budgets", f"{sum(u >= 80 for u in used)} of {len(used)}",
                          f"at 80% or more; {sum(u >= 100 for u in used)} at 100% or more"))
    if recommendations is not None:
        saving = float(sum(recommendations["monthly_saving_usd"].to_pylist()))
        cards.append(("Model recommendations", str(recommendations.num_rows),
                      f"projected monthly saving {charts.usd(saving)}"))
    body = "".join(f'<div class="card">{title}<b>{value}</b>{note}</div>' for title, value, note in cards)
    return f'<h2>Summary</h2><div class="cards" id="totals">{body}</div>'


def _recommendations_section(recommendations: pa.Table | None, top_n: int) -> str:
    if recommendations is None:
        return ""
    rows = sorted(recommendations.to_pylist(), key=lambda r: (-r["monthly_saving_usd"], r["tenant_id"],
                                                             r["agent_type"], r["queue"]))
    if not rows:
        return ('<section id="recommendations"><h2>Model recommendations</h2>'
                "<p>No cheaper model within the quality tolerance today.</p></section>")
    total = sum(r["monthly_saving_usd"] for r in rows)
    lines = "".join(
        f"<tr><td class=t>{html.escape(r['tenant_id'])}</td><td class=t>{html.escape(r['agent_type'])}</td>"
        f"<td class=t>{html.escape(r['queue'])}</td>"
        f"<td class=t>{html.escape(r['current_provider'])} / {html.escape(r['current_model'])}</td>"
        f"<td>{r['current_quality']:.3f}</td><td>{r['current_cost_per_success_usd']:.6f}</td>"
        f"<td class=t>{html.escape(r['recommended_provider'])} / {html.escape(r['recommended_model'])}</td>"
        f"<td>{r['recommended_quality']:.3f}</td><td>{r['recommended_cost_per_success_usd']:.6f}</td>"
        f"<td>{r['successful_tasks']}</td><td>{r['monthly_saving_usd']:.2f}</td></tr>"
        for r in rows[:top_n])
    return f"""<section id="recommendations"><h2>Model recommendations</h2>
<p>{len(rows)} tenant/agent type/queue group(s) have a cheaper model of about the same quality; projected
monthly saving {charts.usd(total)} (the day's successful tasks × 30 × the difference in cost per success).
Top {min(top_n, len(rows))} by saving:</p>
<table><tr><th class=t>tenant</th><th class=t>agent type</th><th class=t>queue</th><th class=t>current model</th>
<th>quality</th><th>USD per success</th><th class=t>recommended model</th><th>quality</th><th>USD per success</th>
<th>successful tasks</th><th>monthly saving USD</th></tr>{lines}</table></section>"""


def _tables(rows: list[dict], budget_use: pa.Table, by_agent: dict[str, list[float]], top_n: int) -> str:
    top = sorted(rows, key=lambda r: (-r["cost_usd"], -r["previous_cost_usd"], *(r[k] for k in KEYS)))[:top_n]
    cost_lines = "".join(
        f"<tr><td class=t>{html.escape(r['tenant_id'])}</td><td class=t>{html.escape(r['agent_id'])}</td>"
        f"<td class=t>{html.escape(r['provider'])}</td><td class=t>{html.escape(r['model'])}</td><td>{r['calls']}</td>"
        f"<td>{r['cost_usd']:.6f}</td><td>{r['previous_cost_usd']:.6f}</td>"
        f"<td>{_percent(r['change_pct'])}</td></tr>"
        for r in top)
    agents = sorted(by_agent.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top_n]
    agent_lines = "".join(
        f"<tr><td class=t>{html.escape(a)}</td><td>{c[0]:.6f}</td><td>{c[1]:.6f}</td>"
        f"<td>{_percent((c[0] - c[1]) / c[1] * 100 if c[1] else None)}</td></tr>"
        for a, c in agents)
    budget = sorted(budget_use.to_pylist(), key=lambda r: (r["used_pct"] is None, -(r["used_pct"] or 0.0),
                                                           -r["cost_usd"], r["scope"], r["subject"]))[:top_n]
    budget_lines = "".join(
        f"<tr><td class=t>{r['scope']}</td><td class=t>{html.escape(r['subject'])}</td><td>{r['cost_usd']:.6f}</td>"
        f"<td>{'' if r['budget_usd'] is None else format(r['budget_usd'], '.2f')}</td>"
        f"<td>{'n/a' if r['used_pct'] is None else format(r['used_pct'], '.1f') + '%'}</td></tr>"
        for r in budget)
    return f"""<h2>Top {min(top_n, len(rows))} of {len(rows)}: cost per tenant, agent, provider and model</h2>
<p>The full table is the lake's Delta table <code>{COST_TABLE}</code>.</p>
<table><tr><th class=t>tenant</th><th class=t>agent</th><th class=t>provider</th><th class=t>model</th><th>calls</th>
<th>cost USD</th><th>day before USD</th><th>change</th></tr>{cost_lines}</table>
<h2>Top {len(agents)} agents by cost</h2>
<table><tr><th class=t>agent</th><th>cost USD</th><th>day before USD</th><th>change</th></tr>{agent_lines}</table>
<h2>Budget use, top {len(budget)}</h2>
<table><tr><th class=t>scope</th><th class=t>subject</th><th>cost USD</th><th>daily budget USD</th><th>used</th></tr>
{budget_lines}</table>"""


def _budget_color(used_pct: float) -> str:
    return charts.ALERT if used_pct >= 100 else charts.WARN if used_pct >= 80 else charts.TODAY


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"
