"""A lake around a 4:1 split, built by hand, and what Gold must compute on it.

One company trades for a year; on SPLIT_DAY each share becomes four. The lake is fetched four
times, as a nightly ingest would: twice before the split, twice after it. FMP's prices are
split-adjusted as of the day they are fetched, so the sessions before the split fetched on the
night after it are a quarter of those fetched before. Its statements are on one of two share
bases (`medallion.StatementBasis`): "fetched" (every quarter restated to the basis of the day it
is fetched, as FMP's AAPL statements show) or "filed" (as filed with the SEC). A second company
splits the same way but is first fetched after the split (a backfill: the case where the two
bases differ), and a control company never splits.

The expected figures come from the company's economics, not from the lake: a value per original
share that moves smoothly, the net income of each quarter and its shares in original units.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import talib

from stock_pipeline.datasets import DATASETS
from stock_pipeline.lake import LocalLake, encode_partition, partition_path
from stock_pipeline.market_calendar import sessions_between
from stock_pipeline.medallion import StatementBasis

SPLITTER, LATE, CONTROL = "SPLT", "LATE", "CTRL"
SPLIT_DAY = dt.date(2025, 3, 10)
RATIO = 4
FIRST_SESSION, LAST_SESSION = dt.date(2024, 7, 1), dt.date(2025, 7, 31)
TODAY = dt.date(2025, 8, 1)
ORIGINAL_SHARES = 1_000_000_000.0
#: (run id, when it fetched, the sessions it fetched from): two nights before the split, two after
#: (on the "fetched" basis the third brings every older quarter restated, which the fourth month
#: of sessions uses).
NIGHTS = (
    ("20241112T020000Z-a", dt.datetime(2024, 11, 12, 2, tzinfo=dt.UTC), FIRST_SESSION),
    ("20250211T020000Z-b", dt.datetime(2025, 2, 11, 2, tzinfo=dt.UTC), dt.date(2024, 11, 11)),
    ("20250630T020000Z-c", dt.datetime(2025, 6, 30, 2, tzinfo=dt.UTC), dt.date(2025, 2, 10)),
    ("20250801T020000Z-d", dt.datetime(2025, 8, 1, 2, tzinfo=dt.UTC), dt.date(2025, 6, 30)),
)
#: Quarter ends and their acceptance (New York 16:30 = 20:30 or 21:30 UTC); the last is after
#: the split, so a filing on either basis carries the new share count.
QUARTERS = (
    (dt.date(2024, 3, 31), "Q1", dt.datetime(2024, 5, 2, 20, 30, tzinfo=dt.UTC)),
    (dt.date(2024, 6, 30), "Q2", dt.datetime(2024, 8, 1, 20, 30, tzinfo=dt.UTC)),
    (dt.date(2024, 9, 30), "Q3", dt.datetime(2024, 10, 31, 20, 30, tzinfo=dt.UTC)),
    (dt.date(2024, 12, 31), "Q4", dt.datetime(2025, 1, 30, 21, 30, tzinfo=dt.UTC)),
    (dt.date(2025, 3, 31), "Q1", dt.datetime(2025, 5, 1, 20, 30, tzinfo=dt.UTC)),
)


@dataclass(frozen=True)
class Company:
    symbol: str
    splits: bool
    #: The night the company joined the universe: that night fetches its whole history.
    first_night: int = 0

    def value(self, day: dt.date) -> float:
        """Value of one original share: a smooth path, so a jump can only come from a basis."""
        t = (day - FIRST_SESSION).days
        return (150.0 if self.splits else 80.0) * (1 + 0.2 * math.sin(t / 60)) + 0.05 * t

    def net_income(self, n: int) -> float:
        return (2.0e9 if self.splits else 1.0e9) * (1 + 0.05 * n)

    def original_shares(self, n: int) -> float:
        return ORIGINAL_SHARES * (1 - 0.01 * n)  # buybacks

    def shares_per_original(self, day: dt.date) -> int:
        """Shares one original share had become on `day` (the split is effective on its day)."""
        return RATIO if self.splits and day >= SPLIT_DAY else 1


COMPANIES = (
    Company(SPLITTER, splits=True),
    Company(LATE, splits=True, first_night=2),
    Company(CONTROL, splits=False),
)


def sessions() -> list[dt.date]:
    return sessions_between(FIRST_SESSION, LAST_SESSION)


def _new_york_day(moment: dt.datetime) -> dt.date:
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo("America/New_York")).date()


def _frame(dataset: str, rows: list[dict[str, object]]) -> pl.DataFrame:
    """Rows on the dataset's file schema, every column not given NULL."""
    schema = DATASETS[dataset].polars_schema()
    return pl.DataFrame(
        [{name: row.get(name) for name in schema} for row in rows], schema=schema, orient="row"
    )


