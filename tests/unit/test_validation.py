"""The value rules of connectors/validation.py: one rule per field, decided the same for a message
wherever and whenever it is checked."""

from __future__ import annotations

import math
import random
import uuid

import pytest

from connectors.kafka.codec import default_codec
from connectors.validation import END_TIME_MS, ValueRules, check

NOW = 1_795_000_000_000  # a Kafka timestamp in late 2026
DAY = 86_400_000
RULES = ValueRules(future_tolerance_ms=3_600_000, max_age_ms=365 * DAY, max_string_bytes=1000)


def call(**changes):
    record = dict(event_id=str(uuid.uuid4()), event_time=NOW - 1000, agent_id="dev-01", agent_type="development",
                  tenant_id="acme", trace_id="t1", call_id="c1", task_id=None, provider="openai", model="gpt-4o",
                  api_key_alias="k1", input_tokens=10, output_tokens=20, cost_usd=0.01, price_version="p1",
                  latency_ms=120.0, status="ok", cache_hit=False, region=None, prompt_snippet=None,
                  output_snippet=None)
    return {**record, **changes}


def invalid(event, records, kafka_ms=None):
    codec = default_codec()
    batch = codec.decode_batch_arrow([codec.encode(event, r) for r in records], event)
    assert batch.failures == []
    kafka = kafka_ms if kafka_ms is not None else [NOW] * len(records)
    return {i.row: i.message for i in check(batch.table, event, kafka, RULES)}


@pytest.mark.parametrize("changes, says", [
    ({"cost_usd": math.nan}, "cost_usd nan is not a finite number"),
    ({"cost_usd": math.inf}, "cost_usd inf is not a finite number"),
    ({"latency_ms": -math.inf}, "latency_ms -inf is not a finite number"),
    ({"cost_usd": -0.5}, "cost_usd -0.5 is negative"),
    ({"input_tokens": -1}, "input_tokens -1 is negative"),
    ({"event_time": 10**16}, "is outside the range the stores hold"),
    ({"event_time": -1}, "event_time 1969-12-31T23:59:59.999Z is outside"),
    ({"event_time": END_TIME_MS}, "2106-02-07T06:28:16.000Z is outside"),
    ({"event_time": NOW + 3_600_001}, "3600 s after the message's Kafka timestamp"),
    ({"event_time": NOW - 365 * DAY - 1}, "older than the retention of 365 days"),
    ({"agent_id": "x" * 1001}, "agent_id is 1,001 bytes: more than the 1,000 allowed (EZ_MAX_STRING_BYTES)"),
    ({"region": "é" * 501}, "region is 1,002 bytes"),
])
def test_each_rule_names_the_field_and_why(changes, says):
    found = invalid("llm_call", [call(), call(**changes), call()])
    assert list(found) == [1]
    assert says in found[1]


def test_values_on_the_bounds_pass():
    records = [call(event_time=NOW + 3_600_000), call(event_time=NOW - 365 * DAY), call(cost_usd=0.0),
               call(cost_usd=-0.0), call(input_tokens=0), call(agent_id="x" * 1000), call(event_time=0),
               call(event_time=END_TIME_MS - 1, cost_usd=1e308)]
    kafka = [NOW] * 6 + [0, END_TIME_MS]
    assert invalid("llm_call", records, kafka) == {}


def test_free_text_is_cut_by_its_policy_not_refused():
    assert invalid("llm_call", [call(prompt_snippet="x" * 5000)]) == {}


def test_relative_bounds_follow_each_messages_kafka_timestamp_and_only_it():
    old = NOW - 400 * DAY
    records = [call(event_time=old), call(event_time=old), call(event_time=old)]
    # Produced back then (a backfill that kept the timestamps), produced now, no timestamp at all.
    assert list(invalid("llm_call", records, [old + 1000, NOW, None])) == [1]


def test_nested_values_map_to_their_row():
    alert = dict(event_id=str(uuid.uuid4()), event_time=NOW, agent_id="a", agent_type="development",
                 tenant_id="t", trace_id="x", alert_id="al", kind="budget", severity="warning", state="firing",
                 subject="t", message="m", value=1.0, threshold=2.0, window_start=None, window_end=None,
                 first_seen=NOW, last_seen=NOW, details={"ok": "fine"})
    found = invalid("alert", [alert, {**alert, "details": {"k": "v" * 1001}}, {**alert, "details": {"x" * 1001: "v"}},
                              {**alert, "window_end": 10**15}])
    assert sorted(found) == [1, 2, 3]
    assert found[1].startswith("details value is 1,001 bytes")
    assert found[2].startswith("details key is 1,001 bytes")
    assert found[3].startswith("window_end")
    result = dict(event_id=str(uuid.uuid4()), event_time=NOW, agent_id="a", agent_type="development",
                  tenant_id="t", trace_id="x", correlation_id="c", model="m", model_version="1",
                  embeddings=[[0.5, -0.25]], queue_ms=1.0, compute_ms=2.0, error=None)
    found = invalid("inference_result", [{**result, "embeddings": [[1.0], [0.0, math.nan]]}, result,
                                         {**result, "embeddings": []}])
    assert list(found) == [0]  # negative vector components are fine, NaN is not
    assert found[0].startswith("embeddings item item nan is not a finite number")


def _reference(record, kafka_ms):
    """The rules one record at a time, as plainly as they read in the docstring."""
    if not 0 <= record["event_time"] < END_TIME_MS:
        return True
    if kafka_ms is not None and not (kafka_ms - RULES.max_age_ms <= record["event_time"]
                                     <= kafka_ms + RULES.future_tolerance_ms):
        return True
    for name in ("input_tokens", "output_tokens", "cost_usd", "latency_ms"):
        value = record[name]
        if not math.isfinite(value) or value < 0:
            return True
    return any(isinstance(v, str) and len(v.encode()) > RULES.max_string_bytes
               for k, v in record.items() if k not in ("prompt_snippet", "output_snippet"))


def test_the_batch_check_agrees_with_a_per_record_reference_on_random_batches():
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    numbers = [0.0, 1.5, -1.0, math.nan, math.inf, -math.inf, 1e300]
    times = [NOW, NOW + 3_600_000, NOW + 3_600_001, NOW - 365 * DAY, NOW - 365 * DAY - 1, -1, 0, 10**16,
             END_TIME_MS - 1, END_TIME_MS]
    records, kafka = [], []
    for _ in range(400):
        records.append(call(event_time=rng.choice(times), cost_usd=rng.choice(numbers),
                            latency_ms=rng.choice(numbers), input_tokens=rng.choice([0, 5, -3, 2**31 - 1]),
                            agent_id="a" * rng.choice([1, 1000, 1001]), region=rng.choice([None, "é" * 500, "é" * 501])))
        kafka.append(rng.choice([NOW, None, END_TIME_MS + DAY, 0]))
    found = invalid("llm_call", records, kafka)
    want = {i for i, (r, k) in enumerate(zip(records, kafka)) if _reference(r, k)}
    assert set(found) == want, f"seed {seed}"
