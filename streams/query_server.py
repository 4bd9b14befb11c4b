"""SQL on the embedded ClickHouse engine while a worker holds it.

chDB opens one engine per data folder per process, so the worker that writes ClickHouse also
answers queries: a small HTTP endpoint on a loopback port, announced in
``$EZ_HOME/run/clickhouse-query.json`` (mode 0600 from its creation) with a random token.
:func:`query` uses it when such a worker runs and opens the engine itself otherwise (or talks to
the server for a server DSN).

Queries are read-only, wherever they run (:func:`run_query`):

- one statement, a ``SELECT``/``WITH``, ``SHOW``, ``DESCRIBE`` or ``EXPLAIN``, without
  ``INTO OUTFILE``; ClickHouse's own parser (``formatQuery``, ``EXPLAIN AST``) decides, so
  comments, case and quoting cannot disguise a statement;
- it runs with the ClickHouse setting ``readonly = 1`` on that query alone (the client is shared
  with the ClickHouse sink, which writes through it): no writes, no DDL, no ``SET``, no settings;
- only the table functions in :data:`ALLOWED_TABLE_FUNCTIONS` (generators and views over the
  engine's own tables); the others reach outside the database (``file``, ``url``, ``s3``,
  ``remote``, ``cluster``, ``executable``, chDB's ``python``, ...) and are refused wherever they
  appear, as is the scalar ``file()``, which ``readonly`` does not stop.

A value Python cannot hold (a ``DateTime64`` past the year 9999) does not fail the query: the
result then comes as ClickHouse renders it in JSON, dates and times as text.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import mode

from connectors.clickhouse import get_client, is_embedded
from connectors.errors import TerminalError, TransientError
from connectors.settings import Settings

log = logging.getLogger(__name__)

#: Table functions a query may use: generators and views over the engine's own tables. Each is one
#: that ClickHouse itself allows under ``readonly = 1`` (``zeros`` and ``loop`` it refuses).
ALLOWED_TABLE_FUNCTIONS = frozenset({
    "numbers", "numbers_mt", "generateRandom", "generateSeries", "generate_series", "primes",
    "values", "null", "view", "merge",
})

#: Scalar functions that reach outside the database under another name than a table function's
#: (``file()`` is both, and refused as both): ``hasColumnInTable`` connects to the host it is given.
_OUTSIDE_SCALAR_FUNCTIONS = frozenset({"hascolumnintable"})

#: ``format()`` is the ordinary string function as well as a table function that parses its own
#: literal argument; neither reaches outside.
_SCALAR_TOO = frozenset({"format"})

#: ``EXPLAIN AST`` names of the statements a query may be; any ``Show...`` statement too.
_READ_STATEMENTS = frozenset({"SelectWithUnionQuery", "SelectIntersectExceptQuery", "DescribeQuery", "Explain"})

#: The first word of those statements as ClickHouse formats them (``DESC`` becomes ``DESCRIBE``).
_READ_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "EXPLAIN"})

_READ_ONLY_HINT = "run SELECT, WITH, SHOW, DESCRIBE or EXPLAIN"

#: Per query, never on the shared client: the sink writes through the same client.
_READ_ONLY = {"readonly": 1}


def announcement(settings: Settings) -> Path:
    """Where the engine-owning worker announces its query endpoint."""
    return settings.run_dir / "clickhouse-query.json"


def run_query(settings: Settings, sql: str) -> tuple[list[str], list[list[Any]]]:
    """Run ``sql`` read-only on this process's client: column names and rows.

    :raises TerminalError: the statement is not a read-only one (see the module's docstring), or
        ClickHouse rejected it (the message says why); an unknown project database is reported
        the same way.
    """
    from clickhouse_connect.driver.exceptions import ClickHouseError

    client = get_client(settings)
    try:
        # Unqualified table names mean the project's database. The client is shared per engine,
        # so say it for every query; the sinks always qualify their names.
        if is_embedded(settings):
            client.command(f"USE {settings.clickhouse_database}")
        else:
            client.database = settings.clickhouse_database
        statement = _read_only_statement(client, sql)
        try:
            result = client.query(statement, settings=_READ_ONLY)
            return list(result.column_names), [list(row) for row in result.result_rows]
        except (ValueError, OverflowError):
            # The driver could not convert a value to Python (a date past 9999): take
            # ClickHouse's own rendering of the whole result instead.
            return _rendered(client, statement)
    except ClickHouseError as exc:
        raise TerminalError(f"ClickHouse rejected the query: {_first_line(exc)}") from None


def _read_only_statement(client: Any, sql: str) -> str:
    """``sql`` as ClickHouse formats it, once its parser shows it is one read-only statement.

    The formatted text is what runs: what was checked is exactly what executes, with no trailing
    ``;`` or comment that the per-query settings clause could be appended after.
    """
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        # The text is a bound parameter, never part of this query's own SQL.
        statement, table_functions = client.query(
            "SELECT formatQuerySingleLine({sql:String}), (SELECT groupArray(name) FROM system.table_functions)",
            parameters={"sql": sql}, settings=_READ_ONLY,
        ).result_rows[0]
    except ClickHouseError as exc:
        message = _first_line(exc).partition(": In scope SELECT formatQuerySingleLine(")[0]
        if "Multi-statements" in message:
            raise TerminalError("ezstream sql runs one statement at a time") from None
        raise TerminalError(f"ClickHouse could not parse the query: {message}") from None
    keyword = statement.split(None, 1)[0].upper() if statement.strip() else ""
    if keyword not in _READ_KEYWORDS and not keyword.startswith("("):
        # A first look, by the formatted text; the AST below decides the rest. It also keeps the
        # statement off the driver's command path (CREATE, SET, KILL, ...), where the chDB driver
        # would SET readonly on the shared session, and a readonly session cannot be set back.
        raise TerminalError(f"ezstream sql is read-only: {keyword} is not allowed; {_READ_ONLY_HINT}")
    # A raw query, so the driver neither takes an EXPLAIN of a statement ending in LIMIT 0 for its
    # column probe nor adds a FORMAT clause; settings inline, for the reason given at _rendered.
    ast = client.raw_query(f"EXPLAIN AST {statement}\nSETTINGS readonly = 1")
    check_read_only(ast.decode(errors="replace").splitlines(), table_functions)
    return statement


def check_read_only(ast: list[str], table_functions: list[str]) -> None:
    """Refuse a statement by its ``EXPLAIN AST`` lines unless it only reads the database.

    ``table_functions`` are the engine's (``system.table_functions``): outside
    :data:`ALLOWED_TABLE_FUNCTIONS`, their names are refused in any position, so ``x IN url(...)``
    or the scalar ``file()`` do not slip through. A name in an alias may hold a line break and so
    add lines of its own; added lines can only make the check refuse more, never less.

    :raises TerminalError: naming the statement or function refused.
    """
    nodes = [(len(line) - len(line.lstrip(" ")), line.split()) for line in ast if line.strip()]
    if not nodes:
        raise TerminalError("ClickHouse could not parse the query")
    allowed = {name.lower() for name in ALLOWED_TABLE_FUNCTIONS}
    outside = ({name.lower() for name in table_functions} - allowed - _SCALAR_TOO) | _OUTSIDE_SCALAR_FUNCTIONS
    kind = nodes[0][1][0]
    if not _is_read_statement(kind):
        raise TerminalError(f"ezstream sql is read-only: a {kind} statement is not allowed; {_READ_ONLY_HINT}")
    for depth, words in nodes[1:]:
        # A string child of the statement itself is the INTO OUTFILE path (TabSeparated escapes its quote).
        if depth == 1 and words[0] == "Literal" and len(words) > 1 and words[1].lstrip("\\").startswith("'"):
            raise TerminalError("ezstream sql is read-only: INTO OUTFILE is not allowed")
        if kind in ("SelectWithUnionQuery", "Explain", "DescribeQuery") and depth == 1 and words[0] == "Identifier":
            # The driver adds its own FORMAT when the statement runs.
            raise TerminalError("a FORMAT clause is not allowed: ezstream sql --format chooses the output")
        if kind == "Explain" and depth == 1 and words[0] not in ("Set", "Identifier", "Literal") \
                and not _is_read_statement(words[0]):
            raise TerminalError(f"ezstream sql is read-only: EXPLAIN of a {words[0]} statement is not allowed")
    latest: dict[int, str] = {}  # the kind of the latest node at each depth: a node's parent
    for depth, words in nodes:
        parent, latest[depth] = latest.get(depth - 1, ""), words[0]
        name = words[1] if len(words) > 1 else ""
        if parent == "TableExpression" and words[0] not in ("TableIdentifier", "Subquery") \
                and not (words[0] == "Function" and name.lower() in allowed):
            raise TerminalError(
                f"ezstream sql reads the project's tables only: table function {name}() is not allowed "
                f"(allowed: {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))})")
        if words[0] == "Function" and name.lower() in outside:
            raise TerminalError(f"ezstream sql reads the project's tables only: {name}() reaches outside the database")


def _is_read_statement(kind: str) -> bool:
    return kind in _READ_STATEMENTS or kind.startswith("Show")


def _rendered(client: Any, statement: str) -> tuple[list[str], list[list[Any]]]:
    # Inline, not as client settings: for raw queries the chDB driver would SET them on the
    # shared session, and a session set to readonly cannot be set back.
    body = json.loads(client.raw_query(f"{statement}\nSETTINGS readonly = 1", fmt="JSONCompact"))
    return [column["name"] for column in body["meta"]], body["data"]


def query(settings: Settings, sql: str, timeout_s: float = 300.0) -> tuple[list[str], list[list[Any]]]:
    """Run ``sql`` read-only where the engine is: through the owning worker (:func:`query_worker`),
    or here."""
    endpoint = _live_endpoint(settings) if is_embedded(settings) else None
    if endpoint is not None:
        return _remote(endpoint, sql, timeout_s)
    return run_query(settings, sql)


def query_worker(settings: Settings, sql: str, timeout_s: float = 300.0) -> tuple[list[str], list[list[Any]]]:
    """Run ``sql`` read-only on the worker that holds this ``EZ_HOME``'s embedded engine (its query
    endpoint, announced in :func:`announcement`): column names and rows, as :func:`run_query` gives
    them. This process never opens the engine: chDB allows one engine per folder, so a long-lived
    caller that held it would keep a worker from starting.

    :raises TransientError: no live worker announces an endpoint for this DSN (none runs with the
        clickhouse role), or it did not answer, or it could not run the query now.
    :raises TerminalError: the worker refused the statement (see the module's docstring) or
        ClickHouse rejected it.
    """
    endpoint = _live_endpoint(settings)
    if endpoint is None:
        raise TransientError(
            "no worker holds the embedded ClickHouse engine of this EZ_HOME: start one with the "
            "clickhouse role (`ezstream worker`, or `make demo`)")
    return _remote(endpoint, sql, timeout_s)


def _live_endpoint(settings: Settings) -> dict | None:
    try:
        info = json.loads(announcement(settings).read_text())
    except (OSError, ValueError):
        return None
    if info.get("dsn") != settings.clickhouse_dsn.get_secret_value():
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return info


def _remote(info: dict, sql: str, timeout_s: float) -> tuple[list[str], list[list[Any]]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{info['port']}/query",
        data=json.dumps({"sql": sql}).encode(),
        headers={"Authorization": f"Bearer {info['token']}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        error = body.get("error", f"query failed with HTTP {exc.code}")
        raise (TransientError if exc.code == 503 else TerminalError)(error) from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransientError(f"the worker serving ClickHouse queries did not answer: {exc}") from None
    return body["columns"], body["rows"]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    # Decimals, UUIDs, IP addresses, durations: their text, as ClickHouse would print them.
    return str(value)


def _sql_of(body: bytes) -> str:
    """The ``sql`` of a request body; ValueError when the body is not ``{"sql": "..."}``."""
    request = json.loads(body)
    sql = request.get("sql") if isinstance(request, dict) else None
    if not isinstance(sql, str):
        raise ValueError("no 'sql' string")
    return sql


class QueryService(mode.Service):
    """Serves queries on the worker's embedded engine until the worker stops."""

    def __init__(self, settings: Settings, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self._server: ThreadingHTTPServer | None = None

    async def on_start(self) -> None:
        settings, token = self.settings, secrets.token_urlsafe(24)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
                if self.headers.get("Authorization") != f"Bearer {token}" or self.path != "/query":
                    return self._reply(403, {"error": "forbidden"})
                # The request and the query fail apart: a result the driver cannot convert is not
                # a bad request.
                try:
                    sql = _sql_of(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                except ValueError:
                    return self._reply(400, {"error": "expected a JSON body with 'sql'"})
                try:
                    columns, rows = run_query(settings, sql)
                except TerminalError as exc:
                    return self._reply(400, {"error": str(exc)})
                except TransientError as exc:
                    return self._reply(503, {"error": str(exc)})
                except Exception as exc:
                    log.exception("query endpoint: the query failed")
                    return self._reply(500, {"error": f"the query failed in the worker ({type(exc).__name__}); "
                                                      "its log has the details"})
                self._reply(200, {"columns": columns, "rows": _jsonable(rows)})

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("query endpoint: " + format, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="clickhouse-query", daemon=True).start()
        _announce(announcement(settings), {
            "pid": os.getpid(), "port": self._server.server_address[1], "token": token,
            "dsn": settings.clickhouse_dsn.get_secret_value(),
        })

    async def on_stop(self) -> None:
        announcement(self.settings).unlink(missing_ok=True)
        if self._server is not None:
            self._server.shutdown()


def _announce(path: Path, info: dict) -> None:
    """Write ``info`` to ``path`` atomically, readable by this user only from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash of an earlier process with this pid
    # O_EXCL: a new file, never one (or a link) someone else put there; 0600 before any byte.
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(info))
    os.replace(tmp, path)
