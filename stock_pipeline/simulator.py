"""A local HTTP server that answers like FMP's stable API, for the `demo` command and the tests.

Data is generated, deterministic per symbol (seeded from `zlib.crc32`, never `hash`), and shaped
exactly like the payloads in FMP's stable API: field names, order, types, newest-first arrays and the
error bodies (some plain text under a JSON content type). Faults reproduce FMP's known failure modes
so the client's retries and checks can be tested against real HTTP on 127.0.0.1.

    python -m stock_pipeline.simulator --port 8765 --rate-limit 300
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from types import TracebackType
from typing import Any, Final, Literal, get_args

import numpy as np
import numpy.typing as npt
from aiohttp import web

from stock_pipeline.market_calendar import NEW_YORK, sessions_between

__all__ = [
    "Fault",
    "FaultKind",
    "FmpSimulator",
    "RecordedRequest",
    "Refusal",
    "SimulatorConfig",
    "SimulatorThread",
    "main",
    "serve",
]

FaultKind = Literal[
    "server_error",
    "truncated",
    "limit_reach_200",
    "limit_reach_402",
    "drop_connection",
    "slow",
    "error_in_200",
    "not_json",
    "duplicates",
    "numbers_as_strings",
    "bad_rows",
    "extra_field",
    "duplicate_statement",
]
_FAULT_KINDS: Final = frozenset(get_args(FaultKind))
# Faults that decide the whole response; at most one of them applies to a request.
_TERMINAL_FAULTS: Final = frozenset(
    {
        "server_error",
        "truncated",
        "limit_reach_200",
        "limit_reach_402",
        "drop_connection",
        "error_in_200",
        "not_json",
    }
)

# Faults that change the rows themselves.
_ROW_FAULTS: Final = frozenset(
    {"duplicates", "numbers_as_strings", "bad_rows", "extra_field", "duplicate_statement"}
)

JSON_CONTENT_TYPE: Final = "application/json; charset=utf-8"
CSV_CONTENT_TYPE: Final = "text/csv; charset=utf-8"
INVALID_KEY_MESSAGE: Final = (
    "Invalid API KEY. Feel free to create a Free API Key or visit "
    "https://site.financialmodelingprep.com/faqs?search=why-is-my-api-key-invalid "
    "for more information."
)
LIMIT_REACH_MESSAGE: Final = (
    "Limit Reach . Please upgrade your plan or visit our documentation for more details at "
    "https://site.financialmodelingprep.com/developer/docs/pricing "
)
LEGACY_MESSAGE: Final = (
    "Legacy Endpoint : Due to Legacy endpoints being no longer supported - This endpoint is only "
    "available for legacy users who have valid subscriptions prior August 31, 2025. Please visit "
    "our subscription page to upgrade your plan or contact us at "
    "https://site.financialmodelingprep.com/developer/docs/pricing"
)
PREMIUM_SYMBOL_TEXT: Final = (
    "Premium Query Parameter: 'Special Endpoint : This value set for 'symbol' is not available "
    "under your current subscription please visit our subscription page to upgrade your plan at "
    "https://site.financialmodelingprep.com/developer/docs/pricing'"
)
RESTRICTED_ENDPOINT_TEXT: Final = (
    "Restricted Endpoint: This endpoint is not available under your current subscription please "
    "visit our subscription page to upgrade your plan at "
    "https://site.financialmodelingprep.com/developer/docs/pricing"
)
_SERVER_ERROR_HTML: Final = (
    b"<html><head><title>503 Service Temporarily Unavailable</title></head>"
    b"<body><center><h1>503 Service Temporarily Unavailable</h1></center></body></html>"
)
_NOT_JSON_HTML: Final = (
    b"<!DOCTYPE html><html><head><title>Financial Modeling Prep</title></head>"
    b"<body><p>We are performing maintenance. Please try again later.</p></body></html>"
)

PRICE_ENDPOINT: Final = "historical-price-eod/full"
DIVIDEND_ADJUSTED_ENDPOINT: Final = "historical-price-eod/dividend-adjusted"
NON_SPLIT_ADJUSTED_ENDPOINT: Final = "historical-price-eod/non-split-adjusted"
INCOME_ENDPOINT: Final = "income-statement"
BALANCE_ENDPOINT: Final = "balance-sheet-statement"
CASH_FLOW_ENDPOINT: Final = "cash-flow-statement"
PROFILE_ENDPOINT: Final = "profile"
SPLITS_ENDPOINT: Final = "splits"
EOD_BULK_ENDPOINT: Final = "eod-bulk"
SPLITS_CALENDAR_ENDPOINT: Final = "splits-calendar"
FILINGS_ENDPOINT: Final = "sec-filings-financials"
#: Endpoints that answer for the whole market (`config.market`) rather than one symbol.
_MARKET_ENDPOINTS: Final = frozenset(
    {EOD_BULK_ENDPOINT, SPLITS_CALENDAR_ENDPOINT, FILINGS_ENDPOINT}
)
_PRICE_ENDPOINTS: Final = frozenset(
    {PRICE_ENDPOINT, DIVIDEND_ADJUSTED_ENDPOINT, NON_SPLIT_ADJUSTED_ENDPOINT}
)
_STATEMENT_ENDPOINTS: Final = frozenset({INCOME_ENDPOINT, BALANCE_ENDPOINT, CASH_FLOW_ENDPOINT})
ENDPOINTS: Final = (
    _PRICE_ENDPOINTS
    | _STATEMENT_ENDPOINTS
    | {PROFILE_ENDPOINT, SPLITS_ENDPOINT}
    | _MARKET_ENDPOINTS
)
#: FMP's largest page of the filings listing.
MAX_FILINGS_PAGE: Final = 1000
DEFAULT_FILINGS_PAGE: Final = 100

DEFAULT_STATEMENT_LIMIT: Final = 5
MAX_STATEMENT_LIMIT: Final = 1000
# Statements start this many years before the price history, as FMP's do for listed companies.
_STATEMENT_YEARS_BEFORE_PRICES: Final = 10
_SESSIONS_PER_DIVIDEND: Final = 63

_HEADER_FIELDS: Final = (
    "date",
    "symbol",
    "reportedCurrency",
    "cik",
    "filingDate",
    "acceptedDate",
    "fiscalYear",
    "period",
)
_INCOME_FIELDS: Final = (
    "revenue",
    "costOfRevenue",
    "grossProfit",
    "researchAndDevelopmentExpenses",
    "generalAndAdministrativeExpenses",
    "sellingAndMarketingExpenses",
    "sellingGeneralAndAdministrativeExpenses",
    "otherExpenses",
    "operatingExpenses",
    "costAndExpenses",
    "netInterestIncome",
    "interestIncome",
    "interestExpense",
    "depreciationAndAmortization",
    "ebitda",
    "ebit",
    "nonOperatingIncomeExcludingInterest",
    "operatingIncome",
    "totalOtherIncomeExpensesNet",
    "incomeBeforeTax",
    "incomeTaxExpense",
    "netIncomeFromContinuingOperations",
    "netIncomeFromDiscontinuedOperations",
    "otherAdjustmentsToNetIncome",
    "netIncome",
    "netIncomeDeductions",
    "bottomLineNetIncome",
    "eps",
    "epsDiluted",
    "weightedAverageShsOut",
    "weightedAverageShsOutDil",
)
_BALANCE_FIELDS: Final = (
    "cashAndCashEquivalents",
    "shortTermInvestments",
    "cashAndShortTermInvestments",
    "netReceivables",
    "accountsReceivables",
    "otherReceivables",
    "inventory",
    "prepaids",
    "otherCurrentAssets",
    "totalCurrentAssets",
    "propertyPlantEquipmentNet",
    "goodwill",
    "intangibleAssets",
    "goodwillAndIntangibleAssets",
    "longTermInvestments",
    "taxAssets",
    "otherNonCurrentAssets",
    "totalNonCurrentAssets",
    "otherAssets",
    "totalAssets",
    "totalPayables",
    "accountPayables",
    "otherPayables",
    "accruedExpenses",
    "shortTermDebt",
    "capitalLeaseObligationsCurrent",
    "taxPayables",
    "deferredRevenue",
    "otherCurrentLiabilities",
    "totalCurrentLiabilities",
    "longTermDebt",
    "capitalLeaseObligationsNonCurrent",
    "deferredRevenueNonCurrent",
    "deferredTaxLiabilitiesNonCurrent",
    "otherNonCurrentLiabilities",
    "totalNonCurrentLiabilities",
    "otherLiabilities",
    "capitalLeaseObligations",
    "totalLiabilities",
    "treasuryStock",
    "preferredStock",
    "commonStock",
    "retainedEarnings",
    "additionalPaidInCapital",
    "accumulatedOtherComprehensiveIncomeLoss",
    "otherTotalStockholdersEquity",
    "totalStockholdersEquity",
    "totalEquity",
    "minorityInterest",
    "totalLiabilitiesAndTotalEquity",
    "totalInvestments",
    "totalDebt",
    "netDebt",
)
_CASH_FLOW_FIELDS: Final = (
    "netIncome",
    "depreciationAndAmortization",
    "deferredIncomeTax",
    "stockBasedCompensation",
    "changeInWorkingCapital",
    "accountsReceivables",
    "inventory",
    "accountsPayables",
    "otherWorkingCapital",
    "otherNonCashItems",
    "netCashProvidedByOperatingActivities",
    "investmentsInPropertyPlantAndEquipment",
    "acquisitionsNet",
    "purchasesOfInvestments",
    "salesMaturitiesOfInvestments",
    "otherInvestingActivities",
    "netCashProvidedByInvestingActivities",
    "netDebtIssuance",
    "longTermNetDebtIssuance",
    "shortTermNetDebtIssuance",
    "netStockIssuance",
    "netCommonStockIssuance",
    "commonStockIssuance",
    "commonStockRepurchased",
    "netPreferredStockIssuance",
    "netDividendsPaid",
    "commonDividendsPaid",
    "preferredDividendsPaid",
    "otherFinancingActivities",
    "netCashProvidedByFinancingActivities",
    "effectOfForexChangesOnCash",
    "netChangeInCash",
    "cashAtEndOfPeriod",
    "cashAtBeginningOfPeriod",
    "operatingCashFlow",
    "capitalExpenditure",
    "freeCashFlow",
    "incomeTaxesPaid",
    "interestPaid",
)
_PRICE_FIELDS: Final = (
    "date",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "change",
    "changePercent",
    "vwap",
)
_ADJUSTED_FIELDS: Final = ("date", "adjOpen", "adjHigh", "adjLow", "adjClose", "volume")
_STATEMENT_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    INCOME_ENDPOINT: _INCOME_FIELDS,
    BALANCE_ENDPOINT: _BALANCE_FIELDS,
    CASH_FLOW_ENDPOINT: _CASH_FLOW_FIELDS,
}

Row = dict[str, Any]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One injected failure; applies to the first `times` matching requests of each symbol."""

    kind: FaultKind
    times: int | None = None
    endpoint: str | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be None or at least 0")
        if self.delay < 0:
            raise ValueError("delay must not be negative")


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """How the simulated plan words a refusal. FMP's wording varies between plans, endpoints and
    over time, and the same text has come under other statuses; `{symbol}` in `text` is replaced
    by the requested symbol. `as_json` sends `{"Error Message": text}` instead of plain text."""

    text: str
    status: int = 402
    as_json: bool = False

    def response(self, symbol: str) -> web.Response:
        text = self.text.replace("{symbol}", symbol)
        if self.as_json:
            return _error(self.status, text)
        # FMP sends these as plain text but labels them JSON; clients must read the text first.
        return web.Response(
            status=self.status, body=text.encode(), headers={"Content-Type": JSON_CONTENT_TYPE}
        )


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """What the simulated account and market look like; `today=None` means today in New York."""

    api_key: str = "demo"
    rate_limit: int | None = None
    window_seconds: float = 60.0
    max_price_rows: int = 5000
    max_statement_limit: int | None = None
    history_start: date = date(2015, 1, 2)
    unknown_symbols: frozenset[str] = frozenset()
    plan_gated_symbols: frozenset[str] = frozenset()
    gated_endpoints: frozenset[str] = frozenset()
    #: (parameter, value) pairs the plan refuses, e.g. ("period", "quarter") on a plan without
    #: quarterly statements.
    gated_values: frozenset[tuple[str, str]] = frozenset()
    #: What `plan_gated_symbols` and `gated_endpoints` get back.
    symbol_refusal: Refusal = Refusal(text=PREMIUM_SYMBOL_TEXT)
    endpoint_refusal: Refusal = Refusal(text=RESTRICTED_ENDPOINT_TEXT)
    faults: Mapping[str, tuple[Fault, ...]] = field(default_factory=dict)
    today: date | None = None
    #: The symbols the whole-market endpoints list (eod-bulk, splits-calendar, the filings
    #: listing); None: the 30 Dow members bundled with the package. Any symbol can still be
    #: asked for on its own.
    market: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.rate_limit is not None and self.rate_limit < 0:
            raise ValueError("rate_limit must be None or at least 0")
        if self.window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        if self.max_price_rows < 1:
            raise ValueError("max_price_rows must be at least 1")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator saw it; status 0 means no response was sent."""

    at: float
    endpoint: str
    params: dict[str, str]
    status: int


class _ParamError(Exception):
    """A request parameter FMP would refuse; carries the ready response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


