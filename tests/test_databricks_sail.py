"""The notebooks' Silver and Gold code on a Spark-API engine against real Delta tables.

Sail (a Spark Connect server with Delta) runs the very functions the Databricks notebooks call:
`create_tables`, the `foreachBatch` body `merge_silver_batch` and `build_gold`, on Delta tables
built from lakes the ingester wrote. Sail has no streaming, so each micro-batch is handed over the
way `foreachBatch` hands it: a DataFrame of the new Bronze rows. Delta's history is read back with
delta-rs, and the Gold views are compared with polars and with the DuckDB lakehouse.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from stock_pipeline.dashboard import dashboard_queries
from stock_pipeline.datasets import DATASETS, Column, ColumnType
from stock_pipeline.lake import LocalLake, dataset_files, encode_partition, partition_path
from stock_pipeline.lakehouse import bronze_frame, build_lakehouse, manifest_files, runs_frame
from stock_pipeline.medallion import (
    GOLD_COMMENTS,
    GOLD_TABLES,
    StatementBasis,
    Tables,
    bronze_table,
    data_health_alert_sql,
    gold_source,
    silver_table,
)
from stock_pipeline.medallion_spark import (
    Engine,
    build_gold,
    create_tables,
    merge_silver_batch,
    seed_versions,
)
from tests import split_lake
from tests.medallion_lake import (
    CORRECTED_DAY,
    CORRECTED_VOLUME,
    NEW_SECTOR,
    PRICE_FEATURES,
    TODAY,
    MedallionLake,
    assert_no_look_ahead,
    assert_price_features_match,
    assert_restatements_point_in_time,
    assert_rsi_is_talibs,
    assert_ttm_eps_and_pe_point_in_time,
    assert_unaccepted_quarter_counts_from_its_filing_date,
    expected_silver,
)
from tests.split_lake import (
    LAST_SESSION,
    NIGHTS,
    assert_continuous_across_the_split,
    assert_prices_on_the_newest_basis,
    write_split_lake,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

pytestmark = pytest.mark.spark

TABLES = Tables(schema="stocks")
STATEMENTS = ("income_statement", "balance_sheet", "cash_flow")


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    from pysail.spark import SparkConnectServer
    from pyspark.sql import SparkSession

    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    host, port = server.listening_address
    session = SparkSession.builder.remote(f"sc://{host}:{port}").getOrCreate()
    session.conf.set("spark.sql.session.timeZone", "UTC")
    try:
        yield session
    finally:
        session.stop()
        server.stop()


def sail_engine(warehouse: Path) -> Engine:
    """What Sail can do: Delta tables under `warehouse`, no clustering, no change data feed, and
    comments only as a table is created."""
    return Engine(
        clustering=False, change_data_feed=False, location_root=str(warehouse), alter_comments=False
    )


def spark_frame(spark: SparkSession, frame: pl.DataFrame) -> DataFrame:
    return spark.createDataFrame(frame.to_arrow())


def to_polars(frame: DataFrame) -> pl.DataFrame:
    table: pa.Table = frame.toArrow()
    result = pl.from_arrow(table)
    assert isinstance(result, pl.DataFrame)
    # Spark hands timestamps back in the session zone without a zone; it is UTC here.
    return result.with_columns(pl.col(pl.Datetime).dt.replace_time_zone("UTC"))


@dataclass
class Built:
    lake: LocalLake
    warehouse: Path
    prices_after_run_1: pl.DataFrame
    prices_after_replay: pl.DataFrame
    rejected_after_replay: int


def load_night(
    spark: SparkSession, lake: LocalLake, paths: set[str], batch_id: int, tables: Tables = TABLES
) -> None:
    """One night through Bronze (what Auto Loader appends) and Silver (one foreachBatch call)."""
    for dataset in DATASETS.values():
        files = [p for p in dataset_files(lake, dataset) if p in paths]
        if not files:
            continue
        rows = spark_frame(spark, bronze_frame(lake, dataset, files))
        append_by_name(spark, rows, tables.name(bronze_table(dataset)))
        merge_silver_batch(rows, batch_id, dataset, tables)
    runs = runs_frame(lake, [p for p in manifest_files(lake) if p in paths])
    if runs.height:
        spark_frame(spark, runs).write.insertInto(tables.name(bronze_table("runs")))


def append_by_name(spark: SparkSession, rows: DataFrame, table: str) -> None:
    """Append as Auto Loader does: by column name (a column added later sits last in the table)."""
    rows.select(*spark.table(table).columns).write.insertInto(table)


def replay_night(spark: SparkSession, lake: LocalLake, paths: set[str], batch_id: int) -> None:
    """Silver's foreachBatch again on a night's rows, as after a failure before the checkpoint."""
    for dataset in DATASETS.values():
        files = [p for p in dataset_files(lake, dataset) if p in paths]
        if files:
            batch = spark_frame(spark, bronze_frame(lake, dataset, files))
            merge_silver_batch(batch, batch_id, dataset, TABLES)


def silver(spark: SparkSession, dataset: str) -> pl.DataFrame:
    data = DATASETS[dataset]
    columns = [c.name for c in data.table_columns]
    table = spark.table(TABLES.name(silver_table(data))).select(*columns)
    return to_polars(table).sort(list(data.key))


@pytest.fixture(scope="module")
def built(
    spark: SparkSession,
    lakes: tuple[MedallionLake, MedallionLake],
    tmp_path_factory: pytest.TempPathFactory,
) -> Built:
    root = tmp_path_factory.mktemp("sail")
    shutil.copytree(lakes[1].root, root / "lake")
    lake = LocalLake(root / "lake")
    warehouse = root / "warehouse"
    engine = sail_engine(warehouse)
    create_tables(spark, TABLES, engine)
    run_1 = set(lakes[1].run_1_files)
    run_2 = set(lake.list_files("")) - run_1
    load_night(spark, lake, run_1, batch_id=0)
    after_run_1 = silver(spark, "prices")
    # The same micro-batch again, as after a failure between MERGE and checkpoint.
    replay_night(spark, lake, run_1, batch_id=0)
    after_replay = silver(spark, "prices")
    load_night(spark, lake, run_2, batch_id=1)
    rejected = spark.table(TABLES.name("silver_rejects")).count()
    companies = spark.table(TABLES.name("dim_company")).count()
    replay_night(spark, lake, run_2, batch_id=1)
    assert spark.table(TABLES.name("silver_rejects")).count() == rejected  # kept once
    assert spark.table(TABLES.name("dim_company")).count() == companies  # no new versions
    build_gold(spark, TABLES, engine, today=TODAY)
    return Built(lake, warehouse, after_run_1, after_replay, rejected)


def test_a_replayed_batch_leaves_silver_exact(built: Built) -> None:
    assert built.prices_after_replay.equals(built.prices_after_run_1)
    assert built.prices_after_run_1.height > 600


@pytest.mark.parametrize("dataset", ["prices", *STATEMENTS, "splits"])
def test_silver_on_delta_is_exact_after_corrections(
    spark: SparkSession, built: Built, dataset: str
) -> None:
    expected = expected_silver(built.lake, dataset)
    got = silver(spark, dataset)
    assert got.height == expected.height > 0
    assert got.equals(expected.select(got.columns))


def test_the_late_correction_won_and_the_broken_row_was_kept_aside(
    spark: SparkSession, built: Built
) -> None:
    prices = silver(spark, "prices")
    fixed = prices.filter((pl.col("symbol") == "AAPL") & (pl.col("date") == CORRECTED_DAY))
    assert fixed["volume"].to_list() == [CORRECTED_VOLUME]
    assert built.rejected_after_replay == 1
    rejects = to_polars(spark.table(TABLES.name("silver_rejects")))
    assert rejects.select("dataset", "symbol", "_reason").rows() == [
        ("prices", "AAPL", "high below low; high below open or close")
    ]


def test_dim_company_keeps_the_old_sector(spark: SparkSession, built: Built) -> None:
    history = to_polars(
        spark.sql(
            f"SELECT symbol, sector, is_current, valid_from, valid_to "
            f"FROM {TABLES.name('dim_company')} ORDER BY symbol, valid_from"
        )
    )
    aapl = history.filter(pl.col("symbol") == "AAPL")
    # One batch held three profiles: a new sector, a repeat of it, and the old sector again.
    sectors = aapl["sector"].to_list()
    assert sectors == [sectors[0], NEW_SECTOR, sectors[0]]
    assert sectors[0] != NEW_SECTOR
    assert aapl["is_current"].to_list() == [False, False, True]
    assert aapl["valid_to"].to_list()[:2] == aapl["valid_from"].to_list()[1:]
    assert aapl["valid_to"][2] is None
    assert history.filter(pl.col("symbol") == "MSFT")["is_current"].to_list() == [True]


def test_delta_history_allows_auditing_the_night_before(spark: SparkSession, built: Built) -> None:
    location = built.warehouse / "stocks" / "silver_prices"
    history = DeltaTable(str(location)).history()
    assert [e["operation"] for e in history].count("MERGE") >= 2
    # Version 1 is Silver after the first night: the row the correction replaced is still there.
    query = (
        "SELECT volume FROM delta.`{location}` {travel} "
        f"WHERE symbol = 'AAPL' AND date = DATE'{CORRECTED_DAY}'"
    )
    old = gold(spark, query.format(location=location, travel="VERSION AS OF 1"))
    now = gold(spark, query.format(location=location, travel=""))
    assert (
        old["volume"].to_list()
        == built.prices_after_run_1.filter(
            (pl.col("symbol") == "AAPL") & (pl.col("date") == CORRECTED_DAY)
        )["volume"].to_list()
    )
    assert old["volume"].to_list() != [CORRECTED_VOLUME]
    assert now["volume"].to_list() == [CORRECTED_VOLUME]


def gold(spark: SparkSession, sql: str) -> pl.DataFrame:
    return to_polars(spark.sql(sql))


def test_gold_price_features_match_polars(spark: SparkSession, built: Built) -> None:
    got = gold(
        spark,
        f"SELECT symbol, date, {', '.join(PRICE_FEATURES)} "
        f"FROM {TABLES.name('price_features')} ORDER BY symbol, date",
    )
    assert_price_features_match(got, expected_silver(built.lake, "prices"))


def test_rsi_is_wilders_as_ta_lib_computes_it(spark: SparkSession, built: Built) -> None:
    got = gold(
        spark,
        f"SELECT symbol, date, rsi_14 FROM {TABLES.name('price_features')} ORDER BY symbol, date",
    )
    assert assert_rsi_is_talibs(got, expected_silver(built.lake, "prices")) > 500


def test_ttm_eps_and_pe_as_known_on_each_date(spark: SparkSession, built: Built) -> None:
    daily = gold(
        spark,
        f"SELECT date, close, ttm_eps_diluted, pe_ratio FROM {TABLES.name('daily_features')} "
        f"WHERE symbol = 'AAPL' ORDER BY date",
    )
    assert_ttm_eps_and_pe_point_in_time(daily, built.lake)


@pytest.fixture(scope="module")
def duckdb_lakehouse(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    database = tmp_path_factory.mktemp("duckdb") / "lakehouse.duckdb"
    build_lakehouse(built.lake, database, today=TODAY)
    return database


@pytest.mark.parametrize(
    ("view", "order"),
    [
        ("price_features", "symbol, date"),
        ("fundamentals_pit", "symbol, period_end, period, known_from"),
        ("daily_features", "symbol, date"),
        ("data_health", "dataset"),
    ],
)
def test_gold_is_the_same_on_sail_and_in_the_duckdb_lakehouse(
    spark: SparkSession, built: Built, duckdb_lakehouse: Path, view: str, order: str
) -> None:
    database = duckdb_lakehouse
    on_sail = gold(spark, f"SELECT * FROM {TABLES.name(view)} ORDER BY {order}")
    with duckdb.connect(str(database), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        in_duckdb = con.sql(f"SELECT * FROM {view} ORDER BY {order}").pl()
    assert on_sail.columns == in_duckdb.columns
    assert on_sail.height == in_duckdb.height > 0
    for name in on_sail.columns:
        a, b = on_sail[name], in_duckdb[name]
        if a.dtype.is_numeric() or a.dtype == pl.Decimal:
            a, b = a.cast(pl.Float64), b.cast(pl.Float64)
            assert a.is_null().to_list() == b.is_null().to_list(), name
            both = pl.DataFrame({"a": a, "b": b}).drop_nulls()
            assert ((both["a"] - both["b"]).abs() <= 1e-9 * (1 + both["b"].abs())).all(), name
        elif name.startswith("last_run_finished") or a.dtype == pl.Datetime:
            assert (
                a.cast(pl.Datetime("us", "UTC")).to_list()
                == b.cast(pl.Datetime("us", "UTC")).to_list()
            ), name
        else:
            assert a.to_list() == b.cast(a.dtype).to_list(), name


def test_gold_known_from_is_the_new_york_day(spark: SparkSession, built: Built) -> None:
    pit = gold(
        spark,
        f"SELECT known_at, known_from FROM {TABLES.name('fundamentals_pit')} "
        "WHERE known_from_source = 'acceptance'",
    )
    expected = pit["known_at"].dt.convert_time_zone("America/New_York").dt.date()
    assert pit["known_from"].to_list() == expected.to_list()
    assert dt.date(2000, 1, 1) < min(pit["known_from"])


def test_no_daily_feature_uses_a_statement_before_it_was_public(
    spark: SparkSession, built: Built
) -> None:
    daily = gold(
        spark,
        "SELECT symbol, date, fundamentals_period_end, fundamentals_known_from, ttm_revenue "
        f"FROM {TABLES.name('daily_features')} ORDER BY symbol, date",
    )
    assert assert_no_look_ahead(daily, built.lake) > 400


def test_a_quarter_without_acceptance_times_counts_from_its_filing_date(
    spark: SparkSession, built: Built
) -> None:
    pit = gold(
        spark,
        f"SELECT period_end, known_at, known_from, known_from_source "
        f"FROM {TABLES.name('fundamentals_pit')} WHERE symbol = 'MSFT'",
    )
    daily = gold(
        spark,
        f"SELECT date, fundamentals_period_end, fundamentals_known_from_source "
        f"FROM {TABLES.name('daily_features')} WHERE symbol = 'MSFT'",
    )
    assert_unaccepted_quarter_counts_from_its_filing_date(pit, daily, built.lake)


def test_a_restated_quarter_shows_each_version_from_its_own_day(
    spark: SparkSession, built: Built
) -> None:
    pit = gold(
        spark,
        "SELECT period_end, known_from, known_from_source, revised, ttm_revenue "
        f"FROM {TABLES.name('fundamentals_pit')} WHERE symbol = 'AAPL'",
    )
    daily = gold(
        spark,
        "SELECT date, fundamentals_period_end, ttm_revenue "
        f"FROM {TABLES.name('daily_features')} WHERE symbol = 'AAPL' ORDER BY date",
    )
    assert_restatements_point_in_time(pit, daily)


@pytest.mark.parametrize("basis", ["fetched", "filed"])
def test_valuation_is_continuous_across_a_split_on_either_statement_basis(
    spark: SparkSession, basis: StatementBasis, tmp_path: Path
) -> None:
    lake = write_split_lake(tmp_path / "lake", basis)
    tables = Tables(schema=f"split_{basis}")
    engine = sail_engine(tmp_path / "warehouse")
    create_tables(spark, tables, engine)
    for batch_id, (run_id, _, _) in enumerate(NIGHTS):
        night = {path for path in lake.list_files("") if run_id in path}
        load_night(spark, lake, night, batch_id, tables)
    build_gold(spark, tables, engine, today=split_lake.TODAY, statement_basis=basis)
    daily = gold(
        spark,
        "SELECT symbol, date, close, ttm_eps_diluted, basic_shares, market_cap, pe_ratio "
        f"FROM {tables.name('daily_features')} ORDER BY symbol, date",
    )
    assert assert_continuous_across_the_split(daily) > 250
    features = gold(
        spark,
        "SELECT symbol, date, close, volume, daily_return, rsi_14 "
        f"FROM {tables.name('price_features')} ORDER BY symbol, date",
    )
    assert assert_prices_on_the_newest_basis(features) > 700


def test_seed_versions_fills_empty_versions_tables_from_bronze(
    spark: SparkSession, built: Built, tmp_path: Path
) -> None:
    # A deployment older than the versions tables: Bronze has every fetch, the tables are new.
    tables = Tables(schema="seeded")
    engine = sail_engine(tmp_path / "warehouse")
    create_tables(spark, tables, engine)
    for name in STATEMENTS:
        dataset = DATASETS[name]
        rows = spark_frame(
            spark, bronze_frame(built.lake, dataset, dataset_files(built.lake, dataset))
        )
        rows.write.insertInto(tables.name(bronze_table(dataset)))
    filled = seed_versions(spark, tables)
    assert filled == [tables.name(f"silver_{name}_versions") for name in STATEMENTS]
    assert seed_versions(spark, tables) == []  # once only
    columns = "symbol, date, period, _ingested_at, revenue, _filed_before, _last_seen_at"
    query = f"SELECT {columns} FROM {{}} ORDER BY symbol, date, period, _ingested_at"
    versions = "silver_income_statement_versions"
    seeded = gold(spark, query.format(tables.name(versions)))
    streamed = gold(spark, query.format(TABLES.name(versions)))
    assert seeded.height > 30
    assert seeded.equals(streamed)


def test_a_column_added_to_the_registry_between_two_nights_reaches_silver(
    spark: SparkSession,
    lakes: tuple[MedallionLake, MedallionLake],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tables = Tables(schema="evolving")
    engine = sail_engine(tmp_path / "warehouse")
    lake = lakes[1].lake
    run_1 = set(lakes[1].run_1_files)
    create_tables(spark, tables, engine)
    load_night(spark, lake, run_1, batch_id=0, tables=tables)

    # Night 2: the registry has gained a field FMP sends, and the night's files carry it.
    prices = DATASETS["prices"]
    night_2 = [p for p in dataset_files(lake, prices) if p not in run_1]
    rows = bronze_frame(lake, prices, night_2).with_columns(
        (pl.col("close") * 0.5).alias("adj_close")
    )
    wider = dataclasses.replace(
        prices, columns=(*prices.columns, Column("adj_close", ColumnType.FLOAT, "adjClose"))
    )
    monkeypatch.setitem(DATASETS, "prices", wider)
    create_tables(spark, tables, engine)  # what every night's Bronze and Silver tasks do first
    batch = spark_frame(spark, rows)
    append_by_name(spark, batch, tables.name(bronze_table(wider)))
    counts = merge_silver_batch(batch, 1, wider, tables)

    silver = to_polars(
        spark.table(tables.name("silver_prices")).select(
            "symbol", "date", "close", "adj_close", "_ingested_at"
        )
    )
    # The rows that night 2 wrote into Silver (the MERGE keeps the newest) carry the new
    # column; the rows merged before it existed read NULL in it.
    from_night_2 = silver.join(
        rows.select("symbol", "date", "_ingested_at"), on=["symbol", "date", "_ingested_at"]
    )
    assert from_night_2.height > counts.rejected
    assert from_night_2["adj_close"].to_list() == (from_night_2["close"] * 0.5).to_list()
    assert silver["adj_close"].null_count() == silver.height - from_night_2.height > 600
    assert create_tables(spark, tables, engine)  # a night after: nothing left to add
    assert spark.table(tables.name("silver_prices")).columns.count("adj_close") == 1


def health_alert(spark: SparkSession, tables: Tables, today: dt.date) -> tuple[int, str]:
    """What the workspace's SQL alert on `data_health` sees on the morning of `today`."""
    [row] = spark.sql(data_health_alert_sql(tables, f"DATE'{today}'")).collect()
    return int(row["problems"]), row["details"] or ""


