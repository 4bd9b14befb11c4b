"""Test material for the alerts role's state: rules whose conditions all fire, resolve and are
forgotten within a few thousand simulated events."""

from __future__ import annotations

from streams.intelligence.alerts import (BudgetConfig, Budgets, RateLimitStormConfig, SilentAgentConfig,
                                         StuckTaskConfig)
from streams.intelligence.config import IntelligenceConfig, WindowConfig


def busy_config() -> IntelligenceConfig:
    """Small budgets, short silences and SLAs, storms from 5 rate-limited calls, one-minute windows."""
    return IntelligenceConfig(
        budget=BudgetConfig(Budgets(tenant_daily_usd=20.0, agent_daily_usd=0.5)),
        silent_agent=SilentAgentConfig(silent_after_ms=20_000, forget_after_ms=600_000),
        stuck_task=StuckTaskConfig(sla_s={"normal": 30, "high_priority": 10, "batch": 60, "background": 60},
                                   forget_after_ms=900_000),
        rate_limit_storm=RateLimitStormConfig(fire_count=5, resolve_count=1),
        windows=WindowConfig(size_ms=60_000, grace_ms=5_000, idle_ms=10_000))
