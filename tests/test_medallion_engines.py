"""The medallion SQL run on a real engine (DuckDB, through sqlglot's Databricks → DuckDB
transpiler): the Silver MERGE's dedup, replay and late-correction rules, and the Gold price
features against an independent polars computation."""

from __future__ import annotations

import datetime as dt
import math
import random

import duckdb
import polars as pl
import pytest
import sqlglot

from stock_pipeline.datasets import DATASETS
from stock_pipeline.medallion import Tables, gold_view_sql, merge_sql, silver_columns

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


def polars_features(prices: pl.DataFrame) -> pl.DataFrame:
    """The same features computed independently, by symbol, with polars."""
    close = pl.col("close")
    diff = close.diff()
    log_return = (close / close.shift(1)).log()
    gain = pl.when(diff > 0).then(diff).otherwise(0.0)
    loss = pl.when(diff < 0).then(-diff).otherwise(0.0)
    avg_gain, avg_loss = gain.rolling_mean(14), loss.rolling_mean(14)
    return (
        prices.sort("symbol", "date")
        .with_columns(
            sma_20=close.rolling_mean(20).over("symbol"),
            sma_200=close.rolling_mean(200).over("symbol"),
            return_5d=(close / close.shift(5) - 1).over("symbol"),
            volatility_20d=(log_return.rolling_std(20) * math.sqrt(252)).over("symbol"),
            rsi_14=(100 - 100 / (1 + avg_gain / avg_loss)).over("symbol"),
            drawdown=(close / close.cum_max() - 1).over("symbol"),
            high_52w=pl.col("high").rolling_max(252).over("symbol"),
        )
        # The first row of each symbol has no return: RSI's window starts at the second.
        .with_columns(
            rsi_14=pl.when(pl.int_range(pl.len()).over("symbol") >= 14).then(pl.col("rsi_14"))
        )
    )


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
    con.execute(duck(gold_view_sql("price_features", Tables())))
    features = [
        "sma_20",
        "sma_200",
        "return_5d",
        "volatility_20d",
        "rsi_14",
        "drawdown",
        "high_52w",
    ]
    result = con.execute(
        f"SELECT symbol, date, {', '.join(features)} FROM price_features ORDER BY symbol, date"
    )
    schema = {"symbol": pl.String, "date": pl.Date, **dict.fromkeys(features, pl.Float64)}
    got = pl.DataFrame(result.fetchall(), schema=schema, orient="row")
    expected = polars_features(pl.DataFrame(rows)).select("symbol", "date", *features)
    assert got.height == expected.height == 600
    for name in features:
        a, b = got[name], expected[name]
        assert a.is_null().to_list() == b.is_null().to_list(), f"{name}: NULL before enough history"
        both = pl.DataFrame({"a": a, "b": b}).drop_nulls()
        assert both.height > 0, name
        assert ((both["a"] - both["b"]).abs() <= 1e-9 * both["b"].abs().max()).all(), name
    # No partial windows: the 20-day average starts on each symbol's 20th session.
    first = got.filter(pl.col("symbol") == "AAA")["sma_20"]
    assert first[:19].is_null().all()
    assert first[19] is not None
