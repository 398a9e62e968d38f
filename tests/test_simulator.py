"""The FMP simulator over real HTTP on 127.0.0.1: shapes, invariants, errors, limits and faults."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import aiohttp
import pytest

from stock_pipeline.market_calendar import is_session, sessions_between
from stock_pipeline.simulator import (
    Fault,
    FaultKind,
    FmpSimulator,
    Refusal,
    SimulatorConfig,
    SimulatorThread,
    serve,
)

REPO = Path(__file__).resolve().parents[1]
KEY = "sim-key"
TODAY = date(2025, 3, 14)  # a Friday session
CONFIG = SimulatorConfig(api_key=KEY, today=TODAY)
FULL = "historical-price-eod/full"
ADJUSTED = "historical-price-eod/dividend-adjusted"
INCOME = "income-statement"
BALANCE = "balance-sheet-statement"
CASH_FLOW = "cash-flow-statement"
STATEMENTS = (INCOME, BALANCE, CASH_FLOW)
PRICE_KEYS = [
    "symbol",
    "date",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "change",
    "changePercent",
    "vwap",
]
ADJUSTED_KEYS = ["symbol", "date", "adjOpen", "adjHigh", "adjLow", "adjClose", "volume"]
HEADER_KEYS = [
    "date",
    "symbol",
    "reportedCurrency",
    "cik",
    "filingDate",
    "acceptedDate",
    "fiscalYear",
    "period",
]
PROFILE_KEYS = [
    "symbol",
    "price",
    "marketCap",
    "beta",
    "lastDividend",
    "range",
    "change",
    "changePercentage",
    "volume",
    "averageVolume",
    "companyName",
    "currency",
    "cik",
    "isin",
    "cusip",
    "exchangeFullName",
    "exchange",
    "industry",
    "website",
    "description",
    "ceo",
    "sector",
    "country",
    "fullTimeEmployees",
    "phone",
    "address",
    "city",
    "state",
    "zip",
    "image",
    "ipoDate",
    "defaultImage",
    "isEtf",
    "isActivelyTrading",
    "isAdr",
    "isFund",
]
INVALID_KEY = (
    "Invalid API KEY. Feel free to create a Free API Key or visit "
    "https://site.financialmodelingprep.com/faqs?search=why-is-my-api-key-invalid "
    "for more information."
)
PREMIUM_SYMBOL = (
    "Premium Query Parameter: 'Special Endpoint : This value set for 'symbol' is not available "
    "under your current subscription please visit our subscription page to upgrade your plan at "
    "https://site.financialmodelingprep.com/developer/docs/pricing'"
)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Api:
    """A thin client: real aiohttp requests to the running simulator."""

    url: str
    session: aiohttp.ClientSession
    simulator: FmpSimulator

    async def get(
        self, endpoint: str, *, key: str | None = KEY, path: str | None = None, **params: str
    ) -> Reply:
        query = dict(params)
        if key is not None:
            query["apikey"] = key
        async with self.session.get(
            self.url + (path or f"/stable/{endpoint}"), params=query
        ) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def rows(self, endpoint: str, **params: str) -> list[dict[str, Any]]:
        reply = await self.get(endpoint, **params)
        assert reply.status == 200, reply.text
        rows = reply.json()
        assert isinstance(rows, list)
        return rows


@asynccontextmanager
async def running(config: SimulatorConfig = CONFIG, **kwargs: Any) -> AsyncIterator[Api]:
    simulator = FmpSimulator(config, **kwargs)
    timeout = aiohttp.ClientTimeout(total=10)
    async with serve(simulator) as url, aiohttp.ClientSession(timeout=timeout) as session:
        yield Api(url, session, simulator)


def with_faults(*faults: Fault, symbol: str = "AAPL", **overrides: Any) -> SimulatorConfig:
    return SimulatorConfig(api_key=KEY, today=TODAY, faults={symbol: faults}, **overrides)


# --------------------------------------------------------------------------- auth and routing


async def test_missing_or_wrong_key_gets_401_before_anything_else() -> None:
    async with running() as api:
        for reply in (
            await api.get(FULL, key=None, symbol="AAPL"),
            await api.get(FULL, key="wrong", symbol="AAPL"),
            await api.get("", key="wrong", path="/api/v3/profile/AAPL"),
            await api.get("nope", key=None),
        ):
            assert reply.status == 401
            assert reply.json() == {"Error Message": INVALID_KEY}
        assert all("apikey" not in r.params for r in api.simulator.requests)
        assert api.simulator.status_counts() == {401: 4}


async def test_legacy_paths_get_403() -> None:
    async with running() as api:
        for path in ("/api/v3/historical-price-full/AAPL", "/api/v4/income-statement/AAPL"):
            reply = await api.get("", path=path)
            assert reply.status == 403
            assert reply.json()["Error Message"].startswith("Legacy Endpoint : ")


async def test_unknown_endpoint_gets_404() -> None:
    async with running() as api:
        for reply in (
            await api.get("no-such-endpoint", symbol="AAPL"),
            await api.get("", path="/"),
        ):
            assert reply.status == 404
            assert "Error Message" in reply.json()


async def test_symbol_rules() -> None:
    config = SimulatorConfig(
        api_key=KEY,
        today=TODAY,
        unknown_symbols=frozenset({"ZZZZ"}),
        plan_gated_symbols=frozenset({"TSLA"}),
    )
    async with running(config) as api:
        assert await api.rows(FULL, symbol="AAPL,MSFT") == []
        assert await api.rows(INCOME, symbol="ZZZZ") == []
        assert await api.rows("profile", symbol="ZZZZ") == []
        missing = await api.get(FULL)
        assert missing.status == 400
        assert "symbol" in missing.json()["Error Message"]
        gated = await api.get(FULL, symbol="TSLA")
        assert gated.status == 402
        assert gated.headers["Content-Type"] == "application/json; charset=utf-8"
        assert gated.text == PREMIUM_SYMBOL
        with pytest.raises(json.JSONDecodeError):
            gated.json()


async def test_gated_endpoint_gets_402_plain_text() -> None:
    async with running(
        SimulatorConfig(api_key=KEY, today=TODAY, gated_endpoints=frozenset({ADJUSTED}))
    ) as api:
        reply = await api.get(ADJUSTED, symbol="AAPL")
        assert reply.status == 402
        assert reply.text.startswith(
            "Restricted Endpoint: This endpoint is not available under your current subscription"
        )
        assert (await api.get(FULL, symbol="AAPL")).status == 200


async def test_splits_are_sessions_newest_first_and_the_same_every_time() -> None:
    async with running(SimulatorConfig(api_key=KEY, today=TODAY)) as api:
        first = await api.rows("splits", symbol="BA")
        again = await api.rows("splits", symbol="BA")
        none = await api.rows("splits", symbol="MSFT")
    assert first == again
    assert none == []
    assert [(r["numerator"], r["denominator"]) for r in first] == [(4, 1), (3, 2)]
    days = [date.fromisoformat(r["date"]) for r in first]
    assert days == sorted(days, reverse=True)
    assert all(is_session(day) for day in days)


async def test_refusals_come_in_the_configured_wording_status_and_form() -> None:
    config = SimulatorConfig(
        api_key=KEY,
        today=TODAY,
        plan_gated_symbols=frozenset({"AMZN"}),
        symbol_refusal=Refusal(text="Premium Query Parameter: '{symbol}' is not available"),
        gated_endpoints=frozenset({ADJUSTED}),
        endpoint_refusal=Refusal(
            text="Exclusive Endpoint : not in your plan", status=403, as_json=True
        ),
    )
    async with running(config) as api:
        symbol = await api.get(FULL, symbol="AMZN")
        assert (symbol.status, symbol.text) == (
            402,
            "Premium Query Parameter: 'AMZN' is not available",
        )
        endpoint = await api.get(ADJUSTED, symbol="MSFT")
        assert endpoint.status == 403
        assert endpoint.json() == {"Error Message": "Exclusive Endpoint : not in your plan"}
        assert (await api.get(FULL, symbol="MSFT")).status == 200


# --------------------------------------------------------------------------- prices


def assert_price_row(row: dict[str, Any]) -> None:
    assert list(row) == PRICE_KEYS
    o, h, lo, c = row["open"], row["high"], row["low"], row["close"]
    assert all(isinstance(v, float) for v in (o, h, lo, c, row["change"], row["vwap"]))
    assert isinstance(row["volume"], int)
    assert row["volume"] > 0
    assert 0 < lo <= min(o, c) <= max(o, c) <= h
    assert all(round(v, 2) == v for v in (o, h, lo, c))
    assert row["change"] == round(c - o, 2)
    assert row["changePercent"] == pytest.approx(row["change"] / o * 100, abs=1e-5)
    assert row["vwap"] == pytest.approx((o + h + lo + c) / 4, abs=1e-4)


async def test_price_rows_are_consistent_sessions_newest_first() -> None:
    async with running() as api:
        rows = await api.rows(FULL, symbol="AAPL", **{"from": "2024-01-01", "to": "2024-12-31"})
    expected = [d.isoformat() for d in sessions_between(date(2024, 1, 1), date(2024, 12, 31))]
    assert [row["date"] for row in rows] == expected[::-1]
    assert {row["symbol"] for row in rows} == {"AAPL"}
    for row in rows:
        assert_price_row(row)
    closes = [row["close"] for row in rows]
    moves = [abs(a / b - 1) for a, b in pairwise(closes)]
    assert 0.005 < sum(moves) / len(moves) < 0.03


async def test_price_defaults_and_history_bounds() -> None:
    async with running() as api:
        default = await api.rows(FULL, symbol="MSFT")
        everything = await api.rows(FULL, symbol="MSFT", **{"from": "1990-01-01"})
        future = await api.rows(FULL, symbol="MSFT", **{"from": "2025-03-15", "to": "2026-01-01"})
        reversed_range = await api.rows(
            FULL, symbol="MSFT", **{"from": "2024-02-01", "to": "2024-01-01"}
        )
        bad_date = await api.get(FULL, symbol="MSFT", to="14/03/2025")
    assert default[0]["date"] == TODAY.isoformat()
    assert date.fromisoformat(default[-1]["date"]) >= date(2020, 3, 14)
    assert 1250 <= len(default) <= 1260
    assert everything[-1]["date"] == "2015-01-02"
    assert len(everything) == len(sessions_between(date(2015, 1, 2), TODAY))
    assert 20 <= everything[-1]["close"] <= 500 * 1.1
    assert future == reversed_range == []
    assert bad_date.status == 400


async def test_row_cap_keeps_the_newest_rows() -> None:
    async with running(SimulatorConfig(api_key=KEY, today=TODAY, max_price_rows=100)) as api:
        capped = await api.rows(FULL, symbol="AAPL", **{"from": "2015-01-01"})
    async with running() as api:
        whole = await api.rows(FULL, symbol="AAPL", **{"from": "2015-01-01"})
    assert len(capped) == 100
    assert capped == whole[:100]


async def test_dividend_adjusted_rows() -> None:
    async with running() as api:
        adjusted = await api.rows(ADJUSTED, symbol="KO", **{"from": "2015-01-01"})
        plain = await api.rows(FULL, symbol="KO", **{"from": "2015-01-01"})
    assert [r["date"] for r in adjusted] == [r["date"] for r in plain]
    ratios = []
    for adj, row in zip(adjusted, plain, strict=True):
        assert list(adj) == ADJUSTED_KEYS
        assert adj["volume"] == row["volume"]
        assert 0 < adj["adjLow"] <= min(adj["adjOpen"], adj["adjClose"])
        assert max(adj["adjOpen"], adj["adjClose"]) <= adj["adjHigh"]
        ratios.append(adj["adjClose"] / row["close"])
    assert ratios[0] == 1.0
    assert all(0.5 < r <= 1.0 + 1e-3 for r in ratios)
    assert ratios[-1] < ratios[0]


async def test_history_does_not_shift_as_days_pass() -> None:
    later = SimulatorConfig(api_key=KEY, today=TODAY + timedelta(days=30))
    window = {"symbol": "NVDA", "from": "2016-01-01", "to": "2025-01-31"}
    async with running() as api:
        before = await api.rows(FULL, **window)
    async with running(later) as api:
        after = await api.rows(FULL, **window)
    assert before == after


# --------------------------------------------------------------------------- statements


@pytest.mark.parametrize(("endpoint", "count"), [(INCOME, 39), (BALANCE, 61), (CASH_FLOW, 47)])
async def test_statement_shape(endpoint: str, count: int) -> None:
    async with running() as api:
        rows = await api.rows(endpoint, symbol="AAPL")
    assert len(rows) == 5
    assert [row["fiscalYear"] for row in rows] == ["2024", "2023", "2022", "2021", "2020"]
    for row in rows:
        assert len(row) == count
        assert list(row)[:8] == HEADER_KEYS
        assert row["period"] == "FY"
        assert row["date"] == f"{row['fiscalYear']}-12-31"
        assert row["reportedCurrency"] == "USD"
        assert isinstance(row["cik"], str)
        assert len(row["cik"]) == 10
        assert row["cik"].isdigit()
        filed = date.fromisoformat(row["filingDate"])
        assert 25 <= (filed - date.fromisoformat(row["date"])).days <= 40
        assert filed <= TODAY
        accepted = datetime.strptime(row["acceptedDate"], "%Y-%m-%d %H:%M:%S")
        assert (filed - accepted.date()).days in (0, 1)
        for name, value in list(row.items())[8:]:
            expected = float if name in ("eps", "epsDiluted") else int
            assert type(value) is expected, name


async def test_quarterly_statements_and_limits() -> None:
    async with running() as api:
        quarters = await api.rows(INCOME, symbol="AAPL", period="quarter", limit="8")
        q2_only = await api.rows(INCOME, symbol="AAPL", period="Q2", limit="3")
        everything = await api.rows(BALANCE, symbol="AAPL", period="quarter", limit="5000")
        bad_period = await api.get(INCOME, symbol="AAPL", period="monthly")
    assert [(r["fiscalYear"], r["period"]) for r in quarters] == [
        ("2024", "Q4"),
        ("2024", "Q3"),
        ("2024", "Q2"),
        ("2024", "Q1"),
        ("2023", "Q4"),
        ("2023", "Q3"),
        ("2023", "Q2"),
        ("2023", "Q1"),
    ]
    assert [r["date"][5:] for r in quarters[:4]] == ["12-31", "09-30", "06-30", "03-31"]
    assert [(r["fiscalYear"], r["period"]) for r in q2_only] == [
        ("2024", "Q2"),
        ("2023", "Q2"),
        ("2022", "Q2"),
    ]
    assert 40 < len(everything) <= 1000
    assert everything[-1]["date"] == "2005-03-31"
    assert bad_period.status == 400


async def test_statements_hold_together() -> None:
    async with running() as api:
        income = await api.rows(INCOME, symbol="AAPL", limit="3")
        balance = await api.rows(BALANCE, symbol="AAPL", limit="3")
        cash = await api.rows(CASH_FLOW, symbol="AAPL", limit="3")
        quarters = await api.rows(INCOME, symbol="AAPL", period="quarter", limit="4")
    for inc, bal, cf in zip(income, balance, cash, strict=True):
        assert inc["date"] == bal["date"] == cf["date"]
        assert inc["filingDate"] == bal["filingDate"] == cf["filingDate"]
        assert inc["grossProfit"] == inc["revenue"] - inc["costOfRevenue"]
        assert inc["netIncome"] == cf["netIncome"] == inc["bottomLineNetIncome"]
        assert inc["revenue"] > 0
        assert cf["freeCashFlow"] == cf["operatingCashFlow"] + cf["capitalExpenditure"]
        assert cf["cashAtEndOfPeriod"] == cf["cashAtBeginningOfPeriod"] + cf["netChangeInCash"]
        assert cf["cashAtEndOfPeriod"] == bal["cashAndCashEquivalents"]
        assert bal["totalAssets"] == bal["totalLiabilitiesAndTotalEquity"]
        assert bal["totalAssets"] == bal["totalCurrentAssets"] + bal["totalNonCurrentAssets"]
        assert bal["totalAssets"] == bal["totalLiabilities"] + bal["totalEquity"]
        assert bal["netDebt"] == bal["totalDebt"] - bal["cashAndCashEquivalents"]
    assert income[0]["revenue"] == sum(q["revenue"] for q in quarters)
    assert income[0]["netIncome"] == sum(q["netIncome"] for q in quarters)
    assert cash[1]["cashAtEndOfPeriod"] == cash[0]["cashAtBeginningOfPeriod"]


async def test_only_filed_periods_are_served() -> None:
    early = SimulatorConfig(api_key=KEY, today=date(2025, 1, 15))
    async with running(early) as api:
        annual = await api.rows(INCOME, symbol="AAPL", limit="1")
        quarter = await api.rows(INCOME, symbol="AAPL", period="quarter", limit="1")
    assert (annual[0]["fiscalYear"], annual[0]["period"]) == ("2023", "FY")
    assert (quarter[0]["fiscalYear"], quarter[0]["period"]) == ("2024", "Q3")


async def test_statement_limit_beyond_the_plan_gets_402() -> None:
    async with running(SimulatorConfig(api_key=KEY, today=TODAY, max_statement_limit=5)) as api:
        refused = await api.get(CASH_FLOW, symbol="AAPL", limit="10")
        allowed = await api.rows(CASH_FLOW, symbol="AAPL", limit="5")
        not_a_number = await api.get(CASH_FLOW, symbol="AAPL", limit="ten")
    assert refused.status == 402
    assert refused.text == "Premium Query Parameter: The values for 'limit' must be between 0 and 5"
    assert len(allowed) == 5
    assert not_a_number.status == 400


# --------------------------------------------------------------------------- profile


async def test_profile_shape() -> None:
    async with running() as api:
        profile = await api.rows("profile", symbol="BRK-B")
        latest = await api.rows(FULL, symbol="BRK-B", **{"from": "2025-03-14"})
    assert len(profile) == 1
    row = profile[0]
    assert list(row) == PROFILE_KEYS
    assert row["symbol"] == "BRK-B"
    assert row["price"] == latest[0]["close"]
    assert row["volume"] == latest[0]["volume"]
    assert isinstance(row["fullTimeEmployees"], str)
    assert row["fullTimeEmployees"].isdigit()
    assert isinstance(row["marketCap"], int)
    assert row["marketCap"] > 0
    assert row["isin"] == f"US{row['cusip']}" + row["isin"][-1]
    assert all(isinstance(row[k], bool) for k in ("defaultImage", "isEtf", "isAdr", "isFund"))
    low, high = (float(part) for part in row["range"].split("-"))
    assert low <= row["price"] <= high


# --------------------------------------------------------------------------- rate limit


async def test_rate_limit_refuses_the_fourth_quick_request() -> None:
    config = SimulatorConfig(api_key=KEY, today=TODAY, rate_limit=3, window_seconds=0.5)
    async with running(config) as api:
        replies = [await api.get("profile", symbol="AAPL") for _ in range(4)]
    assert [r.status for r in replies] == [200, 200, 200, 429]
    assert "Retry-After" not in replies[3].headers
    assert replies[3].json()["Error Message"].startswith("Limit Reach . Please upgrade your plan")
    assert api.simulator.status_counts() == {200: 3, 429: 1}


async def test_rate_limit_window_slides_and_ignores_refusals() -> None:
    now = [0.0]
    config = SimulatorConfig(api_key=KEY, today=TODAY, rate_limit=3, window_seconds=1.0)
    statuses = []
    async with running(config, clock=lambda: now[0]) as api:
        for at in (0.0, 0.1, 0.2, 0.3, 0.9, 1.01, 1.05, 1.11, 1.21):
            now[0] = at
            statuses.append((await api.get("profile", symbol="AAPL")).status)
    # 0.3 and 0.9 are refused and not counted; 1.01 fits once 0.0 has left the window.
    assert statuses == [200, 200, 200, 429, 429, 200, 429, 200, 200]
    assert [r.at for r in api.simulator.requests][:3] == [0.0, 0.1, 0.2]


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "status", "marker"),
    [
        ("server_error", 503, "<html>"),
        ("limit_reach_200", 200, "Limit Reach"),
        ("limit_reach_402", 402, "Limit Reach"),
        ("error_in_200", 200, "An unexpected error occurred"),
        ("not_json", 200, "<html>"),
    ],
)
async def test_response_faults_apply_the_given_number_of_times(
    kind: FaultKind, status: int, marker: str
) -> None:
    async with running(with_faults(Fault(kind=kind, times=2))) as api:
        first = await api.get(FULL, symbol="AAPL")
        second = await api.get(INCOME, symbol="AAPL")
        third = await api.get(FULL, symbol="AAPL")
        other = await api.get(FULL, symbol="MSFT")
    for reply in (first, second):
        assert reply.status == status
        assert marker in reply.text
    if kind == "not_json":
        assert first.headers["Content-Type"].startswith("application/json")
    if kind.startswith("limit_reach") or kind == "error_in_200":
        assert isinstance(first.json(), dict)
    assert (third.status, other.status) == (200, 200)
    assert isinstance(third.json(), list)


async def test_truncated_body_is_a_well_formed_response_with_broken_json() -> None:
    async with running(with_faults(Fault(kind="truncated", times=1))) as api:
        broken = await api.get(FULL, symbol="AAPL")
        whole = await api.get(FULL, symbol="AAPL")
    assert broken.status == 200
    assert int(broken.headers["Content-Length"]) == len(broken.body)
    assert whole.body.startswith(broken.body)
    assert 0 < len(broken.body) < len(whole.body)
    with pytest.raises(json.JSONDecodeError):
        broken.json()


async def test_drop_connection_closes_without_answering() -> None:
    # aiohttp's client resends an idempotent request once on a dropped connection, so it takes
    # two drops in a row for the caller to see one.
    async with running(with_faults(Fault(kind="drop_connection", times=2))) as api:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.get(FULL, symbol="AAPL")
        assert (await api.get(FULL, symbol="AAPL")).status == 200
    assert [r.status for r in api.simulator.requests] == [0, 0, 200]


async def test_slow_answers_late() -> None:
    async with running(with_faults(Fault(kind="slow", times=1, delay=60.0))) as api:
        short = aiohttp.ClientTimeout(total=0.2)
        with pytest.raises(asyncio.TimeoutError):
            async with api.session.get(
                f"{api.url}/stable/profile", params={"symbol": "AAPL", "apikey": KEY}, timeout=short
            ):
                pass
        assert (await api.get("profile", symbol="AAPL")).status == 200


async def test_duplicates_repeat_exact_rows() -> None:
    async with running(with_faults(Fault(kind="duplicates", times=2))) as api:
        doubled = await api.rows(FULL, symbol="AAPL")
        statements = await api.rows(INCOME, symbol="AAPL")
        clean = await api.rows(FULL, symbol="AAPL")
    assert len(doubled) > len(clean)
    assert {json.dumps(r) for r in doubled} == {json.dumps(r) for r in clean}
    assert len(statements) > 5
    assert Counter(r["date"] for r in statements).most_common(1)[0][1] == 2


async def test_numbers_as_strings() -> None:
    async with running(with_faults(Fault(kind="numbers_as_strings"))) as api:
        prices = await api.rows(FULL, symbol="AAPL", **{"from": "2025-03-01"})
        income = await api.rows(INCOME, symbol="AAPL", limit="1")
        profile = await api.rows("profile", symbol="AAPL")
    async with running() as api:
        clean = await api.rows(FULL, symbol="AAPL", **{"from": "2025-03-01"})
    assert prices[0]["open"] == str(clean[0]["open"])
    assert prices[0]["volume"] == str(clean[0]["volume"])
    for row in (*prices, *income):
        assert all(isinstance(value, str) for value in row.values())
    assert float(income[0]["eps"]) == pytest.approx(float(income[0]["eps"]))
    assert profile[0]["isEtf"] is False


async def test_bad_rows_break_prices_only() -> None:
    async with running(with_faults(Fault(kind="bad_rows", times=1))) as api:
        statements = await api.rows(INCOME, symbol="AAPL")
        prices = await api.rows(FULL, symbol="AAPL")
        again = await api.rows(FULL, symbol="AAPL")
    async with running() as api:
        clean_statements = await api.rows(INCOME, symbol="AAPL")
    assert statements == clean_statements
    assert sum(r["low"] > r["open"] for r in prices) == 1
    assert sum(r["volume"] < 0 for r in prices) == 1
    for row in again:
        assert_price_row(row)


async def test_extra_field_and_fast_path_agree() -> None:
    async with running(with_faults(Fault(kind="extra_field", endpoint=ADJUSTED))) as api:
        extended = await api.rows(ADJUSTED, symbol="AAPL")
        plain = await api.rows(ADJUSTED, symbol="MSFT")
        same_symbol = await api.rows(FULL, symbol="AAPL")
    assert all(row.pop("newMetric") == 1.5 for row in extended)
    assert "newMetric" not in plain[0]
    assert "newMetric" not in same_symbol[0]
    async with running() as api:
        # Served by the fast serializer: the same rows as the dict path above.
        assert await api.rows(ADJUSTED, symbol="AAPL") == extended


async def test_duplicate_statement_adds_a_restated_newest_period() -> None:
    fault = Fault(kind="duplicate_statement", times=1, endpoint=INCOME)
    async with running(with_faults(fault)) as api:
        rows = await api.rows(INCOME, symbol="AAPL")
        clean = await api.rows(INCOME, symbol="AAPL")
    assert len(rows) == len(clean) + 1
    original, restated = rows[0], rows[1]
    assert (original["date"], original["period"]) == (restated["date"], restated["period"])
    assert restated["acceptedDate"] > original["acceptedDate"]
    assert restated["revenue"] != original["revenue"]
    assert isinstance(restated["revenue"], int)
    assert rows[:1] + rows[2:] == clean


async def test_fault_budgets_are_per_symbol_and_endpoint() -> None:
    config = SimulatorConfig(
        api_key=KEY,
        today=TODAY,
        faults={
            "*": (Fault(kind="server_error", times=1, endpoint="profile"),),
            "AAPL": (Fault(kind="not_json", times=1), Fault(kind="error_in_200", times=1)),
        },
    )
    async with running(config) as api:
        aapl = [(await api.get("profile", symbol="AAPL")) for _ in range(4)]
        msft = [(await api.get("profile", symbol="MSFT")).status for _ in range(2)]
        prices = (await api.get(FULL, symbol="IBM")).status
    # One response fault per request, in order: symbol faults first, then "*".
    assert [r.status for r in aapl] == [200, 200, 503, 200]
    assert "<html>" in aapl[0].text
    assert "unexpected" in aapl[1].text
    assert isinstance(aapl[3].json(), list)
    assert msft == [503, 200]
    assert prices == 200


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="fault kind"):
        Fault(kind="meltdown")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        Fault(kind="slow", times=-1)
    with pytest.raises(ValueError, match="window"):
        SimulatorConfig(window_seconds=0)


# --------------------------------------------------------------------------- bookkeeping


async def test_requests_are_recorded_in_order_without_the_key() -> None:
    async with running() as api:
        await api.get(FULL, symbol="AAPL", **{"from": "2025-01-02"})
        await api.get(INCOME, symbol="AAPL", period="quarter")
        await api.get("", path="/api/v3/profile/AAPL")
    recorded = api.simulator.requests
    assert [(r.endpoint, r.params, r.status) for r in recorded] == [
        (FULL, {"symbol": "AAPL", "from": "2025-01-02"}, 200),
        (INCOME, {"symbol": "AAPL", "period": "quarter"}, 200),
        ("/api/v3/profile/AAPL", {}, 403),
    ]
    assert recorded[0].at <= recorded[1].at <= recorded[2].at


async def test_same_symbol_same_data_across_simulators() -> None:
    async with running() as api:
        first = (
            (await api.get(FULL, symbol="AAPL")).body,
            (await api.get(INCOME, symbol="AAPL")).body,
        )
        other = (await api.get(FULL, symbol="MSFT")).body
    async with running() as api:
        again = (
            (await api.get(FULL, symbol="AAPL")).body,
            (await api.get(INCOME, symbol="AAPL")).body,
        )
    assert first == again
    assert other != first[0]


def test_data_does_not_depend_on_the_hash_seed() -> None:
    # Another process with another PYTHONHASHSEED must generate the same bytes.
    config = SimulatorConfig(api_key=KEY, today=TODAY, history_start=date(2025, 1, 2))
    script = (
        "import datetime as d, sys; from stock_pipeline import simulator as s; "
        "c = s.SimulatorConfig(today=d.date(2025, 3, 14), history_start=d.date(2025, 1, 2)); "
        "sys.stdout.write(s.FmpSimulator(c)._body('AAPL', s.PRICE_ENDPOINT, {}, frozenset()).hex()"
        " + ' ' + s.FmpSimulator(c)._body('AAPL', s.INCOME_ENDPOINT, {}, frozenset()).hex())"
    )
    here = FmpSimulator(config)
    expected = " ".join(
        here._body("AAPL", endpoint, {}, frozenset()).hex() for endpoint in (FULL, INCOME)
    )
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout == expected


def test_simulator_thread_serves_synchronous_callers() -> None:
    with SimulatorThread(CONFIG) as sim:
        assert sim.url.startswith("http://127.0.0.1:")
        url = f"{sim.url}/stable/profile?symbol=AAPL&apikey={KEY}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert json.load(response)[0]["symbol"] == "AAPL"
        with pytest.raises(HTTPError) as refused:
            urllib.request.urlopen(f"{sim.url}/stable/profile?symbol=AAPL", timeout=10)
        refused.value.close()
        assert refused.value.code == 401
    assert sim.simulator.status_counts() == {200: 1, 401: 1}
    assert not sim._thread.is_alive()
