"""Compatibility of consecutive schema versions, in both directions.

For each event, version N must be *backward* compatible with N-1 (a consumer on N reads data
written with N-1) and *forward* compatible (a consumer still on N-1 reads data written with N),
so producers and consumers can be upgraded in any order.

Two checks, because each covers what the other cannot:

* a static walk of the Avro resolution rules, which explains a failure and names the field
  (a field added without a default, a type change Avro cannot promote, an enum symbol the reader
  lacks while its enum has no default, a changed logical type that would be misread silently);
* a real resolution: sample records covering every field, both sides of every nullable union and
  every enum symbol are written with the writer schema and read with the reader schema by
  fastavro, the library the codec uses, so the verdict is the one production will see.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import expand_schema

from connectors.kafka.schemas import SchemaRegistry

Direction = Literal["backward", "forward"]

#: Writer type -> reader types it can be read as (Avro specification, "Schema Resolution").
_PROMOTIONS: dict[str, set[str]] = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


@dataclass(frozen=True)
class Problem:
    """One incompatibility between two versions of an event schema."""

    event: str | None
    old_version: int | None
    new_version: int | None
    #: ``backward``: the new version reads old data; ``forward``: the old version reads new data.
    direction: Direction
    #: Dotted path of the field (``details.<value>`` for a map value, ``inputs[]`` for array
    #: items); empty when the problem is the record itself.
    field: str
    message: str

    def __str__(self) -> str:
        old = f"v{self.old_version}" if self.old_version is not None else "old"
        new = f"v{self.new_version}" if self.new_version is not None else "new"
        reads = f"{new} reads {old} data" if self.direction == "backward" else f"{old} reads {new} data"
        where = f"field {self.field!r}" if self.field else "record"
        return f"{self.event or 'schema'} {old} -> {new}, {self.direction} ({reads}): {where}: {self.message}"


def check_pair(
    old_schema: Any,
    new_schema: Any,
    *,
    event: str | None = None,
    old_version: int | None = None,
    new_version: int | None = None,
) -> list[Problem]:
    """The problems that keep ``new_schema`` from replacing ``old_schema``, in both directions.

    The schemas are Avro schema definitions (the JSON of an ``.avsc`` file, parsed or not);
    ``event`` and the versions only label the problems.
    """
    old, new = expand_schema(old_schema), expand_schema(new_schema)
    old_label = f"v{old_version}" if old_version is not None else "the old version"
    new_label = f"v{new_version}" if new_version is not None else "the new version"
    problems: list[Problem] = []
    directions: list[tuple[Direction, Any, str, Any, str]] = [
        ("backward", old, old_label, new, new_label),
        ("forward", new, new_label, old, old_label),
    ]
    for direction, writer, writer_label, reader, reader_label in directions:
        found = _Resolution(writer_label, reader_label).check(writer, reader, "")
        if not found:
            # The static rules passed: confirm with the real reader, which has the final say.
            failure = _resolve_samples(writer, reader)
            if failure is not None:
                found = [("", f"fastavro cannot read {writer_label} data with {reader_label}: {failure}")]
        problems += [Problem(event, old_version, new_version, direction, path, why) for path, why in found]
    return problems


def check_all(schemas_dir: Path | str | None = None) -> list[Problem]:
    """Check every pair of consecutive versions of every event under ``schemas_dir``.

    :param schemas_dir: the repository's ``schemas/`` by default.
    :raises ConfigError: a schema file cannot be read or parsed.
    """
    registry = SchemaRegistry(schemas_dir)
    problems: list[Problem] = []
    for event in registry.events:
        versions = registry.versions(event)
        for old, new in zip(versions, versions[1:]):
            problems += check_pair(
                registry.get(event, old).schema, registry.get(event, new).schema,
                event=event, old_version=old, new_version=new,
            )
    return problems


def format_report(problems: list[Problem]) -> str:
    """A human-readable report of :func:`check_all`'s result, one problem per line."""
    if not problems:
        return "schemas compatible: every version is backward and forward compatible with the previous one"
    lines = [f"{len(problems)} schema compatibility problem(s):"]
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines)


def sample_records(schema: Any) -> list[dict[str, Any]]:
    """Deterministic records of a record schema that together cover every field, both branches of
    every union (so nullable fields are null and set), every enum symbol and empty and filled
    arrays and maps.
    """
    expanded = expand_schema(schema)
    count = max(3, _variety(expanded))
    return [_sample(expanded, i) for i in range(count)]


