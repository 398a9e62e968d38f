"""What a run will fetch, decided before any request: the sessions, the catch-up and every request.

Pure and quick to import: `ingest --dry-run` prints a plan without loading the HTTP client or the
data frames, and the catch-up reads only the run manifests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stock_pipeline.config import PRICE_ROW_CAP, PricesSource
from stock_pipeline.datasets import DATASETS
from stock_pipeline.errors import ConfigError
from stock_pipeline.market_calendar import NEW_YORK, recent_sessions, sessions_between

__all__ = [
    "MARKET",
    "Plan",
    "Request",
    "Source",
    "landed_through",
    "last_landed_session",
    "new_run_id",
    "plan_run",
    "resolve_range",
    "shard_symbols",
]

#: Price windows ask for at most this share of FMP's cap, so a full answer is never taken for a capped one.
WINDOW_FILL = 0.98


def new_run_id(now: dt.datetime) -> str:
    """A run id that sorts by start time: 20251114T223005Z-1a2b3c4d."""
    return f"{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


#: The symbol of a request that answers for the whole market.
MARKET = "*"


@dataclass(frozen=True, slots=True)
class Request:
    """One FMP request of the plan."""

    dataset: str
    symbol: str
    params: tuple[tuple[str, str], ...]
    #: For price requests: the sessions the window covers (used to split a capped answer).
    window: tuple[dt.date, ...] = ()
    #: Sent to the dataset's whole-market endpoint; its rows are kept for the plan's symbols.
    market: bool = False


@dataclass(frozen=True, slots=True)
class Source:
    """How a run fetches a dataset that FMP also serves for the whole market, and why."""

    endpoint: str
    requests: int
    why: str
    #: Per-symbol requests that replace the market ones when FMP's plan refuses them.
    fallback: tuple[Request, ...] = ()


@dataclass(frozen=True, slots=True, repr=False)
class Plan:
    """What a run will do, before it does any of it."""

    run_id: str
    start: dt.date
    end: dt.date
    sessions: tuple[dt.date, ...]
    symbols: tuple[str, ...]
    datasets: tuple[str, ...]
    period: str
    requests: tuple[Request, ...]
    #: Datasets fetched from a whole-market endpoint, or that chose not to: the choice and why.
    sources: Mapping[str, Source] = field(default_factory=dict)
    #: The symbols with per-symbol company requests (statements, profile, splits), and why.
    companies: Mapping[str, Refresh] = field(default_factory=dict)

    def requests_by_dataset(self) -> dict[str, int]:
        counts: dict[str, int] = {name: 0 for name in self.datasets}
        for request in self.requests:
            counts[request.dataset] += 1
        return counts

    def estimated_minutes(self, rate_limit: int) -> float:
        return len(self.requests) / rate_limit

    def __repr__(self) -> str:
        # Short: a plan holds a request per symbol and dataset (45,000 at 5,000 tickers).
        return (
            f"Plan({self.run_id!r}, {self.start}..{self.end}, {len(self.symbols)} symbols, "
            f"{len(self.requests)} requests)"
        )


def resolve_range(
    *,
    end: dt.date,
    start: dt.date | None,
    backfill_days: int | None,
    last_landed: dt.date | None,
) -> tuple[dt.date, dt.date]:
    """The sessions to fetch. Without --start or --backfill-days, catch up from the session after
    the newest one a successful run landed (or just `end` on an empty lake)."""
    if backfill_days is not None:
        sessions = recent_sessions(end, backfill_days)
        if len(sessions) < backfill_days:
            raise ConfigError(
                f"--backfill-days {backfill_days} reaches before the calendar's first day; "
                f"only {len(sessions)} sessions end at {end}"
            )
        return sessions[0], end
    if start is not None:
        return start, end
    if last_landed is not None and last_landed < end:
        following = sessions_between(last_landed + dt.timedelta(days=1), end)
        if following:
            return following[0], end
    return end, end


def last_landed_session(
    manifests: Iterable[Mapping[str, Any]], *, symbols: Sequence[str], datasets: Sequence[str]
) -> dt.date | None:
    """The newest session through which every (price dataset, symbol) asked for now has landed.

    Pairs that never landed (new tickers) do not hold the catch-up back: backfill them
    explicitly. See `landed_through`."""
    price = [d for d in datasets if DATASETS[d].kind == "prices"]
    through = landed_through(manifests, datasets=price)
    landed = [through[(d, s)] for d in price for s in symbols if (d, s) in through]
    return min(landed, default=None)


def landed_through(
    manifests: Iterable[Mapping[str, Any]], *, datasets: Sequence[str]
) -> dict[tuple[str, str], dt.date]:
    """Per (price dataset, symbol) that ever landed, the session through which it has landed.

    Read from run manifests, oldest first: ok and partial runs count, aborted ones do not. A pair
    that failed with a retryable error in a run has not landed that run's range, so the next
    catch-up fetches it again; a pair FMP refuses for good (a 402) counts as done.
    """
    price = [d for d in datasets if DATASETS[d].kind == "prices"]
    through: dict[tuple[str, str], dt.date] = {}
    # Pairs whose range failed for a passing reason: landed only through the day before it.
    behind: dict[tuple[str, str], dt.date] = {}
    for manifest in manifests:
        if manifest.get("status") not in ("ok", "partial"):
            continue
        start = dt.date.fromisoformat(manifest["range"]["start"])
        end = dt.date.fromisoformat(manifest["range"]["end"])
        retry = [f for f in manifest.get("failures", []) if f.get("retryable", True)]
        failed = {(f["dataset"], f["symbol"]) for f in retry}
        for name in price:
            if name not in manifest.get("datasets", ()):
                continue
            for symbol in manifest.get("symbols", ()):
                pair = (name, symbol)
                if pair in failed or (name, None) in failed:
                    behind.setdefault(pair, start - dt.timedelta(days=1))
                    continue
                if pair in behind and start <= behind[pair] + dt.timedelta(days=1):
                    del behind[pair]  # this run covered the range that had failed
                if end > through.get(pair, dt.date.min):
                    through[pair] = end
    return {**through, **behind}


# --------------------------------------------------------------------------- companies

#: Every company's statements, profile and split history are fetched again at least this often.
ROTATION_DAYS = 25
#: A company is refreshed whatever the night's load once its last refresh is this old.
OVERDUE_DAYS = 28
#: The night's requests fit in this many minutes at the run's pace; the rotation waits beyond.
NIGHT_MINUTES = 15
#: The filings listing is read again this many days before the end of the last one read: for
#: filings FMP lists late, statements FMP has not caught up with, fetches that failed and annual
#: statements a busy night deferred.
FILINGS_OVERLAP_DAYS = 10
#: How far back the first listing reads when no run read one before.
FILINGS_FIRST_DAYS = 7
#: Forms whose figures FMP's statements carry, and the statement periods each one changes.
FILING_PERIODS: Mapping[str, tuple[str, ...]] = {
    **dict.fromkeys(("10-Q", "10-Q/A", "10-QT"), ("quarter",)),
    **dict.fromkeys(
        ("10-K", "10-K/A", "10-KT", "20-F", "20-F/A", "40-F", "40-F/A"), ("annual", "quarter")
    ),
}
COMPANY_KINDS = ("statement", "profile", "events")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Filing:
    """One row of FMP's filings listing that matters here."""

    symbol: str
    form: str
    accepted: dt.datetime  # UTC


