"""Checks that ClickHouse has a column, made by a migration, for every column the sinks insert.

The sinks decode each event into its current schema version (``schemas/<event>/v<N>.avsc``): one
column per field (:func:`connectors.kafka.codec.arrow_schema`), plus the Kafka partition and
offset that the loop adds. The lake's tables take a new version's columns as they come; a
ClickHouse table has the columns its migrations made and refuses an insert that names another
("No such column"), batch after batch. So a schema version that adds a field comes with a
migration that adds its column (``ALTER TABLE {db}.<table> ADD COLUMN IF NOT EXISTS …``), and this
module checks that in two places:

* :func:`column_gaps` compares the event tables of a database with the readers. The migrations run
  it once they are applied (:func:`~connectors.clickhouse.migrations.apply_migrations`), so a sink
  set up on a database without the column stops at start with :class:`MissingColumns`, which names
  the migration to add.
* :func:`check_migrations` applies the migration files to a fresh embedded engine in a temporary
  folder and compares that: no running ClickHouse needed. ``ezstream schemas check`` and the test
  suite run it, so a schema version without its migration fails before it is deployed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from connectors.clickhouse import get_client
from connectors.clickhouse.migrations import MIGRATIONS_DIR, apply_migrations, load_migrations
from connectors.errors import ConfigError, ServiceError
from connectors.kafka.codec import arrow_schema
from connectors.kafka.schemas import TOPIC_EVENTS, SchemaRegistry, default_registry
from connectors.settings import Settings, load_settings
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, TABLES

#: The columns the loop adds to every row (see :class:`connectors.sink.SinkBatch`).
LOOP_COLUMNS = {PARTITION_COLUMN: "Int32", OFFSET_COLUMN: "Int64"}

_PRIMITIVES = {
    pa.string(): "String", pa.binary(): "String", pa.bool_(): "Bool",
    pa.int32(): "Int32", pa.int64(): "Int64", pa.float32(): "Float32", pa.float64(): "Float64",
    pa.timestamp("ms", tz="UTC"): "DateTime64(3, 'UTC')",
}
_LOW_CARDINALITY = "LowCardinality("

_CHILD = "import sys; from connectors.clickhouse.schema_check import _child_main; sys.exit(_child_main(sys.argv[1:]))"
_CHILD_TIMEOUT_S = 300
_CONFIG_ERROR_EXIT = 3


@dataclass(frozen=True)
class ReaderColumn:
    """A column the sinks insert into an event table."""

    event: str
    #: The schema version that added the field; None for the loop's columns.
    version: int | None
    name: str
    #: The ClickHouse type that stores it (what a migration adding it should give it).
    clickhouse_type: str


@dataclass(frozen=True)
class ColumnGap:
    """An event table that lacks a column the sinks insert, or has it with another type."""

    event: str
    #: The schema version that added the field; None for the loop's columns.
    version: int | None
    table: str
    #: None when the table itself is missing.
    column: str | None
    #: The ClickHouse type the column needs.
    expected: str | None
    #: The table's type of the column; None when it has no such column.
    actual: str | None

    def __str__(self) -> str:
        if self.column is None:
            return f"{self.event}: its table {self.table} does not exist"
        if self.actual is not None:
            return (f"{self.event} field {self.column!r}: {self.table}.{self.column} is {self.actual}, "
                    f"the reader gives {self.expected}")
        added = (f"{self.event} v{self.version} adds field {self.column!r}" if self.version is not None
                 else f"the sink loop adds {self.column!r} to every row of {self.event}")
        return f"{added}: {self.table} has no column {self.column}"

    @property
    def sql(self) -> str:
        """The statement of a migration that closes the gap (a template: ``{db}`` is filled in)."""
        if self.column is None:
            return (f"CREATE TABLE IF NOT EXISTS {{db}}.{self.table} (… one column per field of {self.event}, "
                    "as in 001_events.sql …);")
        verb = "ADD COLUMN IF NOT EXISTS" if self.actual is None else "MODIFY COLUMN"
        return f"ALTER TABLE {{db}}.{self.table} {verb} {self.column} {self.expected};"


class MissingColumns(ConfigError):
    """Event tables lack columns the sinks insert (or have them with other types).

    :ivar gaps: what is missing, one :class:`ColumnGap` each.
    """

    def __init__(self, gaps: list[ColumnGap], database: str, directory: Path = MIGRATIONS_DIR) -> None:
        super().__init__(format_gaps(gaps, directory, database))
        self.gaps = gaps


def clickhouse_type(arrow_type: pa.DataType, nullable: bool = False) -> str:
    """The ClickHouse type that stores a column of ``arrow_type``; items of arrays and maps as
    their plain type (ClickHouse has no Nullable array or map).

    :raises ConfigError: the type has no mapping (the codec produces none such).
    """
    if pa.types.is_list(arrow_type):
        return f"Array({clickhouse_type(arrow_type.value_type)})"
    if pa.types.is_map(arrow_type):
        return f"Map({clickhouse_type(arrow_type.key_type)}, {clickhouse_type(arrow_type.item_type)})"
    if arrow_type not in _PRIMITIVES:
        raise ConfigError(f"no ClickHouse type for the Arrow type {arrow_type}")
    plain = _PRIMITIVES[arrow_type]
    return f"Nullable({plain})" if nullable else plain


def stores(actual: str, expected: str) -> bool:
    """Whether a ClickHouse column of type ``actual`` takes the values of type ``expected``:
    the same type but for LowCardinality, UUID or FixedString for String, and Nullable where the
    values are never NULL."""
    plain = _without_low_cardinality(actual)
    plain = re.sub(r"\bUUID\b|\bFixedString\(\d+\)", "String", plain)
    return plain in (expected, f"Nullable({expected})")


def expected_columns(registry: SchemaRegistry | None = None) -> dict[str, list[ReaderColumn]]:
    """Table -> the columns the sinks insert into it, read from each event's current version.

    :raises ConfigError: an event table's event has no schema in ``registry``.
    """
    registry = registry or default_registry()
    tables: dict[str, list[ReaderColumn]] = {}
    for topic, table in TABLES.items():
        event = TOPIC_EVENTS[topic]
        current = registry.current(event)
        columns = []
        for field in arrow_schema(current.schema):
            added = next(v for v in registry.versions(event) if _has_field(registry.get(event, v).schema, field.name))
            columns.append(ReaderColumn(event, added, field.name, clickhouse_type(field.type, field.nullable)))
        columns += [ReaderColumn(event, None, name, type_) for name, type_ in LOOP_COLUMNS.items()]
        tables[table] = columns
    return tables


def column_gaps(client: Any, settings: Settings, registry: SchemaRegistry | None = None) -> list[ColumnGap]:
    """What the event tables of ``settings``' database lack of the columns the sinks insert.

    :param registry: the schemas the sinks read (their current versions); the repository's by default.
    :raises ClickHouseError, OSError: as the client raises them.
    """
    expected = expected_columns(registry)
    rows = client.query(
        "SELECT table, name, type FROM system.columns WHERE database = %(db)s AND table IN %(tables)s",
        parameters={"db": settings.clickhouse_database, "tables": list(expected)},
    ).result_rows
    actual: dict[str, dict[str, str]] = {}
    for table, name, type_ in rows:
        actual.setdefault(table, {})[name] = type_
    gaps = []
    for table, columns in expected.items():
        have = actual.get(table)
        if not have:
            gaps.append(ColumnGap(columns[0].event, None, table, None, None, None))
            continue
        for column in columns:
            found = have.get(column.name)
            if found is None or not stores(found, column.clickhouse_type):
                gaps.append(ColumnGap(column.event, column.version, table, column.name, column.clickhouse_type, found))
    return gaps


def check_migrations(directory: Path = MIGRATIONS_DIR, schemas_dir: Path | None = None) -> list[ColumnGap]:
    """What the event tables made by the migrations in ``directory`` lack of the columns the
    sinks insert, for the schemas in ``schemas_dir``.

    The migrations are applied to a fresh embedded engine in a temporary folder, so ClickHouse
    itself says what they make, in a Python process of its own: chDB opens one engine folder per
    process, and this one may have its own open.

    :param schemas_dir: the repository's ``schemas/`` by default.
    :raises ConfigError: a migration was refused (the message names it), or a schema file is bad.
    :raises ServiceError: the engine could not run the check (the message ends with its error).
    """
    args = [str(directory), "" if schemas_dir is None else str(schemas_dir)]
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True,
                              timeout=_CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ServiceError(f"checking the migrations in {directory} on a scratch engine took over "
                           f"{_CHILD_TIMEOUT_S} s") from None
    if done.returncode == _CONFIG_ERROR_EXIT:
        raise ConfigError(done.stderr.strip())
    if done.returncode != 0:
        raise ServiceError(f"checking the migrations in {directory} on a scratch engine failed "
                           f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return [ColumnGap(**gap) for gap in json.loads(done.stdout.strip().splitlines()[-1])]


def format_gaps(gaps: list[ColumnGap], directory: Path = MIGRATIONS_DIR, database: str | None = None) -> str:
    """A report of ``gaps`` (of ``database``'s tables, or of those the migrations make), with the
    migration to add to ``directory`` that closes them."""
    where = f"ClickHouse database {database}" if database else "ClickHouse tables of the migrations"
    if not gaps:
        return f"{where}: every event table has every column the sinks insert"
    versions = {(gap.event, gap.version) for gap in gaps}
    if len(versions) == 1 and None not in next(iter(versions)):
        name = "{}_v{}".format(*next(iter(versions)))
    else:
        name = "columns"
    migrations = load_migrations(directory)
    next_version = migrations[-1].version + 1 if migrations else 1
    lines = [f"{where}: {len(gaps)} column(s) the sinks insert are missing or of another type:"]
    lines += [f"  - {gap}" for gap in gaps]
    lines.append(f"Add the migration {_shown(directory) / f'{next_version:03d}_{name}.sql'} "
                 "(a new file: applied migrations are never edited) with:")
    lines += [f"  {gap.sql}" for gap in gaps]
    return "\n".join(lines)


def _child_main(args: list[str]) -> int:
    """:func:`check_migrations` in its own process: the gaps as JSON on the last line of stdout."""
    directory, schemas_dir = Path(args[0]), Path(args[1]) if args[1] else None
    try:
        gaps = _scratch_gaps(directory, schemas_dir)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return _CONFIG_ERROR_EXIT
    print(json.dumps([asdict(gap) for gap in gaps]))
    return 0


def _scratch_gaps(directory: Path, schemas_dir: Path | None) -> list[ColumnGap]:
    registry = SchemaRegistry(schemas_dir)
    with tempfile.TemporaryDirectory(prefix="ezstream-schema-check-", ignore_cleanup_errors=True) as folder:
        settings = load_settings(
            clickhouse_dsn=f"chdb://{folder}", clickhouse_database="schema_check", clickhouse_cluster=None
        )
        client = get_client(settings)
        try:
            apply_migrations(client, settings, directory, registry)
        except MissingColumns as exc:
            return exc.gaps
        finally:
            client.close()
    return []


def _has_field(schema: dict[str, Any], name: str) -> bool:
    return any(field["name"] == name for field in schema["fields"])


def _without_low_cardinality(type_: str) -> str:
    while (start := type_.find(_LOW_CARDINALITY)) != -1:
        depth, inner = 1, start + len(_LOW_CARDINALITY)
        end = inner
        while depth:
            depth += {"(": 1, ")": -1}.get(type_[end], 0)
            end += 1
        type_ = type_[:start] + type_[inner:end - 1] + type_[end:]
    return type_


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory where it lies under it."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path
