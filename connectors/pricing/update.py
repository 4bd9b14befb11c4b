"""Make a new price table version from the maintained source and the supplement.

The source is the ``genai-prices`` package (pinned in pyproject.toml): its wheel carries the data
as a generated Python module, ``genai_prices/data.py`` (dataclasses, no plain data file), which
this module reads as data; it does not call the package's price calculation. From it, for the
providers in :data:`SOURCE_PROVIDERS`, every model with a token price becomes a row:

- the standard price as of 12:00 UTC on the version's date: prices that start later are not yet
  in force, and DeepSeek's off-peak discount (16:30-00:30 UTC) is left out;
- input, output, cache read (``cache_read_mtok``), cache write (``cache_write_mtok``, Anthropic's
  5-minute cache; the 1-hour cache price is left out) and reasoning (``output_reasoning_mtok``
  where the source has one, the output price otherwise); a missing cache price is the input price;
- tiers: every threshold of any of those prices, each with the rates a call just above it pays;
- ``match``: the source's rules for the model's other names; rows keep the source's order, which
  is the order they are tried in;
- batch, flex and priority service tiers, audio, image, search and per-request prices are left out.

``supplement.json`` adds what the source lacks, each row with its origin: the names our events and
the plan use for models the source lists under another name (``same_as``), and the self-hosted
ollama models at 0. It also holds the per-key limits of the plan.

The output is deterministic: providers sorted, rows in the source's order then the supplement's,
each row's keys in one order, one row a line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

from connectors.errors import ConfigError
from connectors.pricing import PRICE_TABLES_DIR, PriceTable, _VERSION, _read_table
from connectors.pricing.model import UNIT, ModelPrice

#: The source's providers the table takes: those our events name, and those an OpenTelemetry-
#: instrumented app meets besides (events name them ``other``).
SOURCE_PROVIDERS = ("anthropic", "cohere", "deepseek", "google", "groq", "mistral", "openai", "perplexity", "x-ai")
SOURCE_PACKAGE = "genai-prices"
SUPPLEMENT = Path(__file__).resolve().parent / "supplement.json"

# Our price kinds and the source's price keys.
_KINDS = {
    "input_usd_per_mtok": "input_mtok",
    "output_usd_per_mtok": "output_mtok",
    "cache_read_usd_per_mtok": "cache_read_mtok",
    "cache_write_usd_per_mtok": "cache_write_mtok",
    "reasoning_usd_per_mtok": "output_reasoning_mtok",
}
_CLAUSES = {"ClauseEquals": "equals", "ClauseStartsWith": "starts_with", "ClauseEndsWith": "ends_with",
            "ClauseContains": "contains", "ClauseRegex": "regex", "ClauseOr": "or", "ClauseAnd": "and"}


@dataclass
class Update:
    """What ``prices update`` did: the new version (or ``None``), the one it compares with, the changes."""

    version: str
    previous: str | None
    written: Path | None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def report(self) -> str:
        """The changes, for people: a summary line, then added and removed models per provider, then each change."""
        since = f" since {self.previous}" if self.previous else ""
        if self.written is None:
            return f"prices: no change{since}; nothing written (latest: {self.previous})"
        lines = [f"prices: wrote {self.written} (version {self.version}): {len(self.added)} added, "
                 f"{len(self.removed)} removed, {len(self.changed)} changed{since}"]
        for sign, names in (("+", self.added), ("-", self.removed)):
            by_provider: dict[str, list[str]] = {}
            for name in names:
                provider, _, model = name.partition("/")
                by_provider.setdefault(provider, []).append(model)
            lines += [f"{sign} {provider}: {', '.join(models)}" for provider, models in sorted(by_provider.items())]
        lines += [f"~ {change}" for change in self.changed]
        return "\n".join(lines)


def build(version: str) -> dict[str, Any]:
    """The price table document of ``version`` (a ``YYYY-MM-DD`` date) from the installed source and the supplement.

    :raises ConfigError: the source is not installed, or the supplement is bad or clashes with it.
    """
    if not _VERSION.fullmatch(version):
        raise ConfigError(f"a price table version is a date, YYYY-MM-DD, got {version!r}")
    try:
        from genai_prices.data import providers
    except ImportError:
        raise ConfigError(f"{SOURCE_PACKAGE} is not installed: pip install -e '.[stream]'") from None
    when = datetime.combine(date.fromisoformat(version), time(12, 0), timezone.utc)
    source = f"{SOURCE_PACKAGE} {metadata.version(SOURCE_PACKAGE)}"
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for provider in sorted(providers, key=lambda p: p.id):
        if provider.id in SOURCE_PROVIDERS:
            rows = [_row(provider.id, model, when, source) for model in provider.models]
            by_provider[provider.id] = [row for row in rows if row is not None]
    supplement = _read_supplement()
    for extra in supplement["prices"]:
        rows = by_provider.setdefault(extra["provider"], [])
        if any(row["model"] == extra["model"] for row in rows):
            raise ConfigError(f"{SUPPLEMENT}: {extra['provider']}/{extra['model']} is in the source already")
        rows.append(_supplement_row(extra, rows, source))
    prices = [row for provider in sorted(by_provider) for row in by_provider[provider]]
    for row in prices:
        ModelPrice.model_validate(row)
    return {
        "description": f"Generated by `ezstream prices update` from {source} and connectors/pricing/supplement.json "
                       "(see connectors/pricing/update.py). Prices in USD per 1,000,000 tokens; a tier's rates apply "
                       "to a whole call whose input_tokens is above its threshold.",
        "unit": UNIT,
        "source": {"package": source, "supplement": "connectors/pricing/supplement.json"},
        "prices": prices,
        "limits_per_key": supplement["limits_per_key"],
    }


def render(document: dict[str, Any]) -> str:
    """The document as file text: one row a line, its keys in :data:`_ROW_KEYS` order, so versions diff by line."""
    def rows(name: str) -> str:
        return ",\n".join(f"    {json.dumps(_ordered(row))}" for row in document[name])

    head = {key: document[key] for key in ("description", "unit", "source")}
    lines = ["{"] + [f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}," for key, value in head.items()]
    lines += ['  "prices": [', rows("prices"), "  ],", '  "limits_per_key": [', rows("limits_per_key"), "  ]", "}"]
    return "\n".join(lines) + "\n"


def update(version: str, folder: Path = PRICE_TABLES_DIR) -> Update:
    """Write ``folder/<version>.json`` from the source and the supplement, unless the latest table there is the same.

    :raises ConfigError: ``<version>.json`` exists with other content (a version is never edited),
        or :func:`build` fails.
    """
    text = render(build(version))
    target = folder / f"{version}.json"
    if target.exists():
        if target.read_text() == text:
            return Update(version, version, None)
        raise ConfigError(f"{target} exists with other prices; a version is never edited: give another --date")
    versions = sorted(path.stem for path in folder.glob("*.json") if _VERSION.fullmatch(path.stem))
    new = _read_table(version, json.loads(text), target)
    if not versions:
        folder.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return Update(version, None, target, added=[_name(row) for row in new.rows()])
    previous = versions[-1]
    old = _read_table(previous, json.loads((folder / f"{previous}.json").read_text()), folder / f"{previous}.json")
    result = _compare(old, new, Update(version, previous, target))
    if not (result.added or result.removed or result.changed) and old._limits == new._limits:
        return Update(version, previous, None)
    target.write_text(text)
    return result


_ROW_KEYS = ("provider", "model", "above_input_tokens", *_KINDS, "requests_per_min", "tokens_per_min", "tiers",
             "match", "source")


def _ordered(row: dict[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(_ROW_KEYS)
    if unknown:
        raise ConfigError(f"price table row {row.get('provider')}/{row.get('model')}: unknown key(s) {sorted(unknown)}")
    ordered = {key: row[key] for key in _ROW_KEYS if key in row}
    if "tiers" in ordered:
        ordered["tiers"] = [_ordered(tier) for tier in ordered["tiers"]]
    return ordered


def _row(provider: str, model: Any, when: datetime, source: str) -> dict[str, Any] | None:
    prices = _standard(model, when)
    raw = {kind: getattr(prices, key, None) for kind, key in _KINDS.items()}
    if raw["input_usd_per_mtok"] is None and raw["output_usd_per_mtok"] is None:
        return None  # priced per audio second, image or request only
    for kind, fallback in (("input_usd_per_mtok", None), ("output_usd_per_mtok", None),
                           ("cache_read_usd_per_mtok", "input_usd_per_mtok"),
                           ("cache_write_usd_per_mtok", "input_usd_per_mtok"),
                           ("reasoning_usd_per_mtok", "output_usd_per_mtok")):
        if raw[kind] is None:
            raw[kind] = raw[fallback] if fallback else Decimal(0)
    thresholds = sorted({tier.start for price in raw.values() if hasattr(price, "tiers") for tier in price.tiers})
    row: dict[str, Any] = {"provider": provider, "model": model.id}
    row.update({kind: _at(price, None) for kind, price in raw.items()})
    if thresholds:
        row["tiers"] = [{"above_input_tokens": start, **{kind: _at(price, start) for kind, price in raw.items()}}
                        for start in thresholds]
    row["match"] = _clause(model.match)
    row["source"] = source
    return row


def _standard(model: Any, when: datetime) -> Any:
    """The source's price in force at ``when``: later entries win, the first is the fallback."""
    if not isinstance(model.prices, list):
        return model.prices
    for conditional in reversed(model.prices):
        if _active(conditional.constraint, when):
            return conditional.prices
    return model.prices[0].prices


