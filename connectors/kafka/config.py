"""librdkafka configuration built from :class:`~connectors.settings.Settings`.

Security settings pass through as they are; nothing here logs or formats a secret.
"""

from __future__ import annotations

from typing import Any

from connectors.errors import ConfigError
from connectors.settings import Settings

#: What every producer of the project sets, so that an acknowledged message is on the broker.
#: One request in flight per connection: with more, librdkafka sends a partition's next batch
#: before the first is answered, and when the first is refused with a retriable error (NOT_LEADER
#: just after a topic is created or a leader moves) while the next is taken, it counts the first
#: as "implicitly acknowledged" by the next one's success (offset unknown). A broker accepts any
#: sequence number from a producer id it holds no state for on that partition, so the first batch
#: was never written: acknowledged messages lost. Seen here 3 times in 100 rounds of producing
#: right after creating topics (bench/produce_after_create.py); confluent-kafka-go#921 is the same
#: loss. Localhost throughput was not lower with 1 (260,000-460,000 messages/s either way).
EXACT_DELIVERY: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "max.in.flight.requests.per.connection": 1,
}


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


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """:func:`client_config` for a producer, with :data:`EXACT_DELIVERY` applied.

    :raises ConfigError: ``EZ_KAFKA_EXTRA`` or ``overrides`` weaken one of them (it names which).
    """
    for origin, given in (("EZ_KAFKA_EXTRA", settings.kafka_extra), ("producer overrides", overrides)):
        for key, wanted in EXACT_DELIVERY.items():
            if key in given and _normal(given[key]) not in _ACCEPTED[key]:
                raise ConfigError(
                    f"{origin} sets {key}={given[key]}: producers need {key}={wanted} so that an "
                    "acknowledged message is on the broker (see connectors/kafka/config.py)")
    return client_config(settings, **{**overrides, **EXACT_DELIVERY})


_ACCEPTED = {"enable.idempotence": {"true"}, "acks": {"all", "-1"}, "max.in.flight.requests.per.connection": {"1"}}


def _normal(value: Any) -> str:
    return str(value).strip().lower()
