"""The producer SDK: validated Avro events to the event topics, keyed by ``agent_id``.

Idempotent (``enable.idempotence``, ``acks=all``), batched by librdkafka (``linger.ms``), with a
delivery callback per message. An invalid event raises :class:`~connectors.kafka.codec.InvalidEvent`
before anything is sent. Free-text fields (the prompt/output snippets of LLM calls) are dropped
unless ``EZ_CAPTURE_SNIPPETS`` is on, and then cut to ``EZ_SNIPPET_MAX_CHARS``, before encoding
(:mod:`connectors.kafka.freetext`). A message the broker did not take is counted and reported at
:meth:`EventProducer.flush` / :meth:`EventProducer.close` as a :class:`DeliveryError`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connectors.errors import TransientError
from connectors.kafka.codec import Codec, default_codec
from connectors.kafka.config import EXACT_DELIVERY, producer_config
from connectors.kafka.connect import KafkaAuthError, auth_error
from connectors.kafka.events import Event
from connectors.kafka.freetext import FreeTextPolicy
from connectors.kafka.schemas import TOPIC_EVENTS
from connectors.kafka.topics import topic_name
from connectors.settings import Settings

#: Producer defaults: exactly-once per partition from the producer side (one request in flight:
#: see :data:`~connectors.kafka.config.EXACT_DELIVERY`), and real batches.
PRODUCER_DEFAULTS: dict[str, Any] = {
    **EXACT_DELIVERY,
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
}


class DeliveryError(TransientError):
    """The broker did not acknowledge some messages; counts per topic and the first errors."""


@dataclass(frozen=True)
class Delivery:
    """What the delivery callback reports for one message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    error: str | None


class EventProducer:
    """Produces typed events (or validated records) to the project's topics.

    :param settings: where the brokers are and how to reach them.
    :param on_delivery: called from :meth:`poll`/:meth:`flush` with a :class:`Delivery` per message.
    :param overrides: librdkafka properties that win over the defaults and ``EZ_KAFKA_EXTRA``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        codec: Codec | None = None,
        on_delivery: Callable[[Delivery], None] | None = None,
        **overrides: Any,
    ) -> None:
        from confluent_kafka import Producer

        self.settings = settings
        self.codec = codec or default_codec()
        self.free_text = FreeTextPolicy.from_settings(settings)
        self._on_delivery = on_delivery
        # The error callback must not hold ``self``: librdkafka's handle would keep the producer
        # alive in a cycle the garbage collector cannot see, reconnecting for ever.
        self._auth_errors: list[KafkaAuthError] = []
        self._producer = Producer(producer_config(
            settings, **{"error_cb": _auth_error_recorder(settings, self._auth_errors),
                         **PRODUCER_DEFAULTS, **overrides}))
        self._topics = {event: topic_name(settings, topic) for topic, event in TOPIC_EVENTS.items()}
        #: Messages queued for sending, per topic.
        self.sent: Counter[str] = Counter()
        #: Messages acknowledged by the broker, per topic.
        self.delivered: Counter[str] = Counter()
        #: Messages the broker did not take, per topic.
        self.failed: Counter[str] = Counter()
        self._errors: list[str] = []

    def send(self, event: Event, *, topic: str | None = None) -> None:
        """Validate, encode and queue one typed event to its topic (or ``topic``)."""
        self.send_record(event.EVENT, event.to_record(), topic=topic)

    def send_record(self, event: str, record: Mapping[str, Any], *, topic: str | None = None) -> None:
        """Validate, encode and queue one record of ``event`` (e.g. ``llm_call``), its free-text
        fields dropped or cut first (see :attr:`free_text`).

        :raises InvalidEvent: the record does not match the schema; nothing was sent.
        """
        record = self.free_text.record(event, record)
        value = self.codec.encode(event, record)
        self.send_encoded(topic or self.topic_for(event), record["agent_id"], value)

    def send_encoded(self, topic: str, key: str | bytes | None, value: bytes) -> None:
        """Queue an already encoded message as it is (no free-text policy: the sinks still apply
        it); waits for room when the local queue is full.

        :raises KafkaAuthError: the broker refused the credentials or the TLS handshake.
        """
        if self.auth_error is not None:
            raise self._refused()
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(0.05)
                if self.auth_error is not None:
                    raise self._refused() from None
        self.sent[topic] += 1
        self._producer.poll(0)

    @property
    def auth_error(self) -> KafkaAuthError | None:
        """Set when the broker refused the credentials or the TLS handshake (librdkafka would retry
        for ever); sending and flushing raise it."""
        return self._auth_errors[0] if self._auth_errors else None

    def _refused(self) -> KafkaAuthError:
        """A new error with the recorded refusal's message. Raising the recorded one would give it
        a traceback holding this producer, and librdkafka's handle holds the callback that holds
        it: a cycle the garbage collector cannot see, so the client would reconnect for ever."""
        error = self._auth_errors[0]
        return type(error)(*error.args)

    def topic_for(self, event: str) -> str:
        """The topic on the broker that carries ``event``."""
        self.codec.reader(event)  # an unknown event raises the ConfigError that lists the known ones
        return self._topics[event]

    def poll(self, timeout_s: float = 0) -> int:
        """Serve pending delivery callbacks; returns how many were served."""
        return self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued message is acknowledged.

        :raises DeliveryError: messages are still queued after ``timeout_s``, or some failed.
        :raises KafkaAuthError: the broker refused the credentials or the TLS handshake; what was
            queued is dropped and counted in :attr:`failed`.
        """
        deadline = time.monotonic() + timeout_s
        remaining = len(self._producer)
        while remaining and self.auth_error is None and time.monotonic() < deadline:
            # Short flushes, so a refused login ends the wait at once instead of at the timeout.
            remaining = self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
        if self.auth_error is not None:
            # Nothing queued can be delivered with refused credentials: each is reported failed,
            # and librdkafka lets go of its delivery callback (which holds this producer).
            self._producer.purge()
            self._producer.poll(0)
            raise self._refused()
        if remaining:
            raise DeliveryError(
                f"{remaining} message(s) not acknowledged by {self.settings.kafka_bootstrap} "
                f"within {timeout_s:.0f} s"
            )
        if self.failed:
            counts = ", ".join(f"{topic}: {n}" for topic, n in sorted(self.failed.items()))
            raise DeliveryError(f"delivery failed for {counts}; first errors: {'; '.join(self._errors[:3])}")

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush; the producer must not be used afterwards."""
        self.flush(timeout_s)

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self.auth_error is None:
            # Deliver what was queued, but let the original error surface.
            self._producer.flush(10)

    def _delivered(self, err, msg) -> None:
        topic = msg.topic()
        if err is None:
            self.delivered[topic] += 1
        else:
            self.failed[topic] += 1
            if len(self._errors) < 10:
                self._errors.append(f"{topic}: {err.str()}")
        if self._on_delivery is not None:
            self._on_delivery(Delivery(topic, msg.partition(), msg.offset(), msg.key(),
                                       None if err is None else err.str()))


def _auth_error_recorder(settings: Settings, found: list[KafkaAuthError]) -> Callable[[Any], None]:
    """An ``error_cb`` that keeps the first refused-credentials or TLS error in ``found``."""
    def on_error(error: Any) -> None:
        problem = auth_error(settings, error)
        if problem is not None and not found:
            found.append(problem)
    return on_error
