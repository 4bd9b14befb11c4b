"""What the dashboards are made of, over grafana-foundation-sdk's builders: ClickHouse SQL targets
(the SDK has no builder for that plugin, so :class:`ClickHouseQuery` is its query model, registered
with the SDK's runtime so that dashboards read back from JSON decode it too), Prometheus targets,
the panels the dashboards repeat and their template variables.
"""

from __future__ import annotations

import textwrap
import typing

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as parts
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from infra.grafana import CLICKHOUSE_TYPE, CLICKHOUSE_UID, PROMETHEUS_TYPE, PROMETHEUS_UID

CLICKHOUSE = common.DataSourceRef(type_val=CLICKHOUSE_TYPE, uid=CLICKHOUSE_UID)
PROMETHEUS = common.DataSourceRef(type_val=PROMETHEUS_TYPE, uid=PROMETHEUS_UID)

#: The plugin's query formats (its ``Format`` enum): a time series splits a string column into
#: one series per value; a table shows rows as they come.
TIME_SERIES_FORMAT = 0
TABLE_FORMAT = 1


class ClickHouseQuery(cogvariants.Dataquery):
    """A raw SQL query of the grafana-clickhouse-datasource plugin (its SQL editor's model)."""

    #: The keys of the plugin's query JSON that this model holds; any other is refused on reading.
    KEYS = frozenset({"refId", "datasource", "editorType", "queryType", "format", "rawSql"})

    def __init__(self, raw_sql: str, ref_id: str = "A", time_series: bool = False) -> None:
        self.raw_sql = raw_sql
        self.ref_id = ref_id
        self.time_series = time_series

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": CLICKHOUSE,
            "editorType": "sql",
            "queryType": "timeseries" if self.time_series else "table",
            "format": TIME_SERIES_FORMAT if self.time_series else TABLE_FORMAT,
            "rawSql": self.raw_sql,
        }

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> typing.Self:
        """The query of ``data``.

        :raises ValueError: ``data`` has keys the plugin's SQL query does not, or lacks its SQL.
        """
        unknown = set(data) - cls.KEYS
        if unknown or "rawSql" not in data:
            raise ValueError(f"not a ClickHouse SQL query: unknown keys {sorted(unknown)}" if unknown
                             else "a ClickHouse query without rawSql")
        return cls(data["rawSql"], data.get("refId", "A"), data.get("queryType") == "timeseries")


cogruntime.register_dataquery_variant(
    cogruntime.DataqueryConfig(identifier=CLICKHOUSE_TYPE, from_json_hook=ClickHouseQuery.from_json))


class SQL(cogbuilder.Builder[ClickHouseQuery]):
    """A ClickHouse target: ``sql`` dedented, as a time series (first column the time) or a table."""

    def __init__(self, sql: str, *, time_series: bool = False, ref_id: str = "A") -> None:
        self._query = ClickHouseQuery(textwrap.dedent(sql).strip(), ref_id, time_series)

    def build(self) -> ClickHouseQuery:
        return self._query


