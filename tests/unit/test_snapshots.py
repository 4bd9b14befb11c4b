"""The snapshot process of the alerts role (streams.intelligence.snapshots): a real child process,
fed the deltas the processor writes, against the rules' own state."""

from __future__ import annotations

import json
import os
import random
import signal
from datetime import datetime, timedelta, timezone

import pytest

from connectors.errors import TransientError
from connectors.kafka.events import LlmCall
from streams.intelligence.config import IntelligenceConfig
from streams.intelligence.processor import Rules, _fields
from streams.intelligence.snapshots import SnapshotBuilder, decode, encode
from streams.simulate import generate
from tests.unit.busy_rules import busy_config

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)
TIMEOUT_S = 60


def _roundtrip(value):
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("seed", [1, 2])
def test_the_snapshot_process_holds_the_state_the_deltas_describe(seed):
    """Steps as the processor takes them (events, ticks, windows closed and some produced, each
    step's delta written): every snapshot the process sends back, at random steps, is the state the
    processor would have encoded itself at that step, through JSON."""
    print("seed", seed)
    rng = random.Random(seed)
    config = busy_config()
    rules = Rules(config)
    events = list(generate(seed, start_time=T0 + timedelta(hours=23, minutes=50), count=6_000, rate=10))
    for i, event in enumerate(events):
        if isinstance(event, LlmCall) and 1_500 <= i < 2_000:
            event.status = "rate_limited" if i % 2 else "error"
    pending: list = []  # closed windows not produced yet, first in first out

    def state(seq: int, snapshot: int, progress: dict) -> dict:
        return {**progress, "snapshot": snapshot, "seq": seq, "rules": rules.to_dict(),
                "pending_windows": [[_fields(c), by] for c, by in pending]}

    progress = {"time_ms": 0, "positions": {}, "watermarks": {}, "stats": {}}
    builder = SnapshotBuilder(state(0, 0, progress), "test")
    compared, closed_total, produced_total, pending_seen = 0, 0, 0, 0
    try:
        for seq, begin in enumerate(range(0, len(events), 40), start=1):
            closed = []
            for event in events[begin:begin + 40]:
                at = int(event.event_time.timestamp() * 1000)
                rules.observe(event, at)
                if isinstance(event, LlmCall):
                    closed += [(c, "watermark") for c in rules.advance(at - rng.randrange(0, 20_000))[1]]
            rules.tick(at + rng.randrange(0, 60_000))
            pending.extend(closed)
            produced = min(rng.randrange(0, 4), len(pending))
            del pending[:produced]
            closed_total, produced_total = closed_total + len(closed), produced_total + produced
            progress = {"time_ms": at, "positions": {"calls:0": begin + 40}, "watermarks": {"calls:0": at},
                        "stats": {"events": begin + 40}}
            builder.delta(encode({**progress, "seq": seq, "rules": rules.delta(),
                                  "windows_closed": [[_fields(c), by] for c, by in closed],
                                  "windows_produced": produced}))
            if rng.random() < 0.1:
                got = builder.take(compared + 1, seq).result(TIMEOUT_S)
                assert got[:2] == (compared + 1, seq)
                assert decode(got[2]) == _roundtrip(state(seq, compared + 1, progress)), f"step {seq}"
                compared += 1
                pending_seen += bool(pending)
        last = decode(builder.take(compared + 1, seq).result(TIMEOUT_S)[2])
    finally:
        builder.close()
    assert compared >= 5 and closed_total > 0 and produced_total > 0 and pending_seen > 0
    assert Rules(config, last["rules"]).to_dict() == rules.to_dict()


def test_a_snapshot_asked_for_a_step_the_process_did_not_see_fails_the_role():
    builder = SnapshotBuilder({"snapshot": 0, "seq": 0, "rules": Rules(IntelligenceConfig()).to_dict(),
                               "pending_windows": []}, "test")
    try:
        future = builder.take(1, 5)
        with pytest.raises(TransientError, match="asked after step 5, but the state is after step 0"):
            future.result(TIMEOUT_S)
        with pytest.raises(TransientError, match="snapshot process"):
            builder.delta(encode({}))
    finally:
        builder.close()


def test_the_snapshot_process_ignores_termination_signals_and_a_killed_one_fails_what_is_pending():
    """A worker's process group gets SIGTERM on shutdown: the process stays for the last commit.
    Killed, what was asked of it fails (the role restarts from its latest commit) and so does what
    comes next; nothing waits for it."""
    builder = SnapshotBuilder({"snapshot": 0, "seq": 0, "rules": Rules(IntelligenceConfig()).to_dict(),
                               "pending_windows": []}, "test")
    try:
        assert builder.take(1, 0).result(TIMEOUT_S)[:2] == (1, 0)  # started, signals set aside
        os.kill(builder.pid, signal.SIGTERM)
        os.kill(builder.pid, signal.SIGINT)
        assert builder.take(2, 0).result(TIMEOUT_S)[:2] == (2, 0)
        os.kill(builder.pid, signal.SIGKILL)
        with pytest.raises(TransientError, match="snapshot process"):
            builder.take(3, 0).result(TIMEOUT_S)
        with pytest.raises(TransientError, match="snapshot process"):
            builder.delta(encode({}))
    finally:
        builder.close()
