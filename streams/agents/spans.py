"""The ``spans`` role: OpenTelemetry GenAI spans from ``otlp_spans`` -> events on the catalogue topics.

A consumer group (``<prefix>ezstream.spans``) reads what the OpenTelemetry Collector exports
(``otlp_proto``: one ``TracesData`` per message), maps each message with
:func:`streams.agents.genai.map_traces` and produces its events (LlmCall to ``agent.llm_calls``,
TaskEvent to ``agent.tasks``, keyed by agent) in a Kafka transaction together with the consumed
offsets (``send_offsets_to_transaction``), one transaction per fetched batch. So from
``otlp_spans`` on each span's events are written exactly once for ``read_committed`` readers (the
sinks and the alerts role): a mapper killed mid-batch leaves an open transaction the broker aborts,
and the next owner of the partitions maps the batch again from the committed offsets.

A message that is not a ``TracesData`` goes to ``otlp_spans.dlq`` whole (error class
``UndecodableSpans``); a span whose event the schema refuses (a token count past 32 bits) is
dead-lettered with its message (``InvalidSpan``, naming the span), and the message's other spans
go on. Dead letters are durable before the transaction that moves past them commits (at least
once: a crash may repeat one; a replayed letter maps to the same event ids).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from typing import Any

from connectors.kafka.codec import CodecError, Codec, default_codec
from connectors.kafka.config import client_config, producer_config
from connectors.kafka.dlq import DeadLetters
from connectors.kafka.topics import OTLP_SPANS, catalogue, ensure_topics, topic_name
from connectors.kafka.transactions import commit_step
from connectors.pricing import PriceTable, load_prices
from connectors.settings import Settings
from streams import metrics
from streams.agents.genai import Attribution, map_traces

log = logging.getLogger(__name__)

#: Transactions of a mapper that died are aborted by the broker after this long.
TRANSACTION_TIMEOUT_MS = 10_000
#: Messages fetched (and committed) per transaction at most.
BATCH_MESSAGES = 500


class UndecodableSpans(CodecError):
    """An ``otlp_spans`` message that is not OTLP ``TracesData`` protobuf."""


class InvalidSpan(CodecError):
    """A span whose event the event schema refuses."""


def group_id(settings: Settings) -> str:
    """The consumer group of the span mappers."""
    return f"{settings.topic_prefix}ezstream.spans"


class SpanMapper:
    """``run()`` blocks until :meth:`stop`: consume ``otlp_spans``, map, produce in transactions."""

    name = "spans"

    def __init__(self, settings: Settings, *, prices: PriceTable | None = None, codec: Codec | None = None) -> None:
        self.settings = settings
        self.prices = prices or load_prices(settings)
        self.codec = codec or default_codec()
        self.attribution = Attribution(settings.otel_tenant_attribute, settings.otel_agent_type_attribute)
        self.ready = threading.Event()
        #: Spans per outcome (llm_call, task, skipped), events produced, dead letters, unpriced calls.
        self.stats: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._source = topic_name(settings, OTLP_SPANS)
        self._consumer: Any = None
        self._producer: Any = None
        self._dlq: DeadLetters | None = None

    def stop(self) -> None:
        self._stopping.set()

    def _setup(self) -> None:
        from confluent_kafka import Consumer, Producer

        ensure_topics(self.settings, catalogue(self.settings))
        self._producer = Producer(producer_config(self.settings, **{
            "transactional.id": f"{group_id(self.settings)}.{uuid.uuid4().hex[:12]}",
            "linger.ms": 5, "compression.type": "lz4",
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS, "retry.backoff.ms": 10,
        }))
        self._producer.init_transactions(30)
        self._dlq = DeadLetters(self.settings, self.name)
        self._consumer = Consumer(client_config(self.settings, **{
            "group.id": group_id(self.settings), "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            # A mapper killed with -9 gives up its partitions after this, not after 45 s.
            "session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
        }))
        self._consumer.subscribe([self._source])

    def run(self) -> None:
        self._setup()
        self.ready.set()
        try:
            while not self._stopping.is_set():
                messages = self._consumer.consume(BATCH_MESSAGES, timeout=0.2)
                good = [m for m in messages if m.error() is None]
                for m in messages:
                    if m.error() is not None:
                        log.warning("spans consumer: %s", m.error().str())
                if good:
                    self._step(good)
        finally:
            self._consumer.close()
            self._producer.flush(10)
            self._dlq.close()

    def _step(self, messages: list[Any]) -> None:
        """Map ``messages`` and produce their events with their offsets in one transaction."""
        out: list[tuple[str, bytes, bytes, None]] = []
        for msg in messages:
            out += self._map(msg)
        metrics.EVENTS_IN.labels(self.name, OTLP_SPANS).inc(len(messages))
        # Dead letters are durable before the offsets that move past them.
        self._dlq.flush()
        offsets: dict[int, int] = {}
        for msg in messages:
            offsets[msg.partition()] = max(offsets.get(msg.partition(), 0), msg.offset() + 1)
        commit_step(self._producer, self._consumer, self._source, offsets, out,
                    what="spans", failpoint_name="spans.before_commit")
        self.stats["events"] += len(out)

    def _map(self, msg: Any) -> list[tuple[str, bytes, bytes, None]]:
        """(topic, key, value, headers) of each event of one message; its bad parts dead-lettered."""
        from google.protobuf.message import DecodeError

        try:
            mapped = map_traces(msg.value() or b"", self.prices, self.attribution)
        except DecodeError as exc:
            self._dead_letter(msg, UndecodableSpans(f"not OTLP TracesData protobuf: {exc}"))
            return []
        self.stats.update(mapped.spans)
        self.stats["unpriced"] += mapped.unpriced
        for outcome, n in mapped.spans.items():
            metrics.SPANS.labels(outcome).inc(n)
        out, refused = [], []
        for event in mapped.events:
            try:
                value = self.codec.encode(event.EVENT, event.to_record())
            except CodecError as exc:
                span = getattr(event, "call_id", None) or getattr(event, "task_id", "")
                refused.append(f"span {span} of trace {event.trace_id}: {exc}")
                continue
            out.append((topic_name(self.settings, event.TOPIC), event.agent_id.encode(), value, None))
        if refused:
            # One letter per message, naming each refused span (a message is dead-lettered once).
            self._dead_letter(msg, InvalidSpan("; ".join(refused)))
        return out

    def _dead_letter(self, msg: Any, exc: CodecError) -> None:
        log.warning("spans: dead letter %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)
        if self._dlq.send(msg, type(exc).__name__, str(exc)):
            self.stats["dead_letters"] += 1
            metrics.DEAD_LETTERS.labels(self.name, OTLP_SPANS, type(exc).__name__).inc()
