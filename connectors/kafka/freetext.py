"""Free text in events: kept only when enabled (``EZ_CAPTURE_SNIPPETS``), then cut to a size cap.

The prompt and output snippets of LLM calls may hold personal data. The producer SDK applies the
policy to each record before encoding it; the sink loop applies it again to each decoded batch
before the lake and ClickHouse see it, because other producers than the SDK write to the topics.
Both ends cut by code points (a Python ``str`` index, Arrow's ``utf8_slice_codeunits``), so a cut
never splits a character and the stored UTF-8 stays valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from connectors.settings import Settings

#: The free-text fields of each event that has any.
FREE_TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "llm_call": ("prompt_snippet", "output_snippet"),
}


@dataclass(frozen=True)
class FreeTextPolicy:
    """Whether free-text fields are kept, and their longest length in characters when they are."""

    capture: bool
    max_chars: int

    @classmethod
    def from_settings(cls, settings: Settings) -> FreeTextPolicy:
        """The policy of ``EZ_CAPTURE_SNIPPETS`` and ``EZ_SNIPPET_MAX_CHARS``."""
        return cls(capture=settings.capture_snippets, max_chars=settings.snippet_max_chars)

    def text(self, value: str | None) -> str | None:
        """One free-text value as it may be stored: None when capture is off, else at most ``max_chars``."""
        if value is None or not self.capture:
            return None
        return value[:self.max_chars]

    def record(self, event: str, record: Mapping[str, Any]) -> Mapping[str, Any]:
        """``record`` of ``event`` with its free-text fields under the policy.

        ``record`` itself when nothing changes (most events have no free text), else a copy.
        """
        fields = FREE_TEXT_FIELDS.get(event)
        if not fields:
            return record
        changed: dict[str, str | None] = {}
        for name in fields:
            value = record.get(name)
            if value is None:
                continue
            if not self.capture:
                changed[name] = None
            elif isinstance(value, str) and len(value) > self.max_chars:
                changed[name] = value[:self.max_chars]
            # anything else that is not a string is left for the codec's validation to refuse
        return {**record, **changed} if changed else record

    def table(self, event: str, table: pa.Table) -> pa.Table:
        """Decoded rows of ``event`` with their free-text columns under the policy, vectorized.

        Columns already all null (the usual case with capture off at the producer) and columns
        nothing in which is too long are left as they are, so no new buffers are built for them.
        """
        for name in FREE_TEXT_FIELDS.get(event, ()):
            index = table.schema.get_field_index(name)
            if index < 0:
                continue
            column = table.column(index)
            if column.null_count == len(column):
                continue
            if not self.capture:
                replaced = pa.nulls(len(column), column.type)
            elif (pc.max(pc.utf8_length(column)).as_py() or 0) > self.max_chars:
                replaced = pc.utf8_slice_codeunits(column, 0, self.max_chars)
            else:
                continue
            table = table.set_column(index, table.schema.field(index), replaced)
        return table