def _active(constraint: Any, when: datetime) -> bool:
    if constraint is None:
        return True
    if hasattr(constraint, "start_date"):
        return when.date() >= constraint.start_date
    start, end = (_utc(t) for t in (constraint.start_time, constraint.end_time))
    now = when.timetz()
    return (now >= start or now < end) if end < start else start <= now < end


def _utc(value: time) -> time:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return datetime.combine(date(1970, 1, 1), value).astimezone(timezone.utc).timetz()


def _at(price: Any, threshold: int | None) -> float:
    """The rate of a call just above ``threshold`` input tokens (``None``: the base rate)."""
    if not hasattr(price, "tiers"):
        return float(price)
    rate = price.base
    for tier in sorted(price.tiers, key=lambda tier: tier.start):
        if threshold is not None and tier.start <= threshold:
            rate = tier.price
    return float(rate)


def _clause(clause: Any) -> dict[str, Any]:
    kind = _CLAUSES[type(clause).__name__]
    if kind in ("or", "and"):
        return {kind: [_clause(part) for part in getattr(clause, f"{kind}_")]}
    return {kind: getattr(clause, kind)}


def _read_supplement() -> dict[str, Any]:
    try:
        data = json.loads(SUPPLEMENT.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{SUPPLEMENT}: cannot read the price supplement: {exc}") from None
    for number, row in enumerate(data.get("prices", []), start=1):
        if not row.get("source"):
            raise ConfigError(f"{SUPPLEMENT}: row {number} ({row.get('provider')}/{row.get('model')}) states no source")
    return data


def _supplement_row(extra: dict[str, Any], rows: list[dict[str, Any]], source: str) -> dict[str, Any]:
    if "same_as" not in extra:
        return {key: float(value) if key in _KINDS else value for key, value in extra.items()}
    original = next((row for row in rows if row["model"] == extra["same_as"]), None)
    if original is None:
        raise ConfigError(f"{SUPPLEMENT}: {extra['provider']}/{extra['model']}: no model {extra['same_as']!r} in the source")
    row = {key: value for key, value in original.items() if key != "match"}
    row["model"] = extra["model"]
    row["source"] = f"{source} {extra['provider']}/{extra['same_as']}, under this name: {extra['source']}"
    return row


def _name(row: ModelPrice) -> str:
    return f"{row.provider}/{row.model}"


def _compare(old: PriceTable, new: PriceTable, result: Update) -> Update:
    before = {_name(row): row for row in old.rows()}
    after = {_name(row): row for row in new.rows()}
    result.added = sorted(after.keys() - before.keys())
    result.removed = sorted(before.keys() - after.keys())
    for name in sorted(before.keys() & after.keys()):
        was, now = (row.model_dump(exclude={"source", "match"}) for row in (before[name], after[name]))
        if was != now:
            diffs = [f"{key.removesuffix('_usd_per_mtok')} {was[key]} -> {now[key]}"
                     for key in was if key != "tiers" and was[key] != now[key]]
            if was["tiers"] != now["tiers"]:
                diffs.append(f"tiers above {[t['above_input_tokens'] for t in was['tiers']]} -> "
                             f"{[t['above_input_tokens'] for t in now['tiers']]}")
            result.changed.append(f"{name}: {', '.join(diffs)}")
    return result
