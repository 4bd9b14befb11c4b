"""Kafka: client configuration from settings (and, later, the producer SDK and Avro codec)."""

from connectors.kafka.config import client_config

__all__ = ["client_config"]
