"""The knowledge store: inference results in the lake and ClickHouse, and `ezstream search`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from pydantic import SecretStr

from connectors.inference import InferenceClient
from connectors.lake import storage_options, table_uri
from streams.inference.search import search
from streams.query_server import query
from tests.conftest import wait_for
from tests.integration.pipeline import REPO, Worker, settings_env
from tests.integration.test_inference import InferenceWorkerProcess

DOCS = [
    "How do I reset my password?",
    "The invoice for November is overdue.",
    "Our kubernetes cluster ran out of memory last night.",
    "A recipe for sourdough bread with a crispy crust.",
]


def test_results_land_in_lake_and_clickhouse_and_search_finds_the_nearest(settings, unique, tmp_path):
    # A chDB folder of its own: the engine of the session's folder may be open in this process.
    inf = settings.model_copy(update={
        "topic_prefix": f"s.{unique}.", "topic_partitions": 3,
        "lake_uri": f"file://{tmp_path}/lake",
        "clickhouse_dsn": SecretStr(f"chdb://{tmp_path}/clickhouse"),
        "clickhouse_database": "ez_" + uuid.uuid4().hex[:8],
    })
    sinks = Worker(inf, "lake,clickhouse", tmp_path / "sinks").start()
    model_worker = InferenceWorkerProcess(inf, tmp_path / "inference", "w1", {})
    try:
        model_worker.start()
        with InferenceClient(inf, tenant_id="acme") as client:
            ids = [client.submit([d]).correlation_id for d in DOCS[:2]]
            ids.append(client.submit(DOCS[2:]).correlation_id)  # two inputs in one request
            client.flush()
            failed = client.submit([""])  # an error result is stored, but has no vectors
            client.flush()
        at_engine = inf.model_copy(update={"home": sinks.home})
        db = inf.clickhouse_database

        def stored() -> bool:
            _, rows = query(at_engine, f"SELECT count() FROM {db}.inference_vectors")
            _, results = query(at_engine, f"SELECT count(), countIf(error IS NOT NULL) FROM {db}.inference_results")
            return rows[0][0] == 4 and results[0] == [4, 1]

        wait_for(stored, 90, "4 vectors and 4 results in ClickHouse", interval_s=1)
        _, types = query(at_engine, f"SELECT toTypeName(embedding), length(embedding) FROM {db}.inference_vectors LIMIT 1")
        assert types[0] == ["Array(Float32)", 384]

        hits = search(at_engine, "I forgot my login credentials", k=3)
        assert [(h.correlation_id, h.input_index) for h in hits][0] == (ids[0], 0)
        assert len(hits) == 3 and hits[0].distance < hits[1].distance and hits[0].tenant_id == "acme"
        bread = search(at_engine, "baking bread at home", k=1)
        assert (bread[0].correlation_id, bread[0].input_index) == (ids[2], 1)

        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("EZ_", "AWS_"))},
               **settings_env(inf), "EZ_HOME": str(sinks.home), "PYTHONPATH": str(REPO)}
        cli = subprocess.run([sys.executable, "-m", "streams.cli", "search", "my server has no memory left",
                              "-k", "2", "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
        assert cli.returncode == 0, cli.stderr
        rows = json.loads(cli.stdout)
        assert len(rows) == 2 and (rows[0]["correlation_id"], rows[0]["input_index"]) == (ids[2], 0), rows

        from deltalake import DeltaTable

        def in_lake() -> bool:
            try:
                lake = DeltaTable(table_uri(inf, "inference_results"), storage_options=storage_options(inf))
            except Exception:
                return False
            return lake.to_pyarrow_table().num_rows == 4

        wait_for(in_lake, 60, "4 results in the lake", interval_s=1)
        assert failed.correlation_id
    finally:
        model_worker.kill()
        sinks.stop()
