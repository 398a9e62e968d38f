"""The medallion SQL run on a real engine (DuckDB, through sqlglot's Databricks → DuckDB
transpiler): the Silver MERGE's dedup, replay and late-correction rules, and the Gold price
features against an independent polars computation and TA-Lib."""

from __future__ import annotations

import datetime as dt
import math
import random

import duckdb
import numpy as np
import polars as pl
import pytest
import sqlglot
import talib

from stock_pipeline.datasets import DATASETS
from stock_pipeline.lakehouse import refresh_rsi_table
from stock_pipeline.medallion import (
    RSI_TABLE,
    Tables,
    gold_view_sql,
    merge_sql,
    silver_columns,
)
from tests.medallion_lake import PRICE_FEATURES, assert_price_features_match, assert_rsi_is_talibs

PRICES = DATASETS["prices"]
COLUMNS = [c.name for c in silver_columns(PRICES)]
T1 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
T2 = dt.datetime(2025, 1, 2, tzinfo=dt.UTC)


def duck(sql: str) -> str:
    return sqlglot.transpile(sql, read="databricks", write="duckdb")[0]


def price_row(
    symbol: str, day: dt.date, close: float, at: dt.datetime, source: str = "f1"
) -> dict[str, object]:
    return {
        "symbol": symbol, "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
        "volume": 1000, "change": 0.0, "change_percent": 0.0, "vwap": close, "_run_id": "r",
        "_ingested_at": at, "_extra": None, "date": day, "_source_file": source,
    }  # fmt: skip


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    ddl = ", ".join(f"{c.name} {c.type.spark}" for c in silver_columns(PRICES))
    connection.execute(f"CREATE TABLE silver_prices ({ddl})")
    connection.execute(f"CREATE TABLE batch ({ddl})")
    # Gold reads the splits to put prices on one share basis; these symbols never split.
    splits = ", ".join(f"{c.name} {c.type.spark}" for c in silver_columns(DATASETS["splits"]))
    connection.execute(f"CREATE TABLE silver_splits ({splits})")
    return connection


def load_batch(con: duckdb.DuckDBPyConnection, rows: list[dict[str, object]]) -> None:
    con.execute("DELETE FROM batch")
    placeholders = ", ".join("?" for _ in COLUMNS)
    con.executemany(
        f"INSERT INTO batch ({', '.join(COLUMNS)}) VALUES ({placeholders})",
        [[r[c] for c in COLUMNS] for r in rows],
    )


def silver(con: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    return con.execute(
        "SELECT symbol, date, close, _source_file FROM silver_prices ORDER BY symbol, date"
    ).fetchall()


def test_merge_keeps_the_newest_row_per_key_and_a_replay_changes_nothing(
    con: duckdb.DuckDBPyConnection,
) -> None:
    day = dt.date(2025, 1, 2)
    load_batch(con, [
        price_row("A", day, 10.0, T1, "f1"),
        price_row("A", day, 11.0, T2, "f2"),  # the same key, ingested later: wins
        price_row("B", day, 5.0, T1, "f1"),
    ])  # fmt: skip
    merge = duck(merge_sql(PRICES, "batch", "silver_prices"))
    con.execute(merge)
    first = silver(con)
    assert first == [("A", day, 11.0, "f2"), ("B", day, 5.0, "f1")]
    con.execute(merge)  # the same micro-batch replayed after a failure
    assert silver(con) == first


def test_a_late_correction_updates_and_an_older_row_does_not(
    con: duckdb.DuckDBPyConnection,
) -> None:
    day = dt.date(2025, 1, 2)
    merge = duck(merge_sql(PRICES, "batch", "silver_prices"))
    load_batch(con, [price_row("A", day, 10.0, T1, "f1")])
    con.execute(merge)
    load_batch(con, [price_row("A", day, 10.5, T2, "fix")])
    con.execute(merge)
    assert silver(con) == [("A", day, 10.5, "fix")]
    load_batch(con, [price_row("A", day, 9.0, T1, "stale")])
    con.execute(merge)
    assert silver(con) == [("A", day, 10.5, "fix")]


def test_price_features_match_an_independent_polars_computation(
    con: duckdb.DuckDBPyConnection,
) -> None:
    rng = random.Random(3)
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(300)]
    rows = []
    for symbol in ("AAA", "BBB"):
        close = 100.0
        for day in days:
            close *= math.exp(rng.gauss(0, 0.02))
            rows.append(price_row(symbol, day, round(close, 4), T1))
    load_batch(con, rows)
    con.execute(duck(merge_sql(PRICES, "batch", "silver_prices")))
    refresh_rsi_table(con)
    con.execute(duck(gold_view_sql("price_features", Tables())))
    features = [*PRICE_FEATURES, "rsi_14"]
    result = con.execute(
        f"SELECT symbol, date, {', '.join(features)} FROM price_features ORDER BY symbol, date"
    )
    schema = {"symbol": pl.String, "date": pl.Date, **dict.fromkeys(features, pl.Float64)}
    got = pl.DataFrame(result.fetchall(), schema=schema, orient="row")
    assert got.height == 600
    assert_price_features_match(got.drop("rsi_14"), pl.DataFrame(rows))
    assert assert_rsi_is_talibs(got, pl.DataFrame(rows)) == 2 * (300 - 14)
    # No partial windows: the 20-day average starts on each symbol's 20th session.
    first = got.filter(pl.col("symbol") == "AAA")["sma_20"]
    assert first[:19].is_null().all()
    assert first[19] is not None


