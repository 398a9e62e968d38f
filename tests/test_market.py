"""Whole-market endpoints: prices from eod-bulk, the fallback when the plan refuses it, and the
CSV's quirks, against the simulator over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from stock_pipeline.datasets import DATASETS
from stock_pipeline.errors import ExitCode
from stock_pipeline.lake import LocalLake, read_dataset, read_manifests
from stock_pipeline.market_calendar import sessions_between
from stock_pipeline.normalize import read_market_answer
from stock_pipeline.pipeline import ProgressEvent, RunReport, run_ingest
from stock_pipeline.plan import MARKET, plan_run
from stock_pipeline.simulator import EOD_BULK_ENDPOINT, Fault
from tests.conftest import SimulatorFactory
from tests.test_pipeline import STARTED, fmp_client

SYMBOLS = ("AAPL", "MSFT", "KO", "BRK-B")
START, END = dt.date(2025, 3, 3), dt.date(2025, 3, 14)
TODAY = dt.date(2025, 3, 15)
MARKET_SYMBOLS = (*SYMBOLS, "SAP.DE", "NOT-MINE", "ZZZ")
PRICE_COLUMNS = [c.name for c in DATASETS["prices"].columns]


async def _ingest(
    url: str,
    lake: LocalLake,
    source: str,
    symbols: tuple[str, ...] = SYMBOLS,
    start: dt.date = START,
    datasets: tuple[str, ...] = ("prices",),
    progress: Callable[[ProgressEvent], None] | None = None,
    **client_options: object,
) -> RunReport:
    plan = plan_run(
        run_id=f"20250315T020000Z-{source}",
        symbols=symbols,
        datasets=datasets,
        start=start,
        end=END,
        prices_source=source,  # type: ignore[arg-type]
    )
    async with fmp_client(url, **client_options) as client:
        return await run_ingest(
            plan, client=client, lake=lake, started_at=STARTED, progress=progress
        )


def _prices(lake: LocalLake) -> pl.DataFrame:
    return read_dataset(lake, DATASETS["prices"]).select(PRICE_COLUMNS).sort("symbol", "date")


async def test_bulk_prices_equal_the_per_symbol_rows_session_for_session(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    bulk_lake, symbol_lake = LocalLake(tmp_path / "bulk"), LocalLake(tmp_path / "symbol")
    async with fmp_server(today=TODAY, market=MARKET_SYMBOLS) as (url, simulator):
        bulk = await _ingest(url, bulk_lake, "bulk")
        per_symbol = await _ingest(url, symbol_lake, "symbol")
    sessions = sessions_between(START, END)
    assert bulk.status == per_symbol.status == "ok"
    endpoints = [r.endpoint for r in simulator.requests]
    assert endpoints.count(EOD_BULK_ENDPOINT) == len(sessions) == 10
    assert endpoints.count("historical-price-eod/full") == len(SYMBOLS)
    from_bulk, from_symbols = _prices(bulk_lake), _prices(symbol_lake)
    # Every column equal, the derived change, change percent and vwap included; other symbols
    # of the market answer are not kept.
    assert from_bulk.height == len(SYMBOLS) * len(sessions)
    assert from_bulk.equals(from_symbols)
    assert from_bulk["change_percent"].null_count() == 0
    # Files are partitioned by session either way, one per session.
    assert sorted(f.partition for f in bulk.files) == sorted(f.partition for f in per_symbol.files)
    manifest = json.loads(bulk_lake.read_file(f"_runs/{bulk.run_id}.json"))
    assert manifest["sources"]["prices"]["endpoint"] == EOD_BULK_ENDPOINT
    assert manifest["sources"]["prices"]["requests"] == 10
    assert bulk.gaps == {}


async def test_auto_takes_bulk_only_when_it_costs_fewer_requests() -> None:
    def plan(start: dt.date, symbols: tuple[str, ...]) -> tuple[int, bool]:
        built = plan_run(
            run_id="r",
            symbols=symbols,
            datasets=("prices", "adjusted_prices"),
            start=start,
            end=END,
            prices_source="auto",
        )
        prices = [r for r in built.requests if r.dataset == "prices"]
        adjusted = [r for r in built.requests if r.dataset == "adjusted_prices"]
        assert not any(r.market for r in adjusted)  # eod-bulk has no dividend-adjusted bars
        return len(prices), all(r.market for r in prices)

    assert plan(END, SYMBOLS) == (1, True)  # a night: one request for the market
    assert plan(START, SYMBOLS) == (4, False)  # ten sessions of four symbols: per symbol
    assert plan(START, tuple(f"S{i}" for i in range(11))) == (10, True)


async def test_a_plan_without_eod_bulk_falls_back_to_per_symbol_and_says_so(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    async with fmp_server(
        today=TODAY, market=MARKET_SYMBOLS, gated_endpoints=frozenset({EOD_BULK_ENDPOINT})
    ) as (url, simulator):
        report = await _ingest(url, lake, "auto", start=END)
    assert [r.symbol for r in report.plan.requests] == [MARKET]
    assert report.status == "ok", report.failures
    assert report.exit_code is ExitCode.OK
    assert next((r.endpoint, r.status) for r in simulator.requests) == (EOD_BULK_ENDPOINT, 402)
    assert sum(r.endpoint == EOD_BULK_ENDPOINT for r in simulator.requests) == 1
    assert sorted(r.params["symbol"] for r in simulator.requests[1:]) == sorted(SYMBOLS)
    assert _prices(lake)["symbol"].to_list() == sorted(SYMBOLS)
    manifest = json.loads(lake.read_file(f"_runs/{report.run_id}.json"))
    source = manifest["sources"]["prices"]
    assert source["endpoint"] == "historical-price-eod/full"
    assert source["requests"] == len(SYMBOLS)
    assert "eod-bulk refused by FMP's plan" in source["why"]
    assert manifest["failures"] == []


async def test_bulk_asked_for_and_refused_fails_the_range_for_the_next_run(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    async with fmp_server(
        today=TODAY, market=MARKET_SYMBOLS, gated_endpoints=frozenset({EOD_BULK_ENDPOINT})
    ) as (url, _):
        report = await _ingest(url, lake, "bulk")
    assert report.status == "partial"
    assert {(f.dataset, f.symbol, f.retryable) for f in report.failures} == {("prices", None, True)}
    assert "not in the FMP plan" in report.failures[0].error
    assert not [f for f in report.files if f.kind == "raw"]


async def test_a_broken_bulk_answer_is_retried_then_recorded(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    faults = {"*": (Fault(kind="server_error", times=1, endpoint=EOD_BULK_ENDPOINT),)}
    async with fmp_server(today=TODAY, market=MARKET_SYMBOLS, faults=faults) as (url, simulator):
        report = await _ingest(url, lake, "bulk")
    assert report.status == "ok"
    assert simulator.status_counts() == {503: 1, 200: 10}
    assert _prices(lake).height == len(SYMBOLS) * 10


_BULK_HEADER = "symbol,date,open,low,high,close,adjClose,volume"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fmp"


def test_fmps_bulk_row_reads_as_its_per_symbol_row() -> None:
    # FMP's example eod-bulk file and per-symbol answer hold the same AAPL session.
    body = (FIXTURES / "eod-bulk.csv").read_bytes()
    [expected, *_] = json.loads((FIXTURES / "stable_historical-price-eod_full.json").read_text())
    frame = read_market_answer(DATASETS["prices"], body, {"AAPL"})
    assert isinstance(frame, pl.DataFrame)
    assert frame.columns == list(expected)  # the per-symbol field order
    [row] = frame.to_dicts()
    assert {k: v if k in ("symbol", "date") else float(v) for k, v in row.items()} == expected


@pytest.mark.parametrize(
    ("body", "volumes"),
    [
        # FMP's quirks: a byte-order mark, fractional volumes, a trailing comma on every line.
        (
            f"\ufeff{_BULK_HEADER}\nAAPL,2025-03-14,211.25,209.58,213.95,213.49,213.49,"
            "60107582.0\nSAP.DE,2025-03-14,248.1,246.35,252.2,251.45,251.45,1812033\n",
            ["60107582.0"],
        ),
        (
            f"{_BULK_HEADER},\nAAPL,2025-03-14,211.25,209.58,213.95,213.49,213.49,60107582,\n",
            ["60107582"],
        ),
    ],
)
def test_the_bulk_csvs_quirks_are_absorbed(body: str, volumes: list[str]) -> None:
    frame = read_market_answer(DATASETS["prices"], body.encode(), {"AAPL"})
    assert isinstance(frame, pl.DataFrame)
    assert frame["symbol"].to_list() == ["AAPL"]
    assert frame["volume"].to_list() == volumes
    # FMP's own AAPL row for the session says change 2.24, changePercent 1.06036, vwap 212.0675.
    assert frame.row(0)[7:] == (2.24, 1.06036, 212.0675)


def test_a_bulk_answer_without_its_header_is_refused() -> None:
    with pytest.raises(ValueError, match="without adjClose, volume"):
        read_market_answer(
            DATASETS["prices"], b"symbol,date,open,low,high,close\nAAPL,2025-03-14,1,1,1,1\n", {}
        )


async def _land_splits(
    url: str,
    lake: LocalLake,
    symbols: tuple[str, ...],
    start: dt.date,
    end: dt.date,
    calendar: bool,
) -> RunReport:
    """Splits for `symbols`: the calendar for them all, or each one's history."""
    plan = plan_run(
        run_id=f"20250315T020000Z-{calendar}",
        symbols=symbols,
        datasets=("splits",),
        start=start,
        end=end,
        companies={} if calendar else None,
        splits_calendar=calendar,
    )
    async with fmp_client(url) as client:
        return await run_ingest(plan, client=client, lake=lake, started_at=STARTED)