def test_the_health_alert_fires_on_a_stale_lake_and_stays_quiet_on_a_fresh_one(
    spark: SparkSession, lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    tables = Tables(schema="alerting")
    engine = sail_engine(tmp_path / "warehouse")
    create_tables(spark, tables, engine)
    lake = lakes[0].lake  # run 1: sessions to Thursday 2025-07-24, landed that night
    load_night(spark, lake, set(lake.list_files("")), batch_id=0, tables=tables)
    build_gold(spark, tables, engine, today=TODAY)

    assert health_alert(spark, tables, dt.date(2025, 7, 25)) == (0, "")  # Friday morning
    problems, details = health_alert(spark, tables, dt.date(2025, 8, 15))  # three weeks on
    assert problems == 1
    assert details == "prices: data ends 2025-07-24, the last session was 2025-08-14"


def test_the_health_alert_names_the_rows_rejected_since_yesterday(
    spark: SparkSession, built: Built
) -> None:
    problems, details = health_alert(spark, TABLES, dt.date(2025, 7, 31))
    assert problems == 1
    assert details == "prices: 1 rows rejected by Silver since 2025-07-30"


def differing_rows(spark: SparkSession, table: str, source: str) -> int:
    """Rows in one and not the other, duplicates counted: 0 when the two hold the same rows."""
    sql = "SELECT COUNT(*) FROM (SELECT * FROM {} EXCEPT ALL SELECT * FROM {})"
    return int(spark.sql(sql.format(table, source)).collect()[0][0]) + int(
        spark.sql(sql.format(source, table)).collect()[0][0]
    )


def test_incremental_gold_equals_a_full_recompute_after_every_night(
    spark: SparkSession, tmp_path: Path
) -> None:
    # Four nights: two before a 4:1 split and two after, a company joining on the third.
    lake = write_split_lake(tmp_path / "lake", "fetched")
    tables = Tables(schema="incremental")
    engine = sail_engine(tmp_path / "warehouse")
    create_tables(spark, tables, engine)
    refreshes = []
    for batch_id, (run_id, _, _) in enumerate(NIGHTS):
        night = {path for path in lake.list_files("") if run_id in path}
        load_night(spark, lake, night, batch_id, tables)
        refreshes.append(build_gold(spark, tables, engine, today=split_lake.TODAY))
        for name in GOLD_TABLES:
            table, source = tables.name(name), tables.name(gold_source(name))
            assert spark.catalog.getTable(table).tableType != "VIEW"
            assert spark.table(table).count() > 0, name
            assert differing_rows(spark, table, source) == 0, (batch_id, name)

    first, *later = refreshes
    assert set(first.rows.values()) == {None}  # the first night builds every table
    for refresh in later:  # the others rewrite what their files touch
        assert refresh.new_files > 0
        assert all(rows is not None for rows in refresh.rows.values()), refresh

    # A night of prices only: one new session of each company, one row of each table per company.
    day, run_id = dt.date(2025, 8, 1), "20250802T020000Z-e"
    prices = DATASETS["prices"]
    last = pl.from_arrow(
        pq.read_table(lake.root / partition_path(prices, LAST_SESSION, NIGHTS[-1][0]))
    )
    assert isinstance(last, pl.DataFrame)
    fresh = last.with_columns(pl.lit(run_id).alias("_run_id"))
    lake.write_file(partition_path(prices, day, run_id), encode_partition(prices, fresh))
    load_night(spark, lake, set(lake.list_files("raw/prices/date=2025-08-01")), 4, tables)
    refresh = build_gold(spark, tables, engine, today=split_lake.TODAY)
    companies = fresh.height
    assert (refresh.new_files, refresh.symbols) == (1, companies)
    assert refresh.rows == {
        "price_features": companies,
        "fundamentals_pit": 0,
        "daily_features": companies,
    }

    # A night that only announces a split of the control company: its whole history is re-based.
    splits = DATASETS["splits"]
    split = {"symbol": "CTRL", "date": day, "numerator": 2.0, "denominator": 1.0}
    at = dt.datetime(2025, 8, 3, 2, tzinfo=dt.UTC)
    frame = split_lake._frame(
        "splits", [{**split, "_run_id": "20250803T020000Z-f", "_ingested_at": at}]
    )
    path = partition_path(splits, dt.date(2025, 8, 3), "20250803T020000Z-f")
    lake.write_file(path, encode_partition(splits, frame))
    load_night(spark, lake, {path}, 5, tables)
    refresh = build_gold(spark, tables, engine, today=split_lake.TODAY)
    control = spark.table(tables.name("price_features")).where("symbol = 'CTRL'").count()
    assert refresh.rows["price_features"] == control > 250
    for name in GOLD_TABLES:
        assert differing_rows(spark, tables.name(name), tables.name(gold_source(name))) == 0, name

    nothing = build_gold(spark, tables, engine, today=split_lake.TODAY)  # a night without files
    assert (nothing.new_files, nothing.symbols) == (0, 0)
    assert set(nothing.rows.values()) == {0}


def test_the_dashboard_queries_run_on_the_tables_the_job_builds(
    spark: SparkSession, built: Built
) -> None:
    spark.sql(f"USE SCHEMA {TABLES.namespace}")  # the bundle gives the dashboard its schema
    try:
        for name, (_, sql, columns) in dashboard_queries().items():
            rows = spark.sql(sql).collect()
            assert rows, name
            assert list(rows[0].asDict()) == list(columns), name
    finally:
        spark.sql("USE SCHEMA default")


def test_the_tables_carry_the_registrys_comments(spark: SparkSession, built: Built) -> None:
    name = TABLES.name("silver_prices")
    description = DATASETS["prices"].description
    expected = f"Silver: {description} The newest fetch of each (symbol, date)."
    assert spark.catalog.getTable(name).description == expected
    columns = {c.name: c.description for c in spark.catalog.listColumns(name)}
    assert columns["close"] == "FMP field close"
    assert columns["_run_id"] == "the run that wrote the row"
    assert columns["_source_file"] == "the lake file the row was loaded from"
    bronze = spark.catalog.getTable(TABLES.name("bronze_prices")).description
    assert bronze == f"Bronze: {description} Every row loaded, append-only."
    for gold in GOLD_TABLES:
        assert spark.catalog.getTable(TABLES.name(gold)).description == GOLD_COMMENTS[gold]