def _refresh_rsi(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    refresh_rsi_table(con, block_rows=100)
    rows = con.execute(f"SELECT symbol, date, rsi_14 FROM {RSI_TABLE} ORDER BY symbol, date")
    schema = {"symbol": pl.String, "date": pl.Date, "rsi_14": pl.Float64}
    return pl.DataFrame(rows.fetchall(), schema=schema, orient="row")


def _silver_prices(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    rows = con.execute("SELECT symbol, date, close FROM silver_prices ORDER BY symbol, date")
    schema = {"symbol": pl.String, "date": pl.Date, "close": pl.Float64}
    return pl.DataFrame(rows.fetchall(), schema=schema, orient="row")


def _assert_rsi_is_talibs_for_every_symbol(con: duckdb.DuckDBPyConnection) -> None:
    got, prices = _refresh_rsi(con), _silver_prices(con)
    for (symbol,), history in prices.group_by("symbol"):
        expected = talib.RSI(history["close"].to_numpy(), timeperiod=14)
        actual = got.filter(pl.col("symbol") == symbol)["rsi_14"].fill_null(float("nan"))
        assert (actual.is_nan().to_numpy() == np.isnan(expected)).all(), symbol
        known = ~np.isnan(expected)
        if known.any():
            assert np.abs(actual.to_numpy()[known] - expected[known]).max() <= 1e-6, symbol


def test_rsi_follows_corrections_late_sessions_young_symbols_and_flat_stretches(
    con: duckdb.DuckDBPyConnection,
) -> None:
    merge = duck(merge_sql(PRICES, "batch", "silver_prices"))
    rng = random.Random(11)
    days = [dt.date(2023, 1, 1) + dt.timedelta(days=i) for i in range(400)]
    walk, close = [], 50.0
    for _ in days:
        close *= math.exp(rng.gauss(0, 0.02))
        walk.append(round(close, 4))
    late = days[200]  # a session that arrives a night after the ones around it
    first_night = [price_row("OLD", d, c, T1) for d, c in zip(days, walk, strict=True) if d != late]
    first_night += [price_row("YOUNG", d, c, T1) for d, c in zip(days[:10], walk[:10], strict=True)]
    # Flat for 150 sessions, then a move of a hundredth of a cent that is then held.
    flat = [5.0] * 20 + [5.0001] * 130 + [5.0] * 250
    first_night += [price_row("FLAT", d, c, T1) for d, c in zip(days, flat, strict=True)]
    load_batch(con, first_night)
    con.execute(merge)
    _assert_rsi_is_talibs_for_every_symbol(con)

    second_night = [
        price_row("OLD", late, walk[200], T2),
        price_row("OLD", days[5], walk[5] * 1.01, T2),  # a correction inside the seed
        *(price_row("YOUNG", d, c, T2) for d, c in zip(days[10:18], walk[10:18], strict=True)),
    ]
    load_batch(con, second_night)
    con.execute(merge)
    _assert_rsi_is_talibs_for_every_symbol(con)
    assert _refresh_rsi(con).filter(pl.col("symbol") == "YOUNG")["rsi_14"].drop_nulls().len() == 4
