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
from zoneinfo import ZoneInfo

import aiohttp
import numpy as np
import polars as pl
import pytest
import talib

from stock_pipeline.datasets import DATASETS
from stock_pipeline.fmp import FmpClient, RequestPacer, RetryPolicy
from stock_pipeline.lake import (
    LocalLake,
    dataset_files,
    encode_partition,
    partition_path,
    read_dataset,
    read_partition_file,
)
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
FILED_ONLY_SYMBOL = "MSFT"
SILENT_RUN = "20250731T040000Z-silent"
SILENT_AT = dt.datetime(2025, 7, 31, 4, 0, tzinfo=dt.UTC)
SILENT_REVENUE_CHANGE = 1_000_000.0
AMENDMENT_RUN = "20250731T050000Z-amended"
AMENDED_AT = dt.datetime(2025, 6, 16, 21, 0, tzinfo=dt.UTC)  # 17:00 in New York
AMENDMENT_SEEN_AT = dt.datetime(2025, 7, 31, 5, 0, tzinfo=dt.UTC)
AMENDED_REVENUE_CHANGE = 7_000_000.0
REVERTED_RUN = "20250728T010000Z-reverted"
REVERTED_SEEN_AT = dt.datetime(2025, 7, 28, 1, 0, tzinfo=dt.UTC)  # 21:00 on the 27th in New York
REVERTED_REVENUE_CHANGE = 3_000_000.0
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
    # FMP left the acceptance times out of MSFT's newest quarter the first time it was fetched.
    for name in STATEMENTS:
        data = DATASETS[name]
        newest = _newest_quarter(read_dataset(lake, data), FILED_ONLY_SYMBOL)
        for path in dataset_files(lake, data):
            frame = read_partition_file(lake, data, path)
            stripped = frame.with_columns(
                pl.when((pl.col("symbol") == FILED_ONLY_SYMBOL) & (pl.col("date") == newest))
                .then(None)
                .otherwise(pl.col("accepted_date"))
                .alias("accepted_date")
            )
            (root / path).unlink()  # lake files are immutable: this rewrites the test's input
            lake.write_file(path, encode_partition(data, stripped.drop(data.partition)))
    return MedallionLake(root, lake, frozenset(lake.list_files("")))


