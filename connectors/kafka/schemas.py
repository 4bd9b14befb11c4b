"""The Avro schemas of the event topics, read from ``schemas/<event>/v<N>.avsc``.

One folder per event (the snake_case form of the record name, ``TaskEvent`` -> ``task_event``),
one file per version. A new version is a new file, never an edit: messages on the topics name
their writer schema by fingerprint, and a reader must still find every version ever written.

The :class:`SchemaRegistry` parses every version once and serves it by event and version or by
the CRC-64-AVRO fingerprint carried in each message (Avro single-object encoding).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import SchemaParseException, expand_schema, fingerprint, to_parsing_canonical_form

from connectors.errors import ConfigError
from connectors.kafka.topics import EVENT_TOPICS

#: ``schemas/`` at the repository root; an editable install imports the package from the
#: checkout, so this holds for both.
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"

_VERSION_FILE = re.compile(r"v([1-9][0-9]*)\.avsc")


def event_name(record_name: str) -> str:
    """The event (folder) name of an Avro record name: ``TaskEvent`` -> ``task_event``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", record_name.rsplit(".", 1)[-1]).lower()


#: Event topic -> event name, derived from :data:`connectors.kafka.topics.EVENT_TOPICS`.
TOPIC_EVENTS: dict[str, str] = {topic: event_name(record) for topic, record in EVENT_TOPICS.items()}


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one event schema, parsed and fingerprinted."""

    event: str
    version: int
    path: Path
    #: The schema with names fully qualified and named types inlined; docs and defaults kept.
    schema: dict[str, Any]
    #: fastavro's parsed form, what ``schemaless_writer`` / ``schemaless_reader`` take.
    parsed: dict[str, Any]
    #: Parsing Canonical Form (Avro spec): what the fingerprint is computed from.
    canonical_form: str
    #: CRC-64-AVRO of :attr:`canonical_form`, as the 8 little-endian bytes of a message header.
    fingerprint: bytes

    @property
    def label(self) -> str:
        """``task_event v2``: how messages and reports name this version."""
        return f"{self.event} v{self.version}"


def load_version(event: str, version: int, path: Path) -> SchemaVersion:
    """Parse and fingerprint one ``.avsc`` file; :class:`ConfigError` names the file if it is bad."""
    try:
        definition = json.loads(path.read_text())
        parsed = parse_schema(definition)
    except (OSError, ValueError, TypeError, KeyError, SchemaParseException) as exc:
        # fastavro reports malformed schemas as any of these, not one exception type.
        raise ConfigError(f"{path}: not a valid Avro schema: {exc}") from None
    if parsed.get("type") != "record" or event_name(parsed["name"]) != event:
        expected = "".join(part.title() for part in event.split("_"))
        raise ConfigError(
            f"{path}: the folder {event!r} must hold a record named {expected!r}, "
            f"found {parsed.get('type')} {parsed.get('name')!r}"
        )
    canonical = to_parsing_canonical_form(parsed)
    return SchemaVersion(
        event=event,
        version=version,
        path=path,
        schema=expand_schema(parsed),
        parsed=parsed,
        canonical_form=canonical,
        # fastavro's hex string is already the little-endian byte order of the single-object header.
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
    )


class SchemaRegistry:
    """Every schema version under a ``schemas/`` folder, parsed once.

    :param schemas_dir: the folder to read; the repository's ``schemas/`` by default.
    :raises ConfigError: the folder is missing or empty, or holds a bad file (named in the message).
    """

    def __init__(self, schemas_dir: Path | str | None = None) -> None:
        self.schemas_dir = Path(schemas_dir) if schemas_dir is not None else SCHEMAS_DIR
        if not self.schemas_dir.is_dir():
            raise ConfigError(f"schema folder {self.schemas_dir} does not exist")
        self._versions: dict[str, dict[int, SchemaVersion]] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for folder in sorted(p for p in self.schemas_dir.iterdir() if p.is_dir()):
            found: dict[int, SchemaVersion] = {}
            for path in sorted(folder.glob("*.avsc")):
                match = _VERSION_FILE.fullmatch(path.name)
                if match is None:
                    raise ConfigError(f"{path}: schema files are named v<N>.avsc (v1.avsc, v2.avsc, ...)")
                version = int(match.group(1))
                found[version] = load_version(folder.name, version, path)
            if found:
                self._versions[folder.name] = dict(sorted(found.items()))
        if not self._versions:
            raise ConfigError(f"schema folder {self.schemas_dir} holds no <event>/v<N>.avsc file")
        for versions in self._versions.values():
            for schema_version in versions.values():
                # Versions that differ only in docs or defaults share a fingerprint; their binary
                # encoding is the same, so the later one may stand for both.
                self._by_fingerprint[schema_version.fingerprint] = schema_version

    @property
    def events(self) -> list[str]:
        """Names of the events that have a schema, sorted."""
        return list(self._versions)

    def versions(self, event: str) -> list[int]:
        """The versions of ``event``, oldest first."""
        return list(self._event(event))

    def get(self, event: str, version: int | None = None) -> SchemaVersion:
        """Version ``version`` of ``event``; the current one when ``version`` is None."""
        versions = self._event(event)
        if version is None:
            return next(reversed(versions.values()))
        try:
            return versions[version]
        except KeyError:
            raise ConfigError(f"event {event!r} has no schema version {version} (has {list(versions)})") from None

    def current(self, event: str) -> SchemaVersion:
        """The latest version of ``event``: the one producers write and consumers read into."""
        return self.get(event)

    def by_fingerprint(self, fingerprint_bytes: bytes) -> SchemaVersion | None:
        """The version whose CRC-64-AVRO fingerprint (8 little-endian bytes) is given, if any."""
        return self._by_fingerprint.get(fingerprint_bytes)

    def event_for_topic(self, topic: str) -> str:
        """The event carried by ``topic`` (e.g. ``agent.tasks`` -> ``task_event``)."""
        try:
            event = TOPIC_EVENTS[topic]
        except KeyError:
            raise ConfigError(f"{topic!r} is not an event topic (known: {', '.join(TOPIC_EVENTS)})") from None
        self._event(event)
        return event

    def _event(self, event: str) -> dict[int, SchemaVersion]:
        try:
            return self._versions[event]
        except KeyError:
            raise ConfigError(
                f"no schema for event {event!r} in {self.schemas_dir} (known: {', '.join(self._versions)})"
            ) from None


@cache
def default_registry() -> SchemaRegistry:
    """The registry of the repository's ``schemas/`` folder, loaded on first use and then shared."""
    return SchemaRegistry()
