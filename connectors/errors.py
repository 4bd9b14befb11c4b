"""The one error tree of EzAigent Streams.

Retry or dead-letter is decided by type: a :class:`TransientError` is retried (with the affected
partitions paused), a :class:`TerminalError` sends the data that caused it to its DLQ.
"""


class EzStreamError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(EzStreamError):
    """A setting is missing or has a bad value; raised at start, names the setting."""


class ServiceError(EzStreamError):
    """A local service (infra/local) could not be fetched, started, checked or stopped."""


class TransientError(EzStreamError):
    """A dependency is unavailable or slow; the same operation may succeed later."""


class TerminalError(EzStreamError):
    """The data itself is wrong; retrying cannot help."""