@dataclass(frozen=True, slots=True)
class CompanyRecord:
    """What earlier runs landed of a company, from their manifests."""

    #: New York day of the newest run that fetched every company dataset of it.
    refreshed: dt.date | None = None
    #: Per statement period ("annual", "quarter"): the newest SEC acceptance in the lake.
    accepted: Mapping[str, dt.datetime] = field(default_factory=dict)


#: The reasons a company is fetched, besides a filing (whose reason names the form and time).
REFRESH_REASONS = ("new", "rotation", "backfill", "refresh")


@dataclass(frozen=True, slots=True)
class Refresh:
    """A company's per-symbol requests in this run, and why."""

    datasets: tuple[str, ...]
    periods: tuple[str, ...]
    why: str
    #: Every company dataset and period asked for: the monthly rotation counts it.
    full: bool

    @property
    def reason(self) -> str:
        """`why` in one word: one of REFRESH_REASONS, or "filing" (a filing's, with or without
        the rotation that came due the same night)."""
        return self.why if self.why in REFRESH_REASONS else "filing"


def company_datasets(datasets: Iterable[str]) -> tuple[str, ...]:
    return tuple(d for d in datasets if DATASETS[d].kind in COMPANY_KINDS)


def statement_periods(period: str) -> tuple[str, ...]:
    """The `period` values a statement dataset is asked for: `both` is annual and quarter."""
    return ("annual", "quarter") if period == "both" else (period,)


