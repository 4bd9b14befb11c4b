"""The topic catalogue of DESIGN.md and idempotent topic administration."""

from __future__ import annotations

from dataclasses import dataclass

from connectors.errors import TransientError
from connectors.kafka.config import client_config
from connectors.settings import Settings

DLQ_SUFFIX = ".dlq"

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
    for base in EVENT_TOPICS:
        topic = topic_name(settings, base)
        specs.append(TopicSpec(topic, settings.topic_partitions, settings.topic_replication, {
            "cleanup.policy": "delete", "retention.ms": str(settings.topic_retention_ms),
        }))
        specs.append(TopicSpec(dlq_topic(topic), settings.topic_partitions, settings.topic_replication, {
            "cleanup.policy": "delete", "retention.ms": str(settings.dlq_retention_ms),
        }))
    return specs


def ensure_topics(settings: Settings, specs: list[TopicSpec], timeout_s: float = 30.0) -> dict[str, str]:
    """Create the topics that do not exist yet; returns ``{name: "created" | "exists"}``."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(settings))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise TransientError(f"Kafka at {settings.kafka_bootstrap} did not answer: {exc}") from None
    outcome = {spec.name: "exists" for spec in specs if spec.name in existing}
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
    return outcome


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
