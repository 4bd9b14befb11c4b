"""Every column the sinks insert has its ClickHouse column, made by a migration.

The migrations are applied for real, to a scratch embedded engine in a process of its own
(:func:`connectors.clickhouse.schema_check.check_migrations`), and its tables compared with the
current schema versions: a schema version that adds a field without a migration fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from connectors.clickhouse import schema_check
from connectors.clickhouse.migrations import MIGRATIONS_DIR
from connectors.clickhouse.schema_check import (
    ColumnGap,
    check_migrations,
    clickhouse_type,
    expected_columns,
    format_gaps,
    stores,
)
from connectors.errors import ConfigError
from connectors.kafka.compat import check_all
from connectors.kafka.schemas import SCHEMAS_DIR, SchemaRegistry
from connectors.sink import TABLES
from streams.cli import cli

#: The field a second version of LlmCall adds in these tests.
NEW_FIELD = {"name": "audio_input_tokens", "type": ["null", "int"], "default": None,
             "doc": "Prompt tokens of audio; null where the provider does not say."}
#: The version of LlmCall these tests add: the one after the repository's latest.
NEW = max(int(path.stem[1:]) for path in (SCHEMAS_DIR / "llm_call").glob("v*.avsc")) + 1
NEW_GAP = ColumnGap("llm_call", NEW, "llm_calls", "audio_input_tokens", "Nullable(Int32)", None)
MIGRATION = "ALTER TABLE {db}.llm_calls ADD COLUMN IF NOT EXISTS audio_input_tokens Nullable(Int32);\n"


def schemas_with_new_llm_call(root: Path) -> Path:
    """The repository's schemas plus the next version of llm_call: the latest and one optional field."""
    schemas = root / "schemas"
    shutil.copytree(SCHEMAS_DIR, schemas)
    new = json.loads((schemas / "llm_call" / f"v{NEW - 1}.avsc").read_text())
    new["fields"].append(NEW_FIELD)
    (schemas / "llm_call" / f"v{NEW}.avsc").write_text(json.dumps(new, indent=2))
    return schemas


def migrations_with(root: Path, name: str, sql: str) -> Path:
    """The repository's migrations plus the file ``name`` holding ``sql``."""
    folder = root / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    (folder / name).write_text(sql)
    return folder


def next_version() -> int:
    return max(int(path.name[:3]) for path in MIGRATIONS_DIR.glob("*.sql")) + 1


def test_the_repository_migrations_make_every_column_of_the_current_schemas():
    assert check_migrations() == []


def test_a_schema_version_without_its_migration_is_refused_naming_event_column_and_migration(tmp_path):
    schemas = schemas_with_new_llm_call(tmp_path)
    assert check_all(schemas) == []  # a compatible version: only ClickHouse lacks its column

    gaps = check_migrations(MIGRATIONS_DIR, schemas)

    assert gaps == [NEW_GAP]
    report = format_gaps(gaps)
    assert f"llm_call v{NEW} adds field 'audio_input_tokens': llm_calls has no column audio_input_tokens" in report
    assert f"{next_version():03d}_llm_call_v{NEW}.sql" in report
    assert MIGRATION.strip() in report


def test_with_the_migration_the_schema_version_passes(tmp_path):
    schemas = schemas_with_new_llm_call(tmp_path)
    migrations = migrations_with(tmp_path, f"{next_version():03d}_llm_call_v{NEW}.sql", MIGRATION)
    assert check_migrations(migrations, schemas) == []


def test_a_column_of_another_type_is_a_gap(tmp_path):
    schemas = schemas_with_new_llm_call(tmp_path)
    migrations = migrations_with(tmp_path, f"{next_version():03d}_llm_call_v{NEW}.sql",
                                 "ALTER TABLE {db}.llm_calls ADD COLUMN IF NOT EXISTS audio_input_tokens Int32;\n")
    (gap,) = check_migrations(migrations, schemas)
    assert (gap.column, gap.expected, gap.actual) == ("audio_input_tokens", "Nullable(Int32)", "Int32")
    assert "MODIFY COLUMN audio_input_tokens Nullable(Int32)" in gap.sql


def test_a_refused_migration_is_a_config_error_naming_it(tmp_path):
    migrations = migrations_with(tmp_path, "099_broken.sql", "ALTER TABLE {db}.llm_calls ADD COLUMN x NoSuchType;\n")
    with pytest.raises(ConfigError, match="099_broken"):
        check_migrations(migrations)


def test_schemas_check_command_names_the_missing_column(tmp_path, monkeypatch):
    schemas = schemas_with_new_llm_call(tmp_path)
    real_check = schema_check.check_migrations
    monkeypatch.setattr(schema_check, "check_migrations", lambda: real_check(MIGRATIONS_DIR, schemas))
    result = CliRunner().invoke(cli, ["schemas", "check"])
    assert result.exit_code == 1, result.output
    assert "compatible" in result.output
    assert f"llm_call v{NEW} adds field 'audio_input_tokens'" in result.output
    assert "ADD COLUMN IF NOT EXISTS audio_input_tokens Nullable(Int32)" in result.output


# --- the comparison, without an engine ---------------------------------------------------------


def test_every_event_table_gets_the_fields_of_its_current_version_and_the_loop_columns(tmp_path):
    registry = SchemaRegistry(schemas_with_new_llm_call(tmp_path))
    columns = expected_columns(registry)
    assert set(columns) == set(TABLES.values())
    llm_calls = {c.name: c for c in columns["llm_calls"]}
    assert (llm_calls["audio_input_tokens"].version, llm_calls["audio_input_tokens"].clickhouse_type) == (NEW, "Nullable(Int32)")
    assert (llm_calls["call_id"].version, llm_calls["event_time"].clickhouse_type) == (1, "DateTime64(3, 'UTC')")
    assert (llm_calls["kafka_partition"].version, llm_calls["kafka_offset"].clickhouse_type) == (None, "Int64")


@pytest.mark.parametrize(("arrow", "nullable", "expected"), [
    (pa.string(), False, "String"),
    (pa.string(), True, "Nullable(String)"),
    (pa.int32(), False, "Int32"),
    (pa.float64(), True, "Nullable(Float64)"),
    (pa.bool_(), False, "Bool"),
    (pa.timestamp("ms", tz="UTC"), True, "Nullable(DateTime64(3, 'UTC'))"),
    (pa.list_(pa.list_(pa.float32())), False, "Array(Array(Float32))"),
    (pa.map_(pa.string(), pa.string()), True, "Map(String, String)"),
])
def test_clickhouse_type_of_each_arrow_type(arrow, nullable, expected):
    assert clickhouse_type(arrow, nullable) == expected


@pytest.mark.parametrize(("actual", "expected", "ok"), [
    ("LowCardinality(String)", "String", True),
    ("LowCardinality(Nullable(String))", "Nullable(String)", True),
    ("UUID", "String", True),
    ("Nullable(Int64)", "Int64", True),
    ("Int64", "Nullable(Int64)", False),
    ("Int32", "Int64", False),
    ("String", "Int32", False),
    ("Map(LowCardinality(String), String)", "Map(String, String)", True),
])
def test_stores(actual, expected, ok):
    assert stores(actual, expected) is ok


def test_a_missing_table_is_reported_with_what_to_create():
    gap = ColumnGap("llm_call", None, "llm_calls", None, None, None)
    assert str(gap) == "llm_call: its table llm_calls does not exist"
    assert gap.sql.startswith("CREATE TABLE IF NOT EXISTS {db}.llm_calls")
