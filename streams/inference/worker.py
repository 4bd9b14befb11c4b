"""The inference worker: a consumer group on ``inference.requests`` that answers every request once.

Three threads. The Kafka thread consumes, decodes and checks requests, queues them in the
:class:`~streams.inference.batcher.DynamicBatcher` and answers what the
:class:`~streams.inference.pipeline.ComputePipeline` finished: its tokenizer thread prepares the
next batch while its device thread runs the model on the previous one (torch and the tokenizer
release the GIL, so Kafka work, tokenizing and the forward pass overlap). Above ``EZ_INFERENCE_MAX_QUEUE`` queued texts the Kafka thread
pauses its partitions, so memory stays bounded however fast requests come.

Exactly one result per request: results are produced in a Kafka transaction together with the
consumed offsets (``send_offsets_to_transaction``). A worker killed mid-batch leaves an open
transaction that the broker aborts (at once when a worker with the same ``--instance`` starts,
else after ``transaction.timeout.ms``); its results are never visible to ``read_committed``
readers (the client's default), and the next owner of the partitions answers those requests
again from the committed offsets. Requests that cannot be answered (too long, empty, unknown
model or task, past their deadline) get a result with ``error`` set and a dead letter in
``inference.requests.dlq``; messages that are not requests at all only get the dead letter.
Dead letters are flushed before the transaction commits (at least once: a crash may repeat one).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from connectors.errors import EzStreamError
from connectors.inference import CORRELATION_HEADER
from connectors.kafka.codec import CodecError, Codec, default_codec
from connectors.kafka.config import client_config, producer_config
from connectors.kafka.dlq import DeadLetters
from connectors.kafka.events import InferenceRequest, InferenceResult
from connectors.kafka.topics import catalogue, ensure_topics, topic_name
from connectors.kafka.transactions import commit_step
from connectors.settings import Settings
from streams import metrics
from streams.inference.batcher import DynamicBatcher, Work
from streams.inference.models import Model, known_models, load_model
from streams.inference.pipeline import ComputePipeline

log = logging.getLogger(__name__)

#: Transactions of a worker that died are aborted by the broker after this long.
TRANSACTION_TIMEOUT_MS = 10_000


def group_id(settings: Settings) -> str:
    """The consumer group of the inference workers."""
    return f"{settings.topic_prefix}ezstream.inference"


class RequestError(EzStreamError):
    """A request the worker answers with an error result (and a dead letter)."""


def check_request(request: InferenceRequest, model: Model, settings: Settings, now_ms: int) -> None:
    """Raise :class:`RequestError` saying why ``request`` cannot be computed; None when it can."""
    if request.model != model.name:
        raise RequestError(f"unknown model {request.model!r}: this worker serves {model.name!r} "
                           f"(known models: {', '.join(known_models())})")
    if request.task not in model.tasks:
        raise RequestError(f"model {model.name!r} does not do task {request.task!r} ({', '.join(sorted(model.tasks))})")
    if not request.inputs:
        raise RequestError("no inputs")
    if len(request.inputs) > settings.inference_max_inputs:
        raise RequestError(f"{len(request.inputs)} inputs, more than EZ_INFERENCE_MAX_INPUTS={settings.inference_max_inputs}")
    for i, text in enumerate(request.inputs):
        if not text.strip():
            raise RequestError(f"input {i} is empty")
        if len(text) > settings.inference_max_chars:
            raise RequestError(f"input {i} has {len(text)} characters, more than "
                               f"EZ_INFERENCE_MAX_CHARS={settings.inference_max_chars}")
    if request.deadline_ms is not None:
        sent_ms = int(request.event_time.timestamp() * 1000)
        if now_ms > sent_ms + request.deadline_ms:
            raise RequestError(f"deadline passed: sent {now_ms - sent_ms} ms ago, deadline {request.deadline_ms} ms")


class InferenceWorker:
    """``run()`` blocks until :meth:`stop`: consume, batch, compute, answer in transactions.

    :param instance: stable name of this worker (e.g. a pod name); its transactional id. A worker
        restarted under the same name fences its predecessor and aborts its open transaction at
        once. Default: a random name (an abandoned transaction then ends after 10 s).
    """

    def __init__(self, settings: Settings, *, instance: str | None = None, model: Model | None = None,
                 codec: Codec | None = None) -> None:
        self.settings = settings
        self.instance = instance or uuid.uuid4().hex[:12]
        self.codec = codec or default_codec()
        self.model = model
        self.ready = threading.Event()
        self.stats: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._source = topic_name(settings, InferenceRequest.TOPIC)
        self._results = topic_name(settings, InferenceResult.TOPIC)
        self._batcher = DynamicBatcher(settings.inference_max_batch, settings.inference_max_wait_ms / 1000)
        self._done: list[Work] = []
        self._done_lock = threading.Lock()
        self._pipeline: ComputePipeline | None = None
        self._paused = False
        self._assigned: set[int] = set()
        self._outstanding = 0  # consumed, not yet answered
        self._consumer: Any = None
        self._producer: Any = None
        self._dlq: DeadLetters | None = None
        self._known_topics: set[str] = set()
        #: Catalogue topics no result may be sent to: the other event topics and every DLQ.
        self._foreign_topics = {spec.name for spec in catalogue(settings)} - {self._results}

    def stop(self) -> None:
        self._stopping.set()

    # -- set-up ----------------------------------------------------------------------------------

    def _setup(self) -> None:
        from confluent_kafka import Consumer, Producer

        ensure_topics(self.settings, catalogue(self.settings))
        if self.model is None:
            self.model = load_model(self.settings.inference_model, self.settings.inference_device)
        log.info("inference worker %s: model %s %s on %s, max batch %d, max wait %.1f ms", self.instance,
                 self.model.name, self.model.version, self.model.device, self.settings.inference_max_batch,
                 self.settings.inference_max_wait_ms)
        self._producer = Producer(producer_config(self.settings, **{
            "transactional.id": f"{group_id(self.settings)}.{self.instance}",
            "linger.ms": 2, "compression.type": "lz4",
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            # Transaction round trips retry after this back-off; the default (100 ms) would add
            # a tenth of a second to every commit.
            "retry.backoff.ms": 10,
        }))
        self._producer.init_transactions(30)
        self._dlq = DeadLetters(self.settings, "inference")
        self._consumer = Consumer(client_config(self.settings, **{
            "group.id": group_id(self.settings), "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            "fetch.wait.max.ms": 5,
        }))
        self._consumer.subscribe([self._source], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        self._setup()
        self._pipeline = ComputePipeline(self.model, self._batcher, self.settings.inference_max_batch,
                                         self._finished).start()
        self.ready.set()
        try:
            while not self._stopping.is_set():
                self._check_compute()
                busy = self._outstanding > 0
                messages = self._consumer.consume(1000, timeout=0.005 if busy else 0.1)
                now_ms = int(time.time() * 1000)
                read = 0
                for msg in messages:
                    if msg.error() is not None:
                        log.warning("inference consumer: %s", msg.error().str())
                        continue
                    self._accept(msg, now_ms)
                    read += 1
                if read:
                    metrics.EVENTS_IN.labels("inference", InferenceRequest.TOPIC).inc(read)
                self._answer()
                self._backpressure()
            self._drain()
        finally:
            self._batcher.close()
            self._pipeline.join(10)
            self._consumer.close()
            self._producer.flush(10)

    def _accept(self, msg: Any, now_ms: int) -> None:
        """Decode and check one message and queue its work."""
        work = Work(partition=msg.partition(), offset=msg.offset(), request=None)
        try:
            # Avro from the SDK, or a JSON object from any client, as the sinks read them.
            _, record = self.codec.decode_message(msg.value(), InferenceRequest.EVENT, msg.headers())
            request = InferenceRequest(**record)
        except CodecError as exc:
            self._dead_letter(msg, exc)
        else:
            work.request = request
            metrics.INFERENCE_REQUESTS.inc()
            try:
                check_request(request, self.model, self.settings, now_ms)
                self._check_reply_topic(request)
                work.texts = list(request.inputs)
            except RequestError as exc:
                work.error = str(exc)
                self._dead_letter(msg, exc)
        self._outstanding += 1
        # Counted before the compute threads can see it, so the gauge never dips below zero.
        metrics.INFERENCE_QUEUE_TEXTS.inc(len(work.texts))
        self._batcher.put(work)

    def _dead_letter(self, msg: Any, exc: Exception) -> None:
        self._dlq.send(msg, type(exc).__name__, str(exc))
        self.stats["dead_letters"] += 1
        metrics.DEAD_LETTERS.labels("inference", InferenceRequest.TOPIC, type(exc).__name__).inc()

    def _check_reply_topic(self, request: InferenceRequest) -> None:
        topic = request.reply_topic
        if topic is None:
            return
        if topic in self._foreign_topics:
            request.reply_topic = None  # the refusal itself goes to inference.results
            raise RequestError(f"reply topic {topic!r} carries other events; results go to "
                               f"{self._results} or a topic of the requester's own")
        if topic in self._known_topics:
            return
        self._known_topics = set(self._consumer.list_topics(timeout=10).topics)
        if topic not in self._known_topics:
            request.reply_topic = None
            raise RequestError(f"reply topic {topic!r} does not exist")

    def _finished(self, batch: list[Work]) -> None:
        metrics.INFERENCE_QUEUE_TEXTS.dec(sum(len(w.texts) for w in batch))
        with self._done_lock:
            self._done.extend(batch)

    def _check_compute(self) -> None:
        if self._pipeline is not None and self._pipeline.error is not None:
            raise self._pipeline.error

    # -- answering -------------------------------------------------------------------------------

    def _answer(self) -> None:
        """Produce the results of finished work and commit its offsets, in one transaction."""
        with self._done_lock:
            finished, self._done = self._done, []
        # Work of partitions lost meanwhile belongs to their new owner, who answers it again.
        done = [w for w in finished if w.partition in self._assigned]
        self._outstanding -= len(finished) - len(done)
        if not done:
            return
        self._dlq.flush()
        offsets: dict[int, int] = {}
        outputs = []
        for w in done:
            offsets[w.partition] = w.offset + 1
            if w.request is None:
                continue
            value = self.codec.encode(InferenceResult.EVENT, self._result(w).to_record())
            outputs.append((w.request.reply_topic or self._results, w.request.agent_id.encode(), value,
                            [(CORRELATION_HEADER, w.request.correlation_id.encode())]))
        # A transaction that must be aborted stops the worker rather than untangle queued work: a
        # restarted worker reads again from the committed offsets, and the aborted results were
        # never visible.
        commit_step(self._producer, self._consumer, self._source, offsets, outputs,
                    what="inference results", failpoint_name="inference.before_commit")
        self._outstanding -= len(done)
        answered = sum(1 for w in done if w.request is not None)
        errors = sum(1 for w in done if w.error)
        self.stats["answered"] += answered
        self.stats["errors"] += errors
        metrics.INFERENCE_RESULTS.inc(answered)
        metrics.INFERENCE_ERRORS.inc(errors)

    def _result(self, w: Work) -> InferenceResult:
        r = w.request
        return InferenceResult(
            event_time=datetime.now(timezone.utc), agent_id=r.agent_id, agent_type=r.agent_type,
            tenant_id=r.tenant_id, trace_id=r.trace_id, correlation_id=r.correlation_id, model=r.model,
            model_version=self.model.version,
            embeddings=[] if w.error else [v.tolist() for v in w.vectors],
            queue_ms=w.queue_ms, compute_ms=w.compute_ms, error=w.error,
        )

    # -- flow control and rebalancing -------------------------------------------------------------

    def _backpressure(self) -> None:
        pending = self._batcher.pending_texts
        if not self._paused and pending >= self.settings.inference_max_queue:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True
            self.stats["pauses"] += 1
        elif self._paused and pending < self.settings.inference_max_queue // 2:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False

    def _drain(self, timeout_s: float = 120.0) -> None:
        """Answer everything consumed so far (before a revoke or a stop)."""
        deadline = time.monotonic() + timeout_s
        while self._outstanding > 0 and time.monotonic() < deadline:
            self._check_compute()
            self._answer()
            if self._outstanding > 0:
                time.sleep(0.005)

    def _on_assign(self, consumer: Any, partitions: list) -> None:
        self._assigned |= {tp.partition for tp in partitions}
        self._paused = False
        log.info("inference worker %s: assigned %s", self.instance, sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Any, partitions: list) -> None:
        # Answer what was consumed before the partitions go: the next owner starts at our commits.
        self._drain()
        self._assigned -= {tp.partition for tp in partitions}

    def _on_lost(self, consumer: Any, partitions: list) -> None:
        # Another worker owns them already: whatever we computed must not be committed.
        self._assigned -= {tp.partition for tp in partitions}
