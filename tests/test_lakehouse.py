"""`stock-pipeline lakehouse`: the Databricks tables built in DuckDB from a lake the ingester wrote.

Silver is checked row for row against the rules computed in polars, the Gold features against
independent polars computations, and every failure path for its message, exit code and for
leaving the database as it was."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from stock_pipeline.cli import app
from stock_pipeline.datasets import DATASETS, Column, ColumnType
from stock_pipeline.errors import LakeError, QueryError
from stock_pipeline.lake import (
    LocalLake,
    dataset_files,
    encode_partition,
    partition_path,
    read_dataset,
)
from stock_pipeline.lakehouse import _create, build_lakehouse, refresh_rsi_table, run_query
from stock_pipeline.medallion import StatementBasis, silver_columns
from stock_pipeline.simulator import Fault
from tests import split_lake
from tests.medallion_lake import (
    AMENDED_AT,
    AMENDED_REVENUE_CHANGE,
    CORRECTED_DAY,
    CORRECTED_VOLUME,
    NEW_SECTOR,
    PRICE_FEATURES,
    STALE_DAY,
    STATEMENTS,
    TODAY,
    MedallionLake,
    assert_no_look_ahead,
    assert_price_features_match,
    assert_restatements_point_in_time,
    assert_rsi_is_talibs,
    assert_ttm_eps_and_pe_point_in_time,
    assert_unaccepted_quarter_counts_from_its_filing_date,
    expected_silver,
    ingest_night,
    quarterly_filings,
)
from tests.split_lake import (
    assert_continuous_across_the_split,
    assert_prices_on_the_newest_basis,
    write_split_lake,
)

runner = CliRunner()


def copy_lake(lake: MedallionLake, target: Path) -> LocalLake:
    shutil.copytree(lake.root, target)
    return LocalLake(target)


def table(database: Path, sql: str) -> pl.DataFrame:
    with duckdb.connect(str(database), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.sql(sql).pl()


def silver_frame(database: Path, dataset: str) -> pl.DataFrame:
    columns = [c.name for c in DATASETS[dataset].table_columns]
    key = ", ".join(DATASETS[dataset].key)
    return table(database, f"SELECT {', '.join(columns)} FROM silver_{dataset} ORDER BY {key}")


def assert_silver_exact(database: Path, lake: LocalLake) -> None:
    for name in ("prices", "income_statement", "balance_sheet", "cash_flow", "splits"):
        data = DATASETS[name]
        expected = expected_silver(lake, name).sort(list(data.key))
        got = silver_frame(database, name)
        assert got.height == expected.height > 0, name
        assert got.equals(expected.select(got.columns)), name


def test_builds_silver_and_gold_and_a_second_build_loads_nothing(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    lake = copy_lake(lakes[0], tmp_path / "lake")
    database = tmp_path / "lakehouse.duckdb"
    report = build_lakehouse(lake, database, today=TODAY)
    assert report.datasets["prices"].new_files == len(dataset_files(lake, DATASETS["prices"]))
    assert report.new_runs == 1
    assert report.views == ["price_features", "fundamentals_pit", "daily_features", "data_health"]
    assert_silver_exact(database, lake)
    before = {n: silver_frame(database, n) for n in ("prices", "cash_flow")}

    again = build_lakehouse(lake, database, today=TODAY)
    assert all(load.new_files == 0 and load.new_rows == 0 for load in again.datasets.values())
    assert again.new_runs == 0
    assert all(silver_frame(database, n).equals(f) for n, f in before.items())
    bronze = table(database, "SELECT COUNT(*) AS n FROM bronze_prices")["n"][0]
    assert bronze == report.datasets["prices"].new_rows  # nothing loaded twice


def test_incremental_run_applies_the_correction_ignores_the_stale_row_and_keeps_the_reject(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    lake = copy_lake(lakes[0], tmp_path / "lake")
    database = tmp_path / "lakehouse.duckdb"
    build_lakehouse(lake, database, today=TODAY)
    # The second night's files arrive in the same lake; only they are loaded.
    for path in sorted(set(lakes[1].lake.list_files("")) - lakes[1].run_1_files):
        lake.write_file(path, lakes[1].lake.read_file(path))
    report = build_lakehouse(lake, database, today=TODAY)
    assert 0 < report.datasets["prices"].new_files < 20
    assert report.datasets["prices"].rejected == 1
    assert_silver_exact(database, lake)

    prices = silver_frame(database, "prices").filter(pl.col("symbol") == "AAPL")
    assert prices.filter(pl.col("date") == CORRECTED_DAY)["volume"][0] == CORRECTED_VOLUME
    assert prices.filter(pl.col("date") == STALE_DAY)["volume"][0] != 1
    rejects = table(database, "SELECT dataset, symbol, date, _reason, _row FROM silver_rejects")
    assert rejects.select("dataset", "symbol").rows() == [("prices", "AAPL")]
    assert rejects["_reason"][0] == "high below low; high below open or close"
    assert '"high":1.0' in rejects["_row"][0].replace(" ", "")

    history = table(
        database,
        "SELECT sector, is_current, valid_from, valid_to FROM dim_company "
        "WHERE symbol = 'AAPL' ORDER BY valid_from",
    )
    # Three versions: the first night's, the new sector, the old one again (the repeat in
    # between is no version); each ends where the next begins.
    sectors = history["sector"].to_list()
    assert sectors == [sectors[0], NEW_SECTOR, sectors[0]]
    assert sectors[0] != NEW_SECTOR
    assert history["is_current"].to_list() == [False, False, True]
    assert history["valid_to"].to_list()[:2] == history["valid_from"].to_list()[1:]
    assert history["valid_to"][2] is None
    assert (
        table(database, "SELECT COUNT(*) AS n FROM dim_company WHERE symbol = 'MSFT'")["n"][0] == 1
    )


@pytest.fixture(scope="module")
def both_nights(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path_factory: pytest.TempPathFactory
) -> tuple[LocalLake, Path]:
    """The lakehouse of both nights, built once for the tests that only read it."""
    root = tmp_path_factory.mktemp("both_nights")
    lake = copy_lake(lakes[1], root / "lake")
    database = root / "lakehouse.duckdb"
    build_lakehouse(lake, database, today=TODAY)
    return lake, database


def test_gold_price_features_match_polars(both_nights: tuple[LocalLake, Path]) -> None:
    lake, database = both_nights
    got = table(
        database,
        f"SELECT symbol, date, {', '.join(PRICE_FEATURES)} FROM price_features ORDER BY symbol, date",
    )
    assert_price_features_match(got, expected_silver(lake, "prices"))


def test_rsi_is_wilders_as_ta_lib_computes_it(both_nights: tuple[LocalLake, Path]) -> None:
    lake, database = both_nights
    got = table(database, "SELECT symbol, date, rsi_14 FROM price_features ORDER BY symbol, date")
    assert assert_rsi_is_talibs(got, expected_silver(lake, "prices")) > 500


def _rsi(database: Path) -> pl.DataFrame:
    return table(database, "SELECT * FROM gold_rsi_14 ORDER BY symbol, date")


def assert_same_rsi(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    """Two `gold_rsi_14` tables hold the same sessions and, to rounding, the same values."""
    keys = ("symbol", "date", "session_number")
    assert got.select(keys).equals(expected.select(keys))
    for side in ("avg_gain", "avg_loss", "rsi_14"):
        assert (got[side] - expected[side]).abs().max() <= 1e-9, side


def test_rsi_extends_night_by_night_and_equals_a_full_recompute(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    lake = copy_lake(lakes[0], tmp_path / "lake")
    database = tmp_path / "nightly.duckdb"
    build_lakehouse(lake, database, today=TODAY)
    after_night_1 = _rsi(database)
    # Night 2 lands (with its late volume correction and a broken row), then a close is corrected
    # far back: the rows from that day on are computed again, the ones before it are kept.
    shutil.copytree(lakes[1].root, lake.root, dirs_exist_ok=True)
    prices = DATASETS["prices"]
    old = read_dataset(lake, prices).filter(pl.col("date") == dt.date(2024, 6, 3))
    fixed = old.with_columns(
        (pl.col("close") * 1.01).alias("close"),
        pl.col("high") * 1.01,
        pl.lit(dt.datetime(2025, 7, 31, 5, tzinfo=dt.UTC)).alias("_ingested_at"),
        pl.lit("20250731T050000Z-close").alias("_run_id"),
    )
    run = "20250731T050000Z-close"
    lake.write_file(
        partition_path(prices, dt.date(2024, 6, 3), run), encode_partition(prices, fixed)
    )
    build_lakehouse(lake, database, today=TODAY)
    incremental = _rsi(database)

    fresh = tmp_path / "fresh.duckdb"
    build_lakehouse(lake, fresh, today=TODAY)
    recomputed = _rsi(fresh)
    assert incremental.height > after_night_1.height
    assert_same_rsi(incremental, recomputed)
    kept = after_night_1.filter(pl.col("date") < dt.date(2024, 6, 3))
    assert (
        incremental.join(kept, on=["symbol", "date"])
        .filter(pl.col("rsi_14") != pl.col("rsi_14_right"))
        .is_empty()
    )
    assert assert_rsi_is_talibs(incremental, expected_silver(lake, "prices")) > 500


def test_rsi_reaches_a_long_history_in_blocks(
    both_nights: tuple[LocalLake, Path], tmp_path: Path
) -> None:
    lake, built = both_nights
    database = tmp_path / "blocks.duckdb"
    shutil.copy(built, database)
    with duckdb.connect(str(database)) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("DELETE FROM gold_rsi_14")
        passes = refresh_rsi_table(con, block_rows=40)
    assert passes == 10  # 395 sessions per symbol, 40 a pass
    in_blocks = _rsi(database)
    assert_same_rsi(in_blocks, _rsi(built))
    assert assert_rsi_is_talibs(in_blocks, expected_silver(lake, "prices")) > 500


def test_an_undatable_statement_in_silver_is_never_used(
    both_nights: tuple[LocalLake, Path], tmp_path: Path
) -> None:
    _, built = both_nights
    database = tmp_path / "undatable.duckdb"
    shutil.copy(built, database)
    quarters = table(
        database,
        "SELECT date FROM silver_balance_sheet WHERE symbol = 'AAPL' AND period LIKE 'Q%' "
        "ORDER BY date",
    )["date"].to_list()
    # A row from before the check that quarantines statements with neither time.
    with duckdb.connect(str(database)) as con:
        con.execute(
            "UPDATE silver_balance_sheet_versions SET accepted_date = NULL, filing_date = NULL "
            f"WHERE symbol = 'AAPL' AND period LIKE 'Q%' AND date = DATE '{quarters[-4]}'"
        )
    pit = table(
        database,
        "SELECT period_end, known_from, ttm_revenue FROM fundamentals_pit WHERE symbol = 'AAPL'",
    )
    # The quarter is never known; the three after it are, without a trailing year that adds it.
    assert quarters[-4] not in set(pit["period_end"])
    assert pit["known_from"].null_count() == 0
    later = pit.filter(pl.col("period_end").is_in(quarters[-3:]))
    assert set(later["period_end"]) == set(quarters[-3:])
    assert later["ttm_revenue"].null_count() == later.height
    assert pit.filter(pl.col("period_end") == quarters[-5])["ttm_revenue"].null_count() == 0
    used = table(
        database,
        "SELECT fundamentals_period_end, ttm_revenue FROM daily_features WHERE symbol = 'AAPL'",
    )
    assert quarters[-4] not in set(used["fundamentals_period_end"])
    assert quarters[-5] in set(used["fundamentals_period_end"])
    assert (
        used.filter(pl.col("fundamentals_period_end").is_in(quarters[-3:]))[
            "ttm_revenue"
        ].null_count()
        == used.filter(pl.col("fundamentals_period_end").is_in(quarters[-3:])).height
    )


def test_market_cap_is_the_close_times_the_quarters_basic_shares(
    both_nights: tuple[LocalLake, Path],
) -> None:
    _, database = both_nights
    # FMP's close and basic shares, on the same (fetched) basis: their product is the market cap
    # whatever basis daily_features puts each of them on.
    rows = table(
        database,
        "SELECT p.close, d.market_cap, i.weighted_average_shs_out AS basic, "
        "i.weighted_average_shs_out_dil AS diluted FROM daily_features AS d "
        "JOIN silver_prices AS p ON p.symbol = d.symbol AND p.date = d.date "
        "JOIN silver_income_statement AS i ON i.symbol = d.symbol "
        "AND i.date = d.fundamentals_period_end AND i.period LIKE 'Q%' "
        "WHERE d.fundamentals_known_from_source <> 'ingest'",
    )
    assert rows.height > 300
    assert (rows["market_cap"] - rows["close"] * rows["basic"]).abs().max() <= 1e-3
    assert (rows["basic"] != rows["diluted"]).all()  # the test tells the two apart


def test_no_daily_feature_uses_a_statement_before_it_was_public(
    both_nights: tuple[LocalLake, Path],
) -> None:
    lake, database = both_nights
    daily = table(
        database,
        "SELECT symbol, date, fundamentals_period_end, fundamentals_known_from, ttm_revenue "
        "FROM daily_features ORDER BY symbol, date",
    )
    assert assert_no_look_ahead(daily, lake) > 400


def test_a_quarter_without_acceptance_times_counts_from_its_filing_date(
    both_nights: tuple[LocalLake, Path],
) -> None:
    lake, database = both_nights
    pit = table(
        database,
        "SELECT period_end, known_at, known_from, known_from_source FROM fundamentals_pit "
        "WHERE symbol = 'MSFT'",
    )
    daily = table(
        database,
        "SELECT date, fundamentals_period_end, fundamentals_known_from_source FROM daily_features "
        "WHERE symbol = 'MSFT'",
    )
    assert_unaccepted_quarter_counts_from_its_filing_date(pit, daily, lake)


def test_a_restated_quarter_shows_each_version_from_its_own_day(
    both_nights: tuple[LocalLake, Path],
) -> None:
    _, database = both_nights
    pit = table(
        database,
        "SELECT period_end, known_from, known_from_source, revised, ttm_revenue "
        "FROM fundamentals_pit WHERE symbol = 'AAPL'",
    )
    daily = table(
        database,
        "SELECT date, fundamentals_period_end, ttm_revenue FROM daily_features "
        "WHERE symbol = 'AAPL' ORDER BY date",
    )
    assert_restatements_point_in_time(pit, daily)


def test_a_database_older_than_the_versions_tables_fills_them_from_bronze(
    both_nights: tuple[LocalLake, Path], tmp_path: Path
) -> None:
    lake, built = both_nights
    database = tmp_path / "upgraded.duckdb"
    shutil.copy(built, database)
    pit = "SELECT * FROM fundamentals_pit ORDER BY symbol, period_end, known_from"
    before = table(database, pit)
    with duckdb.connect(str(database)) as con:
        for name in STATEMENTS:
            con.execute(f"DELETE FROM silver_{name}_versions")
    assert table(database, "SELECT COUNT(*) AS n FROM fundamentals_pit")["n"][0] == 0
    report = build_lakehouse(lake, database, today=TODAY)
    assert all(load.new_files == 0 for load in report.datasets.values())
    assert table(database, pit).equals(before)


def _lake_until(lake: LocalLake, cutoff: str, target: Path) -> LocalLake:
    """A copy of `lake` with the runs that started at or before `cutoff` (their files and
    manifests): the lake as it was that night."""
    for path in lake.list_files(""):
        if Path(path).name[:16] <= cutoff:
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lake.root / path, target / path)
    return LocalLake(target)


def test_gold_built_on_each_night_agrees_with_gold_built_today(
    both_nights: tuple[LocalLake, Path], tmp_path: Path
) -> None:
    # A backtest run any night sees the same past as one run today; the only exception is a
    # version first fetched later that counts from its own, earlier acceptance (the amendment).
    lake, built = both_nights
    columns = (
        "symbol, date, fundamentals_period_end, fundamentals_known_from, ttm_revenue, "
        "ttm_eps_diluted, market_cap"
    )
    query = f"SELECT {columns} FROM daily_features ORDER BY symbol, date"
    today = table(built, query)
    amended_after = AMENDED_AT.astimezone(ZoneInfo("America/New_York")).date()
    for cutoff in ("20250725T020000Z", "20250728T010000Z", "20250731T020000Z", "20250731T040000Z"):
        then_lake = _lake_until(lake, cutoff, tmp_path / cutoff)
        database = tmp_path / f"{cutoff}.duckdb"
        build_lakehouse(then_lake, database, today=TODAY)
        then = table(database, query)
        now = today.join(then.select("symbol", "date"), on=["symbol", "date"])
        assert now.height == then.height > 700, cutoff
        late = (pl.col("symbol") == "AAPL") & (pl.col("date") > amended_after)
        assert now.filter(~late).equals(then.filter(~late)), cutoff
        differ = now.filter(late)["ttm_revenue"] - then.filter(late)["ttm_revenue"]
        assert differ.len() > 20, cutoff
        assert (differ == AMENDED_REVENUE_CHANGE).all(), cutoff


def test_ttm_eps_and_pe_are_point_in_time(both_nights: tuple[LocalLake, Path]) -> None:
    lake, database = both_nights
    daily = table(
        database,
        "SELECT date, close, ttm_eps_diluted, pe_ratio FROM daily_features "
        "WHERE symbol = 'AAPL' ORDER BY date",
    )
    assert_ttm_eps_and_pe_point_in_time(daily, lake)


def test_a_late_filing_for_an_older_quarter_does_not_replace_the_newer_one(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    lake = copy_lake(lakes[1], tmp_path / "lake")
    filings = quarterly_filings(lake, "AAPL")
    # A quarter outside the newest one's trailing year is amended after the newest became
    # public: the newest filing still counts (its trailing year does not hold that quarter).
    assert filings.height >= 5
    newest, older = filings.row(-1, named=True), filings.row(-5, named=True)
    amended_at = dt.datetime.combine(newest["public_on"], dt.time(20), dt.UTC) + dt.timedelta(
        days=2
    )
    run = "20250731T050000Z-amend"
    ingested = dt.datetime(2025, 7, 31, 5, tzinfo=dt.UTC)
    for name in ("income_statement", "balance_sheet", "cash_flow"):
        data = DATASETS[name]
        rows = read_dataset(lake, data).filter(
            (pl.col("symbol") == "AAPL") & (pl.col("date") == older["date"])
            & pl.col("period").str.starts_with("Q")
        ).with_columns(
            pl.lit(amended_at).alias("accepted_date"),
            pl.lit(ingested).alias("_ingested_at"),
            pl.lit(run).alias("_run_id"),
            # An amendment: new figures under a new acceptance time.
            *([pl.col("revenue") * 1.01] if name == "income_statement" else []),
        )  # fmt: skip
        assert rows.height == 1
        lake.write_file(partition_path(data, ingested.date(), run), encode_partition(data, rows))
    database = tmp_path / "lakehouse.duckdb"
    build_lakehouse(lake, database, today=TODAY)
    after = table(
        database,
        "SELECT date, fundamentals_period_end FROM daily_features "
        f"WHERE symbol = 'AAPL' AND date > DATE'{amended_at.date()}' ORDER BY date",
    )
    assert after.height > 0
    assert set(after["fundamentals_period_end"]) == {newest["date"]}
    pit = table(
        database, "SELECT period_end, known_from FROM fundamentals_pit WHERE symbol = 'AAPL'"
    )
    versions = pit.filter(pl.col("period_end") == older["date"])["known_from"].sort().to_list()
    assert versions == [older["public_on"], amended_at.date()]  # the amendment did land


def test_data_health_reports_coverage_gaps_quarantine_and_the_last_run(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    lake = copy_lake(lakes[1], tmp_path / "lake")
    # A missing session: the file of one day is gone from the lake.
    missing = next(p for p in dataset_files(lake, DATASETS["prices"]) if "2025-03-03" in p)
    (lake.root / missing).unlink()
    database = tmp_path / "lakehouse.duckdb"
    build_lakehouse(lake, database, today=TODAY)
    health = table(database, "SELECT * FROM data_health ORDER BY dataset")
    prices = health.filter(pl.col("dataset") == "prices").row(0, named=True)
    assert prices["latest_landed"] == dt.date(2025, 7, 30)
    assert prices["symbols_covered"] == prices["symbols_in_universe"] == 2
    assert prices["session_gaps"] == 2  # one session, two symbols
    assert prices["last_run_status"] == "ok"
    assert prices["last_run_id"] == "20250731T020000Z-run2"


def test_quarantined_rows_are_loaded_into_their_own_table_and_counted(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    lake = copy_lake(lakes[0], tmp_path / "lake")
    night = ("20250731T020000Z-bad", dt.date(2025, 7, 25), dt.date(2025, 7, 30))
    ingest_night(lake, night, faults={"MSFT": (Fault(kind="bad_rows"),)})
    quarantined = read_dataset(lake, DATASETS["prices"], quarantine=True)
    assert quarantined.height > 0
    database = tmp_path / "lakehouse.duckdb"
    report = build_lakehouse(lake, database, today=TODAY)
    assert report.datasets["prices"].quarantined == quarantined.height
    bronze = table(
        database,
        "SELECT dataset, symbol, _reason, _raw, ingest_date, _source_file FROM bronze_quarantine",
    )
    assert bronze.height == quarantined.height
    assert set(bronze["dataset"]) == {"prices"}
    assert set(bronze["symbol"]) == {"MSFT"}
    assert sorted(bronze["_reason"]) == sorted(quarantined["_reason"])
    assert all("/quarantine/prices/ingest_date=" in f for f in bronze["_source_file"])
    health = table(database, "SELECT quarantined_rows FROM data_health WHERE dataset = 'prices'")
    assert health["quarantined_rows"][0] == quarantined.height


def test_a_profile_breaking_a_check_is_rejected_not_a_new_company_version(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    lake = copy_lake(lakes[0], tmp_path / "lake")
    database = tmp_path / "lakehouse.duckdb"
    build_lakehouse(lake, database, today=TODAY)
    profile = DATASETS["profile"]
    broken = (
        read_dataset(lake, profile)
        .filter(pl.col("symbol") == "MSFT")
        .with_columns(
            pl.lit(None, pl.String).alias("company_name"),
            pl.lit(dt.datetime(2025, 7, 31, 4, tzinfo=dt.UTC)).alias("_ingested_at"),
        )
    )
    run = "20250731T040000Z-broken"
    lake.write_file(
        partition_path(profile, dt.date(2025, 7, 31), run), encode_partition(profile, broken)
    )
    report = build_lakehouse(lake, database, today=TODAY)
    assert report.datasets["profile"].rejected == 1
    versions = table(
        database, "SELECT company_name, is_current FROM dim_company WHERE symbol = 'MSFT'"
    )
    assert versions.height == 1  # no new version from the broken profile
    assert versions["company_name"][0] is not None
    assert versions["is_current"][0]
    rejects = table(database, "SELECT dataset, symbol, _reason FROM silver_rejects")
    assert rejects.rows() == [("profile", "MSFT", "missing company name")]


def test_a_failed_build_keeps_the_database_and_the_next_build_loads_the_files(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    lake = copy_lake(lakes[0], tmp_path / "lake")
    database = tmp_path / "lakehouse.duckdb"
    broken = dataset_files(lake, DATASETS["cash_flow"])[0]
    good = (lake.root / broken).read_bytes()
    (lake.root / broken).write_bytes(good[: len(good) // 2])
    with pytest.raises(LakeError, match=r"raw/cash_flow/.* is not a readable Parquet file"):
        build_lakehouse(lake, database, today=TODAY)
    # Nothing of cash_flow went in, and it was not marked as loaded.
    loaded = table(database, "SELECT path FROM _loaded_files")["path"].to_list()
    assert not any(p.startswith("raw/cash_flow/") for p in loaded)
    assert table(database, "SELECT COUNT(*) AS n FROM bronze_cash_flow")["n"][0] == 0
    (lake.root / broken).write_bytes(good)
    report = build_lakehouse(lake, database, today=TODAY)
    assert report.datasets["cash_flow"].new_files == 1
    assert report.datasets["prices"].new_files == 0
    assert_silver_exact(database, lake)


def test_cli_builds_and_queries(lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path) -> None:
    copy_lake(lakes[0], tmp_path / "lake")
    database = tmp_path / "lh.duckdb"
    result = runner.invoke(
        app,
        ["lakehouse", "--lake", str(tmp_path / "lake"), "--database", str(database),
         "--query", "SELECT COUNT(DISTINCT symbol) AS symbols FROM silver_prices"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "silver rows" in result.output
    assert "symbols" in result.output
    assert "│ 2 " in result.output
    assert run_query(database, "SELECT COUNT(*) FROM price_features")[1][0][0] > 0


def test_cli_errors_say_what_is_wrong(tmp_path: Path) -> None:
    result = runner.invoke(app, ["lakehouse", "--lake", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "no raw/ folder" in result.output
    result = runner.invoke(app, ["lakehouse", "--lake", "s3://bucket/lake"])
    assert result.exit_code == 2
    assert "not a local folder" in result.output


def test_a_bad_query_is_a_usage_error(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    lake = copy_lake(lakes[0], tmp_path / "lake")
    database = tmp_path / "lakehouse.duckdb"
    build_lakehouse(lake, database, today=TODAY)
    with pytest.raises(QueryError, match="no_such_table"):
        run_query(database, "SELECT * FROM no_such_table")
    result = runner.invoke(
        app, ["lakehouse", "--lake", str(lake.root), "--database", str(database),
              "--query", "SELECT * FROM no_such_table"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no_such_table" in result.output
    assert "silver rows" in result.output  # the build itself was reported first


def test_silver_lineage_names_the_source_file(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    lake = copy_lake(lakes[0], tmp_path / "lake")
    database = tmp_path / "lakehouse.duckdb"
    build_lakehouse(lake, database, today=TODAY)
    names = [c.name for c in silver_columns(DATASETS["prices"])]
    assert "_source_file" in names
    sources = table(database, "SELECT DISTINCT _source_file FROM silver_prices")["_source_file"]
    assert all(s.startswith(str(lake.root)) and s.endswith(".parquet") for s in sources)
    bronze = table(
        database,
        "SELECT MIN(_source_modified_at) AS m, COUNT(_rescued_data) AS r FROM bronze_prices",
    )
    assert bronze["m"][0] is not None
    assert bronze["r"][0] == 0


SPLIT_PRICES = (
    "SELECT symbol, date, close, volume, daily_return, rsi_14 FROM price_features "
    "ORDER BY symbol, date"
)
SPLIT_FEATURES = (
    "SELECT symbol, date, close, ttm_eps_diluted, basic_shares, market_cap, pe_ratio "
    "FROM daily_features ORDER BY symbol, date"
)


@pytest.mark.parametrize("basis", ["fetched", "filed"])
def test_valuation_is_continuous_across_a_split_on_either_statement_basis(
    basis: StatementBasis, tmp_path: Path
) -> None:
    lake = write_split_lake(tmp_path / "lake", basis)
    database = tmp_path / "lakehouse.duckdb"
    build_lakehouse(lake, database, today=split_lake.TODAY, statement_basis=basis)
    assert assert_continuous_across_the_split(table(database, SPLIT_FEATURES)) > 250
    features = table(database, SPLIT_PRICES)
    assert assert_prices_on_the_newest_basis(features) > 700
    # The last month uses the quarters FMP restated for the split (fetched basis): same figures
    # on any one basis, dated from the night that saw them.
    last_month = table(
        database,
        "SELECT fundamentals_known_from_source AS source FROM daily_features "
        f"WHERE symbol = '{split_lake.SPLITTER}' AND date > DATE '2025-06-30'",
    )
    assert last_month.height > 15
    assert set(last_month["source"]) == {"ingest" if basis == "fetched" else "acceptance"}


def test_reading_statements_on_the_wrong_basis_breaks_the_backfilled_splitter(
    tmp_path: Path,
) -> None:
    # Proof the setting matters: statements filed before the split, first fetched after it.
    lake = write_split_lake(tmp_path / "lake", "filed")
    database = tmp_path / "lakehouse.duckdb"
    build_lakehouse(lake, database, today=split_lake.TODAY, statement_basis="fetched")
    daily = table(database, SPLIT_FEATURES)
    expected = split_lake.expected_daily(split_lake.COMPANIES[1])
    late = daily.filter(pl.col("symbol") == split_lake.LATE).join(expected, on="date")
    before = late.filter(pl.col("date") < split_lake.SPLIT_DAY).drop_nulls("pe_ratio")
    assert before.height > 20
    # Pre-split EPS taken for post-split EPS: four times too large, P/E a quarter of the truth.
    off = before["pe_ratio"] * split_lake.RATIO / before["pe_ratio_right"] - 1
    assert off.abs().max() < 1e-9
    with pytest.raises(AssertionError):
        assert_continuous_across_the_split(daily)


def test_cli_reads_statements_on_the_basis_it_is_told(tmp_path: Path) -> None:
    lake = write_split_lake(tmp_path / "lake", "filed")
    database = tmp_path / "lakehouse.duckdb"
    args = ["lakehouse", "--lake", str(lake.root), "--database", str(database)]
    wrong = runner.invoke(app, [*args, "--statement-basis", "as-reported"])
    assert wrong.exit_code == 2
    assert "fetched" in wrong.output
    assert "filed" in wrong.output
    built = runner.invoke(app, [*args, "--statement-basis", "filed"])
    assert built.exit_code == 0, built.output
    assert assert_continuous_across_the_split(table(database, SPLIT_FEATURES)) > 250


def test_a_database_built_before_a_registry_column_gains_it() -> None:
    con = duckdb.connect()
    prices = DATASETS["prices"]
    _create(con, "silver_prices", silver_columns(prices))
    con.execute(
        "INSERT INTO silver_prices (symbol, date, close) VALUES ('AAPL', DATE '2025-07-01', 1)"
    )
    wider = (*silver_columns(prices), Column("adj_close", ColumnType.FLOAT, "adjClose"))
    _create(con, "silver_prices", wider)  # the next `stock-pipeline lakehouse`
    _create(con, "silver_prices", wider)  # and the one after: nothing left to add
    names = [d[0] for d in con.execute("SELECT * FROM silver_prices LIMIT 0").description]
    assert names == [c.name for c in wider]
    assert con.execute("SELECT close, adj_close FROM silver_prices").fetchall() == [(1.0, None)]
