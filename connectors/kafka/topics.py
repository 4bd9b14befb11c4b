"""The topic catalogue of DESIGN.md and idempotent topic administration."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from connectors.errors import TransientError
from connectors.kafka.config import client_config
from connectors.settings import Settings

DLQ_SUFFIX = ".dlq"

#: ``max.message.bytes`` of every ``.dlq`` topic, and the largest dead letter the DLQ producer
#: sends (its ``message.max.bytes``): 8 MiB. A dead letter is its source message plus about 300
#: bytes of headers, so the DLQ topic must take more than any source topic does. Source topics
#: keep the broker's default (Kafka's ``message.max.bytes``: 1 MiB + 12 bytes; infra/local leaves
#: it so); a topic-level value above the broker's is allowed, and consumers fetch a larger batch
#: whole (KIP-74), so nothing else needs raising.
DLQ_MAX_MESSAGE_BYTES = 8 * 1024 * 1024

#: Event topics and what each carries (schema name). Every one also has a ``<topic>.dlq``.
EVENT_TOPICS: dict[str, str] = {
    "agent.tasks": "TaskEvent",
    "agent.llm_calls": "LlmCall",
    "agent.telemetry": "Telemetry",
    "agent.alerts": "Alert",
    "agent.llm_windows": "LlmWindow",
    "inference.requests": "InferenceRequest",
    "inference.results": "InferenceResult",
}

#: The topic the OpenTelemetry Collector writes spans to (infra/local/otelcol.py, infra/k8s,
#: infra/docker-compose.yml): OTLP ``TracesData`` protobuf (the kafkaexporter's ``otlp_proto``).
#: Each message holds spans of one trace only, keyed by its trace id in hex, so that all the spans
#: of a trace are on one partition (a trace may span several messages).
OTLP_SPANS = "otlp_spans"

#: Topics whose messages are not project events (no Avro schema), with what they carry. Each also
#: has a ``<topic>.dlq`` for what its readers cannot process.
FOREIGN_TOPICS: dict[str, str] = {
    OTLP_SPANS: "OTLP TracesData (otlp_proto), written by the OpenTelemetry Collector",
}


def topic_name(settings: Settings, base: str) -> str:
    """The name on the broker of catalogue topic ``base`` (``EZ_TOPIC_PREFIX`` applied)."""
    return settings.topic_prefix + base


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: dict[str, str]


def catalogue(settings: Settings) -> list[TopicSpec]:
    """Every topic of the project, with partitions and retention from settings."""
    specs = []
    for base in (*EVENT_TOPICS, *FOREIGN_TOPICS):
        topic = topic_name(settings, base)
        specs.append(TopicSpec(topic, settings.topic_partitions, settings.topic_replication, {
            "cleanup.policy": "delete", "retention.ms": str(settings.topic_retention_ms),
        }))
        specs.append(TopicSpec(dlq_topic(topic), settings.topic_partitions, settings.topic_replication, {
            "cleanup.policy": "delete", "retention.ms": str(settings.dlq_retention_ms),
            "max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES),
        }))
    return specs


def ensure_topics(settings: Settings, specs: list[TopicSpec], timeout_s: float = 30.0) -> dict[str, str]:
    """Create the topics that do not exist yet; returns ``{name: "created" | "exists" | "raised"}``.

    Returns once every partition of the topics it created answers on its leader (a ListOffsets
    request, served only by a broker that took leadership), so the first produce after it is not
    refused with NOT_LEADER: the controller acknowledges a creation before the leaders have
    applied it. A producer whose batch is refused that way can lose messages unless it keeps one
    request in flight (:data:`~connectors.kafka.config.EXACT_DELIVERY`, which every producer of the
    project does); other clients may not.

    An existing topic whose ``max.message.bytes`` is below its spec's gets the spec's ("raised"):
    ``.dlq`` topics created before :data:`DLQ_MAX_MESSAGE_BYTES` would refuse the largest letters.
    Nothing else of an existing topic is changed.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(settings))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
        raised = _raise_message_limits(
            admin, [s for s in specs if s.name in existing and "max.message.bytes" in s.config], timeout_s)
    except KafkaException as exc:
        raise TransientError(f"Kafka at {settings.kafka_bootstrap} did not answer: {exc}") from None
    outcome = {spec.name: "raised" if spec.name in raised else "exists" for spec in specs if spec.name in existing}
    missing = [spec for spec in specs if spec.name not in existing]
    if not missing:
        return outcome
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication, config=s.config)
         for s in missing],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result()
            outcome[name] = "created"
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TransientError(f"creating topic {name} failed: {exc.args[0].str()}") from None
            outcome[name] = "exists"
    _wait_for_leaders(admin, settings, {s.name: s.partitions for s in missing if outcome[s.name] == "created"},
                      timeout_s)
    return outcome


