"""The GenAI span mapping (streams/agents/genai.py) on OTLP TracesData built here, no Kafka.

Costs are checked against the rows of the checked-in price snapshot, read as JSON here and
computed by hand, not through :class:`PriceTable`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status, TracesData

from connectors.kafka.codec import default_codec
from connectors.kafka.events import LlmCall, TaskEvent
from connectors.pricing import PRICE_TABLES_DIR, PriceTable
from streams.agents.genai import UNPRICED, Attribution, event_id, map_traces

PRICES = PriceTable.load()
T0 = 1_764_900_000_000_000_000  # ns
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
RESOURCE = {"service.name": "support-bot", "tenant.id": "acme", "agent.type": "content", "cloud.region": "eu-west-1"}


def rates(provider: str, model: str) -> dict[str, float]:
    """The row of the latest snapshot, read as JSON (USD per million tokens)."""
    latest = sorted(PRICE_TABLES_DIR.glob("*.json"))[-1]
    rows = json.loads(latest.read_text())["prices"]
    return next(r for r in rows if (r["provider"], r["model"]) == (provider, model))


def value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v))


def attrs(values: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=value(v)) for k, v in values.items()]


def span(span_id: int, name: str, values: dict[str, Any], *, parent: int = 0, start_ms: int = 0,
         duration_ms: int = 800, error: bool = False) -> Span:
    return Span(
        trace_id=TRACE, span_id=span_id.to_bytes(8, "big"), parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name, start_time_unix_nano=T0 + start_ms * 1_000_000,
        end_time_unix_nano=T0 + (start_ms + duration_ms) * 1_000_000, attributes=attrs(values),
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )


def traces(*spans: Span, resource: dict[str, Any] = RESOURCE) -> bytes:
    return TracesData(resource_spans=[ResourceSpans(
        resource=Resource(attributes=attrs(resource)), scope_spans=[ScopeSpans(spans=list(spans))],
    )]).SerializeToString()


def chat(span_id: int, **extra: Any) -> Span:
    values = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
              "gen_ai.request.model": "claude-3-5-sonnet", "gen_ai.response.model": "claude-3-5-sonnet-20241022",
              "gen_ai.usage.input_tokens": 2000, "gen_ai.usage.output_tokens": 500}
    parent = extra.pop("parent", 0)
    return span(span_id, "chat claude", values | extra, parent=parent)


def only(mapped, cls):
    found = [e for e in mapped.events if isinstance(e, cls)]
    assert len(found) == 1, found
    return found[0]


def test_a_chat_span_with_cache_tokens_is_one_call_priced_from_the_snapshot():
    mapped = map_traces(traces(chat(1, **{"gen_ai.usage.cache_read.input_tokens": 1200,
                                          "gen_ai.usage.cache_creation.input_tokens": 300})), PRICES)
    call = only(mapped, LlmCall)
    r = rates("anthropic", "claude-3-5-sonnet")
    want = (500 * r["input_usd_per_mtok"] + 1200 * r["cache_read_usd_per_mtok"]
            + 300 * r["cache_write_usd_per_mtok"] + 500 * r["output_usd_per_mtok"]) / 1e6
    assert call.cost_usd == pytest.approx(want, rel=1e-12) and call.price_version == PRICES.version
    assert (call.provider, call.model, call.input_tokens, call.output_tokens) == (
        "anthropic", "claude-3-5-sonnet-20241022", 2000, 500)
    assert (call.cache_read_tokens, call.cache_write_tokens, call.reasoning_tokens) == (1200, 300, 0)
    assert (call.agent_id, call.tenant_id, call.agent_type, call.region) == ("support-bot", "acme", "content", "eu-west-1")
    assert (call.trace_id, call.call_id, call.task_id) == (TRACE.hex(), (1).to_bytes(8, "big").hex(), None)
    assert call.status == "ok" and call.latency_ms == 800.0 and call.cache_hit is False
    assert call.event_time.timestamp() * 1000 == (T0 + 800 * 1_000_000) // 1_000_000
    assert mapped.spans == {"llm_call": 1}
    default_codec().encode(call.EVENT, call.to_record())  # the schema takes it


def test_the_same_span_always_maps_to_the_same_event_ids():
    data = traces(chat(1), chat(2))
    first, again = map_traces(data, PRICES), map_traces(data, PRICES)
    assert [e.event_id for e in first.events] == [e.event_id for e in again.events]
    assert len({e.event_id for e in first.events}) == 2
    assert first.events[0].event_id == event_id(TRACE, (1).to_bytes(8, "big"), "call")


@pytest.mark.parametrize(("values", "expected"), [
    # provider: gen_ai.provider.name, then gen_ai.system, then OpenInference's llm.system
    ({"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}, {"provider": "openai", "model": "gpt-4o"}),
    ({"llm.system": "openai", "llm.model_name": "gpt-4o-mini"}, {"provider": "openai", "model": "gpt-4o-mini"}),
    # tokens: gen_ai.usage.input/output, then prompt/completion, then llm.token_count.*
    ({"gen_ai.usage.prompt_tokens": 70, "gen_ai.usage.completion_tokens": 9}, {"input_tokens": 70, "output_tokens": 9}),
    ({"llm.token_count.prompt": 71, "llm.token_count.completion": 8,
      "llm.token_count.prompt_details.cache_read": 64}, {"input_tokens": 71, "output_tokens": 8, "cache_read_tokens": 64}),
    ({"gen_ai.usage.input_tokens": 50, "gen_ai.usage.prompt_tokens": 999}, {"input_tokens": 50}),
    # Anthropic-style usage: the input without its cached part, so the cached part is added.
    ({"gen_ai.usage.input_tokens": 20, "gen_ai.usage.cache_read_input_tokens": 1000,
      "gen_ai.usage.cache_creation_input_tokens": 200}, {"input_tokens": 1220, "cache_read_tokens": 1000,
                                                         "cache_write_tokens": 200}),
    ({"gen_ai.usage.output_tokens": 900, "gen_ai.usage.reasoning.output_tokens": 700},
     {"output_tokens": 900, "reasoning_tokens": 700}),
    # model: the response model, then the request model
    ({"gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06"}, {"model": "gpt-4o-2024-08-06"}),
    # agent: gen_ai.agent.id, then gen_ai.agent.name, then the resource's service.name
    ({"gen_ai.agent.name": "planner"}, {"agent_id": "planner"}),
    ({"gen_ai.agent.id": "agent-7", "gen_ai.agent.name": "planner"}, {"agent_id": "agent-7"}),
    # status: HTTP 429 and rate-limit errors, timeouts, other errors
    ({"http.response.status_code": 429, "error.type": "429"}, {"status": "rate_limited"}),
    ({"error.type": "RateLimitError"}, {"status": "rate_limited"}),
    ({"error.type": "APITimeoutError"}, {"status": "timeout"}),
    ({"error.type": "InternalServerError"}, {"status": "error"}),
    # a provider outside the event's enum is `other`, still priced by its own name
    ({"gen_ai.provider.name": "gcp.gemini", "gen_ai.request.model": "gemini-1.5-pro"}, {"provider": "other"}),
])
def test_each_attribute_is_read_with_the_instrumentations_fallbacks(values, expected):
    base = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10}
    if any(k.startswith(("gen_ai.system", "llm.system")) for k in values):
        base.pop("gen_ai.provider.name")
    if any(k.startswith(("gen_ai.usage.prompt", "llm.token_count")) for k in values):
        base.pop("gen_ai.usage.input_tokens"), base.pop("gen_ai.usage.output_tokens")
    if "llm.model_name" in values:
        base.pop("gen_ai.request.model")
    call = only(map_traces(traces(span(1, "call", base | values)), PRICES), LlmCall)
    assert {k: getattr(call, k) for k in expected} == expected
    assert call.price_version == PRICES.version and call.cost_usd > 0 or call.status != "ok"


def test_a_span_status_error_without_an_error_type_is_an_error_and_a_gemini_call_is_priced():
    call = only(map_traces(traces(span(1, "call", {"gen_ai.operation.name": "generate_content",
                                                   "gen_ai.provider.name": "gcp.gemini",
                                                   "gen_ai.request.model": "gemini-1.5-pro",
                                                   "gen_ai.usage.input_tokens": 1000}, error=True)), PRICES), LlmCall)
    assert call.status == "error" and call.provider == "other"
    assert call.cost_usd == pytest.approx(PRICES.cost("gcp.gemini", "gemini-1.5-pro", 1000, 0))
    assert call.cost_usd > 0


def test_an_embeddings_span_is_a_call_with_input_tokens_only():
    call = only(map_traces(traces(span(1, "embeddings", {
        "gen_ai.operation.name": "embeddings", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "text-embedding-3-small", "gen_ai.usage.input_tokens": 4000})), PRICES), LlmCall)
    r = rates("openai", "text-embedding-3-small")
    assert (call.input_tokens, call.output_tokens) == (4000, 0)
    assert call.cost_usd == pytest.approx(4000 * r["input_usd_per_mtok"] / 1e6, rel=1e-12)


def test_a_model_the_table_does_not_price_costs_0_and_says_so():
    mapped = map_traces(traces(chat(1, **{"gen_ai.response.model": "my-finetune-7b",
                                          "gen_ai.request.model": "my-finetune-7b"})), PRICES)
    call = only(mapped, LlmCall)
    assert (call.cost_usd, call.price_version, mapped.unpriced) == (0.0, UNPRICED, 1)


def test_an_invoke_agent_span_is_a_task_started_and_ended_with_its_calls_cost():
    agent = span(10, "invoke_agent planner", {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"},
                 start_ms=0, duration_ms=5_000)
    tool = span(11, "execute_tool search", {"gen_ai.operation.name": "execute_tool"}, parent=10, start_ms=100)
    inner = chat(12, parent=11)  # under the tool, under the agent
    direct = chat(13, parent=10)
    stray = chat(14, parent=99)  # its parent is not in the message
    mapped = map_traces(traces(agent, tool, inner, direct, stray), PRICES)
    started, ended = [e for e in mapped.events if isinstance(e, TaskEvent)]
    calls = {e.call_id: e for e in mapped.events if isinstance(e, LlmCall)}
    task = (10).to_bytes(8, "big").hex()
    assert [calls[(n).to_bytes(8, "big").hex()].task_id for n in (12, 13, 14)] == [task, task, None]
    assert (started.status, started.task_id, started.cost_usd, started.agent_id) == ("started", task, 0.0, "planner")
    assert (ended.status, ended.duration_ms, ended.error_category) == ("completed", 5_000, None)
    assert ended.cost_usd == pytest.approx(calls[(12).to_bytes(8, "big").hex()].cost_usd * 2)
    assert started.event_time.timestamp() * 1e9 == T0 and (ended.queue, ended.attempt) == ("unknown", 1)
    assert mapped.spans == {"llm_call": 3, "task": 1, "skipped": 1}


def test_a_failed_agent_span_ends_its_task_failed_with_the_error_type():
    agent = span(10, "invoke_agent", {"gen_ai.operation.name": "invoke_agent", "error.type": "ToolError"}, error=True)
    _, ended = map_traces(traces(agent), PRICES).events
    assert (ended.status, ended.error_category) == ("failed", "ToolError")


def test_openinference_span_kinds_are_read_without_gen_ai_operation_name():
    mapped = map_traces(traces(
        span(1, "llm", {"openinference.span.kind": "LLM", "llm.system": "openai", "llm.model_name": "gpt-4o",
                        "llm.token_count.prompt": 10, "llm.token_count.completion": 5}, parent=2),
        span(2, "agent", {"openinference.span.kind": "AGENT"}),
    ), PRICES)
    assert mapped.spans == {"llm_call": 1, "task": 1}
    assert only(mapped, LlmCall).task_id == (2).to_bytes(8, "big").hex()


def test_tenant_and_agent_type_come_from_the_configured_attributes_span_first():
    attribution = Attribution(tenant_attribute="customer", agent_type_attribute="kind")
    mapped = map_traces(traces(chat(1, customer="globex"), resource={"service.name": "bot", "kind": "research"}),
                        PRICES, attribution)
    call = only(mapped, LlmCall)
    assert (call.tenant_id, call.agent_type) == ("globex", "research")
    call = only(map_traces(traces(chat(1), resource={}), PRICES), LlmCall)
    assert (call.tenant_id, call.agent_type, call.agent_id, call.region) == ("unknown", "unknown", "unknown", None)


def test_other_spans_are_counted_and_skipped():
    mapped = map_traces(traces(span(1, "GET /", {"http.request.method": "GET"}),
                               span(2, "create_agent", {"gen_ai.operation.name": "create_agent"})), PRICES)
    assert mapped.events == [] and mapped.spans == {"skipped": 2}


def test_bytes_that_are_not_traces_data_raise_decode_error():
    seed = int(os.environ.get("EZ_TEST_SEED", "7"))
    print(f"seed {seed} (EZ_TEST_SEED to repeat)")
    import random

    rng = random.Random(seed)
    with pytest.raises(DecodeError):
        map_traces(b"\xff\xff\xff\xff garbage", PRICES)
    # Random bytes either fail to decode or decode into spans the mapping survives.
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        try:
            map_traces(data, PRICES)
        except DecodeError:
            pass
