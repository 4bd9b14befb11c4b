"""The daily cost report's HTML file: summary and inline SVG charts first, the day's model
recommendations, then the top-N tables; one self-contained file (no script, nothing fetched).

The report itself runs end to end on a lake folder of the test's own (no ClickHouse involved).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from xml.etree import ElementTree

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from connectors.batch.cost_report import _budget_rows, _cost_rows, _html, daily_cost_report
from connectors.batch.recommend import SCHEMA, _replace_lake_day
from connectors.settings import load_settings
from streams.intelligence.alerts import Budgets

DAY = date(2026, 11, 20)
COLUMNS = ("tenant_id", "agent_id", "provider", "model")


def calls(day: date, spend: dict[tuple[str, str, str, str], float]) -> pa.Table:
    """One LLM call per key of ``spend`` at noon of ``day``, costing its value."""
    keys = list(spend)
    at = datetime.combine(day, time(12), tzinfo=timezone.utc)
    return pa.table({
        **{c: pa.array([k[i] for k in keys], pa.string()) for i, c in enumerate(COLUMNS)},
        "cost_usd": pa.array([spend[k] for k in keys], pa.float64()),
        "input_tokens": pa.array([100] * len(keys), pa.int32()),
        "output_tokens": pa.array([10] * len(keys), pa.int32()),
        "event_time": pa.array([at] * len(keys), pa.timestamp("us", "UTC")),
        "event_date": pa.array([day] * len(keys), pa.date32()),
    })


def spend(scale: float) -> dict[tuple[str, str, str, str], float]:
    """30 agents of 3 tenants; agent i spends (i + 1) * scale on its model."""
    models = [("anthropic", "claude-3-opus"), ("openai", "gpt-4"), ("groq", "mixtral-8x7b")]
    return {(f"tenant-{i % 3}", f"agent-{i:02d}", *models[i % 3]): (i + 1) * scale for i in range(30)}


def recommendation(saving: float) -> dict:
    return {"day": DAY, "tenant_id": "tenant-1", "agent_type": "research", "queue": "normal",
            "current_provider": "anthropic", "current_model": "claude-3-sonnet", "current_quality": 0.8,
            "current_cost_per_success_usd": 0.024, "recommended_provider": "anthropic",
            "recommended_model": "claude-3-haiku", "recommended_quality": 0.8,
            "recommended_cost_per_success_usd": 0.0021, "monthly_saving_usd": saving, "successful_tasks": 25,
            "computed_at": datetime(2026, 11, 21, 0, 15, tzinfo=timezone.utc)}


def page(recommendations: pa.Table | None = None, top_n: int = 5, extra: dict | None = None) -> str:
    today, before = calls(DAY, {**spend(1.0), **(extra or {})}), calls(DAY - timedelta(days=1), spend(0.5))
    budgets = Budgets(tenant_daily_usd=150.0, agent_daily_usd=20.0)
    return _html(DAY, _cost_rows(DAY, today, before), _budget_rows(DAY, today, budgets), 465.0, 232.5,
                 today.num_rows, recommendations, top_n)


def test_summary_and_charts_come_first_then_the_top_n_tables():
    html = page(top_n=5)
    summary, charts, tables = (html.index(f'<section id="{s}">') for s in ("summary", "charts", "tables"))
    assert summary < charts < tables
    assert "Total spend" in html[summary:charts] and "$465.000000" in html and "$232.500000" in html
    figures = re.findall(r"<svg\b.*?</svg>", html[charts:tables], re.S)
    assert [re.search(r'id="([^"]+)"', f)[1] for f in figures] == [
        "chart-total", "chart-providers", "chart-models", "chart-budget", "chart-agents", "chart-changes"]
    for figure in figures:  # each chart is well-formed SVG
        ElementTree.fromstring(figure)
    # Top 5 agents in the chart and the tables, the largest first.
    agents = re.findall(r"<title>(agent-\d\d)</title>", figures[4])
    assert agents == ["agent-29", "agent-28", "agent-27", "agent-26", "agent-25"]
    top_rows = re.search(r"cost per tenant, agent, provider and model</h2>.*?</table>", html, re.S)[0]
    assert top_rows.count("<tr>") == 1 + 5 and "Top 5 of 30" in html and "reports/daily_cost" in html
    # Tenants at 80% of their budget or more are counted (they spend 145, 155 and 165 of 150).
    assert "Tenant budgets<b>3 of 3</b>at 80% or more; 2 at 100% or more" in html


def test_the_file_is_self_contained():
    html = page()
    assert "<script" not in html and "<link" not in html and "<img" not in html
    assert not re.search(r"""(?:src|href)=|url\(|@import""", html)
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}


def test_labels_are_escaped():
    html = page(extra={("tenant-0", "<script>alert(1)</script>", "openai", "gpt-4"): 1000.0})
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_day_s_recommendations_are_shown_when_they_were_computed():
    assert 'id="recommendations"' not in page(None)
    empty = page(pa.Table.from_pylist([], SCHEMA))
    assert "No cheaper model" in empty
    shown = page(pa.Table.from_pylist([recommendation(16.43)], SCHEMA))
    section = re.search(r'<section id="recommendations">.*?</section>', shown, re.S)[0]
    assert "claude-3-sonnet" in section and "claude-3-haiku" in section and "16.43" in section
    assert shown.index('id="charts"') < shown.index('id="recommendations"') < shown.index('id="tables"')
    assert "Model recommendations<b>1</b>" in shown


def test_the_report_reads_the_lake_and_the_day_s_recommendations(tmp_path):
    settings = load_settings(home=tmp_path / "home", lake_uri=f"file://{tmp_path / 'lake'}")
    for day, scale in ((DAY - timedelta(days=1), 0.5), (DAY, 1.0)):
        write_deltalake(f"{tmp_path}/lake/llm_calls", calls(day, spend(scale)), mode="append",
                        partition_by=["event_date"])
    at = datetime(2026, 11, 21, 0, 15, tzinfo=timezone.utc)
    _replace_lake_day(settings, pa.Table.from_pylist([recommendation(16.43)], SCHEMA), DAY, at)

    report = daily_cost_report(settings, DAY, top_n=3)

    assert report.total_usd == pytest.approx(465.0) and report.previous_total_usd == pytest.approx(232.5)
    html = (tmp_path / "lake" / "reports" / "html" / f"daily-cost-{DAY}.html").read_text()
    assert "claude-3-haiku" in html and "Top 3 of 30" in html
    # The day before has no recommendations computed: no section.
    daily_cost_report(settings, DAY - timedelta(days=1), top_n=3)
    before = (tmp_path / "lake" / "reports" / "html" / f"daily-cost-{DAY - timedelta(days=1)}.html").read_text()
    assert 'id="recommendations"' not in before
    with pytest.raises(ValueError, match="top_n"):
        daily_cost_report(settings, DAY, top_n=0)
