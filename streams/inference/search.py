"""The knowledge store: nearest stored embeddings to a text, by cosine distance.

Results of the inference workers reach ClickHouse through the sink (table ``inference_results``)
and a materialized view splits them into ``inference_vectors``, one row per embedded input with
its ``Array(Float32)`` vector. :func:`search` embeds the query text with the same local model
(in this process, no worker needed) and asks ClickHouse for the nearest vectors. Inputs are
free text, which the platform does not store (DESIGN.md, security): an item is named by its
request's ``correlation_id`` and the input's position, which the requesting agent can map back.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.settings import Settings
from streams.inference.models import load_model


@dataclass(frozen=True)
class Hit:
    """One stored item near the query."""

    correlation_id: str
    input_index: int
    agent_id: str
    tenant_id: str
    event_time: str
    distance: float


def search(settings: Settings, text: str, k: int = 5, *, tenant_id: str | None = None,
           model_name: str | None = None) -> list[Hit]:
    """The ``k`` stored items nearest to ``text`` (cosine distance, smallest first)."""
    from streams.query_server import query

    model = load_model(model_name or settings.inference_model, settings.inference_device)
    vector = model.run(model.prepare([text]))[0]
    literal = "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"
    where = f"model = '{_quote(model.name)}'"
    if tenant_id is not None:
        where += f" AND tenant_id = '{_quote(tenant_id)}'"
    db = settings.clickhouse_database
    # The same input stored twice (a result delivered again) is one item: the nearest copy counts.
    sql = (f"SELECT correlation_id, input_index, any(agent_id), any(tenant_id), toString(min(event_time)), "
           f"min(cosineDistance(embedding, CAST({literal} AS Array(Float32)))) AS distance "
           f"FROM {db}.inference_vectors WHERE {where} "
           f"GROUP BY correlation_id, input_index ORDER BY distance LIMIT {int(k)}")
    _, rows = query(settings, sql)
    return [Hit(str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), float(r[5])) for r in rows]


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
