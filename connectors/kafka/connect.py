"""Reaching the brokers: a start-up check that turns librdkafka's retry loop into a clear error.

librdkafka retries a refused login or a failed TLS handshake forever and only reports it through
the error callback. A process that starts (a worker, ``ezstream produce``) checks the connection
once with :func:`check_connection`: a wrong password or an untrusted certificate then fails at
start with a :class:`~connectors.errors.ConfigError` naming the settings to fix. The messages name
the user and the broker address, never a password.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from connectors.errors import ConfigError, TransientError
from connectors.kafka.config import client_config
from connectors.settings import Settings


class KafkaAuthError(ConfigError):
    """The broker refused the credentials or the TLS handshake: retrying cannot help."""


def auth_error(settings: Settings, error: Any) -> KafkaAuthError | None:
    """The clear error for a librdkafka ``KafkaError`` that means bad credentials or TLS, else None."""
    from confluent_kafka import KafkaError

    code = error.code()
    if code == KafkaError._AUTHENTICATION:
        user = settings.kafka_sasl_username or "(none)"
        mechanism = settings.kafka_sasl_mechanism.value if settings.kafka_sasl_mechanism else "SASL"
        return KafkaAuthError(
            f"Kafka at {settings.kafka_bootstrap} refused the credentials of user {user!r} ({mechanism}): "
            "authentication failed. Check EZ_KAFKA_SASL_USERNAME, EZ_KAFKA_SASL_PASSWORD and "
            "EZ_KAFKA_SASL_MECHANISM."
        )
    if code == KafkaError._SSL:
        reason = error.str().split(": ", 1)[-1]
        return KafkaAuthError(
            f"TLS with Kafka at {settings.kafka_bootstrap} failed: {reason}. Check EZ_KAFKA_SSL_CA_LOCATION "
            "(the CA that signed the broker's certificate) and EZ_KAFKA_SECURITY_PROTOCOL."
        )
    return None


def check_connection(settings: Settings, timeout_s: float = 20.0) -> None:
    """Ask the brokers for metadata once, with the configured security.

    :raises KafkaAuthError: credentials refused, or the TLS handshake failed.
    :raises TransientError: no broker answered within ``timeout_s``.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    found: list[KafkaAuthError] = []
    lock = threading.Lock()

    def on_error(error: Any) -> None:
        problem = auth_error(settings, error)
        if problem is not None:
            with lock:
                found.append(problem)

    admin = AdminClient(client_config(settings, **{"error_cb": on_error, "log_level": 0}))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException:
            admin.poll(0.1)  # serves the error callback
        with lock:
            problem = found[0] if found else None
        if problem is not None:
            while admin.poll(0):  # serve what is queued, so the client goes away quietly
                pass
            admin = None  # released now, not when the traceback is: it would keep reconnecting
            raise problem
        if time.monotonic() >= deadline:
            admin = None
            raise TransientError(
                f"no Kafka broker answered at {settings.kafka_bootstrap} within {timeout_s:.0f} s "
                f"({settings.kafka_security_protocol.value}); is it running? (EZ_KAFKA_BOOTSTRAP)"
            )
