"""The dataset registry: the one place that says what each dataset is.

Per dataset: the FMP endpoint, how requests are shaped, the typed schema (snake_case names derived from
FMP's camelCase, Spark-safe types), the key readers deduplicate on, the partition column and the sanity
checks. The fetcher, the normalizer, the lake writer, the manifest, the dry-run plan, the docs' schema
tables and the Databricks notebooks all read it, so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Literal

# polars and pyarrow load when a schema or a check is first used, not with the registry: the CLI's
# `--help` and `--dry-run`, and the SQL generated for the notebooks, need names and keys only.
if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

__all__ = [
    "DATASETS",
    "DEFAULT_DATASETS",
    "EXTRA_COLUMN",
    "INGESTED_AT_COLUMN",
    "LINEAGE_COLUMNS",
    "QUARANTINE_COLUMNS",
    "REASON_COLUMN",
    "RUN_ID_COLUMN",
    "Check",
    "Column",
    "ColumnType",
    "Dataset",
    "MarketEndpoint",
    "column_meaning",
    "get_dataset",
    "to_snake_case",
]

RUN_ID_COLUMN = "_run_id"
INGESTED_AT_COLUMN = "_ingested_at"
EXTRA_COLUMN = "_extra"
REASON_COLUMN = "_reason"
RAW_COLUMN = "_raw"

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def to_snake_case(name: str) -> str:
    """FMP's camelCase field name as a snake_case column name (`epsDiluted` -> `eps_diluted`)."""
    return _CAMEL_BOUNDARY.sub("_", name).lower()


class ColumnType(StrEnum):
    """Column types, each with one polars, Arrow and Spark SQL spelling."""

    STRING = "string"
    DATE = "date"
    TIMESTAMP = "timestamp"
    FLOAT = "double"
    INT = "bigint"
    BOOL = "boolean"

    @property
    def polars(self) -> pl.DataType:
        return _polars_types()[self]

    @property
    def arrow(self) -> pa.DataType:
        return _arrow_types()[self]

    @property
    def spark(self) -> str:
        return _SPARK[self]


@cache
def _polars_types() -> dict[ColumnType, pl.DataType]:
    import polars as pl

    return {
        ColumnType.STRING: pl.String(),
        ColumnType.DATE: pl.Date(),
        ColumnType.TIMESTAMP: pl.Datetime("us", "UTC"),
        ColumnType.FLOAT: pl.Float64(),
        ColumnType.INT: pl.Int64(),
        ColumnType.BOOL: pl.Boolean(),
    }


@cache
def _arrow_types() -> dict[ColumnType, pa.DataType]:
    import pyarrow as pa

    # Spark and Databricks read string (not large_string), date32 and microsecond UTC timestamps
    # natively; nanosecond timestamps and large types are the usual source of "unsupported type".
    return {
        ColumnType.STRING: pa.string(),
        ColumnType.DATE: pa.date32(),
        ColumnType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
        ColumnType.FLOAT: pa.float64(),
        ColumnType.INT: pa.int64(),
        ColumnType.BOOL: pa.bool_(),
    }


