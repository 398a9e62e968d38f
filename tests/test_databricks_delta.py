"""Silver's change data feed and history, checked with delta-rs.

Sail cannot write a table with the change data feed on, so the feed is checked here: two nights
from an ingested lake are merged into a CDF-enabled Delta table with Silver's own MERGE rule (the
key condition and the newer-only update from `medallion.py`), each night split by Silver's checks
and deduplicated by its dedup SQL. Downstream readers must see the correction as one update, the
new sessions as inserts, and nothing at all for a replayed night or a stale copy.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from stock_pipeline.datasets import DATASETS
from stock_pipeline.lake import dataset_files
from stock_pipeline.lakehouse import bronze_frame, to_duckdb
from stock_pipeline.medallion import (
    SOURCE_IS_NEWER,
    check_split_sql,
    dedup_sql,
    merge_condition,
    silver_columns,
)
from tests.medallion_lake import CORRECTED_DAY, CORRECTED_VOLUME, STALE_DAY, MedallionLake

PRICES = DATASETS["prices"]


def deduplicated(lake: MedallionLake, files: set[str]) -> pa.Table:
    night = bronze_frame(
        lake.lake, PRICES, [p for p in dataset_files(lake.lake, PRICES) if p in files]
    )
    passing, _ = check_split_sql(PRICES, "batch")
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("batch", night.select(c.name for c in silver_columns(PRICES)).to_arrow())
        sql = to_duckdb(dedup_sql(PRICES, f"({passing}) AS passing"))
        table: pa.Table = con.sql(sql).to_arrow_table()
    return table


def merge(path: Path, source: pa.Table) -> None:
    (
        DeltaTable(str(path))
        .merge(source, predicate=merge_condition(PRICES), source_alias="s", target_alias="t")
        .when_matched_update_all(predicate=SOURCE_IS_NEWER)
        .when_not_matched_insert_all()
        .execute()
    )


def changes(path: Path, version: int) -> pl.DataFrame:
    feed = DeltaTable(str(path)).load_cdf(
        starting_version=version, ending_version=version, allow_out_of_range=True
    )
    frame = pl.from_arrow(pa.RecordBatchReader.from_stream(feed).read_all())
    assert isinstance(frame, pl.DataFrame)
    return frame


@pytest.fixture(scope="module")
def silver(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("delta") / "silver_prices"
    schema = pa.schema([pa.field(c.name, c.type.arrow) for c in silver_columns(PRICES)])
    write_deltalake(
        str(path), schema.empty_table(), configuration={"delta.enableChangeDataFeed": "true"}
    )
    night_1 = set(lakes[1].run_1_files)
    night_2 = set(lakes[1].lake.list_files("")) - night_1
    merge(path, deduplicated(lakes[1], night_1))  # version 1
    merge(path, deduplicated(lakes[1], night_2))  # version 2
    merge(path, deduplicated(lakes[1], night_2))  # version 3: the same night replayed
    return path


def test_the_first_night_is_all_inserts(silver: Path) -> None:
    first = changes(silver, 1)
    assert first.height > 600
    assert set(first["_change_type"]) == {"insert"}


def test_the_correction_is_one_update_and_new_sessions_are_inserts(silver: Path) -> None:
    second = changes(silver, 2)
    updates = second.filter(pl.col("_change_type") == "update_postimage")
    assert updates.select("symbol", "date", "volume").rows() == [
        ("AAPL", CORRECTED_DAY, CORRECTED_VOLUME)
    ]
    before = second.filter(pl.col("_change_type") == "update_preimage")
    assert before["volume"].to_list() != [CORRECTED_VOLUME]
    assert before.height == 1
    inserted = second.filter(pl.col("_change_type") == "insert")
    assert inserted.height > 0
    assert inserted["date"].min() > CORRECTED_DAY
    # The stale copy (older than Silver's row) and the broken row changed nothing.
    assert STALE_DAY not in second["date"].to_list()


def test_a_replayed_night_changes_nothing_downstream(silver: Path) -> None:
    table = DeltaTable(str(silver))
    # The replay either commits no version or an empty one: either way no change to read.
    assert table.version() in (2, 3)
    assert changes(silver, 3).height == 0
    assert [h["operation"] for h in table.history()].count("MERGE") == table.version()
