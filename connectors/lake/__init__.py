"""The data lake: Delta Lake tables under ``EZ_LAKE_URI`` (local folder or S3/MinIO)."""

from __future__ import annotations

from connectors.settings import Settings


def is_s3(settings: Settings) -> bool:
    return settings.lake_uri.startswith(("s3://", "s3a://"))


def table_uri(settings: Settings, table: str) -> str:
    """The URI of the Delta table ``table`` under the lake root."""
    return f"{settings.lake_uri}/{table}"


def storage_options(settings: Settings) -> dict[str, str]:
    """delta-rs storage options for the lake; empty for a local folder.

    Commits must stay safe with several writers, so S3 commits use conditional writes
    (``aws_conditional_put=etag``, which MinIO and AWS S3 honour); unsafe rename is never enabled.
    """
    if not is_s3(settings):
        return {}
    options = {"AWS_REGION": settings.s3_region, "aws_conditional_put": "etag"}
    if settings.s3_endpoint:
        options["AWS_ENDPOINT_URL"] = settings.s3_endpoint
        if settings.s3_endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if settings.s3_access_key_id:
        options["AWS_ACCESS_KEY_ID"] = settings.s3_access_key_id
    if settings.s3_secret_access_key is not None:
        options["AWS_SECRET_ACCESS_KEY"] = settings.s3_secret_access_key.get_secret_value()
    return options
