"""Alert rules as pure state machines: events and clock ticks in, :class:`Alert` events out.

Each rule watches one kind of condition. ``observe(event)`` feeds it a decoded event,
``tick(now_ms)`` the wall clock (for conditions that are the *absence* of events); both return
the alerts to produce on ``agent.alerts``. A condition fires once and stays silent while it keeps
holding (its ``last_seen`` moves on in the state), then emits exactly one ``resolved`` alert.

Ids are stable: ``alert_id`` is a uuid5 of kind, subject and the period the condition started
in, and ``event_id`` a uuid5 of ``alert_id`` and state, so a replay of the same events produces
the same alerts and consumers can deduplicate a redelivered one. A rule's state is a JSON-friendly
dict (``to_dict``/``from_dict``) for a changelog-backed table: a rule restored from it after a
restart neither forgets a firing condition nor fires it again.

Times are epoch milliseconds, UTC. Rules with windows run on event time, moved forward by ticks;
events older than a rule keeps state for are counted in its ``late_events`` and otherwise ignored
(the lake and ClickHouse keep them exactly).
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from connectors.clickhouse.task_queries import DEFAULT_SLA_SECONDS
from connectors.errors import ConfigError
from connectors.kafka.events import Alert, LlmCall, TaskEvent, Telemetry
from streams.intelligence._time import DAY_MS, epoch_ms, utc
from streams.intelligence.batch import Batch, combine, groups

Kind = Literal["budget", "budget_forecast", "error_rate", "rate_limit_storm", "silent_agent", "stuck_task"]
Severity = Literal["info", "warning", "critical"]
State = Literal["firing", "resolved"]

#: Namespace of the uuid5 alert and event ids; changing it changes every id.
ALERT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ezaigent-streams:alert")


def alert_id(kind: str, subject: str, period: str) -> str:
    """The stable id of a condition: the same kind, subject and period give the same id."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{kind}|{subject}|{period}"))


@dataclass(frozen=True)
class Origin:
    """Who raises the alerts that are about no single agent (a tenant, a provider, an API key).

    ``Alert.agent_id`` is the Kafka partition key, so such alerts carry the processor's identity.
    """

    #: ``agent_id`` of those alerts: the processor's id.
    agent_id: str = "ezstream-intelligence"
    #: ``agent_type`` of those alerts: the kind of processor.
    agent_type: str = "stream-processor"
    #: ``tenant_id`` of alerts about shared resources (providers, API keys).
    tenant_id: str = "platform"


@dataclass
class _Condition:
    """A firing condition: what its firing alert said, so that its resolve pairs with it."""

    alert_id: str
    kind: Kind
    severity: Severity
    subject: str
    agent_id: str
    agent_type: str
    tenant_id: str
    trace_id: str
    first_seen_ms: int
    last_seen_ms: int
    details: dict[str, str]

    def alert(
        self,
        state: State,
        *,
        at_ms: int,
        message: str,
        value: float,
        threshold: float,
        window: tuple[int, int] | None = None,
    ) -> Alert:
        """The alert for ``state`` observed at ``at_ms``."""
        self.last_seen_ms = max(self.last_seen_ms, at_ms)
        return Alert(
            event_id=str(uuid.uuid5(ALERT_NAMESPACE, f"{self.alert_id}|{state}")),
            event_time=utc(at_ms),
            agent_id=self.agent_id,
            agent_type=self.agent_type,
            tenant_id=self.tenant_id,
            trace_id=self.trace_id,
            alert_id=self.alert_id,
            kind=self.kind,
            severity=self.severity,
            state=state,
            subject=self.subject,
            message=message,
            value=value,
            threshold=threshold,
            window_start=None if window is None else utc(window[0]),
            window_end=None if window is None else utc(window[1]),
            first_seen=utc(self.first_seen_ms),
            last_seen=utc(self.last_seen_ms),
            details=dict(self.details),
        )


def _conditions_to_dict(conditions: Mapping[str, _Condition]) -> dict[str, Any]:
    # A shallow copy per condition (asdict's deep copy is ten times slower): checkpoints of a
    # busy day's state must not stall the alert path. details is the one mutable field.
    return {key: _condition_dict(condition) for key, condition in conditions.items()}


def _conditions_from_dict(data: Mapping[str, Any]) -> dict[str, _Condition]:
    return {key: _Condition(**value) for key, value in data.items()}


def changes(source: Mapping[str, Any], keys: set[str], encode: Callable[[Any], Any] = dict) -> dict[str, Any]:
    """What became of ``keys`` of ``source`` since the last delta: each key's value as
    ``to_dict`` writes it, None for a key no longer there; ``keys`` is emptied."""
    out = {key: (encode(source[key]) if key in source else None) for key in keys}
    keys.clear()
    return out


