"""ClickHouse: clients for the embedded engine (``chdb://``) and for servers (``http(s)://``).

Both speak the same SQL through the same clickhouse-connect client API. The embedded engine
allows one engine per data folder per process, so a process keeps one client per DSN.
"""

from __future__ import annotations

import threading
from typing import Any

from connectors.errors import TransientError
from connectors.settings import Settings, redact_url

_clients: dict[str, Any] = {}
_lock = threading.Lock()


def is_embedded(settings: Settings) -> bool:
    """Whether the DSN names the embedded chDB engine."""
    return settings.clickhouse_dsn.get_secret_value().startswith("chdb:")


def get_client(settings: Settings):
    """The process-wide clickhouse-connect client for ``EZ_CLICKHOUSE_DSN``."""
    dsn = settings.clickhouse_dsn.get_secret_value()
    with _lock:
        client = _clients.get(dsn)
        if client is None:
            client = _connect(dsn)
            _clients[dsn] = client
        return client


def _connect(dsn: str):
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import ClickHouseError

    if dsn.startswith("chdb://"):
        from pathlib import Path

        Path(dsn[len("chdb://"):]).mkdir(parents=True, exist_ok=True)
    try:
        return clickhouse_connect.get_client(dsn=dsn)
    except (ClickHouseError, OSError) as exc:
        # The driver's message may quote the DSN: name the redacted one instead.
        raise TransientError(
            f"ClickHouse at {redact_url(dsn)} is not reachable ({type(exc).__name__})"
        ) from None
