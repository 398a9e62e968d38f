"""A lake for the medallion tests, written by the real ingester, and the independent polars
computations the Gold views are checked against.

Run 1 lands about a year and a half of prices, statements and profiles for two symbols from the
simulator. Run 2 lands the sessions after it, plus what a real lake also sees: a late correction
of one price, a stale copy of another that must not win, a company that changed sector, and a row
that breaks a check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import polars as pl
import pytest
import talib

from stock_pipeline.datasets import DATASETS
from stock_pipeline.fmp import FmpClient, RequestPacer, RetryPolicy
from stock_pipeline.lake import LocalLake, encode_partition, partition_path, read_dataset
from stock_pipeline.pipeline import run_ingest
from stock_pipeline.plan import plan_run
from stock_pipeline.simulator import Fault, SimulatorConfig, SimulatorThread
from tests.support import API_KEY

SYMBOLS = ("AAPL", "MSFT")
DATASET_NAMES = ("prices", "income_statement", "balance_sheet", "cash_flow", "profile", "splits")
TODAY = dt.date(2025, 7, 31)
RUN_1 = ("20250725T020000Z-run1", dt.date(2024, 1, 2), dt.date(2025, 7, 24))
RUN_2 = ("20250731T020000Z-run2", dt.date(2025, 7, 25), dt.date(2025, 7, 30))
CORRECTION_RUN = "20250731T030000Z-fix"
CORRECTED_DAY = dt.date(2025, 7, 1)
CORRECTED_VOLUME = 4242
STALE_DAY = dt.date(2025, 7, 2)
NEW_SECTOR = "Utilities"
BROKEN_DAY = dt.date(2025, 7, 3)
UNACCEPTED_RUN = "20250731T040000Z-noaccept"
STATEMENTS = ("income_statement", "balance_sheet", "cash_flow")
NEW_YORK = "America/New_York"


@dataclass(frozen=True)
class MedallionLake:
    root: Path
    lake: LocalLake
    run_1_files: frozenset[str]


def ingest_night(
    lake: LocalLake, run: tuple[str, dt.date, dt.date], faults: Mapping[str, tuple[Fault, ...]]
) -> None:
    """One more real ingest run into `lake`, against a simulator with `faults`."""
    config = SimulatorConfig(api_key=API_KEY, today=TODAY, faults=faults)
    with SimulatorThread(config) as simulator:
        asyncio.run(_ingest(simulator.url, lake, run))


async def _ingest(url: str, lake: LocalLake, run: tuple[str, dt.date, dt.date]) -> None:
    run_id, start, end = run
    plan = plan_run(
        run_id=run_id, symbols=SYMBOLS, datasets=DATASET_NAMES, start=start, end=end, today=TODAY
    )
    started = dt.datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    async with aiohttp.ClientSession() as session:
        client = FmpClient(
            session=session,
            base_url=url,
            api_key=API_KEY,
            pacer=RequestPacer(60_000),
            retry=RetryPolicy(attempts=2, base_delay=0),
        )
        report = await run_ingest(plan, client=client, lake=lake, started_at=started)
    assert report.status == "ok", report


def write_run_1(root: Path) -> MedallionLake:
    lake = LocalLake(root)
    with SimulatorThread(SimulatorConfig(api_key=API_KEY, today=TODAY)) as simulator:
        asyncio.run(_ingest(simulator.url, lake, RUN_1))
    return MedallionLake(root, lake, frozenset(lake.list_files("")))


def write_run_2(lake: MedallionLake) -> None:
    """The next night, then the corrections that arrive with it."""
    with SimulatorThread(SimulatorConfig(api_key=API_KEY, today=TODAY)) as simulator:
        asyncio.run(_ingest(simulator.url, lake.lake, RUN_2))
    prices = DATASETS["prices"]
    current = read_dataset(lake.lake, prices)
    at = dt.datetime(2025, 7, 31, 3, 0, tzinfo=dt.UTC)

    def row(day: dt.date, **changes: object) -> pl.DataFrame:
        picked = current.filter((pl.col("symbol") == "AAPL") & (pl.col("date") == day))
        assert picked.height == 1
        return picked.with_columns(
            *(pl.lit(v).alias(k) for k, v in changes.items()),
            pl.lit(CORRECTION_RUN).alias("_run_id"),
        )

    fixes = {
        CORRECTED_DAY: row(CORRECTED_DAY, volume=CORRECTED_VOLUME, _ingested_at=at),
        # A copy from before run 1 (a replayed old file): older than Silver's row, so ignored.
        STALE_DAY: row(STALE_DAY, volume=1, _ingested_at=at - dt.timedelta(days=400)),
        BROKEN_DAY: row(BROKEN_DAY, high=1.0, low=2.0, _ingested_at=at),
    }
    for day, frame in fixes.items():
        path = partition_path(prices, day, CORRECTION_RUN)
        lake.lake.write_file(path, encode_partition(prices, frame))
    # FMP left the acceptance time out of MSFT's newest quarter when it was fetched again.
    unaccepted_at = at + dt.timedelta(hours=1)
    for name in STATEMENTS:
        data = DATASETS[name]
        newest = (
            read_dataset(lake.lake, data)
            .filter((pl.col("symbol") == "MSFT") & pl.col("period").str.starts_with("Q"))
            .sort("date")
            .tail(1)
        )
        refetched = newest.with_columns(
            pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("accepted_date"),
            pl.lit(unaccepted_at).alias("_ingested_at"),
            pl.lit(UNACCEPTED_RUN).alias("_run_id"),
        )
        path = partition_path(data, unaccepted_at.date(), UNACCEPTED_RUN)
        lake.lake.write_file(path, encode_partition(data, refetched))
    # Within the same night's batch: the sector changes, a copy repeats it, then it changes back.
    profile = DATASETS["profile"]
    original = read_dataset(lake.lake, profile).filter(pl.col("symbol") == "AAPL")
    for hours, sector in enumerate((NEW_SECTOR, NEW_SECTOR, original["sector"][0])):
        run_id = f"{CORRECTION_RUN}{hours}"
        version = original.with_columns(
            pl.lit(sector).alias("sector"),
            pl.lit(at + dt.timedelta(hours=hours)).alias("_ingested_at"),
            pl.lit(run_id).alias("_run_id"),
        )
        lake.lake.write_file(
            partition_path(profile, at.date(), run_id), encode_partition(profile, version)
        )


def expected_silver(lake: LocalLake, dataset: str) -> pl.DataFrame:
    """Silver as the rules define it: rows breaking a check never enter, then the newest
    `_ingested_at` per key wins (so a broken correction leaves the last good row in place)."""
    data = DATASETS[dataset]
    frame = read_dataset(lake, data, latest=False)
    for check in data.checks:
        frame = frame.filter(~check.expression().fill_null(False))
    return (
        frame.sort("_ingested_at", descending=True, maintain_order=True)
        .unique(subset=list(data.key), keep="first", maintain_order=True)
        .sort(list(data.key))
    )


def price_features(prices: pl.DataFrame) -> pl.DataFrame:
    """Price features computed independently, by symbol, with polars."""
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
            rsi_14_cutler=(100 - 100 / (1 + avg_gain / avg_loss)).over("symbol"),
            drawdown=(close / close.cum_max() - 1).over("symbol"),
            high_52w=pl.col("high").rolling_max(252).over("symbol"),
        )
        # The first row of each symbol has no return: RSI's window starts at the second.
        .with_columns(
            rsi_14_cutler=pl.when(pl.int_range(pl.len()).over("symbol") >= 14).then(
                pl.col("rsi_14_cutler")
            )
        )
    )


PRICE_FEATURES = (
    "sma_20",
    "sma_200",
    "return_5d",
    "volatility_20d",
    "rsi_14_cutler",
    "drawdown",
    "high_52w",
)


def quarterly_filings(lake: LocalLake, symbol: str) -> pl.DataFrame:
    """One row per quarter: diluted EPS and shares, and the New York day it became public."""
    income = expected_silver(lake, "income_statement").filter(
        (pl.col("symbol") == symbol) & pl.col("period").is_in(["Q1", "Q2", "Q3", "Q4"])
    )
    accepted = [
        expected_silver(lake, name)
        .filter(pl.col("symbol") == symbol)
        .select("date", "period", pl.col("accepted_date").alias(name))
        for name in ("balance_sheet", "cash_flow")
    ]
    for other in accepted:
        income = income.join(other, on=["date", "period"])
    public = pl.max_horizontal("accepted_date", "balance_sheet", "cash_flow")
    return income.sort("date").select(
        "date",
        "eps_diluted",
        "weighted_average_shs_out_dil",
        public.dt.convert_time_zone("America/New_York").dt.date().alias("public_on"),
    )


def ttm_eps_as_of(filings: pl.DataFrame, day: dt.date) -> float | None:
    """Trailing EPS on `day`: the four latest quarters usable that day (from the day after each
    was public), only when they are four consecutive quarters."""
    usable = filings.filter(pl.col("public_on") < day).sort("date").tail(4)
    if usable.height < 4:
        return None
    span = (usable["date"][-1] - usable["date"][0]).days
    if not 250 <= span <= 300:
        return None
    return float(usable["eps_diluted"].sum())


def assert_price_features_match(got: pl.DataFrame, prices: pl.DataFrame) -> None:
    """`got` (symbol, date and PRICE_FEATURES, ordered) equals the polars computation on the
    Silver `prices`: the same NULLs before a window is full, the same values after."""
    expected = price_features(prices).select(got.columns)
    assert got.height == expected.height > 252 * 2
    for name in PRICE_FEATURES:
        a, b = got[name].cast(pl.Float64), expected[name]
        assert a.is_null().to_list() == b.is_null().to_list(), f"{name}: NULL before enough history"
        both = pl.DataFrame({"a": a, "b": b}).drop_nulls()
        assert both.height > 0, name
        assert ((both["a"] - both["b"]).abs() <= 1e-9 * both["b"].abs().max()).all(), name


def assert_ttm_eps_and_pe_point_in_time(daily: pl.DataFrame, lake: LocalLake) -> None:
    """`daily` (date, close, ttm_eps_diluted, pe_ratio of AAPL, by date) holds, on every session
    between the last two filings and on the session after the second became public, the TTM EPS
    known that day and the P/E it gives."""
    filings = quarterly_filings(lake, "AAPL")
    second = filings.filter(pl.col("public_on") < daily["date"].max()).tail(1)
    first = filings.filter(pl.col("date") < second["date"][0]).tail(1)
    between = daily.filter(
        (pl.col("date") > first["public_on"][0]) & (pl.col("date") <= second["public_on"][0])
    )
    after = daily.filter(pl.col("date") > second["public_on"][0]).head(1)
    assert between.height > 20
    assert after.height == 1
    checked = 0
    for day, close, eps, pe in (*between.rows(), *after.rows()):
        expected = ttm_eps_as_of(filings, day)
        assert expected is not None
        assert eps == pytest.approx(expected), day
        assert pe == pytest.approx(close / expected), day
        checked += 1
    # The filing counts from the day after it became public, never on its period end.
    assert between["ttm_eps_diluted"][-1] != after["ttm_eps_diluted"][0]
    assert checked == between.height + 1


def public_days(lake: LocalLake) -> pl.DataFrame:
    """Per symbol and quarter end: the New York day the figures Silver holds for its three
    statements were all public. A statement's figures are public from the earliest acceptance of
    any fetched version with the same figures; with no acceptance anywhere, from its filing date."""
    days = []
    for name in STATEMENTS:
        data = DATASETS[name]
        figures = [c.name for c in data.columns if c.name not in ("accepted_date", "filing_date")]
        fingerprint = pl.struct(figures).hash().alias("_figures")
        versions = read_dataset(lake, data, latest=False).with_columns(fingerprint)
        first_public = versions.group_by("symbol", "date", "period", "_figures").agg(
            pl.col("accepted_date").min().dt.convert_time_zone(NEW_YORK).dt.date(),
            pl.col("filing_date").min(),
        )
        held = (
            expected_silver(lake, name)
            .with_columns(fingerprint)
            .select("symbol", "date", "period", "_figures")
        )
        days.append(
            held.join(first_public, on=["symbol", "date", "period", "_figures"])
            .filter(pl.col("period").str.starts_with("Q"))
            .select("symbol", "date", pl.coalesce("accepted_date", "filing_date").alias(name))
        )
    joined = days[0].join(days[1], on=["symbol", "date"]).join(days[2], on=["symbol", "date"])
    return joined.select("symbol", "date", pl.max_horizontal(*STATEMENTS).alias("public_on"))


def assert_no_look_ahead(daily: pl.DataFrame, lake: LocalLake) -> int:
    """Every `daily` row (symbol, date, fundamentals_period_end) uses only quarters whose three
    statements were public before that session: the quarter it names and the three before it that
    the trailing sums add. Returns the number of rows checked."""
    public = public_days(lake)
    quarters = {
        symbol: frame.sort("date").rows()
        for (symbol,), frame in public.group_by("symbol")  # rows: (symbol, date, public_on)
    }
    checked, look_ahead = 0, []
    for symbol, day, period_end in daily.select(
        "symbol", "date", "fundamentals_period_end"
    ).iter_rows():
        if period_end is None:
            continue
        behind = [q for q in quarters[symbol] if q[1] <= period_end][-4:]
        assert behind[-1][1] == period_end, (symbol, period_end)
        look_ahead += [(symbol, day, q[1], q[2]) for q in behind if not q[2] < day]
        checked += 1
    assert look_ahead == [], f"{len(look_ahead)} look-ahead rows, first {look_ahead[:3]}"
    return checked


def unaccepted_quarter(lake: LocalLake) -> tuple[dt.date, dt.date]:
    """MSFT's quarter refetched without acceptance times: its end and its latest filing date."""
    rows = [
        read_dataset(lake, DATASETS[name]).filter(pl.col("_run_id") == UNACCEPTED_RUN)
        for name in STATEMENTS
    ]
    assert all(r.height == 1 for r in rows)
    return rows[0]["date"][0], max(r["filing_date"][0] for r in rows)


