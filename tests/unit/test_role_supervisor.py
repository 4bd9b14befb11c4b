"""The worker's role supervisor: a crashed role starts again from its factory after a back-off,
setting up again is retried, a bad setting stops the worker, a stop ends it all."""

from __future__ import annotations

import json
import threading

import pytest

from connectors.errors import ConfigError
from streams import worker as worker_module
from streams.worker import RoleSupervisor, Roles


class Loop:
    """The worker's event loop, as the supervisor's thread sees it: what it is handed."""

    def __init__(self) -> None:
        self.handed: list[tuple] = []

    def call_soon_threadsafe(self, callback, *args) -> None:
        self.handed.append((callback, args))


class FakeRole:
    name = "alerts"

    def __init__(self, crash: BaseException | None = None) -> None:
        self.crash = crash
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.ran = threading.Event()

    def run(self) -> None:
        self.ran.set()
        self.ready.set()
        if self.crash is not None:
            raise self.crash
        self.stopped.wait(10)

    def stop(self) -> None:
        self.stopped.set()


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(worker_module, "RESTART_BACKOFF_S", (0.01, 0.04))


def supervise(tmp_path, first, made):
    """Run the supervisor's thread over ``first`` and a factory handing out ``made`` in order."""
    made = list(made)

    def factory():
        item = made.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    loop = Loop()
    supervisor = RoleSupervisor(first, factory, Roles(tmp_path / "roles.json"))
    thread = threading.Thread(target=supervisor._supervise, args=(loop,), daemon=True)
    thread.start()
    return supervisor, thread, loop


def test_a_crashed_role_is_made_again_and_setting_up_is_retried(tmp_path):
    good = FakeRole()
    supervisor, thread, loop = supervise(tmp_path, FakeRole(RuntimeError("boom")), [OSError("no broker"), good])
    assert good.ran.wait(5), "the role was not started again"
    assert supervisor.role is good and supervisor.restarts == 1
    state = json.loads((tmp_path / "roles.json").read_text())["alerts"]
    assert (state["restarts"], state["last_error"]) == (1, "OSError: no broker")
    supervisor._stopping.set()
    good.stop()
    thread.join(5)
    assert not thread.is_alive() and loop.handed == []


def test_a_bad_setting_stops_the_worker_instead(tmp_path):
    supervisor, thread, loop = supervise(tmp_path, FakeRole(ConfigError("EZ_X: nonsense")), [])
    thread.join(5)
    assert not thread.is_alive() and supervisor.restarts == 0
    # The crash is handed to the worker's event loop, which stops every role.
    [(callback, (error,))] = loop.handed
    assert callback == supervisor._crash_soon and str(error) == "EZ_X: nonsense"
