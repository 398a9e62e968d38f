"""Benchmark: the requests each nightly run sends for a universe, night after night over the
simulator's filing calendar, beside what a night cost when every company was fetched every night.

Each session's night is planned exactly as `ingest` plans a catch-up (`schedule_companies`, then
`plan_run` with prices from eod-bulk and splits from the calendar), from the filings the
simulator's listing shows that night; every company planned is taken to have landed, with the
newest acceptance the simulator's statements carry that day. No HTTP: this counts requests, it
does not time them (`backfill.py` does that).

    .venv/bin/python benchmarks/nightly.py --tickers 5000 --start 2025-01-02 --end 2025-12-31
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from figures import report

from stock_pipeline.config import DEFAULT_DATASETS
from stock_pipeline.market_calendar import NEW_YORK, sessions_between
from stock_pipeline.pipeline import FILINGS_PAGE
from stock_pipeline.plan import (
    FILING_PERIODS,
    FILINGS_FIRST_DAYS,
    FILINGS_OVERLAP_DAYS,
    NIGHT_MINUTES,
    CompanyRecord,
    Filing,
    plan_run,
    requests_per_company,
    schedule_companies,
)
from stock_pipeline.simulator import _QUARTER_ENDS, SimulatorConfig, _filing, _filings_rows


def newest_acceptance(
    symbol: str, day: dt.date, periods: tuple[str, ...]
) -> dict[str, dt.datetime]:
    """Per period, the newest acceptance among the company's statements the simulator serves on
    `day` (the fourth quarter comes with the fiscal year's 10-K)."""
    newest: dict[str, dt.datetime] = {}
    for year in (day.year - 1, day.year):
        for quarter, month_day in enumerate(_QUARTER_ENDS, start=1):
            label = "FY" if quarter == 4 else f"Q{quarter}"
            filed, accepted = _filing(symbol, year, label, dt.date(year, *month_day))
            if filed > day:
                continue
            for period in ("quarter", "annual") if quarter == 4 else ("quarter",):
                if period in periods and _utc(accepted) > newest.get(
                    period, _utc("1970-01-01 00:00:00")
                ):
                    newest[period] = _utc(accepted)
    return newest


def _utc(text: str) -> dt.datetime:
    local = dt.datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=NEW_YORK)
    return local.astimezone(dt.UTC)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tickers", type=int, default=5000)
    parser.add_argument("--start", default="2025-01-02", help="the first night (a full fetch)")
    parser.add_argument("--end", default="2025-12-31")
    parser.add_argument("--rate-limit", type=int, default=300, help="requests per minute")
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()

    symbols = tuple(f"S{i:04d}" for i in range(args.tickers))
    datasets = DEFAULT_DATASETS
    config = SimulatorConfig(market=symbols)
    budget_minutes = NIGHT_MINUTES
    records: dict[str, CompanyRecord] = {}
    listing_end: dt.date | None = None
    nights: list[dict[str, Any]] = []
    # How long each deferrable thing waited: a 10-K's annual statements, a company's refresh.
    annual_due: dict[str, int] = {}
    longest_annual_wait = 0
    longest_between_refreshes = 0
    clock = time.perf_counter()
    for day in sessions_between(dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)):
        start = (
            listing_end - dt.timedelta(days=FILINGS_OVERLAP_DAYS)
            if listing_end
            else day - dt.timedelta(days=FILINGS_FIRST_DAYS)
        )
        filings: list[Filing] = []
        pages = 0
        if records:
            while True:
                params = {"from": str(start), "to": str(day), "page": str(pages)}
                rows = _filings_rows({**params, "limit": str(FILINGS_PAGE)}, config, day)
                pages += 1
                filings += [
                    Filing(r["symbol"], r["formType"], _utc(r["acceptedDate"])) for r in rows
                ]
                if len(rows) < FILINGS_PAGE:
                    break
            listing_end = day

        def build(companies: Any, day: dt.date = day) -> Any:
            return plan_run(
                run_id="night",
                symbols=symbols,
                datasets=datasets,
                start=day,
                end=day,
                today=day,
                prices_source="auto",
                companies=companies,
                splits_calendar=bool(records),
            )

        if records:
            fixed = len(build({}).requests) + pages
            companies = schedule_companies(
                symbols=symbols,
                datasets=datasets,
                period="both",
                records=records,
                filings=filings,
                today=day,
                budget=budget_minutes * args.rate_limit - fixed,
            )
            plan = build(companies)
        else:
            plan = build(None)
        for f in filings:
            landed = records.get(f.symbol, CompanyRecord()).accepted.get("annual")
            if FILING_PERIODS.get(f.form) == ("annual", "quarter") and (
                landed is None or f.accepted > landed
            ):
                annual_due.setdefault(f.symbol, len(nights))
        for symbol, refresh in plan.companies.items():
            if "annual" in refresh.periods and symbol in annual_due:
                longest_annual_wait = max(longest_annual_wait, len(nights) - annual_due.pop(symbol))
            previous = records.get(symbol, CompanyRecord()).refreshed
            if refresh.full and previous is not None:
                longest_between_refreshes = max(longest_between_refreshes, (day - previous).days)
        why = Counter(r.reason for r in plan.companies.values())
        forms = Counter(
            f.form for f in filings if f.form in FILING_PERIODS and f.symbol in plan.companies
        )
        requests = len(plan.requests) + pages
        nights.append(
            {
                "night": day.isoformat(),
                "requests": requests,
                "minutes": round(requests / args.rate_limit, 1),
                "listing_pages": pages,
                "companies": dict(why),
                "filings_fetched": dict(forms),
                "by_dataset": plan.requests_by_dataset(),
            }
        )
        for symbol, refresh in plan.companies.items():
            old = records.get(symbol, CompanyRecord())
            records[symbol] = CompanyRecord(
                refreshed=day if refresh.full else old.refreshed,
                accepted={**old.accepted, **newest_acceptance(symbol, day, refresh.periods)},
            )

    first, rest = nights[0], nights[1:]
    counts = [n["requests"] for n in rest]
    busiest = max(rest, key=lambda n: n["requests"])
    every_night = args.tickers * (1 + requests_per_company(datasets[1:], ("annual", "quarter")))
    figures = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "tickers": args.tickers,
        "datasets": list(datasets),
        "rate_limit": args.rate_limit,
        "nights": len(nights),
        "first_night": first["requests"],
        "before_every_night": every_night,
        "median": statistics.median(counts),
        "p95": sorted(counts)[int(0.95 * (len(counts) - 1))],
        "max": busiest["requests"],
        "busiest": busiest,
        "over_budget_nights": sum(c > budget_minutes * args.rate_limit for c in counts),
        "longest_wait_for_10k_annual_nights": longest_annual_wait,
        "longest_days_between_full_refreshes": longest_between_refreshes,
        "seconds": round(time.perf_counter() - clock, 1),
    }
    report(figures, args.output)


if __name__ == "__main__":
    main()
