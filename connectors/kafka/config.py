"""librdkafka configuration built from :class:`~connectors.settings.Settings`.

Security settings pass through as they are; nothing here logs or formats a secret.
"""

from __future__ import annotations

from typing import Any

from connectors.settings import Settings


def client_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Config for a confluent-kafka Producer, Consumer or AdminClient.

    ``overrides`` win over ``EZ_KAFKA_EXTRA``, which wins over the typed settings.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": settings.kafka_security_protocol.value,
    }
    if settings.kafka_sasl_mechanism is not None:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism.value
    if settings.kafka_sasl_username is not None:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    for key, path in (
        ("ssl.ca.location", settings.kafka_ssl_ca_location),
        ("ssl.certificate.location", settings.kafka_ssl_certificate_location),
        ("ssl.key.location", settings.kafka_ssl_key_location),
    ):
        if path is not None:
            config[key] = str(path)
    if settings.kafka_ssl_key_password is not None:
        config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    config.update(settings.kafka_extra)
    config.update(overrides)
    return config
