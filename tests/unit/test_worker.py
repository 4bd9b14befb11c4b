"""Worker roles and the failpoint switch, without services."""

from __future__ import annotations

import pytest

from connectors.errors import ConfigError
from connectors.failpoints import _parse
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
        "lake.before_write": 3, "clickhouse.after_record": 1}
    assert _parse("") == {}
