"""Realistic, deterministic agent traffic for the event topics (``ezstream simulate``).

:func:`generate` is a pure generator: one ``random.Random(seed)`` drives everything (ids
included) and event times come from a simulated clock that starts at ``start_time`` and advances
``1/rate`` seconds per event, so the same seed, start time, rate and fleet give byte-identical
events. :func:`run_simulation` sends them through the producer SDK, paced at ``rate`` events/s.

The model, in simulated time (DOMAIN.md gives the shape):

- A fleet of agents (development 10, content 5, enterprise 8, research 15 by default), each in
  one region and working for one tenant. Each agent type has its own model mix, token sizes, queue
  mix and share of the work: enterprise agents are the heaviest (large prompts, premium models,
  much high-priority work), research agents the lightest (small, cheap, fast models).
- A task is ``queued`` on one of the queues, waits (seconds on high_priority, minutes on
  background), is ``started``, makes LLM calls one after another and ends ``completed``,
  ``failed`` or ``cancelled``. A failed attempt is often queued again with ``attempt`` + 1.
  ``queue_wait_ms`` and ``duration_ms`` are the differences of the event times of the attempt's
  own events, and a task event's ``cost_usd`` is the cost of the attempt's calls so far: 0 when
  queued or started, the sum of the attempt's calls when it ends. The ``cost_usd`` of a task's
  final events thus add up to the cost of all the calls carrying its ``task_id``.
- A call's status: ``error`` at a few percent per provider, ``rate_limited`` rarely except during
  a provider's rate-limit storms (every 10-30 simulated minutes, for 20-120 s), ``timeout`` when
  the generation would outlast the client timeout (long outputs of slow models) and rarely
  otherwise. A failed call is retried (a new ``call_id``, backing off after a rate limit); once the
  retries are spent the attempt fails with that category. Only fresh successful generations are
  billed: cache hits and failed calls carry 0 tokens and 0 cost, every other call's cost is the
  price table's cost of its tokens, and the table's version is in ``price_version``.
- Prompt caching, as the providers do it: a call's prompt starts with a prefix the task repeats
  (system prompt, tools, the task's context; a share of the prompt fixed per agent type). The
  first call of a task to a model writes the prefix to that provider's cache (``cache_write_tokens``
  where the provider bills writes: anthropic), later calls of the task to the same model read it
  (``cache_read_tokens``) unless it was evicted meanwhile; prompts below the provider's minimum
  are not cached, and groq and ollama cache nothing. Both are parts of ``input_tokens`` and
  billed at the price table's cache prices. These draws come from a generator of their own,
  seeded from the simulation's, so every other field of a seed's stream stays what it was.
- Each agent sends telemetry every 10 s (less often when the rate could not carry it): CPU from
  its running tasks, memory with a slow leak on some agents (restarting near its limit), response
  time growing with its load, the errors since the last report, and how many of its tasks are queued.

Every step of the simulation emits exactly one event. At each tick of the clock, the due
follow-up (the next step of a task in flight or a heartbeat) is emitted; when nothing is due a
new task arrives. So the fleet takes on as much work as the rate asks for: the default fleet
holds a few dozen tasks per agent at :data:`DEFAULT_RATE`, and its queues, CPU and response
times grow with the rate, as an overloaded platform's would. Past :data:`MAX_TASKS_PER_AGENT`
tasks per agent (some thousands of events/s for the default fleet), work is taken up before its
planned time instead and tasks run faster than planned; a larger fleet keeps them realistic.
The stream starts from an idle fleet: for its first simulated minutes or so new tasks take up to
twice their usual share of the events, and the early tasks run faster than planned, so that the
mix of events is about right from the first second.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import sys
import time
import uuid
from bisect import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeAlias

from connectors.errors import ConfigError
from connectors.kafka.events import Event, LlmCall, TaskEvent, Telemetry
from connectors.kafka.producer import DeliveryError, EventProducer
from connectors.pricing import PriceTable, load_prices

if TYPE_CHECKING:
    from connectors.settings import Settings

#: The platform's default fleet: agent type -> number of agents.
DEFAULT_FLEET: Mapping[str, int] = MappingProxyType(
    {"development": 10, "content": 5, "enterprise": 8, "research": 15}
)
#: Regions the agents run in, and the share of the fleet in each.
REGIONS: Mapping[str, float] = MappingProxyType({"us-east-1": 0.5, "eu-west-1": 0.3, "ap-southeast-1": 0.2})
#: Tenants the agents work for, and the share of the fleet each one has.
TENANTS: Mapping[str, float] = MappingProxyType({
    "tenant-acme": 0.35, "tenant-globex": 0.25, "tenant-initech": 0.2, "tenant-umbrella": 0.12,
    "tenant-hooli": 0.08,
})
#: Simulated events per second when no rate is given (or when sending is not paced).
DEFAULT_RATE = 100.0
#: Tasks one agent holds at most (queued and running): bounds the simulator's memory at high
#: rates (see the module docstring).
MAX_TASKS_PER_AGENT = 1_000
#: Telemetry cadence of each agent, in simulated seconds.
HEARTBEAT_S = 10.0
#: Telemetry is sent less often when it would be more than this share of the events.
MAX_TELEMETRY_SHARE = 0.1
#: Attempts of a task at most (the first run and its retries).
MAX_ATTEMPTS = 3

QUEUES = ("high_priority", "normal", "batch", "background")
# Mean queue waits: seconds on the interactive queues, minutes on the bulk ones.
_QUEUE_WAIT_MS = {"high_priority": 800.0, "normal": 5_000.0, "batch": 60_000.0, "background": 180_000.0}
# Share of failed attempts that are queued again (while attempts are left).
_RETRY_RATE = 0.6
# Share of completed tasks that get no quality evaluation.
_UNEVALUATED_RATE = 0.1
# Share of calls that time out for other reasons than their length (network, provider stalls).
_STRAY_TIMEOUT_RATE = 0.002
# Retries of one call after each failure status, then the attempt fails with that category.
_CALL_RETRIES = {"rate_limited": 4, "error": 2, "timeout": 1}
_FAILURE_CATEGORY = {"rate_limited": "rate_limited", "error": "llm_error", "timeout": "timeout"}
# Share of a task's calls that use its primary model; the rest use any model of the agent's mix.
_PRIMARY_MODEL_SHARE = 0.8
# Calls a task makes per successful call it needs (failed calls are retried); how far above their
# estimated steady-state share new tasks may go (room to fill an idle fleet within minutes); and
# how many new tasks may come back to back.
_CALLS_PER_SUCCESS = 1.15
_ARRIVAL_HEADROOM = 2.0
_ARRIVAL_BURST = 4.0

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Sigmas of the log-normal draws: token counts and queue waits spread widely, latencies less.
_TOKENS_SIGMA = 0.6
_WAIT_SIGMA = 0.8
_LATENCY_SIGMA = 0.35


@dataclass(frozen=True)
class AgentProfile:
    """How one type of agent works."""

    #: Share of the new tasks one agent of this type takes, relative to the others.
    heaviness: float
    #: (provider, model) -> weight of the model in the agent's calls.
    models: Mapping[tuple[str, str], float]
    #: Queue -> weight of the queue in the agent's tasks.
    queues: Mapping[str, float]
    #: Fewest and most successful LLM calls a task needs.
    calls_per_task: tuple[int, int]
    #: Mean billed prompt and completion tokens of a fresh call.
    input_tokens: float
    output_tokens: float
    #: Mean pause between two calls of a task (tool runs, parsing), in ms.
    think_ms: float
    #: Share of successful calls answered from the cache.
    cache_hit_rate: float
    #: Share of a prompt that is the task's repeated prefix (what the provider's prompt cache holds).
    prefix_share: float
    #: Share of attempts that fail for other reasons than their calls (invalid output, tool errors).
    failure_rate: float
    #: Share of attempts cancelled while running.
    cancel_rate: float
    #: CPU percent of an idle agent, resident memory after a restart, and its memory limit.
    cpu_base: float
    memory_base_mb: float
    memory_limit_mb: float
    #: Mean response time of an idle agent, in ms; it grows with the tasks the agent runs.
    response_ms: float


#: Agent type -> how it works; the fleet may only name these types.
PROFILES: Mapping[str, AgentProfile] = MappingProxyType({
    "development": AgentProfile(
        heaviness=1.0,
        models={("anthropic", "claude-3-sonnet"): 30, ("deepseek", "deepseek-coder"): 25,
                ("openai", "gpt-4-turbo"): 15, ("ollama", "codellama:34b"): 10,
                ("ollama", "qwen2.5-coder:32b"): 10, ("anthropic", "claude-3-haiku"): 5,
                ("groq", "mixtral-8x7b"): 5},
        queues={"high_priority": 15, "normal": 50, "batch": 25, "background": 10},
        calls_per_task=(3, 8), input_tokens=3_500, output_tokens=700, think_ms=2_500,
        prefix_share=0.7, cache_hit_rate=0.08, failure_rate=0.04, cancel_rate=0.015,
        cpu_base=30, memory_base_mb=2_048, memory_limit_mb=8_192, response_ms=400,
    ),
    "content": AgentProfile(
        heaviness=0.8,
        models={("openai", "gpt-4-turbo"): 25, ("anthropic", "claude-3-sonnet"): 25,
                ("anthropic", "claude-3-haiku"): 20, ("openai", "gpt-3.5-turbo"): 20,
                ("groq", "llama2-70b"): 10},
        queues={"high_priority": 10, "normal": 50, "batch": 30, "background": 10},
        calls_per_task=(2, 5), input_tokens=1_500, output_tokens=1_100, think_ms=800,
        prefix_share=0.4, cache_hit_rate=0.05, failure_rate=0.03, cancel_rate=0.02,
        cpu_base=20, memory_base_mb=1_024, memory_limit_mb=4_096, response_ms=300,
    ),
    "enterprise": AgentProfile(
        heaviness=1.6,
        models={("anthropic", "claude-3-opus"): 30, ("openai", "gpt-4"): 25,
                ("anthropic", "claude-3-sonnet"): 25, ("openai", "gpt-4-turbo"): 15,
                ("ollama", "mixtral:8x7b"): 5},
        queues={"high_priority": 40, "normal": 40, "batch": 15, "background": 5},
        calls_per_task=(4, 12), input_tokens=6_000, output_tokens=1_200, think_ms=1_500,
        prefix_share=0.75, cache_hit_rate=0.04, failure_rate=0.02, cancel_rate=0.01,
        cpu_base=40, memory_base_mb=4_096, memory_limit_mb=16_384, response_ms=600,
    ),
    "research": AgentProfile(
        heaviness=0.6,
        models={("groq", "mixtral-8x7b"): 25, ("deepseek", "deepseek-chat"): 25,
                ("anthropic", "claude-3-haiku"): 20, ("groq", "llama2-70b"): 15,
                ("openai", "gpt-3.5-turbo"): 10, ("ollama", "mixtral:8x7b"): 5},
        queues={"high_priority": 5, "normal": 35, "batch": 30, "background": 30},
        calls_per_task=(1, 4), input_tokens=2_000, output_tokens=300, think_ms=3_000,
        prefix_share=0.3, cache_hit_rate=0.15, failure_rate=0.05, cancel_rate=0.02,
        cpu_base=15, memory_base_mb=768, memory_limit_mb=4_096, response_ms=250,
    ),
})


@dataclass(frozen=True)
class _Provider:
    keys: int
    error_rate: float
    rate_limited_rate: float
    # Mean simulated seconds between rate-limit storms; None: the provider never limits us.
    storm_every_s: float | None
    timeout_ms: float


# Many keys per provider (DOMAIN.md: 10-20), named by alias only.
_PROVIDERS: dict[str, _Provider] = {
    "anthropic": _Provider(keys=16, error_rate=0.025, rate_limited_rate=0.008, storm_every_s=900, timeout_ms=90_000),
    "openai": _Provider(keys=20, error_rate=0.03, rate_limited_rate=0.008, storm_every_s=1_200, timeout_ms=90_000),
    "deepseek": _Provider(keys=10, error_rate=0.04, rate_limited_rate=0.004, storm_every_s=1_800, timeout_ms=90_000),
    "groq": _Provider(keys=12, error_rate=0.03, rate_limited_rate=0.015, storm_every_s=600, timeout_ms=30_000),
    "ollama": _Provider(keys=10, error_rate=0.015, rate_limited_rate=0.0, storm_every_s=None, timeout_ms=90_000),
}


@dataclass(frozen=True)
class _PromptCache:
    #: Shortest prompt the provider caches, in tokens.
    min_tokens: int
    #: Whether the provider bills (and reports) the tokens written to its cache.
    bills_writes: bool


# Providers' prompt caches: anthropic's explicit breakpoints (writes billed), openai's and
# deepseek's automatic ones (reads reported, writes free); groq and ollama cache nothing here.
_PROMPT_CACHES: dict[str, _PromptCache] = {
    "anthropic": _PromptCache(min_tokens=1_024, bills_writes=True),
    "openai": _PromptCache(min_tokens=1_024, bills_writes=False),
    "deepseek": _PromptCache(min_tokens=64, bills_writes=False),
}
# Chance that a cached prefix is gone by a task's next call to the model (TTL, eviction).
_PROMPT_CACHE_EVICTION = 0.1
# Share of calls rate limited during a storm, and how long storms last, in seconds.
_STORM_RATE_LIMITED = 0.6
_STORM_S = (20.0, 120.0)


@dataclass(frozen=True)
class _Model:
    first_token_ms: float
    ms_per_output_token: float
    #: Mean quality score of the results the model helps produce.
    quality: float


# groq serves hundreds of tokens/s, opus and gpt-4 a few dozen.
_MODELS: dict[tuple[str, str], _Model] = {
    ("anthropic", "claude-3-opus"): _Model(1_500, 25, 0.92),
    ("anthropic", "claude-3-sonnet"): _Model(700, 12, 0.86),
    ("anthropic", "claude-3-haiku"): _Model(300, 6, 0.76),
    ("openai", "gpt-4"): _Model(1_200, 28, 0.90),
    ("openai", "gpt-4-turbo"): _Model(900, 16, 0.88),
    ("openai", "gpt-3.5-turbo"): _Model(300, 7, 0.74),
    ("deepseek", "deepseek-coder"): _Model(800, 18, 0.80),
    ("deepseek", "deepseek-chat"): _Model(800, 18, 0.77),
    ("groq", "mixtral-8x7b"): _Model(80, 2, 0.72),
    ("groq", "llama2-70b"): _Model(100, 3, 0.70),
    ("ollama", "codellama:34b"): _Model(400, 30, 0.71),
    ("ollama", "mixtral:8x7b"): _Model(350, 22, 0.72),
    ("ollama", "qwen2.5-coder:32b"): _Model(400, 28, 0.79),
}


def parse_fleet(spec: str) -> dict[str, int]:
    """The fleet of a spec like ``development=2,research=3`` (agent type -> count, in that order).

    :raises ConfigError: the spec is malformed, names an unknown agent type or a type twice, has
        a count that is not a whole number >= 0, or no agent at all.
    """
    fleet: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, count = (piece.strip() for piece in part.partition("="))
        if not sep or not name:
            raise ConfigError(f"fleet {spec!r}: expected agent_type=count[,agent_type=count...], got {part.strip()!r}")
        if name in fleet:
            raise ConfigError(f"fleet {spec!r}: {name!r} is given twice")
        if not (count.isascii() and count.isdigit()):
            raise ConfigError(f"fleet {spec!r}: the count of {name!r} must be a whole number >= 0, got {count!r}")
        fleet[name] = int(count)
    _check_fleet(fleet)
    return fleet


def generate(
    seed: int,
    *,
    start_time: datetime,
    count: int | None = None,
    duration_s: float | None = None,
    rate: float = DEFAULT_RATE,
    fleet: Mapping[str, int] = DEFAULT_FLEET,
    prices: PriceTable | None = None,
) -> Iterator[Event]:
    """The simulated events, in event-time order: :class:`TaskEvent`, :class:`LlmCall`, :class:`Telemetry`.

    Deterministic: the same arguments give the same events, and a shorter run is a prefix of a
    longer one.

    :param start_time: event time of the first event (timezone-aware; cut to milliseconds).
    :param count: how many events; or ``duration_s``: how many simulated seconds at ``rate``.
        Neither: an endless stream.
    :param rate: simulated events per second; the clock advances ``1/rate`` s per event.
    :param fleet: agent type -> number of agents; the types of :data:`PROFILES`.
    :param prices: the price table costs come from; the latest by default.
    :raises ConfigError: a bad argument (the message names it), or a model the table does not price.
    """
    if count is not None and duration_s is not None:
        raise ConfigError("give count or duration_s, not both")
    if not rate > 0:
        raise ConfigError(f"rate must be > 0 events/s, got {rate}")
    if duration_s is not None:
        if duration_s < 0:
            raise ConfigError(f"duration_s must be >= 0, got {duration_s}")
        count = round(duration_s * rate)
    if count is not None and count < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    if start_time.tzinfo is None:
        raise ConfigError(f"start_time must be timezone-aware, got {start_time.isoformat()}")
    _check_fleet(fleet)
    prices = prices or PriceTable.load()
    for profile in PROFILES.values():
        for provider, model in profile.models:
            prices.price(provider, model)  # fail now, naming the model, not mid-stream
    start_ms = (start_time - _EPOCH) // timedelta(milliseconds=1)
    events = _Simulation(random.Random(seed), fleet, rate, start_ms, prices).events()
    return events if count is None else itertools.islice(events, count)


def _check_fleet(fleet: Mapping[str, int]) -> None:
    unknown = [name for name in fleet if name not in PROFILES]
    if unknown:
        raise ConfigError(f"fleet: unknown agent type(s) {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(PROFILES)}")
    negative = [name for name, count in fleet.items() if count < 0]
    if negative:
        raise ConfigError(f"fleet: the count of {', '.join(map(repr, negative))} must be >= 0")
    if sum(fleet.values()) == 0:
        raise ConfigError("fleet: no agents; give at least one agent type a count > 0")


class _Agent:
    __slots__ = ("agent_id", "agent_type", "tenant_id", "region", "profile", "model_keys", "model_cum",
                 "queue_cum", "in_mu", "out_mu", "leak_mb_per_ms", "restart_ms", "queued", "running", "errors")

    def __init__(self, rng: random.Random, agent_type: str, number: int) -> None:
        profile = PROFILES[agent_type]
        self.agent_id = f"{agent_type}-{number:02d}"
        self.agent_type = agent_type
        self.region = rng.choices(list(REGIONS), weights=list(REGIONS.values()))[0]
        self.tenant_id = rng.choices(list(TENANTS), weights=list(TENANTS.values()))[0]
        self.profile = profile
        self.model_keys = list(profile.models)
        self.model_cum = _normalised_cumulative(profile.models.values())
        self.queue_cum = _normalised_cumulative(profile.queues[q] for q in QUEUES)
        # Log-normal mu such that the mean is the profile's mean.
        self.in_mu = math.log(profile.input_tokens) - _TOKENS_SIGMA ** 2 / 2
        self.out_mu = math.log(profile.output_tokens) - _TOKENS_SIGMA ** 2 / 2
        self.leak_mb_per_ms = 0.0
        self.restart_ms = 0
        # Failed calls and attempts since the last heartbeat.
        self.errors = 0
        # Tasks of the agent now waiting in a queue, and running.
        self.queued = 0
        self.running = 0

    def pick_model(self, rng: random.Random) -> tuple[str, str]:
        return self.model_keys[bisect(self.model_cum, rng.random())]


class _Task:
    __slots__ = ("agent", "task_id", "trace_id", "queue", "attempt", "queued_ms", "started_ms",
                 "calls_needed", "calls_done", "cancel_after", "primary", "call", "call_failures",
                 "cost", "quality_sum", "outcome", "error_category", "cached")

    def __init__(self, agent: _Agent, task_id: str, trace_id: str, queue: str) -> None:
        self.agent = agent
        self.task_id = task_id
        self.trace_id = trace_id
        self.queue = queue
        self.attempt = 1
        self.queued_ms = 0
        self.started_ms = 0
        self.calls_needed = 0
        self.calls_done = 0
        self.cancel_after = 0
        self.primary: tuple[str, str] = ("", "")
        # The planned call: provider, model, key alias, input/output tokens, cost, latency, status,
        # cache hit, cache-read and cache-write tokens.
        self.call: tuple[str, str, str, int, int, float, float, str, bool, int, int] | None = None
        # The models whose provider's prompt cache holds this task's prefix.
        self.cached: set[tuple[str, str]] = set()
        self.call_failures = 0
        self.cost = 0.0
        self.quality_sum = 0.0
        self.outcome = "completed"
        self.error_category: str | None = None


class _Storm:
    """The current or next rate-limit storm of one provider, drawn lazily as simulated time passes."""

    __slots__ = ("every_ms", "start_ms", "end_ms")

    def __init__(self, every_s: float, start_ms: int) -> None:
        self.every_ms = every_s * 1000
        self.end_ms = start_ms
        self.start_ms = start_ms

    def active(self, at_ms: float, rng: random.Random) -> bool:
        while at_ms >= self.end_ms:
            self.start_ms = self.end_ms + rng.expovariate(1 / self.every_ms)
            self.end_ms = self.start_ms + rng.uniform(*_STORM_S) * 1000
        return at_ms >= self.start_ms


_Action: TypeAlias = Callable[[_Task, datetime], Event]


class _Simulation:
    """The simulated platform: its fleet, the tasks in flight and their next steps."""

    def __init__(
        self, rng: random.Random, fleet: Mapping[str, int], rate: float, start_ms: int, prices: PriceTable
    ) -> None:
        self.rng = rng
        # Prompt-cache draws: seeded from the simulation's generator without drawing from it.
        self.cache_rng = random.Random(",".join(map(str, rng.getstate()[1])))
        self.rate = rate
        self.start_ms = start_ms
        self.now = start_ms
        self.prices = prices
        self.agents = [_Agent(rng, agent_type, n)
                       for agent_type, count in fleet.items() for n in range(1, count + 1)]
        for agent in self.agents:
            # Up for a while already: a leak has had time to show.
            agent.restart_ms = start_ms - int(rng.uniform(0, 6 * 3_600_000))
        # One agent in six leaks 30-150 MB an hour: invisible in minutes, plain over hours.
        for agent in rng.sample(self.agents, round(len(self.agents) / 6)):
            agent.leak_mb_per_ms = rng.uniform(30, 150) / 3_600_000
        self.agent_cum = _normalised_cumulative(a.profile.heaviness for a in self.agents)
        self.cap = MAX_TASKS_PER_AGENT * len(self.agents)
        self.in_flight = 0
        self.storms = {name: _Storm(p.storm_every_s, start_ms)
                       for name, p in _PROVIDERS.items() if p.storm_every_s is not None}
        self.seq = itertools.count()
        self.tasks: list[tuple[int, int, _Action, _Task]] = []
        self.heartbeat_ms = max(HEARTBEAT_S * 1000, len(self.agents) / (MAX_TELEMETRY_SHARE * rate) * 1000)
        # Phases spread over one period, so the fleet does not report all at once.
        self.heartbeats = [(start_ms + int(rng.uniform(0, self.heartbeat_ms)), i, agent)
                           for i, agent in enumerate(self.agents)]
        heapq.heapify(self.heartbeats)
        # New tasks may take at most twice their steady-state share of the ticks. An idle fleet at
        # start would otherwise fill every tick with new tasks, the first seconds of a run all
        # "queued"; capped, the early tasks run faster instead and the mix is right at once.
        weights = [a.profile.heaviness for a in self.agents]
        events_per_task = sum(
            w * (3 + _CALLS_PER_SUCCESS * sum(a.profile.calls_per_task) / 2) for w, a in zip(weights, self.agents)
        ) / sum(weights)
        telemetry_share = 1000 * len(self.agents) / (self.heartbeat_ms * rate)
        self.arrival_share = _ARRIVAL_HEADROOM * (1 - telemetry_share) / events_per_task
        self.arrival_credit = 1.0

    def events(self) -> Iterator[Event]:
        tasks, heartbeats = self.tasks, self.heartbeats
        step_ms = 1000.0 / self.rate
        for tick in itertools.count():
            now = self.now = self.start_ms + int(tick * step_ms)
            at = _EPOCH + timedelta(milliseconds=now)
            self.arrival_credit = min(_ARRIVAL_BURST, self.arrival_credit + self.arrival_share)
            beat = heartbeats[0]
            if beat[0] <= now and (not tasks or beat[0] <= tasks[0][0]):
                # The next report is due a period after this one was, so lateness does not drift.
                heapq.heapreplace(heartbeats, (beat[0] + int(self.heartbeat_ms), beat[1], beat[2]))
                yield self._heartbeat(beat[2], at)
            elif tasks and (tasks[0][0] <= now or self.arrival_credit < 1 or self.in_flight >= self.cap):
                # Due, or no new task may come: the earliest step goes now, early if need be.
                _, _, action, task = heapq.heappop(tasks)
                yield action(task, at)
            else:
                self.arrival_credit -= 1
                yield self._arrive(at)

    def _schedule(self, task: _Task, delay_ms: float, action: _Action) -> None:
        heapq.heappush(self.tasks, (self.now + max(1, int(delay_ms)), next(self.seq), action, task))

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _arrive(self, at: datetime) -> TaskEvent:
        rng = self.rng
        agent = self.agents[bisect(self.agent_cum, rng.random())]
        task = _Task(agent, self._id(), f"{rng.getrandbits(128):032x}", QUEUES[bisect(agent.queue_cum, rng.random())])
        self.in_flight += 1
        return self._enqueue(task, at)

    def _requeue(self, task: _Task, at: datetime) -> TaskEvent:
        task.attempt += 1
        return self._enqueue(task, at)

    def _enqueue(self, task: _Task, at: datetime) -> TaskEvent:
        task.queued_ms = self.now
        task.agent.queued += 1
        mean = _QUEUE_WAIT_MS[task.queue]
        self._schedule(task, self.rng.lognormvariate(math.log(mean) - _WAIT_SIGMA ** 2 / 2, _WAIT_SIGMA), self._start)
        return self._task_event(task, at, "queued", None, None)

    def _start(self, task: _Task, at: datetime) -> TaskEvent:
        rng, agent = self.rng, task.agent
        profile = agent.profile
        agent.queued -= 1
        agent.running += 1
        task.started_ms = self.now
        task.calls_needed = rng.randint(*profile.calls_per_task)
        task.calls_done = 0
        task.call_failures = 0
        task.cost = 0.0
        task.quality_sum = 0.0
        task.cancel_after = rng.randint(1, task.calls_needed) if rng.random() < profile.cancel_rate else 0
        task.primary = agent.pick_model(rng)
        self._plan_call(task, rng.expovariate(1 / profile.think_ms))
        return self._task_event(task, at, "started", self.now - task.queued_ms, None)

    def _plan_call(self, task: _Task, delay_ms: float) -> None:
        """Draw the next call of ``task`` now; it is emitted when it ends, ``latency`` after it begins."""
        rng, agent = self.rng, task.agent
        provider, model = task.primary if rng.random() < _PRIMARY_MODEL_SHARE else agent.pick_model(rng)
        behaviour = _PROVIDERS[provider]
        storm = self.storms.get(provider)
        rate_limited = (_STORM_RATE_LIMITED if storm is not None and storm.active(self.now + delay_ms, rng)
                        else behaviour.rate_limited_rate)
        input_tokens = output_tokens = cache_read = cache_write = 0
        cost = 0.0
        cache_hit = False
        draw = rng.random()
        if draw < rate_limited:
            status, latency = "rate_limited", rng.uniform(30, 400)
        elif draw < rate_limited + behaviour.error_rate:
            status, latency = "error", rng.uniform(100, 3_000)
        elif rng.random() < agent.profile.cache_hit_rate:
            status, latency, cache_hit = "ok", rng.uniform(5, 60), True
        else:
            spec = _MODELS[provider, model]
            output = min(4_096, max(5, int(rng.lognormvariate(agent.out_mu, _TOKENS_SIGMA))))
            latency = (spec.first_token_ms * rng.lognormvariate(0, _LATENCY_SIGMA)
                       + output * spec.ms_per_output_token * rng.lognormvariate(0, _LATENCY_SIGMA / 2))
            if latency > behaviour.timeout_ms or rng.random() < _STRAY_TIMEOUT_RATE:
                status, latency = "timeout", behaviour.timeout_ms
            else:
                status = "ok"
                input_tokens = min(100_000, max(30, int(rng.lognormvariate(agent.in_mu, _TOKENS_SIGMA))))
                output_tokens = output
                cache_read, cache_write = self._prompt_cache(task, provider, model, input_tokens)
                cost = self.prices.cost(provider, model, input_tokens, output_tokens,
                                        cache_read_tokens=cache_read, cache_write_tokens=cache_write)
        alias = f"{provider}-key-{rng.randint(1, behaviour.keys):02d}"
        task.call = (provider, model, alias, input_tokens, output_tokens, cost, round(latency, 1), status, cache_hit,
                     cache_read, cache_write)
        self._schedule(task, delay_ms + latency, self._called)

    def _prompt_cache(self, task: _Task, provider: str, model: str, input_tokens: int) -> tuple[int, int]:
        """The cache-read and cache-write tokens of a fresh call of ``task`` to ``model``."""
        cache = _PROMPT_CACHES.get(provider)
        prefix = int(input_tokens * task.agent.profile.prefix_share)
        if cache is None or prefix < cache.min_tokens:
            return 0, 0
        if (provider, model) in task.cached and self.cache_rng.random() >= _PROMPT_CACHE_EVICTION:
            return prefix, 0
        task.cached.add((provider, model))
        return 0, prefix if cache.bills_writes else 0

    def _called(self, task: _Task, at: datetime) -> LlmCall:
        rng, agent = self.rng, task.agent
        assert task.call is not None
        (provider, model, alias, input_tokens, output_tokens, cost, latency, status, cache_hit,
         cache_read, cache_write) = task.call
        task.cost += cost
        event = LlmCall(
            event_id=self._id(), event_time=at, agent_id=agent.agent_id, agent_type=agent.agent_type,
            tenant_id=agent.tenant_id, trace_id=task.trace_id, call_id=self._id(), task_id=task.task_id,
            provider=provider, model=model, api_key_alias=alias,  # type: ignore[arg-type]
            input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost,
            price_version=self.prices.version, latency_ms=latency, status=status,  # type: ignore[arg-type]
            cache_hit=cache_hit, region=agent.region,
            cache_read_tokens=cache_read, cache_write_tokens=cache_write,
        )
        if status == "ok":
            task.call_failures = 0
            task.calls_done += 1
            task.quality_sum += _MODELS[provider, model].quality
            if task.calls_done == task.cancel_after:
                self._end(task, "cancelled", None)
            elif task.calls_done == task.calls_needed:
                if rng.random() < agent.profile.failure_rate:
                    self._end(task, "failed", rng.choice(("invalid_output", "tool_error")))
                else:
                    self._end(task, "completed", None)
            else:
                self._plan_call(task, rng.expovariate(1 / agent.profile.think_ms))
            return event
        agent.errors += 1
        task.call_failures += 1
        if task.call_failures > _CALL_RETRIES[status]:
            self._end(task, "failed", _FAILURE_CATEGORY[status])
        elif status == "rate_limited":
            self._plan_call(task, 1_000 * 2 ** task.call_failures * rng.uniform(0.5, 1.5))
        else:
            self._plan_call(task, rng.uniform(200, 2_000))
        return event

    def _end(self, task: _Task, outcome: str, error_category: str | None) -> None:
        task.outcome = outcome
        task.error_category = error_category
        self._schedule(task, self.rng.uniform(20, 2_000), self._finish)

    def _finish(self, task: _Task, at: datetime) -> TaskEvent:
        rng, agent = self.rng, task.agent
        agent.running -= 1
        quality = None
        if task.outcome == "completed" and rng.random() >= _UNEVALUATED_RATE:
            mean = task.quality_sum / task.calls_done
            quality = round(min(1.0, max(0.0, rng.gauss(mean, 0.05))), 3)
        event = self._task_event(task, at, task.outcome, task.started_ms - task.queued_ms, quality)
        if task.outcome == "failed":
            agent.errors += 1
            if task.attempt < MAX_ATTEMPTS and rng.random() < _RETRY_RATE:
                self._schedule(task, rng.uniform(1_000, 20_000), self._requeue)
                return event
        self.in_flight -= 1
        return event

    def _task_event(
        self, task: _Task, at: datetime, status: str, queue_wait_ms: int | None, quality: float | None
    ) -> TaskEvent:
        agent = task.agent
        ended = status in ("completed", "failed", "cancelled")
        return TaskEvent(
            event_id=self._id(), event_time=at, agent_id=agent.agent_id, agent_type=agent.agent_type,
            tenant_id=agent.tenant_id, trace_id=task.trace_id, task_id=task.task_id,
            status=status, queue=task.queue, attempt=task.attempt,  # type: ignore[arg-type]
            queue_wait_ms=queue_wait_ms, duration_ms=self.now - task.started_ms if ended else None,
            quality_score=quality, cost_usd=task.cost if ended else 0.0, price_version=self.prices.version,
            error_category=task.error_category if status == "failed" else None, region=agent.region,
        )

    def _heartbeat(self, agent: _Agent, at: datetime) -> Telemetry:
        rng, profile = self.rng, agent.profile
        # Busy agents use more CPU, saturating rather than growing without bound.
        cpu = profile.cpu_base + 45 * (1 - math.exp(-agent.running / 6)) + rng.gauss(0, 4)
        memory = (profile.memory_base_mb + agent.leak_mb_per_ms * (self.now - agent.restart_ms)
                  + 15 * agent.running + rng.gauss(0, 24))
        if memory > 0.95 * profile.memory_limit_mb:
            # Killed at its limit and restarted: memory falls back and the leak starts over.
            agent.restart_ms = self.now
            memory = profile.memory_base_mb + rng.gauss(0, 24)
        # Each running task slows the agent's answers down a little: overload shows as latency.
        response = profile.response_ms * (1 + agent.running / 10) * rng.lognormvariate(0, 0.25)
        event = Telemetry(
            event_id=self._id(), event_time=at, agent_id=agent.agent_id, agent_type=agent.agent_type,
            tenant_id=agent.tenant_id, trace_id=f"{rng.getrandbits(128):032x}",
            cpu_percent=round(min(100.0, max(0.5, cpu)), 1),
            memory_percent=round(min(100.0, max(0.0, 100 * memory / profile.memory_limit_mb)), 1),
            memory_mb=round(max(0.0, memory), 1), response_time_ms=round(max(1.0, response), 1),
            error_count=agent.errors, queue_depth=agent.queued, region=agent.region,
        )
        agent.errors = 0
        return event


def _normalised_cumulative(weights: Iterable[float]) -> list[float]:
    values = list(weights)
    total = sum(values)
    cumulative = list(itertools.accumulate(v / total for v in values))
    # Float sums may end just under 1, where bisect of a draw close to 1 would run off the end.
    cumulative[-1] = 1.0
    return cumulative


# --- sending ---------------------------------------------------------------------------------


class TokenBucket:
    """Paces work at ``rate`` per second, allowing bursts of at most ``burst``.

    The allowance refills from the monotonic clock, not from how long a wait lasted, so slow
    sends and oversleeping do not pull the long-run rate below ``rate`` (as a sleep per message
    would); and it caps at ``burst``, so a stall is not followed by an unbounded catch-up flood.

    :param wait: called with the seconds to wait for the next token; it may return early.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = rate
        #: Most tokens that build up: 50 ms worth of work by default.
        self.burst = burst if burst is not None else max(1.0, rate / 20)
        self._clock = clock
        self._wait = wait
        self._tokens = 1.0
        self._last = clock()

    def take(self) -> None:
        """Take one token, waiting until one is there."""
        while self._tokens < 1:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1:
                self._wait((1 - self._tokens) / self.rate)
        self._tokens -= 1


