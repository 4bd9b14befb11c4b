"""The rows of a price table: what one model costs per kind of token, and the names it answers to.

Prices are USD per 1,000,000 tokens (``*_usd_per_mtok``), the unit providers publish and the
maintained source (``genai-prices``) keeps. Five kinds of token, as the OpenTelemetry GenAI
conventions count them (``gen_ai.usage.*``):

- input: prompt tokens read fresh;
- cache read: prompt tokens served from the provider's prompt cache (usually a fraction of input);
- cache write: prompt tokens written to the cache (Anthropic: 1.25 x input for the 5-minute cache);
- output: completion tokens;
- reasoning: completion tokens spent thinking.

Where a provider has no separate price, a row may leave one out when it is written (overrides, old
tables): cache reads and writes are then billed as input tokens and reasoning as output tokens,
which is what providers without caching or a reasoning price charge. A loaded row always carries
all five.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The unit of every price in a table, as the table files state it.
UNIT = "USD per 1,000,000 tokens"

#: Clause kinds of a row's ``match`` (the source's model-matching logic, kept as data).
_TEXT_CLAUSES = ("equals", "starts_with", "ends_with", "contains", "regex")
_LIST_CLAUSES = ("or", "and")


def _fill_defaults(data: Any) -> Any:
    """Cache tokens default to the input price, reasoning tokens to the output price."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for key, default in (("cache_read_usd_per_mtok", "input_usd_per_mtok"),
                         ("cache_write_usd_per_mtok", "input_usd_per_mtok"),
                         ("reasoning_usd_per_mtok", "output_usd_per_mtok")):
        if data.get(key) is None and default in data:
            price = data[default]
            # A bad price is reported once, under its own name, not again under the ones it fills.
            valid = isinstance(price, (int, float)) and not isinstance(price, bool) and price >= 0
            data[key] = price if valid else 0
    return data


class Rates(BaseModel):
    """USD per 1,000,000 tokens of each kind of token."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_usd_per_mtok: float = Field(ge=0, description="Prompt tokens read fresh.")
    output_usd_per_mtok: float = Field(ge=0, description="Completion tokens other than reasoning.")
    cache_read_usd_per_mtok: float = Field(ge=0, description="Prompt tokens read from the prompt cache.")
    cache_write_usd_per_mtok: float = Field(ge=0, description="Prompt tokens written to the prompt cache.")
    reasoning_usd_per_mtok: float = Field(ge=0, description="Completion tokens spent reasoning.")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        return _fill_defaults(data)


class PriceTier(Rates):
    """The rates of a long-context tier: they apply to a whole call whose input is above the threshold."""

    above_input_tokens: int = Field(gt=0, description="The tier applies when input_tokens > this.")


class ModelPrice(Rates):
    """The price of one model of one provider, with its long-context tiers and where it comes from.

    A call whose ``input_tokens`` (all prompt tokens, cached ones included) is above a tier's
    ``above_input_tokens`` pays that tier's rates on all its tokens, the highest such tier winning
    (the "cliff" model Anthropic, Google and OpenAI bill by).
    """

    provider: str = Field(min_length=1, description="Provider as the table names it, e.g. anthropic, google.")
    model: str = Field(min_length=1, description="The model's canonical name, e.g. claude-3-haiku.")
    tiers: tuple[PriceTier, ...] = Field(default=(), description="Long-context tiers, by threshold.")
    match: dict[str, Any] | None = Field(
        default=None,
        description="Other names of the model (aliases, dated snapshots) as the source matches them: "
        "{equals|starts_with|ends_with|contains|regex: text} or {or|and: [clauses]}, on the lower-cased name.",
    )
    source: str = Field(default="", description="Where the price comes from.")

    @field_validator("tiers")
    @classmethod
    def _check_tiers(cls, tiers: tuple[PriceTier, ...]) -> tuple[PriceTier, ...]:
        thresholds = [tier.above_input_tokens for tier in tiers]
        if thresholds != sorted(set(thresholds)):
            raise ValueError(f"tier thresholds must rise, without repeats: {thresholds}")
        return tiers

    @field_validator("match")
    @classmethod
    def _check_match(cls, match: dict[str, Any] | None) -> dict[str, Any] | None:
        if match is not None:
            _check_clause(match)
        return match

    def rates(self, input_tokens: int) -> Rates:
        """The rates a call with ``input_tokens`` prompt tokens pays: the base or its highest tier."""
        chosen: Rates = self
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                chosen = tier
        return chosen

    def matches(self, name: str) -> bool:
        """Whether ``name`` (lower-cased) is one of this model's other names under :attr:`match`."""
        return self.match is not None and _matches(self.match, name)


def _check_clause(clause: Any) -> None:
    if not isinstance(clause, dict) or len(clause) != 1:
        raise ValueError(f"a match clause is one of {_TEXT_CLAUSES + _LIST_CLAUSES} with its value, got {clause!r}")
    ((kind, value),) = clause.items()
    if kind in _TEXT_CLAUSES and isinstance(value, str):
        if kind == "regex":
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regex {value!r}: {exc}") from None
        return
    if kind in _LIST_CLAUSES and isinstance(value, list) and value:
        for part in value:
            _check_clause(part)
        return
    raise ValueError(f"a match clause is one of {_TEXT_CLAUSES + _LIST_CLAUSES} with its value, got {clause!r}")


def _matches(clause: dict[str, Any], name: str) -> bool:
    ((kind, value),) = clause.items()
    if kind == "equals":
        return name == value.lower()
    if kind == "starts_with":
        return name.startswith(value.lower())
    if kind == "ends_with":
        return name.endswith(value.lower())
    if kind == "contains":
        return value.lower() in name
    if kind == "regex":
        return _regex(value).search(name) is not None
    if kind == "or":
        return any(_matches(part, name) for part in value)
    return all(_matches(part, name) for part in value)


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


class KeyLimits(BaseModel):
    """What one API key of a provider may use per minute; ``None`` where the provider states none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1, description="Provider the limits apply to.")
    requests_per_min: int | None = Field(default=None, gt=0, description="Requests per minute per key.")
    tokens_per_min: int | None = Field(default=None, gt=0, description="Tokens per minute per key.")