def promql(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    """A Prometheus range query with the series named by ``legend`` (``{{label}}`` templates)."""
    return (prometheus.Dataquery().expr(" ".join(expr.split())).legend_format(legend).range()
            .ref_id(ref_id).datasource(PROMETHEUS))


def _source(targets: typing.Sequence[cogbuilder.Builder[cogvariants.Dataquery]]) -> common.DataSourceRef:
    uids = {CLICKHOUSE_UID if isinstance(target, SQL) else PROMETHEUS_UID for target in targets}
    if len(uids) != 1:
        raise ValueError("a panel queries one data source")
    return CLICKHOUSE if uids == {CLICKHOUSE_UID} else PROMETHEUS


def graph(title: str, *targets: cogbuilder.Builder[cogvariants.Dataquery], unit: str = "short",
          description: str = "", width: int = 12, height: int = 8, stacked: bool = False,
          bars: bool = False) -> timeseries.Panel:
    """A time series panel."""
    panel = (timeseries.Panel().title(title).datasource(_source(targets))
             .targets(list(targets)).unit(unit).span(width).height(height).fill_opacity(10)
             .legend(parts.VizLegendOptions().show_legend(True)
                     .display_mode(common.LegendDisplayMode.TABLE).placement(common.LegendPlacement.BOTTOM)
                     .calcs(["mean", "max", "lastNotNull"])))
    panel = _described(panel, description)
    if stacked:
        panel = panel.stacking(parts.StackingConfig().mode(common.StackingMode.NORMAL))
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    return panel


def number(title: str, target: cogbuilder.Builder[cogvariants.Dataquery], unit: str = "short",
           description: str = "", width: int = 6, height: int = 4,
           thresholds: typing.Sequence[tuple[float | None, str]] = ((None, "green"),)) -> stat.Panel:
    """A single value (the last of the query's first numeric field)."""
    panel = (stat.Panel().title(title).datasource(_source([target]))
             .with_target(target).unit(unit).span(width).height(height)
             .thresholds(_thresholds(thresholds))
             .reduce_options(parts.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .graph_mode(common.BigValueGraphMode.NONE).color_mode(common.BigValueColorMode.VALUE))
    return _described(panel, description)


def bars(title: str, target: cogbuilder.Builder[cogvariants.Dataquery], unit: str = "short",
         description: str = "", width: int = 12, height: int = 8, maximum: float | None = None,
         thresholds: typing.Sequence[tuple[float | None, str]] = ((None, "green"),)) -> bargauge.Panel:
    """One horizontal bar per row (or series) of the query."""
    panel = (bargauge.Panel().title(title).datasource(_source([target]))
             .with_target(target).unit(unit).span(width).height(height).min(0)
             .orientation(common.VizOrientation.HORIZONTAL).display_mode(common.BarGaugeDisplayMode.GRADIENT)
             .thresholds(_thresholds(thresholds))
             .reduce_options(parts.ReduceDataOptions().calcs(["lastNotNull"]).values(True)))
    panel = _described(panel, description)
    return panel if maximum is None else panel.max(maximum)


def rows(title: str, target: cogbuilder.Builder[cogvariants.Dataquery], description: str = "",
         width: int = 24, height: int = 8) -> table.Panel:
    """A table of the query's rows."""
    return _described(table.Panel().title(title).datasource(_source([target]))
                      .with_target(target).span(width).height(height), description)


def section(title: str) -> dashboard.Row:
    """A row heading the panels that follow it."""
    return dashboard.Row(title)


def sql_variable(name: str, label: str, sql: str) -> dashboard.QueryVariable:
    """A multi-value variable of the values ``sql`` returns, "All" by default; panels filter with
    ``$__conditionalAll(column IN (${name:singlequote}), $name)``, which drops the filter for All."""
    return (dashboard.QueryVariable(name).label(label).datasource(CLICKHOUSE)
            .query(" ".join(sql.split())).refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True)
            .current(model.VariableOption(selected=True, text="All", value="$__all")))


def choice_variable(name: str, label: str, values: typing.Sequence[str]) -> dashboard.CustomVariable:
    """A multi-value variable of fixed ``values``, "All" by default."""
    return (dashboard.CustomVariable(name).label(label).values(",".join(values)).multi(True)
            .include_all(True).current(model.VariableOption(selected=True, text="All", value="$__all")))


def new_dashboard(uid: str, title: str, description: str, tags: typing.Sequence[str],
                  refresh: str = "1m", since: str = "now-6h") -> dashboard.Dashboard:
    """A dashboard in UTC (the tables' time zone) with the project's tag."""
    return (dashboard.Dashboard(title).uid(uid).description(description).tags(["ezstream", *tags])
            .timezone("utc").time(since, "now").refresh(refresh).readonly()
            .tooltip(model.DashboardCursorSync.CROSSHAIR))


_Panel = typing.TypeVar("_Panel", timeseries.Panel, stat.Panel, bargauge.Panel, table.Panel)


def _described(panel: _Panel, description: str) -> _Panel:
    return panel.description(description) if description else panel


def _thresholds(steps: typing.Sequence[tuple[float | None, str]]) -> dashboard.ThresholdsConfig:
    return (dashboard.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=value, color=color) for value, color in steps]))
