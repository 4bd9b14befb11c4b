"""The versioned price tables: costs with cache and reasoning tokens and context tiers, lookups by
alias and snapshot, overrides, the generated table, and the first table read as it was written."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from importlib import metadata

import pytest
from click.testing import CliRunner

from connectors import pricing
from connectors.errors import ConfigError
from connectors.pricing import ModelPrice, PriceTable, UnknownModel, available_versions
from connectors.pricing.update import build, render, update
from connectors.settings import load_settings
from streams.cli import cli
from streams.simulate import PROFILES, generate

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)
CURRENT = "2026-12-05"

# The plan's models (DOMAIN.md), which the simulator uses.
PLAN_MODELS = {
    "anthropic": ["claude-3-haiku", "claude-3-opus", "claude-3-sonnet"],
    "openai": ["gpt-3.5-turbo", "gpt-4", "gpt-4-turbo"],
    "deepseek": ["deepseek-chat", "deepseek-coder"],
    "groq": ["llama2-70b", "mixtral-8x7b"],
    "ollama": ["codellama:34b", "mixtral:8x7b", "qwen2.5-coder:32b"],
}


@pytest.fixture
def table() -> PriceTable:
    return PriceTable.load(CURRENT)


@pytest.fixture
def first() -> PriceTable:
    return PriceTable.load("2026-11-01")


# Each expected cost is worked out by hand from the providers' published prices (USD per 1M tokens):
# claude-3-haiku 0.25 in / 1.25 out; claude-sonnet-4-5 3 in / 15 out / 0.30 cache read / 3.75 cache
# write, and above 200k input 6 / 22.5 / 0.60 / 7.50; o3-mini 1.10 in / 4.40 out / 0.55 cache read,
# reasoning billed as output; sonar-deep-research 2 in / 8 out / 3 reasoning; gemini-2.5-pro
# 1.25 in / 10 out, above 200k 2.50 / 15; gpt-4o 2.50 in / 10 out / 1.25 cache read, no cache-write price.
@pytest.mark.parametrize(("provider", "model", "tokens", "usd"), [
    ("anthropic", "claude-3-haiku", dict(input_tokens=3_000, output_tokens=1_000), 0.00075 + 0.00125),
    ("anthropic", "claude-sonnet-4-5",
     dict(input_tokens=10_000, output_tokens=1_000, cache_read_tokens=6_000, cache_write_tokens=2_000),
     2_000 * 3e-6 + 6_000 * 0.3e-6 + 2_000 * 3.75e-6 + 1_000 * 15e-6),  # 0.0303
    # 200,000 input tokens is not above the tier: base rates.
    ("anthropic", "claude-sonnet-4-5",
     dict(input_tokens=200_000, output_tokens=2_000, cache_read_tokens=100_000),
     100_000 * 3e-6 + 100_000 * 0.3e-6 + 2_000 * 15e-6),  # 0.36
    # 200,001: every token at the tier's rates.
    ("anthropic", "claude-sonnet-4-5",
     dict(input_tokens=200_001, output_tokens=2_000, cache_read_tokens=100_000),
     100_001 * 6e-6 + 100_000 * 0.6e-6 + 2_000 * 22.5e-6),  # 0.705006
    ("openai", "o3-mini",
     dict(input_tokens=1_000, output_tokens=3_000, cache_read_tokens=500, reasoning_tokens=2_500),
     500 * 1.1e-6 + 500 * 0.55e-6 + 500 * 4.4e-6 + 2_500 * 4.4e-6),  # 0.014025
    ("perplexity", "sonar-deep-research",
     dict(input_tokens=1_000, output_tokens=2_000, reasoning_tokens=1_500),
     1_000 * 2e-6 + 500 * 8e-6 + 1_500 * 3e-6),  # 0.0105
    ("google", "gemini-2.5-pro", dict(input_tokens=300_000, output_tokens=1_000), 300_000 * 2.5e-6 + 1_000 * 15e-6),
    ("openai", "gpt-4o", dict(input_tokens=4_000, output_tokens=100, cache_read_tokens=1_000, cache_write_tokens=1_000),
     2_000 * 2.5e-6 + 1_000 * 1.25e-6 + 1_000 * 2.5e-6 + 100 * 10e-6),
    ("ollama", "qwen2.5-coder:32b", dict(input_tokens=50_000, output_tokens=8_000, cache_read_tokens=10_000), 0.0),
])
def test_cost_by_hand(table, provider, model, tokens, usd):
    assert table.cost(provider, model, **tokens) == pytest.approx(usd, rel=1e-12)


def test_without_cache_or_reasoning_tokens_the_four_argument_call_is_unchanged(table):
    row = table.price("openai", "gpt-4o")
    assert table.cost("openai", "gpt-4o", 1_000, 500) == pytest.approx(1_000 * 2.5e-6 + 500 * 10e-6, rel=1e-12)
    assert (row.input_usd_per_mtok, row.output_usd_per_mtok, row.cache_read_usd_per_mtok) == (2.5, 10.0, 1.25)


def test_a_row_has_all_five_prices_and_its_source(table):
    row = table.price("anthropic", "claude-sonnet-4-5")
    assert (row.input_usd_per_mtok, row.output_usd_per_mtok, row.cache_read_usd_per_mtok,
            row.cache_write_usd_per_mtok, row.reasoning_usd_per_mtok) == (3.0, 15.0, 0.3, 3.75, 15.0)
    (tier,) = row.tiers
    assert (tier.above_input_tokens, tier.input_usd_per_mtok, tier.output_usd_per_mtok) == (200_000, 6.0, 22.5)
    assert row.source == f"genai-prices {metadata.version('genai-prices')}"
    assert "supplement" not in row.source
    assert "DOMAIN.md" in table.price("groq", "llama2-70b").source
    assert "self-hosted" in table.price("ollama", "mixtral:8x7b").source


@pytest.mark.parametrize(("tokens", "message"), [
    (dict(input_tokens=-1, output_tokens=0), "must not be negative: input -1, output 0"),
    (dict(input_tokens=10, output_tokens=5, reasoning_tokens=-2), "must not be negative: .*reasoning -2"),
    (dict(input_tokens=1_000, output_tokens=5, cache_read_tokens=800, cache_write_tokens=300),
     r"cache_read_tokens 800 \+ cache_write_tokens 300 > input_tokens 1000"),
    (dict(input_tokens=1_000, output_tokens=400, reasoning_tokens=500), "reasoning_tokens 500 > output_tokens 400"),
])
def test_counts_that_cannot_be_are_refused_with_the_numbers(table, tokens, message):
    with pytest.raises(ValueError, match=message):
        table.cost("openai", "o3-mini", **tokens)


@pytest.mark.parametrize(("provider", "name", "row"), [
    ("anthropic", "claude-3-5-sonnet-20241022", ("anthropic", "claude-3-5-sonnet")),
    ("anthropic", "claude-3-opus-20240229", ("anthropic", "claude-3-opus-latest")),
    ("anthropic", "claude-sonnet-4-5-20250929", ("anthropic", "claude-sonnet-4-5")),
    ("anthropic", "Claude-3-Haiku", ("anthropic", "claude-3-haiku")),
    ("openai", "gpt-4o-2024-08-06", ("openai", "gpt-4o")),
    ("openai", "o3-mini-2025-01-31", ("openai", "o3-mini")),
    ("openai", "gpt-4.1-2025-04-14", ("openai", "gpt-4.1")),
    # A compact date is tried with dashes, as the source does.
    ("openai", "gpt-5.2-20251211", ("openai", "gpt-5.2")),
    # OpenTelemetry provider names, and `other` for the providers outside our event enum.
    ("gcp.gemini", "gemini-2.5-pro", ("google", "gemini-2.5-pro")),
    ("other", "gemini-2.5-pro", ("google", "gemini-2.5-pro")),
    ("x_ai", "grok-3", ("x-ai", "grok-3")),
    ("other", "mistral-large-latest", ("mistral", "mistral-large")),
])
def test_aliases_and_dated_snapshots_find_their_model(table, provider, name, row):
    found = table.find(provider, name)
    assert found is not None and (found.provider, found.model) == row
    assert table.price(provider, name) == found


def test_unknown_model_or_provider_is_named_and_find_says_none(table, first):
    assert table.find("openai", "gpt-9000") is None
    assert table.find("mistral-ai-cloud", "x") is None
    with pytest.raises(UnknownModel, match=r"openai/gpt-9000 in price table 2026-12-05 \(openai models: .*gpt-4o"):
        table.cost("openai", "gpt-9000", 10, 10)
    with pytest.raises(UnknownModel, match=r"anthropic/claude-9 in price table 2026-11-01 .*claude-3-haiku"):
        first.cost("anthropic", "claude-9", 10, 10)
    with pytest.raises(ConfigError, match=r"no provider 'vllm' in price table 2026-12-05 \(known: anthropic"):
        table.cost("vllm", "llama", 10, 10)
    # Callers that only look things up can treat it as the lookup error it is.
    with pytest.raises(LookupError):
        table.models("vllm")


def test_every_model_of_the_plan_and_the_simulator_is_priced(table):
    simulated = {model for profile in PROFILES.values() for model in profile.models}
    assert simulated <= {(provider, model) for provider, models in PLAN_MODELS.items() for model in models}
    for provider, models in PLAN_MODELS.items():
        assert set(models) <= set(table.models(provider)), provider
        for model in models:
            assert table.cost(provider, model, 1_000, 100) >= 0
    assert {"google", "mistral", "x-ai", "perplexity", "cohere"} <= set(table.providers())
    assert all(table.cost("ollama", m, 10_000, 1_000) == 0 for m in PLAN_MODELS["ollama"])


def test_the_generated_table_is_the_checked_in_one(tmp_path):
    checked_in = (pricing.PRICE_TABLES_DIR / f"{CURRENT}.json").read_text()
    source = re.search(r'"package": "genai-prices ([^"]+)"', checked_in)[1]
    assert metadata.version("genai-prices") == source, "the pinned genai-prices is not the one installed"
    assert render(build(CURRENT)) == checked_in
    result = CliRunner().invoke(cli, ["prices", "update", "--date", CURRENT, "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"{CURRENT}.json").read_text() == checked_in
    assert "added" in result.output


def test_update_writes_a_version_only_when_prices_change_and_never_edits_one(tmp_path):
    (tmp_path / f"{CURRENT}.json").write_text((pricing.PRICE_TABLES_DIR / f"{CURRENT}.json").read_text())
    same = update("2026-12-06", tmp_path)
    assert same.written is None and "no change since 2026-12-05" in same.report()
    assert not (tmp_path / "2026-12-06.json").exists()
    assert update(CURRENT, tmp_path).written is None  # regenerating a version gives it back unchanged
    (tmp_path / "2027-02-01.json").write_text("{}")
    with pytest.raises(ConfigError, match="2027-02-01.json exists with other prices; a version is never edited"):
        update("2027-02-01", tmp_path)


def test_update_from_the_first_table_prints_what_changed(tmp_path):
    (tmp_path / "2026-11-01.json").write_text((pricing.PRICE_TABLES_DIR / "2026-11-01.json").read_text())
    done = update(CURRENT, tmp_path)
    assert done.written == tmp_path / f"{CURRENT}.json"
    text = done.report()
    assert "since 2026-11-01" in text
    assert "~ anthropic/claude-3-opus: output 15.0 -> 75.0" in text
    assert "openai/gpt-4o" in done.added and not done.removed


OVERRIDES = """
# Negotiated and self-hosted prices.
[[prices]]
provider = "openai"
model = "gpt-4o"
input_usd_per_mtok = 2.0
output_usd_per_mtok = 8.0
source = "contract 2026-07"

