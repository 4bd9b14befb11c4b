"""The alerts role: windows and alert rules over the agent topics, alerts on ``agent.alerts``.

One active processor reads every partition of ``agent.tasks``, ``agent.llm_calls`` and
``agent.telemetry``: budgets add up per tenant and error rates per provider across all agents, so
the rules need all of them in one place. Rules cost microseconds per event, so one process keeps
up with far more than the platform produces. Other workers running the role stand by: whoever
holds the single partition of the state topic (a consumer group lease) is active, and a standby
takes over within the group's session timeout when the active one dies.

State is changelog-backed, as a Faust table is, and exact across restarts: one Kafka transaction
per step, through one transactional producer (transactional id ``<prefix>ezstream.alerts.state``,
so a new active processor fences the old one and aborts its open transaction).

- A step's transaction holds its alerts, the windows it produced, the changes it made to the state
  (a delta: each rule's changed entries, the source positions, the windows closed since the last
  step; key ``delta-<seq>-<i>/<n>`` on the compacted state topic). Read_committed consumers see
  all of it or none of it. Once a second, after a commit, the positions it covered are also
  committed as the offsets of the ``.positions`` group, for operators' lag only: outside the
  transaction, by the source consumer, so no step waits for the group's coordinator.
- A live step that raised an alert commits at once; other steps gather for up to
  ``EZ_ALERTS_COMMIT_MS`` (five times that while catching up).
- Every ``EZ_ALERTS_CHECKPOINT_SECONDS`` a snapshot of the whole state is written with a step
  (``manifest`` and ``chunk-<i>``), with tombstones for the deltas it covers. A process of its own
  builds it (:mod:`~streams.intelligence.snapshots`): it keeps a copy of the state, the state at
  activation plus every delta since, so the loop never copies or encodes the whole state.
- On activation the processor reads the latest snapshot and the deltas committed after it
  (:func:`restore_state`), seeks each source partition to the position they recorded and replays
  from there: each event is counted once, each output produced once. Nothing is suppressed: the
  outputs of a step that never committed were never read.
- Wall-clock rules (silent agents, stuck tasks, idle windows) wait until the replay has caught up
  with the offsets of the moment of activation: a state that is behind would see silence where
  there was none.

Alerts are readable by read_committed consumers when their step commits (a few milliseconds on
one host: the alert path is consume -> rule -> produce -> commit). Windows close on event time
(watermark past end + grace) and, on a quiet stream, on the wall clock. Calls too late for their
window are counted in ``late_events`` (in the status file) and still reach the lake and
ClickHouse through the sink roles.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from connectors.errors import ConfigError, EzStreamError, TerminalError, TransientError
from connectors.failpoints import failpoint
from connectors.kafka.config import client_config, producer_config
from connectors.kafka.codec import Codec, default_codec
from connectors.kafka.events import Alert, LlmCall, LlmWindow, Telemetry
from connectors.kafka.native import NativeCodec
from connectors.kafka.schemas import TOPIC_EVENTS
from connectors.kafka.topics import TopicSpec, catalogue, ensure_topics, topic_name
from connectors.settings import Settings
from connectors.validation import INVALID_VALUE, ValueRules, check, screen
from streams import metrics
from streams.intelligence._time import utc
from streams.intelligence.alerts import (
    ALERT_NAMESPACE,
    BudgetRule,
    ErrorRateRule,
    RateLimitStormRule,
    SilentAgentRule,
    StuckTaskRule,
)
from streams.intelligence.batch import Batch, event_times, rows
from streams.intelligence.config import IntelligenceConfig, load_config
from streams.intelligence.merge import CatchUpMerge, Watermarks
from streams.intelligence.shards import Shard
from streams.intelligence.snapshots import SnapshotBuilder, apply_steps, decode, encode
from streams.intelligence.windows import ClosedWindow, WindowStore

log = logging.getLogger(__name__)

#: Catalogue topics the role reads.
SOURCES = ("agent.tasks", "agent.llm_calls", "agent.telemetry")
#: Catalogue topics the role writes, in Kafka transactions: its alerts, and its closed windows.
OUTPUTS = ALERTS, WINDOWS = ("agent.alerts", "agent.llm_windows")
#: Snapshots are split into messages of at most this many bytes (compressed).
CHUNK_BYTES = 512 * 1024
#: While catching up, steps commit this many times less often than ``EZ_ALERTS_COMMIT_MS`` says.
CATCH_UP_COMMIT_FACTOR = 5
#: Seconds between writes of the status file (it says what the latest commit holds).
STATUS_SECONDS = 0.25
#: Seconds between wall-clock ticks of the rules.
TICK_SECONDS = 1.0
#: Seconds between commits of the committed positions as the positions group's offsets.
OFFSETS_SECONDS = 1.0
#: The state topic's key of the tombstone that opens each transaction (see ``ShardProcessor._begin``);
#: ignored by :func:`restore_state`, removed by compaction.
BEGIN_KEY = b"begin"
#: Seconds after a commit ended before a quiet step opens the next transaction. The coordinator
#: still writes the last one's markers for a few milliseconds after answering its commit, and
#: refuses an AddPartitionsToTxn meanwhile (CONCURRENT_TRANSACTIONS); librdkafka asks again only
#: 20 ms later, and an alert that joined the transaction in between waits with it.
BEGIN_AFTER_COMMIT_S = 0.01
#: Most messages a step takes: a step behind takes many, so its commit is paid by many events.
FETCH_MAX = 5000
#: Closed windows produced per turn of the loop (the rest wait for the next turns).
WINDOWS_PER_TURN = 20
#: While catching up, a partition whose calls the merge holds more of than this is paused until
#: the others' fetches let them go: the merge's memory stays bounded.
MERGE_HOLD_ROWS = 50_000

_WINDOW_NAMESPACE = uuid.uuid5(ALERT_NAMESPACE, "llm-window")
#: See :attr:`Rules.rows_up_to`.
ROWS_UP_TO = 48


def _fields(closed: ClosedWindow) -> dict[str, Any]:
    """A closed window's fields as the state holds them (its sketch's dict is shared, never changed)."""
    return dict(vars(closed))


def _by_key(by_partition: dict[tuple[str, int], int]) -> dict[str, int]:
    """``{(topic, partition): n}`` as the checkpoint's JSON holds it: ``{"topic:partition": n}``."""
    return {f"{topic}:{partition}": n for (topic, partition), n in by_partition.items()}


def _by_partition(by_key: dict[str, int]) -> dict[tuple[str, int], int]:
    """The inverse of :func:`_by_key` (topic names may hold ':'; the partition is last)."""
    return {(topic, int(partition)): n for topic, partition, n in
            ((*key.rsplit(":", 1), n) for key, n in by_key.items())}


class _Cut(NamedTuple):
    """What a step's transaction holds, for the accounts once it committed."""

    seq: int
    chunks: int
    #: The step the snapshot written with it covers (its deltas are removed with it).
    snapshot_seq: int | None
    positions: dict[str, int]
    alerts: list[Alert]
    #: When the commit ended (monotonic seconds).
    ended: float = 0.0


def _chunks(payload: bytes) -> list[bytes]:
    """``payload`` in messages the state topic takes (``CHUNK_BYTES`` each at most)."""
    return [payload[i:i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES)] or [b""]


