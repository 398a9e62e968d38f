"""Statements only when they change: the company schedule (pure) and nights of catch-up runs
against the simulator's filings listing."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest

from stock_pipeline.cli import app
from stock_pipeline.datasets import DATASETS
from stock_pipeline.errors import ExitCode
from stock_pipeline.lake import LocalLake, read_dataset, read_manifests
from stock_pipeline.plan import (
    OVERDUE_DAYS,
    ROTATION_DAYS,
    CompanyRecord,
    Filing,
    company_records,
    filings_window,
    rotation_day,
    schedule_companies,
)
from stock_pipeline.simulator import (
    FILINGS_ENDPOINT,
    Fault,
    SimulatorConfig,
    SimulatorThread,
    _filing,
)
from tests.support import API_KEY

COMPANY_DATASETS = ("income_statement", "balance_sheet", "cash_flow", "profile", "splits")
DATASETS_ALL = ("prices", *COMPANY_DATASETS)
TODAY = dt.date(2025, 11, 5)
UTC = dt.UTC


def _accepted(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def _schedule(
    records: dict[str, CompanyRecord],
    filings: list[Filing] = (),  # type: ignore[assignment]
    *,
    symbols: tuple[str, ...] = ("AAPL", "MSFT"),
    budget: int = 10_000,
    today: dt.date = TODAY,
) -> dict[str, tuple[tuple[str, ...], tuple[str, ...], str, bool]]:
    plan = schedule_companies(
        symbols=symbols,
        datasets=DATASETS_ALL,
        period="both",
        records=records,
        filings=filings,
        today=today,
        budget=budget,
    )
    return {s: (r.datasets, r.periods, r.why, r.full) for s, r in plan.items()}


def _fresh(accepted: str = "2025-08-01 20:00:00") -> CompanyRecord:
    # Refreshed yesterday, so not due for rotation whatever its slot.
    when = _accepted(accepted)
    return CompanyRecord(
        refreshed=TODAY - dt.timedelta(days=1), accepted={"annual": when, "quarter": when}
    )


def test_a_company_never_fetched_gets_everything() -> None:
    plan = _schedule({"MSFT": _fresh()})
    assert plan == {"AAPL": (COMPANY_DATASETS, ("annual", "quarter"), "new", True)}


def test_a_new_10q_refetches_the_quarterly_statements_and_a_10k_both_periods() -> None:
    statements = COMPANY_DATASETS[:3]
    filings = [
        Filing("AAPL", "10-Q", _accepted("2025-11-04 21:30:00")),
        Filing("MSFT", "10-K", _accepted("2025-11-04 12:00:00")),
        Filing("MSFT", "8-K", _accepted("2025-11-04 13:00:00")),  # not a statement
        Filing("IBM", "10-Q", _accepted("2025-11-04 13:00:00")),  # not in the universe
    ]
    plan = _schedule({"AAPL": _fresh(), "MSFT": _fresh()}, filings)
    assert plan["AAPL"][:2] == (statements, ("quarter",))
    assert plan["AAPL"][2] == "10-Q accepted 2025-11-04 21:30 UTC"
    assert plan["MSFT"][:2] == (statements, ("annual", "quarter"))
    assert not plan["AAPL"][3]
    assert not plan["MSFT"][3]


def test_on_a_night_over_budget_10k_annual_statements_wait_but_quarters_never_do() -> None:
    symbols = tuple(f"S{i:02d}" for i in range(10))
    records = {s: _fresh() for s in symbols}
    filings = [
        Filing(s, "10-K", _accepted(f"2025-11-04 {10 + i:02d}:00:00"))
        for i, s in enumerate(symbols)
    ]
    plan = _schedule(records, filings, symbols=symbols, budget=10 * 3 + 4 * 3)
    # Every quarter (3 requests each), then the annual statements of the four oldest filings.
    assert {s: p[1] for s, p in plan.items()} == {
        s: ("annual", "quarter") if i < 4 else ("quarter",) for i, s in enumerate(symbols)
    }
    # The next night the same listing asks only for what is still missing.
    landed = _accepted("2025-11-04 23:00:00")
    for symbol, (_, periods, _, _) in plan.items():
        records[symbol] = CompanyRecord(
            records[symbol].refreshed,
            {**records[symbol].accepted, **dict.fromkeys(periods, landed)},
        )
    plan = _schedule(records, filings, symbols=symbols, budget=10 * 3 + 4 * 3)
    assert {s: p[1] for s, p in plan.items()} == {s: ("annual",) for s in symbols[4:]}


def test_a_filing_the_lake_already_holds_is_not_fetched_again() -> None:
    accepted = "2025-11-04 21:30:00"
    filings = [Filing("AAPL", "10-Q", _accepted(accepted))]
    assert _schedule({"AAPL": _fresh(accepted), "MSFT": _fresh()}, filings) == {}


def test_rotation_refreshes_every_company_once_in_its_cycle_and_spreads_them_evenly() -> None:
    symbols = tuple(f"S{i:04d}" for i in range(5000))
    per_day = Counter(rotation_day(s, TODAY) for s in symbols)
    assert len(per_day) == ROTATION_DAYS
    assert max(per_day.values()) < 1.2 * 5000 / ROTATION_DAYS
    # A cycle of nights after every company was refreshed: each comes back exactly once, and
    # no company waits longer than the cycle.
    refreshed = dict.fromkeys(symbols, TODAY)
    seen: Counter[str] = Counter()
    for night in range(1, ROTATION_DAYS + 1):
        day = TODAY + dt.timedelta(days=night)
        records = {s: CompanyRecord(refreshed=refreshed[s]) for s in symbols}
        plan = _schedule(records, symbols=symbols, today=day)
        assert all(why == "rotation" and full for _, _, why, full in plan.values())
        for symbol in plan:
            assert (day - refreshed[symbol]).days <= ROTATION_DAYS
            refreshed[symbol] = day
            seen[symbol] += 1
    assert set(seen) == set(symbols)
    assert set(seen.values()) == {1}


def test_a_busy_night_defers_the_rotation_but_never_past_a_month() -> None:
    symbols = tuple(f"S{i:03d}" for i in range(200))
    due_day = max(rotation_day(s, TODAY) for s in symbols)
    on_time = {
        s: CompanyRecord(refreshed=rotation_day(s, TODAY) - dt.timedelta(days=1)) for s in symbols
    }
    full = 8  # 3 statements x 2 periods, profile, splits
    plan = _schedule(on_time, symbols=symbols, budget=3 * full, today=due_day)
    assert len(plan) == 3  # within the budget
    # Oldest first: the companies deferred longest go before those just due.
    overdue = {s: CompanyRecord(refreshed=TODAY - dt.timedelta(days=OVERDUE_DAYS)) for s in symbols}
    plan = _schedule(overdue, symbols=symbols, budget=0)
    assert len(plan) == len(symbols)


def test_company_records_fold_the_manifests() -> None:
    manifests = [
        {
            "status": "ok",
            "started_at": "2025-11-01T02:00:00+00:00",  # 31 October in New York
            "companies": {
                "AAPL": {"full": True, "accepted": {"annual": "2025-02-01T20:00:00+00:00"}},
                "MSFT": {"full": False, "accepted": {}},
            },
        },
        {
            "status": "aborted",
            "started_at": "2025-11-04T02:00:00+00:00",
            "companies": {
                "AAPL": {"full": True, "accepted": {"quarter": "2025-11-03T20:00:00+00:00"}}
            },
        },
        {
            "status": "partial",
            "started_at": "2025-11-03T02:00:00+00:00",
            "companies": {
                "AAPL": {"full": False, "accepted": {"quarter": "2025-10-30T20:00:00+00:00"}}
            },
            "filings": {"from": "2025-10-25", "to": "2025-11-02", "rows": 12},
        },
    ]
    records = company_records(manifests)
    assert records["AAPL"] == CompanyRecord(
        dt.date(2025, 10, 31),
        {"annual": _accepted("2025-02-01 20:00:00"), "quarter": _accepted("2025-10-30 20:00:00")},
    )
    assert records["MSFT"] == CompanyRecord(None, {})
    # Ten days before the end of the last listing read, for what has not landed since.
    assert filings_window(manifests, TODAY) == (dt.date(2025, 10, 23), TODAY)
    assert filings_window([], TODAY) == (TODAY - dt.timedelta(days=7), TODAY)
    # A listing that failed or was refused does not count as read.
    failed = {**manifests[2], "filings": {"from": "2025-10-25", "to": "2025-11-04", "error": "x"}}
    assert filings_window([*manifests, failed], TODAY) == (dt.date(2025, 10, 23), TODAY)
    # Never more than a full rotation back: every company is refreshed by then anyway.
    assert filings_window(manifests, dt.date(2026, 3, 1)) == (
        dt.date(2026, 3, 1) - dt.timedelta(days=OVERDUE_DAYS),
        dt.date(2026, 3, 1),
    )
    # Runners sharing a lake each read from their own last listing.
    manifests[2]["symbols"] = ["AAPL", "MSFT"]
    assert filings_window(manifests, TODAY, ["AAPL"]) == (dt.date(2025, 10, 23), TODAY)
    assert filings_window(manifests, TODAY, ["KO"]) == (TODAY - dt.timedelta(days=7), TODAY)


def test_rotation_days_do_not_line_up_with_the_shards() -> None:
    from stock_pipeline.plan import shard_symbols

    symbols = tuple(f"S{i:04d}" for i in range(5000))
    for count in (4, 5, 10):
        for index in range(1, count + 1):
            days = Counter(rotation_day(s, TODAY) for s in shard_symbols(symbols, index, count))
            assert len(days) == ROTATION_DAYS
            assert max(days.values()) < 2 * 5000 / count / ROTATION_DAYS


# --------------------------------------------------------------------------- nights of runs

SYMBOLS = ("AAPL", "MSFT", "KO", "JPM", "IBM", "WMT", "XOM", "CVX", "PG", "HD")


def _first_filer(symbols: tuple[str, ...], after: dt.date) -> tuple[str, dt.date, str]:
    """The symbol whose Q3 10-Q the simulator accepts first after `after`: (symbol, filing
    date, acceptance)."""
    filings = []
    for symbol in symbols:
        filed, accepted = _filing(symbol, 2025, "Q3", dt.date(2025, 9, 30))
        if dt.date.fromisoformat(accepted[:10]) > after:
            filings.append((accepted, symbol, filed))
    accepted, symbol, filed = min(filings)
    return symbol, filed, accepted


def _night(
    lake: Path, tickers: Path, today: dt.date, *extra: str, **config: object
) -> tuple[int, str, list[tuple[str, dict[str, str]]]]:
    from typer.testing import CliRunner

    sim_config = SimulatorConfig(api_key=API_KEY, today=today, market=SYMBOLS, **config)  # type: ignore[arg-type]
    with SimulatorThread(sim_config) as sim:
        result = CliRunner().invoke(
            app,
            [
                "ingest",
                "--fmp-base-url",
                sim.url,
                "--lake",
                str(lake),
                "--tickers-path",
                str(tickers),
                "--end",
                str(today - dt.timedelta(days=1)),
                "--rate-limit",
                "60000",
                *extra,
            ],
            env={"FMP_API_KEY": API_KEY, "STOCK_PIPELINE_RETRY_BASE_DELAY": "0"},
            catch_exceptions=False,
        )
        return (
            result.exit_code,
            result.output,
            [(r.endpoint, r.params) for r in sim.simulator.requests],
        )


@pytest.fixture
def tickers(tmp_path: Path) -> Path:
    path = tmp_path / "tickers.csv"
    path.write_text("symbol\n" + "\n".join(SYMBOLS) + "\n")
    return path


def test_a_filing_listed_on_night_n_lands_on_night_n(tmp_path: Path, tickers: Path) -> None:
    lake = tmp_path / "lake"
    symbol, filed, accepted = _first_filer(SYMBOLS, dt.date(2025, 10, 24))
    night_before = filed - dt.timedelta(days=1)
    while night_before.weekday() >= 5:
        night_before -= dt.timedelta(days=1)
    # Night 0, on an empty lake: every company is new and lands in full.
    code, output, _ = _night(lake, tickers, night_before)
    assert code == ExitCode.OK, output
    before = read_dataset(LocalLake(lake), DATASETS["income_statement"])
    assert str(accepted) not in {str(t) for t in before["accepted_date"].to_list()}
    # Night N: the listing shows the 10-Q: that company's quarterly statements are fetched, and
    # nobody else's but the companies whose rotation day came since night 0.
    night = filed + dt.timedelta(days=1)
    rotated = {s for s in SYMBOLS if rotation_day(s, night) > night_before}
    assert symbol not in rotated  # (the simulator's data make it so; the test needs it)
    code, output, sent = _night(lake, tickers, night)
    assert code == ExitCode.OK, output
    by_endpoint = Counter(endpoint for endpoint, _ in sent)
    assert by_endpoint[FILINGS_ENDPOINT] == 1
    assert by_endpoint["eod-bulk"] == len({p["date"] for e, p in sent if e == "eod-bulk"})
    assert by_endpoint["historical-price-eod/full"] == 0
    assert by_endpoint["splits-calendar"] == 1
    assert {p["symbol"] for e, p in sent if e in ("profile", "splits")} == rotated
    statements = [p for e, p in sent if e.endswith("-statement")]
    filers = {p["symbol"] for p in statements} - rotated
    assert symbol in filers
    assert {p["period"] for p in statements if p["symbol"] in filers} == {"quarter"}
    assert len(statements) == 3 * len(filers) + 6 * len(rotated)
    landed = read_dataset(LocalLake(lake), DATASETS["income_statement"])
    new = landed.filter(
        (landed["symbol"] == symbol) & (landed["fiscal_year"] == 2025) & (landed["period"] == "Q3")
    )
    assert new.height == 1
    manifest = max(read_manifests(LocalLake(lake)), key=lambda m: m["started_at"])
    assert manifest["companies"][symbol]["why"].startswith("10-Q accepted")
    assert manifest["filings"]["signalled"] == len(filers)
    # Night N+1: the lake holds the filing; the listing still shows it, nothing is refetched.
    code, output, sent = _night(lake, tickers, night + dt.timedelta(days=1))
    assert code == ExitCode.OK, output
    assert not [p for e, p in sent if e.endswith("-statement") and p["symbol"] == symbol]


def test_refresh_fetches_every_company_and_dry_run_says_why(tmp_path: Path, tickers: Path) -> None:
    lake = tmp_path / "lake"
    day = dt.date(2025, 6, 10)
    code, output, _ = _night(lake, tickers, day, "--backfill-days", "2")
    assert code == ExitCode.OK, output
    code, output, sent = _night(lake, tickers, day + dt.timedelta(days=1), "--dry-run")
    assert code == ExitCode.OK, output
    assert sent == []
    assert "filings: the run first reads FMP's filings listing for 2025-06-" in output
    assert "prices: 1 request(s) to eod-bulk" in output
    code, output, sent = _night(lake, tickers, day + dt.timedelta(days=1), "--refresh")
    assert code == ExitCode.OK, output
    assert {p["symbol"] for e, p in sent if e == "profile"} == set(SYMBOLS)
    assert not [e for e, _ in sent if e == FILINGS_ENDPOINT]
    assert "companies fetched per symbol: 10 (10 refresh)" in output


def test_an_unreadable_listing_makes_the_run_partial_and_the_next_one_reads_it_again(
    tmp_path: Path, tickers: Path
) -> None:
    lake = tmp_path / "lake"
    day = dt.date(2025, 6, 10)
    code, output, _ = _night(lake, tickers, day, "--backfill-days", "2")
    assert code == ExitCode.OK, output
    broken = {"*": (Fault(kind="server_error", endpoint=FILINGS_ENDPOINT),)}
    code, output, sent = _night(lake, tickers, day + dt.timedelta(days=1), faults=broken)
    assert code == ExitCode.PARTIAL, output
    assert "filings listing" in output.lower()
    manifests = sorted(read_manifests(LocalLake(lake)), key=lambda m: m["started_at"])
    assert "error" in manifests[-1]["filings"]
    code, output, sent = _night(lake, tickers, day + dt.timedelta(days=2))
    assert code == ExitCode.OK, output
    listing = [p for e, p in sent if e == FILINGS_ENDPOINT]
    # The failed night's days are read again: from before the last listing that was read.
    assert listing[0]["from"] <= str(day + dt.timedelta(days=1 - 3))
    assert json.dumps(manifests[-1]).count(API_KEY) == 0


def test_a_refusal_by_the_plan_does_not_make_a_company_new_every_night(
    tmp_path: Path, tickers: Path
) -> None:
    # A plan without quarterly statements: those requests are refused for good, so the
    # companies count as fetched, and the next night schedules nobody.
    lake = tmp_path / "lake"
    day = dt.date(2025, 6, 10)
    refused = frozenset({("period", "quarter")})
    code, output, _ = _night(lake, tickers, day, gated_values=refused)
    assert code == ExitCode.PARTIAL, output
    manifest = read_manifests(LocalLake(lake))[0]
    assert set(manifest["companies"]) == set(SYMBOLS)
    assert all(c["why"] == "new" for c in manifest["companies"].values())
    code, output, sent = _night(lake, tickers, day + dt.timedelta(days=1), gated_values=refused)
    latest = max(read_manifests(LocalLake(lake)), key=lambda m: m["started_at"])
    assert not [c for c in latest["companies"].values() if c["why"] == "new"]
    rotated = {s for s in SYMBOLS if rotation_day(s, day + dt.timedelta(days=1)) > day}
    assert {p["symbol"] for e, p in sent if e == "profile"} == rotated


def test_a_backfill_stands_on_today_and_a_replayed_night_on_its_own_day(
    tmp_path: Path, tickers: Path
) -> None:
    from stock_pipeline.market_calendar import NEW_YORK

    lake = tmp_path / "lake"
    day = dt.date(2025, 6, 10)
    code, output, _ = _night(lake, tickers, day, "--backfill-days", "2")
    assert code == ExitCode.OK, output
    code, output, _ = _night(lake, tickers, day + dt.timedelta(days=1))
    assert code == ExitCode.OK, output
    manifests = sorted(read_manifests(LocalLake(lake)), key=lambda m: m["started_at"])
    # The backfill fetched statements as they are now; the replayed night as of its day.
    today = dt.datetime.now(NEW_YORK).date()
    assert manifests[0]["parameters"]["as_of"] in (str(today), str(today - dt.timedelta(days=1)))
    assert manifests[1]["parameters"]["as_of"] == str(day + dt.timedelta(days=1))


def test_a_plan_without_the_filings_listing_still_runs_the_night(
    tmp_path: Path, tickers: Path
) -> None:
    lake = tmp_path / "lake"
    day = dt.date(2025, 6, 10)
    code, output, _ = _night(lake, tickers, day)
    assert code == ExitCode.OK, output
    refused = frozenset({FILINGS_ENDPOINT})
    code, output, sent = _night(lake, tickers, day + dt.timedelta(days=1), gated_endpoints=refused)
    assert code == ExitCode.OK, output
    assert [e for e, _ in sent].count(FILINGS_ENDPOINT) == 1
    manifest = max(read_manifests(LocalLake(lake)), key=lambda m: m["started_at"])
    assert "Restricted Endpoint" in manifest["filings"]["refused"]
    assert manifest["failures"] == []
