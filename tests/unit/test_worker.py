"""Worker roles and the failpoint switch, without services."""

from __future__ import annotations

import pytest

from connectors.errors import ConfigError
from connectors.errors import TransientError
from connectors.failpoints import _parse, _Point
from streams.worker import ROLES, parse_roles


def test_roles_default_to_all_and_keep_order():
    assert parse_roles(None) == list(ROLES)
    assert parse_roles("clickhouse, lake,clickhouse") == ["clickhouse", "lake"]


@pytest.mark.parametrize("only", ["lakes", ",", "lake,alerting"])
def test_unknown_role_is_named(only):
    with pytest.raises(ConfigError, match="--only"):
        parse_roles(only)


def test_failpoint_spec():
    assert _parse("lake.before_write=3, clickhouse.after_record") == {
        "lake.before_write": _Point(3), "clickhouse.after_record": _Point(1)}
    assert _parse("clickhouse.replay_partial=1:term,clickhouse.before_record=2:fail*5") == {
        "clickhouse.replay_partial": _Point(1, "term"), "clickhouse.before_record": _Point(2, "fail", 5)}
    assert _parse("") == {}


def test_a_fail_failpoint_raises_transient_errors_on_its_passes_only(monkeypatch):
    from connectors import failpoints

    monkeypatch.setattr(failpoints, "_armed", _parse("x=2:fail*2"))
    monkeypatch.setattr(failpoints, "_passes", failpoints.Counter())
    outcomes = []
    for _ in range(5):
        try:
            outcomes.append(failpoints.failpoint("x"))
        except TransientError:
            outcomes.append("failed")
    assert outcomes == [False, "failed", "failed", False, False]
    assert failpoints.failpoint("not armed") is False