def _delta_keys(seq: int, chunks: int) -> list[str]:
    """The state topic's keys of step ``seq``'s delta in ``chunks`` messages."""
    return [f"delta-{seq:012d}-{i}/{chunks}" for i in range(chunks)]


def restore_state(latest: dict[str, bytes | None], config: IntelligenceConfig, topic: str) -> dict[str, Any] | None:
    """The state as of the latest committed step, from the latest value of each key on the state
    ``topic``: the snapshot (``manifest``, ``chunk-<i>``) plus the deltas committed after it
    (``delta-<seq>-<i>/<n>``), in order. None when nothing was ever committed."""
    # delta-<seq>-<i>/<n>: chunk i of the n of step seq's delta.
    parts: dict[int, dict[int, bytes]] = {}
    counts: dict[int, int] = {}
    for key, value in latest.items():
        if key.startswith("delta-") and value is not None:
            seq, _, chunk = key[len("delta-"):].partition("-")
            i, _, n = chunk.partition("/")
            parts.setdefault(int(seq), {})[int(i)] = value
            counts[int(seq)] = int(n)
    deltas = sorted(parts)
    if "manifest" in latest and latest["manifest"] is not None:
        manifest = json.loads(latest["manifest"])
        try:
            payload = b"".join(latest[f"chunk-{i}"] for i in range(manifest["chunks"]))
            state = decode(payload)
        except (KeyError, TypeError, zlib.error, ValueError) as exc:
            raise EzStreamError(f"the alert state on {topic} is damaged ({exc}); "
                                f"delete the topic to start the rules afresh") from exc
        if state["snapshot"] != manifest["snapshot"]:
            raise EzStreamError(f"the alert state on {topic} mixes snapshots "
                                f"{state['snapshot']} and {manifest['snapshot']}")
        state.setdefault("seq", 0)
    elif deltas:  # the first snapshot was never committed: the deltas from the start
        state = {"snapshot": 0, "seq": 0, "rules": Rules(config).to_dict(), "positions": {},
                 "watermarks": {}, "pending_windows": [], "stats": {}}
    else:
        return None
    later = [seq for seq in deltas if seq > state["seq"]]
    if later and later != list(range(state["seq"] + 1, later[-1] + 1)):
        raise EzStreamError(f"the alert state on {topic} misses deltas after "
                            f"{state['seq']} (has {later[:5]}...); delete the topic to start afresh")
    steps = []
    for seq in later:
        try:
            steps.append(decode(b"".join(parts[seq][i] for i in range(counts[seq]))))
        except (KeyError, zlib.error, ValueError) as exc:
            raise EzStreamError(f"the alert state on {topic} has a damaged delta {seq} ({exc}); "
                                f"delete the topic to start the rules afresh") from exc
    apply_steps(state, steps)
    state["deltas"] = counts  # on the topic still: removed with the next snapshot
    return state


def state_topic(settings: Settings) -> str:
    """The compacted topic of the role's state (deltas and snapshots); its one partition is the lease."""
    return topic_name(settings, "ezstream.alerts.state")


def group_id(settings: Settings) -> str:
    """The consumer group whose holder of the state partition is the active processor."""
    return f"{settings.topic_prefix}ezstream.alerts"


def window_event(closed: ClosedWindow, closed_by: str) -> LlmWindow:
    """The ``agent.llm_windows`` event of a closed window; its id is stable across restarts."""
    key = f"{closed.tenant_id}|{closed.agent_id}|{closed.provider}|{closed.model}|{closed.window_start_ms}"
    return LlmWindow(
        event_id=str(uuid.uuid5(_WINDOW_NAMESPACE, key)),
        event_time=utc(closed.window_end_ms),
        agent_id=closed.agent_id,
        agent_type=closed.agent_type,
        tenant_id=closed.tenant_id,
        trace_id=closed.trace_id,
        provider=closed.provider,
        model=closed.model,
        window_start=utc(closed.window_start_ms),
        window_end=utc(closed.window_end_ms),
        calls=closed.calls,
        errors=closed.errors,
        rate_limited=closed.rate_limited,
        input_tokens=closed.input_tokens,
        output_tokens=closed.output_tokens,
        cost_usd=closed.cost_usd,
        latency_p50_ms=closed.latency_p50_ms,
        latency_p95_ms=closed.latency_p95_ms,
        latency_p99_ms=closed.latency_p99_ms,
        latency_sketch=json.dumps(closed.latency_sketch, separators=(",", ":")),
        closed_by=closed_by,
    )


