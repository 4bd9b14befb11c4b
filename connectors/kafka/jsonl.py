"""JSON lines -> validated Avro events on a topic (what ``ezstream produce`` runs).

Each line is one event object with the schema's field names. ``event_id`` and ``event_time`` may
be left out (a new UUID, the current time); ``event_time`` may be epoch milliseconds or an ISO
8601 timestamp. A bad line is reported with its number and reason; the good lines still go.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from connectors.errors import TerminalError
from connectors.kafka.events import EVENT_TYPES
from connectors.kafka.producer import EventProducer
from connectors.kafka.schemas import default_registry


@dataclass
class JsonlReport:
    """What happened to each line."""

    sent: int = 0
    #: (line number, reason) of every line that was not sent.
    rejected: list[tuple[int, str]] = field(default_factory=list)


def produce_jsonl(producer: EventProducer, topic: str, lines: Iterable[str]) -> JsonlReport:
    """Send each non-blank line of ``lines`` as an event of ``topic`` (a catalogue topic name)."""
    event = default_registry().event_for_topic(topic)
    cls = EVENT_TYPES[event]
    report = JsonlReport()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            if isinstance(obj.get("event_time"), str):
                obj["event_time"] = _parse_time(obj["event_time"])
            producer.send(cls(**obj))
        except json.JSONDecodeError as exc:
            report.rejected.append((number, f"not JSON: {exc.msg} at column {exc.colno}"))
        except TypeError as exc:
            # The dataclass constructor names missing and unexpected fields.
            report.rejected.append((number, str(exc).replace(f"{cls.__name__}.__init__() ", "")))
        except (ValueError, TerminalError) as exc:
            report.rejected.append((number, str(exc)))
        else:
            report.sent += 1
    return report


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"event_time {text!r} is neither epoch milliseconds nor an ISO 8601 timestamp") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
