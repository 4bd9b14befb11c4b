"""Structured worker logs: with EZ_LOG_FORMAT=json every line of Python logging is one JSON object,
and the lines about events carry their context (trace_id of an alert, position of a dead letter)."""

from __future__ import annotations

import json

from confluent_kafka import Producer

from connectors.kafka import client_config
from connectors.kafka.producer import EventProducer
from connectors.kafka.topics import catalogue, ensure_topics, topic_name
from connectors.settings import load_settings
from tests.conftest import wait_for
from tests.integration.pipeline import Worker
from tests.integration.test_alerts import BUDGETS, call


def _json_lines(worker: Worker) -> list[dict]:
    return [json.loads(line) for line in worker.log.read_text(errors="replace").splitlines()
            if line.startswith("{")]


def test_json_logs_carry_trace_id_and_dead_letter_positions(stack, stack_overrides, unique, tmp_path):
    (tmp_path / "budgets.toml").write_text(BUDGETS)
    settings = load_settings(**{
        **stack_overrides,
        "topic_prefix": f"l.{unique}.",
        "topic_partitions": 2,
        "lake_uri": f"file://{tmp_path}/lake",
        "lake_flush_seconds": 0.5,
        "budgets_file": tmp_path / "budgets.toml",
        "alerts_checkpoint_seconds": 0.5,
        "log_format": "json",
    })
    ensure_topics(settings, catalogue(settings))
    worker = Worker(settings, "lake,alerts", tmp_path / "worker").start()
    try:
        calls = [call(agent="dev-json", cost=0.3) for _ in range(4)]  # 1.2 USD against a 1.0 USD budget
        with EventProducer(settings) as producer:
            for c in calls:
                producer.send(c)
        raw = Producer(client_config(settings))
        where: list[tuple[str, int, int]] = []
        raw.produce(topic_name(settings, "agent.llm_calls"), key=b"dev-json", value=b"not avro at all",
                    on_delivery=lambda err, msg: where.append((msg.topic(), msg.partition(), msg.offset())))
        assert raw.flush(30) == 0

        def logged():
            lines = _json_lines(worker)
            alerts = [l for l in lines if l.get("alert_id") and l.get("agent_id") == "dev-json"]
            letters = [l for l in lines if l.get("error_class")]
            return (alerts, letters) if len(alerts) >= 3 and letters else None

        alerts, letters = wait_for(logged, 90, "alert and dead-letter log lines")
    finally:
        worker.stop()

    trace_ids = {c.trace_id for c in calls}
    for line in alerts:  # budget 80 %, 90 %, 100 %: each names the call that crossed the line
        assert line["trace_id"] in trace_ids and line["level"] == "INFO"
        assert line["logger"] == "streams.intelligence.processor" and "budget" in line["message"]
    (topic, partition, offset), = where
    letter, = letters
    assert (letter["topic"], letter["partition"], letter["offset"]) == (topic, partition, offset)
    assert letter["error_class"] == "BadMarker" and letter["level"] == "WARNING"
    # Every line Python logging wrote is JSON (librdkafka's own lines go to stderr unformatted).
    text = worker.log.read_text(errors="replace").splitlines()
    python_lines = [l for l in text if l and not l.startswith(("%", "{"))]
    assert not [l for l in python_lines if l.startswith("[")], python_lines[:5]
    assert all({"time", "level", "logger", "message", "process"} <= set(l) for l in _json_lines(worker))