def assert_unaccepted_quarter_counts_from_its_filing_date(
    pit: pl.DataFrame, daily: pl.DataFrame, lake: LocalLake
) -> None:
    """`pit` (fundamentals_pit) and `daily` (daily_features) of MSFT: the quarter without
    acceptance times is known from its filing date, flagged so, and used from the day after."""
    period_end, filed = unaccepted_quarter(lake)
    row = pit.filter(pl.col("period_end") == period_end)
    assert row.select("known_from", "known_from_source", "known_at").row(0) == (
        filed,
        "filing_date",
        None,
    )
    assert set(pit.filter(pl.col("period_end") != period_end)["known_from_source"]) == {
        "acceptance"
    }
    using = daily.filter(pl.col("fundamentals_period_end") == period_end)
    assert using.height > 0
    assert using["date"].min() > filed
    assert set(using["fundamentals_known_from_source"]) == {"filing_date"}


def assert_rsi_is_talibs(got: pl.DataFrame, prices: pl.DataFrame) -> int:
    """`got` (symbol, date, rsi_14) equals TA-Lib's RSI(close, 14) on the Silver `prices`, symbol
    by symbol, to 1e-6: NULL exactly where TA-Lib has none yet. Returns the values compared."""
    compared = 0
    for (symbol,), history in prices.sort("symbol", "date").group_by("symbol", maintain_order=True):
        expected = talib.RSI(history["close"].to_numpy(), timeperiod=14)
        mine = got.filter(pl.col("symbol") == symbol).sort("date")
        assert mine["date"].to_list() == history["date"].to_list(), symbol
        actual = mine["rsi_14"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        assert (np.isnan(actual) == np.isnan(expected)).all(), symbol
        known = ~np.isnan(expected)
        assert known.sum() > 200, symbol
        assert np.abs(actual[known] - expected[known]).max() <= 1e-6, symbol
        compared += int(known.sum())
    return compared