@dataclass(frozen=True)
class TopicCounts:
    """Messages of one topic: sent to the producer, acknowledged by the broker, and refused."""

    sent: int
    delivered: int
    failed: int


@dataclass(frozen=True)
class SimulationReport:
    """What a :func:`run_simulation` sent and what the broker acknowledged."""

    seed: int
    #: Events per second the sending was paced at; ``None``: as fast as possible.
    rate: float | None
    fleet: Mapping[str, int]
    #: Event time of the first event.
    start_time: datetime
    price_version: str
    #: Wall-clock seconds from the first send to the end of the final flush.
    elapsed_s: float
    #: Topic on the broker -> counts.
    topics: Mapping[str, TopicCounts]
    #: Why the final flush failed (messages refused or unacknowledged); ``None`` when all were delivered.
    error: str | None = None

    @property
    def sent(self) -> int:
        """Messages sent over all topics."""
        return sum(c.sent for c in self.topics.values())

    @property
    def delivered(self) -> int:
        """Messages the broker acknowledged over all topics."""
        return sum(c.delivered for c in self.topics.values())

    @property
    def failed(self) -> int:
        """Messages the broker refused over all topics."""
        return sum(c.failed for c in self.topics.values())

    @property
    def ok(self) -> bool:
        """Every message sent was delivered."""
        return self.error is None and self.delivered == self.sent


