"""``ezstream worker``: one Faust worker running the processors of the roles it is given.

Each sink role (``lake``, ``clickhouse``) is a batch loop (:class:`streams.sinks.runner.SinkRunner`)
hosted by the Faust app as a service in its own thread: the sinks need whole batches per call,
which a batch consumer gives them, while Faust supplies the worker's lifecycle, signals and
logging. A worker with both sink roles reads for both through one consumer
(:class:`streams.sinks.feed.SharedFeed`, group ``ezstream.sinks``), each sink writing in a thread
of its own; a worker with one sink role (``--only lake``) consumes in that role's group. Several
workers share the partitions through the group of their layout, which must be the same for all.

The process that owns the embedded ClickHouse engine (chDB allows one engine per data folder per
process) also serves ``ezstream sql`` queries on a loopback port, see :mod:`streams.query_server`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import faust
import mode

from connectors.errors import ConfigError
from connectors.settings import Settings
from streams.app import create_app
from streams.sinks.feed import SINK_ROLES, SharedFeed
from streams.sinks.runner import SinkRunner

log = logging.getLogger(__name__)

#: Every role, in start order; ``ezstream worker`` runs them all unless told ``--only``.
#: ``alerts`` runs the windows and alert rules (:mod:`streams.intelligence.processor`).
ROLES = ("lake", "clickhouse", "alerts")


def parse_roles(only: str | None) -> list[str]:
    """``"lake,clickhouse"`` -> roles; every role when ``only`` is empty. Unknown ones are named."""
    if not only:
        return list(ROLES)
    roles = [r.strip() for r in only.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ConfigError(f"--only: unknown role(s) {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(ROLES)}")
    return list(dict.fromkeys(roles))


def make_runner(settings: Settings, role: str):
    """The loop of a role: a sink's batch loop, or the alerts processor (clients are created
    when it starts)."""
    if role == "alerts":
        from streams.intelligence.processor import IntelligenceProcessor

        return IntelligenceProcessor(settings)
    group = f"{settings.topic_prefix}ezstream.{role}"
    if role == "lake":
        from connectors.lake.sink import LakeSink

        # The lake, the system of record, is the one role that dead-letters bad messages.
        return SinkRunner(settings, LakeSink(settings, group), dead_letters=True)
    from connectors.clickhouse.sink import ClickHouseSink

    return SinkRunner(settings, ClickHouseSink(settings, group))


class RunnerService(mode.Service):
    """Runs a blocking loop in its own thread for as long as the Faust worker runs."""

    def __init__(self, runner: SinkRunner, **kwargs) -> None:
        super().__init__(**kwargs)
        self.runner = runner
        self._thread: threading.Thread | None = None

    @property
    def label(self) -> str:
        return f"role:{self.runner.name}"

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                self.runner.run()
            except BaseException as exc:  # noqa: BLE001  the worker must stop, loudly, on any crash
                log.exception("%s crashed", self.label)
                loop.call_soon_threadsafe(self._crash_soon, exc)

        self._thread = threading.Thread(target=run, name=self.label, daemon=True)
        self._thread.start()

    def _crash_soon(self, exc: BaseException) -> None:
        asyncio.ensure_future(self.crash(exc))

    async def on_stop(self) -> None:
        self.runner.stop()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 120)


def build_app(settings: Settings, roles: list[str]) -> tuple[faust.App, list[Any]]:
    """The Faust app of a worker with ``roles``, and the sink loops it hosts."""
    app = create_app(settings, app_id=f"{settings.topic_prefix}ezstream.worker")
    runners = [make_runner(settings, role) for role in roles]
    if all(role in roles for role in SINK_ROLES):
        # Both sinks read through one consumer: each message is fetched and buffered once.
        lanes = [r for r in runners if r.name in SINK_ROLES]
        runners = [SharedFeed(settings, lanes)] + [r for r in runners if r.name not in SINK_ROLES]
    for runner in runners:
        app.service(RunnerService(runner))
    if "clickhouse" in roles:
        from connectors.clickhouse import is_embedded
        from streams.query_server import QueryService

        if is_embedded(settings):
            app.service(QueryService(settings))
    return app, runners


def run_worker(settings: Settings, roles: list[str], loglevel: str = "info") -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM.

    ``$EZ_HOME/run/worker-<roles>.ready`` exists while every sink loop of the worker runs.
    """
    from connectors.kafka.connect import check_connection

    # A refused login or an untrusted certificate fails here, once and clearly, instead of
    # librdkafka retrying it in every consumer of the worker.
    check_connection(settings, timeout_s=settings.start_timeout_s)
    if "clickhouse" in roles:
        from connectors.clickhouse import is_embedded

        if is_embedded(settings):
            # Loading the embedded engine's library takes seconds and holds the interpreter lock:
            # done here, before Faust's event loop runs, not in the sink's thread while it runs
            # (which stalled the loop, and Faust's own consumer missed its heartbeats).
            import chdb  # noqa: F401
    app, runners = build_app(settings, roles)
    if settings.metrics_port is not None:
        from streams.metrics import serve

        serve(settings.metrics_host, settings.metrics_port)
    ready = settings.run_dir / f"worker-{'-'.join(roles)}.ready"
    ready.unlink(missing_ok=True)

    def announce() -> None:
        for runner in runners:
            runner.ready.wait()
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.touch()

    threading.Thread(target=announce, name="announce-ready", daemon=True).start()
    worker = _Worker(settings, app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        ready.unlink(missing_ok=True)


class _Worker(faust.Worker):
    """Faust's worker, its log handlers given the configured format and the secret filter."""

    def __init__(self, settings: Settings, *args, **kwargs) -> None:
        self._settings = settings
        super().__init__(*args, **kwargs)

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        from streams.logs import configure_handlers

        configure_handlers(self._settings, logger.handlers)


def _detached_process(settings: Settings, roles: list[str]):
    from infra.local.process import ManagedProcess

    return ManagedProcess(f"worker-{'-'.join(roles)}", settings.run_dir, settings.logs_dir)


def start_detached(settings: Settings, roles: list[str], timeout_s: float = 120.0) -> str:
    """Start a worker in the background (log under ``$EZ_HOME/logs``); wait until its sinks run."""
    import os
    import sys

    proc = _detached_process(settings, roles)
    if proc.pid() is not None:
        return "already running"
    argv = [sys.executable, "-m", "streams.cli", "worker", "--only", ",".join(roles), "--home", str(settings.home)]
    proc.start(argv, env=dict(os.environ), marker=f"--home {settings.home}", state={"roles": roles})
    ready = settings.run_dir / f"worker-{'-'.join(roles)}.ready"
    proc.wait_ready(ready.exists, timeout_s, f"worker ({', '.join(roles)})")
    return "started"


def stop_detached(settings: Settings) -> list[str]:
    """Stop every background worker of this ``EZ_HOME``; returns their names."""
    from infra.local.process import ManagedProcess

    stopped = []
    for pid_file in sorted(settings.run_dir.glob("worker-*.pid")):
        proc = ManagedProcess(pid_file.stem, settings.run_dir, settings.logs_dir)
        if proc.stop(timeout_s=120):
            stopped.append(pid_file.stem)
    return stopped
