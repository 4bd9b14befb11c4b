"""The Faust application, configured from :class:`~connectors.settings.Settings`."""

from __future__ import annotations

import ssl
from typing import Any

import faust
from faust.types.auth import SASLMechanism

from connectors.errors import ConfigError
from connectors.settings import KafkaSecurityProtocol, Settings


def create_app(settings: Settings, app_id: str = "ezstream", **options: Any) -> faust.App:
    """A Faust app on the configured brokers; ``options`` pass through to :class:`faust.App`."""
    datadir = settings.home / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    defaults: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        "store": "memory://",
        "web_enabled": False,
        "datadir": str(datadir),
        "topic_replication_factor": settings.topic_replication,
        "topic_partitions": settings.topic_partitions,
        # A worker killed with -9 holds its group membership until this expires, and its
        # replacement starts no role before: 10 s, as the sink loops' own consumers (Faust's
        # default is 60 s).
        "broker_session_timeout": 10.0,
    }
    credentials = broker_credentials(settings)
    if credentials is not None:
        defaults["broker_credentials"] = credentials
    return faust.App(app_id, **{**defaults, **options})


def broker_credentials(settings: Settings) -> Any:
    """Faust (aiokafka) credentials from the same settings librdkafka uses; None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol is KafkaSecurityProtocol.PLAINTEXT:
        return None
    context = _ssl_context(settings) if protocol in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL) else None
    if protocol is KafkaSecurityProtocol.SSL:
        return faust.SSLCredentials(context)
    mechanism = settings.kafka_sasl_mechanism
    if mechanism is None or mechanism.value not in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}:
        raise ConfigError(
            "EZ_KAFKA_SASL_MECHANISM: the stream workers support PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, "
            f"got {mechanism.value if mechanism else 'nothing'}"
        )
    if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
        raise ConfigError(
            f"EZ_KAFKA_SASL_USERNAME and EZ_KAFKA_SASL_PASSWORD are required with {protocol.value}"
        )
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        mechanism=SASLMechanism(mechanism.value),
        ssl_context=context,
    )


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the broker against EZ_KAFKA_SSL_CA_LOCATION (system CAs when unset); mutual TLS with
    the client certificate settings when given."""
    ca = settings.kafka_ssl_ca_location
    if ca is not None and not ca.is_file():
        raise ConfigError(f"EZ_KAFKA_SSL_CA_LOCATION: {ca} is not a file")
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if settings.kafka_ssl_certificate_location is not None:
        key = settings.kafka_ssl_key_location
        password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            str(settings.kafka_ssl_certificate_location),
            keyfile=str(key) if key is not None else None,
            password=password.get_secret_value() if password is not None else None,
        )
    return context
