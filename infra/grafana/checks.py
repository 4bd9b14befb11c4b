"""Checks of the dashboards against what they query and against Grafana's dashboard model.

* :func:`metric_names` reads the metric names out of a PromQL expression, to compare with
  :func:`exported_names` (what a worker's ``/metrics`` serves: prometheus_client adds ``_total`` to
  counters and ``_bucket``/``_sum``/``_count`` to histograms).
* :func:`concrete_sql` turns a panel's SQL into plain ClickHouse SQL (the plugin's macros and the
  template variables replaced by values), and :func:`refused_queries` runs such queries on a scratch
  embedded engine with the migrations applied: ClickHouse itself says whether every table, column
  and aggregate state a panel names exists and has the type the panel reads it as.
* :func:`model_differences` loads a dashboard's JSON into grafana-foundation-sdk's dashboard model
  (panels, their options and field configs, Prometheus and ClickHouse targets, variables) and
  writes it back: every key that the model does not know, or a value it reads otherwise, shows as a
  difference.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from infra.grafana import CLICKHOUSE_TYPE, PROMETHEUS_TYPE

#: The range the panels' time macros are given: one hour of 2026.
FROM_S, TO_S = 1_780_000_000, 1_780_003_600
INTERVAL_S = 60
#: The value every template variable is given.
VARIABLE_VALUE = "x"

#: PromQL's words that are not metric names (aggregations and functions are told by their ``(``).
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "atan2", "inf", "nan"}
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
#: A template variable (Grafana's own start with ``__``: macros, handled apart).
_VARIABLE = re.compile(r"\$\{(?!__)(\w+)(?::(\w+))?\}|\$(?!__)(\w+)")

_CHILD = "import sys; from infra.grafana.checks import _child_main; sys.exit(_child_main())"
_CHILD_TIMEOUT_S = 300


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries' steps
    text = _LABEL_LISTS.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before in ".$":  # 1e3, 5m, $variable
            continue
        if text[match.end():].lstrip().startswith("(") or match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def exported_names(registry: Any) -> set[str]:
    """Every series name a prometheus_client ``registry`` exports (labelled metrics included, whether
    or not they have a child yet)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
                "stateset": ("",), "enum": ("",), "unknown": ("",)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def panels(board: dict) -> Iterator[tuple[str, dict]]:
    """(JSON path, panel) of every panel of a dashboard, those inside rows after their row."""
    for index, panel in enumerate(board.get("panels", [])):
        yield f".panels[{index}]", panel
        for inner, child in enumerate(panel.get("panels", [])):
            yield f".panels[{index}].panels[{inner}]", child


def targets(board: dict) -> Iterator[tuple[str, str, dict]]:
    """(where, data source type, query) of every panel target and query variable of a dashboard."""
    for _, panel in panels(board):
        for target in panel.get("targets", []):
            source = (target.get("datasource") or panel.get("datasource") or {}).get("type", "")
            yield f"{board['uid']}: panel {panel.get('title')!r} {target.get('refId')}", source, target
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            source = variable.get("datasource", {}).get("type", "")
            query = variable["query"]
            query = {"rawSql": query} if source == CLICKHOUSE_TYPE else {"expr": query}
            yield f"{board['uid']}: variable {variable['name']}", source, query


def promql_of(board: dict) -> dict[str, str]:
    """where -> PromQL of every Prometheus target of a dashboard."""
    return {where: query["expr"] for where, source, query in targets(board) if source == PROMETHEUS_TYPE}


def sql_of(board: dict) -> dict[str, str]:
    """where -> SQL, as written, of every ClickHouse target and variable of a dashboard."""
    return {where: query["rawSql"] for where, source, query in targets(board) if source == CLICKHOUSE_TYPE}


def concrete_sql(sql: str) -> str:
    """``sql`` with the ClickHouse plugin's macros and the template variables replaced, as Grafana
    would for a range of :data:`FROM_S`..:data:`TO_S` and every variable set to one value.

    ``$__conditionalAll(condition, $var)`` becomes its condition, so that the columns it names are
    checked too. Any ``$`` left over is an unknown macro.

    :raises ValueError: a macro is unknown or its parentheses do not close.
    """
    sql = _replace_calls(sql, "$__conditionalAll", lambda args: _split_last(args)[0])
    sql = _replace_calls(sql, "$__timeFilter", lambda column: (
        f"{column} >= toDateTime({FROM_S}) AND {column} <= toDateTime({TO_S})"))
    sql = _replace_calls(sql, "$__timeInterval", lambda column: (
        f"toStartOfInterval(toDateTime({column}), INTERVAL {INTERVAL_S} second)"))
    for macro, value in (("$__fromTime", f"toDateTime({FROM_S})"), ("$__toTime", f"toDateTime({TO_S})"),
                         ("$__interval_s", str(INTERVAL_S))):
        sql = re.sub(re.escape(macro) + r"\b", value, sql)
    sql = _VARIABLE.sub(lambda m: _variable(m.group(1) or m.group(3), m.group(2)), sql)
    if "$" in sql:
        raise ValueError(f"unknown macro in: {sql}")
    return sql


