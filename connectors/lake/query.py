"""DuckDB over the lake: a connection with the httpfs and delta extensions, loaded offline.

The extensions come from the ``duckdb-extension-*`` wheels pinned beside DuckDB, so nothing is
downloaded at run time. :func:`register_tables` makes each Delta table of the lake a view named
as the table (``llm_calls``, ``task_events``…), so SQL reads like the ClickHouse side.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb

from connectors.errors import ConfigError, TransientError
from connectors.lake import is_s3, table_uri
from connectors.settings import Settings

EXTENSIONS = ("httpfs", "delta")


def _extension_file(name: str) -> Path:
    package = importlib.import_module(f"duckdb_extension_{name}")
    folder = Path(package.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    path = folder / f"{name}.duckdb_extension"
    if not path.exists():
        raise ConfigError(
            f"DuckDB {duckdb.__version__} has no matching duckdb-extension-{name} wheel "
            f"(looked for {path}); reinstall the project to get the pinned pair"
        )
    return path


def connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake's extensions loaded and its S3 credentials set."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for name in EXTENSIONS:
        con.execute(f"LOAD '{_extension_file(name)}'")
    if is_s3(settings):
        params = {"TYPE": "s3", "REGION": _quote(settings.s3_region)}
        if settings.s3_access_key_id:
            params["KEY_ID"] = _quote(settings.s3_access_key_id)
        if settings.s3_secret_access_key is not None:
            params["SECRET"] = _quote(settings.s3_secret_access_key.get_secret_value())
        if settings.s3_endpoint:
            endpoint = urlsplit(settings.s3_endpoint)
            params["ENDPOINT"] = _quote(endpoint.netloc)
            params["USE_SSL"] = "true" if endpoint.scheme == "https" else "false"
            params["URL_STYLE"] = "'path'"
        body = ", ".join(f"{key} {value}" for key, value in params.items())
        con.execute(f"CREATE OR REPLACE SECRET lake ({body})")
    return con


def list_tables(settings: Settings) -> list[str]:
    """Names of the Delta tables directly under the lake root (folders with a ``_delta_log/``).

    :raises TransientError: the S3 store cannot be listed (unreachable, or access denied).
    """
    if not is_s3(settings):
        root = Path(urlsplit(settings.lake_uri).path)
        if not root.is_dir():
            return []
        return sorted(child.name for child in root.iterdir() if (child / "_delta_log").is_dir())
    from botocore.exceptions import BotoCoreError, ClientError

    location = urlsplit(settings.lake_uri)
    bucket, prefix = location.netloc, location.path.strip("/")
    prefix = f"{prefix}/" if prefix else ""
    s3 = _s3_client(settings)
    try:
        names = []
        # Delimiter lists only the folders under the root, never the (many) data files below them.
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            for folder in page.get("CommonPrefixes", []):
                log = s3.list_objects_v2(Bucket=bucket, Prefix=f"{folder['Prefix']}_delta_log/", MaxKeys=1)
                if log.get("KeyCount", 0):
                    names.append(folder["Prefix"][len(prefix):].rstrip("/"))
    except (BotoCoreError, ClientError) as exc:
        raise TransientError(f"lake {settings.lake_uri}: cannot list its tables: {exc}") from None
    return sorted(names)


def register_tables(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[str]:
    """Create (or replace) one view per Delta table of the lake on ``con``; returns their names.

    ``con`` comes from :func:`connect` with the same settings (it holds the extensions and the S3
    secret). Each view reads the table's latest version through ``delta_scan``.
    """
    names = list_tables(settings)
    for name in names:
        view = '"' + name.replace('"', '""') + '"'
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM delta_scan({_quote(table_uri(settings, name))})")
    return names


def lake_query(settings: Settings, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` over the lake's tables (as views named as the tables); column names and rows.

    :raises duckdb.Error: the SQL is invalid or fails (DuckDB's message names the problem).
    """
    con = connect(settings)
    try:
        register_tables(con, settings)
        result = con.execute(sql)
        columns = [column[0] for column in result.description or []]
        return columns, result.fetchall()
    finally:
        con.close()


def _s3_client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    secret = settings.s3_secret_access_key
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
        # MinIO and most S3-compatible stores serve buckets by path, not by virtual host.
        config=Config(retries={"max_attempts": 3}, s3={"addressing_style": "path" if settings.s3_endpoint else "auto"}),
    )


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
