"""Reading and writing the lake for the batch jobs: event tables by time range, report files."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from connectors.kafka.codec import default_codec
from connectors.kafka.schemas import TOPIC_EVENTS
from connectors.lake import is_s3, storage_options, table_uri
from connectors.settings import Settings
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, TABLES

#: Partition column of the event tables (see :mod:`connectors.lake.sink`).
EVENT_DATE = "event_date"
EVENT_TIME = "event_time"
#: Folder under the lake root that holds the reports (tables and files).
REPORTS = "reports"
#: The report tables (Delta) under :data:`REPORTS`.
COST_TABLE = f"{REPORTS}/daily_cost"
BUDGET_TABLE = f"{REPORTS}/daily_budget_use"
RECOMMENDATIONS_TABLE = f"{REPORTS}/model_recommendations"
REPORT_TABLES = (COST_TABLE, BUDGET_TABLE, RECOMMENDATIONS_TABLE)


def utc(at: datetime) -> datetime:
    """``at`` as an aware UTC datetime (naive values are taken as UTC)."""
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def event_dates(start: datetime, end: datetime) -> list[date]:
    """The UTC dates that ``[start, end)`` touches."""
    start, end = utc(start), utc(end)
    if end <= start:
        return []
    last = (end - timedelta(microseconds=1)).date()
    return [start.date() + timedelta(days=i) for i in range((last - start.date()).days + 1)]


def event_table_names(tables: list[str] | None = None) -> list[str]:
    """The event tables to work on: ``tables`` (checked against the catalogue) or all of them."""
    known = list(TABLES.values())
    if not tables:
        return known
    unknown = sorted(set(tables) - set(known))
    if unknown:
        raise ValueError(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [t for t in known if t in tables]


def event_of(table: str) -> str:
    """The event (schema) name of an event table."""
    topic = next(topic for topic, name in TABLES.items() if name == table)
    return TOPIC_EVENTS[topic]


def open_table(settings: Settings, table: str) -> DeltaTable | None:
    """The lake table ``table`` (a path under the lake root), or None while it does not exist."""
    try:
        return DeltaTable(table_uri(settings, table), storage_options=storage_options(settings))
    except TableNotFoundError:
        return None


def read_rows(delta: DeltaTable, start: datetime, end: datetime, columns: list[str] | None = None) -> pa.Table:
    """The rows with ``start <= event_time < end``; only the partitions of those dates are read."""
    dates = [d.isoformat() for d in event_dates(start, end)]
    if not dates:
        raise ValueError(f"empty time range {start.isoformat()} .. {end.isoformat()}")
    dataset = delta.to_pyarrow_dataset(file_pruning_predicate=[(EVENT_DATE, "in", dates)])
    time = ds.field(EVENT_TIME)
    return dataset.to_table(
        columns=columns, filter=(time >= pa.scalar(utc(start), pa.timestamp("us", "UTC")))
        & (time < pa.scalar(utc(end), pa.timestamp("us", "UTC"))),
    )


def clickhouse_rows(table: str, rows: pa.Table) -> pa.Table:
    """Lake rows of ``table`` shaped as the ClickHouse sink inserts them (the event's columns in
    their own types, then the Kafka partition and offset)."""
    schema = default_codec().arrow_schema(event_of(table))
    schema = schema.append(pa.field(PARTITION_COLUMN, pa.int32())).append(pa.field(OFFSET_COLUMN, pa.int64()))
    present = [f for f in schema if f.name in rows.column_names]
    return rows.select([f.name for f in present]).cast(pa.schema(present))


def write_file(settings: Settings, path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` under the lake root (a local folder or S3); returns its URI."""
    from pyarrow import fs

    uri = f"{settings.lake_uri}/{path}"
    if is_s3(settings):
        location = urlsplit(uri)
        key = f"{location.netloc}{location.path}"
        endpoint = urlsplit(settings.s3_endpoint) if settings.s3_endpoint else None
        secret = settings.s3_secret_access_key
        store = fs.S3FileSystem(
            access_key=settings.s3_access_key_id,
            secret_key=secret.get_secret_value() if secret is not None else None,
            region=settings.s3_region,
            endpoint_override=endpoint.netloc if endpoint else None,
            scheme=endpoint.scheme if endpoint else "https",
        )
    else:
        key = urlsplit(uri).path
        store = fs.LocalFileSystem()
        store.create_dir(key.rsplit("/", 1)[0], recursive=True)
    with store.open_output_stream(key) as out:
        out.write(data)
    return uri