def every_company(
    symbols: Iterable[str], datasets: Sequence[str], period: str, why: str
) -> dict[str, Refresh]:
    """Every symbol fetched in full (a backfill, `--refresh`), or nobody if no company dataset
    is asked for."""
    wanted = company_datasets(datasets)
    if not wanted:
        return {}
    return dict.fromkeys(symbols, Refresh(wanted, statement_periods(period), why, full=True))


def company_records(manifests: Iterable[Mapping[str, Any]]) -> dict[str, CompanyRecord]:
    """Per symbol, its newest full refresh (the day its run stood on) and newest acceptance, from
    the manifests' `companies`."""
    records: dict[str, CompanyRecord] = {}
    for manifest in manifests:
        if manifest.get("status") not in ("ok", "partial"):
            continue
        as_of = (manifest.get("parameters") or {}).get("as_of")
        day = (
            dt.date.fromisoformat(as_of)
            if as_of
            else dt.datetime.fromisoformat(manifest["started_at"]).astimezone(NEW_YORK).date()
        )
        for symbol, landed in (manifest.get("companies") or {}).items():
            old = records.get(symbol, CompanyRecord())
            accepted = dict(old.accepted)
            for period, when in (landed.get("accepted") or {}).items():
                if when and (newest := dt.datetime.fromisoformat(when)) > accepted.get(
                    period, _EPOCH
                ):
                    accepted[period] = newest
            records[symbol] = CompanyRecord(
                refreshed=max(
                    filter(None, (old.refreshed, day if landed.get("full") else None)), default=None
                ),
                accepted=accepted,
            )
    return records


def filings_window(
    manifests: Iterable[Mapping[str, Any]], today: dt.date, symbols: Iterable[str] = ()
) -> tuple[dt.date, dt.date]:
    """The acceptance days the listing is read for: from a few days before the end of the last
    listing a run for these symbols read (a shard's own, when runners share the lake), so
    late-listed filings are seen, to today."""
    mine = set(symbols)
    ends = [
        dt.date.fromisoformat(m["filings"]["to"])
        for m in manifests
        if m.get("status") in ("ok", "partial")
        and m.get("filings")
        and "rows" in m["filings"]
        and (not mine or not mine.isdisjoint(m.get("symbols", ())))
    ]
    start = (
        max(ends) - dt.timedelta(days=FILINGS_OVERLAP_DAYS)
        if ends
        else today - dt.timedelta(days=FILINGS_FIRST_DAYS)
    )
    # Beyond a full rotation back, every company is refreshed anyway.
    start = max(start, today - dt.timedelta(days=OVERDUE_DAYS))
    return min(start, today), today


def rotation_day(symbol: str, today: dt.date) -> dt.date:
    """The newest day up to `today` that is the symbol's rotation day (one in ROTATION_DAYS,
    by a hash of the symbol, so a universe's refreshes spread evenly over the days)."""
    slot = _shard_of(f"rotation:{symbol}", ROTATION_DAYS)  # salted: not aligned with the shards
    return today - dt.timedelta(days=(today.toordinal() - slot) % ROTATION_DAYS)


def requests_per_company(datasets: Sequence[str], periods: Sequence[str]) -> int:
    return sum(len(periods) if DATASETS[d].kind == "statement" else 1 for d in datasets)


