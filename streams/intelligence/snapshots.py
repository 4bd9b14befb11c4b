"""Snapshots of the alert state, built in a process of their own.

A snapshot is the whole state of a shard's rules (megabytes of JSON on a busy fleet). Copying and
encoding it in the processor held the interpreter for milliseconds to a quarter of a second, every
``EZ_ALERTS_CHECKPOINT_SECONDS``: the loop, and the commit of the alert that happened to be in
flight, waited for it. So the processor hands the work to a child process
(``python -m streams.intelligence.snapshots``) that keeps a copy of the state as a restart would
read it back: the state at activation, plus every delta the processor writes, applied in order by
:func:`apply_steps` (what :func:`~streams.intelligence.processor.restore_state` applies on the way
back up). Asked for a snapshot after the delta of step ``seq``, it encodes its copy and sends it
back; the processor writes it with a later step, as before.

The processor's side costs a pipe write per step (the delta's bytes, already encoded for the
state topic) and, per snapshot, a thread's read of it. Frames on the pipes: one kind byte, the
body's length (8 bytes, big-endian), the body.

- ``I`` (to the child): the initial state, compressed JSON. ``D``: a delta, compressed JSON, as
  the state topic holds it. ``S``: ``{"snapshot": n, "seq": s}``, a snapshot numbered ``n`` of
  the state after step ``s``.
- ``S`` (back): the snapshot asked for, compressed JSON (answers come in the order asked).
  ``E``: what went wrong (the child then exits).

The child ignores SIGINT and SIGTERM and ends when its input closes: it never outlives the
processor that started it, and a signal to the worker's process group does not take it away
from the processor's last commit.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import zlib
from collections import deque
from concurrent.futures import Future
from typing import IO, Any

from connectors.errors import EzStreamError, TransientError

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">cQ")
#: Seconds the child has to exit once its input closed, before it is killed.
CLOSE_TIMEOUT_S = 10.0
#: The pipe to the child holds this much (Linux's default limit for a pipe's size).
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: Compressed deltas the child keeps before applying them without being asked for a snapshot.
APPLY_BYTES = 8 << 20
#: The child's niceness (added to the processor's): it yields the cores to the alert path.
NICENESS = 10


def encode(state: dict[str, Any]) -> bytes:
    """A state (or a delta) as the state topic holds it, before it is split: compressed JSON."""
    return zlib.compress(json.dumps(state, separators=(",", ":")).encode(), 1)


def decode(payload: bytes) -> dict[str, Any]:
    return json.loads(zlib.decompress(payload))


def apply_steps(state: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
    """Bring ``state`` (a snapshot's dict) to the state after ``deltas`` (steps', decoded, in
    order). The deltas are consumed."""
    from streams.intelligence.processor import Rules

    Rules.apply_deltas(state["rules"], [delta.pop("rules") for delta in deltas])
    for delta in deltas:
        pending = state["pending_windows"]  # first in, first produced
        pending.extend(delta.pop("windows_closed"))
        del pending[:delta.pop("windows_produced")]
        state.update(delta)


def _write(out: IO[bytes], kind: bytes, body: bytes) -> None:
    out.write(_HEADER.pack(kind, len(body)))
    out.write(body)
    out.flush()


def _read(inp: IO[bytes]) -> tuple[bytes, bytes] | None:
    """The next frame, or None at the end of the input."""
    header = inp.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    kind, length = _HEADER.unpack(header)
    body = inp.read(length)
    if len(body) < length:
        return None
    return kind, body


class SnapshotBuilder:
    """The processor's side: starts the child with the state at activation, passes it each delta,
    and asks it for snapshots.

    :meth:`delta` and :meth:`take` write to the child's pipe from the caller's thread (a frame is
    a few kilobytes to a few hundred, the pipe holds a megabyte, and the child takes frames as they
    come); a thread reads its snapshots into the futures :meth:`take` returned, in order. When the
    child fails or exits, the futures not done fail with :class:`~connectors.errors.TransientError`
    and so do later calls: the role restarts (from the latest commit) instead of writing a snapshot
    that is not the state.
    """

    def __init__(self, state: dict[str, Any], label: str) -> None:
        self._label = label
        self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE)
        self._stdin = self._proc.stdin
        assert self._stdin is not None
        try:  # Linux: room for a few seconds of deltas, so a write never waits for the child
            fcntl.fcntl(self._stdin.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
        #: Snapshots asked for and not answered yet: (future, snapshot, seq), in the order asked.
        self._pending: deque[tuple[Future[tuple[int, int, bytes]], int, int]] = deque()
        self._lock = threading.Lock()
        self._error: str | None = None
        self._reader = threading.Thread(target=self._read_loop, name="alerts-snapshot-in", daemon=True)
        self._reader.start()
        self._send(b"I", encode(state))

    @property
    def pid(self) -> int:
        return self._proc.pid

    def delta(self, payload: bytes) -> None:
        """Step's delta ``payload`` (compressed JSON, as written to the state topic), in step order."""
        self._send(b"D", payload)

    def take(self, snapshot: int, seq: int) -> Future[tuple[int, int, bytes]]:
        """Snapshot number ``snapshot`` of the state after step ``seq`` (whose delta was the last
        given): ``(snapshot, seq, compressed JSON)`` once the child encoded it."""
        future: Future[tuple[int, int, bytes]] = Future()
        with self._lock:
            self._pending.append((future, snapshot, seq))
        self._send(b"S", json.dumps({"snapshot": snapshot, "seq": seq}).encode())
        return future

    def close(self) -> None:
        """End the child (its input closes) and fail what it did not answer."""
        try:
            self._stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("%s: the snapshot process did not exit in %.0f s; killed", self._label, CLOSE_TIMEOUT_S)
            self._proc.kill()
            self._proc.wait()
        self._reader.join(CLOSE_TIMEOUT_S)
        self._fail("the snapshot process was closed")

    def _send(self, kind: bytes, body: bytes) -> None:
        if self._error is None:
            try:
                _write(self._stdin, kind, body)
            except (BrokenPipeError, OSError, ValueError) as exc:  # ValueError: closed
                self._fail(f"the snapshot process stopped taking frames ({exc})")
        if self._error is not None:
            raise TransientError(f"{self._label}: {self._error}")

    def _read_loop(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        while (frame := _read(stdout)) is not None:
            kind, body = frame
            with self._lock:
                asked = self._pending.popleft() if kind == b"S" and self._pending else None
            if asked is None:
                what = body.decode(errors="replace") if kind == b"E" else f"a frame {kind!r} nobody asked for"
                self._fail(f"the snapshot process failed: {what}")
                break
            future, snapshot, seq = asked
            future.set_result((snapshot, seq, body))
        code = self._proc.wait()
        self._fail(f"the snapshot process exited (code {code})")

    def _fail(self, error: str) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
            pending, self._pending = list(self._pending), deque()
        for future, _, _ in pending:
            if not future.done():
                future.set_exception(TransientError(f"{self._label}: {error}"))


def main() -> int:
    """The child: frames from stdin, snapshots to the stdout it was started with (anything printed
    goes to stderr, so the frames stay whole).

    A thread takes the frames off the pipe as they come, so the processor's writes never wait for
    the work here. Deltas wait, compressed, until a snapshot is asked for (or ``APPLY_BYTES`` of
    them are waiting) and are applied then: the work comes once a checkpoint, not at every commit,
    when the processor and the broker are busiest. The child runs at a lower priority than the
    processor for the same reason."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        os.nice(NICENESS)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    frames: queue.SimpleQueue[tuple[bytes, bytes] | None] = queue.SimpleQueue()

    def take_frames(inp: IO[bytes]) -> None:
        while (frame := _read(inp)) is not None:
            frames.put(frame)
        frames.put(None)

    threading.Thread(target=take_frames, args=(sys.stdin.buffer,), daemon=True).start()
    state: dict[str, Any] | None = None
    waiting: list[bytes] = []
    waiting_bytes = 0

    def apply_waiting() -> None:
        nonlocal waiting_bytes
        apply_steps(state, [decode(payload) for payload in waiting])
        waiting.clear()
        waiting_bytes = 0

    try:
        while (frame := frames.get()) is not None:
            kind, body = frame
            if kind == b"I":
                state = decode(body)
            elif kind == b"D" and state is not None:
                waiting.append(body)
                waiting_bytes += len(body)
                if waiting_bytes > APPLY_BYTES:
                    apply_waiting()
            elif kind == b"S" and state is not None:
                apply_waiting()
                asked = json.loads(body)
                if asked["seq"] != state["seq"]:
                    raise EzStreamError(f"snapshot {asked['snapshot']} asked after step {asked['seq']}, "
                                        f"but the state is after step {state['seq']}")
                state["snapshot"] = asked["snapshot"]
                _write(out, b"S", encode(state))
            else:
                raise EzStreamError(f"frame {kind!r} {'before the initial state' if state is None else ''}")
    except Exception as exc:  # noqa: BLE001  reported to the processor, which restarts the role
        _write(out, b"E", f"{type(exc).__name__}: {exc}".encode())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
