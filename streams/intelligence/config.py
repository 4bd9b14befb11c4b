"""Settings of the alert rules and windows: defaults, overridden by ``EZ_ALERTS_CONFIG_FILE``.

The file is TOML; every section and key is optional, and an unknown one is an error that names
it (a typo must not silently keep a default)::

    [windows]
    size_seconds = 60        # tumbling window length
    grace_seconds = 10       # late events within this still update their window
    idle_seconds = 15        # a stream quiet this long closes its windows on the wall clock

    [budget]
    grace_seconds = 300      # calls this long after midnight still count for the day before
    forecast_window_seconds = 1800     # the burn rate of the forecast: spend of this recent window
    forecast_min_elapsed_seconds = 300 # none before a tenant or agent spent for five minutes
    forecast_resolve_ratio = 0.9       # a forecast resolves when the projection falls below 90%

    [error_rate]
    window_seconds = 60
    bucket_seconds = 10
    fire_rate = 0.2
    resolve_rate = 0.1
    min_calls = 20
    forget_after_seconds = 604800  # a firing provider/model with no call this long is forgotten

    [rate_limit_storm]
    window_seconds = 60
    bucket_seconds = 10
    fire_count = 20
    resolve_count = 5

    [silent_agent]
    silent_after_seconds = 120
    forget_after_seconds = 604800  # an agent silent this long is forgotten

    [stuck_task]
    forget_after_seconds = 604800  # a task running this long with no news is forgotten

    [stuck_task.sla_seconds]  # per queue, over the defaults of the ClickHouse stuck-task query
    high_priority = 60

What the rules keep is bounded: days of spend go when the day is over, sliding counts when they
leave their window, windows when they close, and agents, tasks and firing conditions with no news
for their ``forget_after_seconds`` (a week by default; firing alerts resolve, saying so).

Budgets are the ones of ``EZ_BUDGETS_FILE`` (shared with the daily cost report).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.errors import ConfigError
from connectors.settings import Settings
from streams.intelligence.alerts import (
    BudgetConfig,
    Budgets,
    ErrorRateConfig,
    ErrorRateRule,
    RateLimitStormConfig,
    RateLimitStormRule,
    SilentAgentConfig,
    SilentAgentRule,
    StuckTaskConfig,
    StuckTaskRule,
)
from streams.intelligence.windows import WindowStore


@dataclass(frozen=True)
class WindowConfig:
    """Tumbling windows of LLM calls."""

    size_ms: int = 60_000
    grace_ms: int = 10_000
    #: A stream with no new call for this long closes its due windows on the wall clock.
    idle_ms: int = 15_000


@dataclass(frozen=True)
class IntelligenceConfig:
    """Everything the alerts role needs besides the Kafka settings."""

    windows: WindowConfig = WindowConfig()
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(Budgets()))
    error_rate: ErrorRateConfig = ErrorRateConfig()
    rate_limit_storm: RateLimitStormConfig = RateLimitStormConfig()
    silent_agent: SilentAgentConfig = SilentAgentConfig()
    stuck_task: StuckTaskConfig = StuckTaskConfig()


# section -> key -> (target field, unit factor, type)
_SECTIONS: dict[str, dict[str, tuple[str, int, type]]] = {
    "windows": {
        "size_seconds": ("size_ms", 1000, int),
        "grace_seconds": ("grace_ms", 1000, int),
        "idle_seconds": ("idle_ms", 1000, int),
    },
    "budget": {
        "grace_seconds": ("grace_ms", 1000, int),
        "forecast_window_seconds": ("forecast_window_ms", 1000, int),
        "forecast_min_elapsed_seconds": ("forecast_min_elapsed_ms", 1000, int),
        "forecast_resolve_ratio": ("forecast_resolve_ratio", 1, float),
    },
    "error_rate": {
        "window_seconds": ("window_ms", 1000, int),
        "bucket_seconds": ("bucket_ms", 1000, int),
        "fire_rate": ("fire_rate", 1, float),
        "resolve_rate": ("resolve_rate", 1, float),
        "min_calls": ("min_calls", 1, int),
        "forget_after_seconds": ("forget_after_ms", 1000, int),
    },
    "rate_limit_storm": {
        "window_seconds": ("window_ms", 1000, int),
        "bucket_seconds": ("bucket_ms", 1000, int),
        "fire_count": ("fire_count", 1, int),
        "resolve_count": ("resolve_count", 1, int),
    },
    "silent_agent": {
        "silent_after_seconds": ("silent_after_ms", 1000, int),
        "forget_after_seconds": ("forget_after_ms", 1000, int),
    },
}


def _number(path: Path, name: str, value: Any, factor: int, kind: type) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"alerts config {path}: {name} must be a number >= 0, got {value!r}")
    if kind is int and factor == 1 and value != int(value):
        raise ConfigError(f"alerts config {path}: {name} must be a whole number, got {value!r}")
    scaled = value * factor
    return round(scaled) if kind is int else float(scaled)


def _section(path: Path, data: Mapping[str, Any], name: str) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"alerts config {path}: [{name}] must be a table")
    keys = _SECTIONS[name]
    unknown = sorted(set(section) - set(keys))
    if unknown:
        raise ConfigError(f"alerts config {path}: unknown key(s) {unknown} in [{name}] (known: {sorted(keys)})")
    return {
        keys[key][0]: _number(path, f"{name}.{key}", value, keys[key][1], keys[key][2])
        for key, value in section.items()
    }


def load_config(settings: Settings) -> IntelligenceConfig:
    """The configuration from settings: budgets file and alerts config file, both optional."""
    budgets = Budgets.load(settings.budgets_file) if settings.budgets_file else Budgets()
    path = settings.alerts_config_file
    data: Mapping[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"EZ_ALERTS_CONFIG_FILE: {path}: {exc}") from exc
        unknown = sorted(set(data) - set(_SECTIONS) - {"stuck_task"})
        if unknown:
            raise ConfigError(f"alerts config {path}: unknown section(s) {unknown}")
    stuck = data.get("stuck_task", {})
    unknown = sorted(set(stuck) - {"sla_seconds", "forget_after_seconds"})
    if unknown:
        raise ConfigError(f"alerts config {path}: unknown key(s) {unknown} in [stuck_task]")
    sla = {
        queue: float(_number(path, f"stuck_task.sla_seconds.{queue}", seconds, 1, float))
        for queue, seconds in stuck.get("sla_seconds", {}).items()
    }
    stuck_forget = ({"forget_after_ms": _number(path, "stuck_task.forget_after_seconds",
                                                stuck["forget_after_seconds"], 1000, int)}
                    if "forget_after_seconds" in stuck else {})
    try:
        config = IntelligenceConfig(
            windows=WindowConfig(**_section(path, data, "windows")),
            budget=BudgetConfig(budgets, **_section(path, data, "budget")),
            error_rate=ErrorRateConfig(**_section(path, data, "error_rate")),
            rate_limit_storm=RateLimitStormConfig(**_section(path, data, "rate_limit_storm")),
            silent_agent=SilentAgentConfig(**_section(path, data, "silent_agent")),
            stuck_task=StuckTaskConfig(sla_s=sla, **stuck_forget),
        )
        # The rules check their own consistency (e.g. resolve above fire): fail here, at start.
        ErrorRateRule(config.error_rate)
        RateLimitStormRule(config.rate_limit_storm)
        SilentAgentRule(config.silent_agent)
        StuckTaskRule(config.stuck_task)
        WindowStore(size_ms=config.windows.size_ms, grace_ms=config.windows.grace_ms)
        return config
    except ValueError as exc:
        raise ConfigError(f"alerts config {path}: {exc}") from exc
