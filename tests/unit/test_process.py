"""infra/local process bookkeeping with a plain child process (no services needed)."""

from __future__ import annotations

import os
import sys

import pytest

from connectors.errors import ServiceError
from infra.local.net import free_port, port_in_use
from infra.local.process import ManagedProcess


@pytest.fixture
def proc(tmp_path) -> ManagedProcess:
    managed = ManagedProcess("sleeper", tmp_path / "run", tmp_path / "logs")
    yield managed
    managed.stop(timeout_s=5)


def start_sleeper(proc: ManagedProcess, marker: str) -> int:
    code = f"import time; print('up', flush=True); time.sleep(120)  # {marker}"
    return proc.start([sys.executable, "-c", code], env=dict(os.environ), marker=marker, state={"address": "x"})


def test_start_records_and_stop_removes(proc):
    pid = start_sleeper(proc, "marker-1")
    assert proc.pid() == pid
    assert proc.state() == {"address": "x", "marker": "marker-1"}
    assert proc.stop(timeout_s=5) is True
    assert not os.path.exists(f"/proc/{pid}/cmdline") or proc.pid() is None
    assert not proc.pid_file.exists() and not proc.state_file.exists()
    assert proc.stop() is False  # nothing left to stop


def test_pid_of_another_program_is_never_trusted(proc):
    pid = start_sleeper(proc, "marker-2")
    # Another invocation (no child handle) finds a pid whose command line lacks the recorded
    # marker, as after pid reuse.
    proc.state_file.write_text('{"marker": "something-else"}')
    later = ManagedProcess(proc.name, proc.run_dir, proc.logs_dir)
    assert later.pid() is None
    assert "now runs" in later.last_lost
    assert later.stop() is False
    assert os.path.exists(f"/proc/{pid}")  # untouched
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def test_wait_ready_fails_fast_with_the_log_when_the_process_dies(proc):
    proc.start([sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"],
               env=dict(os.environ), marker="-c", state={})
    with pytest.raises(ServiceError, match="boom: bad config"):
        proc.wait_ready(lambda: False, timeout_s=30, what="sleeper")


def test_wait_ready_times_out_with_a_clear_error(proc):
    start_sleeper(proc, "marker-3")
    with pytest.raises(ServiceError, match="not ready within 1 s"):
        proc.wait_ready(lambda: False, timeout_s=1, what="sleeper")


def test_free_port_prefers_the_given_one_when_free():
    port = free_port()
    assert free_port(preferred=port) == port
    assert not port_in_use("127.0.0.1", port)