_SPARK: dict[ColumnType, str] = {
    ColumnType.STRING: "STRING",
    ColumnType.DATE: "DATE",
    ColumnType.TIMESTAMP: "TIMESTAMP",
    ColumnType.FLOAT: "DOUBLE",
    ColumnType.INT: "BIGINT",
    ColumnType.BOOL: "BOOLEAN",
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its name in the lake, the FMP field it comes from, and its type."""

    name: str
    type: ColumnType
    source: str | None = None
    #: Older FMP spellings of the same field (legacy v3 names), read as this column.
    aliases: tuple[str, ...] = ()
    #: FMP sends this timestamp in New York time without a zone; it is stored in UTC.
    new_york_time: bool = False
    #: Placeholder strings FMP sends for "unknown" (besides "" and "null"), read as null.
    null_values: tuple[str, ...] = ()
    #: A number FMP sends as a JSON string ("2025"): read as text, then converted.
    sent_as_text: bool = False


@dataclass(frozen=True, slots=True)
class Check:
    """A sanity rule: rows where `violated` is true go to quarantine with `reason`.

    `violated` builds the rule as a polars expression from the polars module it is given (see
    `expression`); `violated_sql` is the same rule as a Spark SQL predicate, for the Silver
    data-quality checks.
    """

    reason: str
    violated: Callable[[ModuleType], pl.Expr]
    violated_sql: str

    def expression(self) -> pl.Expr:
        """The rule as a polars expression: true where a row breaks it."""
        import polars

        return self.violated(polars)


def _fmp(
    field: str,
    type_: ColumnType,
    *aliases: str,
    new_york_time: bool = False,
    sent_as_text: bool = False,
) -> Column:
    return Column(
        to_snake_case(field), type_, field, tuple(aliases), new_york_time, sent_as_text=sent_as_text
    )


def _floats(fields: Iterable[str], renames: dict[str, str] | None = None) -> tuple[Column, ...]:
    legacy = {new: old for old, new in (renames or {}).items()}
    return tuple(_fmp(f, ColumnType.FLOAT, *((legacy[f],) if f in legacy else ())) for f in fields)


LINEAGE_COLUMNS: tuple[Column, ...] = (
    Column(RUN_ID_COLUMN, ColumnType.STRING),
    Column(INGESTED_AT_COLUMN, ColumnType.TIMESTAMP),
    # Fields FMP adds after this schema was written, as a JSON object, so nothing is silently dropped.
    Column(EXTRA_COLUMN, ColumnType.STRING),
)

#: Quarantined rows keep the original record verbatim, so a bad value can be inspected and replayed.
QUARANTINE_COLUMNS: tuple[Column, ...] = (
    Column("symbol", ColumnType.STRING),
    Column("record_date", ColumnType.STRING),
    Column(REASON_COLUMN, ColumnType.STRING),
    Column(RAW_COLUMN, ColumnType.STRING),
    Column(RUN_ID_COLUMN, ColumnType.STRING),
    Column(INGESTED_AT_COLUMN, ColumnType.TIMESTAMP),
)

Kind = Literal["prices", "statement", "profile", "events"]
Partition = Literal["date", "ingest_date"]


@dataclass(frozen=True, slots=True)
class MarketEndpoint:
    """An FMP endpoint that answers for the whole market at once instead of one symbol."""

    endpoint: str
    #: "date": one request per session (`date=`); "range": one request per range (`from=`, `to=`).
    span: Literal["date", "range"]
    #: The answer is CSV (with this header) rather than a JSON array.
    csv_header: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Dataset:
    """A dataset as the ingester, the lake and the notebooks see it."""

    name: str
    endpoint: str
    kind: Kind
    description: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    partition: Partition
    checks: tuple[Check, ...] = ()
    #: When a response holds two rows for one key, the row with the largest value here wins.
    prefer_newest: str | None = None
    default: bool = True
    #: Columns whose change makes a new version of a key. Silver keeps every version of such a
    #: dataset besides the newest row (statements: point-in-time Gold needs what was known when);
    #: when the times alone change, the figures are the same version. Empty: newest row only.
    figures: tuple[str, ...] = ()
    #: The endpoint that has every symbol's rows in one answer, if FMP has one.
    market: MarketEndpoint | None = None

    @property
    def partition_in_data(self) -> bool:
        """Whether the partition column is a data column (prices) or the run's date (the rest)."""
        return any(c.name == self.partition for c in self.columns)

    @property
    def file_columns(self) -> tuple[Column, ...]:
        """Columns stored in each Parquet file: the partition value lives in the path only."""
        return tuple(c for c in self.columns if c.name != self.partition) + LINEAGE_COLUMNS

    @property
    def table_columns(self) -> tuple[Column, ...]:
        """Columns a Hive-aware reader sees: the file's plus the typed partition column."""
        return (*self.file_columns, Column(self.partition, ColumnType.DATE))

    def arrow_schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema([pa.field(c.name, c.type.arrow) for c in self.file_columns])

    def polars_schema(self) -> dict[str, pl.DataType]:
        return {c.name: c.type.polars for c in self.file_columns}

    def column(self, name: str) -> Column:
        for c in self.table_columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


def _ohlc_checks(o: str, h: str, lo: str, c: str) -> tuple[Check, ...]:
    prices = (o, h, lo, c)
    return (
        Check(
            "missing price",
            lambda pl: pl.any_horizontal(pl.col(x).is_null() | pl.col(x).is_nan() for x in prices),
            " OR ".join(f"{x} IS NULL OR isnan({x})" for x in prices),
        ),
        Check(
            "non-positive price",
            lambda pl: pl.any_horizontal(pl.col(x) <= 0 for x in prices),
            " OR ".join(f"{x} <= 0" for x in prices),
        ),
        Check("high below low", lambda pl: pl.col(h) < pl.col(lo), f"{h} < {lo}"),
        Check(
            "high below open or close",
            lambda pl: pl.col(h) < pl.max_horizontal(o, c),
            f"{h} < greatest({o}, {c})",
        ),
        Check(
            "low above open or close",
            lambda pl: pl.col(lo) > pl.min_horizontal(o, c),
            f"{lo} > least({o}, {c})",
        ),
        Check("negative volume", lambda pl: pl.col("volume") < 0, "volume < 0"),
    )


_STATEMENT_HEADER: tuple[Column, ...] = (
    _fmp("date", ColumnType.DATE),
    _fmp("symbol", ColumnType.STRING),
    _fmp("reportedCurrency", ColumnType.STRING),
    Column("cik", ColumnType.STRING, "cik", null_values=("0000000000",)),
    _fmp("filingDate", ColumnType.DATE, "fillingDate"),
    _fmp("acceptedDate", ColumnType.TIMESTAMP, new_york_time=True),
    _fmp("fiscalYear", ColumnType.INT, "calendarYear", sent_as_text=True),
    _fmp("period", ColumnType.STRING),
)

_INCOME_FIELDS = (
    "revenue", "costOfRevenue", "grossProfit", "researchAndDevelopmentExpenses",
    "generalAndAdministrativeExpenses", "sellingAndMarketingExpenses",
    "sellingGeneralAndAdministrativeExpenses", "otherExpenses", "operatingExpenses",
    "costAndExpenses", "netInterestIncome", "interestIncome", "interestExpense",
    "depreciationAndAmortization", "ebitda", "ebit", "nonOperatingIncomeExcludingInterest",
    "operatingIncome", "totalOtherIncomeExpensesNet", "incomeBeforeTax", "incomeTaxExpense",
    "netIncomeFromContinuingOperations", "netIncomeFromDiscontinuedOperations",
    "otherAdjustmentsToNetIncome", "netIncome", "netIncomeDeductions", "bottomLineNetIncome",
    "eps", "epsDiluted", "weightedAverageShsOut", "weightedAverageShsOutDil",
)  # fmt: skip
_BALANCE_FIELDS = (
    "cashAndCashEquivalents", "shortTermInvestments", "cashAndShortTermInvestments",
    "netReceivables", "accountsReceivables", "otherReceivables", "inventory", "prepaids",
    "otherCurrentAssets", "totalCurrentAssets", "propertyPlantEquipmentNet", "goodwill",
    "intangibleAssets", "goodwillAndIntangibleAssets", "longTermInvestments", "taxAssets",
    "otherNonCurrentAssets", "totalNonCurrentAssets", "otherAssets", "totalAssets",
    "totalPayables", "accountPayables", "otherPayables", "accruedExpenses", "shortTermDebt",
    "capitalLeaseObligationsCurrent", "taxPayables", "deferredRevenue", "otherCurrentLiabilities",
    "totalCurrentLiabilities", "longTermDebt", "capitalLeaseObligationsNonCurrent",
    "deferredRevenueNonCurrent", "deferredTaxLiabilitiesNonCurrent", "otherNonCurrentLiabilities",
    "totalNonCurrentLiabilities", "otherLiabilities", "capitalLeaseObligations",
    "totalLiabilities", "treasuryStock", "preferredStock", "commonStock", "retainedEarnings",
    "additionalPaidInCapital", "accumulatedOtherComprehensiveIncomeLoss",
    "otherTotalStockholdersEquity", "totalStockholdersEquity", "totalEquity", "minorityInterest",
    "totalLiabilitiesAndTotalEquity", "totalInvestments", "totalDebt", "netDebt",
)  # fmt: skip
_CASH_FLOW_FIELDS = (
    "netIncome", "depreciationAndAmortization", "deferredIncomeTax", "stockBasedCompensation",
    "changeInWorkingCapital", "accountsReceivables", "inventory", "accountsPayables",
    "otherWorkingCapital", "otherNonCashItems", "netCashProvidedByOperatingActivities",
    "investmentsInPropertyPlantAndEquipment", "acquisitionsNet", "purchasesOfInvestments",
    "salesMaturitiesOfInvestments", "otherInvestingActivities",
    "netCashProvidedByInvestingActivities", "netDebtIssuance", "longTermNetDebtIssuance",
    "shortTermNetDebtIssuance", "netStockIssuance", "netCommonStockIssuance",
    "commonStockIssuance", "commonStockRepurchased", "netPreferredStockIssuance",
    "netDividendsPaid", "commonDividendsPaid", "preferredDividendsPaid",
    "otherFinancingActivities", "netCashProvidedByFinancingActivities",
    "effectOfForexChangesOnCash", "netChangeInCash", "cashAtEndOfPeriod",
    "cashAtBeginningOfPeriod", "operatingCashFlow", "capitalExpenditure", "freeCashFlow",
    "incomeTaxesPaid", "interestPaid",
)  # fmt: skip
# Money is stored as double: FMP sends fractional and string amounts at times, and a double holds
# every whole amount up to 9e15 exactly.
_LEGACY_RENAMES = {"epsdiluted": "epsDiluted"}


def _statement(name: str, endpoint: str, fields: tuple[str, ...], what: str) -> Dataset:
    return Dataset(
        name=name,
        endpoint=endpoint,
        kind="statement",
        description=f"{what}, annual (period FY) and quarterly (Q1..Q4) rows; newest filings win.",
        columns=_STATEMENT_HEADER + _floats(fields, _LEGACY_RENAMES),
        key=("symbol", "date", "period"),
        partition="ingest_date",
        checks=(
            Check("missing period end", lambda pl: pl.col("date").is_null(), "date IS NULL"),
            Check("missing period", lambda pl: pl.col("period").is_null(), "period IS NULL"),
            # Without either, nothing says when the figures became public: a backtest could
            # use them too early. With the filing date only, Gold counts them from that day.
            Check(
                "no acceptance or filing time",
                lambda pl: pl.col("accepted_date").is_null() & pl.col("filing_date").is_null(),
                "accepted_date IS NULL AND filing_date IS NULL",
            ),
        ),
        prefer_newest="accepted_date",
        figures=("reported_currency", *(c.name for c in _floats(fields))),
    )


_PRICE_COLUMNS = (
    _fmp("symbol", ColumnType.STRING),
    _fmp("date", ColumnType.DATE),
)

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="prices",
            endpoint="historical-price-eod/full",
            kind="prices",
            description="Daily OHLCV bars, split-adjusted (not dividend-adjusted), one row per session.",
            columns=_PRICE_COLUMNS
            + _floats(("open", "high", "low", "close"))
            + (_fmp("volume", ColumnType.INT),)
            + _floats(("change", "changePercent", "vwap")),
            key=("symbol", "date"),
            partition="date",
            checks=_ohlc_checks("open", "high", "low", "close"),
            market=MarketEndpoint(
                "eod-bulk",
                "date",
                csv_header=("symbol", "date", "open", "low", "high", "close", "adjClose", "volume"),
            ),
        ),
        Dataset(
            name="adjusted_prices",
            endpoint="historical-price-eod/dividend-adjusted",
            kind="prices",
            description="Daily bars adjusted for splits and dividends (may need a higher plan).",
            columns=_PRICE_COLUMNS
            + _floats(("adjOpen", "adjHigh", "adjLow", "adjClose"))
            + (_fmp("volume", ColumnType.INT),),
            key=("symbol", "date"),
            partition="date",
            checks=_ohlc_checks("adj_open", "adj_high", "adj_low", "adj_close"),
            default=False,
        ),
        _statement("income_statement", "income-statement", _INCOME_FIELDS, "Income statements"),
        _statement("balance_sheet", "balance-sheet-statement", _BALANCE_FIELDS, "Balance sheets"),
        _statement("cash_flow", "cash-flow-statement", _CASH_FLOW_FIELDS, "Cash flow statements"),
        Dataset(
            name="profile",
            endpoint="profile",
            kind="profile",
            description="Company profile as of the run: name, sector, industry, exchange, size.",
            columns=(
                _fmp("symbol", ColumnType.STRING),
                *_floats(("price",)),
                _fmp("marketCap", ColumnType.FLOAT, "mktCap"),
                *_floats(("beta", "lastDividend")),
                _fmp("range", ColumnType.STRING),
                *_floats(("change", "changePercentage")),
                _fmp("volume", ColumnType.INT),
                _fmp("averageVolume", ColumnType.INT, "volAvg"),
                *(
                    _fmp(f, ColumnType.STRING)
                    for f in (
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
                    )
                ),
                _fmp("fullTimeEmployees", ColumnType.INT, sent_as_text=True),
                *(
                    _fmp(f, ColumnType.STRING)
                    for f in ("phone", "address", "city", "state", "zip", "image")
                ),
                _fmp("ipoDate", ColumnType.DATE),
                *(
                    _fmp(f, ColumnType.BOOL)
                    for f in ("defaultImage", "isEtf", "isActivelyTrading", "isAdr", "isFund")
                ),
            ),
            key=("symbol",),
            partition="ingest_date",
            checks=(
                Check(
                    "missing company name",
                    lambda pl: pl.col("company_name").is_null(),
                    "company_name IS NULL",
                ),
            ),
        ),
        Dataset(
            name="splits",
            endpoint="splits",
            kind="events",
            description=(
                "Stock splits, every one FMP knows for the symbol: on `date` each share became "
                "`numerator` / `denominator` shares (4:1 is 4 / 1)."
            ),
            columns=(
                _fmp("symbol", ColumnType.STRING),
                _fmp("date", ColumnType.DATE),
                *_floats(("numerator", "denominator")),
            ),
            key=("symbol", "date"),
            partition="ingest_date",
            checks=(
                Check(
                    "missing or non-positive split ratio",
                    lambda pl: pl.any_horizontal(
                        pl.col(c).is_null() | (pl.col(c) <= 0) for c in ("numerator", "denominator")
                    ),
                    "numerator IS NULL OR denominator IS NULL OR numerator <= 0 OR denominator <= 0",
                ),
                Check("missing split date", lambda pl: pl.col("date").is_null(), "date IS NULL"),
            ),
            market=MarketEndpoint("splits-calendar", "range"),
            # By default, though it costs a request per ticker each night: Gold's per-share
            # figures and prices are only consistent across a split with it.
        ),
    )
}

