"""run_ingest end to end: the simulator over HTTP, S3 through a moto server, the real calendar."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import polars as pl
import pyarrow.parquet as pq
import pytest

from stock_pipeline import pipeline, spill
from stock_pipeline.datasets import DATASETS
from stock_pipeline.errors import ExitCode, FmpAuthError, LakeWriteError
from stock_pipeline.fmp import FmpClient, RequestPacer, RetryPolicy
from stock_pipeline.lake import (
    LocalLake,
    S3Lake,
    StoredFile,
    dataset_files,
    read_dataset,
    read_manifests,
)
from stock_pipeline.market_calendar import sessions_between
from stock_pipeline.pipeline import RunReport, run_ingest
from stock_pipeline.plan import plan_run
from stock_pipeline.simulator import RESTRICTED_ENDPOINT_TEXT, Fault, FmpSimulator, Refusal
from tests.conftest import SimulatorFactory
from tests.support import API_KEY, all_text_under, assert_no_secret

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

START, END = dt.date(2025, 3, 3), dt.date(2025, 3, 14)
STARTED = dt.datetime(2025, 3, 15, 2, 0, tzinfo=dt.UTC)


@asynccontextmanager
async def fmp_client(url: str, **overrides: object) -> AsyncIterator[FmpClient]:
    async with aiohttp.ClientSession() as session:
        options: dict[str, object] = {
            "session": session,
            "base_url": url,
            "api_key": API_KEY,
            "pacer": RequestPacer(60_000),
            "retry": RetryPolicy(attempts=3, base_delay=0),
            **overrides,
        }
        yield FmpClient(**options)  # type: ignore[arg-type]


async def ingest(
    url: str,
    lake: LocalLake | S3Lake,
    symbols: tuple[str, ...],
    datasets: tuple[str, ...] = ("prices",),
    *,
    start: dt.date = START,
    end: dt.date = END,
    max_price_rows: int = 5000,
    **client_options: object,
) -> RunReport:
    plan = plan_run(
        run_id="20250315T020000Z-test", symbols=symbols, datasets=datasets, start=start, end=end
    )
    async with fmp_client(url, **client_options) as client:
        return await run_ingest(
            plan, client=client, lake=lake, started_at=STARTED, max_price_rows=max_price_rows
        )


async def test_lands_a_lake_in_s3_and_reads_it_back(
    fmp_server: SimulatorFactory, s3_client: S3Client, bucket: str
) -> None:
    lake = S3Lake(s3_client, bucket, "fmp")
    datasets = (
        "prices",
        "adjusted_prices",
        "income_statement",
        "balance_sheet",
        "cash_flow",
        "profile",
    )
    async with fmp_server() as (url, _):
        report = await ingest(url, lake, ("AAPL", "MSFT"), datasets)
    assert report.status == "ok"
    assert report.exit_code is ExitCode.OK
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    price_keys = [k for k in keys if k.startswith("fmp/raw/prices/")]
    assert len(price_keys) == len(sessions_between(START, END)) == 10
    assert "fmp/_runs/20250315T020000Z-test.json" in keys
    # Read straight from S3 with pyarrow: one file per session, both symbols in it.
    body = s3_client.get_object(Bucket=bucket, Key=price_keys[0])["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.column("symbol").to_pylist() == ["AAPL", "MSFT"]
    for name in datasets:
        frame = read_dataset(lake, DATASETS[name])
        assert frame.height > 0, name
        assert set(frame["symbol"]) == {"AAPL", "MSFT"}
    statements = read_dataset(lake, DATASETS["income_statement"])
    assert {"FY", "Q1", "Q2", "Q3", "Q4"} <= set(statements["period"])
    manifest = json.loads(lake.read_file("_runs/20250315T020000Z-test.json"))
    assert sum(f["rows"] for f in manifest["files"] if f["dataset"] == "prices") == 20
    assert {f["path"] for f in manifest["files"]} == {
        k.removeprefix("fmp/") for k in keys if "/_runs/" not in k
    }


async def test_splits_land_once_per_run_with_every_split_fmp_lists(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    async with fmp_server() as (url, simulator):
        report = await ingest(url, lake, ("AAPL", "BA", "MSFT"), ("splits",))
    assert [r.endpoint for r in simulator.requests] == ["splits"] * 3
    [summary] = report.summaries
    assert summary.symbols_without_data == ("MSFT",)  # the simulator's MSFT never split
    splits = read_dataset(lake, DATASETS["splits"])
    assert splits.group_by("symbol").len().sort("symbol").rows() == [("AAPL", 1), ("BA", 2)]
    assert set(zip(splits["numerator"], splits["denominator"], strict=True)) == {
        (4.0, 1.0),
        (3.0, 2.0),
    }
    [path] = dataset_files(lake, DATASETS["splits"])
    assert path.startswith(f"raw/splits/ingest_date={STARTED.date()}/")


async def test_a_capped_price_window_is_split_and_fetched_again(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    start, end = dt.date(2024, 1, 2), dt.date(2024, 12, 31)
    sessions = sessions_between(start, end)
    # The simulator caps answers at 100 rows as FMP caps them at 5,000, but the plan asks for a
    # whole year in one window: every answer at the cap is split and fetched again.
    async with fmp_server(max_price_rows=100) as (url, simulator):
        report = await ingest(url, lake, ("AAPL",), start=start, end=end, max_price_rows=100)
    prices = read_dataset(lake, DATASETS["prices"])
    assert prices.height == len(sessions) == 252
    assert prices["date"].to_list() == sessions
    assert report.summaries[0].requests == len(simulator.requests) > len(report.plan.requests)
    assert report.gaps == {}


async def test_an_endpoint_outside_the_plan_fails_only_that_dataset(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    symbols = tuple(f"S{i:02d}" for i in range(40))
    async with fmp_server(
        gated_endpoints=frozenset({"historical-price-eod/dividend-adjusted"})
    ) as (
        url,
        simulator,
    ):
        report = await ingest(url, lake, symbols, ("prices", "adjusted_prices"))
        adjusted_requests = [r for r in simulator.requests if "dividend" in r.endpoint]
    assert report.status == "partial"
    assert report.exit_code is ExitCode.PARTIAL
    by_name = {s.dataset: s for s in report.summaries}
    assert by_name["prices"].symbols_ok == 40
    assert by_name["adjusted_prices"].symbols_failed == 40
    # Once FMP said the endpoint is not in the plan, only the requests already in flight (at most
    # the client's concurrency of 8) had been sent; the rest were not.
    assert len(adjusted_requests) <= 8
    assert {f.symbol for f in report.failures} == set(symbols)
    assert read_dataset(lake, DATASETS["prices"]).height == 400
    assert read_dataset(lake, DATASETS["adjusted_prices"]).is_empty()


UNFAMILIAR = Refusal(text="Payment Required: this needs a higher tier")


def _probes(simulator: FmpSimulator, endpoint: str) -> int:
    return sum(
        r.params.get("symbol") == "AAPL" and r.endpoint == endpoint for r in simulator.requests
    )


async def test_a_symbol_refused_in_an_unfamiliar_wording_fails_alone_after_one_probe(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    symbols = ("GATED", "MSFT", "KO", "IBM")
    config = {"plan_gated_symbols": frozenset({"GATED"}), "symbol_refusal": UNFAMILIAR}
    # One request at a time, the refused symbol first: nothing has answered yet when it is refused.
    async with fmp_server(**config) as (url, simulator):
        report = await ingest(url, lake, symbols, ("prices", "profile"), concurrency=1)
    assert report.exit_code is ExitCode.PARTIAL
    assert [(f.dataset, f.symbol) for f in report.failures] == [
        ("prices", "GATED"),
        ("profile", "GATED"),
    ]
    for failure in report.failures:
        assert failure.rule == "unknown wording; probe: AAPL answered, so the endpoint is served"
        assert failure.rule in failure.error
        assert not failure.retryable
    assert _probes(simulator, "historical-price-eod/full") == _probes(simulator, "profile") == 1
    assert set(read_dataset(lake, DATASETS["prices"])["symbol"]) == {"MSFT", "KO", "IBM"}
    assert set(read_dataset(lake, DATASETS["profile"])["symbol"]) == {"MSFT", "KO", "IBM"}
    assert "AAPL" not in json.dumps(report.to_manifest()["symbols"])
    manifest_rules = {f["rule"] for f in report.to_manifest()["failures"]}
    assert manifest_rules == {failure.rule for failure in report.failures}


async def test_a_refusal_after_the_endpoint_answered_is_the_symbols_without_a_probe(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    config = {"plan_gated_symbols": frozenset({"GATED"}), "symbol_refusal": UNFAMILIAR}
    async with fmp_server(**config) as (url, simulator):
        report = await ingest(url, LocalLake(tmp_path), ("MSFT", "GATED"), concurrency=1)
    [failure] = report.failures
    assert (failure.symbol, failure.rule) == (
        "GATED",
        "unknown wording; other symbols were answered",
    )
    assert _probes(simulator, "historical-price-eod/full") == 0


@pytest.mark.parametrize(
    ("first", "rule", "probes"),
    [
        ("S00", "unknown wording; probe: AAPL, which every plan serves, was refused too", 1),
        ("AAPL", "unknown wording; refused for AAPL, which every plan serves", 1),
    ],
)
async def test_an_endpoint_refused_in_an_unfamiliar_wording_fails_the_dataset_at_once(
    fmp_server: SimulatorFactory, tmp_path: Path, first: str, rule: str, probes: int
) -> None:
    lake = LocalLake(tmp_path)
    symbols = (first, *(f"S{i:02d}" for i in range(1, 30)))
    config = {"gated_endpoints": frozenset({"profile"}), "endpoint_refusal": UNFAMILIAR}
    async with fmp_server(**config) as (url, simulator):
        report = await ingest(url, lake, symbols, ("prices", "profile"), concurrency=2)
        profile_requests = [r for r in simulator.requests if r.endpoint == "profile"]
    by_name = {s.dataset: s for s in report.summaries}
    assert (by_name["prices"].symbols_ok, by_name["profile"].symbols_failed) == (30, 30)
    assert {f.symbol for f in report.failures} == set(symbols)
    assert {f.rule for f in report.failures} == {rule}
    assert _probes(simulator, "profile") == probes
    # Held while the probe decided: only the requests already in flight (two) were sent.
    assert len(profile_requests) <= 2 + probes
    assert read_dataset(lake, DATASETS["prices"]).height == 300


async def test_an_inconclusive_probe_fails_only_the_symbol(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    config = {
        "plan_gated_symbols": frozenset({"GATED"}),
        "symbol_refusal": UNFAMILIAR,
        "faults": {"AAPL": (Fault(kind="server_error"),)},
    }
    async with fmp_server(**config) as (url, simulator):
        report = await ingest(url, LocalLake(tmp_path), ("GATED", "MSFT"), concurrency=1)
    [failure] = report.failures
    assert failure.symbol == "GATED"
    assert failure.rule == "unknown wording; probe on AAPL inconclusive (FmpServerError)"
    assert _probes(simulator, "historical-price-eod/full") == 3  # the client's three attempts
    assert set(read_dataset(LocalLake(tmp_path), DATASETS["prices"])["symbol"]) == {"MSFT"}


async def test_a_refused_parameter_value_fails_only_the_requests_that_send_it(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    symbols = tuple(f"S{i:02d}" for i in range(20))
    plan = plan_run(
        run_id="20250315T020000Z-test", symbols=symbols, datasets=("income_statement",),
        start=START, end=END, period="both", today=END,
    )  # fmt: skip
    config = {"gated_values": frozenset({("period", "quarter")})}
    async with fmp_server(**config) as (url, simulator), fmp_client(url, concurrency=2) as client:
        report = await run_ingest(plan, client=client, lake=lake, started_at=STARTED)
        quarterly = [r for r in simulator.requests if r.params.get("period") == "quarter"]
    statements = read_dataset(lake, DATASETS["income_statement"])
    assert set(statements["symbol"]) == set(symbols)
    assert set(statements["period"]) == {"FY"}
    assert len(report.failures) == 20
    assert {f.rule for f in report.failures} == {"parameter refusal: 'period=quarter'"}
    # Only the quarterly requests already in flight were sent; every annual one was.
    assert len(quarterly) <= 3
    assert sum(r.params.get("period") == "annual" for r in simulator.requests) == 20


async def test_a_refusal_never_drops_rows_that_already_arrived(
    fmp_server: SimulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every answer is normalized on its own, so answers are in flight to a batch when the
    # endpoint refusal arrives and cancels the requests still waiting.
    monkeypatch.setattr(pipeline, "NORMALIZE_BATCH_VALUES", 1)
    lake = LocalLake(tmp_path)
    symbols = tuple(f"S{i:02d}" for i in range(40))
    config = {
        "plan_gated_symbols": frozenset({"S10"}),
        "symbol_refusal": Refusal(text=RESTRICTED_ENDPOINT_TEXT),
    }
    async with fmp_server(**config) as (url, _):
        report = await ingest(url, lake, symbols, concurrency=8)
    landed = set(read_dataset(lake, DATASETS["prices"])["symbol"])
    failed = {f.symbol for f in report.failures}
    assert landed | failed == set(symbols)
    assert landed & failed == set()
    assert report.summaries[0].symbols_ok == len(landed)
    assert report.summaries[0].rows == 10 * len(landed)


async def test_bad_rows_go_to_quarantine_and_quirks_are_absorbed(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = LocalLake(tmp_path)
    faults = {
        "AAPL": (Fault(kind="bad_rows"), Fault(kind="duplicates")),
        "MSFT": (Fault(kind="numbers_as_strings"), Fault(kind="extra_field")),
    }
    async with fmp_server(faults=faults) as (url, _):
        report = await ingest(url, lake, ("AAPL", "MSFT"))
    summary = report.summaries[0]
    assert report.status == "ok"
    assert summary.quarantined == 2
    assert summary.duplicates_dropped > 0
    quarantine = read_dataset(lake, DATASETS["prices"], quarantine=True)
    assert set(quarantine["symbol"]) == {"AAPL"}
    reasons = " | ".join(quarantine["_reason"])
    assert "low above open or close" in reasons
    assert "negative volume" in reasons
    assert all(json.loads(raw)["symbol"] == "AAPL" for raw in quarantine["_raw"])
    prices = read_dataset(lake, DATASETS["prices"])
    msft = prices.filter(pl.col("symbol") == "MSFT")
    assert msft.height == 10
    assert msft.schema["close"] == pl.Float64
    # A field FMP added later is kept, as sent (here a string, like every MSFT value).
    assert all(json.loads(extra) == {"newMetric": "1.5"} for extra in msft["_extra"])
    # Nothing lost: every quarantined AAPL session is missing from raw and reported as a gap.
    assert prices.filter(pl.col("symbol") == "AAPL").height == 8
    assert len(report.gaps["prices"]["AAPL"]) == 2


async def test_unknown_symbols_are_reported_as_without_data(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    async with fmp_server(unknown_symbols=frozenset({"NOPE"})) as (url, _):
        report = await ingest(url, LocalLake(tmp_path), ("AAPL", "NOPE"))
    assert report.status == "ok"
    assert report.summaries[0].symbols_without_data == ("NOPE",)
    assert report.gaps["prices"]["NOPE"] == tuple(sessions_between(START, END))


class RecordingLake(LocalLake):
    """A real local lake that remembers the order of writes and can fail one path."""

    def __init__(
        self, root: Path, fail_on: str | None = None, error: Exception | None = None
    ) -> None:
        super().__init__(root)
        self.order: list[str] = []
        self.fail_on = fail_on
        self.error = error

    def write_file(self, path: str, data: bytes) -> StoredFile:
        if self.fail_on and self.fail_on in path:
            raise self.error or LakeWriteError(f"simulated disk failure writing {path}")
        self.order.append(path)
        return super().write_file(path, data)


async def test_the_manifest_is_written_after_every_data_file(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = RecordingLake(tmp_path)
    async with fmp_server() as (url, _):
        await ingest(url, lake, ("AAPL",), ("prices", "profile"))
    assert lake.order[-1].startswith("_runs/")
    assert len(lake.order) == 12  # ten price sessions, one profile file, the manifest


async def test_a_report_and_its_plan_print_in_one_line_whatever_their_size(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    # asyncio.run formats its result's repr when the run ends (CPython issue 112559): a
    # dataclass repr of every file and request cost seconds at 5,000 tickers.
    symbols = tuple(f"S{i:03d}" for i in range(40))
    async with fmp_server() as (url, _):
        report = await ingest(url, LocalLake(tmp_path), symbols, ("prices", "profile"))
    assert len(report.files) == 11
    assert len(report.plan.requests) == 80
    assert repr(report) == (
        "RunReport('20250315T020000Z-test', ok, 440 rows, 11 files, 0 failures)"
    )
    assert repr(report.plan) == (
        "Plan('20250315T020000Z-test', 2025-03-03..2025-03-14, 40 symbols, 80 requests)"
    )


async def test_a_failed_file_write_makes_the_run_partial_and_is_listed(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = RecordingLake(tmp_path, fail_on="date=2025-03-05")
    async with fmp_server() as (url, _):
        report = await ingest(url, lake, ("AAPL",))
    assert report.exit_code is ExitCode.PARTIAL
    [failure] = report.failures
    assert "2025-03-05" in failure.error
    [manifest] = read_manifests(lake)
    assert manifest["failures"][0]["reason"] == "LakeWriteError"
    assert len(manifest["files"]) == 9


async def test_a_refused_key_aborts_and_leaks_nowhere(
    fmp_server: SimulatorFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    lake = LocalLake(tmp_path / "lake")
    async with fmp_server(api_key="another-key") as (url, simulator):
        with pytest.raises(FmpAuthError) as raised:
            await ingest(url, lake, tuple(f"S{i}" for i in range(30)))
        sent = len(simulator.requests)
    assert sent <= 8  # at most the requests already in flight, not one per symbol
    assert not (tmp_path / "lake" / "raw").exists()
    [manifest] = read_manifests(lake)
    assert manifest["status"] == "aborted"
    assert manifest["exit_code"] == 3
    text = str(raised.value) + repr(raised.value) + caplog.text + all_text_under(tmp_path)
    assert "apikey=***" in str(raised.value)
    assert_no_secret(text)


async def test_failures_after_retries_leak_no_key(
    fmp_server: SimulatorFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    faults = {"AAPL": (Fault(kind="server_error"),), "MSFT": (Fault(kind="not_json"),)}
    async with fmp_server(faults=faults, plan_gated_symbols=frozenset({"IBM"})) as (url, _):
        report = await ingest(url, LocalLake(tmp_path), ("AAPL", "MSFT", "IBM", "KO"))
    assert report.exit_code is ExitCode.PARTIAL
    assert {f.symbol for f in report.failures} == {"AAPL", "MSFT", "IBM"}
    assert read_dataset(LocalLake(tmp_path), DATASETS["prices"])["symbol"].unique().to_list() == [
        "KO"
    ]
    text = json.dumps(report.to_manifest()) + caplog.text + all_text_under(tmp_path)
    assert "apikey=***" in text
    assert_no_secret(text)


async def test_an_unforeseen_write_error_is_recorded_and_the_rest_lands(
    fmp_server: SimulatorFactory, tmp_path: Path
) -> None:
    lake = RecordingLake(
        tmp_path, fail_on="date=2025-03-06", error=RuntimeError("disk controller on fire")
    )
    async with fmp_server() as (url, _):
        report = await ingest(url, lake, ("AAPL", "MSFT"))
    assert report.exit_code is ExitCode.PARTIAL
    [failure] = report.failures
    assert "disk controller on fire" in failure.error
    assert report.summaries[0].rows == 18  # what landed, not what was fetched
    assert read_dataset(lake, DATASETS["prices"]).height == 18


def test_statement_limits_reach_back_to_the_start_from_today() -> None:
    plan = plan_run(
        run_id="r", symbols=("AAPL",), datasets=("income_statement",),
        start=dt.date(2016, 1, 4), end=dt.date(2016, 12, 30), period="quarter",
        today=dt.date(2026, 11, 23),
    )  # fmt: skip
    [request] = plan.requests
    # FMP answers newest first: 2016 is about 43 quarters back from today.
    assert int(dict(request.params)["limit"]) >= 43


async def test_landing_bucket_by_bucket_lands_the_same_files_as_landing_at_once(
    fmp_server: SimulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows wait on local disk in buckets of sessions; a bucket of a row or two per symbol must
    # land exactly what one bucket for the whole range lands, duplicates and gaps included.
    symbols = ("AAPL", "MSFT", "KO")
    faults = {"MSFT": (Fault(kind="duplicates"),), "KO": (Fault(kind="bad_rows"),)}
    datasets = ("prices", "income_statement")
    reports, lakes = [], []
    monkeypatch.setattr(spill, "MIN_BUCKETS", 1)
    for name, bucket_rows in (("one", 10_000_000), ("many", 2)):
        monkeypatch.setattr(spill, "BUCKET_ROWS", bucket_rows)
        lake = LocalLake(tmp_path / name)
        async with fmp_server(faults=faults) as (url, _):
            reports.append(await ingest(url, lake, symbols, datasets))
        lakes.append(lake)
    one, many = reports
    for name in datasets:
        a, b = (read_dataset(lake, DATASETS[name]) for lake in lakes)
        assert a.height > 0
        assert a.equals(b), name
    assert [f.stored.path for f in one.files] == [f.stored.path for f in many.files]
    assert [f.stored.sha256 for f in one.files] == [f.stored.sha256 for f in many.files]
    assert one.gaps == many.gaps
    assert one.gaps["prices"]["KO"]
    assert [s.duplicates_dropped for s in one.summaries] == [
        s.duplicates_dropped for s in many.summaries
    ]


def test_spill_buckets_follow_the_partition_dates_and_keep_batch_order(tmp_path: Path) -> None:
    prices = DATASETS["prices"]
    start = dt.date(2025, 1, 1)
    store = spill.Spill(tmp_path, prices, start=start, symbols=spill.BUCKET_ROWS // 10)
    assert store.days == 14  # 10 rows a symbol: about 14 calendar days
    rows = [
        {"symbol": symbol, "date": start + dt.timedelta(days=day), "close": float(batch)}
        for batch, symbol in enumerate(("A", "B"))
        for day in (0, 13, 14, 40)
    ]
    frame = pl.DataFrame(rows)
    store.add(frame.filter(pl.col("symbol") == "A"))
    store.add(frame.filter(pl.col("symbol") == "B"))
    assert store.buckets() == [0, 1, 2]
    assert store.read(1)["date"].to_list() == [start + dt.timedelta(days=14)] * 2
    assert store.read(0)["symbol"].to_list() == ["A", "A", "B", "B"]  # batches in order
    assert store.rows == 8
    # A short range is cut into MIN_BUCKETS buckets at least, however few its symbols.
    short = spill.Spill(tmp_path / "short", prices, start=start, end=dt.date(2025, 3, 1), symbols=1)
    assert short.days == 8  # 60 days, 8 buckets
    statements = spill.Spill(tmp_path / "s", DATASETS["income_statement"], start=start, symbols=1)
    statements.add(frame)
    assert statements.buckets() == [0]
    assert statements.read(0).equals(frame)
