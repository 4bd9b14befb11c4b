"""Apache Kafka, single node in KRaft mode (combined broker + controller), from Maven Central jars.

The broker jars are resolved with ``mvn`` (``org.apache.kafka:kafka_2.13`` and its runtime
dependencies) into ``$EZ_CACHE_DIR/kafka/<version>/libs`` once; storage under
``$EZ_HOME/kafka/data`` is formatted once; the JDK on PATH runs the broker.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from connectors.errors import ServiceError
from connectors.kafka import client_config
from connectors.settings import Settings
from infra.local.net import free_port, is_loopback, port_in_use
from infra.local.process import ManagedProcess

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


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
    def manageable(self) -> bool:
        """Whether infra/local may start a broker for these settings (loopback, no security)."""
        return is_loopback(self.host) and self.settings.kafka_security_protocol.value == "PLAINTEXT"

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
            self.proc.wait_ready(self.healthy, self.settings.start_timeout_s, "Kafka")
            return "already running"
        if not self.manageable:
            raise ServiceError(
                f"Kafka: EZ_KAFKA_BOOTSTRAP points at {self.address} with "
                f"{self.settings.kafka_security_protocol.value}; infra/local only starts a plaintext "
                "broker on a loopback address"
            )
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
        argv = [
            java, f"-Xmx{self.settings.kafka_heap}", "-Xms128m", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", classpath, MAIN_CLASS, str(props),
        ]
        self.proc.start(argv, env=dict(os.environ), marker=str(props), state={"address": self.address})
        self.proc.wait_ready(self.healthy, self.settings.start_timeout_s, "Kafka")
        return "started"

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
        props.write_text("\n".join([
            "# Written by infra/local at each start.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{self.host}:{cport}",
            f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{cport}",
            f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
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
        ]))
        return props

    def _format(self, java: str, classpath: str, props: Path) -> None:
        if (self.dir / "data" / "meta.properties").exists():
            return
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's own Uuid: a leading '-' reads as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            [java, "-cp", classpath, STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(props)],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"Kafka: formatting storage failed:\n{result.stdout}{result.stderr}")
