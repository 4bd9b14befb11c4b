"""The versioned price table: costs, lookups that fail naming what is missing, versions."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from connectors import pricing
from connectors.errors import ConfigError
from connectors.pricing import ModelPrice, PriceTable, UnknownModel, available_versions
from streams.simulate import generate

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


@pytest.fixture
def table() -> PriceTable:
    return PriceTable.load("2026-11-01")


@pytest.mark.parametrize(("provider", "model", "input_tokens", "output_tokens", "usd"), [
    ("anthropic", "claude-3-opus", 1_000, 1_000, 0.03),
    ("anthropic", "claude-3-sonnet", 10_000, 0, 0.03),
    ("anthropic", "claude-3-haiku", 3_000, 1_000, 0.001),
    ("openai", "gpt-4", 500, 500, 0.03),
    ("openai", "gpt-4-turbo", 2_000, 0, 0.06),
    ("openai", "gpt-3.5-turbo", 2_500, 500, 0.006),
    ("deepseek", "deepseek-coder", 100_000, 0, 0.014),
    ("groq", "mixtral-8x7b", 6_000, 4_000, 0.001),
    ("ollama", "qwen2.5-coder:32b", 50_000, 8_000, 0.0),
])
def test_cost_of_a_call(table, provider, model, input_tokens, output_tokens, usd):
    assert table.cost(provider, model, input_tokens, output_tokens) == pytest.approx(usd, rel=1e-12)


def test_every_model_of_the_platform_is_priced(table):
    assert table.providers() == ["anthropic", "deepseek", "groq", "ollama", "openai"]
    assert table.models("anthropic") == ["claude-3-haiku", "claude-3-opus", "claude-3-sonnet"]
    assert table.models("openai") == ["gpt-3.5-turbo", "gpt-4", "gpt-4-turbo"]
    assert table.models("deepseek") == ["deepseek-chat", "deepseek-coder"]
    assert table.models("groq") == ["llama2-70b", "mixtral-8x7b"]
    assert table.models("ollama") == ["codellama:34b", "mixtral:8x7b", "qwen2.5-coder:32b"]
    assert table.price("openai", "gpt-4") == ModelPrice(
        provider="openai", model="gpt-4", input_usd_per_1k=0.03, output_usd_per_1k=0.03
    )


def test_limits_per_key(table):
    anthropic, openai = table.limits("anthropic"), table.limits("openai")
    assert (anthropic.requests_per_min, anthropic.tokens_per_min) == (50, 100_000)
    assert (openai.requests_per_min, openai.tokens_per_min) == (60, 150_000)
    assert table.limits("groq") is None


def test_unknown_model_or_provider_is_named(table):
    with pytest.raises(UnknownModel, match=r"anthropic/claude-9 in price table 2026-11-01 .*claude-3-haiku"):
        table.cost("anthropic", "claude-9", 10, 10)
    with pytest.raises(ConfigError, match=r"no provider 'mistral' in price table 2026-11-01 \(known: anthropic"):
        table.cost("mistral", "mistral-large", 10, 10)
    # Callers that only look things up can treat it as the lookup error it is.
    with pytest.raises(LookupError):
        table.models("mistral")


def test_negative_tokens_are_refused(table):
    with pytest.raises(ValueError, match="negative"):
        table.cost("openai", "gpt-4", -1, 0)


def test_versions_latest_by_default_and_unknown_version_lists_the_known_ones():
    assert "2026-11-01" in available_versions()
    assert available_versions() == sorted(available_versions())
    assert PriceTable.load().version == available_versions()[-1]
    assert PriceTable.load("2026-11-01") is PriceTable.load("2026-11-01")
    with pytest.raises(ConfigError, match="no price table '1999-01-01'; known versions: .*2026-11-01"):
        PriceTable.load("1999-01-01")


def test_bad_table_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(pricing, "PRICE_TABLES_DIR", tmp_path)
    (tmp_path / "2030-01-01.json").write_text(
        '{"prices": [{"provider": "openai", "model": "gpt-5", "input_usd_per_1k": -1, "output_usd_per_1k": 0}]}'
    )
    with pytest.raises(ConfigError, match=r"2030-01-01.json: not a valid price table: prices.0.input_usd_per_1k"):
        PriceTable.load()
    (tmp_path / "latest.json").write_text("{}")
    with pytest.raises(ConfigError, match="latest.json: a price table file must be named after its version"):
        available_versions()


def test_duplicate_rows_are_refused():
    row = ModelPrice(provider="groq", model="llama2-70b", input_usd_per_1k=0.1, output_usd_per_1k=0.1)
    with pytest.raises(ConfigError, match="groq/llama2-70b is listed twice"):
        PriceTable("2030-01-01", [row, row], [])


def test_events_record_the_version_their_cost_comes_from(table):
    doubled = PriceTable("2030-01-01", [
        ModelPrice(provider=p, model=m, input_usd_per_1k=2 * table.price(p, m).input_usd_per_1k,
                   output_usd_per_1k=2 * table.price(p, m).output_usd_per_1k)
        for p in table.providers() for m in table.models(p)
    ], [])
    normal = [e for e in generate(3, start_time=T0, count=3_000, prices=table) if e.EVENT != "telemetry"]
    dear = [e for e in generate(3, start_time=T0, count=3_000, prices=doubled) if e.EVENT != "telemetry"]
    assert {e.price_version for e in normal} == {"2026-11-01"}
    assert {e.price_version for e in dear} == {"2030-01-01"}
    # Same seed, same traffic: only the prices differ.
    assert [e.cost_usd * 2 for e in normal] == pytest.approx([e.cost_usd for e in dear], rel=1e-12)
    assert sum(e.cost_usd for e in normal) > 0
