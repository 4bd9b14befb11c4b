"""The native batch decoder: :meth:`Codec.decode_batch_arrow`'s contract, in Rust (``native/``).

The extension ``ezstream_native`` (pyo3 on arrow-rs' arrow-avro) decodes a batch of Avro
single-object messages, and JSON objects among them (``native/src/json/``, by the rules of
:mod:`connectors.kafka.jsonrecord`), into one Arrow record batch with the GIL released. This module builds its
decoders from a :class:`~connectors.kafka.codec.Codec`'s registry, one per event, and returns the
same :class:`~connectors.kafka.codec.ArrowBatch` as the fastavro path: the table typed by
:meth:`Codec.arrow_schema`, the same failure class for each message, the UUID check included
(tests/unit/test_native_codec.py proves it). Failure messages carry the same facts in other words.

Bytes that are not valid Avro but that fastavro still reads are failures here (UndecodableBody),
never values: an enum index or union branch below zero (fastavro takes ``symbols[-1]``), a
varint longer than 64 bits (fastavro wraps it), a negative block size (fastavro ignores it), a
body that ends inside, or has a negative length in, a field the reader skips (fastavro skips to
the end), and an ``int`` past 32 bits (fastavro reads it, and the fastavro path's table then
fails for the whole batch, where here only its message fails).

The extension is built by ``make native``. A missing one, or one built from other sources than
``native/`` holds now (the hash of :data:`SOURCE_FILES` and of every file under ``native/src``,
``json/`` included, which ``build.rs`` embeds as ``SOURCE_HASH``), is a :class:`ConfigError`
naming that command: there is no silent fallback to the Python path.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from connectors.errors import ConfigError
from connectors.kafka.codec import ArrowBatch, Codec, Failure, default_codec
from connectors.kafka.schemas import SchemaVersion

#: The crate: ``native/`` at the repository root (an editable install imports from the checkout).
NATIVE_DIR = Path(__file__).resolve().parents[2] / "native"
#: What builds and installs the extension into the project's venv.
BUILD_COMMAND = "make native"
#: Hashed with every file under ``native/src``; the same list as ``FILES`` in ``native/build.rs``.
SOURCE_FILES = ("Cargo.lock", "Cargo.toml", "build.rs", "pyproject.toml")


def source_hash(native_dir: Path = NATIVE_DIR) -> str:
    """SHA-256 of the crate's sources, computed as ``native/build.rs`` does."""
    names = [*SOURCE_FILES, *(p.relative_to(native_dir).as_posix() for p in (native_dir / "src").rglob("*") if p.is_file())]
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0")
        digest.update((native_dir / name).read_bytes() + b"\0")
    return digest.hexdigest()


@cache
def load_extension() -> ModuleType:
    """The ``ezstream_native`` module, checked to be built from the sources in :data:`NATIVE_DIR`.

    :raises ConfigError: it is not installed, or it is stale; the message names :data:`BUILD_COMMAND`.
    """
    try:
        module = importlib.import_module("ezstream_native")
    except ImportError as exc:
        raise ConfigError(f"the native decoder is not built ({exc}); build it with `{BUILD_COMMAND}` "
                          f"(needs Rust's cargo: https://rustup.rs)") from None
    try:
        expected = source_hash()
    except OSError as exc:
        raise ConfigError(f"cannot read the native decoder's sources to check its build: {exc}") from None
    built = getattr(module, "SOURCE_HASH", "none")
    if built != expected:
        raise ConfigError(f"the native decoder is stale: built from sources {built[:12]}, {NATIVE_DIR} holds "
                          f"{expected[:12]}; rebuild it with `{BUILD_COMMAND}`")
    return module


class NativeCodec:
    """Decodes batches as :meth:`Codec.decode_batch_arrow` does, in native code; build once, reuse.

    :param codec: the schemas and reader versions to decode with; the default codec by default.
    :raises ConfigError: the extension is missing or stale, or a schema has no native decoding.
    """

    def __init__(self, codec: Codec | None = None) -> None:
        self.codec = codec or default_codec()
        module = load_extension()
        registry = self.codec.registry
        writers: dict[bytes, tuple[str, int, str]] = {}
        for event in registry.events:
            for number in registry.versions(event):
                # Versions sharing a fingerprint: the registry's choice stands for all of them.
                version = registry.by_fingerprint(registry.get(event, number).fingerprint)
                writers[version.fingerprint] = (version.event, version.version, _plain_json(version))
        self._decoders: dict[str, Any] = {}
        for event in registry.events:
            reader = self.codec.reader(event)
            uuid_fields = [f["name"] for f in reader.schema["fields"]
                           if isinstance(f["type"], dict) and f["type"].get("logicalType") == "uuid"]
            try:
                self._decoders[event] = module.Decoder(
                    event, reader.label, _plain_json(reader), writers, self.codec.arrow_schema(event),
                    uuid_fields, str(registry.schemas_dir),
                    reader_json_schema=_schema_json(reader), other_fields=self.codec.other_fields(event),
                )
            except ValueError as exc:
                raise ConfigError(f"no native decoder for {reader.label}: {exc}") from None

    def decode_batch_arrow(self, messages: Sequence[bytes | None], event: str,
                           json: Sequence[int] = ()) -> ArrowBatch:
        """The messages of a topic carrying ``event`` as one table; bad ones become failures.

        :param messages: each ``bytes`` (or ``bytearray``) or ``None``: Avro single-object
            messages and JSON objects (:mod:`connectors.kafka.jsonrecord`), in any mix.
        :param json: the indexes of the messages whose headers say ``content-type:
            application/json``; each is read as JSON whatever its first byte.
        :raises ConfigError: ``event`` has no schema.
        :raises TypeError: a message is of another type.
        """
        decoder = self._decoders.get(event)
        if decoder is None:
            self.codec.reader(event)  # raises the ConfigError that lists the known events
        table, failures = decoder.decode(messages, list(json)) if json else decoder.decode(messages)
        return ArrowBatch(table, [Failure(*failure) for failure in failures])


@cache
def default_native_codec() -> NativeCodec:
    """The native decoder of the default codec, built on first use and then shared."""
    return NativeCodec()


def _plain_json(version: SchemaVersion) -> str:
    """``version``'s schema as JSON without logical types, the form the bodies are decoded in.

    Timestamps come out as longs and UUIDs as text, as :meth:`Codec.decode_batch_arrow` reads
    them; the extension then types the columns as :meth:`Codec.arrow_schema` says.
    """
    def strip(node: Any) -> Any:
        if isinstance(node, list):
            return [strip(v) for v in node]
        if not isinstance(node, dict):
            return node
        # fastavro's own keys (``__fastavro_parsed``) go too; defaults are values, not schemas.
        return {k: v if k == "default" else strip(v) for k, v in node.items()
                if not k.startswith("__") and not (k == "logicalType" and "type" in node)}

    return json.dumps(strip(version.schema))


def _schema_json(version: SchemaVersion) -> str:
    """``version``'s schema as JSON, logical types kept: what JSON messages are checked against."""
    def strip(node: Any) -> Any:
        if isinstance(node, list):
            return [strip(v) for v in node]
        if not isinstance(node, dict):
            return node
        return {k: v if k == "default" else strip(v) for k, v in node.items() if not k.startswith("__")}

    return json.dumps(strip(version.schema))