DEFAULT_DATASETS: tuple[str, ...] = tuple(name for name, d in DATASETS.items() if d.default)


def get_dataset(name: str) -> Dataset:
    """The registered dataset called `name`; a KeyError names the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def schema_markdown() -> str:
    """The lake's tables as Markdown (docs/schemas.md is this text, checked by a test)."""
    lines = [
        "# Lake schemas",
        "",
        "Generated from `stock_pipeline/datasets.py` by `stock-pipeline schema`; do not edit.",
        "Types are Spark SQL names; the Parquet files hold the Arrow equivalents (string, date32,",
        "timestamp[us, UTC], double, int64, bool). The partition column comes from the path.",
    ]
    for dataset in DATASETS.values():
        lines += [
            "",
            f"## {dataset.name}",
            "",
            dataset.description,
            "",
            f"- FMP endpoint: `/stable/{dataset.endpoint}`",
            f"- key: {', '.join(dataset.key)} (readers keep the newest `_ingested_at`)",
            f"- partition: `{dataset.partition}=YYYY-MM-DD`"
            + (" (the row's date)" if dataset.partition_in_data else " (the run's date, UTC)"),
            f"- default: {'yes' if dataset.default else 'no (ask with --datasets)'}",
        ]
        if dataset.checks:
            lines.append(f"- quarantined when: {', '.join(c.reason for c in dataset.checks)}")
        lines += ["", "| column | type | FMP field |", "|---|---|---|"]
        for column in dataset.table_columns:
            source = f"`{column.source}`" if column.source else _ORIGIN.get(column.name, "")
            lines.append(f"| `{column.name}` | {column.type.spark} | {source} |")
    lines += [
        "",
        "## quarantine (every dataset)",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
    ]
    for column in (*QUARANTINE_COLUMNS, Column("ingest_date", ColumnType.DATE)):
        lines.append(f"| `{column.name}` | {column.type.spark} | {_ORIGIN.get(column.name, '')} |")
    return "\n".join(lines) + "\n"


def column_meaning(column: Column) -> str:
    """What a registry column holds, in a few words: the FMP field it comes from, or its role."""
    if column.source:
        return f"FMP field {column.source}"
    return _ORIGIN.get(column.name, "")


_ORIGIN = {
    RUN_ID_COLUMN: "the run that wrote the row",
    INGESTED_AT_COLUMN: "when that run started (UTC)",
    EXTRA_COLUMN: "JSON object of fields FMP sent that the schema does not know",
    REASON_COLUMN: "every rule the row broke, joined with '; '",
    RAW_COLUMN: "the record exactly as FMP sent it (JSON)",
    "record_date": "the record's date as sent",
    "date": "partition (path)",
    "ingest_date": "partition (path): the run's date",
    "symbol": "ticker symbol",
}