class Rules:
    """Every rule and the window store, with one state dict for all of them.

    ``shard``: the rules keep the state of that shard's subjects only (see
    :mod:`~streams.intelligence.shards`); every event is still given to them.
    """

    def __init__(self, config: IntelligenceConfig, state: dict[str, Any] | None = None,
                 shard: Shard | None = None) -> None:
        self.config = config
        if state is None:
            self.budget = BudgetRule(config.budget)
            self.error_rate = ErrorRateRule(config.error_rate)
            self.rate_limit = RateLimitStormRule(config.rate_limit_storm)
            self.silent = SilentAgentRule(config.silent_agent)
            self.stuck = StuckTaskRule(config.stuck_task)
            self.windows = WindowStore(size_ms=config.windows.size_ms, grace_ms=config.windows.grace_ms)
        else:
            self.budget = BudgetRule.from_dict(state["budget"], config.budget)
            self.error_rate = ErrorRateRule.from_dict(state["error_rate"], config.error_rate)
            self.rate_limit = RateLimitStormRule.from_dict(state["rate_limit"], config.rate_limit_storm)
            self.silent = SilentAgentRule.from_dict(state["silent"], config.silent_agent)
            self.stuck = StuckTaskRule.from_dict(state["stuck"], config.stuck_task)
            self.windows = WindowStore.from_dict(state["windows"])
        self.shard = shard if shard is not None and shard.count > 1 else None
        #: Whether this shard's subject is its own (None: every subject is).
        self._owns = None if self.shard is None else self.shard.owns
        self.budget.owns = self.error_rate.owns = self.windows.owns = self._owns
        #: Storms are kept whole by shard 0 (see :mod:`~streams.intelligence.shards`).
        self._storms = self.shard is None or self.shard.index == 0
        #: Batches of at most this many events go through the rules an event at a time: below
        #: it a rule's fixed cost per batch in columns (NumPy calls) is more than the rows' (one
        #: LLM call: about 230 µs in columns, 50 µs as a row; even at about 100 calls).
        self.rows_up_to = ROWS_UP_TO

    def observe(self, event: Any, now_ms: int) -> list[Alert]:
        """The alerts one decoded event (an :class:`LlmCall`, :class:`Telemetry` or
        :class:`TaskEvent`) raises or clears."""
        if isinstance(event, LlmCall):
            return self.observe_call(event, now_ms)
        if isinstance(event, Telemetry):
            return self.silent.observe(event) if self._ours(event.agent_id) else []
        return self.stuck.observe(event) if self._ours(event.task_id) else []

    def _ours(self, subject: str) -> bool:
        return self._owns is None or self._owns(subject)

    def observe_call(self, call: Any, now_ms: int, watermark_ms: int | None = None) -> list[Alert]:
        """The alerts one LLM call raises or clears (an :class:`LlmCall`, or a row of the decoded
        table with the same fields, its ``event_time`` in epoch milliseconds).

        ``watermark_ms``, when given, is the event time of the call's own partition: windows and
        budget days judge lateness by it and close only through :meth:`advance`.
        """
        self.windows.add(call, now_ms=now_ms, watermark_ms=watermark_ms)
        return (self.budget.observe(call, watermark_ms) + self.error_rate.observe(call)
                + (self.rate_limit.observe(call) if self._storms else []))

    def observe_calls(self, calls: Batch, now_ms: int) -> list[Alert]:
        """:meth:`observe_call` of each call with its partition's watermark, a batch at a time
        (each rule by subject, see :class:`~streams.intelligence.batch.Batch`): the same state
        and the same alerts, in the same order. A batch of at most :attr:`rows_up_to` calls (a
        live fetch) is taken a call at a time, which costs it less."""
        if not calls.n:
            return []
        if calls.n <= self.rows_up_to:
            return [alert for row, mark in zip(rows(calls.event, calls.table), calls.watermarks.tolist())
                    for alert in self.observe_call(row, now_ms, mark)]
        self.windows.add_calls(calls, now_ms)
        found = [(i, rank, seq, alert) for seq, (i, rank, alert) in enumerate(self.budget.observe_calls(calls))]
        found += [(i, 2, seq, alert) for seq, (i, alert) in enumerate(self.error_rate.observe_calls(calls))]
        if self._storms:
            found += [(i, 3, seq, alert) for seq, (i, alert) in enumerate(self.rate_limit.observe_calls(calls))]
        found.sort(key=lambda item: item[:3])
        return [alert for *_, alert in found]

    def advance(self, low_ms: int) -> tuple[list[Alert], list[ClosedWindow]]:
        """Move event time to ``low_ms``, the minimum over the partitions' watermarks: the budget
        days it ends resolve, the budget forecasts of a new minute fire or resolve, and the windows
        it passes close."""
        return self.budget.tick(low_ms) + self.budget.forecast(low_ms), self.windows.close_due(low_ms)

    def observe_batch(self, batch: Batch) -> list[Alert]:
        """:meth:`observe` of each task event or telemetry report of ``batch``, a task or agent
        at a time: the same state and alerts, in the same order."""
        rule, subject = (self.silent, "agent_id") if batch.event == "telemetry" else (self.stuck, "task_id")
        if batch.n <= self.rows_up_to:
            observe = self.observer(batch.event)
            return [alert for row in rows(batch.event, batch.table) for alert in observe(row, 0)]
        if self._owns is not None:
            batch = batch.take(np.flatnonzero(batch.matches(subject, self._owns)))
        return [alert for _, alert in rule.observe_batch(batch)]

    def observer(self, event: str) -> Callable[[Any, int], list[Alert]]:
        """What observes one event of the schema ``event`` (``llm_call``, ``telemetry``,
        ``task_event``): ``observer(event)(row, now_ms)``."""
        if event == "llm_call":
            return self.observe_call
        if event == "telemetry":
            return lambda row, now_ms: self.silent.observe(row) if self._ours(row.agent_id) else []
        return lambda row, now_ms: self.stuck.observe(row) if self._ours(row.task_id) else []

    def tick(self, now_ms: int) -> list[Alert]:
        """The alerts the wall clock raises or clears.

        The rate-limit window slides on the wall clock only while a storm fires and no call came
        for the windows' idle period: calls flowing say where event time is, and a stream behind
        the wall clock (catching up, a producer's slow clock) would see its calls fall out of it.
        """
        calm = self.rate_limit.firing() and now_ms - self.windows.last_added_ms >= self.config.windows.idle_ms
        return (self.budget.tick(now_ms) + self.error_rate.tick(now_ms)
                + (self.rate_limit.tick(now_ms) if calm else [])
                + self.silent.tick(now_ms) + self.stuck.tick(now_ms))

    def size(self) -> dict[str, int]:
        """Entries each rule holds (subjects, days, buckets, firing conditions; open windows): what
        the state and its checkpoints grow with."""
        return {"budget": self.budget.size(), "error_rate": self.error_rate.size(),
                "rate_limit_storm": self.rate_limit.size(), "silent_agent": self.silent.size(),
                "stuck_task": self.stuck.size(), "windows": self.windows.size()}

    @property
    def late_events(self) -> dict[str, int]:
        """Events too late to count, per rule (they still reach the lake and ClickHouse)."""
        return {"windows": self.windows.late_events, "budget": self.budget.late_events,
                "error_rate": self.error_rate.late_events, "rate_limit_storm": self.rate_limit.late_events}

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget.to_dict(), "error_rate": self.error_rate.to_dict(),
                "rate_limit": self.rate_limit.to_dict(), "silent": self.silent.to_dict(),
                "stuck": self.stuck.to_dict(), "windows": self.windows.to_dict()}

    def delta(self) -> dict[str, Any]:
        """What changed since the last delta (or since the state was loaded): each rule's scalars
        and its changed entries, in :meth:`to_dict`'s shape. A :meth:`to_dict` taken right after a
        delta, plus every later delta through :meth:`apply_delta`, is the state of now."""
        return {"budget": self.budget.delta(), "error_rate": self.error_rate.delta(),
                "rate_limit": self.rate_limit.delta(), "silent": self.silent.delta(),
                "stuck": self.stuck.delta(), "windows": self.windows.delta()}

    @staticmethod
    def apply_delta(state: dict[str, Any], delta: dict[str, Any]) -> None:
        """Bring ``state`` (a :meth:`to_dict`) to the state after ``delta`` (a :meth:`delta`)."""
        Rules.apply_deltas(state, [delta])

    @staticmethod
    def apply_deltas(state: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        """:meth:`apply_delta` of each of ``deltas`` in order (the windows' in one pass)."""
        for delta in deltas:
            BudgetRule.apply_delta(state["budget"], delta["budget"])
            ErrorRateRule.apply_delta(state["error_rate"], delta["error_rate"])
            RateLimitStormRule.apply_delta(state["rate_limit"], delta["rate_limit"])
            SilentAgentRule.apply_delta(state["silent"], delta["silent"])
            StuckTaskRule.apply_delta(state["stuck"], delta["stuck"])
        WindowStore.apply_deltas(state["windows"], [delta["windows"] for delta in deltas])


class Webhook:
    """Posts alerts to the configured webhook from a thread of its own, so a slow or dead
    endpoint never holds up the alert path. The queue is bounded; what overflows is logged and
    still on ``agent.alerts``."""

    def __init__(self, url: str, post: Callable[..., int] | None = None, maxsize: int = 10_000) -> None:
        from streams.intelligence.webhook import post_alert

        self._url = url
        self._post = post or post_alert
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize)
        self.posted = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="alerts-webhook", daemon=True)
        self._thread.start()

    def submit(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.failed += 1
            log.error("alert webhook queue full: alert %s not posted (it is on agent.alerts)", alert.alert_id)

    def _run(self) -> None:
        while (alert := self._queue.get()) is not None:
            try:
                self._post(self._url, alert)
                self.posted += 1
            except (TransientError, TerminalError) as exc:  # messages name the host, never the URL
                self.failed += 1
                log.error("alert webhook: %s", exc)

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)


