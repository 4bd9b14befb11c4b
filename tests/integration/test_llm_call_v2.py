"""LlmCall v1 and v2 producers side by side: both stores exact, v1 calls with zero cache and
reasoning tokens, and costs equal to an independent computation from the price snapshot."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

from confluent_kafka import Producer

from connectors.kafka import client_config
from connectors.kafka.codec import encode
from connectors.kafka.events import LlmCall
from connectors.kafka.schemas import SCHEMAS_DIR
from connectors.kafka.topics import topic_name
from connectors.lake import storage_options, table_uri
from connectors.pricing import PRICE_TABLES_DIR, PriceTable
from streams.query_server import query
from tests.integration.pipeline import Truth, wait_exact

MODELS = [("anthropic", "claude-3-5-sonnet"), ("openai", "gpt-4o"), ("deepseek", "deepseek-chat")]


def by_hand(provider: str, model: str, tokens: dict[str, int]) -> float:
    """USD of a call from the latest snapshot's row, read as JSON here (no tiers on these models)."""
    rows = json.loads(sorted(PRICE_TABLES_DIR.glob("*.json"))[-1].read_text())["prices"]
    r = next(row for row in rows if (row["provider"], row["model"]) == (provider, model))
    assert not r.get("tiers"), "the test's models have one tier"
    fresh = tokens["input_tokens"] - tokens["cache_read_tokens"] - tokens["cache_write_tokens"]
    return (fresh * r["input_usd_per_mtok"] + tokens["cache_read_tokens"] * r["cache_read_usd_per_mtok"]
            + tokens["cache_write_tokens"] * r["cache_write_usd_per_mtok"]
            + (tokens["output_tokens"] - tokens["reasoning_tokens"]) * r["output_usd_per_mtok"]
            + tokens["reasoning_tokens"] * r["reasoning_usd_per_mtok"]) / 1e6


def test_v1_and_v2_calls_mixed_land_exactly_with_their_tokens_and_costs(pipe, workers):
    seed = 15
    print(f"seed {seed}")
    rng = random.Random(seed)
    table = PriceTable.load()
    v1_fields = {f["name"] for f in json.loads((SCHEMAS_DIR / "llm_call" / "v1.avsc").read_text())["fields"]}
    topic = topic_name(pipe, LlmCall.TOPIC)
    producer = Producer(client_config(pipe, **{"enable.idempotence": True, "acks": "all"}))
    truth, want = Truth(), {}
    start = datetime.now(timezone.utc) - timedelta(minutes=10)
    for i in range(400):
        provider, model = MODELS[i % len(MODELS)]
        version = 1 if i % 2 else 2
        inputs = rng.randint(500, 20_000)
        read = rng.randint(0, inputs // 2) if version == 2 else 0
        write = rng.randint(0, (inputs - read) // 3) if version == 2 and provider == "anthropic" else 0
        outputs = rng.randint(1, 3_000)
        reasoning = rng.randint(0, outputs) if version == 2 and provider == "openai" else 0
        tokens = {"input_tokens": inputs, "output_tokens": outputs, "cache_read_tokens": read,
                  "cache_write_tokens": write, "reasoning_tokens": reasoning}
        cost = table.cost(provider, model, inputs, outputs, cache_read_tokens=read, cache_write_tokens=write,
                          reasoning_tokens=reasoning)
        call = LlmCall(event_time=start + timedelta(milliseconds=i), agent_id=f"agent-{i % 7}", agent_type="research",
                       tenant_id="acme", trace_id=f"t-{i}", call_id=f"c-{i}", provider=provider, model=model,
                       api_key_alias="key-01", cost_usd=cost, price_version=table.version, latency_ms=100.0,
                       status="ok", cache_hit=False, **tokens)
        record = call.to_record()
        if version == 1:
            record = {k: v for k, v in record.items() if k in v1_fields}
        producer.produce(topic, value=encode("llm_call", record, version), key=call.agent_id.encode())
        truth.add("llm_calls", cost)
        want[call.call_id] = (version, tokens, by_hand(provider, model, tokens))
    assert producer.flush(30) == 0
    worker = workers(pipe)
    wait_exact(pipe, truth, workers=[worker])

    from deltalake import DeltaTable

    lake = DeltaTable(table_uri(pipe, "llm_calls"), storage_options=storage_options(pipe)).to_pyarrow_table().to_pylist()
    clickhouse = query(pipe.model_copy(update={"home": worker.home}), f"""
        SELECT call_id, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_usd
        FROM {pipe.clickhouse_database}.llm_calls""")[1]
    names = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"]
    stored = {
        "lake": {r["call_id"]: ({k: r[k] for k in names}, r["cost_usd"]) for r in lake},
        "clickhouse": {r[0]: (dict(zip(names, r[1:6])), r[6]) for r in clickhouse},
    }
    for store, rows in stored.items():
        assert rows.keys() == want.keys(), store
        for call_id, (version, tokens, cost) in want.items():
            got_tokens, got_cost = rows[call_id]
            assert got_tokens == tokens, (store, call_id, version)
            assert abs(got_cost - cost) <= 1e-12 * max(1.0, cost), (store, call_id, got_cost, cost)
    # The v1 calls (written without the fields) read as 0 in both stores, not null.
    v1 = [stored[store][call_id][0] for store in stored for call_id, (version, _, _) in want.items() if version == 1]
    assert len(v1) == 400 and all(
        (t["cache_read_tokens"], t["cache_write_tokens"], t["reasoning_tokens"]) == (0, 0, 0) for t in v1)
    rollup = query(pipe.model_copy(update={"home": worker.home}), f"""
        SELECT sumMerge(cache_read_tokens_sum), sumMerge(cache_write_tokens_sum), sumMerge(reasoning_tokens_sum)
        FROM {pipe.clickhouse_database}.llm_calls_1m""")[1]
    assert tuple(rollup[0]) == tuple(sum(t[k] for _, t, _ in want.values())
                                     for k in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens"))