@dataclass(frozen=True)
class Progress:
    """The state of a running simulation, as reported to a progress callback."""

    sent: int
    delivered: int
    #: Events the run sends in all; ``None`` when unpaced (it then runs for ``duration_s``).
    total: int | None
    elapsed_s: float
    duration_s: float


def run_simulation(
    settings: Settings,
    *,
    rate: float | None,
    duration_s: float,
    seed: int,
    fleet: Mapping[str, int] | None = None,
    start_time: datetime | None = None,
    progress: bool | Callable[[Progress], None] = True,
) -> SimulationReport:
    """Send simulated traffic to the event topics and report what the broker acknowledged.

    With a ``rate``, sends exactly ``rate * duration_s`` events of :func:`generate` (so the
    same seed and start time send the same events), paced at ``rate`` events/s; the simulated
    clock keeps pace with the wall clock. With ``rate`` 0 or ``None``, sends as fast as the
    producer takes them for ``duration_s`` wall-clock seconds, with event times
    :data:`DEFAULT_RATE` events per simulated second apart.

    :param start_time: event time of the first event; now by default.
    :param progress: ``True``: a progress line on stderr when it is a terminal; a callable: called
        with a :class:`Progress` about five times a second and once at the end; ``False``: nothing.
    :raises ConfigError: a bad argument or setting.
    """
    if not duration_s > 0:
        raise ConfigError(f"duration_s must be > 0, got {duration_s}")
    if rate is not None and rate < 0:
        raise ConfigError(f"rate must be >= 0 events/s (0: as fast as possible), got {rate}")
    fleet = dict(fleet or DEFAULT_FLEET)
    # Cut to milliseconds, as event times are, so the report shows the first event's time.
    start_time = start_time or datetime.now(timezone.utc)
    start_time = start_time.replace(microsecond=start_time.microsecond // 1000 * 1000)
    prices = load_prices(settings)  # EZ_PRICES_FILE overrides win
    total = round(rate * duration_s) if rate else None
    events = generate(seed, start_time=start_time, count=total, rate=rate or DEFAULT_RATE, fleet=fleet,
                      prices=prices)
    show = _progress_callback(progress)
    producer = EventProducer(settings)
    bucket = TokenBucket(rate, wait=producer.poll) if rate else None
    sent: Counter[str] = Counter()
    started = time.monotonic()
    next_show = started
    error = None
    try:
        for event in events:
            if bucket is not None:
                bucket.take()
            producer.send(event)
            sent[producer.topic_for(event.EVENT)] += 1
            now = time.monotonic()
            if bucket is None and now - started >= duration_s:
                break
            if show is not None and now >= next_show:
                show(Progress(sum(sent.values()), sum(producer.delivered.values()), total, now - started, duration_s))
                next_show = now + 0.2
    finally:
        try:
            producer.flush()
        except DeliveryError as exc:
            error = str(exc)
        elapsed = time.monotonic() - started
        if show is not None:
            show(Progress(sum(sent.values()), sum(producer.delivered.values()), total, elapsed, duration_s))
            if show is _draw_bar:
                sys.stderr.write("\n")
    topics = sorted(set(sent) | set(producer.delivered) | set(producer.failed))
    return SimulationReport(
        seed=seed, rate=rate or None, fleet=fleet, start_time=start_time, price_version=prices.version,
        elapsed_s=elapsed, error=error,
        topics={t: TopicCounts(sent[t], producer.delivered[t], producer.failed[t]) for t in topics},
    )


def _progress_callback(progress: bool | Callable[[Progress], None]) -> Callable[[Progress], None] | None:
    if callable(progress):
        return progress
    if progress and sys.stderr.isatty():
        return _draw_bar
    return None


def _draw_bar(p: Progress) -> None:
    done = min(1.0, p.sent / p.total if p.total else p.elapsed_s / p.duration_s)
    width = 30
    filled = int(done * width)
    speed = p.sent / p.elapsed_s if p.elapsed_s > 0 else 0.0
    # \r rewrites the line in place; \x1b[K clears what a longer earlier line left behind.
    sys.stderr.write(
        f"\rsimulate [{'#' * filled}{'.' * (width - filled)}] {done:4.0%}  {p.sent:,} sent  "
        f"{p.delivered:,} delivered  {speed:,.0f}/s  {p.elapsed_s:.1f} s\x1b[K"
    )
    sys.stderr.flush()


def format_report(report: SimulationReport) -> str:
    """The report as a small table: one row per topic, a total, and a summary line."""
    rows = [(topic, c.sent, c.delivered, c.failed) for topic, c in report.topics.items()]
    rows.append(("total", report.sent, report.delivered, report.failed))
    width = max(len("topic"), *(len(row[0]) for row in rows))
    lines = [f"{'topic':<{width}}  {'sent':>10}  {'delivered':>10}  {'failed':>8}"]
    lines += [f"{name:<{width}}  {s:>10,}  {d:>10,}  {f:>8,}" for name, s, d, f in rows]
    speed = report.sent / report.elapsed_s if report.elapsed_s > 0 else 0.0
    fleet = ",".join(f"{name}={count}" for name, count in report.fleet.items())
    pacing = f"paced at {report.rate:,.0f}/s" if report.rate else "unpaced"
    lines.append(
        f"{report.sent:,} events in {report.elapsed_s:.2f} s ({speed:,.0f}/s, {pacing}); seed {report.seed}, "
        f"fleet {fleet}, prices {report.price_version}, first event at {report.start_time.isoformat()}"
    )
    if report.error:
        lines.append(f"error: {report.error}")
    return "\n".join(lines)
