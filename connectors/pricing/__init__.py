"""Versioned LLM price tables: what a call costs, and which table said so.

Prices change, so cost is computed from a table kept in the repository, one JSON file per
version under ``price_tables/``; the version is the file's stem, the date the prices took
effect (``2026-11-01``). A new price list is a new file, never an edit: every event records the
``price_version`` its ``cost_usd`` was computed with, and costs are only comparable within one.

A file holds ``prices`` rows (provider, model, USD per 1,000 input and per 1,000 output tokens)
and optional ``limits_per_key`` rows (requests and tokens per minute allowed for one API key).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.errors import ConfigError

#: Folder of the price table files (package data).
PRICE_TABLES_DIR = Path(__file__).resolve().parent / "price_tables"

# ISO dates sort as text in time order, which is what makes "latest" the last stem.
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")


class UnknownModel(ConfigError, LookupError):
    """The price table has no row for a provider/model; the message names both and the version."""


class ModelPrice(BaseModel):
    """The price of one model, in USD per 1,000 tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1, description="Provider as events name it, e.g. anthropic.")
    model: str = Field(min_length=1, description="Model as the provider names it, e.g. claude-3-haiku.")
    input_usd_per_1k: float = Field(ge=0, description="USD per 1,000 prompt tokens.")
    output_usd_per_1k: float = Field(ge=0, description="USD per 1,000 completion tokens.")


class KeyLimits(BaseModel):
    """What one API key of a provider may use per minute; ``None`` where the provider states none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1, description="Provider the limits apply to.")
    requests_per_min: int | None = Field(default=None, gt=0, description="Requests per minute per key.")
    tokens_per_min: int | None = Field(default=None, gt=0, description="Tokens per minute per key.")


class _PriceFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = ""
    prices: list[ModelPrice] = Field(min_length=1)
    limits_per_key: list[KeyLimits] = []


class PriceTable:
    """One version of the price table; build it with :meth:`load`."""

    def __init__(self, version: str, prices: list[ModelPrice], limits: list[KeyLimits]) -> None:
        #: The table's version (its file stem), recorded in each event as ``price_version``.
        self.version = version
        self._prices: dict[str, dict[str, ModelPrice]] = {}
        for row in prices:
            models = self._prices.setdefault(row.provider, {})
            if row.model in models:
                raise ConfigError(f"price table {version}: {row.provider}/{row.model} is listed twice")
            models[row.model] = row
        self._limits: dict[str, KeyLimits] = {}
        for row in limits:
            if row.provider in self._limits:
                raise ConfigError(f"price table {version}: limits of {row.provider} are listed twice")
            self._limits[row.provider] = row

    @classmethod
    def load(cls, version: str | None = None) -> PriceTable:
        """The table of ``version``, the latest one by default; loaded once, then shared.

        :raises ConfigError: no such version (the message lists the known ones), or its file is bad.
        """
        versions = available_versions()
        if version is None:
            if not versions:
                raise ConfigError(f"no price table in {PRICE_TABLES_DIR}")
            version = versions[-1]
        elif version not in versions:
            raise ConfigError(f"no price table {version!r}; known versions: {', '.join(versions) or 'none'}")
        return _load(version)

    def providers(self) -> list[str]:
        """The providers the table prices, sorted."""
        return sorted(self._prices)

    def models(self, provider: str) -> list[str]:
        """The models of ``provider`` the table prices, sorted.

        :raises UnknownModel: the table does not know ``provider``.
        """
        return sorted(self._models(provider))

    def price(self, provider: str, model: str) -> ModelPrice:
        """The price row of ``provider``/``model``.

        :raises UnknownModel: the table has no such row (the message names provider, model and version).
        """
        models = self._models(provider)
        try:
            return models[model]
        except KeyError:
            raise UnknownModel(
                f"no price for {provider}/{model} in price table {self.version} "
                f"({provider} models: {', '.join(sorted(models))})"
            ) from None

    def cost(self, provider: str, model: str, input_tokens: int, output_tokens: int) -> float:
        """USD cost of a call of ``provider``/``model`` that billed these tokens.

        :raises UnknownModel: the table has no price for the model.
        :raises ValueError: a token count is negative.
        """
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError(f"token counts must not be negative: input {input_tokens}, output {output_tokens}")
        row = self.price(provider, model)
        return (input_tokens * row.input_usd_per_1k + output_tokens * row.output_usd_per_1k) / 1000

    def limits(self, provider: str) -> KeyLimits | None:
        """Per-key limits of ``provider``, or ``None`` where the table states none."""
        return self._limits.get(provider)

    def __repr__(self) -> str:
        return f"PriceTable({self.version!r})"

    def _models(self, provider: str) -> dict[str, ModelPrice]:
        try:
            return self._prices[provider]
        except KeyError:
            raise UnknownModel(
                f"no provider {provider!r} in price table {self.version} "
                f"(known: {', '.join(self.providers())})"
            ) from None


def available_versions() -> list[str]:
    """The versions of the price tables in the repository, oldest first.

    :raises ConfigError: a file in the folder is not named ``YYYY-MM-DD.json``.
    """
    versions = []
    for path in PRICE_TABLES_DIR.glob("*.json"):
        if not _VERSION.fullmatch(path.stem):
            raise ConfigError(f"{path}: a price table file must be named after its version, YYYY-MM-DD.json")
        versions.append(path.stem)
    return sorted(versions)


@cache
def _load(version: str) -> PriceTable:
    path = PRICE_TABLES_DIR / f"{version}.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the price table: {exc}") from None
    try:
        content = _PriceFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: not a valid price table: {_describe(exc)}") from None
    return PriceTable(version, content.prices, content.limits_per_key)


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
        for error in exc.errors(include_url=False)
    )