def _newest_quarter(frame: pl.DataFrame, symbol: str) -> dt.date:
    quarters = frame.filter((pl.col("symbol") == symbol) & pl.col("period").str.starts_with("Q"))
    return quarters["date"].max()  # type: ignore[return-value]


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
    # FMP changed MSFT's newest revenue without a new filing: a version known from this run.
    data = DATASETS["income_statement"]
    income = read_dataset(lake.lake, data)
    newest = _newest_quarter(income, FILED_ONLY_SYMBOL)
    revised = income.filter(
        (pl.col("symbol") == FILED_ONLY_SYMBOL) & (pl.col("date") == newest)
    ).with_columns(
        pl.col("revenue") + SILENT_REVENUE_CHANGE,
        pl.lit(SILENT_AT).alias("_ingested_at"),
        pl.lit(SILENT_RUN).alias("_run_id"),
    )
    assert revised.height == 1
    path = partition_path(data, SILENT_AT.date(), SILENT_RUN)
    lake.lake.write_file(path, encode_partition(data, revised.drop(data.partition)))
    # AAPL's newest quarter is amended (a 10-Q/A: new revenue under a new acceptance time, the
    # other statements refiled unchanged); the quarter before it had its revenue changed by FMP
    # without a filing on the night before run 2, which then fetched the old figures again.
    for name in STATEMENTS:
        data = DATASETS[name]
        current = read_dataset(lake.lake, data, latest=False).filter(
            (pl.col("symbol") == "AAPL") & (pl.col("_run_id") == RUN_1[0])
        )
        newest = _newest_quarter(current, "AAPL")
        amended = current.filter(pl.col("date") == newest).with_columns(
            pl.lit(AMENDED_AT).alias("accepted_date"),
            pl.lit(AMENDMENT_SEEN_AT).alias("_ingested_at"),
            pl.lit(AMENDMENT_RUN).alias("_run_id"),
            *([pl.col("revenue") + AMENDED_REVENUE_CHANGE] if name == "income_statement" else []),
        )
        path = partition_path(data, AMENDMENT_SEEN_AT.date(), AMENDMENT_RUN)
        lake.lake.write_file(path, encode_partition(data, amended.drop(data.partition)))
        if name != "income_statement":
            continue
        before = current.filter(pl.col("period").str.starts_with("Q") & (pl.col("date") < newest))
        changed = before.filter(pl.col("date") == before["date"].max()).with_columns(
            pl.col("revenue") + REVERTED_REVENUE_CHANGE,
            pl.lit(REVERTED_SEEN_AT).alias("_ingested_at"),
            pl.lit(REVERTED_RUN).alias("_run_id"),
        )
        path = partition_path(data, REVERTED_SEEN_AT.date(), REVERTED_RUN)
        lake.lake.write_file(path, encode_partition(data, changed.drop(data.partition)))
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
    """One row per quarter: diluted EPS and shares (no version in the lake changes them), and the
    New York day its three statements were first all known."""
    income = expected_silver(lake, "income_statement").filter(
        (pl.col("symbol") == symbol) & pl.col("period").is_in(["Q1", "Q2", "Q3", "Q4"])
    )
    for name in STATEMENTS:
        first_known = (
            statement_versions(lake, name)
            .filter(pl.col("symbol") == symbol)
            .group_by("date", "period")
            .agg(pl.col("known_on").min().alias(name))
        )
        income = income.join(first_known, on=["date", "period"])
    return income.sort("date").select(
        "date",
        "eps_diluted",
        "weighted_average_shs_out_dil",
        pl.max_horizontal(*STATEMENTS).alias("public_on"),
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


def statement_versions(lake: LocalLake, name: str) -> pl.DataFrame:
    """Every version of each quarterly statement the lake has seen, with the New York day it
    became known, computed from the raw files: a version is a change of the figures from the
    fetch before; the first is known from its acceptance (or filing date), a later one from its
    own acceptance when that is newer than any earlier fetch showed, else from the run that first
    saw it."""
    data = DATASETS[name]
    key = ["symbol", "date", "period"]
    fetches = read_dataset(lake, data, latest=False)
    for check in data.checks:
        fetches = fetches.filter(~check.expression().fill_null(False))
    own_day = pl.coalesce(
        pl.col("accepted_date").dt.convert_time_zone(NEW_YORK).dt.date(), pl.col("filing_date")
    )
    versions = (
        fetches.filter(pl.col("period").str.starts_with("Q"))
        .sort([*key, "_ingested_at"])
        .with_columns(
            pl.struct(list(data.figures)).hash().alias("_figures"), own_day.alias("own_day")
        )
        .with_columns(pl.col("own_day").cum_max().shift(1).over(key).alias("filed_before"))
        .filter((pl.col("_figures") != pl.col("_figures").shift(1).over(key)).fill_null(True))
        .with_columns(
            pl.int_range(1, pl.len() + 1).over(key).alias("version"),
            pl.col("_ingested_at").dt.convert_time_zone(NEW_YORK).dt.date().alias("seen_on"),
        )
    )
    refiled = (pl.col("own_day") > pl.col("filed_before")).fill_null(False)
    return versions.with_columns(
        pl.when((pl.col("version") == 1) | refiled)
        .then(pl.col("own_day"))
        .otherwise(pl.col("seen_on"))
        .alias("known_on")
    )


def expected_fundamentals(lake: LocalLake, symbol: str, sessions: list[dt.date]) -> list[tuple]:
    """Per session of `symbol`: (period end, TTM revenue) of the newest quarter usable that day,
    from the versions each statement had made known before it (the day after `known_on`). The
    TTM adds the newest four quarters known that day, when they are four consecutive quarters."""
    versions = {
        name: statement_versions(lake, name).filter(pl.col("symbol") == symbol).rows(named=True)
        for name in STATEMENTS
    }
    quarters = sorted({(v["date"], v["period"]) for v in versions["income_statement"]})

    def revenue_before(quarter: tuple[dt.date, str], day: dt.date) -> float | None:
        newest = {}
        for name, rows in versions.items():
            known = [
                v
                for v in rows
                if (v["date"], v["period"]) == quarter
                and v["known_on"] is not None
                and v["known_on"] < day
            ]
            if not known:
                return None
            newest[name] = max(known, key=lambda v: v["version"])
        return float(newest["income_statement"]["revenue"])

    expected = []
    for day in sessions:
        known = [(q, r) for q in quarters if (r := revenue_before(q, day)) is not None]
        if not known:
            expected.append((day, None, None))
            continue
        last = known[-4:]
        span = (last[-1][0][0] - last[0][0][0]).days
        full = len(last) == 4 and 250 <= span <= 300
        expected.append((day, last[-1][0][0], sum(r for _, r in last) if full else None))
    return expected


def assert_no_look_ahead(daily: pl.DataFrame, lake: LocalLake) -> int:
    """Every `daily` row (symbol, date, fundamentals_period_end, fundamentals_known_from,
    ttm_revenue) uses exactly the figures known before its session: the newest quarter whose
    statements, and those of the three quarters before it, were known the day before, each in
    the newest version known then. Returns the number of rows with fundamentals checked."""
    checked, wrong = 0, []
    for (symbol,), rows in daily.sort("symbol", "date").group_by("symbol", maintain_order=True):
        expected = expected_fundamentals(lake, str(symbol), rows["date"].to_list())
        for got, (day, period_end, revenue) in zip(
            rows.select(
                "date", "fundamentals_period_end", "fundamentals_known_from", "ttm_revenue"
            ).iter_rows(),
            expected,
            strict=True,
        ):
            same_revenue = (got[3] is None) == (revenue is None) and (
                revenue is None or abs(got[3] - revenue) <= 1e-6 * abs(revenue)
            )
            if got[1] != period_end or not same_revenue:
                wrong.append((symbol, day, got, period_end, revenue))
            elif got[2] is not None and not got[2] < day:
                wrong.append((symbol, day, got, "known on or after the session"))
            checked += period_end is not None
    assert wrong == [], f"{len(wrong)} rows use figures not known that day, first {wrong[:3]}"
    return checked


def filed_only_quarter(lake: LocalLake) -> tuple[dt.date, dt.date]:
    """MSFT's quarter first fetched without acceptance times: its end and its latest filing date."""
    rows = [
        read_dataset(lake, DATASETS[name], latest=False).filter(
            (pl.col("symbol") == FILED_ONLY_SYMBOL) & pl.col("accepted_date").is_null()
        )
        for name in STATEMENTS
    ]
    assert all(r.height == 1 for r in rows)
    return rows[0]["date"][0], max(r["filing_date"][0] for r in rows)


def assert_unaccepted_quarter_counts_from_its_filing_date(
    pit: pl.DataFrame, daily: pl.DataFrame, lake: LocalLake
) -> None:
    """`pit` (fundamentals_pit) and `daily` (daily_features) of MSFT: the quarter first seen
    without acceptance times is known from its filing date, flagged so, and used from the day
    after; its revenue changed later without a new filing, a version known from that run."""
    period_end, filed = filed_only_quarter(lake)
    rows = pit.filter(pl.col("period_end") == period_end).sort("known_from")
    assert rows.select("known_from", "known_from_source", "known_at").rows() == [
        (filed, "filing_date", None),
        (SILENT_AT.astimezone(ZoneInfo(NEW_YORK)).date(), "ingest", SILENT_AT),
    ]
    assert set(pit.filter(pl.col("period_end") != period_end)["known_from_source"]) == {
        "acceptance"
    }
    using = daily.filter(pl.col("fundamentals_period_end") == period_end)
    assert using.height > 0
    assert using["date"].min() > filed
    assert set(using["fundamentals_known_from_source"]) == {"filing_date"}


def assert_restatements_point_in_time(pit: pl.DataFrame, daily: pl.DataFrame) -> None:
    """`pit` (fundamentals_pit) and `daily` (daily_features) of AAPL: its newest quarter shows
    the original figures from their acceptance, the amendment from its own acceptance (though
    first fetched weeks later), the change FMP made to the quarter before without a filing from
    the run that saw it, and that change undone from the run that saw it undone."""
    newest = pit["period_end"].max()
    rows = pit.filter(pl.col("period_end") == newest).sort("known_from")
    first = rows.row(0, named=True)
    base = first["ttm_revenue"]
    assert base is not None
    assert first["known_from"] < AMENDED_AT.date()
    new_york = ZoneInfo(NEW_YORK)
    amended, changed = AMENDED_REVENUE_CHANGE, REVERTED_REVENUE_CHANGE
    assert rows.select("known_from", "known_from_source", "revised", "ttm_revenue").rows() == [
        (first["known_from"], "acceptance", False, base),
        (AMENDED_AT.astimezone(new_york).date(), "acceptance", True, base + amended),
        (REVERTED_SEEN_AT.astimezone(new_york).date(), "ingest", True, base + amended + changed),
        (dt.date(2025, 7, 30), "ingest", True, base + amended),  # run 2 at 22:00 in New York
    ]
    used = daily.filter(pl.col("fundamentals_period_end") == newest)
    expected = [
        base
        if day <= AMENDED_AT.date()
        else base + amended + changed
        if day > REVERTED_SEEN_AT.astimezone(new_york).date()
        else base + amended
        for day in used["date"]
    ]
    assert used["ttm_revenue"].to_list() == pytest.approx(expected)
    assert {base, base + amended, base + amended + changed} == set(expected)


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
