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
from dataclasses import dataclass
from typing import Any

from stock_pipeline.config import PRICE_ROW_CAP
from stock_pipeline.datasets import DATASETS
from stock_pipeline.errors import ConfigError
from stock_pipeline.market_calendar import recent_sessions, sessions_between

__all__ = [
    "Plan",
    "Request",
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


@dataclass(frozen=True, slots=True)
class Request:
    """One FMP request of the plan."""

    dataset: str
    symbol: str
    params: tuple[tuple[str, str], ...]
    #: For price requests: the sessions the window covers (used to split a capped answer).
    window: tuple[dt.date, ...] = ()


@dataclass(frozen=True, slots=True)
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

    def requests_by_dataset(self) -> dict[str, int]:
        counts: dict[str, int] = {name: 0 for name in self.datasets}
        for request in self.requests:
            counts[request.dataset] += 1
        return counts

    def estimated_minutes(self, rate_limit: int) -> float:
        return len(self.requests) / rate_limit


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

    Read from run manifests, oldest first: ok and partial runs count, aborted ones do not. A pair
    that failed with a retryable error in a run has not landed that run's range, so the next
    catch-up fetches it again; a pair FMP refuses for good (a 402) counts as done. Pairs that never
    landed (new tickers) do not hold the catch-up back: backfill them explicitly.
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
    landed = [
        behind.get((d, s), through.get((d, s)))
        for d in price
        for s in symbols
        if (d, s) in behind or (d, s) in through
    ]
    return min((day for day in landed if day is not None), default=None)


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
) -> Plan:
    """Every request the run will send, in a stable order (dataset, then symbol)."""
    sessions = tuple(sessions_between(start, end))
    requests: list[Request] = []
    periods = ("annual", "quarter") if period == "both" else (period,)
    for name in datasets:
        dataset = DATASETS[name]
        for symbol in symbols:
            if dataset.kind == "prices":
                for window in _price_windows(sessions, max_price_rows):
                    params = (("symbol", symbol), ("from", str(window[0])), ("to", str(window[-1])))
                    requests.append(Request(name, symbol, params, window))
            elif dataset.kind == "statement":
                for p in periods:
                    limit = str(_statement_limit(p, start, max(end, today or end)))
                    params = (("symbol", symbol), ("period", p), ("limit", limit))
                    requests.append(Request(name, symbol, params))
            else:
                requests.append(Request(name, symbol, (("symbol", symbol),)))
    return Plan(
        run_id, start, end, sessions, tuple(symbols), tuple(datasets), period, tuple(requests)
    )
