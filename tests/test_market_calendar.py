"""market_calendar.py: the real NYSE calendar, with "now" read in America/New_York."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stock_pipeline import market_calendar
from stock_pipeline.market_calendar import (
    DEFAULT_CLOSE_BUFFER,
    NEW_YORK,
    is_session,
    last_completed_session,
    recent_sessions,
    sessions_between,
)

UTC = dt.UTC
THANKSGIVING = dt.date(2026, 11, 26)
BLACK_FRIDAY = dt.date(2026, 11, 27)  # early close, 13:00 New York


def ny(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=NEW_YORK)


def test_the_default_buffer_is_two_hours() -> None:
    assert dt.timedelta(hours=2) == DEFAULT_CLOSE_BUFFER


def test_thanksgiving_is_not_a_session() -> None:
    assert not is_session(THANKSGIVING)
    assert is_session(BLACK_FRIDAY)
    assert is_session(dt.date(2026, 11, 25))


@pytest.mark.parametrize(
    "day",
    [
        dt.date(2026, 11, 28),  # Saturday
        dt.date(2026, 11, 29),  # Sunday
        dt.date(2026, 1, 1),  # New Year's Day
        dt.date(2026, 12, 25),  # Christmas
        dt.date(2026, 4, 3),  # Good Friday
    ],
)
def test_weekends_and_holidays_are_not_sessions(day: dt.date) -> None:
    assert not is_session(day)


def test_after_an_early_close_plus_buffer_that_day_is_complete() -> None:
    assert last_completed_session(ny(2026, 11, 27, 15, 30)) == BLACK_FRIDAY
    assert last_completed_session(ny(2026, 11, 27, 15, 0)) == BLACK_FRIDAY


def test_before_an_early_close_plus_buffer_the_day_before_thanksgiving_is_last() -> None:
    assert last_completed_session(ny(2026, 11, 27, 14, 30)) == dt.date(2026, 11, 25)
    assert last_completed_session(ny(2026, 11, 27, 14, 59, 59)) == dt.date(2026, 11, 25)


def test_on_thanksgiving_itself_the_last_session_is_the_day_before() -> None:
    assert last_completed_session(ny(2026, 11, 26, 23, 0)) == dt.date(2026, 11, 25)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (ny(2026, 11, 24, 9, 0), dt.date(2026, 11, 23)),  # before the open
        (ny(2026, 11, 24, 16, 0), dt.date(2026, 11, 23)),  # at the close
        (ny(2026, 11, 24, 17, 59, 59), dt.date(2026, 11, 23)),  # buffer not yet over
        (ny(2026, 11, 24, 18, 0), dt.date(2026, 11, 24)),  # close + 2 h
        (ny(2026, 11, 24, 23, 59), dt.date(2026, 11, 24)),
    ],
)
def test_a_normal_day_completes_two_hours_after_the_close(
    now: dt.datetime, expected: dt.date
) -> None:
    assert last_completed_session(now) == expected


def test_the_buffer_can_be_changed() -> None:
    now = ny(2026, 11, 24, 16, 0)
    assert last_completed_session(now, close_buffer=dt.timedelta(0)) == dt.date(2026, 11, 24)
    late = ny(2026, 11, 24, 20, 0)
    assert last_completed_session(late, close_buffer=dt.timedelta(hours=5)) == dt.date(2026, 11, 23)


@pytest.mark.parametrize(
    "now",
    [
        ny(2026, 11, 28, 12, 0),  # Saturday
        ny(2026, 11, 29, 23, 0),  # Sunday night
        ny(2026, 11, 30, 9, 30),  # Monday at the open
    ],
)
def test_over_a_weekend_the_last_session_is_friday(now: dt.datetime) -> None:
    assert last_completed_session(now) == BLACK_FRIDAY


def test_naive_datetimes_raise() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        last_completed_session(dt.datetime(2026, 11, 27, 15, 30))


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        # Winter (EST): close 16:00 = 21:00 UTC, complete from 23:00 UTC.
        (dt.datetime(2026, 3, 6, 22, 59, tzinfo=UTC), dt.date(2026, 3, 5)),
        (dt.datetime(2026, 3, 6, 23, 0, tzinfo=UTC), dt.date(2026, 3, 6)),
        # The first Monday of EDT (DST began 2026-03-08): close 16:00 = 20:00 UTC, complete at 22:00.
        (dt.datetime(2026, 3, 9, 21, 59, tzinfo=UTC), dt.date(2026, 3, 6)),
        (dt.datetime(2026, 3, 9, 22, 0, tzinfo=UTC), dt.date(2026, 3, 9)),
        # The first Monday of EST again (DST ended 2026-11-01).
        (dt.datetime(2026, 11, 2, 22, 30, tzinfo=UTC), dt.date(2026, 10, 30)),
        (dt.datetime(2026, 11, 2, 23, 0, tzinfo=UTC), dt.date(2026, 11, 2)),
        # Already the next day in UTC, still the evening before in New York.
        (dt.datetime(2026, 11, 24, 3, 0, tzinfo=UTC), dt.date(2026, 11, 23)),
        (dt.datetime(2026, 7, 7, 2, 0, tzinfo=UTC), dt.date(2026, 7, 6)),
    ],
)
def test_utc_and_new_york_give_the_same_answer(utc: dt.datetime, expected: dt.date) -> None:
    assert last_completed_session(utc) == expected
    assert last_completed_session(utc.astimezone(NEW_YORK)) == expected
    tokyo = dt.timezone(dt.timedelta(hours=9))
    assert last_completed_session(utc.astimezone(tokyo)) == expected


def test_recent_sessions_end_at_end_oldest_first() -> None:
    assert recent_sessions(BLACK_FRIDAY, 5) == [
        dt.date(2026, 11, 20),
        dt.date(2026, 11, 23),
        dt.date(2026, 11, 24),
        dt.date(2026, 11, 25),
        BLACK_FRIDAY,
    ]


def test_recent_sessions_ending_on_a_weekend_end_at_the_session_before() -> None:
    assert recent_sessions(dt.date(2026, 11, 29), 2) == [dt.date(2026, 11, 25), BLACK_FRIDAY]


def test_recent_sessions_reject_a_count_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        recent_sessions(BLACK_FRIDAY, 0)


def test_1260_sessions_span_about_five_years() -> None:
    sessions = recent_sessions(BLACK_FRIDAY, 1260)
    assert len(sessions) == 1260
    assert len(set(sessions)) == 1260
    assert sessions == sorted(sessions)
    assert sessions[-1] == BLACK_FRIDAY
    years = (sessions[-1] - sessions[0]).days / 365.25
    assert 4.9 < years < 5.1
    assert sessions == sessions_between(sessions[0], BLACK_FRIDAY)


def test_sessions_between_is_inclusive_and_skips_closed_days() -> None:
    assert sessions_between(dt.date(2026, 11, 25), dt.date(2026, 11, 30)) == [
        dt.date(2026, 11, 25),
        BLACK_FRIDAY,
        dt.date(2026, 11, 30),
    ]


def test_sessions_between_spans_years() -> None:
    sessions = sessions_between(dt.date(2025, 12, 30), dt.date(2026, 1, 5))
    assert sessions == [
        dt.date(2025, 12, 30),
        dt.date(2025, 12, 31),
        dt.date(2026, 1, 2),
        dt.date(2026, 1, 5),
    ]


def test_sessions_between_with_end_before_start_is_empty() -> None:
    assert sessions_between(dt.date(2026, 11, 27), dt.date(2026, 11, 20)) == []


def test_a_full_year_has_about_252_sessions() -> None:
    assert 248 <= len(sessions_between(dt.date(2025, 1, 1), dt.date(2025, 12, 31))) <= 254


@pytest.fixture
def calendar_cache(tmp_path: Path) -> Iterator[Path]:
    """A cache folder, with the in-process memory of computed years emptied before and after."""
    market_calendar._year.cache_clear()
    market_calendar.use_cache_dir(tmp_path / "calendar")
    yield tmp_path / "calendar"
    market_calendar._year.cache_clear()


def _cached_year(cache: Path, year: int) -> Path:
    (path,) = cache.glob(f"nyse-pandas-market-calendars-*/{year}.json")
    return path


def test_a_cached_year_equals_the_calendar_it_came_from(calendar_cache: Path) -> None:
    computed = market_calendar._compute_year(2024)
    assert sessions_between(dt.date(2024, 1, 1), dt.date(2024, 12, 31)) == [d for d, _ in computed]
    stored = json.loads(_cached_year(calendar_cache, 2024).read_text())["sessions"]
    assert len(stored) == 252
    market_calendar._year.cache_clear()  # as a new process would: read the file back
    assert market_calendar._year(2024) == computed
    # 2024-07-03 closed early, at 13:00 in New York.
    closes = dict(market_calendar._year(2024))
    assert closes[dt.date(2024, 7, 3)] == dt.datetime(2024, 7, 3, 13, tzinfo=NEW_YORK)


@pytest.mark.parametrize(
    "damage",
    ["{not json", '{"sessions": []}', '{"sessions": [["2023-01-03", "2023-01-03T21:00:00"]]}'],
)
def test_a_damaged_cache_file_is_computed_again(calendar_cache: Path, damage: str) -> None:
    sessions_between(dt.date(2024, 1, 1), dt.date(2024, 1, 31))
    path = _cached_year(calendar_cache, 2024)
    path.write_text(damage)
    market_calendar._year.cache_clear()
    assert sessions_between(dt.date(2024, 1, 1), dt.date(2024, 1, 5)) == [
        dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4), dt.date(2024, 1, 5)
    ]  # fmt: skip
    assert len(json.loads(path.read_text())["sessions"]) == 252


def test_an_unwritable_cache_folder_only_costs_time(calendar_cache: Path) -> None:
    calendar_cache.write_text("a file where the folder should be")
    assert len(sessions_between(dt.date(2024, 1, 1), dt.date(2024, 12, 31))) == 252


def test_a_warm_cache_answers_without_pandas(calendar_cache: Path) -> None:
    expected = recent_sessions(dt.date(2025, 3, 14), 600)
    script = (
        "import datetime as dt, pathlib, sys\n"
        "from stock_pipeline import market_calendar as m\n"
        f"m.use_cache_dir(pathlib.Path({str(calendar_cache)!r}))\n"
        "days = m.recent_sessions(dt.date(2025, 3, 14), 600)\n"
        "print(days[0], days[-1], len(days), 'pandas' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == [str(expected[0]), str(expected[-1]), "600", "False"]