def refused_queries(queries: dict[str, str]) -> dict[str, str]:
    """where -> ClickHouse's error, for each of ``queries`` (plain SQL, see :func:`concrete_sql`)
    that a scratch embedded engine with the migrations applied refuses; empty when it runs them all.

    It runs in a Python process of its own: chDB opens one engine folder per process.

    :raises RuntimeError: the engine could not be set up (the message ends with its error).
    """
    done = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(queries), capture_output=True,
                          text=True, timeout=_CHILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"running the dashboards' queries on a scratch engine failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_differences(board: dict) -> list[str]:
    """Where the dashboard's JSON differs from itself read into grafana-foundation-sdk's dashboard
    model and written back (a key the model does not have, or a value it reads otherwise)."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    import infra.grafana.panels  # noqa: F401  (registers the ClickHouse query model)

    register_default_plugins()
    loaded = json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder))
    return list(_differences(board, loaded, board.get("uid", "dashboard")))


def _differences(expected: Any, actual: Any, path: str) -> Iterator[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                yield f"{path}.{key}: not in the model"
            elif key not in expected:
                continue  # a default the model adds
            else:
                yield from _differences(expected[key], actual[key], f"{path}.{key}")
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for index, (left, right) in enumerate(zip(expected, actual)):
            yield from _differences(left, right, f"{path}[{index}]")
    elif expected != actual or type(expected) is not type(actual):
        yield f"{path}: {expected!r} reads as {actual!r}"


def _variable(name: str, format_: str | None) -> str:
    if format_ not in (None, "singlequote", "sqlstring", "raw"):
        raise ValueError(f"variable format {format_!r} of ${name} is not one the dashboards use")
    return f"'{VARIABLE_VALUE}'" if format_ in ("singlequote", "sqlstring") else VARIABLE_VALUE


def _replace_calls(sql: str, macro: str, replace) -> str:
    """``sql`` with every ``macro(args)`` replaced by ``replace(args)`` (parentheses may nest)."""
    while (start := sql.find(macro + "(")) != -1:
        depth, end = 0, start + len(macro)
        for end in range(start + len(macro), len(sql)):
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            if depth == 0:
                break
        if depth:
            raise ValueError(f"{macro}( does not close in: {sql}")
        sql = sql[:start] + replace(sql[start + len(macro) + 1:end].strip()) + sql[end + 1:]
    return sql


def _split_last(args: str) -> tuple[str, str]:
    """The arguments of a two-argument macro, split at its last top-level comma."""
    depth = 0
    for index in range(len(args) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(args[index], 0)
        if args[index] == "," and depth == 0:
            return args[:index].strip(), args[index + 1:].strip()
    raise ValueError(f"expected two arguments: {args}")


def _child_main() -> int:
    """:func:`refused_queries` in its own process: the queries as JSON on stdin, the errors as JSON on
    the last line of stdout."""
    from connectors.clickhouse import get_client
    from connectors.clickhouse.migrations import apply_migrations
    from connectors.settings import load_settings

    queries = json.load(sys.stdin)
    refused = {}
    with tempfile.TemporaryDirectory(prefix="ezstream-grafana-check-", ignore_cleanup_errors=True) as folder:
        # The data source's defaultDatabase is the connection's database: unqualified names resolve
        # in it, so the tables go to the engine's default database here.
        settings = load_settings(clickhouse_dsn=f"chdb://{folder}", clickhouse_database="default",
                                 clickhouse_cluster=None)
        client = get_client(settings)
        try:
            apply_migrations(client, settings)
            for where, sql in queries.items():
                try:
                    client.query(sql)
                except Exception as exc:  # noqa: BLE001 - every refusal is reported, whatever its class
                    refused[where] = " ".join(str(exc).split())[:1500]
        finally:
            client.close()
    print(json.dumps(refused))
    return 0
