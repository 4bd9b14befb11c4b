"""Kafka over SASL_SSL with SCRAM-SHA-512, and secrets that never show up anywhere.

A broker of its own, started through infra/local with TLS (a CA and a broker certificate made
for this test) and SCRAM users, on a free port: the SDK, the CLI and the pipeline connect with
settings only; a wrong password and an untrusted CA fail with a clear error. Then a whole run
(worker on the secured broker, lake on MinIO with its keys, alert webhook with a token in its
URL, a ClickHouse server DSN with a password) is grepped for every secret value.
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import subprocess
import sys
import uuid
import weakref

import pytest
from confluent_kafka import Consumer

from connectors.errors import ConfigError
from connectors.kafka import client_config
from connectors.kafka.connect import KafkaAuthError, check_connection
from connectors.kafka.events import LlmCall
from connectors.kafka.producer import EventProducer
from connectors.kafka.topics import catalogue, ensure_topics, topic_name
from connectors.settings import Settings, load_settings
from infra.local.kafka import KafkaBroker
from infra.local.net import free_port
from infra.local.tls import ensure_broker_tls
from streams.app import broker_credentials
from tests.conftest import wait_for
from tests.integration.pipeline import REPO, Truth, Worker, produce_simulated, settings_env

USER = "ezstream-app"


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Settings:
    """A SASL_SSL (SCRAM-SHA-512) broker of this module, stopped at the end."""
    home = tmp_path_factory.mktemp("secured")
    settings = load_settings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=USER,
        kafka_sasl_password="kafka-" + secrets.token_urlsafe(18),
        kafka_ssl_ca_location=home / "client" / "ca.pem",
        lake_uri=f"file://{home / 'lake'}",
        clickhouse_dsn=f"chdb://{home / 'clickhouse'}",
    )
    broker = KafkaBroker(settings)
    try:
        assert broker.up() == "started"
        yield settings
    finally:
        broker.down()


def _cli(args: list[str], env: dict[str, str], stdin: str | None = None, timeout_s: float = 120):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EZ_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=REPO, input=stdin,
                          env={**base, **env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=timeout_s)


def _count(settings: Settings, topic: str, expected: int) -> int:
    consumer = Consumer(client_config(settings, **{"group.id": f"count-{uuid.uuid4().hex}",
                                                   "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    seen = 0
    try:
        def done() -> bool:
            nonlocal seen
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None:
                    seen += 1
            return seen >= expected
        wait_for(done, 60, f"{expected} messages on {topic}")
        # Nothing more than expected arrives either.
        seen += sum(1 for m in consumer.consume(500, timeout=2.0) if m.error() is None)
    finally:
        consumer.close()
    return seen


def _llm_call_fields(i: int) -> dict:
    return dict(agent_id=f"development-{i % 3:02d}", agent_type="development", tenant_id="acme",
                trace_id=f"trace-{i}", call_id=f"call-{i}", task_id=f"task-{i}", provider="anthropic",
                model="claude-sonnet-4", api_key_alias="team-a", input_tokens=100, output_tokens=50,
                cost_usd=0.001, price_version="2026-11-01", latency_ms=420.0, status="ok", cache_hit=False)


def _llm_call(i: int) -> LlmCall:
    return LlmCall(**_llm_call_fields(i))


def test_the_local_broker_speaks_only_sasl_ssl_with_its_own_ca(secured):
    props = (secured.home / "kafka" / "server.properties").read_text()
    port = secured.kafka_bootstrap.rsplit(":", 1)[1]
    assert f"listeners=SASL_SSL://127.0.0.1:{port}," in props
    assert "PLAINTEXT://" not in props and "CONTROLLER:SSL" in props
    assert "listener.name.controller.ssl.client.auth=required" in props
    assert secured.kafka_ssl_ca_location.read_bytes() == (secured.home / "kafka" / "tls" / "ca.pem").read_bytes()
    # Keys and the config holding the broker's own password are the owner's only.
    for private in ("kafka/tls/ca-key.pem", "kafka/tls/broker.pem", "kafka/server.properties",
                    "kafka/broker-user.secret"):
        assert (secured.home / private).stat().st_mode & 0o077 == 0, private
    check_connection(secured)
    # A plaintext client gets nothing from the TLS listener.
    plain = secured.model_copy(update={"kafka_security_protocol": Settings.model_fields[
        "kafka_security_protocol"].default})
    with pytest.raises(Exception):
        check_connection(plain, timeout_s=4)


def test_sdk_and_cli_produce_over_sasl_ssl(secured, tmp_path):
    settings = secured.model_copy(update={"topic_prefix": f"sec.{uuid.uuid4().hex[:8]}."})
    env = settings_env(settings)
    created = _cli(["topics", "create"], env)
    assert created.returncode == 0, created.stderr
    assert f"{settings.topic_prefix}agent.llm_calls" in created.stdout

    with EventProducer(settings) as producer:
        for i in range(40):
            producer.send(_llm_call(i))
    assert sum(producer.delivered.values()) == 40

    lines = [json.dumps(_llm_call_fields(100 + i)) for i in range(25)]
    produced = _cli(["produce", "--topic", "agent.llm_calls", "-"], env, stdin="\n".join(lines) + "\n")
    assert produced.returncode == 0, produced.stderr
    assert "sent 25, delivered 25, rejected 0" in produced.stdout

    assert _count(settings, topic_name(settings, "agent.llm_calls"), 65) == 65


def test_wrong_password_is_refused_with_a_clear_error(secured, tmp_path):
    wrong = secured.model_copy(update={"kafka_sasl_password": load_settings(
        kafka_sasl_password="not-the-password-" + secrets.token_hex(4)).kafka_sasl_password})
    bad = wrong.kafka_sasl_password.get_secret_value()

    with pytest.raises(KafkaAuthError) as refused:
        check_connection(wrong, timeout_s=30)
    message = str(refused.value)
    assert f"refused the credentials of user '{USER}'" in message and "EZ_KAFKA_SASL_PASSWORD" in message
    assert bad not in message

    # The SDK: the send does not hang in librdkafka's retries; flush says why.
    producer = EventProducer(wrong)
    producer.send(_llm_call(1))
    with pytest.raises(KafkaAuthError, match="refused the credentials"):
        producer.flush(timeout_s=30)
    # librdkafka would keep reconnecting for as long as the client lives: it must go with the producer.
    gone = weakref.ref(producer)
    del producer
    gc.collect()
    assert gone() is None, "the refused producer outlives its last reference"

    # The CLI and the worker: exit code 2 and one clear line, no password.
    env = settings_env(wrong)
    produced = _cli(["produce", "--topic", "agent.llm_calls", "-"], env,
                    stdin=json.dumps(_llm_call_fields(2)) + "\n")
    assert produced.returncode == 2
    assert f"configuration error: Kafka at {wrong.kafka_bootstrap} refused the credentials of user '{USER}'" \
        in produced.stderr
    worker = _cli(["worker", "--only", "lake", "--home", str(tmp_path / "w")],
                  {**env, "EZ_START_TIMEOUT_S": "30"})
    assert worker.returncode == 2 and "refused the credentials" in worker.stderr
    for output in (produced.stdout, produced.stderr, worker.stdout, worker.stderr):
        assert bad not in output


def test_an_untrusted_certificate_is_refused_with_a_clear_error(secured, tmp_path):
    other_ca = ensure_broker_tls(tmp_path / "other", "127.0.0.1").ca_cert  # a CA that signed nothing of it
    untrusting = secured.model_copy(update={"kafka_ssl_ca_location": other_ca})
    with pytest.raises(KafkaAuthError, match="TLS with Kafka .* failed: .*certificate verify failed.*"
                                             "EZ_KAFKA_SSL_CA_LOCATION"):
        check_connection(untrusting, timeout_s=30)


def test_faust_credentials_come_from_the_same_settings(secured):
    credentials = broker_credentials(secured)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.username == USER
    missing = secured.model_copy(update={"kafka_sasl_username": None})
    with pytest.raises(ConfigError, match="EZ_KAFKA_SASL_USERNAME"):
        broker_credentials(missing)


def test_pipeline_over_sasl_ssl_is_exact_and_no_secret_appears_anywhere(secured, s3_settings, hook, tmp_path):
    """Worker (lake on MinIO, ClickHouse, alerts with a webhook) on the secured broker; every log
    line, CLI output, error and status report of the run is searched for each secret."""
    state, webhook_url = hook
    webhook_token = "hook-" + secrets.token_urlsafe(12)
    ch_password = "ch-" + secrets.token_urlsafe(12)
    settings = load_settings(**{
        **{name: getattr(secured, name) for name in (
            "kafka_bootstrap", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
            "kafka_ssl_ca_location")},
        "kafka_sasl_password": secured.kafka_sasl_password.get_secret_value(),
        "home": tmp_path / "home",
        "topic_prefix": f"sec.{uuid.uuid4().hex[:8]}.",
        "topic_partitions": 2,
        "lake_uri": f"s3://{s3_settings.lake_uri.split('://', 1)[1].split('/', 1)[0]}/sec-{uuid.uuid4().hex[:8]}",
        "s3_endpoint": s3_settings.s3_endpoint,
        "s3_access_key_id": s3_settings.s3_access_key_id,
        "s3_secret_access_key": s3_settings.s3_secret_access_key.get_secret_value(),
        "clickhouse_dsn": f"chdb://{tmp_path / 'clickhouse'}",
        "clickhouse_database": "ez_" + uuid.uuid4().hex[:8],
        "alerts_webhook_url": webhook_url.replace("secret-token", webhook_token),
        "lake_flush_seconds": 1.0,
        "clickhouse_flush_seconds": 0.5,
        "sink_retry_max_seconds": 2.0,
    })
    secret_values = {
        "EZ_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password.get_secret_value(),
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
        "webhook token": webhook_token,
        "ClickHouse password": ch_password,
        "broker's own password": (secured.home / "kafka" / "broker-user.secret").read_text().strip(),
    }
    ensure_topics(settings, catalogue(settings))
    env = settings_env(settings)
    outputs: list[str] = []

    worker = Worker(settings, "lake,clickhouse,alerts", tmp_path / "worker").start()
    try:
        truth = Truth()
        produce_simulated(settings, 3000, seed=11, truth=truth)
        simulated = _cli(["simulate", "--rate", "2000", "--duration", "2", "--seed", "12"], env)
        outputs += [simulated.stdout, simulated.stderr]
        assert simulated.returncode == 0, simulated.stderr
        for line in simulated.stdout.splitlines():  # topic, sent, delivered, failed
            parts = line.split()
            if len(parts) == 4 and parts[0].startswith(settings.topic_prefix + "agent."):
                table = {"agent.tasks": "task_events", "agent.llm_calls": "llm_calls",
                         "agent.telemetry": "telemetry"}[parts[0][len(settings.topic_prefix):]]
                truth.count[table] += int(parts[2].replace(",", ""))
        assert sum(truth.count.values()) > 3000
        truth.costs.clear()  # the simulated costs are not known here: compare counts only
        status = _cli(["status", "--json"], {**env, "EZ_HOME": str(worker.home)})
        outputs += [status.stdout, status.stderr]
        report = json.loads(status.stdout)
        assert report  # the operator view answered over SASL_SSL
        wait_for(lambda: _counts_match(settings, truth, worker), 120, "lake and ClickHouse hold every event")
    finally:
        worker.stop()

    # A ClickHouse server DSN with a password that is refused (nothing listens): a clear error, no password.
    dsn_env = {**env, "EZ_CLICKHOUSE_DSN": f"http://analyst:{ch_password}@127.0.0.1:{free_port()}/ezstream"}
    failed_sql = _cli(["sql", "SELECT 1"], dsn_env)
    outputs += [failed_sql.stdout, failed_sql.stderr]
    assert failed_sql.returncode != 0 and failed_sql.stderr.strip()
    bad_settings = _cli(["settings"], {**dsn_env, "EZ_KAFKA_SASL_MECHANISM": "NOPE"})
    outputs += [bad_settings.stdout, bad_settings.stderr]
    assert bad_settings.returncode == 2 and "EZ_KAFKA_SASL_MECHANISM" in bad_settings.stderr
    shown = _cli(["settings"], dsn_env)
    outputs += [shown.stdout, shown.stderr]
    assert shown.returncode == 0

    files = [p for root in (worker.home, settings.home, secured.home / "logs") if root.exists()
             for p in root.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".json", ".txt")]
    assert any(p.name.startswith("worker") for p in files), files
    texts = {str(p): p.read_text(errors="replace") for p in files}
    texts.update({f"output {i}": text for i, text in enumerate(outputs)})
    texts.update({f"webhook body {i}": body.decode() for i, (_, _, body) in enumerate(state.requests)})
    assert sum(len(t) for t in texts.values()) > 10_000  # the run did log plenty
    for name, value in secret_values.items():
        leaks = [where for where, text in texts.items() if value in text]
        assert not leaks, f"{name} appears in {leaks}"


def _counts_match(settings: Settings, truth: Truth, worker: Worker) -> bool:
    from tests.integration.pipeline import clickhouse_totals, lake_totals

    want = {table: n for table, n in truth.count.items()}
    lake = {table: rows for table, (rows, _, positions) in lake_totals(settings).items() if table in want}
    clickhouse = {table: rows for table, (rows, _, _) in clickhouse_totals(settings, worker).items() if table in want}
    worker.alive()
    return lake == want and clickhouse == want