def write_split_lake(root: Path, basis: StatementBasis) -> LocalLake:
    """The four nights into a new lake at `root`, statements on `basis`."""
    lake = LocalLake(root)
    days = sessions()
    for n, (run_id, fetched_at, since) in enumerate(NIGHTS):
        until = NIGHTS[n + 1][2] - dt.timedelta(days=1) if n + 1 < len(NIGHTS) else LAST_SESSION
        fetched_on = _new_york_day(fetched_at)
        lineage = {"_run_id": run_id, "_ingested_at": fetched_at}
        prices = DATASETS["prices"]
        for day in (d for d in days if d <= until):
            rows = []
            for company in COMPANIES:
                if n < company.first_night or (n > company.first_night and day < since):
                    continue
                # FMP adjusts for every split up to the day it is fetched.
                close = company.value(day) / company.shares_per_original(fetched_on)
                rows.append(
                    {
                        "symbol": company.symbol,
                        "open": close,
                        "high": close,
                        "low": close,
                        "close": close,
                        "volume": 1_000_000 * company.shares_per_original(fetched_on),
                        **lineage,
                    }
                )
            if rows:
                path = partition_path(prices, day, run_id)
                lake.write_file(path, encode_partition(prices, _frame("prices", rows)))
        statements: dict[str, list[dict[str, object]]] = {
            "income_statement": [],
            "balance_sheet": [],
            "cash_flow": [],
        }
        for company in (c for c in COMPANIES if n >= c.first_night):
            for k, (period_end, period, accepted_at) in enumerate(QUARTERS):
                if _new_york_day(accepted_at) >= fetched_on:
                    continue
                basis_day = fetched_on if basis == "fetched" else _new_york_day(accepted_at)
                shares = company.original_shares(k) * company.shares_per_original(basis_day)
                header = {
                    "symbol": company.symbol,
                    "date": period_end,
                    "period": period,
                    "reported_currency": "USD",
                    "fiscal_year": period_end.year,
                    "accepted_date": accepted_at,
                    "filing_date": _new_york_day(accepted_at),
                    **lineage,
                }
                income = company.net_income(k)
                statements["income_statement"].append(
                    {
                        **header,
                        "revenue": 5 * income,
                        "net_income": income,
                        "eps": income / shares,
                        "eps_diluted": income / shares,
                        "weighted_average_shs_out": shares,
                        "weighted_average_shs_out_dil": shares * 1.02,
                    }
                )
                statements["balance_sheet"].append(
                    {
                        **header,
                        "total_assets": 1e11,
                        "total_liabilities": 6e10,
                        "total_stockholders_equity": 4e10,
                    }
                )
                statements["cash_flow"].append(
                    {**header, "free_cash_flow": income * 0.9, "operating_cash_flow": income}
                )
        for name, rows in statements.items():
            if rows:
                data = DATASETS[name]
                lake.write_file(
                    partition_path(data, fetched_at.date(), run_id),
                    encode_partition(data, _frame(name, rows)),
                )
        if fetched_on >= SPLIT_DAY:
            splits = DATASETS["splits"]
            rows = [
                {
                    "symbol": c.symbol,
                    "date": SPLIT_DAY,
                    "numerator": float(RATIO),
                    "denominator": 1.0,
                    **lineage,
                }
                for c in COMPANIES
                if c.splits
            ]
            lake.write_file(
                partition_path(splits, fetched_at.date(), run_id),
                encode_partition(splits, _frame("splits", rows)),
            )
    return lake


