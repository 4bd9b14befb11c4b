"""``ezstream dashboard`` in a browser: headless Chromium opens the page while simulated traffic
flows through a worker (lake, ClickHouse and alerts roles), and reads the spend, budget, alert and
lag panels, whose figures must be those that ``ezstream sql`` (``query``) and the broker give on
the same data. The screenshot is kept (the folder is printed): ``$EZ_TEST_ARTIFACTS`` or
``tests/artifacts``.

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver`` (``make airflow-install``
installs them; ``make test`` runs it); Selenium is in the test extra.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from infra.local.dashboard import Dashboard
from infra.local.net import free_port
from streams.operator_status import dlq_sizes, lag
from streams.query_server import query
from streams.simulate import run_simulation
from tests.conftest import wait_for
from tests.integration.pipeline import REPO

ARTIFACTS = Path(os.environ.get("EZ_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")

BUDGETS = """
[tenant]
daily_usd = 10.0
[agent]
daily_usd = 2.0
"""

#: Every panel's metrics (label -> text) and tables (header, rows of cell texts), read at once.
READ_PANELS = """
const out = {};
for (const panel of document.querySelectorAll('[class*="st-key-panel-"]')) {
  const key = [...panel.classList].find(c => c.startsWith('st-key-panel-')).slice('st-key-panel-'.length);
  const metrics = {};
  for (const m of panel.querySelectorAll('[data-testid="stMetric"]')) {
    metrics[m.querySelector('[data-testid="stMetricLabel"]').innerText.trim()] =
      m.querySelector('[data-testid="stMetricValue"]').innerText.trim();
  }
  const tables = [...panel.querySelectorAll('table')].map(t => ({
    head: [...t.querySelectorAll('thead th')].map(c => c.innerText.trim()),
    rows: [...t.querySelectorAll('tbody tr')].map(r => [...r.querySelectorAll('th, td')].map(c => c.innerText.trim())),
  }));
  out[key] = {metrics, tables, charts: panel.querySelectorAll('[data-testid="stVegaLiteChart"]').length};
}
return out;
"""


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail("Debian's chromium and chromium-driver are missing: run `make airflow-install`")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,4200"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def number(text: str) -> float:
    """A figure as the page prints it: ``$1,234.56``, ``12.5%``, ``1,024``."""
    return float(text.replace("$", "").replace(",", "").replace("%", ""))


def table_rows(panel: dict) -> list[dict[str, str]]:
    return [dict(zip(t["head"], row)) for t in panel["tables"] for row in t["rows"]]


@pytest.fixture
def traffic_settings(make_pipe, tmp_path):
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(BUDGETS)
    return make_pipe(budgets_file=budgets, dashboard_port=free_port(), dashboard_refresh_seconds=1.0,
                     lake_flush_rows=5_000, clickhouse_flush_rows=2_000)


def test_dashboard_shows_what_clickhouse_and_the_broker_hold(traffic_settings, workers, capsys):
    worker = workers(traffic_settings, "lake,clickhouse,alerts")
    # The dashboard of the worker's EZ_HOME: there it finds the worker's query endpoint.
    settings = traffic_settings.model_copy(update={"home": worker.home})
    db = settings.clickhouse_database
    dashboard = Dashboard(settings)
    reports = []
    traffic = threading.Thread(target=lambda: reports.append(
        run_simulation(settings, rate=300, duration_s=30, seed=61, progress=False)))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    with capsys.disabled():
        print(f"\nthe dashboard's screenshot: {screenshot}")
    driver = None
    try:
        assert dashboard.up() == "started"
        assert dashboard.url == f"http://127.0.0.1:{settings.dashboard_port}"
        traffic.start()
        driver = browser()
        driver.get(dashboard.url)
        panels = lambda: driver.execute_script(READ_PANELS)  # noqa: E731

        def spending() -> bool:
            seen = panels().get("spend", {})
            spend = seen.get("metrics", {}).get("Spend today")
            return bool(spend and number(spend) > 0 and seen["charts"])

        # While the traffic flows, the page shows it: spend, and its chart.
        wait_for(spending, 90, "the dashboard to show today's spend and its chart while the traffic flows", 0.5)
        assert traffic.is_alive(), "the traffic ended before the page showed it: send more"
        traffic.join(timeout=120)
        assert reports and reports[0].ok, reports and reports[0].error
        sent = sum(c.delivered for topic, c in reports[0].topics.items() if topic.endswith("agent.llm_calls"))

        def one(sql: str):
            return query(settings, sql)[1][0][0]

        wait_for(lambda: one(f"SELECT count() FROM {db}.llm_calls") == sent, 120, "ClickHouse to hold every call")

        def shows(read, expected, what: str, agree=lambda page, query: page == query):
            """Wait until the page's reading (``read`` of the panels) agrees with ``expected()``, both
            taken afresh each time: each panel shows its last refresh and is redrawn element by
            element, so a figure or table read once may be one from before the last rows arrived."""
            last = {}

            def same() -> bool:
                last["page"], last["expected"] = read(panels()), expected()
                return last["page"] is not None and agree(last["page"], last["expected"])

            try:
                wait_for(same, 60, what, 0.5)
            except AssertionError:
                raise AssertionError(f"{what}: the page shows {last.get('page')}, "
                                     f"expected {last.get('expected')}") from None
            return last["expected"]

        def within(tolerance: float):
            return lambda page, query: abs(page - query) <= tolerance

        def table_column(panel: str, column: str):
            def read(seen: dict) -> set[str] | None:
                return {row.get(column) for row in table_rows(seen.get(panel, {"tables": []}))} or None
            return read

        def metric(panel: str, label: str):
            def read(seen: dict) -> float | None:
                text = seen.get(panel, {}).get("metrics", {}).get(label)
                return None if text is None else number(text)
            return read

        today = "event_time >= toStartOfDay(now64(3, 'UTC'))"
        spend = shows(metric("spend", "Spend today"),
                      lambda: round(float(one(f"SELECT sum(cost_usd) FROM {db}.llm_calls WHERE {today}")), 2),
                      "today's spend", within(0.011))
        assert spend > 0

        # Budgets: each tenant's spend today against its 10 USD, as ClickHouse sums it.
        def tenant_use(seen):
            rows = [r for r in table_rows(seen.get("budgets", {"tables": []})) if r.get("scope") == "tenant"]
            return {r["subject"]: (number(r["spend_usd"]), number(r["used_pct"])) for r in rows} or None

        def tenant_spend():
            return {tenant: (round(float(cost), 2), round(float(cost) / 10.0 * 100, 1)) for tenant, cost in query(
                settings, f"SELECT tenant_id, sum(cost_usd) FROM {db}.llm_calls WHERE {today} GROUP BY tenant_id")[1]}

        def same_use(page, expected) -> bool:
            return page.keys() == expected.keys() and all(
                abs(page[t][0] - expected[t][0]) <= 0.011 and abs(page[t][1] - expected[t][1]) <= 0.06
                for t in expected)

        shows(tenant_use, tenant_spend, "every tenant's spend and budget use today", same_use)

        # Alerts: those whose latest event is firing (budget alerts at 80, 90 and 100 % fired).
        active = shows(metric("alerts", "Active alerts"), lambda: one(f"""
            SELECT countIf(state = 'firing') FROM (
                SELECT alert_id, argMax(state, (event_time, state = 'resolved')) AS state
                FROM {db}.alerts GROUP BY alert_id)"""), "the active alerts")
        assert active > 0
        shows(table_column("alerts", "kind"), lambda: "budget", "a budget alert in the alerts table",
              lambda kinds, kind: kind in kinds)

        # Lag and dead letters, as the broker has them.
        shows(metric("lag", "Consumer lag"), lambda: sum(row["lag"] for row in lag(settings)), "the consumer lag")
        shows(metric("lag", "Dead letters"), lambda: sum(dlq_sizes(settings).values()), "the dead letters")
        shows(table_column("lag", "topic"), lambda: f"{settings.topic_prefix}agent.llm_calls",
              "the calls' topic in the lag table", lambda topics, topic: topic in topics)

        # The whole page in one picture: the window as tall as the page's scrolling content.
        height = driver.execute_script(
            "return Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
        driver.set_window_size(1600, min(height + 200, 16_000))
        wait_for(lambda: "recommendations" in panels(), 30, "the page to render again at its full height", 0.5)
        driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000
    finally:
        if driver is not None:
            if not screenshot.exists():
                driver.save_screenshot(str(screenshot))  # what the page showed when the test failed
            driver.quit()
        dashboard.down()
        traffic.join(timeout=120)
    assert not dashboard.healthy()