class IntelligenceProcessor:
    """The alerts role (hosted by the Faust worker): ``run()`` blocks until :meth:`stop`.

    It holds the lease of the shards the group gives it (partitions of the state topic, one per
    shard: ``EZ_ALERTS_SHARDS``) and runs a :class:`ShardProcessor` for each, one step of each per
    turn of its loop; a shard whose lease goes elsewhere is checkpointed and let go.
    """

    name = "alerts"

    def __init__(self, settings: Settings, config: IntelligenceConfig | None = None,
                 codec: Codec | None = None) -> None:
        self.settings = settings
        self.config = config or load_config(settings)
        self.codec = codec or default_codec()
        self.shards = settings.alerts_shards
        #: Set once every shard it holds is active and caught up, or it stands by for all.
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._state_topic = state_topic(settings)
        self._webhook = (Webhook(settings.alerts_webhook_url.get_secret_value())
                         if settings.alerts_webhook_url is not None else None)
        self._lease: Any = None
        #: Shards whose lease it holds, and their processors (kept while standing by: their stats).
        self._held: set[int] | None = None
        self._processors: dict[int, ShardProcessor] = {}

    def processor(self, index: int) -> ShardProcessor:
        found = self._processors.get(index)
        if found is None:
            found = self._processors[index] = ShardProcessor(
                self.settings, self.config, self.codec, Shard(index, self.shards), self._webhook)
        return found

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        from confluent_kafka import Consumer

        ensure_topics(self.settings, catalogue(self.settings) + [TopicSpec(self._state_topic, self.shards, self.settings.topic_replication, {
            "cleanup.policy": "compact", "min.compaction.lag.ms": "60000",
            "segment.ms": "600000", "max.message.bytes": str(2 * CHUNK_BYTES),
        })])
        self._lease = Consumer({
            **client_config(self.settings),
            "group.id": group_id(self.settings),
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
        })
        crashed = False
        try:
            # The shards' states are the state topic's partitions: their number is fixed with it.
            found = len(self._lease.list_topics(self._state_topic, timeout=30).topics[self._state_topic].partitions)
            if found != self.shards:
                raise ConfigError(f"EZ_ALERTS_SHARDS is {self.shards}, but the alerts' state topic {self._state_topic} "
                                  f"has {found} partition(s), one per shard of the state it holds: set EZ_ALERTS_SHARDS={found}, "
                                  "or start the new number of shards on a new state (a new topic prefix)")
            self._lease.subscribe([self._state_topic], on_assign=self._on_assign,
                                  on_revoke=self._on_revoke, on_lost=self._on_revoke)
            while not self._stopping.is_set():
                active = any(p.active for p in self._processors.values())
                self._lease.poll(0 if active else 0.2)  # the lease's messages are ignored
                for index in sorted(self._held or ()):
                    if not self.processor(index).active:
                        self.processor(index)._activate()
                for index, processor in sorted(self._processors.items()):
                    if processor.active and index not in (self._held or ()):
                        processor._deactivate(checkpoint=True)
                    elif processor.active:
                        processor._step()
                if (self._held is not None and not self.ready.is_set()
                        and all(self.processor(i).ready.is_set() for i in self._held)):
                    self.ready.set()
        except BaseException:
            crashed = True
            raise
        finally:
            for processor in self._processors.values():
                if processor.active:
                    # After a crash the state may stand anywhere in a batch: no checkpoint of it;
                    # the next active processor (this role started again, or a standby) replays
                    # from the last one, as after a kill -9.
                    processor._deactivate(checkpoint=not crashed)
            self._lease.close()
            if self._webhook is not None:
                self._webhook.close()

    def _on_assign(self, consumer: Any, partitions: list) -> None:
        self._held = {p.partition for p in partitions}
        if not partitions and self.shards == 1:
            self.processor(0)._write_status()  # standing by: another worker is active

    def _on_revoke(self, consumer: Any, partitions: list) -> None:
        for p in partitions:
            if self._held is not None:
                self._held.discard(p.partition)
            processor = self._processors.get(p.partition)
            if processor is not None and processor.active:
                # Checkpoint while the state is still ours, so the next holder replays little.
                processor._deactivate(checkpoint=True)


