"""Settings: defaults, precedence (explicit > env > file), and bad values naming the setting."""

from __future__ import annotations


import pytest

from connectors.errors import ConfigError
from connectors.kafka import client_config
from connectors.lake import storage_options
from connectors.settings import describe_settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No EZ_*/AWS_* from the developer's shell, and no ezstream.toml in the working dir."""
    import os

    for name in list(os.environ):
        if name.startswith(("EZ_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults(tmp_path):
    s = load_settings()
    assert s.home == tmp_path / ".ezstream"
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.lake_uri == f"file://{tmp_path}/.ezstream/lake"
    assert s.clickhouse_dsn.get_secret_value() == f"chdb://{tmp_path}/.ezstream/clickhouse"
    assert s.kafka_security_protocol.value == "PLAINTEXT"
    assert s.logs_dir == tmp_path / ".ezstream" / "logs"
    assert storage_options(s) == {}


def test_env_overrides_default_and_derived_paths_follow_home(monkeypatch, tmp_path):
    monkeypatch.setenv("EZ_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("EZ_KAFKA_BOOTSTRAP", "broker-1:9093, broker-2:9093")
    s = load_settings()
    assert s.home == tmp_path / "elsewhere"
    assert s.kafka_bootstrap == "broker-1:9093,broker-2:9093"
    assert s.lake_uri == f"file://{tmp_path}/elsewhere/lake"


def test_explicit_beats_env_beats_file(monkeypatch, tmp_path):
    (tmp_path / "ezstream.toml").write_text(
        'kafka_bootstrap = "from-file:1"\ntopic_partitions = 12\nminio_bucket = "file-bucket"\n'
    )
    monkeypatch.setenv("EZ_KAFKA_BOOTSTRAP", "from-env:2")
    monkeypatch.setenv("EZ_TOPIC_PARTITIONS", "24")
    s = load_settings(topic_partitions=48)
    assert s.minio_bucket == "file-bucket"  # file over default
    assert s.kafka_bootstrap == "from-env:2"  # env over file
    assert s.topic_partitions == 48  # explicit over env


def test_config_file_from_env_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("EZ_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="EZ_CONFIG_FILE"):
        load_settings()


def test_unknown_key_in_file_is_named(tmp_path):
    (tmp_path / "ezstream.toml").write_text('kafka_bootstrapp = "x:1"\n')
    with pytest.raises(ConfigError, match="kafka_bootstrapp"):
        load_settings()


def test_s3_lake_with_aws_variables(monkeypatch):
    monkeypatch.setenv("EZ_LAKE_URI", "s3://lake-bucket/prefix/")
    monkeypatch.setenv("EZ_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    s = load_settings()
    assert s.lake_uri == "s3://lake-bucket/prefix"
    assert "very-secret-value" not in repr(s) and "very-secret-value" not in str(s)
    assert storage_options(s) == {
        "AWS_REGION": "eu-west-1",
        "aws_conditional_put": "etag",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "very-secret-value",
    }


def test_kafka_security_passes_through(monkeypatch):
    monkeypatch.setenv("EZ_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("EZ_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("EZ_KAFKA_SASL_USERNAME", "pipeline")
    monkeypatch.setenv("EZ_KAFKA_SASL_PASSWORD", "pw-123")
    monkeypatch.setenv("EZ_KAFKA_SSL_CA_LOCATION", "/etc/ca.pem")
    monkeypatch.setenv("EZ_KAFKA_EXTRA", '{"client.id": "ez", "socket.keepalive.enable": true}')
    config = client_config(load_settings(), **{"group.id": "g"})
    assert config == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "pipeline",
        "sasl.password": "pw-123",
        "ssl.ca.location": "/etc/ca.pem",
        "client.id": "ez",
        "socket.keepalive.enable": "True",
        "group.id": "g",
    }


def test_producer_config_keeps_exact_delivery_and_refuses_weakening_it(monkeypatch):
    from connectors.kafka.config import producer_config

    monkeypatch.setenv("EZ_KAFKA_EXTRA", '{"client.id": "ez", "acks": "-1"}')
    config = producer_config(load_settings(), **{"linger.ms": 5, "enable.idempotence": "true"})
    assert config["max.in.flight.requests.per.connection"] == 1
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert config["linger.ms"] == 5 and config["client.id"] == "ez"

    monkeypatch.setenv("EZ_KAFKA_EXTRA", '{"max.in.flight.requests.per.connection": 5}')
    with pytest.raises(ConfigError, match="EZ_KAFKA_EXTRA sets max.in.flight.requests.per.connection=5"):
        producer_config(load_settings())
    monkeypatch.delenv("EZ_KAFKA_EXTRA")
    with pytest.raises(ConfigError, match="producer overrides sets acks=1"):
        producer_config(load_settings(), acks=1)


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("EZ_KAFKA_BOOTSTRAP", "no-port", "EZ_KAFKA_BOOTSTRAP: expected host:port, got 'no-port'"),
        ("EZ_KAFKA_BOOTSTRAP", "host:99999", "EZ_KAFKA_BOOTSTRAP: expected host:port"),
        ("EZ_LAKE_URI", "ftp://x/y", "EZ_LAKE_URI: expected file:///path or s3://bucket/prefix"),
        ("EZ_LAKE_URI", "file://relative", "EZ_LAKE_URI: a file:// URI needs an absolute path"),
        ("EZ_LAKE_URI", "s3:///prefix", "EZ_LAKE_URI: an s3:// URI needs a bucket"),
        ("EZ_S3_ENDPOINT", "127.0.0.1:9000", "EZ_S3_ENDPOINT: expected an http(s)://host[:port] URL"),
        ("EZ_CLICKHOUSE_DSN", "chdb://", "EZ_CLICKHOUSE_DSN: chdb:// needs a data folder"),
        ("EZ_TOPIC_PARTITIONS", "zero", "EZ_TOPIC_PARTITIONS:"),
        ("EZ_TOPIC_PARTITIONS", "0", "EZ_TOPIC_PARTITIONS:"),
        ("EZ_KAFKA_SECURITY_PROTOCOL", "TLS", "EZ_KAFKA_SECURITY_PROTOCOL:"),
        ("EZ_KAFKA_EXTRA", "{not json", "EZ_KAFKA_EXTRA: expected a JSON object"),
        ("EZ_MINIO_ADDRESS", "localhost", "EZ_MINIO_ADDRESS: expected host:port"),
    ],
)
def test_bad_value_names_the_setting(monkeypatch, env, value, expected):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert expected in str(info.value)


def test_sasl_protocol_needs_a_mechanism(monkeypatch):
    monkeypatch.setenv("EZ_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match="EZ_KAFKA_SASL_MECHANISM is required"):
        load_settings()


def test_errors_never_echo_secrets(monkeypatch):
    monkeypatch.setenv("EZ_CLICKHOUSE_DSN", "mysql://admin:hunter2-secret@db:3306/x")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "EZ_CLICKHOUSE_DSN" in str(info.value)
    assert "hunter2-secret" not in str(info.value)


def test_server_dsn_is_redacted_for_display(monkeypatch):
    monkeypatch.setenv("EZ_CLICKHOUSE_DSN", "https://analyst:s3cr3t@ch.example:8443/analytics")
    s = load_settings()
    assert s.clickhouse_dsn_redacted == "https://analyst:***@ch.example:8443/analytics"
    assert all("s3cr3t" not in value for _, value, _ in describe_settings(s))


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(Exception):
        s.kafka_bootstrap = "other:1"  # type: ignore[misc]


def test_every_setting_is_documented():
    rows = describe_settings()
    assert len(rows) >= 20
    undocumented = [name for name, _, doc in rows if len(doc) < 10]
    assert undocumented == []
    assert all(name.startswith("EZ_") for name, _, _ in rows)