#: Partition errors that mean "the leader has not taken over yet": asked again until the timeout.
#: ``_NOENT`` is librdkafka's "no leaders found" while the metadata lacks the new partitions.
_NOT_YET = ("_NOENT", "NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE", "UNKNOWN_TOPIC_OR_PART",
            "REPLICA_NOT_AVAILABLE", "UNKNOWN_LEADER_EPOCH", "FENCED_LEADER_EPOCH", "OFFSET_NOT_AVAILABLE",
            "_UNKNOWN_PARTITION", "_UNKNOWN_TOPIC", "_TIMED_OUT", "REQUEST_TIMED_OUT")


def _wait_for_leaders(admin: Any, settings: Settings, partitions: dict[str, int], timeout_s: float) -> None:
    """Ask each partition's leader for its end offset until every one answers."""
    from confluent_kafka import KafkaException, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    pending = [TopicPartition(name, p) for name, count in partitions.items() for p in range(count)]
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    while pending:
        left = deadline - time.monotonic()
        futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in pending},
                                     request_timeout=max(1.0, min(left, 10.0)))
        waiting, last = [], ""
        for tp, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                error = exc.args[0]
                if error.name() not in _NOT_YET:
                    raise TransientError(f"topic {tp.topic} [{tp.partition}] was created but its leader "
                                         f"answered: {error.str()}") from None
                waiting.append(tp)
                last = error.str()
        pending = waiting
        if pending and time.monotonic() + pause > deadline:
            names = ", ".join(f"{tp.topic} [{tp.partition}]" for tp in pending[:5])
            raise TransientError(f"{len(pending)} partition(s) created on {settings.kafka_bootstrap} have no "
                                 f"leader serving them after {timeout_s:.0f} s ({names}; last: {last})")
        if pending:
            time.sleep(pause)  # the broker applies the creation on its own; nothing to wait on here
            pause = min(pause * 2, 0.5)
            # librdkafka finds the leaders in its metadata cache, which may predate the creation.
            for name in {tp.topic for tp in pending}:
                admin.list_topics(topic=name, timeout=max(1.0, min(deadline - time.monotonic(), 10.0)))


def _raise_message_limits(admin: Any, specs: list[TopicSpec], timeout_s: float) -> set[str]:
    """Set ``max.message.bytes`` of the existing ``specs`` whose value on the broker is lower."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    if not specs:
        return set()
    wanted = {s.name: int(s.config["max.message.bytes"]) for s in specs}
    low = set()
    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in wanted],
                                       request_timeout=timeout_s)
    for resource, future in described.items():
        entry = future.result().get("max.message.bytes")
        if entry is not None and int(entry.value) < wanted[resource.name]:
            low.add(resource.name)
    if low:
        changes = [ConfigResource(ResourceType.TOPIC, name, incremental_configs=[ConfigEntry(
            "max.message.bytes", str(wanted[name]), incremental_operation=AlterConfigOpType.SET)]) for name in low]
        for future in admin.incremental_alter_configs(changes, request_timeout=timeout_s).values():
            future.result()
    return low


def delete_topics_with_prefix(settings: Settings, prefix: str, timeout_s: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a run's own, such as a benchmark's
    ``bench.alerts.<time>.``); returns their names, sorted. A prefix must be given: an empty one
    would name every topic of the cluster."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    if not prefix:
        raise ValueError("delete_topics_with_prefix needs a non-empty prefix")
    admin = AdminClient(client_config(settings))
    try:
        names = sorted(name for name in admin.list_topics(timeout=timeout_s).topics if name.startswith(prefix))
        if names:
            for future in admin.delete_topics(names, request_timeout=timeout_s).values():
                try:
                    future.result()
                except KafkaException as exc:  # deleted meanwhile by someone else: gone all the same
                    if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                        raise
    except KafkaException as exc:
        raise TransientError(f"Kafka at {settings.kafka_bootstrap}: deleting the topics {prefix}* failed: {exc}") from None
    return names


def describe_topics(settings: Settings, names: list[str] | None = None, timeout_s: float = 10.0) -> list[dict]:
    """Partitions, leaders and configuration of ``names`` (all non-internal topics by default)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient(client_config(settings))
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise TransientError(f"Kafka at {settings.kafka_bootstrap} did not answer: {exc}") from None
    wanted = sorted(names or [t for t in metadata.topics if not t.startswith("__")])
    unknown = [t for t in wanted if t not in metadata.topics]
    if unknown:
        raise TransientError(f"no such topic: {', '.join(unknown)}")
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in wanted]
    configs = {}
    if resources:
        for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
            entries = future.result()
            configs[resource.name] = {
                k: v.value for k, v in entries.items() if k in ("cleanup.policy", "retention.ms")
            }
    return [
        {
            "topic": t,
            "partitions": len(metadata.topics[t].partitions),
            "replication": len(next(iter(metadata.topics[t].partitions.values())).replicas)
            if metadata.topics[t].partitions else 0,
            **configs.get(t, {}),
        }
        for t in wanted
    ]
