"""NYSE sessions from pandas-market-calendars, with "today" computed in America/New_York.

pandas-market-calendars and pandas take most of a second to import, longer than the rest of a dry
run. A year's sessions never change within one release of the calendar, so each year, once computed,
can be kept in a small file (see `use_cache_dir`) named after that release: a new release, which is
how new holidays and closures arrive, computes the year again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import tempfile
import warnings
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "DEFAULT_CLOSE_BUFFER",
    "EARLIEST_SESSION",
    "EXCHANGE",
    "NEW_YORK",
    "is_session",
    "last_completed_session",
    "recent_sessions",
    "sessions_between",
    "use_cache_dir",
]

log = logging.getLogger(__name__)

EXCHANGE = "NYSE"
NEW_YORK = ZoneInfo("America/New_York")
#: FMP publishes end-of-day bars some time after the close; before then a session is not "completed".
DEFAULT_CLOSE_BUFFER = dt.timedelta(hours=2)
#: The first day the calendar answers for; earlier dates are refused, not silently moved.
EARLIEST_SESSION = dt.date(1990, 1, 2)
_FIRST = EARLIEST_SESSION

Closes = tuple[tuple[dt.date, dt.datetime], ...]

_cache_dir: Path | None = None


def use_cache_dir(directory: Path | None) -> None:
    """Keep each computed year's sessions in a file under `directory` (None: in memory only)."""
    global _cache_dir
    _cache_dir = directory


@cache
def _calendar() -> Any:
    import pandas_market_calendars as mcal

    return mcal.get_calendar(EXCHANGE)


def _compute_year(year: int) -> Closes:
    with warnings.catch_warnings():
        # pandas-market-calendars still calls pandas APIs that newer pandas deprecates; the warning
        # is for its maintainers, not for someone running a backfill.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        schedule = _calendar().schedule(start_date=f"{year}-01-01", end_date=f"{year}-12-31")
    return tuple(
        (label.date(), close.to_pydatetime())
        for label, close in zip(schedule.index, schedule["market_close"], strict=True)
    )


def _cache_file(directory: Path, year: int) -> Path:
    release = version("pandas-market-calendars")
    return directory / f"{EXCHANGE.lower()}-pandas-market-calendars-{release}" / f"{year}.json"


def _read_cached(path: Path, year: int) -> Closes | None:
    try:
        rows = json.loads(path.read_text())["sessions"]
        closes = tuple(
            (dt.date.fromisoformat(day), dt.datetime.fromisoformat(close)) for day, close in rows
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.debug("ignoring the unreadable calendar cache %s: %s", path, error)
        return None
    days = [day for day, _ in closes]
    well_formed = (
        bool(closes)
        and all(day.year == year for day in days)
        and days == sorted(set(days))
        and all(close.tzinfo is not None for _, close in closes)
    )
    return closes if well_formed else None


def _write_cached(path: Path, closes: Closes) -> None:
    rows = [[day.isoformat(), close.isoformat()] for day, close in closes]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole, then renamed: a reader never sees half a file.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w") as file:
                json.dump({"sessions": rows}, file)
            os.chmod(temporary, 0o644)  # a cache folder shared between users stays useful
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as error:  # a read-only home is no reason to fail a run
        log.debug("could not cache the calendar in %s: %s", path, error)


@cache
def _year(year: int) -> Closes:
    """The year's sessions with their closes (early closes included), oldest first."""
    if _cache_dir is None:
        return _compute_year(year)
    path = _cache_file(_cache_dir, year)
    closes = _read_cached(path, year)
    if closes is None:
        closes = _compute_year(year)
        _write_cached(path, closes)
    return closes


def _closes(start: dt.date, end: dt.date) -> list[tuple[dt.date, dt.datetime]]:
    return [
        (day, close)
        for year in range(start.year, end.year + 1)
        for day, close in _year(year)
        if start <= day <= end
    ]


def sessions_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every NYSE session from `start` to `end`, both inclusive, oldest first."""
    if end < start:
        return []
    return [day for day, _ in _closes(max(start, _FIRST), end)]


def is_session(day: dt.date) -> bool:
    """Whether the NYSE traded on `day`."""
    return bool(sessions_between(day, day))


def last_completed_session(
    now: dt.datetime, *, close_buffer: dt.timedelta = DEFAULT_CLOSE_BUFFER
) -> dt.date:
    """The newest session whose close (early closes included) plus `close_buffer` is before `now`."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    today_ny = now.astimezone(NEW_YORK).date()
    for day, close in reversed(_closes(today_ny - dt.timedelta(days=14), today_ny)):
        if close + close_buffer <= now:
            return day
    raise ValueError(f"no completed NYSE session in the two weeks before {now.isoformat()}")


def recent_sessions(end: dt.date, count: int) -> list[dt.date]:
    """The `count` most recent sessions ending at `end` (included if it is a session), oldest first."""
    if count < 1:
        raise ValueError("count must be at least 1")
    # 252 sessions a year; 1.6 calendar days per session leaves room for holidays.
    span = dt.timedelta(days=int(count * 1.6) + 10)
    found = sessions_between(end - span, end)
    while len(found) < count and end - span > _FIRST:
        span *= 2
        found = sessions_between(end - span, end)
    return found[-count:]
