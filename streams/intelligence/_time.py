"""Conversions between event datetimes and the epoch milliseconds the state machines use."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
DAY_MS = 86_400_000


def epoch_ms(moment: datetime | int) -> int:
    """Milliseconds since the epoch of an aware datetime (naive ones are taken as UTC); epoch
    milliseconds as they are (the rows the alerts role decodes carry those)."""
    if isinstance(moment, int):
        return moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    # Integer timedelta division: float timestamps can be off by one millisecond.
    return (moment - _EPOCH) // _MS


def utc(ms: int) -> datetime:
    """The aware UTC datetime of epoch milliseconds."""
    return _EPOCH + ms * _MS
