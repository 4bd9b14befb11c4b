"""The Faust application, configured from :class:`~connectors.settings.Settings`."""

from __future__ import annotations

from typing import Any

import faust

from connectors.errors import ConfigError
from connectors.settings import KafkaSecurityProtocol, Settings


def create_app(settings: Settings, app_id: str = "ezstream", **options: Any) -> faust.App:
    """A Faust app on the configured brokers; ``options`` pass through to :class:`faust.App`."""
    if settings.kafka_security_protocol is not KafkaSecurityProtocol.PLAINTEXT:
        # The stream workers speak plaintext only for now; the SDK and CLI pass every
        # security setting through to librdkafka already.
        raise ConfigError(
            f"EZ_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol.value} is not supported "
            "by the stream workers yet; use PLAINTEXT"
        )
    datadir = settings.home / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    defaults: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        "store": "memory://",
        "web_enabled": False,
        "datadir": str(datadir),
        "topic_replication_factor": settings.topic_replication,
        "topic_partitions": settings.topic_partitions,
    }
    return faust.App(app_id, **{**defaults, **options})