def merge_changes(target: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Apply :func:`changes` to ``target``, a map as ``to_dict`` wrote it."""
    for key, value in delta.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _condition_dict(condition: _Condition) -> dict[str, Any]:
    return {**vars(condition), "details": dict(condition.details)}


def _utc_text(ms: int) -> str:
    return utc(ms).strftime("%Y-%m-%d %H:%M:%SZ")


def _forgotten(condition: _Condition, since_ms: int, now_ms: int, forget_after_ms: int, message: str) -> Alert:
    """The resolve of a firing ``condition`` whose subject had no news since ``since_ms``, for
    ``forget_after_ms`` or more at ``now_ms`` (wall clock): its state is dropped with it."""
    return condition.alert("resolved", at_ms=now_ms, message=message, value=(now_ms - since_ms) / 1000,
                           threshold=forget_after_ms / 1000, window=(since_ms, now_ms))


def _duration_text(ms: float) -> str:
    seconds = round(ms / 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


#: How long the rules keep what an agent, a task or a firing condition with no news left behind:
#: the default of every ``forget_after_ms``. Past it the state goes (a firing alert resolves,
#: saying so), so the state, and each checkpoint of it, is bounded by what a week brings.
FORGET_AFTER_MS = 7 * DAY_MS


# --------------------------------------------------------------------------------------- budget

#: Share of a daily budget that raises an alert, with its severity (what operators asked for).
BUDGET_THRESHOLDS: tuple[tuple[int, Severity], ...] = (
    (80, "info"),
    (90, "warning"),
    (100, "critical"),
)

BudgetScope = Literal["tenant", "agent"]


@dataclass(frozen=True)
class Budgets:
    """Daily spending limits in USD per tenant and per agent; None means no limit.

    Loaded from TOML (:meth:`load`)::

        [tenant]
        daily_usd = 100.0            # every tenant without an override
        [tenant.overrides]
        "tenant-42" = 500.0

        [agent]
        daily_usd = 10.0
        [agent.overrides]
        "enterprise-03" = 40.0
    """

    #: Daily budget of a tenant without an override.
    tenant_daily_usd: float | None = None
    #: Daily budget of an agent without an override.
    agent_daily_usd: float | None = None
    #: Daily budgets by tenant id.
    tenant_overrides: Mapping[str, float] = field(default_factory=dict)
    #: Daily budgets by agent id.
    agent_overrides: Mapping[str, float] = field(default_factory=dict)

    def daily_usd(self, scope: BudgetScope, subject: str) -> float | None:
        """The daily budget of a tenant or agent, None when it has none."""
        if scope == "tenant":
            return self.tenant_overrides.get(subject, self.tenant_daily_usd)
        return self.agent_overrides.get(subject, self.agent_daily_usd)

    @classmethod
    def load(cls, path: Path) -> Budgets:
        """Budgets from a TOML file (see the class docstring); ConfigError names a bad entry."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"budgets file {path}: {exc}") from exc
        unknown = set(data) - {"tenant", "agent"}
        if unknown:
            raise ConfigError(f"budgets file {path}: unknown section(s) {sorted(unknown)}")
        values: dict[str, Any] = {}
        for scope in ("tenant", "agent"):
            section = data.get(scope, {})
            unknown = set(section) - {"daily_usd", "overrides"}
            if unknown:
                raise ConfigError(
                    f"budgets file {path}: unknown key(s) {sorted(unknown)} in [{scope}]"
                )
            default = section.get("daily_usd")
            values[f"{scope}_daily_usd"] = (
                None if default is None else _budget_value(path, f"{scope}.daily_usd", default)
            )
            values[f"{scope}_overrides"] = {
                subject: _budget_value(path, f"{scope}.overrides.{subject}", usd)
                for subject, usd in section.get("overrides", {}).items()
            }
        return cls(**values)


def _budget_value(path: Path, name: str, value: object) -> float:
    # bool is an int to Python but never a budget.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(
            f"budgets file {path}: {name} must be a positive number of USD, got {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class BudgetConfig:
    """Settings of :class:`BudgetRule`."""

    #: The daily budgets.
    budgets: Budgets
    #: How long after midnight calls still count for the day before.
    grace_ms: int = 300_000
    #: Identity of tenant budget alerts.
    origin: Origin = Origin()
    #: Forecast: the burn rate is the spend of this recent window (event time) over its length.
    forecast_window_ms: int = 30 * 60_000
    #: Forecast: none before a tenant or agent has spent for this long of the day (a rate needs time).
    forecast_min_elapsed_ms: int = 5 * 60_000
    #: Forecast: a firing forecast resolves once the projection falls below this share of the budget.
    forecast_resolve_ratio: float = 0.9

    def __post_init__(self) -> None:
        if self.forecast_window_ms < MINUTE_MS:
            raise ConfigError(f"budget forecast window must be at least a minute, got {self.forecast_window_ms} ms")
        if not 0 < self.forecast_resolve_ratio <= 1:
            raise ConfigError(f"budget forecast_resolve_ratio must be in (0, 1], got {self.forecast_resolve_ratio}")


#: The forecast's granularity: spend is kept per minute of event time, projected once a minute.
MINUTE_MS = 60_000


class BudgetRule:
    """Daily spend per tenant and per agent crossing 80%, 90% and 100% of its budget, and the
    forecast that it will cross 100% before the day ends.

    A UTC day's spend is the sum of ``cost_usd`` of its LLM calls (by event time). Each threshold
    fires at most once per tenant or agent and day; all thresholds fired on a day resolve together
    once the day is over (the rule's clock passed midnight + ``grace_ms``). Calls for a day that
    is over are counted in ``late_events``.

    The forecast (:meth:`forecast`, at each minute boundary ``t`` of event time the alerts role's
    low watermark crosses, from the calls before ``t``): the burn rate ``r`` is the spend of the
    calls of the ``forecast_window_ms`` before ``t`` divided by that window's length, the window
    starting at the tenant's or agent's first call of the day at the earliest (none before
    ``forecast_min_elapsed_ms`` of it); the day's projected spend is
    ``spend + r * (end of day - t)`` and the budget runs out at ``t + (budget - spend) / r``. A
    ``budget_forecast`` alert fires when that time is before the day's end while the budget is
    not spent yet, and resolves when the
    projection falls below ``forecast_resolve_ratio`` of the budget, or when the day is over. A
    steady burn thus fires once, at the first minute its projection reaches the budget.
    """

    def __init__(self, config: BudgetConfig) -> None:
        self.config = config
        #: Calls for a day that was already over.
        self.late_events = 0
        #: The rule's clock: the greatest event time or tick seen.
        self.clock_ms = 0
        # "scope|subject|day_ms" -> spend of that day so far, in USD.
        self._spend: dict[str, float] = {}
        # day_ms -> the "scope|subject|day_ms" keys of that day in _spend.
        self._days: dict[int, set[str]] = {}
        # "scope|subject|day_ms|percent" -> the firing condition.
        self._firing: dict[str, _Condition] = {}
        # "scope|subject|day_ms" -> [tenant_id, agent_type, {minute start: spend}, settled, first
        # call]: the recent minutes' spend (the forecast's burn rate), the spend of the day's
        # minutes before them (added minute by minute), the event time of the day's first call,
        # and whom a forecast's alert names.
        self._minutes: dict[str, list[Any]] = {}
        # "scope|subject|day_ms" -> the firing forecast.
        self._forecasts: dict[str, _Condition] = {}
        # The minute of event time the forecast last ran at.
        self.forecast_minute = -1
        # Keys that got calls of a minute before it since (a partition behind, heard late): the
        # next forecast projects them again, even within the same minute.
        self._stale: set[str] = set()
        # Keys of _spend, _firing, _minutes and _forecasts changed since the last delta().
        self._changed_spend: set[str] = set()
        self._changed_firing: set[str] = set()
        self._changed_minutes: set[str] = set()
        self._changed_forecasts: set[str] = set()
        #: The subjects (tenant and agent ids) whose days this rule keeps: all when None (see
        #: :class:`~streams.intelligence.shards.Shard`).
        self.owns: Callable[[str], bool] | None = None

    def observe(self, call: LlmCall, watermark_ms: int | None = None) -> list[Alert]:
        """Add the call's cost to its tenant's and agent's day; the alerts it raises or clears.

        ``watermark_ms``, when given, is the event time of the call's own stream partition: the
        call is late only when its day is over by that clock (or resolved), and the clock moves only
        through :meth:`tick` (the alerts role ticks it with the minimum over the partitions).
        Without it, the call's own time moves the clock.
        """
        at = epoch_ms(call.event_time)
        day = at - at % DAY_MS
        # The rule's clock too: a day it resolved (the wall clock ticks it) takes no more calls.
        if day + DAY_MS + self.config.grace_ms <= max(self.clock_ms, watermark_ms or 0):
            if self.owns is None or self.owns(call.tenant_id):  # counted once, by the tenant's shard
                self.late_events += 1
            return []
        alerts: list[Alert] = []
        scopes: tuple[tuple[BudgetScope, str], ...] = (
            ("tenant", call.tenant_id),
            ("agent", call.agent_id),
        )
        for scope, subject in scopes:
            alerts += self._spend_on(scope, subject, day, call, at)
        return alerts if watermark_ms is not None else alerts + self.tick(at)

    def tick(self, now_ms: int) -> list[Alert]:
        """Move the clock to ``now_ms``; resolves the alerts of days that are over."""
        self.clock_ms = max(self.clock_ms, now_ms)
        day_over_before = self.clock_ms - self.config.grace_ms - DAY_MS
        # Called on every call: the work is per day that ended, not per tenant and agent.
        over_days = [day for day in self._days if day <= day_over_before]
        if not over_days:
            return []
        over = set().union(*(self._days.pop(day) for day in over_days))
        alerts: list[Alert] = []
        ended = [key.rsplit("|", 1) for key in self._firing if key.rsplit("|", 1)[0] in over]
        for day_key, percent in sorted(ended, key=lambda parts: (parts[0], int(parts[1]))):
            condition = self._firing.pop(f"{day_key}|{percent}")
            self._changed_firing.add(f"{day_key}|{percent}")
            spend = self._spend[day_key]
            budget = float(condition.details["budget_usd"])
            alerts.append(
                condition.alert(
                    "resolved",
                    at_ms=self.clock_ms,
                    message=(
                        f"{condition.details['scope']} {condition.subject}: day "
                        f"{condition.details['day']} is over, spent ${spend:.2f} of its "
                        f"${budget:.2f} daily budget"
                    ),
                    value=spend,
                    threshold=budget * int(percent) / 100,
                    window=(_day_of(day_key), _day_of(day_key) + DAY_MS),
                )
            )
        for day_key in sorted(over & self._forecasts.keys()):
            condition = self._forecasts.pop(day_key)
            self._changed_forecasts.add(day_key)
            spend = self._spend[day_key]
            budget = float(condition.details["budget_usd"])
            alerts.append(condition.alert(
                "resolved", at_ms=self.clock_ms,
                message=(f"{condition.details['scope']} {condition.subject}: day {condition.details['day']} is over, "
                         f"spent ${spend:.2f} of its ${budget:.2f} daily budget"),
                value=spend, threshold=budget, window=(_day_of(day_key), _day_of(day_key) + DAY_MS)))
        for key in over:
            del self._spend[key]
            self._minutes.pop(key, None)
        self._changed_spend |= over
        self._changed_minutes |= over
        return alerts

    def forecast(self, now_ms: int) -> list[Alert]:
        """Project the spends of the days of ``now_ms`` (event time, the alerts role's low
        watermark) to the day's end at their recent burn rate; the forecasts that fire or resolve
        (see the class docstring).

        The projection runs at each minute boundary ``now_ms`` crossed since the last call, however
        many (a replay or a catch-up crosses many at once, live traffic one at a time), as of that
        boundary: from the calls of the minutes before it only, so a live stream and a replay of it
        judge alike. A tenant or agent that got calls of minutes already judged (a partition heard
        late) is judged again at the last boundary.

        At a boundary only the days whose window holds a call, or whose forecast fires, are
        judged: for the others the rate is 0, so nothing can fire or change but when their minutes
        out of the window are added to the settled spend (minute by minute, in order, whenever it
        is done: the same floats)."""
        minute = now_ms // MINUTE_MS
        alerts: list[Alert] = []
        if self._stale and self.forecast_minute >= 0:
            boundary = self.forecast_minute * MINUTE_MS
            alerts += self._project(boundary, self._stale & self._days.get(boundary - boundary % DAY_MS, set()))
        self._stale = set()
        if minute <= self.forecast_minute:
            return alerts
        if self.forecast_minute >= 0:
            first = self.forecast_minute + 1
        else:  # the first boundary after the earliest call kept
            first = min((m // MINUTE_MS + 1 for entry in self._minutes.values() for m in entry[2]), default=minute)
        # Who has calls in each minute (of the days the boundaries cross and any kept before).
        by_minute: dict[int, list[str]] = {}
        for day_key, entry in self._minutes.items():
            for m in entry[2]:
                by_minute.setdefault(m, []).append(day_key)
        window = self.config.forecast_window_ms
        for m in range(first, minute + 1):
            boundary = m * MINUTE_MS
            day = boundary - boundary % DAY_MS
            keys = self._days.get(day)
            if not keys:
                continue
            judged = {key for t in range(max(day, boundary - window), boundary, MINUTE_MS)
                      for key in by_minute.get(t, ())}
            judged.update(key for key in self._forecasts if key in keys)
            if judged:
                alerts += self._project(boundary, judged & keys)
        self.forecast_minute = minute
        return alerts

    def _project(self, at: int, keys: set[str]) -> list[Alert]:
        """The forecasts of ``keys`` (of the day of ``at``, a minute boundary) as of ``at``."""
        config = self.config
        day = at - at % DAY_MS
        day_end = day + DAY_MS
        first_minute = max(day, at - config.forecast_window_ms)
        alerts: list[Alert] = []
        for day_key in sorted(keys):
            entry = self._minutes.get(day_key)
            if entry is None:
                continue
            tenant_id, agent_type, minutes = entry[0], entry[1], entry[2]
            old = sorted(m for m in minutes if m < first_minute)
            if old:
                # Out of the window: into the spend settled before it, minute by minute.
                entry[3] = functools.reduce(operator.add, (minutes.pop(m) for m in old), entry[3])
                self._changed_minutes.add(day_key)
            # Over the window, or since the first call of the day when that came later.
            elapsed = at - max(first_minute, entry[4])
            if elapsed < max(config.forecast_min_elapsed_ms, MINUTE_MS):
                continue
            scope, rest = day_key.split("|", 1)
            subject = rest.rsplit("|", 1)[0]
            budget = config.budgets.daily_usd(scope, subject)  # type: ignore[arg-type]
            if budget is None:
                continue
            recent = functools.reduce(operator.add, (minutes[m] for m in sorted(minutes) if m < at), 0.0)
            spend = entry[3] + recent  # by the calls before ``at``
            rate = recent / elapsed
            projected = spend + rate * (day_end - at)
            firing = self._forecasts.get(day_key)
            if firing is None and spend < budget and rate > 0 and projected >= budget:
                runs_out_ms = at + (budget - spend) / rate
                alerts.append(self._forecast_fires(scope, subject, day, day_key, tenant_id, agent_type, at,
                                                   spend, budget, rate, projected, runs_out_ms))
            elif firing is not None and spend < budget and projected < budget * config.forecast_resolve_ratio:
                del self._forecasts[day_key]
                self._changed_forecasts.add(day_key)
                alerts.append(firing.alert(
                    "resolved", at_ms=at,
                    message=(f"{scope} {subject}: at ${rate * 3_600_000:.2f}/h it now spends ${projected:.2f} of its "
                             f"${budget:.2f} daily budget by the end of {firing.details['day']}"),
                    value=projected, threshold=budget, window=(day, day_end)))
        return alerts

    def _forecast_fires(self, scope: str, subject: str, day: int, day_key: str, tenant_id: str, agent_type: str,
                        now_ms: int, spend: float, budget: float, rate: float, projected: float,
                        runs_out_ms: float) -> Alert:
        day_text = utc(day).strftime("%Y-%m-%d")
        runs_out = _utc_text(int(runs_out_ms))
        by_agent = scope == "agent"
        self._changed_forecasts.add(day_key)
        condition = self._forecasts[day_key] = _Condition(
            alert_id=alert_id("budget_forecast", subject, f"{scope}|{day_text}"),
            kind="budget_forecast",
            severity="warning",
            subject=subject,
            agent_id=subject if by_agent else self.config.origin.agent_id,
            agent_type=agent_type if by_agent else self.config.origin.agent_type,
            tenant_id=tenant_id,
            trace_id="",
            first_seen_ms=now_ms,
            last_seen_ms=now_ms,
            details={
                "scope": scope,
                "day": day_text,
                "budget_usd": repr(budget),
                "spent_usd": repr(spend),
                "burn_rate_usd_per_hour": repr(rate * 3_600_000),
                "projected_spend_usd": repr(projected),
                "projected_at": runs_out,
                "window_minutes": str(self.config.forecast_window_ms // MINUTE_MS),
            },
        )
        return condition.alert(
            "firing", at_ms=now_ms,
            message=(f"{scope} {subject} will spend its ${budget:.2f} daily budget by {runs_out} at "
                     f"${rate * 3_600_000:.2f}/h (spent ${spend:.2f} so far; ${projected:.2f} by the end of {day_text})"),
            value=projected, threshold=budget, window=(day, day + DAY_MS))

    def observe_calls(self, calls: Batch) -> list[tuple[int, int, Alert]]:
        """:meth:`observe` of each call with its partition's watermark (``calls.watermarks``), a
        tenant's or agent's day at a time: (call index, 0 for a tenant's alert or 1 for an
        agent's, alert) in the order call by call would give them. The spend of a day is added
        call after call, the same float; only a day whose spend reaches a threshold not fired yet
        is taken call by call.

        The columns are read once per batch, not per day: a fetch of a fleet's calls holds
        hundreds of days of few calls each, and a NumPy call per day would cost more than the
        additions."""
        at = calls.at
        days = at - at % DAY_MS
        late = days + DAY_MS + self.config.grace_ms <= np.maximum(calls.watermarks, self.clock_ms)
        if self.owns is None:
            self.late_events += int(late.sum())
        else:
            self.late_events += int((late & calls.matches("tenant_id", self.owns)).sum())
        kept = np.flatnonzero(~late)
        costs = calls.numbers("cost_usd")
        found: list[tuple[int, int, Alert]] = []
        for rank, scope in enumerate(("tenant", "agent")):
            codes, subjects = calls.codes(f"{scope}_id")
            budgets = [self.config.budgets.daily_usd(scope, subject)
                       if self.owns is None or self.owns(subject) else None for subject in subjects]
            taken = kept[np.array([budget is not None for budget in budgets], dtype=bool)[codes[kept]]] if subjects else kept[:0]
            if not len(taken):
                continue
            distinct_days, day_codes = np.unique(days[taken], return_inverse=True)
            order, lo, hi = groups(combine((codes[taken], len(subjects)), (day_codes, len(distinct_days))))
            taken = taken[order]
            # Each day's calls in call order (``taken[lo[g]:hi[g]]``), and the same by minute.
            group = np.repeat(np.arange(len(lo)), hi - lo)
            taken_at = at[taken]
            minutes = taken_at - taken_at % MINUTE_MS
            by_minute = np.lexsort((minutes, group))  # stable: call order within a minute
            spent, minute_list = costs[taken].tolist(), minutes[by_minute].tolist()
            minute_spent = costs[taken[by_minute]].tolist()
            firsts = taken[lo]  # each day's first call, its subject's code and its day
            per_day = zip(lo.tolist(), hi.tolist(), firsts.tolist(), codes[firsts].tolist(), days[firsts].tolist(),
                          np.minimum.reduceat(taken_at, lo).tolist())
            crossing: list[tuple[int, int, str, float, int, str, list[float]]] = []
            for a, b, first, code, day, first_at in per_day:
                subject, budget = subjects[code], budgets[code]
                day_key = f"{scope}|{subject}|{day}"
                if day_key not in self._spend:
                    self._days.setdefault(day, set()).add(day_key)
                spends = list(itertools.accumulate(spent[a:b], initial=self._spend.get(day_key, 0.0)))[1:]
                self._spend[day_key] = spends[-1]
                self._changed_spend.add(day_key)
                self._add_minutes(day_key, calls, first, first_at, minute_list[a:b], minute_spent[a:b])
                most = max(spends)
                if not all(most * 100 < budget * percent or f"{day_key}|{percent}" in self._firing
                           for percent, _ in BUDGET_THRESHOLDS):
                    crossing.append((a, b, subject, budget, day, day_key, spends))
            if not crossing:
                continue
            # The days taken call by call: their rows in one conversion.
            indices = np.concatenate([taken[a:b] for a, b, *_ in crossing])
            rows = iter(zip(indices.tolist(), calls.rows(indices)))
            for a, b, subject, budget, day, day_key, spends in crossing:
                for spend, (i, call) in zip(spends, itertools.islice(rows, b - a)):
                    found += [(i, rank, alert) for alert in
                              self._thresholds(scope, subject, day, day_key, spend, budget, call, int(at[i]))]
        return found

    def _spend_on(
        self, scope: BudgetScope, subject: str, day: int, call: LlmCall, at: int
    ) -> list[Alert]:
        budget = self.config.budgets.daily_usd(scope, subject)
        if budget is None or (self.owns is not None and not self.owns(subject)):
            return []
        day_key = f"{scope}|{subject}|{day}"
        if day_key not in self._spend:
            self._days.setdefault(day, set()).add(day_key)
        spend = self._spend[day_key] = self._spend.get(day_key, 0.0) + call.cost_usd
        self._changed_spend.add(day_key)
        minute = at - at % MINUTE_MS
        entry = self._minutes.setdefault(day_key, [call.tenant_id, call.agent_type, {}, 0.0, at])
        entry[2][minute] = entry[2].get(minute, 0.0) + call.cost_usd
        entry[4] = min(entry[4], at)
        self._changed_minutes.add(day_key)
        if minute < self.forecast_minute * MINUTE_MS:
            self._stale.add(day_key)
        return self._thresholds(scope, subject, day, day_key, spend, budget, call, at)

    def _add_minutes(self, day_key: str, calls: Batch, first: int, first_at: int, minutes: list[int],
                     spent: list[float]) -> None:
        """A day's calls into their minutes' spend: ``minutes`` and ``spent`` by minute, each
        minute's in call order (the same floats as call by call); ``first``: the day's first call
        in the batch, ``first_at`` its earliest time."""
        entry = self._minutes.get(day_key)
        if entry is None:
            tenants, tenant_ids = calls.codes("tenant_id")
            types, agent_types = calls.codes("agent_type")
            entry = self._minutes[day_key] = [tenant_ids[tenants[first]], agent_types[types[first]], {}, 0.0, first_at]
        entry[4] = min(entry[4], first_at)
        if first_at - first_at % MINUTE_MS < self.forecast_minute * MINUTE_MS:
            self._stale.add(day_key)
        spend = entry[2]
        for minute, run in itertools.groupby(zip(minutes, spent), key=operator.itemgetter(0)):
            spend[minute] = functools.reduce(operator.add, (cost for _, cost in run), spend.get(minute, 0.0))
        self._changed_minutes.add(day_key)

    def _thresholds(
        self, scope: BudgetScope, subject: str, day: int, day_key: str, spend: float, budget: float,
        call: LlmCall, at: int,
    ) -> list[Alert]:
        """The thresholds a day's ``spend`` (after ``call``) newly reached: each fires."""
        alerts: list[Alert] = []
        for percent, severity in BUDGET_THRESHOLDS:
            # Percent as an int keeps 80% of $100 exactly $80 (0.8 * 100 is, 0.9 * 10 is not).
            # Thresholds rise: under one, under all (most calls; no key built for them).
            if spend * 100 < budget * percent:
                break
            key = f"{day_key}|{percent}"
            if key in self._firing:
                continue
            day_text = utc(day).strftime("%Y-%m-%d")
            by_agent = scope == "agent"
            self._changed_firing.add(key)
            condition = self._firing[key] = _Condition(
                alert_id=alert_id("budget", subject, f"{scope}|{day_text}|{percent}"),
                kind="budget",
                severity=severity,
                subject=subject,
                agent_id=call.agent_id if by_agent else self.config.origin.agent_id,
                agent_type=call.agent_type if by_agent else self.config.origin.agent_type,
                tenant_id=call.tenant_id,
                trace_id=call.trace_id,
                first_seen_ms=at,
                last_seen_ms=at,
                details={
                    "scope": scope,
                    "day": day_text,
                    "percent": str(percent),
                    "budget_usd": repr(budget),
                },
            )
            alerts.append(
                condition.alert(
                    "firing",
                    at_ms=at,
                    message=(
                        f"{scope} {subject} spent ${spend:.2f} of its ${budget:.2f} daily budget "
                        f"on {day_text} ({math.floor(spend * 100 / budget)}%, crossed {percent}%)"
                    ),
                    value=spend,
                    threshold=budget * percent / 100,
                    window=(day, day + DAY_MS),
                )
            )
        return alerts

    def size(self) -> int:
        """Entries held: days of spend per tenant and agent (with their recent minutes), and
        firing conditions and forecasts."""
        return (len(self._spend) + len(self._firing) + len(self._forecasts)
                + sum(len(entry[2]) for entry in self._minutes.values()))

    def to_dict(self) -> dict[str, Any]:
        """The rule's state (not its budgets) as a JSON-friendly dict."""
        return {
            "clock_ms": self.clock_ms,
            "late_events": self.late_events,
            "forecast_minute": self.forecast_minute,
            "stale": sorted(self._stale),
            "spend": dict(self._spend),
            "firing": _conditions_to_dict(self._firing),
            "minutes": {key: _minutes_entry(entry) for key, entry in self._minutes.items()},
            "forecasts": _conditions_to_dict(self._forecasts),
        }

    def delta(self) -> dict[str, Any]:
        """What changed since the last delta, in :meth:`to_dict`'s shape: the scalars, and of the
        maps only the entries changed (None: gone). :meth:`apply_delta` adds it to a state."""
        return {
            "clock_ms": self.clock_ms,
            "late_events": self.late_events,
            "forecast_minute": self.forecast_minute,
            "stale": sorted(self._stale),
            "spend": changes(self._spend, self._changed_spend, float),
            "firing": changes(self._firing, self._changed_firing, _condition_dict),
            "minutes": changes(self._minutes, self._changed_minutes, _minutes_entry),
            "forecasts": changes(self._forecasts, self._changed_forecasts, _condition_dict),
        }

    @staticmethod
    def apply_delta(data: dict[str, Any], delta: Mapping[str, Any]) -> None:
        """Bring ``data`` (a :meth:`to_dict`) to the state after ``delta``."""
        data["clock_ms"], data["late_events"] = delta["clock_ms"], delta["late_events"]
        data["forecast_minute"] = delta.get("forecast_minute", -1)
        data["stale"] = delta.get("stale", [])
        merge_changes(data["spend"], delta["spend"])
        merge_changes(data["firing"], delta["firing"])
        merge_changes(data.setdefault("minutes", {}), delta.get("minutes", {}))
        merge_changes(data.setdefault("forecasts", {}), delta.get("forecasts", {}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: BudgetConfig) -> BudgetRule:
        """The rule in the state :meth:`to_dict` described, with the current configuration."""
        rule = cls(config)
        rule.clock_ms = data["clock_ms"]
        rule.late_events = data["late_events"]
        rule._spend = dict(data["spend"])
        for key in rule._spend:
            rule._days.setdefault(_day_of(key), set()).add(key)
        rule._firing = _conditions_from_dict(data["firing"])
        # A state written before the forecast has none of it: it starts from the next calls.
        rule.forecast_minute = data.get("forecast_minute", -1)
        rule._stale = set(data.get("stale", ()))
        rule._minutes = {key: [entry[0], entry[1], {int(m): spend for m, spend in entry[2]}, entry[3], entry[4]]
                         for key, entry in data.get("minutes", {}).items()}
        rule._forecasts = _conditions_from_dict(data.get("forecasts", {}))
        return rule


def _minutes_entry(entry: list[Any]) -> list[Any]:
    # JSON keys are text: the minutes go as [minute, spend] pairs, in time order.
    return [entry[0], entry[1], sorted(entry[2].items()), entry[3], entry[4]]


def _day_of(day_key: str) -> int:
    # The subject may hold "|"; the day is always last.
    return int(day_key.rsplit("|", 1)[1])


# ------------------------------------------------------------------------------ sliding windows


class _SlidingCounts:
    """Counters per subject in event-time buckets; the window is the last ``window_ms`` of them.

    The window ends with the bucket of the clock (the greatest event time or tick seen), so it
    slides by one bucket at a time.
    """

    def __init__(self, window_ms: int, bucket_ms: int) -> None:
        if bucket_ms <= 0 or window_ms <= 0 or window_ms % bucket_ms:
            raise ValueError(
                f"window {window_ms} ms must be a positive multiple of bucket {bucket_ms} ms"
            )
        self.window_ms = window_ms
        self.bucket_ms = bucket_ms
        self.clock_ms = 0
        # subject -> bucket start -> counters
        self._buckets: dict[str, dict[int, list[int]]] = {}
        # subject -> counters summed over its buckets (kept as buckets come and go)
        self._sums: dict[str, list[int]] = {}
        #: The window start buckets were last dropped for: the clock moves on every call, the
        #: window only once per bucket, and the sweep over every subject is done only then.
        self._swept_start: int | None = None
        #: Subjects whose buckets changed since the last delta().
        self.changed: set[str] = set()

    def bounds(self) -> tuple[int, int]:
        """The window ``[start, end)`` at the clock."""
        end = self.clock_ms - self.clock_ms % self.bucket_ms + self.bucket_ms
        return end - self.window_ms, end

    def add(self, subject: str, at_ms: int, counts: list[int]) -> bool:
        """Count ``counts`` at ``at_ms``; False (nothing counted) when that is before the window."""
        self.advance(at_ms)
        if at_ms < self._swept_start:  # the window's start, as advance() left it
            return False
        buckets = self._buckets.get(subject)
        if buckets is None:
            buckets = self._buckets[subject] = {}
            self._sums[subject] = [0] * len(counts)
        start = at_ms - at_ms % self.bucket_ms
        bucket = buckets.get(start)
        if bucket is None:
            bucket = buckets[start] = [0] * len(counts)
        sums = self._sums[subject]
        for i, count in enumerate(counts):
            bucket[i] += count
            sums[i] += count
        self.changed.add(subject)
        return True

    def add_many(self, subject: str, at_ms: np.ndarray, counts: list[np.ndarray]) -> None:
        """Count calls at ``at_ms`` (none before the window, none moving it), call ``i`` adding
        ``counts[k][i]`` to counter ``k``: what :meth:`add` of each would count, a bucket at a time."""
        buckets = self._buckets.get(subject)
        if buckets is None:
            buckets = self._buckets[subject] = {}
            self._sums[subject] = [0] * len(counts)
        sums = self._sums[subject]
        starts, inverse = np.unique(at_ms - at_ms % self.bucket_ms, return_inverse=True)
        added = [np.bincount(inverse, weights=column, minlength=len(starts)).astype(np.int64).tolist()
                 for column in counts]
        for j, start in enumerate(starts.tolist()):
            bucket = buckets.get(start)
            if bucket is None:
                bucket = buckets[start] = [0] * len(counts)
            for i, column in enumerate(added):
                bucket[i] += column[j]
                sums[i] += column[j]
        self.changed.add(subject)

    def clocks(self, at_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For calls at ``at_ms`` taken in order: the clock after each, and the window's start then."""
        clock = np.maximum.accumulate(np.maximum(at_ms, self.clock_ms))
        return clock, clock - clock % self.bucket_ms + self.bucket_ms - self.window_ms

    def advance(self, now_ms: int) -> None:
        """Move the clock to ``now_ms`` (never back); buckets that left the window are dropped."""
        self.clock_ms = max(self.clock_ms, now_ms)
        start = self.bounds()[0]
        if start == self._swept_start:
            return
        self._swept_start = start
        for subject in list(self._buckets):
            buckets = self._buckets[subject]
            old = [b for b in buckets if b < start]
            if not old:
                continue
            self.changed.add(subject)
            sums = self._sums[subject]
            for bucket in old:
                for i, count in enumerate(buckets.pop(bucket)):
                    sums[i] -= count
            if not buckets:
                del self._buckets[subject]
                del self._sums[subject]

    def totals(self, subject: str, width: int) -> list[int]:
        """The subject's ``width`` counters summed over the window."""
        sums = self._sums.get(subject)
        return list(sums) if sums is not None else [0] * width

    def size(self) -> int:
        """Buckets held, over all subjects."""
        return sum(map(len, self._buckets.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "clock_ms": self.clock_ms,
            "buckets": {subject: _bucket_list(buckets) for subject, buckets in self._buckets.items()},
        }

    def delta(self) -> dict[str, Any]:
        """The clock, and the buckets of the subjects changed since the last delta."""
        return {"clock_ms": self.clock_ms, "buckets": changes(self._buckets, self.changed, _bucket_list)}

    def load(self, data: Mapping[str, Any]) -> None:
        self.clock_ms = data["clock_ms"]
        self._buckets = {
            subject: {int(start): list(counts) for start, counts in buckets}
            for subject, buckets in data["buckets"].items() if buckets
        }
        self._sums = {subject: [sum(column) for column in zip(*buckets.values())]
                      for subject, buckets in self._buckets.items()}


def _bucket_list(buckets: Mapping[int, list[int]]) -> list[list[Any]]:
    return [[start, list(counts)] for start, counts in sorted(buckets.items())]


# ----------------------------------------------------------------------------------- error rate

#: Statuses that count as failed calls for the error rate; rate limits have their own alert.
FAILED_STATUSES = frozenset({"error", "timeout"})


class _SlidingCountRule:
    """State shared by the rules that count calls over a sliding window: the counts, the
    conditions firing, and the calls too late to count; serialized the same way."""

    def __init__(self, config: Any) -> None:
        self.config = config
        #: Calls older than the window.
        self.late_events = 0
        self._counts = _SlidingCounts(config.window_ms, config.bucket_ms)
        self._firing: dict[str, _Condition] = {}
        #: Subjects of _firing changed since the last delta().
        self._changed_firing: set[str] = set()
        #: The subjects whose counts this rule keeps: all when None. The others' calls only move
        #: the clock (see :class:`~streams.intelligence.shards.Shard`).
        self.owns: Callable[[str], bool] | None = None

    def size(self) -> int:
        """Entries held: buckets of counts and firing conditions."""
        return self._counts.size() + len(self._firing)

    def observe(self, call: Any) -> list[Alert]:
        raise NotImplementedError

    def _spans(self, calls: Batch) -> Iterator[tuple[int, int, int, list[tuple[int, Alert]]]]:
        """The batch in spans of calls during which the window stays put: (first, end, window
        start, alerts) of each. The first call of a span moves the window and is taken alone
        (:meth:`observe`, whose alerts are given); the caller counts the others (from ``first +
        1``; ``first`` is -1 when the first span starts where the window already was), and once it
        is done the clock moves to the span's last call."""
        clock, starts = self._counts.clocks(calls.at)
        cuts = (np.flatnonzero(starts[1:] != starts[:-1]) + 1).tolist()
        for lo, hi in zip([0, *cuts], [*cuts, calls.n]):
            if lo == 0 and self._in_place(int(starts[0])):  # the window stays where it was
                yield -1, hi, int(starts[0]), []
            else:
                yield lo, hi, int(starts[lo]), [(lo, alert) for alert in self.observe(calls.rows([lo])[0])]
            self._counts.advance(int(clock[hi - 1]))

    def _in_place(self, start: int) -> bool:
        """Whether the window starts at ``start`` already (and nothing waits for it moving)."""
        return self._counts._swept_start == start

    def _by_subject(self, calls: Batch, rest: np.ndarray, start: int, subjects: np.ndarray,
                    subject_of: Callable[[int], str], owned: np.ndarray | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """The calls ``rest`` of a span whose window starts at ``start`` (of them, those whose
        subject this rule keeps, ``owned``): those before it counted late, the others by subject,
        (subject, its calls in order)."""
        if owned is not None:
            rest = rest[owned[rest]]
        late = calls.at[rest] < start
        self.late_events += int(late.sum())
        rest = rest[~late]
        order, lo, hi = groups(subjects[rest])
        rest = rest[order]
        for a, b in zip(lo.tolist(), hi.tolist()):
            yield subject_of(int(rest[a])), rest[a:b]

    def _one_by_one(self, calls: Batch, indices: np.ndarray) -> list[tuple[int, Alert]]:
        """:meth:`observe` of the calls at ``indices``, in that order: (call index, alert)."""
        return [(i, alert) for i, call in zip(indices.tolist(), calls.rows(indices)) for alert in self.observe(call)]

    def _subjects(self, calls: Batch, first: str, second: str) -> tuple[np.ndarray, Callable[[int], str]]:
        """Each call's subject ``<first>/<second>`` as a code, and the subject of a call's index."""
        a, a_values = calls.codes(first)
        b, b_values = calls.codes(second)
        return (combine((a, len(a_values)), (b, len(b_values))),
                lambda i: f"{a_values[a[i]]}/{b_values[b[i]]}")

    def _owned(self, subjects: np.ndarray, subject_of: Callable[[int], str]) -> np.ndarray | None:
        """Whether this rule keeps each call's subject (None: it keeps them all)."""
        if self.owns is None or not len(subjects):
            return None
        distinct, first, inverse = np.unique(subjects, return_index=True, return_inverse=True)
        return np.array([self.owns(subject_of(int(i))) for i in first], dtype=bool)[inverse]

    def to_dict(self) -> dict[str, Any]:
        """The rule's state as a JSON-friendly dict."""
        return {
            "late_events": self.late_events,
            "counts": self._counts.to_dict(),
            "firing": _conditions_to_dict(self._firing),
        }

    def delta(self) -> dict[str, Any]:
        """What changed since the last delta (see :meth:`BudgetRule.delta`)."""
        return {
            "late_events": self.late_events,
            "counts": self._counts.delta(),
            "firing": changes(self._firing, self._changed_firing, _condition_dict),
        }

    @staticmethod
    def apply_delta(data: dict[str, Any], delta: Mapping[str, Any]) -> None:
        """Bring ``data`` (a :meth:`to_dict`) to the state after ``delta``."""
        data["late_events"] = delta["late_events"]
        data["counts"]["clock_ms"] = delta["counts"]["clock_ms"]
        merge_changes(data["counts"]["buckets"], delta["counts"]["buckets"])
        merge_changes(data["firing"], delta["firing"])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: Any = None):
        """The rule in the state :meth:`to_dict` described, with the current configuration."""
        rule = cls() if config is None else cls(config)
        rule.late_events = data["late_events"]
        rule._counts.load(data["counts"])
        rule._firing = _conditions_from_dict(data["firing"])
        return rule


@dataclass(frozen=True)
class ErrorRateConfig:
    """Settings of :class:`ErrorRateRule`."""

    #: Length of the sliding window.
    window_ms: int = 60_000
    #: Step the window slides by.
    bucket_ms: int = 10_000
    #: Fires when the share of failed calls in the window exceeds this.
    fire_rate: float = 0.2
    #: Resolves when it falls below this (lower than ``fire_rate``, so it does not flap).
    resolve_rate: float = 0.1
    #: Fewer calls in the window decide nothing: a rate over three calls is noise.
    min_calls: int = 20
    #: A firing provider/model with no call for this long (by the wall clock) is forgotten.
    forget_after_ms: int = FORGET_AFTER_MS
    #: Identity of the alerts (a provider's model concerns no single agent).
    origin: Origin = Origin()


class ErrorRateRule(_SlidingCountRule):
    """Share of failed LLM calls per provider/model over a sliding event-time window.

    Fires when the rate exceeds ``fire_rate`` over at least ``min_calls`` calls; resolves when
    it falls below ``resolve_rate`` over at least ``min_calls`` calls. A provider that stopped
    receiving calls gives no evidence of recovery, so its alert stays firing, until it had no
    call for ``forget_after_ms``: then :meth:`tick` resolves it as forgotten.
    """

    def __init__(self, config: ErrorRateConfig = ErrorRateConfig()) -> None:
        if not config.resolve_rate <= config.fire_rate:
            raise ValueError("resolve_rate must not exceed fire_rate")
        if config.forget_after_ms < config.window_ms:
            raise ValueError(f"[error_rate] forget_after_seconds must be at least window_seconds ({config.window_ms // 1000})")
        super().__init__(config)

    def tick(self, now_ms: int) -> list[Alert]:
        """Forget the firing subjects with no call for ``forget_after_ms`` before ``now_ms`` (wall
        clock): each resolves, saying why."""
        alerts: list[Alert] = []
        for subject in sorted(self._firing):
            condition = self._firing[subject]
            quiet = now_ms - condition.last_seen_ms
            if quiet < self.config.forget_after_ms:
                continue
            del self._firing[subject]
            self._changed_firing.add(subject)
            alerts.append(_forgotten(
                condition, condition.last_seen_ms, now_ms, self.config.forget_after_ms,
                f"{subject}: no call for {_duration_text(quiet)} (since {_utc_text(condition.last_seen_ms)}); "
                f"forgotten after {_duration_text(self.config.forget_after_ms)} without evidence of recovery"))
        return alerts

    def observe_calls(self, calls: Batch) -> list[tuple[int, Alert]]:
        """:meth:`observe` of each call, a provider/model at a time: (call index, alert) in the
        order call by call would give them. A group that cannot fire (the rate never above
        ``fire_rate``) or resolve (never below ``resolve_rate``) is counted at once; the rest
        call by call."""
        subjects, subject_of = self._subjects(calls, "provider", "model")
        owned = self._owned(subjects, subject_of)
        failed = calls.is_in("status", FAILED_STATUSES).astype(np.int64)
        at = calls.at
        found: list[tuple[int, Alert]] = []
        for lo, hi, start, alerts in self._spans(calls):
            found += alerts
            for subject, taken in self._by_subject(calls, np.arange(lo + 1, hi), start, subjects, subject_of, owned):
                base_calls, base_errors = self._counts.totals(subject, 2)
                counted = base_calls + np.arange(1, len(taken) + 1)
                rate = (base_errors + np.cumsum(failed[taken])) / counted
                decided = counted >= self.config.min_calls
                condition = self._firing.get(subject)
                if condition is None:
                    changes_state = decided & (rate > self.config.fire_rate)
                else:
                    changes_state = decided & (rate < self.config.resolve_rate)
                if changes_state.any():
                    found += self._one_by_one(calls, taken)
                    continue
                self._counts.add_many(subject, at[taken], [np.ones(len(taken), np.int64), failed[taken]])
                if condition is not None and decided.any():
                    condition.last_seen_ms = max(condition.last_seen_ms, int(at[taken][decided].max()))
                    self._changed_firing.add(subject)
        return found

    def observe(self, call: LlmCall) -> list[Alert]:
        """Count the call; the alert its provider/model raises or clears, if any."""
        at = epoch_ms(call.event_time)
        subject = f"{call.provider}/{call.model}"
        if self.owns is not None and not self.owns(subject):  # another shard's: the clock moves
            self._counts.advance(at)
            return []
        if not self._counts.add(subject, at, [1, call.status in FAILED_STATUSES]):
            self.late_events += 1
            return []
        calls, errors = self._counts.totals(subject, 2)
        if calls < self.config.min_calls:
            return []
        rate = errors / calls
        condition = self._firing.get(subject)
        if condition is None and rate <= self.config.fire_rate:
            return []
        if condition is not None and rate >= self.config.resolve_rate:
            condition.last_seen_ms = max(condition.last_seen_ms, at)
            self._changed_firing.add(subject)
            return []
        # An alert: its text (most calls raise or clear nothing, and skip this).
        window = self._counts.bounds()
        seconds = self.config.window_ms // 1000
        numbers = (
            f"{errors} of {calls} calls failed ({rate:.1%}) "
            f"in the {seconds} s to {_utc_text(window[1])}"
        )
        self._changed_firing.add(subject)
        if condition is None:
            condition = self._firing[subject] = _Condition(
                alert_id=alert_id("error_rate", subject, str(window[0])),
                kind="error_rate",
                severity="critical",
                subject=subject,
                agent_id=self.config.origin.agent_id,
                agent_type=self.config.origin.agent_type,
                tenant_id=self.config.origin.tenant_id,
                trace_id=call.trace_id,
                first_seen_ms=at,
                last_seen_ms=at,
                details={"provider": call.provider, "model": call.model},
            )
            return [
                condition.alert(
                    "firing",
                    at_ms=at,
                    message=f"{subject}: {numbers}, above {self.config.fire_rate:.1%}",
                    value=rate,
                    threshold=self.config.fire_rate,
                    window=window,
                )
            ]
        del self._firing[subject]
        return [
            condition.alert(
                "resolved",
                at_ms=at,
                message=f"{subject}: {numbers}, below {self.config.resolve_rate:.1%}",
                value=rate,
                threshold=self.config.resolve_rate,
                window=window,
            )
        ]



# ----------------------------------------------------------------------------- rate-limit storm


@dataclass(frozen=True)
class RateLimitStormConfig:
    """Settings of :class:`RateLimitStormRule`."""

    #: Length of the sliding window.
    window_ms: int = 60_000
    #: Step the window slides by.
    bucket_ms: int = 10_000
    #: Fires when more calls than this were rate limited in the window.
    fire_count: int = 20
    #: Resolves when at most this many were (lower than ``fire_count``, so it does not flap).
    resolve_count: int = 5
    #: Identity of the alerts (an API key concerns no single agent).
    origin: Origin = Origin()


class RateLimitStormRule(_SlidingCountRule):
    """Rate-limited LLM calls per provider and API key alias over a sliding window.

    Resolves on ticks too: agents back off from a throttled key, and silence is calm.
    """

    def __init__(self, config: RateLimitStormConfig = RateLimitStormConfig()) -> None:
        if not config.resolve_count <= config.fire_count:
            raise ValueError("resolve_count must not exceed fire_count")
        super().__init__(config)
        #: The window start the firing storms were last checked at (see :meth:`tick`).
        self._checked_start: int | None = None

    def observe_calls(self, calls: Batch) -> list[tuple[int, Alert]]:
        """:meth:`observe` of each call, a provider/key alias at a time: (call index, alert) in
        the order call by call would give them. Storms are checked for calm when the window moves
        (the first call of a span, taken alone); within a span, a key alias that cannot start a
        storm is counted at once, the rest call by call."""
        subjects, subject_of = self._subjects(calls, "provider", "api_key_alias")
        limited = calls.is_in("status", {"rate_limited"})
        at = calls.at
        found: list[tuple[int, Alert]] = []
        for lo, hi, start, alerts in self._spans(calls):
            found += alerts
            if self._checked_start != start:  # the span's first call was late: calm unchecked
                found += self._one_by_one(calls, np.arange(lo + 1, hi))
                continue
            rest = np.arange(lo + 1, hi)[limited[lo + 1:hi]]
            for subject, taken in self._by_subject(calls, rest, start, subjects, subject_of):
                condition = self._firing.get(subject)
                if condition is None and self._counts.totals(subject, 1)[0] + len(taken) > self.config.fire_count:
                    found += self._one_by_one(calls, taken)
                    continue
                self._counts.add_many(subject, at[taken], [np.ones(len(taken), np.int64)])
                if condition is not None:
                    condition.last_seen_ms = max(condition.last_seen_ms, int(at[taken].max()))
                    self._changed_firing.add(subject)
        return found

    def observe(self, call: LlmCall) -> list[Alert]:
        """Count the call if it was rate limited; the alerts it raises or clears."""
        at = epoch_ms(call.event_time)
        subject = f"{call.provider}/{call.api_key_alias}"
        if call.status == "rate_limited":
            if not self._counts.add(subject, at, [1]):
                self.late_events += 1
                return []
            (count,) = self._counts.totals(subject, 1)
            condition = self._firing.get(subject)
            if condition is not None:
                condition.last_seen_ms = max(condition.last_seen_ms, at)
                self._changed_firing.add(subject)
            elif count > self.config.fire_count:
                self._changed_firing.add(subject)
                condition = self._firing[subject] = _Condition(
                    alert_id=alert_id("rate_limit_storm", subject, str(self._counts.bounds()[0])),
                    kind="rate_limit_storm",
                    severity="warning",
                    subject=subject,
                    agent_id=self.config.origin.agent_id,
                    agent_type=self.config.origin.agent_type,
                    tenant_id=self.config.origin.tenant_id,
                    trace_id=call.trace_id,
                    first_seen_ms=at,
                    last_seen_ms=at,
                    details={"provider": call.provider, "api_key_alias": call.api_key_alias},
                )
                return [self._alert(condition, "firing", at, count)] + self.tick(at)
        return self.tick(at)

    def _in_place(self, start: int) -> bool:
        return self._counts._swept_start == start and self._checked_start == start

    def firing(self) -> bool:
        """Whether a storm fires now."""
        return bool(self._firing)

    def tick(self, now_ms: int) -> list[Alert]:
        """Move the clock to ``now_ms``; resolves the storms that calmed down."""
        self._counts.advance(now_ms)
        # A count falls only when a bucket leaves the window: nothing to check before it does.
        start = self._counts.bounds()[0]
        if start == self._checked_start:
            return []
        self._checked_start = start
        alerts: list[Alert] = []
        for subject in sorted(self._firing):
            (count,) = self._counts.totals(subject, 1)
            if count <= self.config.resolve_count:
                condition = self._firing.pop(subject)
                self._changed_firing.add(subject)
                alerts.append(self._alert(condition, "resolved", self._counts.clock_ms, count))
        return alerts

    def _alert(self, condition: _Condition, state: State, at_ms: int, count: int) -> Alert:
        window = self._counts.bounds()
        threshold = self.config.fire_count if state == "firing" else self.config.resolve_count
        relation = "more than" if state == "firing" else "at most"
        return condition.alert(
            state,
            at_ms=at_ms,
            message=(
                f"{condition.subject}: {count} rate-limited calls in the "
                f"{self.config.window_ms // 1000} s to {_utc_text(window[1])}, "
                f"{relation} {threshold}"
            ),
            value=float(count),
            threshold=float(threshold),
            window=window,
        )



# -------------------------------------------------------------------------------- silent agent


@dataclass(frozen=True)
class SilentAgentConfig:
    """Settings of :class:`SilentAgentRule`."""

    #: An agent without telemetry for this long is silent.
    silent_after_ms: int = 120_000
    #: An agent without telemetry for this long is forgotten (its silence resolves, saying so).
    forget_after_ms: int = FORGET_AFTER_MS


class SilentAgentRule:
    """Agents that stopped sending telemetry, judged by the wall clock on :meth:`tick`.

    Only agents that reported at least once are known. The silence is measured from the event
    time of an agent's latest telemetry; it fires once and resolves on the next telemetry. An
    agent silent for ``forget_after_ms`` is forgotten (retired agents must not stay in the state
    for ever): its silence resolves as forgotten, and a later report of it starts afresh.
    """

    def __init__(self, config: SilentAgentConfig = SilentAgentConfig()) -> None:
        if config.forget_after_ms < config.silent_after_ms:
            raise ValueError("[silent_agent] forget_after_seconds must be at least silent_after_seconds")
        self.config = config
        # agent_id -> latest telemetry: time, agent_type, tenant_id, trace_id
        self._last: dict[str, dict[str, Any]] = {}
        self._firing: dict[str, _Condition] = {}
        # Agents whose entries changed since the last delta() (in _last, _firing or both).
        self._changed: set[str] = set()

    def observe(self, telemetry: Telemetry) -> list[Alert]:
        """Note the agent is alive; resolves its silence, if it was silent."""
        at = epoch_ms(telemetry.event_time)
        last = self._last.get(telemetry.agent_id)
        # A redelivered or reordered report is no news of life.
        if last is not None and at <= last["at_ms"]:
            return []
        self._changed.add(telemetry.agent_id)
        self._last[telemetry.agent_id] = {
            "at_ms": at,
            "agent_type": telemetry.agent_type,
            "tenant_id": telemetry.tenant_id,
            "trace_id": telemetry.trace_id,
        }
        return self._alive(telemetry.agent_id, last, at)

    def observe_batch(self, telemetry: Batch) -> list[tuple[int, Alert]]:
        """:meth:`observe` of each report, an agent at a time: (report index, alert) in the order
        one at a time would give them. Of an agent's reports only those later than every report
        before them are news: the first of them resolves its silence, the last is its latest."""
        if not telemetry.n:
            return []
        agents, agent_ids = telemetry.codes("agent_id")
        at = telemetry.at
        order, lo, hi = groups(agents)
        found: list[tuple[int, Alert]] = []
        fields = [(name, *telemetry.codes(name)) for name in ("agent_type", "tenant_id", "trace_id")]
        for a, b in zip(lo.tolist(), hi.tolist()):
            mine = order[a:b]
            agent_id = agent_ids[agents[mine[0]]]
            last = self._last.get(agent_id)
            times = at[mine]
            before = np.maximum.accumulate(np.concatenate(([times[0] - 1 if last is None else last["at_ms"]], times[:-1])))
            news = np.flatnonzero(times > before)
            if not len(news):
                continue
            newest = int(mine[news[-1]])
            self._changed.add(agent_id)
            self._last[agent_id] = {"at_ms": int(at[newest]),
                                    **{name: values[codes[newest]] for name, codes, values in fields}}
            first = int(mine[news[0]])
            found += [(first, alert) for alert in self._alive(agent_id, last, int(at[first]))]
        found.sort(key=lambda item: item[0])
        return found

    def _alive(self, agent_id: str, last: dict[str, Any] | None, at: int) -> list[Alert]:
        """The agent reported at ``at`` after ``last``: its silence, if any, resolves."""
        condition = self._firing.pop(agent_id, None)
        if condition is None or last is None:
            return []
        silence = at - last["at_ms"]
        return [
            condition.alert(
                "resolved",
                at_ms=at,
                message=(
                    f"agent {agent_id} reported again after "
                    f"{_duration_text(silence)} without telemetry"
                ),
                value=silence / 1000,
                threshold=self.config.silent_after_ms / 1000,
                window=(last["at_ms"], at),
            )
        ]

    def tick(self, now_ms: int) -> list[Alert]:
        """The silences ``now_ms`` (wall clock) reveals."""
        alerts: list[Alert] = []
        for agent_id, last in sorted(self._last.items()):
            silence = now_ms - last["at_ms"]
            if agent_id in self._firing or silence < self.config.silent_after_ms:
                continue
            self._changed.add(agent_id)
            condition = self._firing[agent_id] = _Condition(
                alert_id=alert_id("silent_agent", agent_id, str(last["at_ms"])),
                kind="silent_agent",
                severity="warning",
                subject=agent_id,
                agent_id=agent_id,
                agent_type=last["agent_type"],
                tenant_id=last["tenant_id"],
                trace_id=last["trace_id"],
                first_seen_ms=now_ms,
                last_seen_ms=now_ms,
                details={"last_telemetry": _utc_text(last["at_ms"])},
            )
            alerts.append(
                condition.alert(
                    "firing",
                    at_ms=now_ms,
                    message=(
                        f"agent {agent_id}: no telemetry for {_duration_text(silence)} "
                        f"(since {_utc_text(last['at_ms'])}), limit "
                        f"{_duration_text(self.config.silent_after_ms)}"
                    ),
                    value=silence / 1000,
                    threshold=self.config.silent_after_ms / 1000,
                    window=(last["at_ms"], now_ms),
                )
            )
        forget_before = now_ms - self.config.forget_after_ms
        for agent_id in sorted(agent for agent, last in self._last.items() if last["at_ms"] <= forget_before):
            last = self._last.pop(agent_id)
            condition = self._firing.pop(agent_id)  # fired above, if not before
            self._changed.add(agent_id)
            alerts.append(_forgotten(
                condition, last["at_ms"], now_ms, self.config.forget_after_ms,
                f"agent {agent_id}: no telemetry for {_duration_text(now_ms - last['at_ms'])} (since "
                f"{_utc_text(last['at_ms'])}); forgotten after {_duration_text(self.config.forget_after_ms)}, "
                "a later report starts afresh"))
        return alerts

    def size(self) -> int:
        """Entries held: agents known and firing conditions."""
        return len(self._last) + len(self._firing)

    def to_dict(self) -> dict[str, Any]:
        """The rule's state as a JSON-friendly dict."""
        return {
            "last": {agent: dict(last) for agent, last in self._last.items()},
            "firing": _conditions_to_dict(self._firing),
        }

    def delta(self) -> dict[str, Any]:
        """What changed since the last delta (see :meth:`BudgetRule.delta`)."""
        return {"last": changes(self._last, set(self._changed)),
                "firing": changes(self._firing, self._changed, _condition_dict)}

    @staticmethod
    def apply_delta(data: dict[str, Any], delta: Mapping[str, Any]) -> None:
        """Bring ``data`` (a :meth:`to_dict`) to the state after ``delta``."""
        merge_changes(data["last"], delta["last"])
        merge_changes(data["firing"], delta["firing"])

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], config: SilentAgentConfig = SilentAgentConfig()
    ) -> SilentAgentRule:
        """The rule in the state :meth:`to_dict` described, with the current configuration."""
        rule = cls(config)
        rule._last = {agent: dict(last) for agent, last in data["last"].items()}
        rule._firing = _conditions_from_dict(data["firing"])
        return rule


# ---------------------------------------------------------------------------------- stuck task

#: Time a task may run per queue before it counts as stuck, in seconds.
#: The same queue SLAs the ClickHouse stuck-task query uses: one definition for both.
DEFAULT_TASK_SLA_S: Mapping[str, float] = DEFAULT_SLA_SECONDS

_TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: The statuses that move a task in :class:`StuckTaskRule`.
_MOVES = _TERMINAL | {"started"}


@dataclass(frozen=True)
class StuckTaskConfig:
    """Settings of :class:`StuckTaskRule`."""

    #: SLA per queue in seconds, over :data:`DEFAULT_TASK_SLA_S`; an unknown queue gets the
    #: ``normal`` queue's.
    sla_s: Mapping[str, float] = field(default_factory=dict)
    #: A task running this long with no news is forgotten (its stuck alert resolves, saying so).
    forget_after_ms: int = FORGET_AFTER_MS

    def sla_ms(self, queue: str) -> int:
        """The SLA of ``queue`` in milliseconds."""
        sla_s = {**DEFAULT_TASK_SLA_S, **self.sla_s}
        return round(1000 * sla_s.get(queue, sla_s["normal"]))


class StuckTaskRule:
    """Started tasks with no terminal status within their queue's SLA, judged on :meth:`tick`.

    A task stuck on ``high_priority`` is critical, elsewhere a warning. It resolves when the
    task completes, fails, is cancelled or starts another attempt; a task that ran for
    ``forget_after_ms`` with none of these (its agent died with it) is forgotten: its alert
    resolves as forgotten, and a late terminal event of it changes nothing.
    """

    def __init__(self, config: StuckTaskConfig = StuckTaskConfig()) -> None:
        longest = max(config.sla_ms(queue) for queue in {*DEFAULT_TASK_SLA_S, *config.sla_s})
        if config.forget_after_ms <= longest:
            raise ValueError(f"[stuck_task] forget_after_seconds must be more than the longest SLA ({longest / 1000:g} s)")
        self.config = config
        # task_id -> the running attempt: started_ms, attempt, queue, agent_id, agent_type,
        # tenant_id, trace_id
        self._running: dict[str, dict[str, Any]] = {}
        self._firing: dict[str, _Condition] = {}
        # Tasks whose entries changed since the last delta() (in _running, _firing or both).
        self._changed: set[str] = set()

    def observe(self, event: TaskEvent) -> list[Alert]:
        """Track a started task, forget a finished one; resolves a stuck one that moved on."""
        return self._step(event.task_id, event.status, epoch_ms(event.event_time), event.attempt, lambda: {
            "queue": event.queue, "agent_id": event.agent_id, "agent_type": event.agent_type,
            "tenant_id": event.tenant_id, "trace_id": event.trace_id})

    def observe_batch(self, events: Batch) -> list[tuple[int, Alert]]:
        """:meth:`observe` of each event, a task at a time: (event index, alert) in the order one
        at a time would give them. Only starts and ends move a task: the others are left out
        before any is read."""
        if not events.n:
            return []
        moves = np.flatnonzero(events.is_in("status", _MOVES))
        if not len(moves):
            return []
        tasks, task_ids = events.codes("task_id")
        statuses, status_values = events.codes("status")
        attempts = events.numbers("attempt")
        fields = [(name, *events.codes(name)) for name in ("queue", "agent_id", "agent_type", "tenant_id", "trace_id")]
        at = events.at
        order, lo, hi = groups(tasks[moves])
        taken = moves[order].tolist()
        found: list[tuple[int, Alert]] = []
        for a, b in zip(lo.tolist(), hi.tolist()):
            task_id = task_ids[tasks[taken[a]]]
            for i in taken[a:b]:
                found += [(i, alert) for alert in self._step(
                    task_id, status_values[statuses[i]], int(at[i]), int(attempts[i]),
                    lambda i=i: {name: values[codes[i]] for name, codes, values in fields})]
        found.sort(key=lambda item: item[0])
        return found

    def _step(self, task_id: str, status: str, at: int, attempt: int, details: Callable[[], dict[str, Any]]) -> list[Alert]:
        """One event of a task: ``details()`` gives its queue, agent, tenant and trace."""
        running = self._running.get(task_id)
        if status == "started":
            # A redelivered start must not restart the SLA clock.
            if running is not None and running["attempt"] == attempt:
                return []
            self._changed.add(task_id)
            self._running[task_id] = {"started_ms": at, "attempt": attempt, **details()}
            outcome = f"started attempt {attempt}"
        elif status in _TERMINAL and running is not None:
            del self._running[task_id]
            self._changed.add(task_id)
            outcome = status
        else:
            return []
        condition = self._firing.pop(task_id, None)
        if condition is None or running is None:
            return []
        ran = at - running["started_ms"]
        return [
            condition.alert(
                "resolved",
                at_ms=at,
                message=f"task {task_id} {outcome} after {_duration_text(ran)}",
                value=ran / 1000,
                threshold=self.config.sla_ms(running["queue"]) / 1000,
                window=(running["started_ms"], at),
            )
        ]

    def tick(self, now_ms: int) -> list[Alert]:
        """The tasks ``now_ms`` (wall clock) finds past their SLA."""
        alerts: list[Alert] = []
        for task_id, running in sorted(self._running.items()):
            ran = now_ms - running["started_ms"]
            sla = self.config.sla_ms(running["queue"])
            if task_id in self._firing or ran < sla:
                continue
            self._changed.add(task_id)
            condition = self._firing[task_id] = _Condition(
                alert_id=alert_id("stuck_task", task_id, str(running["attempt"])),
                kind="stuck_task",
                severity="critical" if running["queue"] == "high_priority" else "warning",
                subject=task_id,
                agent_id=running["agent_id"],
                agent_type=running["agent_type"],
                tenant_id=running["tenant_id"],
                trace_id=running["trace_id"],
                first_seen_ms=now_ms,
                last_seen_ms=now_ms,
                details={"queue": running["queue"], "attempt": str(running["attempt"])},
            )
            alerts.append(
                condition.alert(
                    "firing",
                    at_ms=now_ms,
                    message=(
                        f"task {task_id} on {running['queue']} (attempt {running['attempt']}) "
                        f"running for {_duration_text(ran)} without finishing, SLA "
                        f"{_duration_text(sla)}"
                    ),
                    value=ran / 1000,
                    threshold=sla / 1000,
                    window=(running["started_ms"], now_ms),
                )
            )
        forget_before = now_ms - self.config.forget_after_ms
        for task_id in sorted(task for task, running in self._running.items()
                              if running["started_ms"] <= forget_before):
            running = self._running.pop(task_id)
            condition = self._firing.pop(task_id)  # fired above, if not before
            self._changed.add(task_id)
            alerts.append(_forgotten(
                condition, running["started_ms"], now_ms, self.config.forget_after_ms,
                f"task {task_id} on {running['queue']} (attempt {running['attempt']}): no news for "
                f"{_duration_text(now_ms - running['started_ms'])}; forgotten after "
                f"{_duration_text(self.config.forget_after_ms)}"))
        return alerts

    def size(self) -> int:
        """Entries held: running tasks and firing conditions."""
        return len(self._running) + len(self._firing)

    def to_dict(self) -> dict[str, Any]:
        """The rule's state as a JSON-friendly dict."""
        return {
            "running": {task: dict(running) for task, running in self._running.items()},
            "firing": _conditions_to_dict(self._firing),
        }

    def delta(self) -> dict[str, Any]:
        """What changed since the last delta (see :meth:`BudgetRule.delta`)."""
        return {"running": changes(self._running, set(self._changed)),
                "firing": changes(self._firing, self._changed, _condition_dict)}

    @staticmethod
    def apply_delta(data: dict[str, Any], delta: Mapping[str, Any]) -> None:
        """Bring ``data`` (a :meth:`to_dict`) to the state after ``delta``."""
        merge_changes(data["running"], delta["running"])
        merge_changes(data["firing"], delta["firing"])

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], config: StuckTaskConfig = StuckTaskConfig()
    ) -> StuckTaskRule:
        """The rule in the state :meth:`to_dict` described, with the current configuration."""
        rule = cls(config)
        rule._running = {task: dict(running) for task, running in data["running"].items()}
        rule._firing = _conditions_from_dict(data["firing"])
        return rule
