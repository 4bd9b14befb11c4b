"""``ezstream worker``: one Faust worker running the processors of the roles it is given.

Each sink role (``lake``, ``clickhouse``) is a batch loop (:class:`streams.sinks.runner.SinkRunner`)
hosted by the Faust app as a service in its own thread: the sinks need whole batches per call,
which a batch consumer gives them, while Faust supplies the worker's lifecycle, signals and
logging. A worker with both sink roles reads for both through one consumer
(:class:`streams.sinks.feed.SharedFeed`, group ``ezstream.sinks``), each sink writing in a thread
of its own; a worker with one sink role (``--only lake``) consumes in that role's group. Several
workers share the partitions through the group of their layout, which must be the same for all.

Each loop is a :class:`Role` run by a :class:`RoleSupervisor`: a role that crashes is logged,
counted (``ezstream_role_restarts``) and started afresh after a back-off (1 s doubling to 60 s),
while the worker's other roles go on; ``ezstream status`` shows each role's state and restarts
(``$EZ_HOME/run/worker-<roles>.roles.json``). A bad configuration is not retried: it stops the
worker with its message, as at start.

The process that owns the embedded ClickHouse engine (chDB allows one engine per data folder per
process) also serves ``ezstream sql`` queries on a loopback port, see :mod:`streams.query_server`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import faust
import mode

from connectors.backoff import Backoff
from connectors.errors import ConfigError
from connectors.settings import Settings
from streams import metrics
from streams.app import create_app
from streams.sinks.feed import SINK_ROLES, SharedFeed
from streams.sinks.runner import SinkRunner

log = logging.getLogger(__name__)

#: Every role, in start order; ``ezstream worker`` runs them all unless told ``--only``.
#: ``alerts`` runs the windows and alert rules (:mod:`streams.intelligence.processor`), ``spans``
#: maps OpenTelemetry GenAI spans from ``otlp_spans`` to events (:mod:`streams.agents.spans`).
ROLES = ("lake", "clickhouse", "alerts", "spans")


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
    if role == "spans":
        from streams.agents.spans import SpanMapper

        return SpanMapper(settings)
    group = f"{settings.topic_prefix}ezstream.{role}"
    if role == "lake":
        from connectors.lake.sink import LakeSink

        # The lake, the system of record, is the one role that dead-letters bad messages.
        return SinkRunner(settings, LakeSink(settings, group), dead_letters=True)
    from connectors.clickhouse.sink import ClickHouseSink

    return SinkRunner(settings, ClickHouseSink(settings, group))


class Role(Protocol):
    """A loop the worker runs in a thread of its own: a sink loop, the sinks' shared feed, the
    alerts processor, the span mapper."""

    #: The role's name (``lake``, ``clickhouse``, ``sinks``, ``alerts``, ``spans``).
    name: str
    #: Set once the role is set up and reading.
    ready: threading.Event

    def run(self) -> None:
        """Run until :meth:`stop`; an exception is a crash."""

    def stop(self) -> None:
        """Ask :meth:`run` to finish (from another thread)."""


#: Back-off before a crashed role starts again: doubling from the first to the last.
RESTART_BACKOFF_S = (1.0, 60.0)
#: A role that ran this long before crashing starts again after the first back-off.
HEALTHY_AFTER_S = 60.0


class Roles:
    """What every role of a worker is doing, for ``ezstream status``:
    ``$EZ_HOME/run/worker-<roles>.roles.json``."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._roles: dict[str, dict[str, Any]] = {}

    def set(self, name: str, **changes: Any) -> None:
        with self._lock:
            self._roles.setdefault(name, {"state": "starting", "restarts": 0, "last_error": None})
            self._roles[name].update(changes, since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._roles, indent=1, sort_keys=True))
            tmp.replace(self.path)