class _Resolution:
    """The static Avro resolution rules, collecting ``(field path, why)`` for every violation."""

    def __init__(self, writer_label: str, reader_label: str) -> None:
        self.writer = writer_label
        self.reader = reader_label

    def check(self, writer: Any, reader: Any, path: str) -> list[tuple[str, str]]:
        if isinstance(writer, list):
            # Every branch the writer may have used must be readable.
            return [problem for branch in writer for problem in self.check(branch, reader, path)]
        if isinstance(reader, list):
            if any(not self.check(writer, branch, path) for branch in reader):
                return []
            return [(path, f"{self.writer} writes {_type_text(writer)}, which matches no branch of "
                           f"{self.reader}'s union {[_type_text(b) for b in reader]}")]
        writer_type, reader_type = _type_of(writer), _type_of(reader)
        if writer_type != reader_type:
            if reader_type in _PROMOTIONS.get(writer_type, set()):
                return self._logical(writer, reader, path)
            return [(path, f"type changed from {_type_text(writer)} ({self.writer}) to {_type_text(reader)} "
                           f"({self.reader}), which Avro cannot convert")]
        if writer_type in ("record", "enum", "fixed") and not _same_name(writer, reader):
            return [(path, f"{writer_type} {writer['name']} of {self.writer} is named {reader['name']} "
                           f"in {self.reader}")]
        if writer_type == "record":
            return self._record(writer, reader, path)
        if writer_type == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                return [(path, f"{self.reader}'s enum {reader['name']} lacks the symbol(s) {', '.join(missing)} "
                               f"of {self.writer} and has no default to read them as")]
            return []
        if writer_type == "fixed" and writer["size"] != reader["size"]:
            return [(path, f"fixed size changed from {writer['size']} to {reader['size']}")]
        if writer_type == "array":
            return self.check(writer["items"], reader["items"], f"{path}[]")
        if writer_type == "map":
            return self.check(writer["values"], reader["values"], f"{path}.<value>")
        return self._logical(writer, reader, path)

    def _record(self, writer: dict[str, Any], reader: dict[str, Any], path: str) -> list[tuple[str, str]]:
        written = {field["name"]: field for field in writer["fields"]}
        problems = []
        for field in reader["fields"]:
            field_path = f"{path}.{field['name']}" if path else field["name"]
            source = next(
                (written[name] for name in [field["name"], *field.get("aliases", [])] if name in written), None
            )
            if source is not None:
                problems += self.check(source["type"], field["type"], field_path)
            elif "default" not in field:
                problems.append((field_path, f"{self.reader} has this field without a default, "
                                             f"and data written with {self.writer} lacks it"))
        # Fields only the writer has are skipped by the reader: never a problem.
        return problems

    def _logical(self, writer: Any, reader: Any, path: str) -> list[tuple[str, str]]:
        # Binary-compatible, but the reader would give the value another meaning (ms vs. µs, ...).
        before, after = _logical_type(writer), _logical_type(reader)
        if before != after:
            return [(path, f"logical type changed from {before or 'none'} ({self.writer}) to "
                           f"{after or 'none'} ({self.reader}); values would be misread")]
        return []


def _resolve_samples(writer: Any, reader: Any) -> str | None:
    """The first error fastavro raises reading the writer's sample records with the reader, if any."""
    parsed_writer, parsed_reader = parse_schema(writer), parse_schema(reader)
    for record in sample_records(writer):
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed_writer, record)
        buffer.seek(0)
        try:
            schemaless_reader(buffer, parsed_writer, parsed_reader)
        except Exception as exc:  # fastavro has no common base class for resolution errors
            return f"{type(exc).__name__}: {exc}"
    return None


def _type_of(schema: Any) -> str:
    if isinstance(schema, dict):
        return _type_of(schema["type"]) if isinstance(schema["type"], dict) else schema["type"]
    return schema


def _logical_type(schema: Any) -> str | None:
    return schema.get("logicalType") if isinstance(schema, dict) else None


def _type_text(schema: Any) -> str:
    if isinstance(schema, list):
        return " | ".join(_type_text(branch) for branch in schema)
    text = _type_of(schema)
    if text in ("record", "enum", "fixed"):
        return f"{text} {schema['name']}"
    if _logical_type(schema):
        return f"{text} ({_logical_type(schema)})"
    return text


def _same_name(writer: dict[str, Any], reader: dict[str, Any]) -> bool:
    # The specification compares unqualified names; reader aliases may name the writer's type.
    unqualified = writer["name"].rsplit(".", 1)[-1]
    names = [reader["name"], *reader.get("aliases", [])]
    return unqualified in {name.rsplit(".", 1)[-1] for name in names}


def _variety(schema: Any) -> int:
    """How many sample records it takes to show every union branch and enum symbol."""
    if isinstance(schema, list):
        return max(len(schema), *(_variety(branch) for branch in schema))
    kind = _type_of(schema)
    if kind == "record":
        return max((_variety(field["type"]) for field in schema["fields"]), default=1)
    if kind == "enum":
        return len(schema["symbols"])
    if kind == "array":
        return _variety(schema["items"])
    if kind == "map":
        return _variety(schema["values"])
    return 1


def _sample(schema: Any, i: int) -> Any:
    if isinstance(schema, list):
        return _sample(schema[i % len(schema)], i)
    kind = _type_of(schema)
    if kind == "record":
        return {field["name"]: _sample(field["type"], i) for field in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][i % len(schema["symbols"])]
    if kind == "array":
        # i, i+1, ...: item j shows union branch / enum symbol i+j, and i % 3 == 0 an empty array.
        return [_sample(schema["items"], i + j) for j in range(i % 3)]
    if kind == "map":
        return {f"key{j}": _sample(schema["values"], i + j) for j in range(i % 3)}
    if kind == "fixed":
        return bytes([i % 256]) * schema["size"]
    if _logical_type(schema) == "uuid":
        return str(uuid.UUID(int=i + 1))
    return {
        "null": None,
        "boolean": i % 2 == 0,
        "int": i,
        "long": 1_700_000_000_000 + i,
        "float": i + 0.5,
        "double": i + 0.25,
        "string": f"sample-{i}",
        "bytes": f"sample-{i}".encode(),
    }[kind]