def schedule_companies(
    *,
    symbols: Sequence[str],
    datasets: Sequence[str],
    period: str,
    records: Mapping[str, CompanyRecord],
    filings: Iterable[Filing],
    today: dt.date,
    budget: int,
) -> dict[str, Refresh]:
    """Which companies a catch-up run fetches per symbol, and why, most urgent first:

    1. new (never fully fetched): everything;
    2. a filing (10-Q, 10-K and their kin) accepted after the newest acceptance of its period in
       the lake: the quarterly statements it changes (point-in-time Gold is built on quarters);
    3. rotation overdue (last full refresh OVERDUE_DAYS ago): everything;
    4. within `budget` requests, after all of the above: the annual statements a 10-K changed,
       oldest filing first (the rest waits for the next night, which sees the filing again),
       then the rotation that is due (its day came since its last full refresh), oldest first.

    FMP may list a filing before its statements carry it; the next run sees it again until they do.
    """
    wanted = company_datasets(datasets)
    if not wanted:
        return {}
    periods = statement_periods(period)
    statements = tuple(d for d in wanted if DATASETS[d].kind == "statement")
    full_cost = requests_per_company(wanted, periods)
    new = [s for s in symbols if records.get(s, CompanyRecord()).refreshed is None]
    chosen: dict[str, set[str]] = {}  # symbol -> statement periods to fetch for its filings
    reasons: dict[str, set[str]] = {}
    first_seen: dict[tuple[str, str], dt.datetime] = {}
    universe = set(symbols) - set(new)
    for filing in filings:
        changes = FILING_PERIODS.get(filing.form.upper())
        if filing.symbol not in universe or changes is None or not statements:
            continue
        landed = records[filing.symbol].accepted
        stale = [p for p in changes if p in periods and filing.accepted > landed.get(p, _EPOCH)]
        for p in stale:
            key = (filing.symbol, p)
            first_seen[key] = min(first_seen.get(key, filing.accepted), filing.accepted)
        if stale:
            reasons.setdefault(filing.symbol, set()).add(
                f"{filing.form} accepted {filing.accepted:%Y-%m-%d %H:%M} UTC"
            )
    due = sorted(
        (records[s].refreshed, s)
        for s in symbols
        if s in universe and records[s].refreshed < rotation_day(s, today)  # type: ignore[operator]
    )
    signalled = sorted(first_seen.items(), key=lambda item: item[1])
    per_period = len(statements)
    spent = len(new) * full_cost
    full: set[str] = set()
    # Quarters a filing changed, then companies a month without a refresh: whatever the budget.
    for (symbol, p), _ in signalled:
        if p == "quarter":
            chosen.setdefault(symbol, set()).add(p)
            spent += per_period
    for refreshed, symbol in due:
        if (today - refreshed).days >= OVERDUE_DAYS:  # type: ignore[operator]
            spent += full_cost - per_period * len(chosen.get(symbol, ()))
            full.add(symbol)
    # Then, within the budget: the annual statements a 10-K changed, the rotation that is due.
    for (symbol, p), _ in signalled:
        if p != "quarter" and symbol not in full and spent + per_period <= budget:
            chosen.setdefault(symbol, set()).add(p)
            spent += per_period
    for _, symbol in due:
        extra = full_cost - per_period * len(chosen.get(symbol, ()))
        if symbol not in full and spent + extra <= budget:
            full.add(symbol)
            spent += extra
    plan: dict[str, Refresh] = dict.fromkeys(new, Refresh(wanted, periods, "new", full=True))
    for symbol in sorted(set(chosen) | full):
        filed = "; ".join(sorted(reasons.get(symbol, ())))
        if symbol in full:
            why = f"{filed}; rotation" if filed else "rotation"
            plan[symbol] = Refresh(wanted, periods, why, full=True)
        else:
            fetched = tuple(p for p in periods if p in chosen[symbol])
            plan[symbol] = Refresh(statements, fetched, filed, full=False)
    return dict(sorted(plan.items()))


def _price_windows(sessions: Sequence[dt.date], max_rows: int) -> list[tuple[dt.date, ...]]:
    size = max(1, int(max_rows * WINDOW_FILL))
    return [tuple(sessions[i : i + size]) for i in range(0, len(sessions), size)]


def _statement_limit(period: str, start: dt.date, today: dt.date) -> int:
    """Enough periods to reach back to `start`: FMP answers newest first, counting from today, so
    the limit covers start to today plus late and restated filings. FMP's smallest plan allows 5."""
    days = (today - start).days + 1
    wanted = math.ceil(days / 91) + 4 if period == "quarter" else math.ceil(days / 365) + 2
    return min(1000, max(5, wanted))


def shard_symbols(symbols: Sequence[str], index: int, count: int) -> tuple[str, ...]:
    """The symbols runner `index` of `count` (1-based) takes: each symbol by a hash of its name,
    so every runner agrees without talking, no symbol is taken twice or left out, and adding a
    ticker never moves the others."""
    return tuple(s for s in symbols if _shard_of(s, count) == index - 1)


