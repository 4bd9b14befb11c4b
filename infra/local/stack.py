"""The local stack: Kafka, MinIO, ClickHouse and the OpenTelemetry Collector, started, checked and
stopped together."""

from __future__ import annotations

from dataclasses import dataclass

from connectors.settings import Settings
from infra.local.clickhouse import ClickHouseEngine
from infra.local.dashboard import Dashboard
from infra.local.kafka import KafkaBroker
from infra.local.minio import MinioServer
from infra.local.otelcol import OtelCollector


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    state: str  # running (ours), external (answers, not started by us), embedded, stopped
    healthy: bool


class Stack:
    """All services of one ``EZ_HOME``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = KafkaBroker(settings)
        self.minio = MinioServer(settings)
        self.clickhouse = ClickHouseEngine(settings)
        self.otelcol = OtelCollector(settings)
        #: Started on demand (`ezstream dashboard`, the demo), not by `up`; `down` stops it first.
        self.dashboard = Dashboard(settings)

    @property
    def services(self):
        # The collector after Kafka (it creates its topic there first), stopped first by `down`.
        return [self.kafka, self.minio, self.clickhouse, self.otelcol]

    def up(self, echo=print) -> None:
        """Start what is not running yet (idempotent); raises ServiceError if one cannot start."""
        for service in self.services:
            if service is self.kafka and not self.kafka.manageable and self.kafka.healthy():
                echo(f"{service.name:<11} {service.address:<28} external")
                continue
            outcome = service.up()
            echo(f"{service.name:<11} {service.address:<28} {outcome}")

    def down(self, echo=print) -> None:
        """Stop only what this stack started."""
        for service in (self.dashboard, *reversed(self.services)):
            if service.down():
                echo(f"{service.name:<11} stopped")

    def status(self) -> list[ServiceStatus]:
        """The services `up` starts: each must be healthy for the stack to be."""
        return [self._status(service) for service in self.services]

    def dashboard_status(self) -> ServiceStatus:
        """The dashboard's, apart: it runs on demand, so its being stopped is no fault of the stack."""
        return self._status(self.dashboard)

    def _status(self, service) -> ServiceStatus:
        healthy = service.healthy()
        if service is self.clickhouse:
            state = "embedded" if service.address.startswith("chdb:") else "external"
        elif service.proc.pid() is not None:
            state = "running"
        else:
            state = "external" if healthy else "stopped"
        return ServiceStatus(service.name, service.address, state, healthy)
