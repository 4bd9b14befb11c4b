"""SQL on the embedded ClickHouse engine while a worker holds it.

chDB opens one engine per data folder per process, so the worker that writes ClickHouse also
answers queries: a small HTTP endpoint on a loopback port, announced in
``$EZ_HOME/run/clickhouse-query.json`` with a random token. :func:`query` uses it when such a
worker runs and opens the engine itself otherwise (or talks to the server for a server DSN).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import os
import secrets
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import mode

from connectors.clickhouse import get_client, is_embedded
from connectors.errors import TerminalError, TransientError
from connectors.settings import Settings

log = logging.getLogger(__name__)


def announcement(settings: Settings) -> Path:
    """Where the engine-owning worker announces its query endpoint."""
    return settings.run_dir / "clickhouse-query.json"


def run_query(settings: Settings, sql: str) -> tuple[list[str], list[list[Any]]]:
    """Run ``sql`` on this process's client: column names and rows.

    :raises TerminalError: ClickHouse rejected it (the message says why); an unknown project
        database is reported the same way.
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
        result = client.query(sql)
    except ClickHouseError as exc:
        raise TerminalError(f"ClickHouse rejected the query: {_first_line(exc)}") from None
    return list(result.column_names), [list(row) for row in result.result_rows]


def query(settings: Settings, sql: str, timeout_s: float = 300.0) -> tuple[list[str], list[list[Any]]]:
    """Run ``sql`` where the engine is: through the owning worker, or here."""
    if is_embedded(settings):
        endpoint = _live_endpoint(settings)
        if endpoint is not None:
            return _remote(endpoint, sql, timeout_s)
    return run_query(settings, sql)


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
        raise TerminalError(body.get("error", f"query failed with HTTP {exc.code}")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransientError(f"the worker serving ClickHouse queries did not answer: {exc}") from None
    return body["columns"], body["rows"]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


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
                try:
                    sql = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))["sql"]
                    columns, rows = run_query(settings, sql)
                except TerminalError as exc:
                    return self._reply(400, {"error": str(exc)})
                except (ValueError, KeyError):
                    return self._reply(400, {"error": "expected a JSON body with 'sql'"})
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
        path = announcement(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "pid": os.getpid(), "port": self._server.server_address[1], "token": token,
            "dsn": settings.clickhouse_dsn.get_secret_value(),
        }))
        tmp.chmod(0o600)
        tmp.replace(path)

    async def on_stop(self) -> None:
        announcement(self.settings).unlink(missing_ok=True)
        if self._server is not None:
            self._server.shutdown()
