"""The inference client of the SDK: ask a local model over Kafka, get the answer back.

``InferenceClient.embed(texts, timeout=...)`` produces an ``InferenceRequest`` to
``inference.requests`` and waits for the ``InferenceResult`` with the same correlation id, which
an ``ezstream inference-worker`` produces. Results are read ``read_committed``: the workers
answer in transactions, so each request has exactly one visible result. Many requests may be in
flight at once (:meth:`InferenceClient.submit`); one background thread reads the results.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from connectors.errors import TerminalError, TransientError
from connectors.kafka.codec import Codec, default_codec
from connectors.kafka.config import client_config
from connectors.kafka.events import InferenceRequest, InferenceResult
from connectors.kafka.producer import PRODUCER_DEFAULTS, EventProducer
from connectors.kafka.topics import topic_name
from connectors.settings import Settings

#: Header carrying the correlation id on every result (set by the worker).
CORRELATION_HEADER = "ez.correlation_id"
DEFAULT_MODEL = "all-MiniLM-L6-v2"


class InferenceTimeout(TransientError):
    """No result arrived in time (is an ``ezstream inference-worker`` running?)."""


class InferenceFailed(TerminalError):
    """The worker answered the request with an error (too long, empty, unknown model, …)."""


class InferenceClient:
    """Sends inference requests and matches their results by correlation id.

    :param agent_id: the requesting agent (the partition key of requests and results).
    :param reply_topic: a topic of its own to read results from (it must exist); by default the
        shared ``inference.results``, where this client skips others' results by a header.
    """

    def __init__(self, settings: Settings, *, model: str = DEFAULT_MODEL, agent_id: str = "sdk",
                 agent_type: str = "development", tenant_id: str = "default",
                 reply_topic: str | None = None, codec: Codec | None = None) -> None:
        from confluent_kafka import Consumer

        self.settings = settings
        self.model = model
        self.agent = {"agent_id": agent_id, "agent_type": agent_type, "tenant_id": tenant_id}
        self.reply_topic = reply_topic
        self.codec = codec or default_codec()
        self._waiting: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        topic = reply_topic or topic_name(settings, InferenceResult.TOPIC)
        self._consumer = Consumer(client_config(settings, **{
            "group.id": f"ezstream.inference-client.{uuid.uuid4().hex}", "enable.auto.commit": False,
            "isolation.level": "read_committed", "fetch.wait.max.ms": 10,
        }))
        # Start at the current ends, looked up now: a result cannot come before its request.
        self._consumer.assign(self._ends(topic))
        self._producer = EventProducer(settings, codec=self.codec, **{**PRODUCER_DEFAULTS, "linger.ms": 2})
        self._reader = threading.Thread(target=self._read, name="inference-client", daemon=True)
        self._reader.start()

    def _ends(self, topic: str, timeout_s: float = 30.0) -> list:
        from confluent_kafka import KafkaException, TopicPartition

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                partitions = self._consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
                return [TopicPartition(topic, p, self._consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout_s)[1]) for p in partitions]
            except KafkaException as exc:
                # A topic created a moment ago has no leader yet (NOT_LEADER_FOR_PARTITION): that passes.
                if time.monotonic() > deadline:
                    raise TransientError(f"results topic {topic}: {exc.args[0].str()}") from None
                time.sleep(0.1)

    def submit(self, texts: Sequence[str], *, task: str = "embed", deadline_ms: int | None = None) -> Future:
        """Send one request; the future's result is the :class:`InferenceResult`."""
        request = InferenceRequest(**self.agent, trace_id=uuid.uuid4().hex, correlation_id=str(uuid.uuid4()),
                                   model=self.model, task=task, inputs=list(texts),
                                   reply_topic=self.reply_topic, deadline_ms=deadline_ms)
        future: Future = Future()
        future.correlation_id = request.correlation_id
        with self._lock:
            self._waiting[request.correlation_id] = future
        self._producer.send(request)
        self._producer.poll(0)
        return future

    def flush(self) -> None:
        """Make sure every submitted request is on the broker."""
        self._producer.flush()

    def wait(self, future: Future, timeout: float) -> list[list[float]]:
        """The embeddings of a submitted request.

        :raises InferenceTimeout: no result within ``timeout`` seconds.
        :raises InferenceFailed: the worker answered with an error.
        """
        try:
            result: InferenceResult = future.result(timeout)
        except FutureTimeout:
            with self._lock:
                self._waiting.pop(future.correlation_id, None)
            raise InferenceTimeout(
                f"no result for request {future.correlation_id} (model {self.model}) within {timeout:g} s; "
                "is an `ezstream inference-worker` running?") from None
        if result.error is not None:
            raise InferenceFailed(f"request {result.correlation_id} (model {result.model}): {result.error}")
        return result.embeddings

    def embed(self, texts: Sequence[str], timeout: float = 30.0) -> list[list[float]]:
        """One embedding per text, in order (unit vectors: the dot product is the cosine similarity).

        :raises InferenceTimeout: no result within ``timeout`` seconds.
        :raises InferenceFailed: the worker answered with an error.
        """
        future = self.submit(texts)
        self._producer.flush()
        return self.wait(future, timeout)

    def _read(self) -> None:
        while not self._closed.is_set():
            for msg in self._consumer.consume(500, timeout=0.1):
                if msg.error() is not None:
                    continue
                cid = dict(msg.headers() or []).get(CORRELATION_HEADER, b"").decode()
                with self._lock:
                    future = self._waiting.pop(cid, None)
                if future is None:
                    continue  # another client's, or one we stopped waiting for
                try:
                    _, record = self.codec.decode(msg.value(), InferenceResult.EVENT)
                    future.set_result(InferenceResult(**record))
                except Exception as exc:  # the waiter gets the reason instead of a timeout
                    future.set_exception(exc)

    def close(self) -> None:
        self._closed.set()
        self._reader.join(5)
        self._consumer.close()
        self._producer.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