def expected_daily(company: Company) -> pl.DataFrame:
    """Per session, from the economics: the close as traded, TTM diluted EPS (once four quarters
    are known) and basic shares on that session's share basis, market cap and P/E."""
    rows = []
    for day in sessions():
        known = [k for k, q in enumerate(QUARTERS) if _new_york_day(q[2]) < day]
        per = company.shares_per_original(day)
        close = company.value(day) / per
        shares = company.original_shares(known[-1]) * per
        last = known[-4:]
        eps = (
            sum(company.net_income(k) / (company.original_shares(k) * per) for k in last)
            if len(last) == 4
            else None
        )
        pe = close / eps if eps else None
        rows.append((company.symbol, day, close, eps, shares, close * shares, pe))
    return pl.DataFrame(
        rows,
        schema={
            "symbol": pl.String,
            "date": pl.Date,
            "close": pl.Float64,
            "ttm_eps_diluted": pl.Float64,
            "basic_shares": pl.Float64,
            "market_cap": pl.Float64,
            "pe_ratio": pl.Float64,
        },
        orient="row",
    )


def assert_continuous_across_the_split(daily: pl.DataFrame) -> int:
    """`daily` (daily_features of both companies, by symbol and date) equals the economics on
    every session, and no session's market cap or P/E moves by more than the company's value
    did. Returns the sessions compared."""
    compared = 0
    for company in COMPANIES:
        got = daily.filter(pl.col("symbol") == company.symbol).sort("date")
        expected = expected_daily(company)
        assert got["date"].to_list() == expected["date"].to_list()
        for name in ("close", "ttm_eps_diluted", "basic_shares", "market_cap", "pe_ratio"):
            a, b = got[name].cast(pl.Float64), expected[name].cast(pl.Float64)
            assert a.is_null().to_list() == b.is_null().to_list(), (company.symbol, name)
            both = pl.DataFrame({"a": a, "b": b, "date": got["date"]}).drop_nulls()
            off = both.filter((both["a"] - both["b"]).abs() > 1e-9 * both["b"].abs())
            assert off.height == 0, (company.symbol, name, off.head(3).rows())
        # A new quarter moves them a few percent; a split on the wrong basis would be 300%.
        for name in ("market_cap", "pe_ratio"):
            step = (got[name] / got[name].shift(1)).drop_nulls()
            assert step.len() > 90, (company.symbol, name)
            assert ((step - 1).abs() < 0.1).all(), (company.symbol, name, step.max())
        compared += got.drop_nulls("pe_ratio").height
    return compared


def assert_prices_on_the_newest_basis(features: pl.DataFrame) -> int:
    """`features` (price_features: symbol, date, close, volume, daily_return, rsi_14) holds every
    session on the basis after the split, however the night that fetched it saw it: the close
    is the value over the shares one original share became, volume the shares traded in new
    shares, no daily return jumps, and RSI is TA-Lib's on those closes. Returns rows checked."""
    checked = 0
    for company in COMPANIES:
        got = features.filter(pl.col("symbol") == company.symbol).sort("date")
        days = sessions()
        assert got["date"].to_list() == days
        per = company.shares_per_original(LAST_SESSION)
        closes = np.array([company.value(day) / per for day in days])
        assert np.abs(got["close"].to_numpy() / closes - 1).max() < 1e-12, company.symbol
        assert set(got["volume"]) == {1_000_000 * per}, company.symbol
        assert got["daily_return"].drop_nulls().abs().max() < 0.02, company.symbol  # type: ignore[operator]
        expected = talib.RSI(closes, timeperiod=14)
        mine = got["rsi_14"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        assert (np.isnan(mine) == np.isnan(expected)).all(), company.symbol
        known = ~np.isnan(expected)
        assert np.abs(mine[known] - expected[known]).max() <= 1e-6, company.symbol
        checked += got.height
    return checked