# --------------------------------------------------------------------------- responses


def _json_response(status: int, payload: Any) -> web.Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return web.Response(status=status, body=body, headers={"Content-Type": JSON_CONTENT_TYPE})


def _error(status: int, message: str) -> web.Response:
    return _json_response(status, {"Error Message": message})


def _plain_402(text: str) -> web.Response:
    return Refusal(text=text).response("")


# --------------------------------------------------------------------------- prices


def _seed(symbol: str) -> int:
    return zlib.crc32(symbol.encode())


@lru_cache(maxsize=16)
def _session_dates(start: date, end: date) -> tuple[str, ...]:
    return tuple(day.isoformat() for day in sessions_between(start, end))


@dataclass(frozen=True, eq=False)
class _Prices:
    """One symbol's generated history, oldest first, aligned with `dates`."""

    dates: tuple[str, ...]
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: npt.NDArray[np.int64]
    change: FloatArray
    change_percent: FloatArray
    vwap: FloatArray
    dividend_factor: FloatArray
    dividend: float  # quarterly dividend as a fraction of the price


def _start_price(seed: int) -> float:
    """The first close, between 20 and 500; statements size the share count from it too."""
    draw = np.random.default_rng([seed, 4]).uniform(np.log(20.0), np.log(500.0))
    return float(np.exp(draw))


