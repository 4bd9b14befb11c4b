"""JSON events from any Kafka client: kcat produces JSON lines to agent.llm_calls; the valid ones
land exactly once in the lake and ClickHouse, the invalid ones are in the DLQ with the field named.

kcat (Debian's package) is installed by ``make kcat``, which ``make test`` runs; without it this
test fails rather than skips, since nothing else proves a plain client's JSON gets in.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from datetime import datetime, timezone

import pytest

from connectors.kafka.dlq import ERROR_CLASS, SOURCE_OFFSET, SOURCE_PARTITION, read_dead_letters
from connectors.kafka.topics import dlq_topic, topic_name
from connectors.lake import storage_options, table_uri
from streams.query_server import query
from tests.conftest import wait_for
from tests.integration.pipeline import Truth, wait_exact


def _call(number: int, now_ms: int) -> dict:
    """A valid LlmCall as a JSON client writes it: optional fields left out, some times as text."""
    event_time: int | str = now_ms - 60_000 - number
    if number % 2:
        event_time = datetime.fromtimestamp(event_time / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    call = {
        "event_id": str(uuid.uuid4()), "event_time": event_time, "agent_id": f"json-agent-{number % 4}",
        "agent_type": "research", "tenant_id": "acme", "trace_id": f"trace-{number}", "call_id": f"call-{number}",
        "provider": ["anthropic", "openai", "mistral"][number % 3], "model": "claude-3-haiku",
        "api_key_alias": "anthropic-01", "input_tokens": 100 + number, "output_tokens": 20, "cost_usd": 0.001 * number,
        "price_version": "2026-11-01", "latency_ms": 850.5, "status": "ok", "cache_hit": False,
    }
    if number % 5 == 0:
        call["region"] = "eu-west-1 ✓"
    return call


def _kcat(bootstrap: str, topic: str, lines: list[str], headers: list[str] = ()) -> None:
    """Produce ``lines`` ("key|json") with kcat, one message each, waiting for every delivery."""
    command = ["kcat", "-P", "-q", "-b", bootstrap, "-t", topic, "-K", "|"]
    for header in headers:
        command += ["-H", header]
    done = subprocess.run(command, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kcat failed ({done.returncode}): {done.stderr}"


def test_json_lines_from_kcat_land_exactly_once_and_invalid_ones_go_to_the_dlq(pipe, workers):
    if shutil.which("kcat") is None:
        pytest.fail("kcat is not installed: `make kcat` installs it (Debian's package kcat); "
                    "this test needs a plain Kafka client", pytrace=False)
    topic = topic_name(pipe, "agent.llm_calls")
    now_ms = int(time.time() * 1000)
    valid = [_call(n, now_ms) for n in range(1, 121)]
    base = _call(0, now_ms)
    invalid = {  # line -> (error class, what the reason must say)
        json.dumps({**base, "input_tokens": "12"}): ("InvalidJson", 'input_tokens: expected int, got "12"'),
        json.dumps({k: v for k, v in base.items() if k != "cost_usd"}): ("InvalidJson", "cost_usd: missing"),
        json.dumps({**base, "event_id": "not-a-uuid"}): ("InvalidJson", "event_id: not a UUID"),
        json.dumps({**base, "provider": 7}): ("InvalidJson", "provider: expected a symbol"),
        json.dumps({**base, "event_time": "2026-11-20T08:00:00"}): ("InvalidJson", "event_time: "),
        json.dumps({**base, "colour": "red"}): ("InvalidJson", "colour: unknown field"),
        '{"event_id": "' + str(uuid.uuid4()) + '", "agent_id": ': ("InvalidJson", "not JSON"),
        json.dumps({**base, "output_tokens": -5}): ("InvalidValue", "output_tokens -5 is negative"),
    }
    worker = workers(pipe)
    lines = [f"{call['agent_id']}|{json.dumps(call, ensure_ascii=False)}" for call in valid[:100]]
    lines += [f"bad-agent|{line}" for line in invalid]
    _kcat(pipe.kafka_bootstrap, topic, lines)
    # Under a content-type header a message is JSON whatever its first byte: an array fails as JSON.
    headed = [f"{call['agent_id']}|{json.dumps(call)}" for call in valid[100:]] + ["bad-agent|[1, 2]"]
    _kcat(pipe.kafka_bootstrap, topic, headed, headers=["content-type=application/json"])
    invalid["[1, 2]"] = ("InvalidJson", "expected a JSON object, got an array")

    truth = Truth()
    for call in valid:
        truth.add("llm_calls", call["cost_usd"])
    wait_exact(pipe, truth, workers=[worker])
    from deltalake import DeltaTable

    lake = DeltaTable(table_uri(pipe, "llm_calls"), storage_options=storage_options(pipe)).to_pyarrow_table()
    assert sorted(lake["event_id"].to_pylist()) == sorted(c["event_id"] for c in valid)
    by_id = {c["event_id"]: c for c in valid}
    for row in lake.select(["event_id", "provider", "region", "input_tokens", "event_time"]).to_pylist():
        call = by_id[row["event_id"]]
        assert row["provider"] == ("other" if call["provider"] == "mistral" else call["provider"])
        assert row["region"] == call.get("region") and row["input_tokens"] == call["input_tokens"]
    _, rows = query(pipe.model_copy(update={"home": worker.home}),
                    f"SELECT event_id FROM {pipe.clickhouse_database}.llm_calls")
    assert sorted(str(r[0]) for r in rows) == sorted(c["event_id"] for c in valid)

    dlq = dlq_topic(topic)
    letters = wait_for(lambda: found if len(found := read_dead_letters(pipe, dlq)) >= len(invalid) else None,
                       60, f"{len(invalid)} dead letters on {dlq}")
    assert len({(l.headers[SOURCE_PARTITION], l.headers[SOURCE_OFFSET]) for l in letters}) == len(letters) == len(invalid)
    for letter in letters:
        error_class, reason = invalid[letter.value.decode()]
        assert letter.headers[ERROR_CLASS] == error_class, letter.headers
        assert reason in letter.headers["ez.dlq.error.message"], letter.headers
        assert letter.key == b"bad-agent"
