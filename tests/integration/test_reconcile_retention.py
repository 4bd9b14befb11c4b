"""Reconciliation and retention on data the stores already hold: NaN costs, hours past the
retention, event times ClickHouse cannot keep, and the retention boundary itself.

The rows are written by the real sinks (a lake folder of the test's own, a database of its own
on the session's embedded ClickHouse) and the jobs run in this process, as the DAG tasks call
them. Where ClickHouse's TTL (on the clock) must not reach the planted rows, the run's day is
taken from the clock, a day ahead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from connectors.batch.reconcile import HOUR, reconcile
from connectors.batch.retention import apply_retention, clickhouse_cutoff, kept_by_both, lake_cutoff
from connectors.clickhouse import get_client
from connectors.clickhouse.sink import ClickHouseSink
from connectors.lake import storage_options, table_uri
from connectors.lake.sink import LakeSink
from connectors.settings import Settings
from connectors.sink import SinkBatch
from tests.integration.airflow_seed import batches

DAY = date(2026, 11, 20)
START = datetime(2026, 11, 20, 8, tzinfo=timezone.utc)
TABLE = "llm_calls"


@dataclass
class Stores:
    """A lake folder and a ClickHouse database of one test's own, written by the real sinks."""

    settings: Settings
    lake: LakeSink
    clickhouse: ClickHouseSink

    def write(self, batch: SinkBatch, clickhouse: SinkBatch | None = None) -> None:
        """``batch`` into the lake, and ``clickhouse`` (default: the same) into ClickHouse."""
        self.lake.write(batch)
        self.clickhouse.write(clickhouse or batch)

    def sql(self, query: str) -> list[tuple]:
        return get_client(self.settings).query(query).result_rows

    def held(self, where: str = "1") -> tuple[int, float, int]:
        """ClickHouse's llm_calls rows matching ``where``: count, finite cost sum, distinct ids."""
        [(n, cost, ids)] = self.sql(f"SELECT count(), sumIf(cost_usd, isFinite(cost_usd)), uniqExact(event_id) "
                                    f"FROM {self.settings.clickhouse_database}.{TABLE} WHERE {where}")
        return int(n), float(cost), int(ids)

    def lake_rows(self) -> pa.Table:
        uri = table_uri(self.settings, TABLE)
        return DeltaTable(uri, storage_options=storage_options(self.settings)).to_pyarrow_table()


@pytest.fixture
def stores(settings, tmp_path, unique):
    """``stores(**settings)``: fresh stores (their tables created with those settings)."""

    def make(**update: Any) -> Stores:
        own = settings.model_copy(update={"lake_uri": f"file://{tmp_path / 'lake'}",
                                          "clickhouse_database": "ez_" + unique.replace("-", "_"), **update})
        made = Stores(own, LakeSink(own, "seed"), ClickHouseSink(own, "seed"))
        made.lake.setup()
        made.clickhouse.setup()
        return made

    return make


def llm_batch(start: datetime, count: int, seed_: int, first_offset: int) -> SinkBatch:
    """The llm_calls batch of ``count`` simulated events from ``start`` (all within 10 minutes)."""
    [batch] = [b for b in batches(start, count, seed_, 1, first_offset) if b.table == TABLE]
    return batch


def with_values(batch: SinkBatch, column: str, values: dict[int, Any]) -> SinkBatch:
    """``batch`` with the given rows of ``column`` set."""
    rows = batch.rows
    i = rows.schema.get_field_index(column)
    data = rows[column].to_pylist()
    for row, value in values.items():
        data[row] = value
    return replace(batch, rows=rows.set_column(i, rows.schema.field(i), pa.array(data, rows.schema.field(i).type)))


def without_rows(batch: SinkBatch, rows: list[int]) -> SinkBatch:
    keep = [i for i in range(batch.rows.num_rows) if i not in rows]
    return replace(batch, rows=batch.rows.take(keep))


def in_hour(batch: SinkBatch, hour: datetime) -> pa.Table:
    time = batch.rows["event_time"]
    return batch.rows.filter(pc.and_(pc.greater_equal(time, pa.scalar(hour, time.type)),
                                     pc.less(time, pa.scalar(hour + HOUR, time.type))))


def where_hour(hour: datetime) -> str:
    return (f"event_time >= toDateTime64('{hour:%Y-%m-%d %H}:00:00', 3, 'UTC') "
            f"AND event_time < toDateTime64('{hour + HOUR:%Y-%m-%d %H}:00:00', 3, 'UTC')")