@lru_cache(maxsize=256)
def _prices(symbol: str, start: date, end: date) -> _Prices:
    """A random walk per symbol; row i depends only on draws 0..i, so history never shifts."""
    dates = _session_dates(start, end)
    n = len(dates)
    seed = _seed(symbol)
    start_price = _start_price(seed)
    params = np.random.default_rng([seed, 0])
    sigma = float(params.uniform(0.015, 0.02))
    drift = float(params.uniform(-0.0001, 0.0005))
    base_volume = float(np.exp(params.uniform(np.log(2e5), np.log(5e7))))
    dividend = float(params.uniform(0.0, 0.008))
    draws = np.random.default_rng([seed, 1]).standard_normal((n, 5))

    walk = start_price * np.exp(np.cumsum(drift + sigma * draws[:, 0]))
    close: FloatArray = np.maximum(walk, 0.5, dtype=np.float64)
    previous = np.concatenate(([start_price], close[:-1]))
    open_ = np.round(np.maximum(previous * np.exp(0.25 * sigma * draws[:, 1]), 0.5), 2)
    close = np.round(close, 2)
    top = np.maximum(open_, close)
    bottom = np.minimum(open_, close)
    high = np.maximum(np.round(top * np.exp(0.5 * sigma * np.abs(draws[:, 2])), 2), top)
    low = np.minimum(np.round(bottom * np.exp(-0.5 * sigma * np.abs(draws[:, 3])), 2), bottom)
    low = np.maximum(low, 0.01)
    volume = np.rint(base_volume * np.exp(0.35 * draws[:, 4])).astype(np.int64)
    change = np.round(close - open_, 2)
    ex_dates = np.arange(_SESSIONS_PER_DIVIDEND - 1, n, _SESSIONS_PER_DIVIDEND)
    later_dividends = len(ex_dates) - np.searchsorted(ex_dates, np.arange(n), side="right")
    return _Prices(
        dates=dates,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        change=change,
        change_percent=np.round(change / open_ * 100.0, 5),
        vwap=np.round((open_ + high + low + close) / 4.0, 4),
        dividend_factor=(1.0 - dividend) ** later_dividends.astype(np.float64),
        dividend=dividend,
    )


def _parse_day(params: Mapping[str, str], name: str, default: date) -> date:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise _ParamError(
            _error(400, f"Invalid '{name}' parameter: expected a date as YYYY-MM-DD")
        ) from None


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def _price_columns(
    symbol: str, endpoint: str, params: Mapping[str, str], config: SimulatorConfig, today: date
) -> tuple[tuple[str, ...], list[list[Any]]]:
    """The requested window, newest first, as columns in the endpoint's field order."""
    end = _parse_day(params, "to", today)
    start = _parse_day(params, "from", _years_before(end, 5))
    prices = _prices(symbol, config.history_start, today)
    first = bisect.bisect_left(prices.dates, start.isoformat())
    stop = bisect.bisect_right(prices.dates, end.isoformat())
    # FMP's silent cap keeps the newest rows.
    window = slice(max(first, stop - config.max_price_rows), max(first, stop))

    def newest_first(values: npt.NDArray[Any]) -> list[Any]:
        return values[::-1].tolist()  # type: ignore[no-any-return]

    dates = list(prices.dates[window][::-1])
    if endpoint == PRICE_ENDPOINT:
        return _PRICE_FIELDS, [
            dates,
            *(
                newest_first(column[window])
                for column in (
                    prices.open,
                    prices.high,
                    prices.low,
                    prices.close,
                    prices.volume,
                    prices.change,
                    prices.change_percent,
                    prices.vwap,
                )
            ),
        ]
    # The simulator has no splits, so "non-split-adjusted" rows are the plain prices.
    factor = prices.dividend_factor[window] if endpoint == DIVIDEND_ADJUSTED_ENDPOINT else 1.0
    return _ADJUSTED_FIELDS, [
        dates,
        *(
            newest_first(np.round(column[window] * factor, 2))
            for column in (prices.open, prices.high, prices.low, prices.close)
        ),
        newest_first(prices.volume[window]),
    ]


def _price_rows(
    symbol: str, endpoint: str, params: Mapping[str, str], config: SimulatorConfig, today: date
) -> list[Row]:
    fields, columns = _price_columns(symbol, endpoint, params, config, today)
    keys = ("symbol", *fields)
    return [
        dict(zip(keys, (symbol, *values), strict=True)) for values in zip(*columns, strict=True)
    ]


def _price_body(
    symbol: str, endpoint: str, params: Mapping[str, str], config: SimulatorConfig, today: date
) -> bytes:
    """The JSON of `_price_rows`, byte for byte, in under half the time: the hot path of a run."""
    fields, columns = _price_columns(symbol, endpoint, params, config, today)
    # repr() of a float or int is exactly what json.dumps writes; dates need no escaping.
    parts = ['"symbol":' + json.dumps(symbol).replace("%", "%%")]
    parts += [f'"{name}":"%s"' if name == "date" else f'"{name}":%r' for name in fields]
    template = "{" + ",".join(parts) + "}"
    rows = ",".join([template % values for values in zip(*columns, strict=True)])
    return f"[{rows}]".encode()


# --------------------------------------------------------------------------- statements


Columns = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True, eq=False)
class _Statements:
    """One frequency of a company's statements, oldest first: period labels and a column per field."""

    fiscal_years: tuple[int, ...]
    periods: tuple[str, ...]  # "FY" or "Q1".."Q4"
    ends: tuple[date, ...]
    columns: Mapping[str, Columns]  # endpoint -> field -> values

    def numbers(self, endpoint: str, index: int) -> Row:
        """One period's values for one statement, as plain ints and floats in FMP's order."""
        columns = self.columns[endpoint]
        return {name: columns[name][index].item() for name in _STATEMENT_FIELDS[endpoint]}


@dataclass(frozen=True, eq=False)
class _Company:
    cik: str
    quarters: _Statements
    annuals: _Statements


_QUARTER_ENDS: Final = ((3, 31), (6, 30), (9, 30), (12, 31))
_SEASONALITY: Final = (0.95, 0.98, 1.0, 1.07)


