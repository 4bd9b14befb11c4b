"""ClickHouse for the local stack: the embedded chDB engine needs nothing started."""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlsplit

from connectors.clickhouse import is_embedded
from connectors.settings import Settings


class ClickHouseEngine:
    """Reports on ``EZ_CLICKHOUSE_DSN``: the embedded folder, or a server's /ping."""

    name = "clickhouse"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def address(self) -> str:
        return self.settings.clickhouse_dsn_redacted

    def healthy(self) -> bool:
        if is_embedded(self.settings):
            # Nothing to ping: the engine is a library. Healthy = it is installed and its data
            # folder can be written (the worker that opens it serves the queries).
            import importlib.util
            import os
            from pathlib import Path

            folder = Path(self.settings.clickhouse_dsn.get_secret_value()[len("chdb://"):])
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            return importlib.util.find_spec("chdb") is not None and os.access(folder, os.W_OK)
        parts = urlsplit(self.settings.clickhouse_dsn.get_secret_value())
        scheme = "https" if parts.scheme in ("https", "clickhouses") else "http"
        port = parts.port or (8443 if scheme == "https" else 8123)
        try:
            with urllib.request.urlopen(f"{scheme}://{parts.hostname}:{port}/ping", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def up(self) -> str:
        if is_embedded(self.settings):
            path = self.settings.clickhouse_dsn.get_secret_value()[len("chdb://"):]
            from pathlib import Path

            Path(path).mkdir(parents=True, exist_ok=True)
            return "embedded (opened by the process that uses it)"
        return "server (not managed by infra/local)"

    def down(self) -> bool:
        return False
