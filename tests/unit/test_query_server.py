"""The query endpoint's pure parts: the read-only check on ``EXPLAIN AST`` lines, the request
body, JSON values and the announcement file. The engine's side is in
tests/integration/test_query_readonly.py."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import stat
from decimal import Decimal

import pytest

from connectors.errors import TerminalError, TransientError
from connectors.settings import load_settings
from streams import query_server
from streams.query_server import check_read_only

#: Part of the engine's system.table_functions.
TABLE_FUNCTIONS = ["file", "url", "s3", "remote", "cluster", "python", "numbers", "merge", "format", "zeros"]


def ast(text: str) -> list[str]:
    """``EXPLAIN AST`` lines as the engine prints them (indented by depth)."""
    return text.strip("\n").splitlines()


def select_from(function: str) -> list[str]:
    return ast(f"""
SelectWithUnionQuery (children 2)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function {function} (children 1)
       ExpressionList (children 1)
        Literal UInt64_3
 Set
""")


def test_a_select_over_tables_and_allowed_table_functions_passes():
    check_read_only(select_from("numbers"), TABLE_FUNCTIONS)
    check_read_only(select_from("merge"), TABLE_FUNCTIONS)


@pytest.mark.parametrize("function", ["file", "URL", "python", "zeros", "somethingNew"])
def test_any_other_table_function_is_refused(function):
    with pytest.raises(TerminalError, match=f"table function {function}\\(\\) is not allowed"):
        check_read_only(select_from(function), TABLE_FUNCTIONS)


def test_a_table_functions_name_is_refused_as_a_scalar_too_but_format_is_not():
    scalar = """
SelectWithUnionQuery (children 2)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Function {name} (children 1)
     ExpressionList (children 1)
      Literal '/etc/passwd'
 Set
"""
    with pytest.raises(TerminalError, match="File\\(\\) reaches outside the database"):
        check_read_only(ast(scalar.format(name="File")), TABLE_FUNCTIONS)
    check_read_only(ast(scalar.format(name="format")), TABLE_FUNCTIONS)


@pytest.mark.parametrize("kind", ["DropQuery", "InsertQuery", "Set", "KillQueryQuery", "ExistsTableQuery"])
def test_only_read_statements_pass(kind):
    with pytest.raises(TerminalError, match=f"a {kind} statement is not allowed"):
        check_read_only([f"{kind} (children 1)", " Identifier t"], TABLE_FUNCTIONS)


def test_show_describe_and_explain_of_a_select_pass():
    check_read_only(["ShowTables (children 2)", " Set", " Set"], TABLE_FUNCTIONS)
    check_read_only(["DescribeQuery (children 2)", " TableExpression (children 1)", "  TableIdentifier d.t"],
                    TABLE_FUNCTIONS)
    check_read_only(["Explain EXPLAIN (children 1)", " SelectWithUnionQuery (children 1)"], TABLE_FUNCTIONS)
    with pytest.raises(TerminalError, match="EXPLAIN of a CreateQuery"):
        check_read_only(["Explain EXPLAIN SYNTAX (children 1)", " CreateQuery d t (children 1)"], TABLE_FUNCTIONS)


def test_into_outfile_and_format_are_refused():
    for path in ("'/tmp/out.txt'", "\\'/tmp/out.txt\\'"):  # as TabSeparated escapes it, and not
        with pytest.raises(TerminalError, match="INTO OUTFILE"):
            check_read_only(["DescribeQuery (children 2)", " TableExpression (children 1)", "  TableIdentifier t",
                             f" Literal {path}"], TABLE_FUNCTIONS)
    with pytest.raises(TerminalError, match="FORMAT clause"):
        check_read_only(["SelectWithUnionQuery (children 2)", " ExpressionList (children 1)", " Set",
                         " Identifier JSON"], TABLE_FUNCTIONS)


def test_lines_an_alias_adds_can_only_refuse_more():
    # SELECT 1 AS `x\nTableExpression`: the engine prints the alias's line break as it is.
    forged = ["SelectWithUnionQuery (children 2)", " ExpressionList (children 1)", "  SelectQuery (children 1)",
              "   ExpressionList (children 1)", "    Literal UInt64_1 (alias x", "TableExpression)",
              " Set"]
    check_read_only(forged, TABLE_FUNCTIONS)
    # Forged lines before a real table function do not change what its parent is.
    real = select_from("file")
    with pytest.raises(TerminalError, match="table function file"):
        check_read_only(forged[:6] + real[5:], TABLE_FUNCTIONS)


def test_a_request_body_is_an_object_with_an_sql_string():
    assert query_server._sql_of(b'{"sql": "SELECT 1"}') == "SELECT 1"
    for body in (b"", b"SELECT 1", b'"SELECT 1"', b'{"query": "SELECT 1"}', b'{"sql": 1}', b"\xff"):
        with pytest.raises(ValueError):
            query_server._sql_of(body)


def test_every_value_becomes_json():
    row = [dt.datetime(2026, 1, 2, 3, 4, 5), dt.date(2026, 1, 2), dt.time(1, 2), Decimal("0.10"),
           ipaddress.ip_address("10.0.0.1"), dt.timedelta(hours=100), b"ab", [1, (2, None)], {1: True}, 1.5, "s"]
    assert json.loads(json.dumps(query_server._jsonable(row))) == [
        "2026-01-02T03:04:05", "2026-01-02", "01:02:00", "0.10", "10.0.0.1", "4 days, 4:00:00", "ab",
        [1, [2, None]], {"1": True}, 1.5, "s"]


def test_the_announcement_is_created_0600_never_wider(tmp_path, monkeypatch):
    opened = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        opened.append((str(path), flags, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    monkeypatch.setattr(os, "open", spy)
    path = tmp_path / "run" / "clickhouse-query.json"
    stale = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    stale.parent.mkdir()
    stale.write_text("from a crash")
    old_umask = os.umask(0)  # nothing narrows the mode it is created with
    try:
        query_server._announce(path, {"token": "t"})
    finally:
        os.umask(old_umask)
    assert [(flags & (os.O_CREAT | os.O_EXCL), mode) for _, flags, mode in opened] == [
        (os.O_CREAT | os.O_EXCL, 0o600)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"token": "t"}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_query_worker_never_opens_the_engine_itself(tmp_path):
    settings = load_settings(home=tmp_path, clickhouse_dsn=f"chdb://{tmp_path}/clickhouse")
    with pytest.raises(TransientError, match="no worker holds the embedded ClickHouse engine"):
        query_server.query_worker(settings, "SELECT 1")
    # An announcement of a process that is gone, or of another engine, is no worker either.
    dead = {"pid": 2 ** 22 + 1, "port": 1, "token": "t", "dsn": settings.clickhouse_dsn.get_secret_value()}
    query_server._announce(query_server.announcement(settings), dead)
    with pytest.raises(TransientError, match="no worker holds"):
        query_server.query_worker(settings, "SELECT 1")
    query_server._announce(query_server.announcement(settings), {**dead, "pid": os.getpid(), "dsn": "chdb:///other"})
    with pytest.raises(TransientError, match="no worker holds"):
        query_server.query_worker(settings, "SELECT 1")
    assert not (tmp_path / "clickhouse").exists()
