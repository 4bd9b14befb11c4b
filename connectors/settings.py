"""The one settings object of EzAigent Streams.

Precedence: explicit argument > environment (``EZ_…``, and the usual ``AWS_…`` names for S3) >
the optional TOML file (``ezstream.toml`` in the working directory, or ``EZ_CONFIG_FILE``) >
the defaults declared here. Every field is documented where it is declared; ``ezstream settings``
prints them as a table. A bad value fails at start with a :class:`ConfigError` that names the
setting; secret values are never echoed.
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from connectors.errors import ConfigError

CONFIG_FILE_ENV = "EZ_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "ezstream.toml"


class KafkaSecurityProtocol(str, Enum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class KafkaSaslMechanism(str, Enum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    OAUTHBEARER = "OAUTHBEARER"
    GSSAPI = "GSSAPI"


def _env(name: str, *more: str) -> AliasChoices:
    return AliasChoices(name, *more)


class Settings(BaseSettings):
    """Typed, frozen configuration shared by the CLI, the workers, the DAG tasks and infra/local."""

    model_config = SettingsConfigDict(
        env_prefix="EZ_",
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        case_sensitive=False,
    )

    home: Path = Field(
        default=Path(".ezstream"),
        description="Folder for local data, logs and pid files (resolved to an absolute path).",
    )
    cache_dir: Path = Field(
        default=Path("~/.cache/ezstream"),
        validation_alias=_env("EZ_CACHE_DIR"),
        description="Download cache (Kafka jars, MinIO, the OpenTelemetry Collector, the Grafana schema check's npm "
                    "packages), kept outside the clone.",
    )

    # Kafka
    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092",
        description="Kafka bootstrap servers, host:port[,host:port…].",
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        default=KafkaSecurityProtocol.PLAINTEXT,
        description="librdkafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    )
    kafka_sasl_mechanism: KafkaSaslMechanism | None = Field(
        default=None, description="librdkafka sasl.mechanism, e.g. SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password (secret).")
    kafka_ssl_ca_location: Path | None = Field(default=None, description="CA certificate file (PEM).")
    kafka_ssl_certificate_location: Path | None = Field(
        default=None, description="Client certificate file (PEM), for mutual TLS."
    )
    kafka_ssl_key_location: Path | None = Field(default=None, description="Client private key (PEM).")
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of the client private key (secret)."
    )
    # NoDecode: the value is parsed by _parse_extra, so a bad one gets a message naming it.
    kafka_extra: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Other librdkafka properties passed through as they are (JSON object in the env).",
    )

    topic_prefix: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="Prefix of every project topic name, e.g. `staging.` (isolates environments on one cluster).",
    )
    topic_partitions: int = Field(
        default=6, ge=1, le=10000, description="Partitions of each event topic that `ezstream topics create` makes."
    )
    topic_replication: int = Field(
        default=1, ge=1, description="Replication factor of the topics (3 on a production cluster)."
    )
    topic_retention_ms: int = Field(
        default=7 * 24 * 3600 * 1000, ge=-1, description="retention.ms of the event topics (-1: keep forever)."
    )
    dlq_retention_ms: int = Field(
        default=30 * 24 * 3600 * 1000, ge=-1, description="retention.ms of the .dlq topics (-1: keep forever)."
    )

    # Lake
    lake_uri: str = Field(
        default="",
        description="Root of the Delta lake: file:///path or s3://bucket/prefix. "
        "Default: file://$EZ_HOME/lake.",
    )
    s3_endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL for MinIO or another S3 API (unset: AWS S3).",
    )
    s3_region: str = Field(
        default="us-east-1",
        validation_alias=_env("EZ_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="S3 region (also read from AWS_REGION / AWS_DEFAULT_REGION).",
    )
    s3_access_key_id: str | None = Field(
        default=None,
        validation_alias=_env("EZ_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        description="S3 access key id (also read from AWS_ACCESS_KEY_ID).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None,
        validation_alias=_env("EZ_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        description="S3 secret access key (secret; also read from AWS_SECRET_ACCESS_KEY).",
    )

    # ClickHouse
    clickhouse_dsn: SecretStr = Field(
        default=SecretStr(""),
        description="ClickHouse: chdb:///path (embedded engine) or http(s)://user:password@host:port/db. "
        "Default: chdb://$EZ_HOME/clickhouse. Secret: it may hold a password.",
    )

    clickhouse_database: str = Field(
        default="ezstream",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="ClickHouse database of the project's tables (created if missing).",
    )
    clickhouse_ttl_days: int = Field(
        default=365, ge=1, description="Days ClickHouse keeps event rows (table TTL on event_time)."
    )
    clickhouse_cluster: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        description="ClickHouse cluster name (remote_servers): migrations then create ReplicatedMergeTree "
        "tables ON CLUSTER with a Distributed table over them; unset: one server or the embedded engine.",
    )

    # Batch jobs (Airflow DAGs)
    lake_retention_days: int = Field(
        default=365, ge=1, description="Days the lake keeps event rows; the retention DAG deletes older event dates."
    )
    budgets_file: Path | None = Field(
        default=None,
        description="TOML file of daily budgets per tenant and agent (see README); the daily cost report "
        "shows spend against them.",
    )
    recommend_quality_tolerance: float = Field(
        default=0.02, ge=0, le=1,
        description="Model recommendations: how far (absolute, on the 0-1 quality score) a cheaper model's mean "
        "quality may lie below the current model's and still be recommended (docs/task-analytics.md).",
    )
    recommend_min_successful_tasks: int = Field(
        default=20, ge=1,
        description="Model recommendations: completed tasks a model needs in a day, per tenant, agent type and "
        "queue, for its cost per success and quality to count (the current model's included).",
    )

    # Prices (connectors/pricing)
    prices_file: Path | None = Field(
        default=None,
        description="TOML file of [[prices]] rows, USD per 1,000,000 tokens, that win over the price table: "
        "self-hosted, fine-tuned or negotiated prices (docs/pricing.md). Costs then record the price version "
        "`<table>+overrides-<hash of the rows>`; a bad file fails at start naming the row.",
    )

    # Real-time intelligence (the alerts role): windows and alert rules
    alerts_config_file: Path | None = Field(
        default=None,
        description="TOML file of alert rule and window settings (see docs/intelligence.md); defaults "
        "apply where it is silent. Budgets come from EZ_BUDGETS_FILE.",
    )
    alerts_webhook_url: SecretStr | None = Field(
        default=None,
        description="Slack-compatible incoming webhook that also receives every alert (secret: the URL "
        "holds the token).",
    )
    alerts_checkpoint_seconds: float = Field(
        default=5.0, gt=0,
        description="Alerts role: seconds between snapshots of the whole window and rule state (each step "
        "commits its changes; a restart reads the latest snapshot and the changes committed after it).",
    )
    alerts_shards: int = Field(
        default=1, ge=1, le=64,
        description="Alerts role: shards of the rules' state, one partition of the state topic each; the "
        "alerts workers share them through a consumer group (each shard reads every event and keeps its "
        "subjects' state). Fixed with the state topic: changing it needs a new state (topic prefix).",
    )
    alerts_commit_ms: int = Field(
        default=200, gt=0, le=10_000,
        description="Alerts role: longest a step's transaction stays open when it raised no alert (a live step "
        "with an alert commits at once; while catching up, five times this); alerts and windows are read by "
        "read_committed consumers on commit.",
    )

    # The spans role (streams/agents/spans.py): OpenTelemetry GenAI spans on otlp_spans -> events.
    otel_tenant_attribute: str = Field(
        default="tenant.id", min_length=1,
        description="Spans role: the span or resource attribute naming a span's tenant (tenant_id of its "
        "events; `unknown` where neither has it).",
    )
    otel_agent_type_attribute: str = Field(
        default="agent.type", min_length=1,
        description="Spans role: the span or resource attribute naming the agent type (agent_type of its "
        "events; `unknown` where neither has it).",
    )

    # Inference: `ezstream inference-worker`, a consumer group on inference.requests.
    inference_model: str = Field(
        default="all-MiniLM-L6-v2", description="Inference worker: the local model it serves, by name."
    )
    inference_device: str | None = Field(
        default=None, description="Inference worker: torch device (`cuda`, `cpu`); unset: CUDA (fp16) when "
        "present, else CPU.",
    )
    inference_max_batch: int = Field(
        default=256, ge=1, description="Inference worker: most texts per forward pass (dynamic batching)."
    )
    inference_max_wait_ms: float = Field(
        default=5.0, ge=0, description="Inference worker: longest wait for more requests before a partial batch runs."
    )
    inference_max_queue: int = Field(
        default=4096, ge=1, description="Inference worker: texts read but not yet computed; above it partitions "
        "pause (backpressure).",
    )
    inference_max_inputs: int = Field(
        default=256, ge=1, description="Inference worker: most texts in one request; more gets an error result."
    )
    inference_max_chars: int = Field(
        default=8192, ge=1, description="Inference worker: longest text in characters; longer gets an error result."
    )

    # Free text in events (prompt/output snippets may hold personal data)
    capture_snippets: bool = Field(
        default=False,
        description="Keep the prompt/output snippets of LLM calls (producer SDK and sinks); off: they are "
        "dropped (null) before they leave the producer or reach the lake and ClickHouse.",
    )
    snippet_max_chars: int = Field(
        default=256, ge=1, le=65536,
        description="Longest prompt/output snippet kept, in characters, when EZ_CAPTURE_SNIPPETS is on; "
        "longer ones are cut.",
    )

    # Operations
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Port of a worker's Prometheus endpoint (/metrics); unset: no endpoint. One port per "
        "worker process.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address the metrics endpoint listens on.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Worker log lines: `text` (`[time] [pid] [level] message key=value…`, the context as "
        "key=value pairs; Faust's colours on a terminal only), or `json` (one object per line with time, level, logger, "
        "message and context such as trace_id, topic, partition, offset). Secrets are scrubbed in both.",
    )
    # The dashboard (`ezstream dashboard`, streams/dashboard/): Streamlit on 127.0.0.1.
    dashboard_port: int = Field(
        default=8501, ge=1, le=65535,
        description="Port of the dashboard (`ezstream dashboard`, `make demo`); it listens on 127.0.0.1 only.",
    )
    dashboard_refresh_seconds: float = Field(
        default=5.0, ge=0.5, le=3600,
        description="Seconds between the dashboard's refreshes of its panels.",
    )

    # Sinks: one batching loop per sink; a batch is written when any limit is reached.
    lake_flush_rows: int = Field(default=500_000, ge=1, description="Lake sink: rows per batch (per table).")
    lake_flush_mb: float = Field(default=128.0, gt=0, description="Lake sink: encoded MiB buffered per batch.")
    lake_flush_seconds: float = Field(
        default=30.0, gt=0, description="Lake sink: longest wait before a batch is written (bigger files, staler lake)."
    )
    lake_flush_quiet_seconds: float = Field(
        default=0.0, ge=0,
        description="Lake sink: a batch at least this old is written as soon as a fetch brings nothing new (the "
        "sink has caught up and the topics are quiet), not at lake_flush_seconds; 0 turns it off (the default: "
        "fewer, bigger files).",
    )
    clickhouse_flush_rows: int = Field(default=100_000, ge=1, description="ClickHouse sink: rows per batch.")
    clickhouse_flush_mb: float = Field(default=64.0, gt=0, description="ClickHouse sink: encoded MiB buffered per batch.")
    clickhouse_flush_seconds: float = Field(
        default=1.0, gt=0, description="ClickHouse sink: longest wait before a batch is inserted (freshness)."
    )
    clickhouse_flush_quiet_seconds: float = Field(
        default=0.2, ge=0,
        description="ClickHouse sink: a batch at least this old is inserted as soon as a fetch brings nothing new "
        "(the sink has caught up and the topics are quiet), not at clickhouse_flush_seconds: the end of a burst is "
        "queryable at once; 0 turns it off. At most 1 / this inserts a second, only while traffic has gaps.",
    )
    event_time_future_tolerance_s: float = Field(
        default=3600.0, ge=0,
        description="Longest an event_time may be after its message's Kafka timestamp (agent clock skew); a "
        "later one goes to the DLQ (connectors/validation.py). One hour, like Kafka's "
        "message.timestamp.after.max.ms.",
    )
    max_string_bytes: int = Field(
        default=65536, ge=64,
        description="Longest string value of an event (UTF-8 bytes) the sinks store; a longer one sends its "
        "message to the DLQ. Free-text snippets are cut by EZ_SNIPPET_MAX_CHARS instead.",
    )
    sink_retry_max_seconds: float = Field(
        default=30.0, gt=0, description="Longest back-off between retries while a sink is unavailable."
    )

    # Local stack (infra/local)
    kafka_version: str = Field(
        default="4.4.0", description="Apache Kafka version that infra/local fetches from Maven Central."
    )
    kafka_heap: str = Field(default="768m", description="Max JVM heap of the local Kafka broker.")
    minio_version: str = Field(
        default="v0.0.0-20260212201848-7aac2a2c5b7c",
        description="github.com/minio/minio module version that infra/local builds with go install.",
    )
    minio_address: str = Field(
        default="127.0.0.1:9000", description="Address of the local MinIO S3 API (host:port)."
    )
    minio_root_user: str = Field(default="ezstream", description="Local MinIO root user.")
    minio_root_password: SecretStr = Field(
        default=SecretStr("ezstream-local-secret"),
        description="Local MinIO root password (secret; the local stack listens on loopback only).",
    )
    minio_bucket: str = Field(default="ezstream-lake", description="Bucket that `ezstream up` creates in MinIO.")
    # The OpenTelemetry Collector of the local stack (infra/local/otelcol.py): OTLP in, `otlp_spans` out.
    otel_collector_version: str = Field(
        default="0.165.0", pattern=r"^\d+\.\d+\.\d+$",
        description="OpenTelemetry Collector core release that infra/local builds the collector with: the "
        "collector builder, otlpreceiver and batchprocessor (go.opentelemetry.io/collector, built with go).",
    )
    otel_contrib_version: str = Field(
        default="0.165.1", pattern=r"^\d+\.\d+\.\d+$",
        description="opentelemetry-collector-contrib release of the collector's kafkaexporter and "
        "healthcheckextension; same minor release as EZ_OTEL_COLLECTOR_VERSION.",
    )
    otel_grpc_port: int = Field(
        default=4317, ge=1, le=65535, description="Local collector: OTLP/gRPC port on 127.0.0.1."
    )
    otel_http_port: int = Field(
        default=4318, ge=1, le=65535,
        description="Local collector: OTLP/HTTP port on 127.0.0.1 (OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318).",
    )
    otel_health_port: int = Field(
        default=13133, ge=1, le=65535,
        description="Local collector: port of its health check on 127.0.0.1 (`ezstream status`).",
    )
    start_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds to wait for a local service to become ready."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE))
        if CONFIG_FILE_ENV in os.environ and not toml_file.is_file():
            raise ConfigError(f"{CONFIG_FILE_ENV}: config file {toml_file} does not exist")
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    @field_validator("kafka_extra", mode="before")
    @classmethod
    def _parse_extra(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON object of librdkafka properties ({exc.msg})") from None
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value

    @field_validator("prices_file")
    @classmethod
    def _check_prices_file(cls, value: Path | None) -> Path | None:
        # Read now, so a bad row fails every command at start rather than the first priced call.
        if value is not None:
            from connectors.pricing import PRICES_FILE_SETTING, read_overrides

            try:
                read_overrides(value)
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix(f"{PRICES_FILE_SETTING} ")) from None
        return value

    @field_validator("alerts_webhook_url")
    @classmethod
    def _check_webhook(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("expected host:port[,host:port…], got an empty value")
        for server in servers:
            _check_host_port(server)
        return ",".join(servers)

    @field_validator("minio_address")
    @classmethod
    def _check_minio_address(cls, value: str) -> str:
        _check_host_port(value)
        return value

    @model_validator(mode="after")
    def _check_otel(self) -> "Settings":
        # Contrib components only build against the core release of the same minor version.
        core, contrib = self.otel_collector_version, self.otel_contrib_version
        if core.split(".")[:2] != contrib.split(".")[:2]:
            raise ValueError(f"EZ_OTEL_CONTRIB_VERSION {contrib} is not of the release of "
                             f"EZ_OTEL_COLLECTOR_VERSION {core}: they must share major.minor")
        ports = {"EZ_OTEL_GRPC_PORT": self.otel_grpc_port, "EZ_OTEL_HTTP_PORT": self.otel_http_port,
                 "EZ_OTEL_HEALTH_PORT": self.otel_health_port}
        if len(set(ports.values())) < len(ports):
            raise ValueError(f"{', '.join(ports)} must be three different ports, got "
                             f"{', '.join(str(p) for p in ports.values())}")
        return self

    @field_validator("s3_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s)://host[:port] URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("lake_uri")
    @classmethod
    def _check_lake(cls, value: str) -> str:
        return _check_lake_uri(value) if value else value

    @field_validator("clickhouse_dsn")
    @classmethod
    def _check_dsn(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw:
            return value
        scheme = raw.split("://", 1)[0] if "://" in raw else ""
        if scheme == "chdb":
            if not raw[len("chdb://"):]:
                raise ValueError("chdb:// needs a data folder, e.g. chdb:///var/lib/ezstream/clickhouse")
        elif scheme in ("http", "https", "clickhouse", "clickhouses"):
            if not urlsplit(raw).hostname:
                raise ValueError(f"a {scheme}:// DSN needs a host")
        else:
            # The DSN may hold a password: describe the problem, never echo the value.
            raise ValueError(
                "unsupported scheme; use chdb:///path or http(s)://user:password@host:port/database"
            )
        return value

    @model_validator(mode="after")
    def _resolve(self) -> "Settings":
        home = self.home.expanduser().resolve()
        derived: dict[str, Any] = {
            "home": home,
            "cache_dir": self.cache_dir.expanduser().resolve(),
        }
        if not self.lake_uri:
            derived["lake_uri"] = f"file://{home / 'lake'}"
        if not self.clickhouse_dsn.get_secret_value():
            derived["clickhouse_dsn"] = SecretStr(f"chdb://{home / 'clickhouse'}")
        needs_sasl = self.kafka_security_protocol in (
            KafkaSecurityProtocol.SASL_SSL,
            KafkaSecurityProtocol.SASL_PLAINTEXT,
        )
        if needs_sasl and self.kafka_sasl_mechanism is None:
            raise ValueError(
                f"EZ_KAFKA_SASL_MECHANISM is required when EZ_KAFKA_SECURITY_PROTOCOL is "
                f"{self.kafka_security_protocol.value}"
            )
        # Frozen model: derived values are set once, here, while it is being built.
        for name, value in derived.items():
            object.__setattr__(self, name, value)
        return self

    @property
    def logs_dir(self) -> Path:
        """Where local services and workers write their logs."""
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        """Where local services keep their pid and state files."""
        return self.home / "run"

    @property
    def clickhouse_dsn_redacted(self) -> str:
        """The ClickHouse DSN with any password replaced, safe to print."""
        return redact_url(self.clickhouse_dsn.get_secret_value())


def _check_host_port(server: str) -> None:
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {server!r}")


def _check_lake_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if not parts.path.startswith("/"):
            raise ValueError(f"a file:// URI needs an absolute path, got {uri!r}")
    elif parts.scheme in ("s3", "s3a"):
        if not parts.netloc:
            raise ValueError(f"an s3:// URI needs a bucket, got {uri!r}")
    else:
        raise ValueError(f"expected file:///path or s3://bucket/prefix, got {uri!r}")
    return uri.rstrip("/")


def redact_url(url: str) -> str:
    """Return ``url`` with the password of its user-info part replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"EZ_{field.upper()}"


