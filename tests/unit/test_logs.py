"""Log formatting and the secret filter of the workers (streams/logs.py)."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from connectors.settings import load_settings
from streams.logs import JsonFormatter, ScrubSecrets, configure_handlers, secret_values

SETTINGS = dict(
    kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="app",
    kafka_sasl_password="kafka-pass-123", s3_secret_access_key="s3-secret-456",
    clickhouse_dsn="http://analyst:ch-pass-789@db.internal:8123/ezstream",
    alerts_webhook_url="https://hooks.example.com/services/T0/B0/hook-token-abc",
)


def _capture(settings) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    configure_handlers(settings, [handler])
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_every_secret_of_the_settings_is_known_to_the_filter():
    values = secret_values(load_settings(**SETTINGS))
    for secret in ("kafka-pass-123", "s3-secret-456", "ch-pass-789",
                   "https://hooks.example.com/services/T0/B0/hook-token-abc"):
        assert any(secret in v for v in values), secret
    assert "analyst" not in values and "app" not in values


def test_secrets_are_scrubbed_from_messages_arguments_extras_and_tracebacks():
    settings = load_settings(**SETTINGS)
    logger, stream = _capture(settings)
    logger.info("connecting with %s", "kafka-pass-123")
    logger.warning("posting to https://hooks.example.com/services/T0/B0/hook-token-abc failed",
                   extra={"dsn": "http://analyst:ch-pass-789@db.internal:8123"})
    try:
        raise RuntimeError("S3 said no to s3-secret-456")
    except RuntimeError:
        logger.exception("write failed")
    text = stream.getvalue()
    for secret in ("kafka-pass-123", "s3-secret-456", "ch-pass-789", "hook-token-abc"):
        assert secret not in text
    assert "connecting with ***" in text and "S3 said no to ***" in text and "posting to *** failed" in text


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_context_value_that_is_not_text_is_scrubbed_as_its_text(log_format):
    logger, stream = _capture(load_settings(**SETTINGS, log_format=log_format))
    logger.info("connecting", extra={"config": {"sasl.password": "kafka-pass-123"}, "partition": 3})
    assert "kafka-pass-123" not in stream.getvalue() and "'sasl.password': '***'" in stream.getvalue()
    assert ("partition=3" if log_format == "text" else '"partition": 3') in stream.getvalue()


def test_a_context_object_without_a_secret_is_left_as_it_is():
    record = logging.LogRecord("x", logging.INFO, "f", 1, "plain", None, None)
    record.data, record.config = {"topic": "agent.llm_calls"}, {"password": "kafka-pass-123"}
    assert ScrubSecrets(["kafka-pass-123"]).filter(record)
    assert record.data == {"topic": "agent.llm_calls"} and record.config == "{'password': '***'}"


def test_json_lines_carry_context_and_stay_scrubbed():
    settings = load_settings(**SETTINGS, log_format="json")
    logger, stream = _capture(settings)
    logger.info("alert raised", extra={"trace_id": "t-1", "alert_id": "a-1", "partition": 3})
    try:
        raise ValueError("bad password kafka-pass-123")
    except ValueError:
        logger.error("boom", exc_info=True, extra={"trace_id": "t-2"})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "alert raised" and first["level"] == "INFO"
    assert (first["trace_id"], first["alert_id"], first["partition"]) == ("t-1", "a-1", 3)
    assert second["trace_id"] == "t-2" and "ValueError: bad password ***" in second["error"]
    assert "kafka-pass-123" not in stream.getvalue()


def test_without_secrets_the_filter_changes_nothing():
    record = logging.LogRecord("x", logging.INFO, "f", 1, "plain %s", ("text",), None)
    assert ScrubSecrets([]).filter(record) and record.getMessage() == "plain text"
    assert json.loads(JsonFormatter().format(record))["message"] == "plain text"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_lines_off_a_terminal_are_plain_and_keep_fausts_tables():
    import faust.worker  # noqa: F401  (registers Faust's formatter of log arguments, as a worker does)
    from faust.types import TP

    logger, stream = _capture(load_settings())
    logger.info("alert %s for %s", "budget", "tenant-1", extra={"trace_id": "t-1"})
    logger.info("%s: %s", "moved", {TP("agent.llm_calls", 0): TP("agent.llm_calls", 1)})
    first, *table = stream.getvalue().splitlines()
    assert re.fullmatch(r"\[[\d\- :,]+\] \[\d+\] \[INFO\] alert budget for tenant-1 trace_id=t-1", first), first
    assert "\x1b[" not in stream.getvalue()
    assert any("Topic Partition Map" in line for line in table), table


def test_text_lines_end_with_the_context_before_any_traceback():
    logger, stream = _capture(load_settings(**SETTINGS))
    logger.info("plain")
    logger.warning("dead letter", extra={"topic": "agent.llm_calls", "partition": 3, "offset": 17,
                                         "reason": "cost_usd is NaN", "empty": "", "_private": "x"})
    try:
        raise ValueError("bad")
    except ValueError:
        logger.error("failed", exc_info=True, extra={"trace_id": "t-9", "dsn": "http://a:ch-pass-789@h"})
    record = logging.LogRecord("x", logging.INFO, "f", 1, "formatted before", None, None)
    record.extra = ""  # what Faust's formatter on another handler leaves on a record
    logger.handle(record)
    plain, dead, failed, *trace, before = stream.getvalue().splitlines()
    assert before.endswith("[INFO] formatted before"), before
    assert plain.endswith("[INFO] plain")
    assert dead.endswith('[WARNING] dead letter topic=agent.llm_calls partition=3 offset=17 '
                         'reason="cost_usd is NaN" empty=""'), dead
    assert failed.endswith('[ERROR] failed trace_id=t-9 dsn=http://a:***@h'), failed
    assert trace[0] == "Traceback (most recent call last):" and trace[-1] == "ValueError: bad"


def test_text_to_a_terminal_keeps_the_handlers_formatter():
    handler = logging.StreamHandler(_Terminal())
    coloured = logging.Formatter("%(levelname)s %(message)s")
    handler.setFormatter(coloured)
    configure_handlers(load_settings(), [handler])
    assert handler.formatter is coloured
    configure_handlers(load_settings(log_format="json"), [handler])
    assert isinstance(handler.formatter, JsonFormatter)