[[prices]]
provider = "ollama"
model = "qwen2.5-coder:32b"
input_usd_per_mtok = 0.05
output_usd_per_mtok = 0.10

[[prices]]
provider = "other"
model = "acme-ft-7b"
input_usd_per_mtok = 0.3
output_usd_per_mtok = 0.6
cache_read_usd_per_mtok = 0.03
"""


def test_overrides_win_and_name_themselves_in_the_version(tmp_path, table):
    path = tmp_path / "prices.toml"
    path.write_text(OVERRIDES)
    mine = load_prices_file(path)
    assert re.fullmatch(r"2026-12-05\+overrides-[0-9a-f]{8}", mine.version)
    # Negotiated: 2/8, cache prices default to the input price; the dated name still finds it.
    assert mine.cost("openai", "gpt-4o-2024-08-06", 1_000, 100, cache_read_tokens=500) == pytest.approx(
        1_000 * 2e-6 + 100 * 8e-6, rel=1e-12)
    assert mine.price("openai", "gpt-4o").source == "contract 2026-07"
    assert mine.cost("ollama", "qwen2.5-coder:32b", 10_000, 1_000) == pytest.approx(0.0006, rel=1e-12)
    assert mine.cost("other", "acme-ft-7b", 1_000, 1_000, cache_read_tokens=1_000) == pytest.approx(0.00063, rel=1e-12)
    assert mine.price("ollama", "qwen2.5-coder:32b").source == "overrides prices.toml"
    # What the overrides do not name is the table's.
    assert mine.cost("anthropic", "claude-3-haiku", 3_000, 1_000) == table.cost("anthropic", "claude-3-haiku", 3_000, 1_000)
    # Comments and layout keep the version; a price change makes another.
    path.write_text("# moved\n" + OVERRIDES.replace("= 2.0", "=    2.0"))
    assert load_prices_file(path).version == mine.version
    path.write_text(OVERRIDES.replace("= 2.0", "= 2.1"))
    assert load_prices_file(path).version != mine.version


def load_prices_file(path) -> PriceTable:
    return pricing.load_prices(load_settings(prices_file=path), CURRENT)


@pytest.mark.parametrize(("content", "message"), [
    (OVERRIDES.replace("= 0.05", "= -0.05"), r"row 2 \(ollama/qwen2.5-coder:32b\): input_usd_per_mtok: Input should be"),
    (OVERRIDES.replace('model = "acme-ft-7b"\n', ""), r"row 3 \(other/\?\): model: Field required"),
    (OVERRIDES.replace("source = ", "sauce = "), r"row 1 \(openai/gpt-4o\): sauce: Extra inputs"),
    (OVERRIDES + OVERRIDES.split("[[prices]]")[2].join(["[[prices]]", ""]), r"row 4 \(ollama/qwen2.5-coder:32b\) repeats row 2"),
    ("[[prices]\n", "cannot read the price overrides"),
    ("[budgets]\nx = 1\n", r"unknown key\(s\) \['budgets'\]"),
])
def test_a_bad_overrides_file_fails_at_start_naming_the_setting_and_the_row(tmp_path, content, message):
    path = tmp_path / "prices.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=f"EZ_PRICES_FILE: {re.escape(str(path))}: {message}"):
        load_settings(prices_file=path)
    with pytest.raises(ConfigError, match=f"EZ_PRICES_FILE {re.escape(str(path))}: {message}"):
        PriceTable.load(CURRENT, overrides=path)


def test_the_prices_command_shows_the_table_with_its_overrides(tmp_path, monkeypatch):
    result = CliRunner().invoke(cli, ["prices", "--provider", "anthropic"])
    assert result.exit_code == 0, result.output
    assert f"price table {available_versions()[-1]}:" in result.output
    assert re.search(r"anthropic +claude-sonnet-4-5 +3 +15 +0.3 +3.75 +15 +>200,000: 6/22.5", result.output)
    path = tmp_path / "prices.toml"
    path.write_text(OVERRIDES)
    monkeypatch.setenv("EZ_PRICES_FILE", str(path))
    result = CliRunner().invoke(cli, ["prices", "--provider", "ollama", "--version", CURRENT])
    assert result.exit_code == 0, result.output
    assert re.search(r"price table 2026-12-05\+overrides-[0-9a-f]{8}: 3 models", result.output)
    assert re.search(r"ollama +qwen2.5-coder:32b +0.05 +0.1 .*overrides prices.toml", result.output)


# The first table, read as it was written: USD per 1,000 tokens, one price for input and output.
@pytest.mark.parametrize(("provider", "model", "input_tokens", "output_tokens", "usd"), [
    ("anthropic", "claude-3-opus", 1_000, 1_000, 0.03),
    ("anthropic", "claude-3-haiku", 3_000, 1_000, 0.001),
    ("openai", "gpt-4", 500, 500, 0.03),
    ("deepseek", "deepseek-coder", 100_000, 0, 0.014),
    ("groq", "mixtral-8x7b", 6_000, 4_000, 0.001),
    ("ollama", "qwen2.5-coder:32b", 50_000, 8_000, 0.0),
])
def test_the_first_table_keeps_its_costs(first, provider, model, input_tokens, output_tokens, usd):
    assert first.cost(provider, model, input_tokens, output_tokens) == pytest.approx(usd, rel=1e-12)


def test_the_first_table_converted_to_the_one_unit(first):
    assert first.providers() == ["anthropic", "deepseek", "groq", "ollama", "openai"]
    assert {p: first.models(p) for p in first.providers()} == PLAN_MODELS
    assert first.price("deepseek", "deepseek-chat") == ModelPrice(
        provider="deepseek", model="deepseek-chat", input_usd_per_mtok=0.14, output_usd_per_mtok=0.14,
        source="price table 2026-11-01",
    )
    assert first.price("openai", "gpt-4").cache_read_usd_per_mtok == 30.0


@pytest.mark.parametrize("version", ["2026-11-01", CURRENT])
def test_limits_per_key(version):
    table = PriceTable.load(version)
    anthropic, openai = table.limits("anthropic"), table.limits("openai")
    assert (anthropic.requests_per_min, anthropic.tokens_per_min) == (50, 100_000)
    assert (openai.requests_per_min, openai.tokens_per_min) == (60, 150_000)
    assert table.limits("groq") is None


def test_versions_latest_by_default_and_unknown_version_lists_the_known_ones():
    assert ["2026-11-01", CURRENT] == available_versions()[:2]
    assert available_versions() == sorted(available_versions())
    assert PriceTable.load().version == available_versions()[-1]
    assert PriceTable.load(CURRENT) is PriceTable.load(CURRENT)
    with pytest.raises(ConfigError, match="no price table '1999-01-01'; known versions: 2026-11-01, 2026-12-05"):
        PriceTable.load("1999-01-01")


def test_bad_table_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(pricing, "PRICE_TABLES_DIR", tmp_path)
    (tmp_path / "2030-01-01.json").write_text(
        '{"prices": [{"provider": "openai", "model": "gpt-5", "input_usd_per_1k": -1, "output_usd_per_1k": 0}]}'
    )
    with pytest.raises(ConfigError, match=r"2030-01-01.json: not a valid price table: prices.0.input_usd_per_1k"):
        PriceTable.load()
    (tmp_path / "2030-01-01.json").write_text(
        '{"unit": "USD per 1,000,000 tokens", "prices": [{"provider": "openai", "model": "gpt-5", '
        '"input_usd_per_mtok": 1, "output_usd_per_mtok": 2, "tiers": [{"above_input_tokens": 0, '
        '"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}]}]}'
    )
    with pytest.raises(ConfigError, match=r"not a valid price table: prices.0.tiers.0.above_input_tokens"):
        PriceTable.load()
    (tmp_path / "latest.json").write_text("{}")
    with pytest.raises(ConfigError, match="latest.json: a price table file must be named after its version"):
        available_versions()


def test_duplicate_rows_are_refused():
    row = ModelPrice(provider="groq", model="llama2-70b", input_usd_per_mtok=0.1, output_usd_per_mtok=0.1)
    with pytest.raises(ConfigError, match="groq/llama2-70b is listed twice"):
        PriceTable("2030-01-01", [row, row], [])


def test_events_record_the_version_their_cost_comes_from(table):
    doubled = PriceTable("2030-01-01", [
        row.model_copy(update={key: 2 * getattr(row, key) for key in (
            "input_usd_per_mtok", "output_usd_per_mtok", "cache_read_usd_per_mtok", "cache_write_usd_per_mtok",
            "reasoning_usd_per_mtok")})
        for row in table.rows() if not row.tiers
    ], [])
    normal = [e for e in generate(3, start_time=T0, count=3_000, prices=table) if e.EVENT != "telemetry"]
    dear = [e for e in generate(3, start_time=T0, count=3_000, prices=doubled) if e.EVENT != "telemetry"]
    assert {e.price_version for e in normal} == {CURRENT}
    assert {e.price_version for e in dear} == {"2030-01-01"}
    # Same seed, same traffic: only the prices differ.
    assert [e.cost_usd * 2 for e in normal] == pytest.approx([e.cost_usd for e in dear], rel=1e-12)
    assert sum(e.cost_usd for e in normal) > 0