def _money(values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Whole thousands, the way filings report."""
    return (np.rint(np.asarray(values, dtype=np.float64) / 1000.0) * 1000.0).astype(np.int64)


def _quarter_columns(
    revenue_base: npt.NDArray[Any],
    shares: npt.NDArray[Any],
    opening_cash: float,
    ratios: Mapping[str, float],
    z: FloatArray,
) -> dict[str, Columns]:
    """Every quarter's three statements at once, tied together by the usual identities."""
    revenue = _money(revenue_base * (1.0 + 0.04 * z[:, 0]))
    cost = _money(revenue * (1.0 - ratios["gross_margin"]) * (1.0 + 0.02 * z[:, 1]))
    research = _money(revenue * ratios["research"])
    general = _money(revenue * ratios["general"])
    selling = _money(revenue * ratios["selling"])
    operating_expenses = research + general + selling
    gross = revenue - cost
    operating_income = gross - operating_expenses
    interest_income = _money(revenue * 0.004 * (1.0 + 0.2 * np.abs(z[:, 2])))
    interest_expense = _money(revenue * ratios["debt"] * 0.012)
    net_interest = interest_income - interest_expense
    depreciation = _money(revenue * ratios["depreciation"])
    before_tax = operating_income + net_interest
    tax = _money(np.maximum(before_tax, 0) * ratios["tax"])
    net_income = before_tax - tax
    zero = np.zeros_like(revenue)
    basic = np.rint(shares).astype(np.int64)
    diluted = np.rint(shares * 1.006).astype(np.int64)
    income: Columns = {
        "revenue": revenue,
        "costOfRevenue": cost,
        "grossProfit": gross,
        "researchAndDevelopmentExpenses": research,
        "generalAndAdministrativeExpenses": general,
        "sellingAndMarketingExpenses": selling,
        "sellingGeneralAndAdministrativeExpenses": general + selling,
        "otherExpenses": zero,
        "operatingExpenses": operating_expenses,
        "costAndExpenses": cost + operating_expenses,
        "netInterestIncome": net_interest,
        "interestIncome": interest_income,
        "interestExpense": interest_expense,
        "depreciationAndAmortization": depreciation,
        "ebitda": operating_income + depreciation,
        "ebit": operating_income,
        "nonOperatingIncomeExcludingInterest": zero,
        "operatingIncome": operating_income,
        "totalOtherIncomeExpensesNet": net_interest,
        "incomeBeforeTax": before_tax,
        "incomeTaxExpense": tax,
        "netIncomeFromContinuingOperations": net_income,
        "netIncomeFromDiscontinuedOperations": zero,
        "otherAdjustmentsToNetIncome": zero,
        "netIncome": net_income,
        "netIncomeDeductions": zero,
        "bottomLineNetIncome": net_income,
        "eps": np.round(net_income / basic, 2),
        "epsDiluted": np.round(net_income / diluted, 2),
        "weightedAverageShsOut": basic,
        "weightedAverageShsOutDil": diluted,
    }

    receivables_change = _money(-revenue * 0.02 * z[:, 3])
    inventory_change = _money(-revenue * 0.01 * z[:, 4])
    payables_change = _money(revenue * 0.015 * z[:, 5])
    other_working = _money(revenue * 0.005 * z[:, 6])
    working_capital = receivables_change + inventory_change + payables_change + other_working
    deferred_tax = _money(tax * 0.05 * z[:, 7])
    stock_comp = _money(revenue * ratios["stock_comp"])
    other_non_cash = _money(revenue * 0.004 * z[:, 8])
    operating = (
        net_income + depreciation + deferred_tax + stock_comp + working_capital + other_non_cash
    )
    capex = -_money(revenue * ratios["capex"] * (1.0 + 0.1 * np.abs(z[:, 9])))
    purchases = -_money(revenue * 0.05 * (1.0 + 0.2 * np.abs(z[:, 10])))
    sales = _money(revenue * 0.05 * (1.0 + 0.2 * np.abs(z[:, 11])))
    other_investing = _money(revenue * 0.002 * z[:, 12])
    investing = capex + purchases + sales + other_investing
    long_debt = _money(revenue * 0.02 * z[:, 13])
    short_debt = _money(revenue * 0.01 * z[:, 14])
    issued = _money(stock_comp * 0.1)
    repurchased = -_money(np.maximum(net_income, 0) * ratios["buyback"])
    dividends = -_money(np.maximum(net_income, 0) * ratios["payout"])
    cash_after = _money(revenue * ratios["cash"] * (1.0 + 0.1 * z[:, 15]))
    cash_before = np.concatenate((_money(np.array([opening_cash])), cash_after[:-1]))
    net_change = cash_after - cash_before
    # Other financing is the plug that keeps the cash balance near the company's usual level.
    named_financing = long_debt + short_debt + issued + repurchased + dividends
    other_financing = net_change - operating - investing - named_financing
    cash_flow: Columns = {
        "netIncome": net_income,
        "depreciationAndAmortization": depreciation,
        "deferredIncomeTax": deferred_tax,
        "stockBasedCompensation": stock_comp,
        "changeInWorkingCapital": working_capital,
        "accountsReceivables": receivables_change,
        "inventory": inventory_change,
        "accountsPayables": payables_change,
        "otherWorkingCapital": other_working,
        "otherNonCashItems": other_non_cash,
        "netCashProvidedByOperatingActivities": operating,
        "investmentsInPropertyPlantAndEquipment": capex,
        "acquisitionsNet": zero,
        "purchasesOfInvestments": purchases,
        "salesMaturitiesOfInvestments": sales,
        "otherInvestingActivities": other_investing,
        "netCashProvidedByInvestingActivities": investing,
        "netDebtIssuance": long_debt + short_debt,
        "longTermNetDebtIssuance": long_debt,
        "shortTermNetDebtIssuance": short_debt,
        "netStockIssuance": issued + repurchased,
        "netCommonStockIssuance": issued + repurchased,
        "commonStockIssuance": issued,
        "commonStockRepurchased": repurchased,
        "netPreferredStockIssuance": zero,
        "netDividendsPaid": dividends,
        "commonDividendsPaid": dividends,
        "preferredDividendsPaid": zero,
        "otherFinancingActivities": other_financing,
        "netCashProvidedByFinancingActivities": named_financing + other_financing,
        "effectOfForexChangesOnCash": zero,
        "netChangeInCash": net_change,
        "cashAtEndOfPeriod": cash_after,
        "cashAtBeginningOfPeriod": cash_before,
        "operatingCashFlow": operating,
        "capitalExpenditure": capex,
        "freeCashFlow": operating + capex,
        "incomeTaxesPaid": _money(tax * 0.9),
        "interestPaid": interest_expense,
    }

    annual_revenue = revenue * 4
    short_investments = _money(annual_revenue * 0.08 * (1.0 + 0.1 * np.abs(z[:, 16])))
    receivables = _money(annual_revenue * 0.09)
    other_receivables = _money(annual_revenue * 0.03)
    inventory = _money(annual_revenue * ratios["inventory"])
    other_current = _money(annual_revenue * 0.03)
    current_assets = (
        cash_after + short_investments + receivables + other_receivables + inventory + other_current
    )
    plant = _money(annual_revenue * ratios["plant"])
    goodwill = _money(annual_revenue * ratios["goodwill"])
    intangibles = _money(annual_revenue * ratios["goodwill"] * 0.4)
    long_investments = _money(annual_revenue * 0.1)
    other_non_current = _money(annual_revenue * 0.05)
    non_current_assets = plant + goodwill + intangibles + long_investments + other_non_current
    total_assets = current_assets + non_current_assets
    payables = _money(cost * 4 * 0.2)
    other_payables = _money(annual_revenue * 0.02)
    accrued = _money(annual_revenue * 0.02)
    short_term_debt = _money(annual_revenue * ratios["debt"] * 0.1)
    deferred_revenue = _money(annual_revenue * 0.015)
    other_current_liabilities = _money(annual_revenue * 0.04)
    current_liabilities = (
        payables
        + other_payables
        + accrued
        + short_term_debt
        + deferred_revenue
        + other_current_liabilities
    )
    long_term_debt = _money(annual_revenue * ratios["debt"])
    deferred_tax_liabilities = _money(annual_revenue * 0.01)
    other_non_current_liabilities = _money(annual_revenue * 0.04)
    non_current_liabilities = (
        long_term_debt + deferred_tax_liabilities + other_non_current_liabilities
    )
    total_liabilities = current_liabilities + non_current_liabilities
    equity = total_assets - total_liabilities
    common_stock = _money(shares * 2.0)
    other_comprehensive = _money(annual_revenue * 0.005 * z[:, 17])
    total_debt = short_term_debt + long_term_debt
    balance: Columns = {
        "cashAndCashEquivalents": cash_after,
        "shortTermInvestments": short_investments,
        "cashAndShortTermInvestments": cash_after + short_investments,
        "netReceivables": receivables + other_receivables,
        "accountsReceivables": receivables,
        "otherReceivables": other_receivables,
        "inventory": inventory,
        "prepaids": zero,
        "otherCurrentAssets": other_current,
        "totalCurrentAssets": current_assets,
        "propertyPlantEquipmentNet": plant,
        "goodwill": goodwill,
        "intangibleAssets": intangibles,
        "goodwillAndIntangibleAssets": goodwill + intangibles,
        "longTermInvestments": long_investments,
        "taxAssets": zero,
        "otherNonCurrentAssets": other_non_current,
        "totalNonCurrentAssets": non_current_assets,
        "otherAssets": zero,
        "totalAssets": total_assets,
        "totalPayables": payables + other_payables,
        "accountPayables": payables,
        "otherPayables": other_payables,
        "accruedExpenses": accrued,
        "shortTermDebt": short_term_debt,
        "capitalLeaseObligationsCurrent": zero,
        "taxPayables": _money(other_payables * 0.5),  # part of otherPayables, as FMP reports it
        "deferredRevenue": deferred_revenue,
        "otherCurrentLiabilities": other_current_liabilities,
        "totalCurrentLiabilities": current_liabilities,
        "longTermDebt": long_term_debt,
        "capitalLeaseObligationsNonCurrent": zero,
        "deferredRevenueNonCurrent": zero,
        "deferredTaxLiabilitiesNonCurrent": deferred_tax_liabilities,
        "otherNonCurrentLiabilities": other_non_current_liabilities,
        "totalNonCurrentLiabilities": non_current_liabilities,
        "otherLiabilities": zero,
        "capitalLeaseObligations": zero,
        "totalLiabilities": total_liabilities,
        "treasuryStock": zero,
        "preferredStock": zero,
        "commonStock": common_stock,
        "retainedEarnings": equity - common_stock - other_comprehensive,
        "additionalPaidInCapital": zero,
        "accumulatedOtherComprehensiveIncomeLoss": other_comprehensive,
        "otherTotalStockholdersEquity": zero,
        "totalStockholdersEquity": equity,
        "totalEquity": equity,
        "minorityInterest": zero,
        "totalLiabilitiesAndTotalEquity": total_liabilities + equity,
        "totalInvestments": short_investments + long_investments,
        "totalDebt": total_debt,
        "netDebt": total_debt - cash_after,
    }
    return {INCOME_ENDPOINT: income, BALANCE_ENDPOINT: balance, CASH_FLOW_ENDPOINT: cash_flow}


def _annual_columns(quarterly: Mapping[str, Columns]) -> dict[str, Columns]:
    """Fiscal years as the sum of their quarters (flows) and their last quarter (balances)."""

    def by_year(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return values.reshape(-1, 4)

    income = {name: by_year(v).sum(axis=1) for name, v in quarterly[INCOME_ENDPOINT].items()}
    for name in ("weightedAverageShsOut", "weightedAverageShsOutDil"):
        average = by_year(quarterly[INCOME_ENDPOINT][name]).mean(axis=1)
        income[name] = np.rint(average).astype(np.int64)
    income["eps"] = np.round(income["netIncome"] / income["weightedAverageShsOut"], 2)
    income["epsDiluted"] = np.round(income["netIncome"] / income["weightedAverageShsOutDil"], 2)
    cash = {name: by_year(v).sum(axis=1) for name, v in quarterly[CASH_FLOW_ENDPOINT].items()}
    cash["cashAtBeginningOfPeriod"] = by_year(
        quarterly[CASH_FLOW_ENDPOINT]["cashAtBeginningOfPeriod"]
    )[:, 0]
    cash["cashAtEndOfPeriod"] = by_year(quarterly[CASH_FLOW_ENDPOINT]["cashAtEndOfPeriod"])[:, 3]
    balance = {name: by_year(v)[:, 3] for name, v in quarterly[BALANCE_ENDPOINT].items()}
    return {INCOME_ENDPOINT: income, BALANCE_ENDPOINT: balance, CASH_FLOW_ENDPOINT: cash}


@lru_cache(maxsize=256)
def _company(symbol: str, first_year: int, last_year: int) -> _Company:
    """Every quarter and fiscal year from `first_year` to `last_year`, built as numpy columns."""
    seed = _seed(symbol)
    rng = np.random.default_rng([seed, 2])
    revenue_base = float(np.exp(rng.uniform(np.log(5e7), np.log(2e10))))
    growth = float(rng.uniform(0.002, 0.025))
    ratios = {
        "gross_margin": float(rng.uniform(0.25, 0.7)),
        "research": float(rng.uniform(0.0, 0.12)),
        "general": float(rng.uniform(0.03, 0.07)),
        "selling": float(rng.uniform(0.03, 0.1)),
        "tax": float(rng.uniform(0.12, 0.25)),
        "depreciation": float(rng.uniform(0.02, 0.07)),
        "stock_comp": float(rng.uniform(0.005, 0.04)),
        "capex": float(rng.uniform(0.02, 0.1)),
        "buyback": float(rng.uniform(0.0, 0.5)),
        "payout": float(rng.uniform(0.0, 0.4)),
        "cash": float(rng.uniform(0.2, 0.8)),
        "inventory": float(rng.uniform(0.0, 0.12)),
        "plant": float(rng.uniform(0.1, 0.6)),
        "goodwill": float(rng.uniform(0.0, 0.3)),
        "debt": float(rng.uniform(0.05, 0.6)),
    }
    # Sized for a price-to-sales ratio of 1.5-6 at the first price, so market caps look sane.
    shares = revenue_base * 4.0 * float(rng.uniform(1.5, 6.0)) / _start_price(seed)
    years = range(first_year, last_year + 1)
    k = np.arange(len(years) * 4)
    # Rows of draws per quarter: adding years later never changes the earlier quarters.
    draws = np.random.default_rng([seed, 3]).standard_normal((len(k), 18))
    quarterly = _quarter_columns(
        revenue_base * (1.0 + growth) ** k * np.tile(_SEASONALITY, len(years)),
        shares * 0.998**k,
        revenue_base * ratios["cash"],
        ratios,
        draws,
    )
    quarters = _Statements(
        fiscal_years=tuple(year for year in years for _ in _QUARTER_ENDS),
        periods=tuple(f"Q{q}" for _ in years for q in range(1, 5)),
        ends=tuple(date(year, month, day) for year in years for month, day in _QUARTER_ENDS),
        columns=quarterly,
    )
    annuals = _Statements(
        fiscal_years=tuple(years),
        periods=("FY",) * len(years),
        ends=tuple(date(year, 12, 31) for year in years),
        columns=_annual_columns(quarterly),
    )
    return _Company(cik=f"{seed % 2_000_000:010d}", quarters=quarters, annuals=annuals)


def _filing(symbol: str, fiscal_year: int, period: str, end: date) -> tuple[date, str]:
    """Filing date 25-40 days after the period end; accepted that day or the evening before.
    The fourth quarter comes with the fiscal year, in the same 10-K."""
    key = "FY" if period == "Q4" else period
    h = zlib.crc32(f"{symbol}|{fiscal_year}|{key}".encode())
    filed = end + timedelta(days=25 + h % 16)
    accepted = filed - timedelta(days=(h >> 4) % 2)
    clock = f"{6 + (h >> 5) % 14:02d}:{(h >> 9) % 60:02d}:{(h >> 15) % 60:02d}"
    return filed, f"{accepted.isoformat()} {clock}"


def _statement_limit(params: Mapping[str, str], config: SimulatorConfig) -> int:
    raw = params.get("limit")
    if raw is None or raw == "":
        return DEFAULT_STATEMENT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise _ParamError(_error(400, "Invalid 'limit' parameter: expected an integer")) from None
    if limit < 0:
        raise _ParamError(_error(400, "Invalid 'limit' parameter: must not be negative"))
    cap = config.max_statement_limit
    if cap is not None and limit > cap:
        raise _ParamError(
            _plain_402(
                f"Premium Query Parameter: The values for 'limit' must be between 0 and {cap}"
            )
        )
    return min(limit, MAX_STATEMENT_LIMIT)


def _statement_rows(
    symbol: str, endpoint: str, params: Mapping[str, str], config: SimulatorConfig, today: date
) -> list[Row]:
    period = params.get("period") or "annual"
    if period not in {"annual", "quarter", "FY", "Q1", "Q2", "Q3", "Q4"}:
        raise _ParamError(
            _error(400, "Invalid 'period' parameter: use annual, quarter, FY or Q1..Q4")
        )
    limit = _statement_limit(params, config)
    first_year = config.history_start.year - _STATEMENT_YEARS_BEFORE_PRICES
    company = _company(symbol, first_year, today.year)
    statements = company.annuals if period in {"annual", "FY"} else company.quarters
    rows: list[Row] = []
    for index in reversed(range(len(statements.periods))):
        if len(rows) >= limit:
            break
        fiscal_year, label = statements.fiscal_years[index], statements.periods[index]
        if period not in {"annual", "FY", "quarter", label}:
            continue
        end = statements.ends[index]
        filed, accepted = _filing(symbol, fiscal_year, label, end)
        if filed > today:
            continue
        row: Row = {
            "date": end.isoformat(),
            "symbol": symbol,
            "reportedCurrency": "USD",
            "cik": company.cik,
            "filingDate": filed.isoformat(),
            "acceptedDate": accepted,
            "fiscalYear": str(fiscal_year),
            "period": label,
        }
        row.update(statements.numbers(endpoint, index))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- profile

_SECTORS: Final = (
    ("Technology", "Software - Application"),
    ("Technology", "Semiconductors"),
    ("Healthcare", "Drug Manufacturers - General"),
    ("Financial Services", "Banks - Regional"),
    ("Consumer Cyclical", "Specialty Retail"),
    ("Industrials", "Specialty Industrial Machinery"),
    ("Energy", "Oil & Gas Integrated"),
    ("Consumer Defensive", "Packaged Foods"),
    ("Utilities", "Utilities - Regulated Electric"),
    ("Communication Services", "Internet Content & Information"),
)
_EXCHANGES: Final = (("NASDAQ", "NASDAQ Global Select"), ("NYSE", "New York Stock Exchange"))
_CITIES: Final = (
    ("New York", "NY", "10001", "(212)"),
    ("San Jose", "CA", "95110", "(408)"),
    ("Austin", "TX", "78701", "(512)"),
    ("Chicago", "IL", "60601", "(312)"),
    ("Boston", "MA", "02110", "(617)"),
)


def _isin(country: str, cusip: str) -> str:
    """The ISIN with its Luhn check digit, so ISIN validators accept it."""
    digits = "".join(str(int(ch, 36)) for ch in country + cusip)
    total = 0
    for position, ch in enumerate(reversed(digits)):
        value = int(ch) * (2 if position % 2 == 0 else 1)
        total += value // 10 + value % 10
    return f"{country}{cusip}{(10 - total % 10) % 10}"


def _profile_rows(
    symbol: str, endpoint: str, params: Mapping[str, str], config: SimulatorConfig, today: date
) -> list[Row]:
    prices = _prices(symbol, config.history_start, today)
    if not prices.dates:
        return []
    company = _company(
        symbol, config.history_start.year - _STATEMENT_YEARS_BEFORE_PRICES, today.year
    )
    h = _seed(symbol)
    close = float(prices.close[-1])
    previous = float(prices.close[-2]) if len(prices.dates) > 1 else float(prices.open[-1])
    change = round(close - previous, 2)
    year = slice(max(0, len(prices.dates) - 252), None)
    shares = int(company.quarters.columns[INCOME_ENDPOINT]["weightedAverageShsOut"][-1])
    sector, industry = _SECTORS[h % len(_SECTORS)]
    exchange, exchange_name = _EXCHANGES[(h >> 4) % len(_EXCHANGES)]
    city, state, zip_code, area = _CITIES[(h >> 8) % len(_CITIES)]
    cusip = f"{h % 100_000_000:08d}1"
    slug = "".join(ch for ch in symbol.lower() if ch.isalnum()) or "company"
    return [
        {
            "symbol": symbol,
            "price": close,
            "marketCap": round(close * shares),
            "beta": round(0.5 + (h % 1500) / 1000.0, 3),
            "lastDividend": round(close * prices.dividend, 2),
            "range": f"{np.min(prices.low[year]):.2f}-{np.max(prices.high[year]):.2f}",
            "change": change,
            "changePercentage": round(change / previous * 100.0, 5),
            "volume": int(prices.volume[-1]),
            "averageVolume": round(float(prices.volume[-63:].mean())),
            "companyName": f"{symbol} Holdings Inc.",
            "currency": "USD",
            "cik": company.cik,
            "isin": _isin("US", cusip),
            "cusip": cusip,
            "exchangeFullName": exchange_name,
            "exchange": exchange,
            "industry": industry,
            "website": f"https://www.{slug}.example.com",
            "description": f"{symbol} Holdings Inc. is a simulated company served by the FMP "
            "simulator bundled with stock_pipeline.",
            "ceo": "Alex Example",
            "sector": sector,
            "country": "US",
            "fullTimeEmployees": str(500 + h % 150_000),
            "phone": f"{area} 555-{h % 10_000:04d}",
            "address": f"{1 + h % 999} Market Street",
            "city": city,
            "state": state,
            "zip": zip_code,
            "image": f"https://images.financialmodelingprep.com/symbol/{symbol}.png",
            "ipoDate": (config.history_start - timedelta(days=365 + h % 7000)).isoformat(),
            "defaultImage": False,
            "isEtf": False,
            "isActivelyTrading": True,
            "isAdr": False,
            "isFund": False,
        }
    ]


def _split_rows(
    symbol: str, endpoint: str, params: Mapping[str, str], config: SimulatorConfig, today: date
) -> list[Row]:
    """A third of the symbols split 4:1 on one session of their history, and one in nine also 3:2
    on an earlier one; newest first, as FMP lists them. (The simulated prices are a continuous
    series, as FMP's split-adjusted ones are, so they need no change.)"""
    h = _seed(symbol)
    sessions = _session_dates(config.history_start, today)
    if h % 3 or len(sessions) < 60:
        return []
    splits = [(sessions[30 + (h >> 4) % (len(sessions) - 30)], 4, 1)]
    if h % 9 == 0:
        splits.append((sessions[(h >> 12) % 30], 3, 2))
    return [
        {"symbol": symbol, "date": day, "numerator": numerator, "denominator": denominator}
        for day, numerator, denominator in sorted(splits, reverse=True)
    ]


# --------------------------------------------------------------------------- the whole market


def _market(config: SimulatorConfig) -> tuple[str, ...]:
    symbols = config.market if config.market is not None else _bundled_market()
    return tuple(s for s in symbols if s not in config.unknown_symbols)


@lru_cache(maxsize=1)
def _bundled_market() -> tuple[str, ...]:
    from stock_pipeline.config import bundled_tickers, read_tickers

    with bundled_tickers() as path:
        return read_tickers(path)


EOD_BULK_FIELDS: Final = ("symbol", "date", "open", "low", "high", "close", "adjClose", "volume")


#: Sessions of the market whose bulk lines are made together (one pass over every symbol's walk).
_BULK_BLOCK: Final = 64


def _eod_bulk_body(params: Mapping[str, str], config: SimulatorConfig, today: date) -> bytes:
    """Every market symbol's bar for one session as FMP's CSV: a byte-order mark, open-low-high
    order, and some volumes written as fractional numbers."""
    if not params.get("date"):
        raise _ParamError(_error(400, "Invalid or missing query parameter - date"))
    key = _parse_day(params, "date", today).isoformat()
    dates = _session_dates(config.history_start, today)
    index = bisect.bisect_left(dates, key)
    rows = ""
    if index < len(dates) and dates[index] == key:
        block = _bulk_block(_market(config), config.history_start, today, index // _BULK_BLOCK)
        rows = block[key]
    return ("\ufeff" + ",".join(EOD_BULK_FIELDS) + "\n" + rows).encode()


@lru_cache(maxsize=4)
def _bulk_block(symbols: tuple[str, ...], start: date, today: date, block: int) -> dict[str, str]:
    """The bulk CSV lines of a block of consecutive sessions, per session: a backfill asks for
    neighbouring sessions together, and each symbol's walk is generated once per block, not
    once per session."""
    dates = _session_dates(start, today)
    first, last = block * _BULK_BLOCK, min(len(dates), (block + 1) * _BULK_BLOCK)
    lines: dict[str, list[str]] = {dates[i]: [] for i in range(first, last)}
    for symbol in symbols:
        prices = _prices(symbol, start, today)
        fractional = _seed(symbol) % 4 == 0
        for i in range(first, last):
            volume = int(prices.volume[i])
            values = (
                prices.open[i],
                prices.low[i],
                prices.high[i],
                prices.close[i],
                round(float(prices.close[i] * prices.dividend_factor[i]), 2),
            )
            shown = f"{volume}.0" if fractional else str(volume)
            lines[dates[i]].append(
                ",".join((symbol, dates[i], *(repr(float(v)) for v in values), shown)) + "\n"
            )
    return {day: "".join(rows) for day, rows in lines.items()}


def _splits_calendar_rows(
    params: Mapping[str, str], config: SimulatorConfig, today: date
) -> list[Row]:
    """The market's splits dated from `from` to `to`, newest first."""
    end = _parse_day(params, "to", today + timedelta(days=30))
    start = _parse_day(params, "from", end - timedelta(days=30))
    rows = [
        row
        for symbol in _market(config)
        for row in _split_rows(symbol, SPLITS_ENDPOINT, {}, config, today)
        if start.isoformat() <= row["date"] <= end.isoformat()
    ]
    return sorted(rows, key=lambda row: (row["date"], row["symbol"]), reverse=True)


def _page(params: Mapping[str, str]) -> tuple[int, int]:
    try:
        page = int(params.get("page") or 0)
        limit = int(params.get("limit") or DEFAULT_FILINGS_PAGE)
    except ValueError:
        raise _ParamError(_error(400, "Invalid 'page' or 'limit' parameter")) from None
    if page < 0 or not 1 <= limit <= MAX_FILINGS_PAGE:
        raise _ParamError(
            _error(400, f"Invalid 'page' or 'limit' parameter: limit is 1 to {MAX_FILINGS_PAGE}")
        )
    return page, limit


def _filings_rows(params: Mapping[str, str], config: SimulatorConfig, today: date) -> list[Row]:
    """The filings listing: every 10-Q and 10-K of the market accepted from `from` to `to`, and
    the 8-K earnings release the day before each, newest acceptance first, a page at a time.
    A filing is listed once its statements are served (on its filing date)."""
    for name in ("from", "to"):
        if not params.get(name):
            raise _ParamError(_error(400, f"Invalid or missing query parameter - {name}"))
    start, end = _parse_day(params, "from", today), _parse_day(params, "to", today)
    page, limit = _page(params)
    rows: list[Row] = []
    for symbol in _market(config):
        cik = f"{_seed(symbol) % 2_000_000:010d}"
        for fiscal_year in range(start.year - 1, end.year + 1):
            for quarter, (month, day) in enumerate(_QUARTER_ENDS, start=1):
                label = "FY" if quarter == 4 else f"Q{quarter}"
                filed, accepted = _filing(symbol, fiscal_year, label, date(fiscal_year, month, day))
                release = datetime.fromisoformat(accepted) - timedelta(days=1)
                listed = (
                    ("10-K" if quarter == 4 else "10-Q", accepted, filed),
                    ("8-K", f"{release:%Y-%m-%d} 16:05:00", release.date()),
                )
                for form, when, filing_date in listed:
                    if filed > today or not start.isoformat() <= when[:10] <= end.isoformat():
                        continue
                    accession = f"{cik}-{fiscal_year % 100:02d}-{quarter:02d}{len(form)}"
                    rows.append(
                        {
                            "symbol": symbol,
                            "cik": cik,
                            "filingDate": f"{filing_date.isoformat()} 00:00:00",
                            "acceptedDate": when,
                            "formType": form,
                            "link": f"https://www.sec.gov/Archives/edgar/data/{int(cik)}/"
                            f"{accession}-index.htm",
                            "finalLink": f"https://www.sec.gov/Archives/edgar/data/{int(cik)}/"
                            f"{accession}.htm",
                        }
                    )
    rows.sort(key=lambda row: (row["acceptedDate"], row["symbol"]), reverse=True)
    return rows[page * limit : (page + 1) * limit]


_RowBuilder = Callable[[str, str, Mapping[str, str], SimulatorConfig, date], list[Row]]
_BUILDERS: Final[Mapping[str, _RowBuilder]] = {
    **dict.fromkeys(_PRICE_ENDPOINTS, _price_rows),
    **dict.fromkeys(_STATEMENT_ENDPOINTS, _statement_rows),
    PROFILE_ENDPOINT: _profile_rows,
    SPLITS_ENDPOINT: _split_rows,
}


# --------------------------------------------------------------------------- faults


def _applies(fault: Fault, endpoint: str) -> bool:
    if fault.endpoint is not None and fault.endpoint != endpoint:
        return False
    if fault.kind == "bad_rows":
        return endpoint in _PRICE_ENDPOINTS
    if fault.kind == "duplicate_statement":
        return endpoint in _STATEMENT_ENDPOINTS
    return True


def _with_duplicates(rows: list[Row]) -> list[Row]:
    out: list[Row] = []
    for index, row in enumerate(rows):
        out.append(row)
        if index % 50 == 0:
            out.append(dict(row))
    return out


def _with_restatement(rows: list[Row]) -> list[Row]:
    """A second row for the newest period, accepted a day later with a different revenue."""
    if not rows:
        return rows
    restated = dict(rows[0])
    accepted = datetime.fromisoformat(restated["acceptedDate"]) + timedelta(days=1)
    restated["acceptedDate"] = accepted.strftime("%Y-%m-%d %H:%M:%S")
    restated["filingDate"] = max(restated["filingDate"], accepted.date().isoformat())
    if "revenue" in restated:
        delta = max(1000, abs(restated["revenue"]) // 100_000 * 1000)  # about 1%
        restated["revenue"] += delta
        restated["grossProfit"] += delta
    return [rows[0], restated, *rows[1:]]


def _with_bad_rows(rows: list[Row]) -> list[Row]:
    """One row with low above open and one with a negative volume, as FMP's own data has."""
    if not rows:
        return rows
    low, open_ = ("low", "open") if "open" in rows[0] else ("adjLow", "adjOpen")
    bad_low = rows[len(rows) // 3]
    bad_low[low] = round(bad_low[open_] + 1.0, 2)
    bad_volume = rows[(2 * len(rows)) // 3]
    bad_volume["volume"] = -max(1, bad_volume["volume"])
    return rows


def _stringify(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return str(value)


# --------------------------------------------------------------------------- the server


class FmpSimulator:
    """The FMP-like application and what it has seen; `clock` is injectable for rate-limit tests."""

    def __init__(
        self,
        config: SimulatorConfig = SimulatorConfig(),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.requests: list[RecordedRequest] = []
        self._clock = clock
        self._accepted: deque[float] = deque()
        self._fault_uses: dict[tuple[str, str, int], int] = {}

    def app(self) -> web.Application:
        """A fresh aiohttp application routing every path to this simulator."""
        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", self._handle)
        return application

    def status_counts(self) -> dict[int, int]:
        """How many recorded requests got each status (0 = no response)."""
        counts: dict[int, int] = {}
        for recorded in self.requests:
            counts[recorded.status] = counts.get(recorded.status, 0) + 1
        return counts

    def _today(self) -> date:
        return self.config.today or datetime.now(NEW_YORK).date()

    def _admit(self, now: float) -> bool:
        """Strict sliding window: refuse when `rate_limit` requests were accepted in the window."""
        limit = self.config.rate_limit
        if limit is None:
            return True
        horizon = now - self.config.window_seconds
        while self._accepted and self._accepted[0] <= horizon:
            self._accepted.popleft()
        if len(self._accepted) >= limit:
            return False
        self._accepted.append(now)
        return True

    def _take_faults(self, symbol: str, endpoint: str) -> list[Fault]:
        """The faults this request gets, consuming their per-symbol budgets."""
        taken: list[Fault] = []
        terminal = False
        for key in (symbol, "*"):
            for index, fault in enumerate(self.config.faults.get(key, ())):
                if not _applies(fault, endpoint):
                    continue
                if fault.kind in _TERMINAL_FAULTS and terminal:
                    continue  # left for a later request, so sequences of faults play out in order
                budget = (symbol, key, index)
                used = self._fault_uses.get(budget, 0)
                if fault.times is not None and used >= fault.times:
                    continue
                self._fault_uses[budget] = used + 1
                terminal = terminal or fault.kind in _TERMINAL_FAULTS
                taken.append(fault)
        return taken

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = self._clock()
        path = request.path
        endpoint = path.removeprefix("/stable/")
        params: dict[str, str] = {}
        for name, value in request.query.items():
            if name != "apikey":
                params.setdefault(name, value)
        slot = len(self.requests)
        self.requests.append(RecordedRequest(received, endpoint, params, 0))
        response = await self._respond(request, path, endpoint, params, received)
        status = 0 if response is None else response.status
        self.requests[slot] = RecordedRequest(received, endpoint, params, status)
        if response is None:
            if request.transport is not None:
                request.transport.abort()
            return web.Response()  # never reaches the client: the connection is already closed
        return response

    async def _respond(
        self,
        request: web.Request,
        path: str,
        endpoint: str,
        params: Mapping[str, str],
        received: float,
    ) -> web.Response | None:
        config = self.config
        if request.query.get("apikey") != config.api_key:
            return _error(401, INVALID_KEY_MESSAGE)
        if not self._admit(received):
            return _error(429, LIMIT_REACH_MESSAGE)
        if path.startswith(("/api/v3/", "/api/v4/")):
            return _error(403, LEGACY_MESSAGE)
        if not path.startswith("/stable/") or endpoint not in ENDPOINTS:
            return _error(
                404,
                f"Invalid endpoint: '{path}'. See the documentation at "
                "https://site.financialmodelingprep.com/developer/docs",
            )
        symbol = params.get("symbol", "")
        market = endpoint in _MARKET_ENDPOINTS
        if endpoint in config.gated_endpoints:
            return config.endpoint_refusal.response(symbol)
        if not symbol and not market:
            return _error(400, "Invalid or missing query parameter - symbol")
        if "," in symbol:
            return _json_response(200, [])
        if symbol in config.plan_gated_symbols:
            return config.symbol_refusal.response(symbol)
        for name, value in sorted(config.gated_values):
            if params.get(name) == value:
                return _plain_402(
                    f"Premium Query Parameter: This value set for '{name}' is not available under "
                    "your current subscription"
                )

        faults = self._take_faults(symbol, endpoint)
        kinds = frozenset(fault.kind for fault in faults)
        for fault in faults:
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
        if "drop_connection" in kinds:
            return None
        if "server_error" in kinds:
            return web.Response(
                status=503, body=_SERVER_ERROR_HTML, headers={"Content-Type": "text/html"}
            )
        if "limit_reach_200" in kinds:
            return _error(200, LIMIT_REACH_MESSAGE)
        if "limit_reach_402" in kinds:
            return _error(402, LIMIT_REACH_MESSAGE)
        if "error_in_200" in kinds:
            return _error(200, "An unexpected error occurred")
        if "not_json" in kinds:
            return web.Response(
                status=200, body=_NOT_JSON_HTML, headers={"Content-Type": JSON_CONTENT_TYPE}
            )

        content_type = JSON_CONTENT_TYPE
        if symbol in config.unknown_symbols and not market:
            body = b"[]"
        else:
            try:
                if market:
                    body, content_type = self._market_body(endpoint, params)
                else:
                    body = self._body(symbol, endpoint, params, kinds)
            except _ParamError as refused:
                return refused.response
        if "truncated" in kinds:
            # Cut inside the document; Content-Length matches, so only the JSON is broken.
            body = body[: max(1, len(body) // 2)]
        return web.Response(status=200, body=body, headers={"Content-Type": content_type})

    def _market_body(self, endpoint: str, params: Mapping[str, str]) -> tuple[bytes, str]:
        today = self._today()
        if endpoint == EOD_BULK_ENDPOINT:
            return _eod_bulk_body(params, self.config, today), CSV_CONTENT_TYPE
        build = _splits_calendar_rows if endpoint == SPLITS_CALENDAR_ENDPOINT else _filings_rows
        rows = build(params, self.config, today)
        return json.dumps(rows, separators=(",", ":")).encode(), JSON_CONTENT_TYPE

    def _body(
        self, symbol: str, endpoint: str, params: Mapping[str, str], kinds: frozenset[FaultKind]
    ) -> bytes:
        """The endpoint's JSON array, with any row-level faults applied."""
        today = self._today()
        if endpoint in _PRICE_ENDPOINTS and kinds.isdisjoint(_ROW_FAULTS):
            return _price_body(symbol, endpoint, params, self.config, today)
        rows = _BUILDERS[endpoint](symbol, endpoint, params, self.config, today)
        if "duplicate_statement" in kinds:
            rows = _with_restatement(rows)
        if "bad_rows" in kinds:
            rows = _with_bad_rows(rows)
        if "duplicates" in kinds:
            rows = _with_duplicates(rows)
        if "extra_field" in kinds:
            for row in rows:
                row["newMetric"] = 1.5
        if "numbers_as_strings" in kinds:
            rows = [{name: _stringify(value) for name, value in row.items()} for row in rows]
        return json.dumps(rows, separators=(",", ":")).encode()


@asynccontextmanager
async def serve(
    simulator: FmpSimulator, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Run the app in the current event loop; yields the base URL like "http://127.0.0.1:54321"."""
    # handler_cancellation stops "slow" handlers whose client gave up, so shutdown stays quick.
    runner = web.AppRunner(
        simulator.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1])
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound}"
    finally:
        await runner.cleanup()


class SimulatorThread:
    """Runs a simulator on its own event loop in a daemon thread, for synchronous callers.

    `with SimulatorThread(config) as sim: sim.url, sim.simulator`; stops itself on exit.
    """

    def __init__(
        self,
        config: SimulatorConfig = SimulatorConfig(),
        *,
        port: int = 0,
        start_timeout: float = 30.0,
    ) -> None:
        self.simulator = FmpSimulator(config)
        self.url = ""
        self._port = port
        self._start_timeout = start_timeout
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fmp-simulator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # handed to the caller by start()
            self._failure = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self.simulator, "127.0.0.1", self._port) as url:
            self.url = url
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        """Start serving and wait until the port is bound."""
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise RuntimeError("the FMP simulator did not start in time")
        if self._failure is not None:
            raise RuntimeError("the FMP simulator failed to start") from self._failure

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            # The loop may close between the check and the call.
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread.ident is not None:
            self._thread.join(timeout=10.0)

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stock_pipeline.simulator",
        description="Serve a local FMP-like stable API with generated, deterministic data.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind (default 8765)")
    parser.add_argument("--api-key", default="demo", help="the key clients must send")
    parser.add_argument(
        "--rate-limit", type=int, default=None, help="accepted requests per window (default none)"
    )
    parser.add_argument(
        "--window-seconds", type=float, default=60.0, help="rate-limit window (default 60)"
    )
    parser.add_argument(
        "--market",
        help="CSV with a `symbol` column: the symbols the whole-market endpoints list "
        "(default: the 30 Dow members)",
    )
    parser.add_argument("--today", help="the simulated day, YYYY-MM-DD (default: New York's)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until Ctrl-C: `python -m stock_pipeline.simulator --port 8765 --rate-limit 300`."""
    args = _parse_args(argv)
    market = None
    if args.market:
        from pathlib import Path

        from stock_pipeline.config import read_tickers

        market = read_tickers(Path(args.market))
    config = SimulatorConfig(
        api_key=args.api_key,
        rate_limit=args.rate_limit,
        window_seconds=args.window_seconds,
        market=market,
        today=date.fromisoformat(args.today) if args.today else None,
    )

    async def run() -> None:
        async with serve(FmpSimulator(config), args.host, args.port) as url:
            print(
                f"FMP simulator at {url}/stable/ (api key {config.api_key!r}); Ctrl-C stops it",
                flush=True,
            )
            await asyncio.Event().wait()

    with suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
