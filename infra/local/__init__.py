"""Real services without Docker: Kafka (Maven Central jars + JDK), MinIO (go install), chDB, and
the OpenTelemetry Collector (the collector builder).

Driven from Python and wrapped by ``ezstream up | down | status``.
"""

from infra.local.stack import ServiceStatus, Stack

__all__ = ["ServiceStatus", "Stack"]
