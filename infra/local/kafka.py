"""Apache Kafka, single node in KRaft mode (combined broker + controller), from Maven Central jars.

The broker jars are resolved with ``mvn`` (``org.apache.kafka:kafka_2.13`` and its runtime
dependencies) into ``$EZ_CACHE_DIR/kafka/<version>/libs`` once; storage under
``$EZ_HOME/kafka/data`` is formatted once; the JDK on PATH runs the broker.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from connectors.errors import ConfigError, ServiceError
from connectors.kafka import client_config
from connectors.settings import KafkaSaslMechanism, KafkaSecurityProtocol, Settings
from infra.local.net import free_port, is_loopback, port_in_use
from infra.local.process import ManagedProcess

MAIN_CLASS = "kafka.Kafka"
#: KAFKA_JVM_PERFORMANCE_OPTS of Kafka's bin/kafka-run-class.sh (4.x), what kafka-server-start.sh
#: runs with.
KAFKA_JVM_PERFORMANCE_OPTS = ("-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                              "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
                              "-XX:MaxInlineLevel=15", "-Djava.awt.headless=true")
STORAGE_TOOL = "kafka.tools.StorageTool"
#: The broker's own SCRAM user (inter-broker traffic and creating the configured client user).
BROKER_USER = "ezstream-broker"
SCRAM_ITERATIONS = 8192
SCRAM_HASHES = {KafkaSaslMechanism.SCRAM_SHA_256: "sha256", KafkaSaslMechanism.SCRAM_SHA_512: "sha512"}


class KafkaBroker:
    """The local broker at the first address of ``EZ_KAFKA_BOOTSTRAP``."""

    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        first = settings.kafka_bootstrap.split(",")[0]
        host, _, port = first.rpartition(":")
        self.host, self.port = host, int(port)
        self.proc = ManagedProcess(self.name, settings.run_dir, settings.logs_dir)
        self.dir = settings.home / "kafka"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def secured(self) -> bool:
        """SASL_SSL with SCRAM: TLS listener with the project's CA, SCRAM users in the metadata log."""
        return self.settings.kafka_security_protocol is KafkaSecurityProtocol.SASL_SSL

    @property
    def manageable(self) -> bool:
        """Whether infra/local may start a broker for these settings: a loopback address, and
        PLAINTEXT or SASL_SSL with SCRAM (see :meth:`check_secured_settings`)."""
        return is_loopback(self.host) and self.settings.kafka_security_protocol in (
            KafkaSecurityProtocol.PLAINTEXT, KafkaSecurityProtocol.SASL_SSL)

    def check_secured_settings(self) -> None:
        """What a local SASL_SSL broker needs from the settings; a ConfigError names what is missing."""
        s = self.settings
        if s.kafka_sasl_mechanism not in SCRAM_HASHES:
            raise ConfigError(
                "EZ_KAFKA_SASL_MECHANISM: the local SASL_SSL broker supports SCRAM-SHA-512 and SCRAM-SHA-256, "
                f"got {s.kafka_sasl_mechanism.value if s.kafka_sasl_mechanism else 'nothing'}"
            )
        if not s.kafka_sasl_username:
            raise ConfigError("EZ_KAFKA_SASL_USERNAME is required for the local SASL_SSL broker")
        if s.kafka_sasl_username == BROKER_USER:
            raise ConfigError(f"EZ_KAFKA_SASL_USERNAME: {BROKER_USER!r} is the broker's own user; pick another")
        if s.kafka_sasl_password is None or not s.kafka_sasl_password.get_secret_value():
            raise ConfigError("EZ_KAFKA_SASL_PASSWORD is required for the local SASL_SSL broker")
        if s.kafka_ssl_ca_location is None:
            raise ConfigError(
                "EZ_KAFKA_SSL_CA_LOCATION is required for the local SASL_SSL broker: the file where "
                "`ezstream up` writes the CA certificate clients trust"
            )

    def libs(self) -> Path:
        """The broker's jar folder in the cache, resolved through Maven on first use."""
        version = self.settings.kafka_version
        target = self.settings.cache_dir / "kafka" / version / "libs"
        if (target / ".complete").exists():
            return target
        if shutil.which("mvn") is None:
            raise ServiceError("Kafka: `mvn` is not on PATH; it resolves the broker jars from Maven Central")
        work = target.parent / "resolve"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        pom = resources.files("infra.local").joinpath("kafka-pom.xml").read_text()
        (work / "pom.xml").write_text(pom.replace("@KAFKA_VERSION@", version))
        staging = work / "libs"
        print(f"fetching Apache Kafka {version} jars from Maven Central (first time only)…", flush=True)
        result = subprocess.run(
            ["mvn", "-q", "-B", "dependency:copy-dependencies", "-DincludeScope=runtime",
             f"-DoutputDirectory={staging}"],
            cwd=work, capture_output=True, text=True,
        )
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise ServiceError(f"Kafka: resolving org.apache.kafka:kafka_2.13:{version} failed:\n{tail}")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        (target / ".complete").touch()
        shutil.rmtree(work, ignore_errors=True)
        return target

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """True when the broker answers a metadata request."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(client_config(self.settings, **{"log_level": 0, "socket.timeout.ms": 1000}))
        try:
            admin.list_topics(timeout=timeout_s)
            return True
        except Exception:
            return False

    def up(self) -> str:
        """Start the broker unless ours already runs; wait until it answers."""
        if self.proc.pid() is not None:
            if self.secured:
                self.check_secured_settings()
            self._wait_ready()
            return "already running"
        if not self.manageable:
            raise ServiceError(
                f"Kafka: EZ_KAFKA_BOOTSTRAP points at {self.address} with "
                f"{self.settings.kafka_security_protocol.value}; infra/local only starts a broker on a "
                "loopback address, PLAINTEXT or SASL_SSL (SCRAM)"
            )
        if self.secured:
            self.check_secured_settings()
        if port_in_use(self.host, self.port):
            raise ServiceError(
                f"Kafka: port {self.port} on {self.host} is taken by another process; "
                "stop it or set EZ_KAFKA_BOOTSTRAP to a free port"
            )
        java = shutil.which("java")
        if java is None:
            raise ServiceError("Kafka: `java` (JDK 17+) is not on PATH")
        libs = self.libs()
        props = self._write_config()
        classpath = f"{libs}/*"
        self._format(java, classpath, props)
        log4j = resources.files("infra.local").joinpath("log4j2.properties")
        heap = self.settings.kafka_heap
        argv = [
            # As Kafka's own start scripts run it (kafka-server-start.sh: the heap's minimum at its
            # maximum; kafka-run-class.sh: the collector settings), not on G1's defaults: over an
            # alerts bench of 20 s at 1,000 events/s the broker collects 5-6 times instead of 35-44.
            java, f"-Xmx{heap}", f"-Xms{heap}", *KAFKA_JVM_PERFORMANCE_OPTS, f"-Dlog4j2.configurationFile={log4j}",
            "-cp", classpath, MAIN_CLASS, str(props),
        ]
        self.proc.start(argv, env=dict(os.environ), marker=str(props), state={"address": self.address})
        self._wait_ready()
        return "started"

    def _wait_ready(self) -> None:
        """Wait until the broker answers the configured client. A secured one first answers its own
        user, which then publishes the CA and creates (or updates the password of) the client user."""
        if self.secured:
            self.proc.wait_ready(self._broker_user_healthy, self.settings.start_timeout_s, "Kafka")
            self._publish_ca()
            self._upsert_client_user()
        self.proc.wait_ready(self.healthy, self.settings.start_timeout_s, "Kafka")

    def down(self) -> bool:
        return self.proc.stop(timeout_s=60)

    def _controller_port(self) -> int:
        # The controller port is chosen once per data folder: the KRaft quorum state remembers it.
        path = self.dir / "controller.port"
        if path.exists():
            return int(path.read_text())
        port = free_port(self.host)
        path.write_text(str(port))
        return port

    def _write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        cport = self._controller_port()
        data = self.dir / "data"
        props = self.dir / "server.properties"
        listeners = self._secured_listeners(cport) if self.secured else [
            f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{cport}",
            f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ]
        text = "\n".join([
            "# Written by infra/local at each start.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{self.host}:{cport}",
            *listeners,
            f"log.dirs={data}",
            # Topics are created on purpose (ezstream topics create, the Faust app), never by a typo.
            "auto.create.topics.enable=false",
            "num.partitions=6",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=12",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=12",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "num.network.threads=3",
            "num.io.threads=4",
            "",
        ])
        # The secured config holds the broker user's password: owner-only, like the TLS keys.
        fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return props

    def _secured_listeners(self, cport: int) -> list[str]:
        """SASL_SSL (SCRAM) for clients and between brokers; the controller listener is mutual TLS,
        so nothing without a certificate of the local CA reaches the metadata quorum."""
        from infra.local.tls import ensure_broker_tls

        tls = ensure_broker_tls(self.dir / "tls", self.host)
        mechanism = self.settings.kafka_sasl_mechanism.value
        prefix = f"listener.name.sasl_ssl.{mechanism.lower()}"
        return [
            f"listeners=SASL_SSL://{self.host}:{self.port},CONTROLLER://{self.host}:{cport}",
            f"advertised.listeners=SASL_SSL://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL",
            f"sasl.enabled.mechanisms={mechanism}",
            f"sasl.mechanism.inter.broker.protocol={mechanism}",
            f'{prefix}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required '
            f'username="{BROKER_USER}" password="{self._broker_password()}";',
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={tls.keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={tls.ca_cert}",
            "listener.name.controller.ssl.client.auth=required",
            "ssl.endpoint.identification.algorithm=https",
        ]

    def _broker_password(self) -> str:
        """The broker user's password: random, made once per data folder, owner-only file."""
        path = self.dir / "broker-user.secret"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def _scram_argument(self) -> str:
        """``--add-scram`` value for the broker user, salted here so no password is on a command line."""
        mechanism = self.settings.kafka_sasl_mechanism
        salt = secrets.token_bytes(24)
        salted = hashlib.pbkdf2_hmac(SCRAM_HASHES[mechanism], self._broker_password().encode(), salt,
                                     SCRAM_ITERATIONS)
        return (f"{mechanism.value}=[name={BROKER_USER},iterations={SCRAM_ITERATIONS},"
                f'salt="{base64.b64encode(salt).decode()}",saltedpassword="{base64.b64encode(salted).decode()}"]')

    def _broker_user_config(self, **overrides) -> dict:
        return client_config(self.settings, **{
            "sasl.username": BROKER_USER, "sasl.password": self._broker_password(),
            "ssl.ca.location": str(self.dir / "tls" / "ca.pem"), **overrides})

    def _broker_user_healthy(self) -> bool:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._broker_user_config(**{"log_level": 0, "socket.timeout.ms": 1000}))
        try:
            admin.list_topics(timeout=2.0)
            return True
        except Exception:
            return False

    def _upsert_client_user(self) -> None:
        """Create the configured SCRAM user, or set its password to the configured one."""
        from confluent_kafka.admin import (
            AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion)

        s = self.settings
        mechanism = ScramMechanism[s.kafka_sasl_mechanism.name]
        admin = AdminClient(self._broker_user_config())
        upsert = UserScramCredentialUpsertion(
            s.kafka_sasl_username, ScramCredentialInfo(mechanism, SCRAM_ITERATIONS),
            s.kafka_sasl_password.get_secret_value().encode())
        for future in admin.alter_user_scram_credentials([upsert]).values():
            try:
                future.result(timeout=30)
            except Exception as exc:  # the error names the user, never the password
                raise ServiceError(f"Kafka: creating SCRAM user {s.kafka_sasl_username!r} failed: {exc}") from None

    def _publish_ca(self) -> None:
        """Write the local CA certificate where EZ_KAFKA_SSL_CA_LOCATION says clients find it."""
        ours = (self.dir / "tls" / "ca.pem").read_bytes()
        target = self.settings.kafka_ssl_ca_location
        if target.exists():
            if target.read_bytes() != ours:
                raise ConfigError(
                    f"EZ_KAFKA_SSL_CA_LOCATION: {target} holds another certificate; the local broker's CA "
                    f"is {self.dir / 'tls' / 'ca.pem'} (point the setting there, or at a path that does not exist yet)"
                )
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(ours)

    def _format(self, java: str, classpath: str, props: Path) -> None:
        if (self.dir / "data" / "meta.properties").exists():
            return
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's own Uuid: a leading '-' reads as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        argv = [java, "-cp", classpath, STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(props)]
        if self.secured:
            argv += ["--add-scram", self._scram_argument()]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServiceError(f"Kafka: formatting storage failed:\n{result.stdout}{result.stderr}")