class RoleSupervisor(mode.Service):
    """Runs a :class:`Role` in its own thread for as long as the Faust worker runs, and starts
    it afresh (a new instance from ``factory``) when it crashes, after a back-off, while the
    worker's other roles go on. A :class:`ConfigError` stops the worker instead: a bad setting
    does not get better by restarting."""

    def __init__(self, role: Role, factory: Callable[[], Role], roles: Roles, **kwargs) -> None:
        super().__init__(**kwargs)
        self.role = role
        self.factory = factory
        self.roles = roles
        self.restarts = 0
        #: Guards which instance is current and whether it crashed, against the ready watcher.
        self._role_lock = threading.Lock()
        self._role_crashed = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def label(self) -> str:
        return f"role:{self.role.name}"

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self.roles.set(self.role.name, state="starting")
        metrics.ROLE_UP.labels(self.role.name).set(1)
        self._thread = threading.Thread(target=self._supervise, args=(loop,), name=self.label, daemon=True)
        self._thread.start()

    def _supervise(self, loop: asyncio.AbstractEventLoop) -> None:
        name = self.role.name
        backoff = Backoff(*RESTART_BACKOFF_S)
        while True:
            started = time.monotonic()
            threading.Thread(target=self._running, args=(self.role,), name=f"{self.label}:ready",
                             daemon=True).start()
            try:
                self.role.run()
                return
            except BaseException as exc:  # noqa: BLE001  a crash of one role must not stop the others
                if self._stopping.is_set():
                    log.exception("%s failed while stopping", self.label)
                    return
                if isinstance(exc, ConfigError) or not isinstance(exc, Exception):
                    log.exception("%s crashed; stopping the worker", self.label)
                    loop.call_soon_threadsafe(self._crash_soon, exc)
                    return
                if time.monotonic() - started >= HEALTHY_AFTER_S:
                    backoff.reset()
                delay = backoff.next()
                with self._role_lock:
                    self._role_crashed = True
                self.restarts += 1
                metrics.ROLE_RESTARTS.labels(name).inc()
                metrics.ROLE_UP.labels(name).set(0)
                error = f"{type(exc).__name__}: {exc}"
                self.roles.set(name, state="restarting", restarts=self.restarts, last_error=error)
                log.exception("%s crashed (restart %d in %.0f s; the worker's other roles go on)",
                              self.label, self.restarts, delay)
            while True:  # a new instance, after the back-off (and again while setting up fails)
                if self._stopping.wait(delay):
                    return
                try:
                    role = self.factory()
                except Exception as exc:  # noqa: BLE001  setting up again failed: the next back-off
                    if isinstance(exc, ConfigError):
                        log.exception("%s could not be set up again; stopping the worker", self.label)
                        loop.call_soon_threadsafe(self._crash_soon, exc)
                        return
                    delay = backoff.next()
                    self.roles.set(name, last_error=f"{type(exc).__name__}: {exc}")
                    log.exception("%s could not be set up again (next try in %.0f s)", self.label, delay)
                    continue
                with self._role_lock:
                    self.role, self._role_crashed = role, False
                break
            if self._stopping.is_set():
                return

    def _running(self, role: Role) -> None:
        """Say the role runs once it is ready (not while an instance that crashed is current)."""
        while not self._stopping.is_set() and role is self.role:
            if role.ready.wait(0.5):
                with self._role_lock:
                    if role is self.role and not self._role_crashed:
                        self.roles.set(role.name, state="running")
                        metrics.ROLE_UP.labels(role.name).set(1)
                return

    def _crash_soon(self, exc: BaseException) -> None:
        asyncio.ensure_future(self.crash(exc))

    async def on_stop(self) -> None:
        self._stopping.set()
        self.role.stop()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 120)
        self.roles.set(self.role.name, state="stopped")


def role_factories(settings: Settings, roles: list[str]) -> list[Callable[[], Role]]:
    """How to make each loop of a worker with ``roles`` (again, after a crash)."""
    if all(role in roles for role in SINK_ROLES):
        # Both sinks read through one consumer: each message is fetched and buffered once.
        factories: list[Callable[[], Role]] = [
            lambda: SharedFeed(settings, [make_runner(settings, role) for role in roles if role in SINK_ROLES])]
        return factories + [lambda r=role: make_runner(settings, r) for role in roles if role not in SINK_ROLES]
    return [lambda r=role: make_runner(settings, r) for role in roles]


def build_app(settings: Settings, roles: list[str]) -> tuple[faust.App, list[Any]]:
    """The Faust app of a worker with ``roles``, and the loops it hosts (made now: a bad setting
    fails here, at start)."""
    app = create_app(settings, app_id=f"{settings.topic_prefix}ezstream.worker")
    factories = role_factories(settings, roles)
    runners = [factory() for factory in factories]
    states = Roles(settings.run_dir / f"worker-{'-'.join(roles)}.roles.json")
    for runner, factory in zip(runners, factories):
        app.service(RoleSupervisor(runner, factory, states))
    if "clickhouse" in roles:
        from connectors.clickhouse import is_embedded
        from streams.query_server import QueryService

        if is_embedded(settings):
            app.service(QueryService(settings))
    return app, runners


#: The cyclic collector's thresholds in a worker (Python's defaults: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path. The roles hold their state in many
    Python objects (the alerts role's open windows, sketches and rule state), and at Python's
    default thresholds the collector's passes over them took a third of the alerts role's time.
    What is loaded by now (modules, schemas, the roles' set-up) is frozen out of the passes, and
    they run less often (:data:`GC_THRESHOLDS`): the code makes no reference cycles per event, so
    reference counting frees what it drops at once either way."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
    tune_gc()
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
