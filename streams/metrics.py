"""Prometheus metrics of a worker, served on ``EZ_METRICS_PORT`` (off when unset).

One registry per process; every role of the worker records into it. Names follow Prometheus
conventions (``_total`` counters, base units: seconds, bytes). Labels stay bounded: topics,
tables, roles, error classes, alert kinds, partitions.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()

EVENTS_IN = Counter("ezstream_events_in", "Messages read from Kafka, per role and topic.",
                    ["role", "topic"], registry=REGISTRY)
ROWS_WRITTEN = Counter("ezstream_rows_written", "Rows written durably by a sink, per table.",
                       ["sink", "table"], registry=REGISTRY)
DEAD_LETTERS = Counter("ezstream_dead_letters", "Messages sent to a DLQ, per source topic and error class.",
                       ["role", "topic", "error_class"], registry=REGISTRY)
BATCH_ROWS = Histogram("ezstream_batch_rows", "Messages per sink batch (all partitions of one flush).", ["sink"],
                       buckets=(10, 100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000),
                       registry=REGISTRY)
BATCH_BYTES = Histogram("ezstream_batch_bytes", "Encoded bytes per sink batch.", ["sink"],
                        buckets=tuple(2 ** n for n in range(10, 30, 2)), registry=REGISTRY)
FLUSH_SECONDS = Histogram("ezstream_flush_seconds", "Seconds from a flush's start to its data being durable.",
                          ["sink"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                          registry=REGISTRY)
RETRIES = Counter("ezstream_sink_retries", "Failed sink operations retried (the store was down or slow).",
                  ["sink"], registry=REGISTRY)
PAUSED_PARTITIONS = Gauge("ezstream_paused_partitions", "Partitions paused while a sink retries.", ["role"],
                          registry=REGISTRY)
HALTED_PARTITIONS = Gauge("ezstream_halted_partitions",
                          "Partitions stopped because the DLQ refused one of their dead letters for good.",
                          ["role"], registry=REGISTRY)
CONSUMER_LAG = Gauge("ezstream_consumer_lag", "Messages behind the partition's end, per consumer group.",
                     ["group", "topic", "partition"], registry=REGISTRY)
ROLE_RESTARTS = Counter("ezstream_role_restarts", "Crashes of a worker's role after which it was started again.",
                        ["role"], registry=REGISTRY)
ROLE_UP = Gauge("ezstream_role_up", "1 while a worker's role runs (or starts), 0 while it waits to restart "
                "after a crash.", ["role"], registry=REGISTRY)
ALERTS = Counter("ezstream_alerts", "Alerts produced to agent.alerts, per kind and state.", ["kind", "state"],
                 registry=REGISTRY)
WINDOWS_CLOSED = Counter("ezstream_windows_closed", "Closed LLM-call windows produced, per cause.", ["closed_by"],
                         registry=REGISTRY)
LATE_EVENTS = Gauge("ezstream_late_events", "Events too late for a window or rule (still in lake and ClickHouse), "
                    "per rule and shard of the alerts role.", ["rule", "shard"], registry=REGISTRY)
ALERTS_STATE_ENTRIES = Gauge("ezstream_alerts_state_entries",
                             "Entries the alerts role's state holds per rule (subjects, days, buckets, firing "
                             "conditions, open windows), per rule and shard, as of its latest status.", ["rule", "shard"],
                             registry=REGISTRY)
ALERTS_EVENT_TIME_SKEW = Gauge("ezstream_alerts_event_time_skew_seconds",
                               "How far apart the event times of the LLM-call partitions the alerts role hears "
                               "from are (windows close on the slowest), per shard.",
                               ["shard"], registry=REGISTRY)
ALERTS_CHECKPOINT_BYTES = Gauge("ezstream_alerts_checkpoint_bytes",
                                "Size of the alerts role's latest snapshot of its whole state on its state topic "
                                "(compressed; each step between snapshots writes only its changes), per shard.",
                                ["shard"], registry=REGISTRY)

SPANS = Counter("ezstream_spans", "OpenTelemetry spans read by the spans role from otlp_spans, per outcome: "
                "llm_call (a GenAI call), task (an invoke_agent span) or skipped (any other span).",
                ["outcome"], registry=REGISTRY)

INFERENCE_REQUESTS = Counter("ezstream_inference_requests", "Inference requests read (decoded), answerable or not.",
                             registry=REGISTRY)
INFERENCE_RESULTS = Counter("ezstream_inference_results", "Inference results committed, error results included.",
                            registry=REGISTRY)
INFERENCE_ERRORS = Counter("ezstream_inference_errors", "Inference results committed with an error (the request "
                           "could not be computed).", registry=REGISTRY)
INFERENCE_QUEUE_TEXTS = Gauge("ezstream_inference_queue_texts", "Texts read by the inference worker and not yet "
                              "computed (queued or being tokenized).", registry=REGISTRY)
INFERENCE_BATCH_TEXTS = Histogram("ezstream_inference_batch_texts", "Texts per forward pass of the model.",
                                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=REGISTRY)
INFERENCE_FORWARD_SECONDS = Histogram("ezstream_inference_forward_seconds", "Seconds of one forward pass of the "
                                      "model (tokenizing not included).",
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
                                      registry=REGISTRY)


def serve(host: str, port: int) -> None:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread."""
    start_http_server(port, addr=host, registry=REGISTRY)
    log.info("metrics on http://%s:%d/metrics", host, port)


def lag_from_statistics(group: str):
    """A librdkafka ``stats_cb`` that keeps :data:`CONSUMER_LAG` per partition of ``group``."""

    def record(stats_json: str) -> None:
        try:
            stats: dict[str, Any] = json.loads(stats_json)
        except ValueError:
            return
        for topic, info in stats.get("topics", {}).items():
            for partition, p in info.get("partitions", {}).items():
                lag = p.get("consumer_lag", -1)
                if partition != "-1" and lag >= 0:
                    CONSUMER_LAG.labels(group, topic, partition).set(lag)

    return record
