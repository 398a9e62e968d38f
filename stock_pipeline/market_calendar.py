"""NYSE sessions from pandas-market-calendars, with "today" computed in America/New_York."""

from __future__ import annotations

import datetime as dt
import warnings
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pandas_market_calendars as mcal

__all__ = [
    "DEFAULT_CLOSE_BUFFER",
    "EARLIEST_SESSION",
    "EXCHANGE",
    "NEW_YORK",
    "is_session",
    "last_completed_session",
    "recent_sessions",
    "sessions_between",
]

EXCHANGE = "NYSE"
NEW_YORK = ZoneInfo("America/New_York")
#: FMP publishes end-of-day bars some time after the close; before then a session is not "completed".
DEFAULT_CLOSE_BUFFER = dt.timedelta(hours=2)
#: The first day the calendar answers for; earlier dates are refused, not silently moved.
EARLIEST_SESSION = dt.date(1990, 1, 2)
_FIRST = EARLIEST_SESSION


@cache
def _calendar() -> Any:
    return mcal.get_calendar(EXCHANGE)


@cache
def _schedule(year: int) -> pd.DataFrame:
    with warnings.catch_warnings():
        # pandas-market-calendars still calls pandas APIs that newer pandas deprecates; the warning
        # is for its maintainers, not for someone running a backfill.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        schedule: pd.DataFrame = _calendar().schedule(
            start_date=f"{year}-01-01", end_date=f"{year}-12-31"
        )
    return schedule


def _closes(start: dt.date, end: dt.date) -> list[tuple[dt.date, dt.datetime]]:
    out: list[tuple[dt.date, dt.datetime]] = []
    for year in range(start.year, end.year + 1):
        schedule = _schedule(year)
        for label, close in zip(schedule.index, schedule["market_close"], strict=True):
            day = label.date()
            if start <= day <= end:
                out.append((day, close.to_pydatetime()))
    return out


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