_SECRET_FIELDS = {
    name for name, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)
}


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; any bad value raises :class:`ConfigError` naming each bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # raised outside field validation (source set-up)
        raise ConfigError(str(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        field = next((part for part in loc if part in Settings.model_fields), None)
        message = error["msg"].removeprefix("Value error, ")
        if field is None:
            # Model-level checks and unknown keys: the message or the key names the setting.
            where = ".".join(loc)
            lines.append(f"{where}: {message}" if where else message)
            continue
        if field in _SECRET_FIELDS:
            message = message.split(",")[0]
        lines.append(f"{env_name(field)}: {message}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def display_value(value: Any) -> str:
    """A setting's value as shown to people: secrets as ``(set)``, unset as empty."""
    if isinstance(value, SecretStr):
        return "(set)" if value.get_secret_value() else ""
    if isinstance(value, Enum):
        return str(value.value)
    if value in (None, "", {}):
        return ""
    return str(value)


def describe_settings(settings: Settings | None = None) -> list[tuple[str, str, str]]:
    """(environment variable, value, description) for every setting, in declaration order.

    The value is the declared default, or the current one of ``settings`` (secrets redacted).
    """
    rows = []
    for name, info in Settings.model_fields.items():
        if settings is None:
            value = display_value(info.get_default(call_default_factory=True))
        elif name == "clickhouse_dsn":
            value = settings.clickhouse_dsn_redacted
        else:
            value = display_value(getattr(settings, name))
        rows.append((env_name(name), value, info.description or ""))
    return rows