async def test_splits_from_the_calendar_equal_the_per_symbol_history_in_its_range(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    symbols = ("AAPL", "AMGN", "SHW", "KO", "MSFT", "NVDA", "WMT")
    start, end = dt.date(2016, 1, 4), dt.date(2025, 3, 14)
    calendar_lake, symbol_lake = LocalLake(tmp_path / "c"), LocalLake(tmp_path / "s")
    async with fmp_server(today=TODAY, market=(*symbols, "NOT-MINE")) as (url, simulator):
        from_calendar = await _land_splits(url, calendar_lake, symbols, start, end, True)
        await _land_splits(url, symbol_lake, symbols, start, end, False)
    assert from_calendar.status == "ok"
    assert [r.endpoint for r in simulator.requests].count("splits-calendar") == 1
    columns = ["symbol", "date", "numerator", "denominator"]
    calendar = read_dataset(calendar_lake, DATASETS["splits"]).select(columns).sort(columns)
    per_symbol = read_dataset(symbol_lake, DATASETS["splits"]).select(columns)
    in_range = per_symbol.filter(pl.col("date").is_between(start - dt.timedelta(days=7), end)).sort(
        columns
    )
    assert calendar.height > 0
    assert calendar.equals(in_range)


async def test_a_plan_without_the_splits_calendar_gets_each_history_instead(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    refused = frozenset({"splits-calendar"})
    async with fmp_server(today=TODAY, market=SYMBOLS, gated_endpoints=refused) as (
        url,
        simulator,
    ):
        report = await _land_splits(url, LocalLake(tmp_path), SYMBOLS, END, END, True)
    assert report.status == "ok", report.failures
    assert [r.endpoint for r in simulator.requests].count("splits") == len(SYMBOLS)
    assert "splits-calendar refused" in report.sources["splits"]["why"]


async def test_a_failed_bulk_session_holds_the_catch_up_back(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    from stock_pipeline.plan import last_landed_session

    lake = LocalLake(tmp_path)
    faults = {"*": (Fault(kind="server_error", endpoint=EOD_BULK_ENDPOINT),)}
    async with fmp_server(today=TODAY, market=MARKET_SYMBOLS, faults=faults) as (url, _):
        report = await _ingest(url, lake, "bulk")
    assert report.status == "partial"
    # The whole market failed, for a reason that may pass: every symbol is behind.
    assert {(f.dataset, f.symbol, f.retryable) for f in report.failures} == {("prices", None, True)}
    assert report.summaries[0].symbols_failed == 0  # no symbol called "*"
    landed = last_landed_session(read_manifests(lake), symbols=SYMBOLS, datasets=("prices",))
    assert landed is None or landed < START


async def test_symbols_the_bulk_file_leaves_out_are_fetched_per_symbol(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    # ^GSPC is not in the market's bulk file (as indices are not), the others are.
    async with fmp_server(today=TODAY, market=SYMBOLS) as (url, simulator):
        report = await _ingest(url, lake, "auto", (*SYMBOLS, "^GSPC"), start=END)
    assert report.status == "ok", report.failures
    per_symbol = [r.params["symbol"] for r in simulator.requests if "symbol" in r.params]
    assert per_symbol == ["^GSPC"]
    assert set(_prices(lake)["symbol"]) == {*SYMBOLS, "^GSPC"}
    assert report.sources["prices"]["per_symbol"] == ["^GSPC"]
    assert report.gaps == {}


async def test_a_bulk_file_without_any_of_our_symbols_is_fetched_again(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    async with fmp_server(today=TODAY, market=("SAP.DE",)) as (url, simulator):
        report = await _ingest(url, lake, "bulk")
    assert report.status == "partial"
    assert len(report.failures) == 10  # each session, for the next run
    assert all(f.symbol is None and f.retryable for f in report.failures)
    assert "had no row for any of the 4 symbols" in report.failures[0].error
    assert not [r for r in simulator.requests if "symbol" in r.params]


async def test_market_sessions_land_while_older_ones_are_fetched(
    fmp_server: SimulatorFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stock_pipeline import spill

    monkeypatch.setattr(spill, "BUCKET_ROWS", 5)  # a bucket per session
    symbols = (*SYMBOLS, "^GSPC")  # four sessions of five symbols: auto takes bulk
    start = dt.date(2025, 3, 11)
    events: list[str] = []

    class Events(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "landing it" in record.getMessage():
                events.append("landing")

    def progress(event: ProgressEvent) -> None:
        events.append(f"{event.requests_done}/{event.requests_total}")

    handler = Events()
    logging.getLogger("stock_pipeline.pipeline").addHandler(handler)
    caplog.set_level(logging.DEBUG, logger="stock_pipeline.pipeline")
    lake = LocalLake(tmp_path)
    try:
        async with fmp_server(today=TODAY, market=SYMBOLS) as (url, simulator):
            # One request at a time, so the order of events is the pipeline's, not the network's.
            report = await _ingest(
                url, lake, "auto", symbols, start, progress=progress, concurrency=1
            )
    finally:
        logging.getLogger("stock_pipeline.pipeline").removeHandler(handler)
    assert report.status == "ok", report.failures
    # The newest session first, alone; ^GSPC, which it leaves out, per symbol; then the rest.
    sent = [r.params.get("date") or r.params["symbol"] for r in simulator.requests]
    assert sent == ["2025-03-14", "^GSPC", "2025-03-13", "2025-03-12", "2025-03-11"]
    requests = [e for e in events if e != "landing"]
    assert requests[-1] == "5/5"
    # Sessions 13 and 12 began landing before the last session's answer was in.
    assert events.index("landing") < events.index("5/5")
    assert events[: events.index("5/5")].count("landing") == 2
    # The same lake as landing at the end: a file per session, every symbol in each once.
    prices = _prices(lake)
    assert prices.height == len(symbols) * 4
    assert prices.select("symbol", "date").is_duplicated().sum() == 0
    assert sorted(f.partition for f in report.files) == [
        f"date=2025-03-{day}" for day in (11, 12, 13, 14)
    ]
    assert report.gaps == {}


async def test_a_run_aborted_while_sessions_land_lists_every_file_it_wrote(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    from stock_pipeline.errors import FmpUnreachableError

    lake = LocalLake(tmp_path)
    # Every profile request loses its connection: five in a row abort the run, while prices
    # land session by session from the market file.
    faults = {"*": (Fault(kind="drop_connection", endpoint="profile"),)}
    symbols = tuple(f"S{i:02d}" for i in range(12))
    async with fmp_server(today=TODAY, market=symbols, faults=faults) as (url, _):
        with pytest.raises(FmpUnreachableError):
            await _ingest(url, lake, "bulk", symbols, datasets=("prices", "profile"))
    [manifest] = read_manifests(lake)
    assert manifest["status"] == "aborted"
    written = {p for p in lake.list_files("raw")}
    assert written == {f["path"] for f in manifest["files"]}