def test_an_hour_with_nan_and_infinite_costs_matches_in_both_stores(stores):
    s = stores()
    batch = with_values(llm_batch(START, 300, seed_=41, first_offset=0), "cost_usd",
                        {3: math.nan, 10: math.inf, 20: -math.inf, 30: math.nan})
    s.write(batch)
    n = batch.rows.num_rows
    finite = sum(c for c in batch.rows["cost_usd"].to_pylist() if math.isfinite(c))
    # A plain sum is NaN in ClickHouse: compared so, this hour could never match.
    [(plain,)] = s.sql(f"SELECT sum(cost_usd) FROM {s.settings.clickhouse_database}.{TABLE}")
    assert math.isnan(plain)

    for run in range(2):
        [check] = reconcile(s.settings, START, START + HOUR, day=DAY)
        assert (check.table, check.status, check.matches) == (TABLE, "matches", True), f"run {run + 1}"
        assert (check.lake_rows, check.clickhouse_rows) == (n, n)
        assert (check.lake_nonfinite, check.clickhouse_nonfinite) == (4, 4)
        assert check.lake_cost == pytest.approx(finite, abs=1e-9)
        assert check.clickhouse_cost == pytest.approx(finite, abs=1e-9)
        assert (check.inserted, check.deleted, check.clickhouse_only, check.unstorable) == (0, 0, 0, 0)
    assert s.held() == (n, pytest.approx(finite, abs=1e-9), n)


def test_an_hour_past_the_retention_is_skipped_not_reinserted(stores):
    s = stores(lake_retention_days=730, clickhouse_ttl_days=365)
    # The lake keeps two years, ClickHouse one: the hour 400 days back is in the lake only.
    old = START - timedelta(days=400)
    assert kept_by_both(s.settings, DAY) == datetime(2025, 11, 21, tzinfo=timezone.utc)
    batch = llm_batch(old, 300, seed_=42, first_offset=0)
    s.lake.write(batch)
    n = batch.rows.num_rows

    for run in range(2):
        [check] = reconcile(s.settings, old, old + HOUR, day=DAY)
        assert (check.status, check.skipped, check.lake_rows, check.clickhouse_rows) == ("skipped", True, n, 0), run
        assert (check.inserted, check.deleted) == (0, 0)
        assert check.to_dict()["status"] == "skipped"
    assert s.held() == (0, 0.0, 0)

    # Counted from that old day instead, the hour is still skipped: ClickHouse's TTL runs on the
    # clock, and would drop whatever was inserted (at its next merge).
    [check] = reconcile(s.settings, old, old + HOUR, day=old.date())
    assert (check.status, check.inserted, check.lake_rows, check.clickhouse_rows) == ("skipped", 0, n, 0)
    assert s.held() == (0, 0.0, 0)


def test_rows_clickhouse_cannot_keep_are_counted_not_reinserted(stores):
    s = stores()
    future = datetime(2286, 1, 1, tzinfo=timezone.utc)
    past = datetime(1969, 12, 31, 23, tzinfo=timezone.utc)
    batch = with_values(llm_batch(START, 300, seed_=43, first_offset=0), "event_time",
                        {0: future + timedelta(minutes=30), 1: past + timedelta(minutes=30)})
    s.write(batch)
    n = batch.rows.num_rows
    # Whether ClickHouse kept them depends on its TTL expression (a wrapped DateTime drops both on
    # insert): the check reports what it holds, and never inserts.
    held = s.held()
    in_future = s.held(where_hour(future))[0]
    assert s.held(where_hour(START))[0] == n - 2

    for run in range(2):
        [check] = reconcile(s.settings, future, future + HOUR, day=DAY)
        assert (check.status, check.unstorable, check.lake_rows) == ("unstorable", 1, 1), f"run {run + 1}"
        assert (check.clickhouse_rows, check.inserted, check.deleted) == (in_future, 0, 0)
        assert check.to_dict()["status"] == "unstorable"
        # Before the retention cut-off, the 1969 hour is skipped first (and still counted).
        [check] = reconcile(s.settings, past, past + HOUR, day=DAY)
        assert (check.status, check.unstorable, check.lake_rows, check.inserted) == ("skipped", 1, 1, 0)
        [check] = reconcile(s.settings, START, START + HOUR, day=DAY)
        assert (check.status, check.lake_rows, check.clickhouse_rows, check.inserted) == ("matches", n - 2, n - 2, 0)
    assert s.held() == held


def test_an_ordinary_missing_row_is_repaired_exactly_once(stores):
    s = stores()
    hour = START + timedelta(hours=3)
    batch = llm_batch(hour, 300, seed_=44, first_offset=0)
    s.write(batch, clickhouse=without_rows(batch, [5, 6, 7]))
    n = batch.rows.num_rows
    cost = sum(batch.rows["cost_usd"].to_pylist())
    assert s.held()[0] == n - 3

    [first] = reconcile(s.settings, hour, hour + HOUR, day=DAY)
    assert (first.status, first.inserted, first.deleted) == ("repaired", 3, 0)
    assert (first.lake_rows, first.clickhouse_rows) == (n, n)
    [second] = reconcile(s.settings, hour, hour + HOUR, day=DAY)
    assert (second.status, second.inserted, second.deleted, second.clickhouse_rows) == ("matches", 0, 0, n)
    assert s.held() == (n, pytest.approx(cost, abs=1e-9), n)
    assert second.clickhouse_cost == pytest.approx(cost, abs=1e-9)


