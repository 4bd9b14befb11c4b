"""The Grafana dashboards (infra/grafana) query what exists and load in Grafana's dashboard model.

* Every metric a Prometheus panel selects is one the workers export (streams/metrics.py, with the
  suffixes prometheus_client gives counters and histograms).
* Every ClickHouse panel's SQL, its macros and variables replaced by values, runs on an embedded
  engine with the migrations applied: the tables, columns and aggregate states it names exist, with
  the types it reads them as.
* Every dashboard reads into grafana-foundation-sdk's dashboard model and back unchanged, its panel
  types are Grafana's, its data sources are the provisioned ones, and the files are what the
  generator (``python -m infra.grafana``) writes.
* Every dashboard satisfies Grafana's own published schema, the npm package @grafana/schema of the
  Grafana release that runs it, under ``tsc --strict`` (infra/grafana/schema.py): the dashboard
  model, and each panel's options and custom field config against its plugin's types. The packages
  are installed by ``ezstream fetch`` (``make test`` runs it); without them or node the test fails,
  saying so.

Each check is run once on a deliberately wrong input too, so that it is seen to fail.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import typing
from pathlib import Path

import pytest
import yaml

from connectors.kafka.events import Alert
from connectors.settings import load_settings
from infra.grafana import (CLICKHOUSE_TYPE, CLICKHOUSE_UID, DASHBOARDS_DIR, HERE, PROMETHEUS_TYPE, PROMETHEUS_UID,
                           PROVISIONING_DIR)
from infra.grafana.checks import (concrete_sql, exported_names, metric_names, model_differences, panels,
                                  promql_of, refused_queries, sql_of, targets)
from infra.grafana.dashboards import DASHBOARDS, render
from infra.grafana.schema import PACKAGE_DIR, SCHEMA_PACKAGE, installed, package_folder, pinned_versions, schema_errors
from streams import metrics

INFRA = HERE.parent

#: Grafana's own panel plugins the dashboards may use.
PANEL_TYPES = {"timeseries", "stat", "table", "bargauge", "row"}


def _boards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def _panels(board: dict) -> list[dict]:
    return [panel for _, panel in panels(board)]


def test_the_files_are_what_the_generator_writes():
    texts = render()
    assert {p.name for p in DASHBOARDS_DIR.glob("*.json")} == set(texts), "run python -m infra.grafana"
    for name, text in texts.items():
        assert (DASHBOARDS_DIR / name).read_text() == text, f"{name}: run python -m infra.grafana"
    assert set(_boards()) == set(DASHBOARDS) == {
        "ezstream-fleet-cost", "ezstream-llm-performance", "ezstream-tasks", "ezstream-pipeline-health",
        "ezstream-alerts"}


def test_prometheus_panels_query_metrics_the_workers_export():
    exported = exported_names(metrics.REGISTRY)
    assert {"ezstream_events_in_total", "ezstream_flush_seconds_bucket", "ezstream_consumer_lag"} <= exported
    queried = set()
    for uid, board in _boards().items():
        for where, expr in promql_of(board).items():
            names = metric_names(expr)
            assert names, f"{where}: no metric in {expr}"
            assert names <= exported, f"{where}: {sorted(names - exported)} not exported by the workers ({expr})"
            queried |= names
    assert queried, "no Prometheus panel"
    # The pipeline-health dashboard covers every metric family the workers export.
    families = {family.name for family in metrics.REGISTRY.collect()}
    assert {name for name in families if not any(q.startswith(name) for q in queried)} == set()


def test_the_metric_check_sees_a_wrong_name():
    expr = "sum by (role) (rate(ezstream_event_in_total{topic=~\"agent.*\"}[$__rate_interval])) > 1e3"
    assert metric_names(expr) == {"ezstream_event_in_total"}
    assert not metric_names(expr) <= exported_names(metrics.REGISTRY)
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(a_bucket[5m]))) / on(x) group_left b") == {
        "a_bucket", "b"}


def test_clickhouse_panels_run_on_the_migrated_schema():
    queries = {where: concrete_sql(sql) for board in _boards().values() for where, sql in sql_of(board).items()}
    assert len(queries) >= 30
    # Controls, run with them: a column that does not exist, and a state read with the wrong function.
    wrong_column = "control: a column that does not exist"
    wrong_state = "control: a sum state read with countMerge"
    queries[wrong_column] = concrete_sql("SELECT sumMerge(cost_usd) FROM llm_calls_1m WHERE $__timeFilter(minute)")
    queries[wrong_state] = concrete_sql("SELECT countMerge(cost_usd_sum) FROM llm_calls_1m")
    refused = refused_queries(queries)
    assert set(refused) == {wrong_column, wrong_state}, "\n".join(
        f"{where}: {error}" for where, error in refused.items() if not where.startswith("control"))
    assert "cost_usd" in refused[wrong_column]


def test_concrete_sql_replaces_every_macro_and_variable():
    sql = ("SELECT $__timeInterval(minute) AS time FROM t WHERE $__timeFilter(minute) AND "
           "$__conditionalAll(tenant_id IN (${tenant:singlequote}), $tenant) AND n = $__interval_s")
    assert concrete_sql(sql) == (
        "SELECT toStartOfInterval(toDateTime(minute), INTERVAL 60 second) AS time FROM t "
        "WHERE minute >= toDateTime(1780000000) AND minute <= toDateTime(1780003600) AND tenant_id IN ('x') "
        "AND n = 60")
    with pytest.raises(ValueError, match="unknown macro"):
        concrete_sql("SELECT 1 WHERE $__unknownMacro(a)")


def test_dashboards_load_in_grafanas_dashboard_model():
    for uid, board in _boards().items():
        assert model_differences(board) == [], uid
        assert board["uid"] == uid and len(uid) <= 40
        assert board["timezone"] == "utc", "the tables' times are UTC"
        panels = _panels(board)
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{uid}: panel ids repeat"
        for panel in panels:
            assert panel["type"] in PANEL_TYPES, (uid, panel["type"])
            position = panel["gridPos"]
            assert 0 <= position["x"] and position["x"] + position["w"] <= 24, (uid, panel.get("title"))
            assert panel["type"] == "row" or panel.get("targets"), f"{uid}: {panel.get('title')} queries nothing"


def test_the_model_check_sees_keys_grafana_does_not_have():
    board = copy.deepcopy(_boards()["ezstream-tasks"])
    panel = next(p for p in board["panels"] if p["type"] == "timeseries")
    panel["gridPosition"] = panel.pop("gridPos")
    panel["fieldConfig"]["defaults"]["unitt"] = "ms"
    differences = model_differences(board)
    assert any("gridPosition: not in the model" in d for d in differences), differences
    assert any("unitt: not in the model" in d for d in differences), differences
    panel["targets"][0]["sql"] = panel["targets"][0].pop("rawSql")
    with pytest.raises(ValueError, match="not a ClickHouse SQL query"):
        model_differences(board)


def _schema_packages() -> Path:
    """The installed @grafana/schema and TypeScript; the test fails, saying how to get them, if not."""
    cache_dir = load_settings().cache_dir
    if shutil.which("node") is None:
        pytest.fail("the Grafana schema check needs Node.js (node and npm, 20 or newer) on PATH; "
                    "then run `make fetch` (ezstream fetch)")
    folder = installed(cache_dir)
    if folder is None:
        pytest.fail(f"{SCHEMA_PACKAGE} and typescript are not installed in {package_folder(cache_dir)}: "
                    "run `make fetch` (ezstream fetch; make test runs it)")
    return folder


def test_dashboards_satisfy_grafanas_published_schema():
    assert schema_errors(_boards(), _schema_packages()) == []


def test_the_schema_check_names_unknown_fields_and_wrong_values():
    # One problem per object: the compiler reports either an object's unknown fields or its wrong values.
    board = copy.deepcopy(_boards()["ezstream-tasks"])
    board["schemaVersion"] = "41"
    board["time"]["until"] = "now"
    stats = [p for p in board["panels"] if p["type"] == "stat"]
    series = next(p for p in board["panels"] if p["type"] == "timeseries")
    stats[0]["options"]["colorMode"] = "rainbow"
    stats[0]["fieldConfig"]["defaults"]["custom"] = {"fillOpacity": 80}  # a stat panel has no custom config
    stats[1]["options"]["graphMod"] = "none"
    series["gridPosition"] = series.pop("gridPos")
    series["options"]["legend"]["showLegend"] = "yes"
    series["fieldConfig"]["defaults"]["custom"]["fillOpacty"] = 80
    errors = schema_errors({"ezstream-tasks": board}, _schema_packages())

    def at(panel: dict, path: str) -> str:
        return f"ezstream-tasks.panels[{board['panels'].index(panel)}].{path} (panel {panel['title']!r}): error "

    expected = [
        "ezstream-tasks.schemaVersion: error TS2322: Type 'string' is not assignable to type 'number'",
        "ezstream-tasks.time.until: error TS2353: Object literal may only specify known properties, and "
        "'\"until\"' does not exist",
        at(series, "gridPosition") + "TS2353: Object literal may only specify known properties, and "
        "'\"gridPosition\"' does not exist",
        at(stats[0], "options.colorMode") + "TS2322: Type '\"rainbow\"' is not assignable",
        at(stats[0], "fieldConfig.defaults.custom.fillOpacity") + "TS2322: Type 'number' is not assignable to "
        "type 'never'",
        at(stats[1], "options.graphMod") + "TS2353: Object literal may only specify known properties, and "
        "'\"graphMod\"' does not exist",
        at(series, "options.legend.showLegend") + "TS2322: Type 'string' is not assignable to type 'boolean",
        at(series, "fieldConfig.defaults.custom.fillOpacty") + "TS2353: Object literal may only specify known "
        "properties, and '\"fillOpacty\"' does not exist",
    ]
    text = "\n".join(errors)
    for start in expected:
        assert any(error.startswith(start) for error in errors), f"{start}\nnot in:\n{text}"
    assert len(errors) == len(expected), text


def test_the_schema_checked_is_the_grafana_that_runs():
    """@grafana/schema's version is Grafana's: the one pinned is that of the image compose and k8s run."""
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())["services"]["grafana"]["image"]
    (deployment,) = [doc for doc in yaml.safe_load_all((INFRA / "k8s" / "grafana.yaml").read_text())
                     if doc and doc["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    versions = pinned_versions()
    assert compose == container["image"] == f"grafana/grafana:{versions[SCHEMA_PACKAGE]}"
    # Exact versions, and the lock file npm ci installs from holds the same ones.
    lock = json.loads((PACKAGE_DIR / "package-lock.json").read_text())["packages"]
    for package, version in versions.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), (package, version)
        assert lock[f"node_modules/{package}"]["version"] == version, package
    assert lock[""]["dependencies"] == versions


def test_panels_query_the_provisioned_data_sources():
    provisioned = yaml.safe_load((PROVISIONING_DIR / "datasources" / "ezstream.yaml").read_text())
    sources = {source["uid"]: source["type"] for source in provisioned["datasources"]}
    assert sources == {CLICKHOUSE_UID: CLICKHOUSE_TYPE, PROMETHEUS_UID: PROMETHEUS_TYPE}
    for uid, board in _boards().items():
        for panel in _panels(board):
            if panel["type"] == "row":
                continue
            source = panel["datasource"]
            assert sources.get(source["uid"]) == source["type"], (uid, panel["title"], source)
            for target in panel["targets"]:
                assert target.get("datasource", source) == source, (uid, panel["title"])
        for variable in board["templating"].get("list", []):
            if variable["type"] == "query":
                assert sources.get(variable["datasource"]["uid"]) == variable["datasource"]["type"]


def test_provisioning_reads_the_dashboards_folder():
    providers = yaml.safe_load((PROVISIONING_DIR / "dashboards" / "ezstream.yaml").read_text())["providers"]
    (provider,) = providers
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards/ezstream"
    # The Kubernetes ConfigMaps are generated from the same files, every dashboard among them.
    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    generated = {gen["name"]: gen["files"] for gen in kustomization["configMapGenerator"]}
    assert sorted(generated["ezstream-grafana-dashboards"]) == sorted(
        f"dashboards/{p.name}" for p in DASHBOARDS_DIR.glob("*.json"))
    assert sorted(generated["ezstream-grafana-provisioning"]) == [
        "dashboards.yaml=provisioning/dashboards/ezstream.yaml",
        "datasources.yaml=provisioning/datasources/ezstream.yaml"]


def test_alerts_dashboard_offers_every_alert_kind_budget_forecast_included():
    board = _boards()["ezstream-alerts"]
    offered = {v["name"]: set(v["query"].split(",")) for v in board["templating"]["list"] if v["type"] == "custom"}
    hints = typing.get_type_hints(Alert)
    assert set(typing.get_args(hints["kind"])) <= offered["kind"], "a kind of the Alert schema is not offered"
    assert set(typing.get_args(hints["severity"])) <= offered["severity"]
    assert "budget_forecast" in offered["kind"]
    assert any("kind = 'budget_forecast'" in sql for sql in sql_of(board).values())
    assert any("kind = 'budget_forecast'" in sql for sql in sql_of(_boards()["ezstream-fleet-cost"]).values())


def test_rollups_are_read_with_merge_functions():
    """A rollup's state columns hold aggregate states: a plain sum() of one would not even run, but
    a -State or -If without -Merge could; every read of a *_sum / *_quantiles / *_avg column of the
    rollups goes through a -Merge function."""
    state = re.compile(r"(\w+)\(\s*(?:[\d.,\s]+\)\()?(\w+_(?:sum|quantiles|avg)|calls|errors|events)\b")
    reads = 0
    for board in _boards().values():
        for where, sql in sql_of(board).items():
            if "_1m" not in sql:
                continue
            for function, column in state.findall(sql):
                assert "Merge" in function, f"{where}: {function}({column})"
                reads += 1
    assert reads >= 50
    assert state.findall("SELECT sum(cost_usd_sum) FROM llm_calls_1m") == [("sum", "cost_usd_sum")]


def test_every_target_is_found():
    # targets() walks rows' panels and the query variables as well as top-level panels.
    board = {"uid": "b", "panels": [{"type": "row", "title": "r", "panels": [
        {"title": "p", "datasource": {"type": PROMETHEUS_TYPE}, "targets": [{"refId": "A", "expr": "up"}]}]}],
        "templating": {"list": [{"type": "query", "name": "v", "datasource": {"type": CLICKHOUSE_TYPE},
                                 "query": "SELECT 1"}]}}
    assert [(where, source) for where, source, _ in targets(board)] == [
        ("b: panel 'p' A", PROMETHEUS_TYPE), ("b: variable v", CLICKHOUSE_TYPE)]