def _shard_of(symbol: str, count: int) -> int:
    digest = hashlib.sha256(symbol.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def _bulk_prices(
    name: str, source: PricesSource, sessions: Sequence[dt.date], per_symbol: int
) -> Source | None:
    """Whether a price dataset comes from its one-request-per-session endpoint, and why."""
    market = DATASETS[name].market
    if market is None or market.span != "date" or source == "symbol" or not sessions:
        return None
    bulk = len(sessions)
    if source == "bulk":
        return Source(market.endpoint, bulk, "asked for with --prices-source bulk")
    if bulk >= per_symbol:
        return None
    return Source(
        market.endpoint,
        bulk,
        f"auto: {bulk:,} request(s), one per session, instead of {per_symbol:,} per symbol; "
        "per symbol if the plan refuses it",
    )


def plan_run(
    *,
    run_id: str,
    symbols: Sequence[str],
    datasets: Sequence[str],
    start: dt.date,
    end: dt.date,
    period: str = "both",
    max_price_rows: int = PRICE_ROW_CAP,
    today: dt.date | None = None,
    prices_source: PricesSource = "symbol",
    companies: Mapping[str, Refresh] | None = None,
    splits_calendar: bool = False,
) -> Plan:
    """Every request the run will send, in a stable order (dataset, then symbol).

    `companies`: which symbols get per-symbol company requests (statements, profile, splits) and
    why; None: every symbol, everything. `splits_calendar`: the other symbols' splits come from
    FMP's market-wide calendar for the range (per symbol if the plan refuses it).
    """
    sessions = tuple(sessions_between(start, end))
    requests: list[Request] = []
    sources: dict[str, Source] = {}
    if companies is None:
        companies = every_company(symbols, datasets, period, "backfill")

    # One tuple of sessions per window, shared by every symbol's request (5,000 tickers x 1,260
    # sessions would otherwise hold 6 million references).
    windows = _price_windows(sessions, max_price_rows)

    def statement(name: str, symbol: str, p: str) -> Request:
        limit = str(_statement_limit(p, start, max(end, today or end)))
        return Request(name, symbol, (("symbol", symbol), ("period", p), ("limit", limit)))

    for name in datasets:
        dataset = DATASETS[name]
        per_symbol: list[Request] = []
        for symbol in symbols:
            refresh = companies.get(symbol)
            if dataset.kind == "prices":
                for window in windows:
                    params = (("symbol", symbol), ("from", str(window[0])), ("to", str(window[-1])))
                    per_symbol.append(Request(name, symbol, params, window))
            elif refresh is None or name not in refresh.datasets:
                continue
            elif dataset.kind == "statement":
                per_symbol += [statement(name, symbol, p) for p in refresh.periods]
            else:
                per_symbol.append(Request(name, symbol, (("symbol", symbol),)))
        market = dataset.market
        if splits_calendar and market is not None and market.span == "range":
            with_history = {r.symbol for r in per_symbol}
            others = [s for s in symbols if s not in with_history]
            if others:
                span = (("from", str(start - dt.timedelta(days=7))), ("to", str(end)))
                requests += [*per_symbol, Request(name, MARKET, span, market=True)]
                fallback = tuple(Request(name, s, (("symbol", s),)) for s in others)
                why = (
                    f"{len(others):,} symbols' new splits from the calendar in one request; "
                    "their history per symbol if the plan refuses it"
                )
                sources[name] = Source(market.endpoint, 1, why, fallback)
                continue
        bulk = (
            _bulk_prices(name, prices_source, sessions, len(per_symbol))
            if dataset.kind == "prices"
            else None
        )
        if bulk is None:
            requests += per_symbol
            continue
        # Newest session first: the first answer (sent alone) names the symbols the market file
        # leaves out, and a listing newer than the range's start is in the newest file.
        requests += [
            Request(name, MARKET, (("date", str(day)),), market=True) for day in reversed(sessions)
        ]
        fallback = tuple(per_symbol) if prices_source == "auto" else ()
        sources[name] = Source(bulk.endpoint, bulk.requests, bulk.why, fallback)
    return Plan(
        run_id,
        start,
        end,
        sessions,
        tuple(symbols),
        tuple(datasets),
        period,
        tuple(requests),
        sources,
        companies,
    )