def tomorrow() -> date:
    """A run's day for which ClickHouse's TTL (on the clock) keeps everything at the cut-off."""
    return datetime.now(timezone.utc).date() + timedelta(days=1)


def test_retention_drops_the_same_event_dates_from_both_stores(stores):
    s = stores(lake_retention_days=3, clickhouse_ttl_days=3)
    day = tomorrow()
    cutoff = clickhouse_cutoff(s.settings, day)
    assert cutoff == datetime.combine(lake_cutoff(s.settings, day), datetime.min.time(), timezone.utc)
    # Ten minutes of calls around the cut-off, one a millisecond before it and one on it.
    batch = with_values(llm_batch(cutoff - timedelta(minutes=5), 300, seed_=45, first_offset=0), "event_time",
                        {0: cutoff - timedelta(milliseconds=1), 1: cutoff})
    s.write(batch)
    times = batch.rows["event_time"]
    kept = batch.rows.filter(pc.greater_equal(times, pa.scalar(cutoff, times.type)))
    gone = batch.rows.num_rows - kept.num_rows
    assert 0 < gone < batch.rows.num_rows
    assert s.held() == (batch.rows.num_rows, pytest.approx(sum(batch.rows["cost_usd"].to_pylist()), abs=1e-9),
                        batch.rows.num_rows)
    db = s.settings.clickhouse_database

    removed = {(r.store, r.table): r.rows for r in apply_retention(s.settings, day, [TABLE])}
    assert removed[("lake", TABLE)] == removed[("clickhouse", TABLE)] == gone
    expected = sorted(kept["event_id"].to_pylist())
    assert sorted(s.lake_rows()["event_id"].to_pylist()) == expected
    assert sorted(str(i) for (i,) in s.sql(f"SELECT event_id FROM {db}.{TABLE}")) == expected
    assert expected.count(batch.rows["event_id"][1].as_py()) == 1  # the row on the cut-off stays
    assert s.sql(f"SELECT count() FROM {db}.{TABLE}_1m WHERE minute < '{cutoff:%Y-%m-%d %H:%M:%S}'") == [(0,)]
    [(calls,)] = s.sql(f"SELECT countMerge(calls) FROM {db}.{TABLE}_1m")
    assert calls == kept.num_rows

    # A rerun of the same day finds nothing more; reconciliation finds the stores agreeing.
    assert apply_retention(s.settings, day, [TABLE]) == []
    [check] = reconcile(s.settings, cutoff - HOUR, cutoff + HOUR, day=day)
    assert (check.hour, check.status, check.lake_rows, check.clickhouse_rows) == (
        cutoff.isoformat(), "matches", kept.num_rows, kept.num_rows)


def test_reconcile_compares_only_what_both_stores_keep(stores):
    s = stores(lake_retention_days=4, clickhouse_ttl_days=2)
    day = tomorrow()
    kept = kept_by_both(s.settings, day)
    assert kept == clickhouse_cutoff(s.settings, day) > datetime.combine(lake_cutoff(s.settings, day),
                                                                         datetime.min.time(), timezone.utc)
    # In the lake only: the hour before ClickHouse's cut-off (which the lake still keeps) and the one on it.
    batch = llm_batch(kept - timedelta(minutes=5), 300, seed_=46, first_offset=0)
    s.lake.write(batch)
    before, on = in_hour(batch, kept - HOUR), in_hour(batch, kept)
    assert before.num_rows and on.num_rows and before.num_rows + on.num_rows == batch.rows.num_rows

    for run in range(2):
        checks = reconcile(s.settings, kept - HOUR, kept + HOUR, day=day)
        assert [(c.hour, c.status, c.lake_rows, c.clickhouse_rows, c.inserted) for c in checks] == [
            ((kept - HOUR).isoformat(), "skipped", before.num_rows, 0, 0),
            (kept.isoformat(), "repaired" if run == 0 else "matches", on.num_rows, on.num_rows,
             on.num_rows if run == 0 else 0),
        ], f"run {run + 1}"
    assert s.held(where_hour(kept - HOUR))[0] == 0
    assert s.held(where_hour(kept)) == (on.num_rows, pytest.approx(sum(on["cost_usd"].to_pylist()), abs=1e-9),
                                        on.num_rows)
