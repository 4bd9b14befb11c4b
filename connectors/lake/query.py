"""DuckDB over the lake: a connection with the httpfs and delta extensions, loaded offline.

The extensions come from the ``duckdb-extension-*`` wheels pinned beside DuckDB, so nothing is
downloaded at run time.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from connectors.errors import ConfigError
from connectors.lake import is_s3
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


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
