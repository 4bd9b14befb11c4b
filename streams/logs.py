"""Worker logging: plain text or one JSON object per line (``EZ_LOG_FORMAT``), secrets scrubbed.

A JSON line carries ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``process``,
``thread`` and whatever the call site passed as ``extra`` -- ``trace_id``, ``agent_id``, ``topic``,
``partition``, ``offset``, ``alert_id``... -- so a log pipeline can join a worker's lines to the
events (and the traces) they are about, e.g.::

    log.info("alert raised", extra={"trace_id": alert.trace_id, "alert_id": alert.alert_id})

A text line (off a terminal) is ``[time] [pid] [level] message``, then the same context as
``key=value`` pairs: ``... alert raised trace_id=4bf9... alert_id=8c1e...``.

Whatever the format, every secret value of the settings (SASL and key passwords, the S3 secret
key, the password of the ClickHouse DSN, the webhook URL) is replaced by ``***`` in every line,
exception text included: a library that prints a URL or a config dict cannot leak them.
"""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime, timezone
from urllib.parse import urlsplit

from connectors.settings import Settings

#: Attributes every LogRecord has (and ``extra``, which Faust's formatters set on a record they
#: format: the text of its ``data``); anything else on a record came from the call's ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "extra"}
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
#: A context value a text line writes as it is; any other is JSON-quoted.
_BARE = re.compile(r'[^\s"=]+')


def _context(record: logging.LogRecord) -> list[tuple[str, object]]:
    """The call's ``extra`` context on ``record``: what both formats write after the message."""
    return [(key, value) for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")]


def secret_values(settings: Settings) -> list[str]:
    """Every secret in ``settings`` (and the password inside the ClickHouse DSN), longest first."""
    values: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            raw = value.get_secret_value()
            if raw:
                values.append(raw)
    password = urlsplit(settings.clickhouse_dsn.get_secret_value()).password
    if password:
        values.append(password)
    # Short values would blank out ordinary words; the secrets worth guarding are longer.
    return sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)


class ScrubSecrets(logging.Filter):
    """Replaces each secret value in the record's final text (message, arguments, exception) and
    in its ``extra`` context (a dict or other object whose text, as both formats write it, holds a
    secret is replaced by that text, scrubbed)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.scrub(text)
            record.exc_info = None
        for key, value in list(vars(record).items()):
            if key in _STANDARD or value is None or isinstance(value, (int, float)):
                continue
            # Any other context value is written as its text in both formats: one whose text holds
            # a secret is replaced by that text, scrubbed (the others stay as they are).
            text = value if isinstance(value, str) else str(value)
            scrubbed = self.scrub(text)
            if scrubbed is not text:
                setattr(record, key, scrubbed)
        return True


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT` lines for a log that is not a terminal (a file, a pipe, a container's
    output). The arguments of a line go through the formatters Faust registers (its tables of
    topics and partitions), as in the coloured formatter Faust gives a worker; that one costs some
    45 µs a line (colorlog builds its map of escape codes for every record, to drop it when the
    stream is not a terminal), this one 4 -- at 20,000 events/s the alerts role logs 400 lines a
    second."""

    def __init__(self) -> None:
        from mode.utils.logging import ExtensionFormatter  # Faust's; only its argument formatting is used

        super().__init__(TEXT_FORMAT)
        self._faust_args = ExtensionFormatter(stream=io.StringIO())

    def format(self, record: logging.LogRecord) -> str:
        if record.args:
            self._faust_args._format_args(record)
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        """The line, then the call's ``extra`` context as ``key=value`` pairs (what a JSON line
        has as keys: an alert's trace_id and alert_id, a dead letter's topic, partition and
        offset), before any traceback."""
        line = super().formatMessage(record)
        context = [f"{key}={_text_value(value)}" for key, value in _context(record)]
        return f"{line} {' '.join(context)}" if context else line


def _text_value(value: object) -> str:
    """A context value as a text line writes it: bare, or JSON-quoted when it would not read back
    as one token (empty, or with a space, a quote or an equals sign)."""
    text = value if isinstance(value, str) else str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _to_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra`` fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for key, value in _context(record):
            line[key] = value if isinstance(value, (str, int, float)) or value is None else str(value)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["error"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def configure_handlers(settings: Settings, handlers: list[logging.Handler]) -> None:
    """Give ``handlers`` the configured format and the secret filter (idempotent). Text to a
    terminal keeps the handler's formatter (Faust's coloured one in a worker)."""
    scrub = ScrubSecrets(secret_values(settings))
    for handler in handlers:
        handler.filters = [f for f in handler.filters if not isinstance(f, ScrubSecrets)]
        handler.addFilter(scrub)
        if settings.log_format == "json":
            handler.setFormatter(JsonFormatter())
        elif not _to_terminal(handler):
            handler.setFormatter(TextFormatter())


def configure(settings: Settings, level: str | int = "INFO") -> None:
    """Root logging for a process that has none set up yet (the inference worker, scripts)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(TextFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    configure_handlers(settings, root.handlers)
