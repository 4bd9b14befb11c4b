"""OpenTelemetry GenAI spans -> the catalogue's events: a pure mapping, no Kafka.

What instrumented apps emit (OpenLLMetry, OpenLIT, Pydantic AI/Logfire, OpenInference, the
OpenTelemetry GenAI semantic conventions) reaches us as OTLP ``TracesData`` (the collector's
``otlp_proto`` encoding on ``otlp_spans``). :func:`map_traces` turns one such message into events:

- a span whose ``gen_ai.operation.name`` is an LLM operation (:data:`LLM_OPERATIONS`: chat,
  text_completion, generate_content, embeddings), or OpenInference's ``openinference.span.kind``
  LLM/EMBEDDING, is one :class:`LlmCall`, at the span's end;
- an ``invoke_agent`` span (OpenInference: AGENT) is a task: a ``started`` :class:`TaskEvent` at
  its start and a ``completed`` (or ``failed``, span status error) one at its end;
- every other span is counted and skipped.

Each attribute is read with the fallbacks the instrumentations use, first found wins (see the
``_ATTRS`` tuples): provider from ``gen_ai.provider.name``, ``gen_ai.system``, ``llm.system``;
model from the response model, then the request model; tokens from ``gen_ai.usage.*``, the older
``prompt_tokens``/``completion_tokens`` and OpenInference's ``llm.token_count.*``; agent from
``gen_ai.agent.id``/``name``, then the resource's ``service.name``; tenant and agent type from
configurable attributes (span first, then resource). A provider the event schema does not name is
``other`` in the event (its own name still prices it). Token counts follow the GenAI conventions:
cache reads and writes are parts of the input tokens, reasoning tokens part of the output; an
instrumentation that reports the input without its cached part (cache tokens above the input) has
them added to it.

Costs come from the price table (:mod:`connectors.pricing`), its version in ``price_version``; a
model the table does not price gets cost 0 and ``price_version`` :data:`UNPRICED`, so such calls
are found by SQL instead of hiding in the sums. ``event_id`` is a UUID5 of the trace id, span id
and the event's kind: the same span always maps to the same events.

A call is linked to its task (``task_id``) when its nearest ``invoke_agent`` ancestor is in the
same message; the collector's batch processor exports the spans of a trace that end together in
one message, but a call exported before its agent span ended has no ``task_id``, and the task's
``cost_usd`` at its end sums the calls linked in the message only.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from connectors.kafka.events import Event, LlmCall, TaskEvent
from connectors.pricing import EVENT_PROVIDERS, PROVIDER_ALIASES, PriceTable, UnknownModel

#: ``gen_ai.operation.name`` values that are one request to a model.
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
#: ``gen_ai.operation.name`` of an agent's run: a task.
AGENT_OPERATION = "invoke_agent"
#: OpenInference's span kinds, for spans without ``gen_ai.operation.name``.
_OPENINFERENCE_KINDS = {"LLM": "chat", "EMBEDDING": "embeddings", "AGENT": AGENT_OPERATION}

#: ``price_version`` of a call whose model the price table does not price (its cost is 0).
UNPRICED = "unpriced"
#: Where the event ids of mapped spans live: uuid5(NAMESPACE, "<trace>:<span>:<kind>").
NAMESPACE = uuid.UUID("6f1c1f3e-4c62-5b8e-9a57-2f1a0c7d9e41")

_PROVIDER_ATTRS = ("gen_ai.provider.name", "gen_ai.system", "llm.system", "llm.provider")
_MODEL_ATTRS = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
_INPUT_ATTRS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
_OUTPUT_ATTRS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion")
_CACHE_READ_ATTRS = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
                     "gen_ai.usage.input_tokens.cached", "llm.token_count.prompt_details.cache_read")
_CACHE_WRITE_ATTRS = ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens",
                      "gen_ai.usage.input_tokens.cache_write", "llm.token_count.prompt_details.cache_write")
_REASONING_ATTRS = ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
                    "gen_ai.usage.output_tokens.reasoning", "llm.token_count.completion_details.reasoning")
_AGENT_ATTRS = ("gen_ai.agent.id", "gen_ai.agent.name")
_HTTP_STATUS_ATTRS = ("http.response.status_code", "http.status_code")

# OTLP status codes (opentelemetry.proto.trace.v1.Status.StatusCode).
_STATUS_ERROR = 2


@dataclass(frozen=True)
class Attribution:
    """Where the tenant and agent type of a span are read from (span attribute, then resource)."""

    tenant_attribute: str = "tenant.id"
    agent_type_attribute: str = "agent.type"
    #: Used when neither the span nor its resource has the attribute.
    unknown: str = "unknown"


@dataclass
class Mapped:
    """The events of one OTLP message, and what its spans were."""

    events: list[Event] = field(default_factory=list)
    #: Spans per outcome: ``llm_call``, ``task``, ``skipped``.
    spans: Counter[str] = field(default_factory=Counter)
    #: Calls whose model the price table does not price.
    unpriced: int = 0


def map_traces(data: bytes, prices: PriceTable, attribution: Attribution = Attribution()) -> Mapped:
    """The events of one ``otlp_proto`` message (``TracesData``).

    :raises google.protobuf.message.DecodeError: the bytes are not a ``TracesData``.
    """
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

    traces = TracesData()
    traces.ParseFromString(data)
    mapped = Mapped()
    spans = [(_attributes(rs.resource.attributes), span)
             for rs in traces.resource_spans for ss in rs.scope_spans for span in ss.spans]
    by_id = {span.span_id: span for _, span in spans}
    operations = {span.span_id: _operation(_attributes(span.attributes)) for _, span in spans}
    task_costs: Counter[bytes] = Counter()
    calls: list[tuple[LlmCall, bytes | None]] = []
    tasks: list[tuple[dict[str, Any], dict[str, Any], Any]] = []
    for resource, span in spans:
        attrs = _attributes(span.attributes)
        operation = operations[span.span_id]
        if operation in LLM_OPERATIONS:
            task = _agent_ancestor(span, by_id, operations)
            call = _llm_call(span, attrs, resource, task, prices, attribution, mapped)
            calls.append((call, task))
            if task is not None:
                task_costs[task] += call.cost_usd
            mapped.spans["llm_call"] += 1
        elif operation == AGENT_OPERATION:
            tasks.append((attrs, resource, span))
            mapped.spans["task"] += 1
        else:
            mapped.spans["skipped"] += 1
    for attrs, resource, span in tasks:
        mapped.events += _task_events(span, attrs, resource, task_costs[span.span_id], prices, attribution)
    mapped.events += [call for call, _ in calls]
    return mapped


def event_id(trace_id: bytes, span_id: bytes, kind: str) -> str:
    """The event id of ``kind`` (``call``, ``started``, ``ended``) of a span."""
    return str(uuid.uuid5(NAMESPACE, f"{trace_id.hex()}:{span_id.hex()}:{kind}"))


# -- one span ----------------------------------------------------------------------------------


def _llm_call(span: Any, attrs: dict[str, Any], resource: dict[str, Any], task: bytes | None,
              prices: PriceTable, attribution: Attribution, mapped: Mapped) -> LlmCall:
    provider = _provider(attrs)
    model = str(_first(attrs, _MODEL_ATTRS) or "unknown")
    input_tokens = _count(attrs, _INPUT_ATTRS)
    output_tokens = _count(attrs, _OUTPUT_ATTRS)
    cache_read = _count(attrs, _CACHE_READ_ATTRS)
    cache_write = _count(attrs, _CACHE_WRITE_ATTRS)
    reasoning = _count(attrs, _REASONING_ATTRS)
    if cache_read + cache_write > input_tokens:
        # Reported as the provider bills them apart (Anthropic's usage): the conventions count
        # the cached part in the input.
        input_tokens += cache_read + cache_write
    output_tokens = max(output_tokens, reasoning)
    try:
        cost = prices.cost(provider, model, input_tokens, output_tokens, cache_read_tokens=cache_read,
                           cache_write_tokens=cache_write, reasoning_tokens=reasoning)
        version = prices.version
    except UnknownModel:
        cost, version = 0.0, UNPRICED
        mapped.unpriced += 1
    return LlmCall(
        event_id=event_id(span.trace_id, span.span_id, "call"),
        event_time=_time(span.end_time_unix_nano),
        agent_id=_agent(attrs, resource, attribution),
        agent_type=_attributed(attrs, resource, attribution.agent_type_attribute, attribution.unknown),
        tenant_id=_attributed(attrs, resource, attribution.tenant_attribute, attribution.unknown),
        trace_id=span.trace_id.hex(),
        call_id=span.span_id.hex(),
        task_id=task.hex() if task is not None else None,
        provider=provider if provider in EVENT_PROVIDERS else "other",  # type: ignore[arg-type]
        model=model,
        api_key_alias=str(attrs.get("gen_ai.request.api_key_alias") or "unknown"),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
        price_version=version,
        latency_ms=(span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
        status=_call_status(span, attrs),  # type: ignore[arg-type]
        cache_hit=False,
        region=_region(resource),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


def _task_events(span: Any, attrs: dict[str, Any], resource: dict[str, Any], cost: float,
                 prices: PriceTable, attribution: Attribution) -> Iterator[TaskEvent]:
    common = dict(
        agent_id=_agent(attrs, resource, attribution),
        agent_type=_attributed(attrs, resource, attribution.agent_type_attribute, attribution.unknown),
        tenant_id=_attributed(attrs, resource, attribution.tenant_attribute, attribution.unknown),
        trace_id=span.trace_id.hex(), task_id=span.span_id.hex(), queue="unknown", attempt=1,
        price_version=prices.version, region=_region(resource),
    )
    yield TaskEvent(event_id=event_id(span.trace_id, span.span_id, "started"),
                    event_time=_time(span.start_time_unix_nano), status="started", cost_usd=0.0,
                    **common)  # type: ignore[arg-type]
    failed = span.status.code == _STATUS_ERROR
    yield TaskEvent(
        event_id=event_id(span.trace_id, span.span_id, "ended"),
        event_time=_time(span.end_time_unix_nano), status="failed" if failed else "completed",
        duration_ms=(span.end_time_unix_nano - span.start_time_unix_nano) // 1_000_000, cost_usd=cost,
        error_category=(str(attrs.get("error.type") or "error") if failed else None),
        **common,  # type: ignore[arg-type]
    )


def _operation(attrs: dict[str, Any]) -> str | None:
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str):
        return operation
    return _OPENINFERENCE_KINDS.get(str(attrs.get("openinference.span.kind", "")).upper())


def _agent_ancestor(span: Any, by_id: dict[bytes, Any], operations: dict[bytes, str | None]) -> bytes | None:
    """The span id of the nearest ``invoke_agent`` ancestor in the same message, if any."""
    seen = set()
    parent = span.parent_span_id
    while parent and parent in by_id and parent not in seen:
        if operations[parent] == AGENT_OPERATION:
            return parent
        seen.add(parent)
        parent = by_id[parent].parent_span_id
    return None


def _provider(attrs: dict[str, Any]) -> str:
    raw = str(_first(attrs, _PROVIDER_ATTRS) or "").strip().lower()
    return PROVIDER_ALIASES.get(raw, raw or "unknown")


def _call_status(span: Any, attrs: dict[str, Any]) -> str:
    http = _first(attrs, _HTTP_STATUS_ATTRS)
    error_type = str(attrs.get("error.type") or "").lower()
    if str(http) == "429" or error_type in {"429", "ratelimiterror", "rate_limit_error", "rate_limited"} \
            or "ratelimit" in error_type.replace("_", ""):
        return "rate_limited"
    if "timeout" in error_type:
        return "timeout"
    if span.status.code == _STATUS_ERROR or error_type:
        return "error"
    return "ok"


def _agent(attrs: dict[str, Any], resource: dict[str, Any], attribution: Attribution) -> str:
    return str(_first(attrs, _AGENT_ATTRS) or resource.get("service.name") or attribution.unknown)


def _attributed(attrs: dict[str, Any], resource: dict[str, Any], name: str, unknown: str) -> str:
    value = attrs.get(name, resource.get(name))
    return str(value) if value not in (None, "") else unknown


def _region(resource: dict[str, Any]) -> str | None:
    region = resource.get("cloud.region")
    return str(region) if region else None


def _first(attrs: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = attrs.get(name)
        if value is not None and value != "":
            return value
    return None


def _count(attrs: dict[str, Any], names: tuple[str, ...]) -> int:
    """A token count: the first attribute found, as an int (0 when none is, or it is no number)."""
    value = _first(attrs, names)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return 0


def _time(unix_nano: int) -> datetime:
    return datetime.fromtimestamp(unix_nano // 1_000_000 / 1000, timezone.utc)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)
