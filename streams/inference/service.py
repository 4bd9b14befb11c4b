"""``ezstream inference-worker``: the worker in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from connectors.settings import Settings
from streams.inference.worker import InferenceWorker


def ready_file(settings: Settings, instance: str) -> Path:
    """Exists while the worker with that instance name serves requests."""
    return settings.run_dir / f"inference-worker-{instance}.ready"


def run_inference_worker(settings: Settings, *, instance: str | None = None, loglevel: str = "info") -> None:
    """Run an inference worker until SIGINT/SIGTERM; it answers what it consumed before it exits.

    Its Prometheus metrics are served on ``EZ_METRICS_PORT`` when set, as by every worker.
    """
    from streams.logs import configure

    level = {"crit": "CRITICAL", "warn": "WARNING"}.get(loglevel, loglevel.upper())
    configure(settings, level)  # EZ_LOG_FORMAT, secrets scrubbed
    worker = InferenceWorker(settings, instance=instance)
    if settings.metrics_port is not None:
        from streams.metrics import serve

        serve(settings.metrics_host, settings.metrics_port)
    ready = ready_file(settings, worker.instance)
    ready.unlink(missing_ok=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())

    def announce() -> None:
        worker.ready.wait()
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.touch()

    threading.Thread(target=announce, name="announce-ready", daemon=True).start()
    try:
        worker.run()
    finally:
        ready.unlink(missing_ok=True)
        logging.getLogger(__name__).info("inference worker %s stopped: %s", worker.instance, dict(worker.stats))
