"""`ezstream status`'s text: what an operator reads of the alerts role and the dashboard."""

from __future__ import annotations

from streams.operator_status import format_view


STOPPED = {"name": "dashboard", "address": "http://127.0.0.1:8501", "state": "stopped", "healthy": False}


def view(alerts, dashboard=STOPPED):
    return {"services": [], "dashboard": dashboard, "workers": [], "lag": [], "last_write": {}, "dlq": {},
            "errors": {}, "alerts": alerts}


def test_the_dashboard_line_says_where_it_runs_or_how_to_start_it():
    running = {**STOPPED, "address": "http://127.0.0.1:8600", "state": "running", "healthy": True}
    assert f"dashboard   {'http://127.0.0.1:8600':<44} running   ok" in format_view(view(None, running)).splitlines()
    assert f"dashboard   {'http://127.0.0.1:8501':<44} stopped   DOWN (ezstream dashboard starts it)" in \
        format_view(view(None)).splitlines()
    # Ours but not answering: down, with no hint to start what already runs.
    hung = {**running, "healthy": False}
    (line,) = [line for line in format_view(view(None, hung)).splitlines() if line.startswith("dashboard")]
    assert line.endswith("running   DOWN")


def test_the_alerts_role_line_says_how_big_its_state_is():
    text = format_view(view({"active": True, "caught_up": True, "commit": 5120, "snapshot": 7,
                             "late_events": {"windows": 1},
                             "state": {"entries": {"silent_agent": 1200, "budget": 40, "windows": 3},
                                       "snapshot_bytes": 52_431}}))
    assert "alerts role: active, caught up: True, commit 5120 (snapshot 7), late events {'windows': 1}" in text
    assert "alerts state: 1,243 entries (budget 40, silent_agent 1,200, windows 3), snapshot 52,431 bytes" in text


def test_the_alerts_role_says_where_event_time_stands_and_how_far_apart_its_partitions_are():
    text = format_view(view({"active": True, "caught_up": False, "snapshot": 3, "late_events": {},
                             "state": {"entries": {"windows": 3}, "snapshot_bytes": 100},
                             "event_time": {"low_ms": 1_796_400_000_000, "skew_ms": 2_500, "catching_up": True}}))
    assert ("alerts event time: 2026-12-04 16:00:00 UTC on the slowest LLM-call partition, partitions 2.5 s apart, "
            "catching up") in text


def test_a_status_file_from_before_the_state_size_is_still_shown():
    text = format_view(view({"active": False, "caught_up": False, "snapshot": 2, "late_events": {}}))
    assert "alerts role: standing by / stopped" in text and "alerts state" not in text


def test_a_worker_shows_each_role_and_the_restarts_of_one_that_crashed():
    text = format_view({**view(None), "workers": [{
        "name": "worker-lake-clickhouse-alerts", "pid": 4242, "alive": True, "ready": True, "roles": {
            "sinks": {"state": "running", "restarts": 0, "last_error": None, "since": "2026-12-04T17:00:00Z"},
            "alerts": {"state": "restarting", "restarts": 2, "last_error": "RuntimeError: boom",
                       "since": "2026-12-04T17:05:00Z"}}}]})
    lines = text.splitlines()
    worker = lines.index(next(line for line in lines if line.startswith("worker-lake-clickhouse-alerts")))
    assert lines[worker + 1].split() == ["role", "alerts", "restarting", "since", "2026-12-04T17:05:00Z,", "2",
                                         "restart(s),", "last:", "RuntimeError:", "boom"]
    assert lines[worker + 2].split() == ["role", "sinks", "running", "since", "2026-12-04T17:00:00Z"]


def test_each_shard_of_the_alerts_role_has_its_lines(tmp_path):
    """With EZ_ALERTS_SHARDS=2 each shard's status file is read and shown; a shard no worker
    here ran is left out."""
    import json

    from connectors.settings import load_settings
    from streams.operator_status import alerts_role

    settings = load_settings(home=tmp_path, topic_prefix="t.", alerts_shards=3)
    settings.run_dir.mkdir(parents=True)
    for index, commit in ((0, 11), (2, 7)):
        (settings.run_dir / f"alerts-t..shard-{index}.status.json").write_text(json.dumps(
            {"active": True, "caught_up": True, "commit": commit, "snapshot": 1, "late_events": {}, "shard": [index, 3]}))
    found = alerts_role(settings)
    assert sorted(found["shards"]) == [0, 2]
    text = format_view(view(found))
    assert "alerts shard 0: active, caught up: True, commit 11" in text
    assert "alerts shard 2: active, caught up: True, commit 7" in text and "alerts shard 1" not in text
