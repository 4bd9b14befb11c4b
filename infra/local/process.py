"""A service process that infra/local starts, checks and stops.

Each started process gets a pid file and a state file under ``$EZ_HOME/run`` and a log under
``$EZ_HOME/logs``. A pid is only ever trusted when the live process's command line still holds
the marker it was started with, so ``down`` never signals a process it did not start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from connectors.errors import ServiceError


@dataclass
class ManagedProcess:
    """The files infra/local keeps for one service, and the child while this process starts it."""

    name: str
    run_dir: Path
    logs_dir: Path
    #: The child started by this process (None in a process that did not start it).
    child: subprocess.Popen | None = field(default=None, repr=False)
    #: Why the last pid on record was dropped, for error messages.
    last_lost: str = ""

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def state_file(self) -> Path:
        return self.run_dir / f"{self.name}.json"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of our live process, or None (stale pid files are removed)."""
        try:
            state = json.loads(self.state_file.read_text())
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        cmdline = _cmdline(pid)
        for _ in range(20):
            # An empty command line is a process in the middle of an exec (MinIO re-executes
            # itself at start-up): look again before judging it.
            if cmdline != "":
                break
            time.sleep(0.01)
            cmdline = _cmdline(pid)
        if cmdline is not None and state.get("marker", "") in cmdline:
            return pid
        # Gone, or the pid now belongs to another program: the files are stale.
        self.last_lost = f"pid {pid}: {'gone' if cmdline is None else 'now runs ' + repr(cmdline[:120])}"
        self._forget()
        return None

    def state(self) -> dict:
        """What was recorded at start (addresses, ports), or {} when not running."""
        if self.pid() is None:
            return {}
        return json.loads(self.state_file.read_text())

    def start(self, argv: list[str], *, env: dict[str, str], marker: str, state: dict) -> int:
        """Start ``argv`` in its own session with output to the log file; record pid and state."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- starting {self.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.child = proc
        self.state_file.write_text(json.dumps({**state, "marker": marker}))
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def wait_ready(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``check`` until it answers True; fail fast if the process died."""
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            # Our own child is watched through its handle; one started elsewhere through its pid.
            if self.child.poll() is not None if self.child is not None else self.pid() is None:
                how = f"exit code {self.child.returncode}" if self.child is not None else self.last_lost
                raise ServiceError(
                    f"{what} exited during start-up ({how}; log: {self.log_file}); last lines:\n{self.log_tail()}"
                )
            if check():
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{what} was not ready within {timeout_s:.0f} s; last log lines:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM our process group, SIGKILL after ``timeout_s``; True if something was stopped."""
        own_child_running = self.child is not None and self.child.poll() is None
        pid = self.child.pid if own_child_running else self.pid()
        if pid is None:
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _cmdline(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if _cmdline(pid) is not None:
            _signal_group(pid, signal.SIGKILL)
            while _cmdline(pid) is not None:
                time.sleep(0.05)
        self._forget()
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _forget(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)


def _cmdline(pid: int) -> str | None:
    """The command line of a live (non-zombie) process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                _reap(pid)
                return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return None


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise ServiceError(f"cannot signal process {pid}: {exc}") from None
