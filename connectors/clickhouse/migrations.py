"""Versioned SQL migrations of the project's ClickHouse database, applied in order at set-up.

A migration is a file ``NNN_name.sql`` in :data:`MIGRATIONS_DIR`: ``NNN`` is its version, the
stem (``001_events``) its name. Files are templates: ``{db}`` is the project database
(``EZ_CLICKHOUSE_DATABASE``) and ``{ttl_days}`` the row TTL (``EZ_CLICKHOUSE_TTL_DAYS``), both
filled in when the migration is applied: a later change of the TTL setting leaves the tables as
the migrations left them. A statement ends with a ``;`` at the end of a line; lines starting with
``--`` are comments.

Each applied migration is recorded in ``{db}.schema_migrations`` with the SHA-256 of its file, so
a second run applies nothing and an applied migration whose file changed is refused: a change
is a new migration, never an edit. ClickHouse has no transactional DDL, so every statement must
be idempotent (``CREATE … IF NOT EXISTS``): a migration interrupted half-way, or applied by two
workers starting at once, is simply applied again.

Once migrated, the event tables must have a column for every column the sinks insert: those of
each event's current schema version (see :mod:`connectors.clickhouse.schema_check`). A new schema
version that adds a field comes with a migration that adds its column
(``ALTER TABLE {db}.<table> ADD COLUMN IF NOT EXISTS …``); without one :func:`apply_migrations`
refuses, naming the migration to add, so a sink stops at start instead of retrying its inserts.

On a cluster (``EZ_CLICKHOUSE_CLUSTER``) the same files are applied in a cluster form, rendered
from each statement by :func:`render_migration` (so a file, and its checksum, stays the same for
both): every DDL runs ``ON CLUSTER``; a table ``<name>`` becomes the replicated table
``<name>_local`` on every node (``Replicated<engine>`` at ``/clickhouse/tables/{shard}/{database}/
{table}``, replica ``{replica}``: the server's macros) and a Distributed table ``<name>`` over it,
so the code reads and writes the names it always does; a materialized view reads the local
source table and writes the local target table, on each shard. ``ALTER TABLE <name>`` alters
``<name>_local``, and the Distributed table too when it changes columns (``ADD``/``DROP``/
``MODIFY``/``RENAME``/``COMMENT COLUMN``): the Distributed table has the columns, not the parts,
TTL or indexes; ``ALTER TABLE <view> MODIFY QUERY`` gives each node's view a query that reads the
local tables, as its ``CREATE`` did. ``schema_migrations`` is replicated to every node of the cluster instead, so any
node knows what was applied.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from connectors.errors import ConfigError, EzStreamError, TransientError
from connectors.kafka.schemas import SchemaRegistry
from connectors.settings import Settings

#: Folder of the migration files (package data).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_FILE_NAME = re.compile(r"(?P<version>\d{3})_[a-z0-9_]+\.sql")
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_COMMENT_LINE = re.compile(r"^\s*--.*$", re.M)
_CREATE = re.compile(r"^CREATE (?P<kind>TABLE|MATERIALIZED VIEW|VIEW) IF NOT EXISTS (?P<db>\w+)\.(?P<name>\w+)\b")
_ENGINE = re.compile(r"^ENGINE = (?P<engine>\w*MergeTree)(?:\((?P<args>[^()]*)\))?$", re.M)
_ALTER = re.compile(r"^ALTER TABLE (?P<db>\w+)\.(?P<name>\w+)\b")
#: A materialized view's query replaced in place.
_MODIFY_QUERY = re.compile(r"^ALTER TABLE (?P<db>\w+)\.(?P<name>\w+)(?= MODIFY QUERY\b)")
#: Where a clause of an ALTER TABLE starts (the parts of a SET list or a GROUP BY start otherwise).
_ALTER_CLAUSE = re.compile(
    r"(?:ADD|DROP|MODIFY|RENAME|COMMENT|CLEAR|MATERIALIZE|REMOVE|UPDATE|DELETE|APPLY|ATTACH|DETACH"
    r"|FREEZE|UNFREEZE|MOVE|REPLACE|FETCH|RESET)\b"
)
#: The clauses that change the columns, which the Distributed table over a local table takes too.
_COLUMN_CLAUSE = re.compile(r"(?:ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN\b")

#: Replication of a cluster's tables: the server's macros fill in the Keeper path and replica name.
#: The bookkeeping of the migrations is one table replicated to every node (its path has no
#: shard), so its replica names must be unique across the cluster: shard and replica together.
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME = "{replica}"
CLUSTER_WIDE_PATH = "/clickhouse/tables/all/{database}/{table}"
CLUSTER_WIDE_REPLICA_NAME = "{shard}-{replica}"
#: Suffix of the replicated table on each node under the Distributed table of the plain name.
LOCAL_SUFFIX = "_local"
#: How a Distributed table spreads the rows it is given: by agent where the table has agent_id,
#: so an agent's events and the rollups built from them stay on one shard. The others name theirs.
SHARDING_KEYS = {
    "ingest_batches": "cityHash64(topic, partition)",
    "task_state_agg": "cityHash64(tenant_id, task_id)",
    "model_recommendations": "cityHash64(tenant_id)",
}
DEFAULT_SHARDING_KEY = "cityHash64(agent_id)"


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    checksum: str
    sql: str

    def statements(self, values: dict[str, str]) -> list[str]:
        """The migration's statements with the placeholders filled in from ``values``."""

        def fill(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in values:
                raise ConfigError(
                    f"ClickHouse migration {self.name}: unknown placeholder {{{key}}} "
                    f"(known: {', '.join(sorted(values))})"
                )
            return values[key]

        rendered = _PLACEHOLDER.sub(fill, _COMMENT_LINE.sub("", self.sql))
        chunks = (chunk.strip() for chunk in _STATEMENT_END.split(rendered))
        return [chunk for chunk in chunks if chunk]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in ``directory``, by version.

    :raises ConfigError: a ``.sql`` file is not named ``NNN_name.sql``, or two share a version.
    """
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise ConfigError(f"ClickHouse migration file {path} is not named NNN_name.sql (e.g. 004_indexes.sql)")
        version = int(match["version"])
        if version in migrations:
            raise ConfigError(
                f"ClickHouse migrations {migrations[version].name} and {path.stem} share version {version}"
            )
        data = path.read_bytes()
        migrations[version] = Migration(version, path.stem, hashlib.sha256(data).hexdigest(), data.decode())
    return [migrations[version] for version in sorted(migrations)]


def apply_migrations(
    client: Any, settings: Settings, directory: Path = MIGRATIONS_DIR, registry: SchemaRegistry | None = None
) -> list[str]:
    """Create the project database if missing, apply the migrations it has not had yet, and check
    that the event tables have every column the sinks insert.

    :param client: a clickhouse-connect client (see :func:`connectors.clickhouse.get_client`).
    :param directory: folder of the migration files; the package's own by default.
    :param registry: the event schemas whose current versions the sinks read; the repository's
        by default.
    :returns: the names of the migrations applied by this call, in order (empty when up to date).
    :raises ConfigError: an applied migration's file changed, a statement was refused or has no
        cluster form (the message names the migration), or ``EZ_CLICKHOUSE_CLUSTER`` is set for a
        database that was migrated for one server.
    :raises ~connectors.clickhouse.schema_check.MissingColumns: (a ConfigError) an event table
        lacks a column of its event's current schema, or has it with another type; the message
        names the event, table and column and the migration to add.
    :raises TransientError: ClickHouse could not be reached.
    """
    db = settings.clickhouse_database
    migrations = load_migrations(directory)
    if settings.clickhouse_cluster:
        _refuse_single_node_database(client, settings)
    _run(client, settings, "creating the migrations table", bookkeeping_statements(settings))
    applied = _applied(client, settings)
    done: list[str] = []
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None:
            if recorded != (migration.name, migration.checksum):
                raise ConfigError(
                    f"ClickHouse migration {migration.name} changed after it was applied to "
                    f"{db} (applied as {recorded[0]}, checksum {recorded[1][:12]}…, the file now has "
                    f"{migration.checksum[:12]}…): applied migrations are never edited, add a new one"
                )
            continue
        _run(client, settings, f"applying migration {migration.name}", render_migration(migration, settings, migrations))
        try:
            client.insert(
                f"{db}.schema_migrations",
                [[migration.version, migration.name, migration.checksum]],
                column_names=["version", "name", "checksum"],
            )
        except (ClickHouseError, OSError) as exc:
            raise _error(settings, f"recording migration {migration.name}", exc) from None
        done.append(migration.name)
    _require_columns(client, settings, directory, registry)
    return done


def _require_columns(client: Any, settings: Settings, directory: Path, registry: SchemaRegistry | None) -> None:
    # Imported here: schema_check applies migrations to a scratch engine, so it imports this module.
    from connectors.clickhouse.schema_check import MissingColumns, column_gaps

    try:
        gaps = column_gaps(client, settings, registry)
    except (ClickHouseError, OSError) as exc:
        raise _error(settings, "reading the columns of the event tables", exc) from None
    if gaps:
        raise MissingColumns(gaps, settings.clickhouse_database, directory)


def bookkeeping_statements(settings: Settings) -> list[str]:
    """The statements that create the project database and ``schema_migrations``."""
    db = settings.clickhouse_database
    columns = "version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)"
    cluster = settings.clickhouse_cluster
    if not cluster:
        return [
            f"CREATE DATABASE IF NOT EXISTS {db}",
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations ({columns}) ENGINE = MergeTree ORDER BY version",
        ]
    on_cluster = _on_cluster(cluster)
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}{on_cluster}",
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations{on_cluster} ({columns}) "
        f"ENGINE = ReplicatedMergeTree('{CLUSTER_WIDE_PATH}', '{CLUSTER_WIDE_REPLICA_NAME}') ORDER BY version",
    ]


def render_migration(
    migration: Migration, settings: Settings, migrations: list[Migration] | None = None
) -> list[str]:
    """The statements that apply ``migration`` with ``settings``: as written for one server, or
    in their cluster form when ``EZ_CLICKHOUSE_CLUSTER`` is set (see the module's docstring).

    :param migrations: every migration, for the names of the tables that earlier ones created
        (a view reads the local table of any of them); the package's own by default.
    :raises ConfigError: a placeholder is unknown, or a statement has no cluster form.
    """
    values = {"db": settings.clickhouse_database, "ttl_days": str(settings.clickhouse_ttl_days)}
    statements = migration.statements(values)
    cluster = settings.clickhouse_cluster
    if not cluster:
        return statements
    tables = _storage_tables(migrations if migrations is not None else load_migrations(), values)
    rendered: list[str] = []
    for statement in statements:
        rendered += _cluster_form(migration, statement, cluster, tables)
    return rendered


def _storage_tables(migrations: list[Migration], values: dict[str, str]) -> set[str]:
    """Names of the MergeTree-family tables the migrations create: the ones that get a local table."""
    tables = set()
    for migration in migrations:
        for statement in migration.statements(values):
            create = _CREATE.match(statement)
            if create and create["kind"] == "TABLE" and _ENGINE.search(statement):
                tables.add(create["name"])
    return tables


def storage_table(settings: Settings, table: str) -> str:
    """The table that holds ``table``'s rows: itself, or its ``_local`` table on a cluster (where
    ``table`` is the Distributed one, which takes no mutations)."""
    return f"{table}{LOCAL_SUFFIX}" if settings.clickhouse_cluster else table


def mutation_target(settings: Settings, table: str) -> str:
    """``db.table`` for ``ALTER TABLE … DELETE``; on a cluster the local tables on every shard."""
    db = settings.clickhouse_database
    if settings.clickhouse_cluster:
        return f"{db}.{storage_table(settings, table)}{_on_cluster(settings.clickhouse_cluster)}"
    return f"{db}.{table}"


def _on_cluster(cluster: str) -> str:
    # The settings allow only [A-Za-z0-9_.-] in the name, so quoting it as a literal is safe.
    return f" ON CLUSTER '{cluster}'"


def _cluster_form(migration: Migration, statement: str, cluster: str, tables: set[str]) -> list[str]:
    alter = _ALTER.match(statement)
    if alter is not None and alter["name"] in tables:
        return _cluster_alter(migration, statement, alter, cluster)
    modify_query = _MODIFY_QUERY.match(statement)
    if modify_query is not None:
        # Each node's view, as created, reads and writes the local tables: its new query does too.
        rest = _local_names(modify_query["db"], tables, statement[modify_query.end():])
        return [statement[: modify_query.end()] + _on_cluster(cluster) + rest]
    create = _CREATE.match(statement)
    if create is None:
        raise ConfigError(
            f"ClickHouse migration {migration.name}: `{statement.splitlines()[0]}` has no cluster form "
            "(only CREATE TABLE/MATERIALIZED VIEW/VIEW IF NOT EXISTS, ALTER TABLE of a MergeTree "
            "table the migrations create and ALTER TABLE … MODIFY QUERY of a view are rendered ON CLUSTER): extend connectors.clickhouse.migrations for it"
        )
    db, name, kind = create["db"], create["name"], create["kind"]
    on_cluster = _on_cluster(cluster)
    if kind == "VIEW":
        # A plain view reads the Distributed tables, which see every shard.
        return [statement[: create.end()] + on_cluster + statement[create.end():]]
    if kind == "MATERIALIZED VIEW":
        # Each node's view sees the blocks inserted into its own local table and writes its shard's part.
        if not tables:
            return [statement[: create.end()] + on_cluster + statement[create.end():]]
        return [statement[: create.end()] + on_cluster + _local_names(db, tables, statement[create.end():])]
    engine = _ENGINE.search(statement)
    if engine is None:
        raise ConfigError(
            f"ClickHouse migration {migration.name}: table {db}.{name} has no MergeTree engine on a line "
            "of its own (ENGINE = …MergeTree[(…)]), so it has no replicated cluster form"
        )
    args = ", ".join(filter(None, [f"'{REPLICA_PATH}'", f"'{REPLICA_NAME}'", engine["args"]]))
    local = (
        statement[: create.start("name")] + name + LOCAL_SUFFIX + on_cluster
        + statement[create.end(): engine.start()]
        + f"ENGINE = Replicated{engine['engine']}({args})"
        + statement[engine.end():].replace("non_replicated_deduplication_window", "replicated_deduplication_window")
    )
    key = SHARDING_KEYS.get(name)
    if key is None:
        if not re.search(r"^\s*agent_id\s", statement, re.M):
            raise ConfigError(
                f"ClickHouse migration {migration.name}: table {db}.{name} has no agent_id column "
                "to shard by: add its sharding key to connectors.clickhouse.migrations.SHARDING_KEYS"
            )
        key = DEFAULT_SHARDING_KEY
    distributed = (
        f"CREATE TABLE IF NOT EXISTS {db}.{name}{on_cluster} AS {db}.{name}{LOCAL_SUFFIX} "
        f"ENGINE = Distributed('{cluster}', '{db}', '{name}{LOCAL_SUFFIX}', {key})"
    )
    return [local, distributed]


def _local_names(db: str, tables: set[str], sql: str) -> str:
    """``sql`` with each storage table of ``db`` it names replaced by that table's local table."""
    names = re.compile(rf"\b{re.escape(db)}\.({'|'.join(map(re.escape, sorted(tables)))})\b")
    return names.sub(rf"{db}.\g<1>{LOCAL_SUFFIX}", sql)


def _cluster_alter(migration: Migration, statement: str, alter: re.Match[str], cluster: str) -> list[str]:
    db, name, rest = alter["db"], alter["name"], statement[alter.end():]
    changes_columns = {bool(_COLUMN_CLAUSE.match(clause)) for clause in _alter_clauses(rest)}
    if len(changes_columns) > 1:
        raise ConfigError(
            f"ClickHouse migration {migration.name}: `{statement.splitlines()[0]}` mixes clauses that change "
            "columns (ADD/DROP/MODIFY/RENAME/COMMENT COLUMN) with others: on a cluster the first go to the "
            "local and the Distributed table, the others to the local table only; split it into two statements"
        )
    on_cluster = _on_cluster(cluster)
    local = f"ALTER TABLE {db}.{name}{LOCAL_SUFFIX}{on_cluster}{rest}"
    if changes_columns == {True}:
        return [local, f"ALTER TABLE {db}.{name}{on_cluster}{rest}"]
    return [local]


def _alter_clauses(commands: str) -> list[str]:
    """The clauses of an ALTER TABLE's command list: its parts between top-level commas, each part
    that does not start a clause (an item of a SET list or GROUP BY) joined to the one before."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(commands):
        if char == "'":
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
        elif not quoted and char == "," and depth == 0:
            parts.append(commands[start:i].strip())
            start = i + 1
    parts.append(commands[start:].strip())
    clauses = [parts[0]]
    for part in parts[1:]:
        if _ALTER_CLAUSE.match(part):
            clauses.append(part)
        else:
            clauses[-1] += f", {part}"
    return clauses


def _refuse_single_node_database(client: Any, settings: Settings) -> None:
    """A database made for one server keeps plain tables: the cluster form would never be applied."""
    db = settings.clickhouse_database
    try:
        rows = client.query(
            "SELECT engine FROM system.tables WHERE database = %(db)s AND name = 'schema_migrations'",
            parameters={"db": db},
        ).result_rows
    except (ClickHouseError, OSError) as exc:
        raise _error(settings, "reading the engine of the migrations table", exc) from None
    if rows and not str(rows[0][0]).startswith("Replicated"):
        raise ConfigError(
            f"ClickHouse database {db} was migrated for one server ({db}.schema_migrations is "
            f"{rows[0][0]}), but EZ_CLICKHOUSE_CLUSTER is {settings.clickhouse_cluster}: its tables are not "
            "replicated; use a new database (EZ_CLICKHOUSE_DATABASE) for the cluster and copy the data over"
        )


def _applied(client: Any, settings: Settings) -> dict[int, tuple[str, str]]:
    # Two workers starting at once may both record a migration: any one row per version will do.
    sql = (
        f"SELECT version, any(name), any(checksum) FROM {settings.clickhouse_database}.schema_migrations "
        "GROUP BY version"
    )
    try:
        rows = client.query(sql).result_rows
    except (ClickHouseError, OSError) as exc:
        raise _error(settings, "reading the applied migrations", exc) from None
    return {int(version): (name, checksum) for version, name, checksum in rows}


def _run(client: Any, settings: Settings, doing: str, statements: list[str]) -> None:
    for statement in statements:
        try:
            client.command(statement)
        except (ClickHouseError, OSError) as exc:
            first_line = statement.splitlines()[0]
            raise _error(settings, f"{doing} ({first_line} …)", exc) from None


def _error(settings: Settings, doing: str, exc: ClickHouseError | OSError) -> EzStreamError:
    where = f"ClickHouse at {settings.clickhouse_dsn_redacted}"
    # Only a server that answered gives an error code; without one it was not reached. The
    # driver's text is left out then: it may quote the connection's URL.
    if getattr(exc, "code", None) is None:
        return TransientError(f"{where} is unavailable while {doing} ({type(exc).__name__})")
    return ConfigError(f"{where} refused {doing}: {str(exc).splitlines()[0]}")
