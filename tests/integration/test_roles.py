"""A crash of one role of a worker: the role starts again after a back-off, the worker's other
roles go on, and nothing is lost or repeated (real Kafka, lake folder and embedded ClickHouse)."""

from __future__ import annotations

import json

from tests.conftest import wait_for
from tests.integration.pipeline import clickhouse_totals, lake_totals
from tests.integration.test_alerts import (  # noqa: F401  fixtures
    Sent, alerts_of, call, intel, processed, start,
)
from tests.integration.test_metrics import scrape, total
from infra.local.net import free_port

ALL = "lake,clickhouse,alerts"


def roles(worker) -> dict:
    path = worker.home / "run" / "worker-lake-clickhouse-alerts.roles.json"
    return json.loads(path.read_text()) if path.exists() else {}


def restarted(worker, role: str, times: int = 1) -> dict:
    def running_again():
        worker.alive()
        state = roles(worker).get(role, {})
        return state if state.get("restarts") == times and state.get("state") == "running" else None
    return wait_for(running_again, 60, f"role {role} restarted {times} time(s) and running")


def test_a_crashed_alerts_role_starts_again_and_the_sinks_keep_writing(intel, start):
    intel = intel.model_copy(update={"metrics_port": free_port()})
    # The alerts role crashes (a bug, not a store's error) right after its 2nd batch.
    worker = start(intel, name="crashing", roles=ALL, failpoints="alerts.after_batch=2:crash")
    send = Sent(intel)
    send(call("dev-01", cost=0.5))
    send(call("dev-01", cost=0.35))  # 85 % of dev-01's $1
    state = restarted(worker, "alerts")
    assert "FailpointCrash: failpoint alerts.after_batch: pass 2 crashes" in state["last_error"]
    send(call("dev-01", cost=0.1))  # 95 %
    send(*[call("dev-02", cost=0.01) for _ in range(5)])
    processed(worker, send.count)
    # The restarted role replayed from its last checkpoint: each threshold once.
    budget = alerts_of(intel, "budget")
    assert sorted(round(a["threshold"], 2) for a in budget) == [0.8, 0.9]
    assert len({a["event_id"] for a in budget}) == 2
    # The sinks never stopped: every call once in each store, and their role never restarted.
    assert roles(worker)["sinks"] == {**roles(worker)["sinks"], "state": "running", "restarts": 0}
    wait_for(lambda: lake_totals(intel).get("llm_calls", (0,))[0] == send.count, 60, "the lake")
    wait_for(lambda: clickhouse_totals(intel, worker).get("llm_calls", (0,))[0] == send.count, 60, "ClickHouse")
    assert lake_totals(intel)["llm_calls"] == (send.count, 1.0, send.count)
    assert clickhouse_totals(intel, worker)["llm_calls"][::2] == (send.count, send.count)
    samples = scrape(intel.metrics_port)
    assert total(samples, "ezstream_role_restarts_total", role="alerts") == 1
    assert total(samples, "ezstream_role_restarts_total", role="sinks") == 0
    assert total(samples, "ezstream_role_up", role="alerts") == 1
    assert "role:alerts crashed (restart 1 in 1 s; the worker's other roles go on)" in worker.tail(400)


def test_a_crashed_sinks_role_starts_again_writes_each_event_once_and_alerts_go_on(intel, start):
    # The sinks crash after their first write to the lake and before its offsets are recorded.
    worker = start(intel, name="crashing", roles=ALL, failpoints="lake.after_write=1:crash")
    send = Sent(intel)
    send(*[call("dev-02", cost=0.01) for _ in range(5)])
    restarted(worker, "sinks")
    send(call("dev-01", cost=0.85))
    send(*[call("dev-02", cost=0.01) for _ in range(5)])
    processed(worker, send.count)
    assert [round(a["threshold"], 2) for a in alerts_of(intel, "budget")] == [0.8]
    assert roles(worker)["alerts"]["restarts"] == 0
    wait_for(lambda: lake_totals(intel).get("llm_calls", (0,))[0] >= send.count, 60, "the lake")
    wait_for(lambda: clickhouse_totals(intel, worker).get("llm_calls", (0,))[0] >= send.count, 60, "ClickHouse")
    lake, ch = lake_totals(intel)["llm_calls"], clickhouse_totals(intel, worker)["llm_calls"]
    assert (lake[0], lake[2]) == (ch[0], ch[2]) == (send.count, send.count)
