"""Versioned SQL migrations of the project's ClickHouse database, applied in order at set-up.

A migration is a file ``NNN_name.sql`` in :data:`MIGRATIONS_DIR`: ``NNN`` is its version, the
stem (``001_events``) its name. Files are templates: ``{db}`` is the project database
(``EZ_CLICKHOUSE_DATABASE``) and ``{ttl_days}`` the row TTL (``EZ_CLICKHOUSE_TTL_DAYS``), both
filled in when a table is created: a later change of the TTL setting leaves existing tables as
they are. A statement ends with a ``;`` at the end of a line; lines starting with ``--`` are
comments.

Each applied migration is recorded in ``{db}.schema_migrations`` with the SHA-256 of its file, so
a second run applies nothing and an applied migration whose file changed is refused: a change
is a new migration, never an edit. ClickHouse has no transactional DDL, so every statement must
be idempotent (``CREATE … IF NOT EXISTS``): a migration interrupted half-way, or applied by two
workers starting at once, is simply applied again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from connectors.errors import ConfigError, EzStreamError, TransientError
from connectors.settings import Settings

#: Folder of the migration files (package data).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_FILE_NAME = re.compile(r"(?P<version>\d{3})_[a-z0-9_]+\.sql")
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_COMMENT_LINE = re.compile(r"^\s*--.*$", re.M)


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


def apply_migrations(client: Any, settings: Settings, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Create the project database if missing and apply the migrations it has not had yet.

    :param client: a clickhouse-connect client (see :func:`connectors.clickhouse.get_client`).
    :param directory: folder of the migration files; the package's own by default.
    :returns: the names of the migrations applied by this call, in order (empty when up to date).
    :raises ConfigError: an applied migration's file changed, or a statement was refused
        (the message names the migration).
    :raises TransientError: ClickHouse could not be reached.
    """
    db = settings.clickhouse_database
    values = {"db": db, "ttl_days": str(settings.clickhouse_ttl_days)}
    migrations = load_migrations(directory)
    _run(client, settings, "creating the migrations table", [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations ("
        "version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)"
        ") ENGINE = MergeTree ORDER BY version",
    ])
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
        _run(client, settings, f"applying migration {migration.name}", migration.statements(values))
        try:
            client.insert(
                f"{db}.schema_migrations",
                [[migration.version, migration.name, migration.checksum]],
                column_names=["version", "name", "checksum"],
            )
        except (ClickHouseError, OSError) as exc:
            raise _error(settings, f"recording migration {migration.name}", exc) from None
        done.append(migration.name)
    return done


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