class ShardProcessor:
    """One shard of the alerts role while its worker holds the shard's lease: the shard's rules,
    its state on its partition of the state topic, its transactional producer and its reader of
    the source topics. With one shard (the default) it keeps every subject."""

    name = "alerts"

    def __init__(self, settings: Settings, config: IntelligenceConfig, codec: Codec,
                 shard: Shard = Shard(0, 1), webhook: Webhook | None = None) -> None:
        self.settings = settings
        self.config = config
        self.codec = codec
        self.shard = shard
        # The sinks' value rules, checked on the native decoder's tables: what they dead-letter
        # (a NaN or negative number, an event time past the message's timestamp plus the
        # tolerance, out of range, too old) never reaches a rule either.
        self._decoder = NativeCodec(self.codec)
        self._value_rules = ValueRules.from_settings(settings)
        # The first value check of a process pays pyarrow's set-up (about 0.3 s): paid here, once,
        # on a one-row table of nulls per source, not by the first alert.
        for event in {TOPIC_EVENTS[t] for t in SOURCES}:
            empty = self._decoder.decode_batch_arrow([], event).table
            check(pa.Table.from_pylist([{}], schema=empty.schema), event, np.full(1, -1, np.int64), self._value_rules)
        #: Set once the shard is active and caught up.
        self.ready = threading.Event()
        self._catalogue = {topic_name(settings, t): t for t in SOURCES}
        self._calls_topic = topic_name(settings, "agent.llm_calls")
        self._alerts_topic = topic_name(settings, ALERTS)
        self._windows_topic = topic_name(settings, WINDOWS)
        self._state_topic = state_topic(settings)
        # Shard 0 keeps the names of the role's single processor.
        suffix = f".{shard.index}" if shard.index else ""
        self._transactional_id = f"{group_id(settings)}.state{suffix}"
        self._positions_group = f"{group_id(settings)}.positions{suffix}"
        self._status_file = settings.run_dir / (
            f"alerts-{settings.topic_prefix or 'default'}" + (f".shard-{shard.index}" if shard.count > 1 else "") + ".status.json")
        self._webhook = webhook
        self._label = "alerts" if shard.count == 1 else f"alerts ({shard})"
        self.active = False
        self.stats: Counter[str] = Counter()
        self._late_events: dict[str, int] = {}
        self._reset_active_state()

    def _reset_active_state(self) -> None:
        self.rules: Rules | None = None
        self._source: Any = None
        #: The one producer: every output and state change of a step in one transaction.
        self._txn: Any = None
        self._in_txn = False
        self._txn_began = 0.0
        self._positions: dict[tuple[str, int], int] = {}
        self._catch_up_to: dict[tuple[str, int], int] = {}
        #: The backlog's calls in one order while catching up (None once caught up).
        self._merge: CatchUpMerge | None = None
        self._paused: set[tuple[str, int]] = set()
        self._watermarks = Watermarks(self.config.windows.idle_ms / 1000)
        self._caught_up = False
        #: Closed windows not produced yet (part of the state).
        self._closed_windows: deque[tuple[ClosedWindow, str]] = deque()
        #: Since the last commit: windows closed, how many produced, alerts produced.
        self._windows_closed: list[list[Any]] = []
        self._windows_produced = 0
        self._step_alerts: list[Alert] = []
        #: Alerts committed and not logged yet (see :meth:`_log_alerts`).
        self._committed_alerts: list[Alert] = []
        #: Whether the state changed since the last commit.
        self._dirty = False
        self._last_tick = 0.0
        #: The number of the latest committed step (its delta's key), and the deltas on the
        #: state topic not yet covered by a committed snapshot.
        self._seq = 0
        self._deltas: dict[int, int] = {}  # seq -> chunks
        self._committed: dict[str, int] = {}
        self._commits = 0
        self._snapshot = 0
        self._snapshot_bytes = 0
        self._last_snapshot = time.monotonic()
        #: The process that builds the snapshots (see :mod:`~streams.intelligence.snapshots`).
        self._snapshots: SnapshotBuilder | None = None
        #: The commit in flight (one at a time), and the outputs of later steps held until it is done.
        self._committer: ThreadPoolExecutor | None = None
        self._committing: Future[_Cut] | None = None
        self._held: list[tuple[str, str, bytes]] = []
        #: The snapshot being built: (snapshot, seq, compressed JSON) when done.
        self._encoded: Future[tuple[int, int, bytes]] | None = None
        self._status_due = False
        self._status_written = 0.0
        self._offsets_sent = 0.0
        self._offsets_committed: dict[str, int] = {}
        self._commit_ended = 0.0

    # -- activation: load the state, seek, replay -------------------------------------------------

    def _activate(self) -> None:
        from confluent_kafka import Consumer, Producer, TopicPartition

        started = time.monotonic()
        base = client_config(self.settings)
        self._txn = Producer(producer_config(self.settings, **{
            "transactional.id": self._transactional_id,
            "linger.ms": 0, "retry.backoff.ms": 10}))
        # Fences a previous holder: its open transaction (outputs and state of a step it never
        # committed) is aborted, so none of it is ever read.
        self._txn.init_transactions(60)
        state = self._read_state()
        self.rules = Rules(self.config, state["rules"] if state else None, self.shard)
        # Windows closed but not produced yet: the first outputs of this holder.
        self._closed_windows.extend((ClosedWindow(**closed), by)
                                    for closed, by in (state or {}).get("pending_windows", []))
        self._snapshot = state["snapshot"] if state else 0
        self._seq = state["seq"] if state else 0
        self._deltas = dict((state or {}).get("deltas", {}))
        saved = _by_partition((state or {}).get("positions", {}))
        self._watermarks = Watermarks(self.config.windows.idle_ms / 1000,
                                      _by_partition((state or {}).get("watermarks", {})))
        self.stats = Counter((state or {}).get("stats", {}))

        self._source = Consumer({
            **base,
            "group.id": self._positions_group,  # offsets for operators' lag
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": 100,
            "isolation.level": "read_committed",
            "statistics.interval.ms": 5_000,
            "stats_cb": metrics.lag_from_statistics(self._positions_group),
            "on_commit": self._offsets_commit_done,
        })
        metadata = self._source.list_topics(timeout=30)
        assignment = []
        for topic in self._catalogue:
            for partition in sorted(metadata.topics[topic].partitions):
                low, high = self._source.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                start = max(saved.get((topic, partition), low), low)
                self._positions[(topic, partition)] = start
                self._catch_up_to[(topic, partition)] = high
                assignment.append(TopicPartition(topic, partition, start))
        self._committed = _by_key(self._positions)
        calls = {tp: end for tp, end in self._catch_up_to.items() if tp[0] == self._calls_topic}
        self._merge = CatchUpMerge(calls, self._positions, stall_s=self.config.windows.idle_ms / 1000)
        self._source.assign(assignment)
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="alerts-commit")
        # The state as a snapshot would hold it now: the base the snapshot process adds each
        # step's delta to (the rules' deltas count their changes from here).
        self._snapshots = SnapshotBuilder({
            **self._progress(self._committed), "snapshot": self._snapshot, "seq": self._seq,
            "rules": self.rules.to_dict(),
            "pending_windows": [[_fields(closed), by] for closed, by in self._closed_windows],
        }, self._label)
        self._last_snapshot = time.monotonic()
        self.active = True
        self._caught_up = False
        log.info(f"{self._label}: active from commit %d (snapshot %s, %d partitions) in %.1f s",
                 self._seq, self._snapshot or "none", len(assignment), time.monotonic() - started)
        self._write_status()

    def _read_state(self) -> dict[str, Any] | None:
        """The state as of the latest committed step: the latest snapshot on the state topic plus
        the deltas committed after it, in order. None when nothing was ever committed."""
        from confluent_kafka import Consumer, TopicPartition

        reader = Consumer({**client_config(self.settings), "group.id": f"{group_id(self.settings)}.recovery",
                           "enable.auto.commit": False, "isolation.level": "read_committed"})
        try:
            tp = TopicPartition(self._state_topic, self.shard.index)
            low, high = reader.get_watermark_offsets(tp, timeout=30)
            latest: dict[str, bytes | None] = {}
            if high > low:
                reader.assign([TopicPartition(self._state_topic, self.shard.index, low)])
                deadline = time.monotonic() + 120
                # The position, not the last offset read: the topic ends in a transaction marker.
                while reader.position([tp])[0].offset < high:
                    if time.monotonic() > deadline:
                        raise TransientError(f"reading the alert state from {self._state_topic} took over 120 s")
                    for msg in reader.consume(500, 1.0):
                        if msg.error() is None and msg.key() is not None:
                            latest[msg.key().decode()] = msg.value()
        finally:
            reader.close()
        return restore_state(latest, self.config, self._state_topic)

    def _deactivate(self, checkpoint: bool) -> None:
        try:
            if checkpoint and (self._dirty or self._in_txn or self._held or self._committing is not None):
                self._emit_windows(len(self._closed_windows))
                self._commit(final=True)
            else:
                # After a crash the state may stand anywhere in a step: the commit in flight ends
                # as it may, the open transaction goes, and the next holder replays from the last
                # committed step.
                if self._committing is not None:
                    wait([self._committing], 60)
                if self._in_txn:
                    self._txn.abort_transaction(10)
        except Exception:  # noqa: BLE001  fenced or broker gone: the next holder replays
            log.exception("alerts: the last step was not committed; the next active processor replays it")
        finally:
            self._log_alerts()
            if self._committer is not None:
                self._committer.shutdown(wait=True, cancel_futures=True)
            if self._snapshots is not None:
                self._snapshots.close()
            if self._source is not None:
                self._source.close()
            self.active = False
            if self.rules is not None:
                self._late_events = self.rules.late_events
            self._reset_active_state()
            self._write_status()

    # -- the loop ------------------------------------------------------------------------------

    def _step(self) -> None:
        first = self._source.poll(0.05)
        if first is not None:
            now_ms = int(time.time() * 1000)
            self._process([first, *self._source.consume(FETCH_MAX - 1, 0)], now_ms)
            failpoint("alerts.after_batch")
        if self._merge is not None:
            self._release(int(time.time() * 1000))
        # A minute's end closes hundreds of windows at once: a share per turn keeps the alerts
        # quick, and the backlog bounded however many windows each batch closes.
        if self._closed_windows:
            self._emit_windows(min(max(WINDOWS_PER_TURN, len(self._closed_windows) // 10), len(self._closed_windows)))
        if not self._caught_up and self._merge is None and self._read_to_catch_up_marks():
            self._caught_up = True
            self._status_due = True  # a takeover that replays nothing commits nothing
            self.ready.set()
            log.info("%s: caught up; wall-clock rules on", self._label)
        now = time.monotonic()
        if self._caught_up and now - self._last_tick >= TICK_SECONDS:
            self._last_tick = now
            now_ms = int(time.time() * 1000)
            for alert in self.rules.tick(now_ms):
                self._emit_alert(alert)
                self._dirty = True
            self._close(self.rules.windows.close_idle(now_ms, self.config.windows.idle_ms), "idle")
        if self._commit_due():
            self._commit()
        elif self._in_txn:
            self._txn.poll(0)
        self._commit_offsets()
        if self._committed_alerts:
            self._log_alerts()
        if self._status_due and now - self._status_written >= STATUS_SECONDS:
            self._status_due = False
            self._status_written = now
            self._write_status()

    def _read_to_catch_up_marks(self) -> bool:
        """Whether every source partition was read up to the offset it had at activation. By the
        consumer's position: a partition written in transactions ends in a marker, never read."""
        from confluent_kafka import TopicPartition

        behind = [tp for tp, end in self._catch_up_to.items() if self._positions[tp] < end]
        if not behind:
            return True
        positions = self._source.position([TopicPartition(*tp) for tp in behind])
        return all(p.offset >= self._catch_up_to[(p.topic, p.partition)] for p in positions)

    def _process(self, batch: list[Any], now_ms: int) -> None:
        """Feed a fetch to the rules: the messages of each topic decoded in one call of the native
        decoder and checked against the sinks' value rules (:func:`screen`: the same decision as
        the sinks'), the rules fed from the Arrow table's columns, without a model object per event.
        Topics are fed one after the other: each rule reads one topic, so the order across topics
        changes nothing."""
        from confluent_kafka import Message

        errors = list(map(Message.error, batch))
        if errors.count(None) != len(errors):  # an event of the consumer's, not a message
            for error in errors:
                if error is not None and not error.retriable() and error.fatal():
                    raise EzStreamError(f"alerts: consumer failed: {error}")
            batch = [msg for msg, error in zip(batch, errors) if error is None]
        # By topic, each in fetch order: a pass per topic, in C, not a dict lookup per message.
        topics = list(map(Message.topic, batch))
        by_topic = {topic: [msg for msg, of in zip(batch, topics) if of == topic] for topic in dict.fromkeys(topics)}
        future_limit = now_ms + self._value_rules.future_tolerance_ms
        for topic, messages in by_topic.items():
            self._dirty = True
            event = TOPIC_EVENTS[self._catalogue[topic]]
            screened = screen(self._decoder, messages, event, self._value_rules)
            for _, error_class, _ in screened.failures:
                # The lake role dead-letters them with the reason.
                self.stats["invalid" if error_class == INVALID_VALUE else "undecodable"] += 1
            table, kept, at = screened.table, screened.positions, event_times(screened.table)
            # A producer's clock far ahead of ours must not move event time: the watermark would
            # leave every later event behind it.
            future = at > future_limit
            if future.any():
                self.stats["future"] += int(future.sum())
                table, kept, at = table.filter(pa.array(~future)), kept[~future], at[~future]
            if topic == self._calls_topic:
                self._calls(topic, messages, table, kept, at, now_ms)
                continue
            # Each partition's last offset (a fetch reads a partition in order).
            for partition, offset in dict(zip(map(Message.partition, messages), map(Message.offset, messages))).items():
                self._positions[(topic, partition)] = offset + 1
            for alert in self.rules.observe_batch(Batch(table, at=at, event=event)):
                self._emit_alert(alert)
            counted = len(at)
            self.stats["events"] += counted
            metrics.EVENTS_IN.labels(self.name, self._catalogue[topic]).inc(counted)

    def _calls(self, topic: str, messages: list[Any], calls: pa.Table, kept: np.ndarray, at: np.ndarray,
               now_ms: int) -> None:
        """LLM calls (``calls``: the decoded ones to count, of the messages at ``kept``, at times
        ``at``): each with its partition's watermark; while catching up, through the merge. A fetch
        hands over runs of one partition's messages: the work is per run, in columns."""
        from confluent_kafka import Message

        n = len(messages)
        partitions = np.fromiter(map(Message.partition, messages), np.int64, n)
        offsets = np.fromiter(map(Message.offset, messages), np.int64, n)
        cuts = (np.flatnonzero(partitions[1:] != partitions[:-1]) + 1).tolist()
        runs = list(zip([0, *cuts], [*cuts, n]))
        for lo, hi in runs:
            self._positions[(topic, int(partitions[lo]))] = int(offsets[hi - 1]) + 1
        merge = self._merge
        if merge is None:
            tps = sorted({(topic, p) for p in np.unique(partitions[kept]).tolist()})
            which = np.searchsorted([p for _, p in tps], partitions[kept])
            self._observe_calls(calls, which, tps, now_ms, at)
            return
        bounds = np.searchsorted(kept, [lo for lo, _ in runs] + [n]).tolist()
        for (lo, hi), first, end in zip(runs, bounds, bounds[1:]):
            tp = (topic, int(partitions[lo]))
            merge.fetched(tp, int(offsets[hi - 1]) + 1, offsets[kept[first:end]], calls.slice(first, end - first), at[first:end])
            if merge.buffered(tp) > MERGE_HOLD_ROWS:  # bounded: fetch the others first
                self._pause(tp)

    def _observe_calls(self, calls: pa.Table, which: np.ndarray, partitions: list[tuple[str, int]], now_ms: int,
                       at: np.ndarray | None = None) -> None:
        """Feed calls to the rules in their order (``which``: each call's index in ``partitions``),
        each call with its partition's watermark before it; then move event time on."""
        if not calls.num_rows:
            return
        at = event_times(calls) if at is None else at
        watermarks = self._watermarks.of
        marks = np.empty(len(at), np.int64)
        heard = time.monotonic()
        for k, tp in enumerate(partitions):
            mine = np.flatnonzero(which == k) if len(partitions) > 1 else np.arange(len(at))
            if not len(mine):
                continue
            own = watermarks.get(tp, 0)
            running = np.maximum.accumulate(np.maximum(at[mine], own))
            marks[mine[0]] = own
            marks[mine[1:]] = running[:-1]
            watermarks[tp] = int(running[-1])
            self._watermarks.heard(tp, heard)
        for alert in self.rules.observe_calls(Batch(calls, marks, at), now_ms):
            self._emit_alert(alert)
        self._dirty = True  # also for calls the merge released after their fetch's checkpoint
        self.stats["events"] += len(at)
        metrics.EVENTS_IN.labels(self.name, "agent.llm_calls").inc(len(at))
        self._advance_event_time()

    def _release(self, now_ms: int) -> None:
        """While catching up: the calls the merge lets go; the end of the merge once all went."""
        merge = self._merge
        released = merge.release()
        if released is not None:
            self._observe_calls(*released, now_ms)
        for tp in list(self._paused):
            if merge.buffered(tp) < MERGE_HOLD_ROWS // 4:
                self._resume(tp)
        self.stats["catch_up_skew_ms"] = merge.skew_ms
        if merge.done():
            self._merge = None
            for tp in list(self._paused):
                self._resume(tp)

    def _advance_event_time(self) -> None:
        """Close what the minimum over the partitions' watermarks passed."""
        low = self._watermarks.low(self._merge.behind() if self._merge is not None else frozenset())
        if low is None:
            return
        alerts, closed = self.rules.advance(low)
        for alert in alerts:
            self._emit_alert(alert)
        self._close(closed, "watermark")

    def _pause(self, tp: tuple[str, int]) -> None:
        from confluent_kafka import TopicPartition

        if tp not in self._paused:
            self._source.pause([TopicPartition(*tp)])
            self._paused.add(tp)
            self.stats["catch_up_pauses"] += 1

    def _resume(self, tp: tuple[str, int]) -> None:
        from confluent_kafka import TopicPartition

        self._source.resume([TopicPartition(*tp)])
        self._paused.discard(tp)

    def _emit_alert(self, alert: Alert) -> None:
        self.stats[f"alerts.{alert.kind}.{alert.state}"] += 1
        metrics.ALERTS.labels(alert.kind, alert.state).inc()
        self._produce(self._alerts_topic, alert.agent_id, self.codec.encode("alert", alert.to_record()))
        self._step_alerts.append(alert)

    def _close(self, windows: list[ClosedWindow], closed_by: str) -> None:
        """Closed windows wait in the state until produced (a share per turn, see :meth:`_step`)."""
        for window in windows:
            self._closed_windows.append((window, closed_by))
            self._windows_closed.append([_fields(window), closed_by])
        if windows:
            self._dirty = True

    def _emit_windows(self, n: int) -> None:
        for _ in range(n):
            closed, closed_by = self._closed_windows.popleft()
            event = window_event(closed, closed_by)
            self.stats[f"windows.{closed_by}"] += 1
            metrics.WINDOWS_CLOSED.labels(closed_by).inc()
            self._produce(self._windows_topic, event.agent_id, self.codec.encode("llm_window", event.to_record()))
        self._windows_produced += n
        self._dirty = self._dirty or n > 0

    def _produce(self, topic: str, key: str, value: bytes) -> None:
        """Produce in the step's transaction (begun by its first output or change); while the
        previous step's commit is in flight, held until it is done (see :meth:`_settle`)."""
        if self._committing is not None:
            self._settle()
        if self._committing is not None:
            self._held.append((topic, key, value))
            return
        self._begin()
        self._send(topic, key.encode(), value)

    def _send(self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1) -> None:
        """Produce into the open transaction (``partition`` -1: by the key)."""
        while True:
            try:
                self._txn.produce(topic, key=key, value=value, partition=partition)
                break
            except BufferError:  # the producer's queue is full: let it drain
                self._txn.poll(0.01)
        self._txn.poll(0)

    # -- one transaction per step ------------------------------------------------------------------

    def _begin(self) -> None:
        """Begin a transaction, with the shard's state partition in it from the start: every step
        writes its delta there, and a partition's first record in a transaction costs a round
        trip to the coordinator (AddPartitionsToTxn) before it is sent. Taken here, by a tombstone
        of a key nothing else uses, that round trip overlaps the step's work instead of following
        the delta at the commit, where a live alert waits for it."""
        if not self._in_txn:
            self._txn.begin_transaction()
            self._send(self._state_topic, BEGIN_KEY, None, self.shard.index)
            self._in_txn = True
            self._txn_began = time.monotonic()

    def _commit_due(self) -> bool:
        """A live step with alerts commits at once (read_committed consumers see them then);
        others gather for up to ``EZ_ALERTS_COMMIT_MS`` (a catch-up's alerts too: they are about
        the past, and a commit per alert would slow the catch-up down); a snapshot goes as soon as
        it is encoded. One commit is in flight at a time."""
        self._settle()
        if self._committing is not None:
            return False
        if (self._step_alerts and self._caught_up) or (self._encoded is not None and self._encoded.done()):
            return True
        if not (self._dirty or self._in_txn):
            return False
        if not self._in_txn:
            if time.monotonic() - self._commit_ended < BEGIN_AFTER_COMMIT_S:
                return False  # the coordinator may not be done with the last one
            self._begin()
        # Each commit writes what changed since the last (every window a busy fleet touched, with
        # its latency sketch): while catching up, fewer of them leave the rules more of the core.
        interval_s = self.settings.alerts_commit_ms / 1000 * (1 if self._caught_up else CATCH_UP_COMMIT_FACTOR)
        return time.monotonic() - self._txn_began >= interval_s

    def _commit(self, final: bool = False) -> None:
        """End the step: one Kafka transaction holds its alerts and windows (produced into it
        already), the changes it made to the state (a delta on the state topic), a snapshot of the
        whole state when one is ready, and the source positions it reached (in the delta). All of
        it is read, or none of it.

        The loop writes the delta and hands the commit to a thread, then goes on with the next
        step: its outputs wait until the commit is done (:meth:`_settle`), its changes go in the
        next delta. ``final``: wait for the commit.
        """
        self._settle(wait=True)
        self._begin()
        self._seq += 1
        positions = self._committable_positions()
        delta = {**self._progress(positions), "seq": self._seq, "rules": self.rules.delta(),
                 "windows_closed": self._windows_closed, "windows_produced": self._windows_produced}
        payload = encode(delta)
        chunks = _chunks(payload)
        for key, chunk in zip(_delta_keys(self._seq, len(chunks)), chunks):
            self._send(self._state_topic, key.encode(), chunk, self.shard.index)
        self._snapshots.delta(payload)
        snapshot_seq = None
        if self._encoded is not None and self._encoded.done():
            snapshot, snapshot_seq, encoded = self._encoded.result()
            self._encoded = None
            self._write_snapshot(snapshot, snapshot_seq, _chunks(encoded))
        cut = _Cut(self._seq, len(chunks), snapshot_seq, positions, self._step_alerts)
        self._in_txn = False
        self._step_alerts, self._windows_closed, self._windows_produced, self._dirty = [], [], 0, False
        self._committing = self._committer.submit(self._finish, cut)
        if time.monotonic() - self._last_snapshot >= self.settings.alerts_checkpoint_seconds and self._encoded is None:
            self._take_snapshot()  # the state after this step's delta
        if final:
            self._settle(wait=True)
            self._commit_offsets(final=True)

    def _finish(self, cut: _Cut) -> _Cut:
        """In the commit thread: the commit of the transaction ``cut`` ended."""
        from confluent_kafka import KafkaException

        try:
            failpoint("alerts.before_commit")  # a step's outputs and state written, not committed
            self._commit_transaction()
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                raise EzStreamError(f"alerts: step refused, another processor took over: {error}") from None
            if error.txn_requires_abort():
                self._txn.abort_transaction(30)
            # The state in memory is past what was committed: start again from the latest commit.
            raise TransientError(f"alerts: the transaction of step {cut.seq} failed, replaying from "
                                 f"the one before: {error.str()}") from None
        return cut._replace(ended=time.monotonic())

    def _settle(self, wait: bool = False) -> None:
        """Once the commit in flight is done: account for it, and begin the next transaction with
        the outputs held meanwhile. A failed commit raises here, in the loop."""
        future = self._committing
        if future is None or not (wait or future.done()):
            return
        self._committing = None
        try:
            cut = future.result()
        except EzStreamError:  # fenced: the role stops, and its lease goes to whoever took over
            raise
        self._deltas[cut.seq] = cut.chunks
        if cut.snapshot_seq is not None:
            self._deltas = {seq: n for seq, n in self._deltas.items() if seq > cut.snapshot_seq}
        self._commits += 1
        self._commit_ended = cut.ended
        self._committed = cut.positions
        if self._webhook is not None:
            for alert in cut.alerts:
                self._webhook.submit(alert)
        self._status_due = True
        if self._held:
            held, self._held = self._held, []
            self._begin()
            for topic, key, value in held:
                self._send(topic, key.encode(), value)
        self._committed_alerts.extend(cut.alerts)

    def _log_alerts(self) -> None:
        """A line for each alert committed since the last call: at the end of a turn of the loop,
        after its outputs and its commit went, so no alert waits for another's line (a formatted
        line costs about as much as the rules' work on a small fetch); once committed, so an alert
        a restart replays is logged once."""
        alerts, self._committed_alerts = self._committed_alerts, []
        for alert in alerts:
            log.info("alert %s %s (%s) for %s: %s", alert.kind, alert.state, alert.severity, alert.subject,
                     alert.message, extra={"trace_id": alert.trace_id, "alert_id": alert.alert_id,
                                           "agent_id": alert.agent_id, "tenant_id": alert.tenant_id})

    def _commit_offsets(self, final: bool = False) -> None:
        """The positions of the latest committed step as the positions group's offsets, for
        operators' lag (``ezstream status``, the lag metric) only: a restart reads its positions
        from the state topic. Outside the transaction (a round trip to the group's coordinator
        there would hold up the commit, and with it the alerts): asynchronous once a second,
        synchronous at the last commit; from the loop, so a quiet shard's last positions go too.
        Never ahead of the state: those steps are committed."""
        if not final and (self._committed is self._offsets_committed
                          or time.monotonic() - self._offsets_sent < OFFSETS_SECONDS):
            return
        from confluent_kafka import KafkaException, TopicPartition

        self._offsets_sent = time.monotonic()
        offsets = [TopicPartition(t, p, o) for (t, p), o in _by_partition(self._committed).items()]
        try:
            self._source.commit(offsets=offsets, asynchronous=not final)
            self._offsets_committed = self._committed
        except KafkaException as exc:  # lag only: the next commit sends them again
            log.warning("%s: the positions group's offsets were not committed: %s", self._label, exc.args[0].str())

    def _offsets_commit_done(self, error: Any, partitions: list) -> None:
        if error is not None:  # lag only: the next commit sends them again
            log.warning("%s: the positions group's offsets were not committed: %s", self._label, error.str())
            self._offsets_committed = {}

    def _commit_transaction(self) -> None:
        from confluent_kafka import KafkaException

        for attempt in range(3):
            try:
                self._txn.commit_transaction(30)
                return
            except KafkaException as exc:
                if not exc.args[0].retriable() or attempt == 2:
                    raise

    def _committable_positions(self) -> dict[str, int]:
        # While catching up, a partition's calls held by the merge are not in the rules' state
        # yet: its position is the first of them.
        return _by_key({tp: offset if self._merge is None else self._merge.position(tp, offset)
                        for tp, offset in self._positions.items()})

    def _progress(self, positions: dict[str, int]) -> dict[str, Any]:
        """What a delta and a snapshot both hold beside the rules: what activation restores (late
        events are the rules' own; event time and catch-up are worked out again)."""
        return {
            "time_ms": int(time.time() * 1000),
            "positions": positions,
            "watermarks": _by_key(self._watermarks.of),
            "stats": dict(self.stats),
        }

    def _take_snapshot(self) -> None:
        """Ask for a snapshot of the state after the step just committed (its delta is the last the
        snapshot process was given); the next commit that finds it done writes it."""
        self._snapshot += 1
        self._last_snapshot = time.monotonic()
        self._encoded = self._snapshots.take(self._snapshot, self._seq)

    def _write_snapshot(self, snapshot: int, seq: int, chunks: list[bytes]) -> None:
        """Produce an encoded snapshot into the open transaction, with tombstones for the deltas it
        covers."""
        for i, chunk in enumerate(chunks):
            self._txn.produce(self._state_topic, key=f"chunk-{i}".encode(), value=chunk, partition=self.shard.index)
        self._txn.produce(self._state_topic, key=b"manifest", value=json.dumps(
            {"snapshot": snapshot, "seq": seq, "chunks": len(chunks)}).encode(), partition=self.shard.index)
        for old in sorted(s for s in self._deltas if s <= seq):
            for key in _delta_keys(old, self._deltas[old]):
                self._txn.produce(self._state_topic, key=key.encode(), value=None, partition=self.shard.index)
        self._snapshot_bytes = sum(map(len, chunks))
        metrics.ALERTS_CHECKPOINT_BYTES.labels(str(self.shard.index)).set(self._snapshot_bytes)

    def status(self) -> dict[str, Any]:
        """What the processor has committed (from the loop's thread), for ``ezstream status``."""
        status = {
            "active": self.active,
            **({"shard": list(self.shard)} if self.shard.count > 1 else {}),
            "caught_up": self._caught_up,
            "snapshot": self._snapshot,
            "commit": self._seq,
            "positions": self._committed,
            "late_events": self.rules.late_events if self.rules is not None else self._late_events,
            "stats": {**self.stats, "commits": self._commits},
        }
        if self.rules is not None:
            status["state"] = {"entries": self.rules.size(), "snapshot_bytes": self._snapshot_bytes,
                               "pending_windows": len(self._closed_windows)}
            for rule, entries in status["state"]["entries"].items():
                metrics.ALERTS_STATE_ENTRIES.labels(rule, str(self.shard.index)).set(entries)
            status["event_time"] = {"low_ms": self._watermarks.low(), "skew_ms": self._watermarks.skew(),
                                    "catching_up": self._merge is not None}
            metrics.ALERTS_EVENT_TIME_SKEW.labels(str(self.shard.index)).set(status["event_time"]["skew_ms"] / 1000)
            for rule, late in status["late_events"].items():
                metrics.LATE_EVENTS.labels(rule, str(self.shard.index)).set(late)
        return status

    def _write_status(self) -> None:
        """``$EZ_HOME/run/alerts-<prefix>.status.json``: as of the latest commit while active
        (written by the loop's thread only)."""
        status = self.status()
        if self._webhook is not None:
            status["webhook"] = {"posted": self._webhook.posted, "failed": self._webhook.failed}
        self._status_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1, sort_keys=True))
        tmp.replace(self._status_file)
