"""The medallion tables as SQL: Bronze and Silver DDL, the per-batch dedup + MERGE, the type-2
company history, the Silver data-quality split and the Gold views.

Everything here is text built from the dataset registry, in the Databricks SQL dialect, so the
Databricks notebooks, the local `stock-pipeline lakehouse` command and the tests run the same
statements and the two halves of the product cannot drift apart. Nothing here touches an engine.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stock_pipeline.datasets import (
    DATASETS,
    INGESTED_AT_COLUMN,
    QUARANTINE_COLUMNS,
    REASON_COLUMN,
    RUN_ID_COLUMN,
    Column,
    ColumnType,
    Dataset,
)
from stock_pipeline.market_calendar import EARLIEST_SESSION, NEW_YORK, sessions_between

__all__ = [
    "BRONZE_LINEAGE",
    "COMPANY_ATTRIBUTES",
    "GOLD_VIEWS",
    "RSI_TABLE",
    "SILVER_LINEAGE",
    "SOURCE_IS_NEWER",
    "TRADING_DAYS_PER_YEAR",
    "Tables",
    "bronze_table",
    "check_split_sql",
    "create_table_sql",
    "dedup_sql",
    "dim_company_columns",
    "exchange_sessions",
    "gold_view_sql",
    "keep_rejects_sql",
    "merge_condition",
    "merge_sql",
    "refresh_rsi",
    "rejects_columns",
    "rsi_columns",
    "rsi_extend_sql",
    "rsi_invalidate_sql",
    "rsi_pending_sql",
    "runs_columns",
    "scd2_merge_sql",
    "silver_columns",
    "silver_table",
]

SOURCE_FILE = "_source_file"
SOURCE_MODIFIED_AT = "_source_modified_at"
RESCUED_DATA = "_rescued_data"
#: Columns Auto Loader adds in Bronze: where each row came from, and what did not fit the schema.
BRONZE_LINEAGE: tuple[Column, ...] = (
    Column(SOURCE_FILE, ColumnType.STRING),
    Column(SOURCE_MODIFIED_AT, ColumnType.TIMESTAMP),
    Column(RESCUED_DATA, ColumnType.STRING),
)
#: Silver keeps the file each row came from, for audits.
SILVER_LINEAGE: tuple[Column, ...] = (Column(SOURCE_FILE, ColumnType.STRING),)
TRADING_DAYS_PER_YEAR = 252

#: Profile fields whose change opens a new version of a company in `dim_company` (type 2).
COMPANY_ATTRIBUTES: tuple[str, ...] = (
    "company_name", "sector", "industry", "exchange", "exchange_full_name", "country",
    "currency", "cik", "isin", "cusip", "ceo", "ipo_date", "is_etf", "is_adr", "is_fund",
    "is_actively_trading",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Tables:
    """Where the tables live: `catalog.schema.table` on Databricks, a bare name elsewhere."""

    catalog: str | None = None
    schema: str | None = None

    def name(self, table: str) -> str:
        return ".".join(_quoted(part) for part in (self.catalog, self.schema, table) if part)

    @property
    def namespace(self) -> str | None:
        """`catalog.schema` (or the schema alone), the thing CREATE SCHEMA creates."""
        parts = (self.catalog, self.schema)
        return ".".join(_quoted(p) for p in parts if p) if self.schema else None


def _quoted(name: str) -> str:
    """A name as SQL needs it: as it is when it is a plain identifier, else in backticks."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return name
    return "`" + name.replace("`", "``") + "`"


def bronze_table(dataset: Dataset | str) -> str:
    """Bronze table name; "quarantine" for the quarantined rows of every dataset."""
    name = dataset if isinstance(dataset, str) else dataset.name
    return f"bronze_{name}"


def silver_table(dataset: Dataset) -> str:
    return "dim_company" if dataset.name == "profile" else f"silver_{dataset.name}"


def bronze_columns(dataset: Dataset | None) -> tuple[Column, ...]:
    """A Bronze table's columns; `None` for the quarantine table (with a `dataset` column)."""
    if dataset is None:
        return (
            Column("dataset", ColumnType.STRING),
            *QUARANTINE_COLUMNS,
            Column("ingest_date", ColumnType.DATE),
            *BRONZE_LINEAGE,
        )
    return (*dataset.table_columns, *BRONZE_LINEAGE)


def silver_columns(dataset: Dataset) -> tuple[Column, ...]:
    """A Silver table's columns: the dataset's, its lineage and the source file."""
    return (*dataset.table_columns, *SILVER_LINEAGE)


def rejects_columns() -> tuple[Column, ...]:
    """`silver_rejects`: rows of any dataset that broke a check, keyed like the datasets, with
    every reason and the whole row as JSON."""
    return (
        Column("dataset", ColumnType.STRING),
        Column("symbol", ColumnType.STRING),
        Column("date", ColumnType.DATE),
        Column("period", ColumnType.STRING),
        Column(REASON_COLUMN, ColumnType.STRING),
        Column("_row", ColumnType.STRING),
        Column(RUN_ID_COLUMN, ColumnType.STRING),
        Column(INGESTED_AT_COLUMN, ColumnType.TIMESTAMP),
        Column(SOURCE_FILE, ColumnType.STRING),
    )


def runs_columns() -> tuple[Column, ...]:
    """`bronze_runs`: the run manifests (`_runs/<run_id>.json`), the universe as a JSON array."""
    return (
        Column("run_id", ColumnType.STRING),
        Column("status", ColumnType.STRING),
        Column("started_at", ColumnType.TIMESTAMP),
        Column("finished_at", ColumnType.TIMESTAMP),
        Column("symbols", ColumnType.STRING),
        *BRONZE_LINEAGE[:2],
    )


def dim_company_columns() -> tuple[Column, ...]:
    profile = DATASETS["profile"]
    return (
        profile.column("symbol"),
        *(profile.column(name) for name in COMPANY_ATTRIBUTES),
        Column("valid_from", ColumnType.TIMESTAMP),
        Column("valid_to", ColumnType.TIMESTAMP),
        Column("is_current", ColumnType.BOOL),
        Column("_attr_hash", ColumnType.STRING),
        Column(RUN_ID_COLUMN, ColumnType.STRING),
        Column(INGESTED_AT_COLUMN, ColumnType.TIMESTAMP),
    )


def create_table_sql(
    table: str,
    columns: Sequence[Column],
    *,
    cluster_by: Sequence[str] = (),
    change_data_feed: bool = False,
    using: str | None = "DELTA",
) -> str:
    """CREATE TABLE IF NOT EXISTS for a Delta table, liquid-clustered on `cluster_by`."""
    body = ",\n  ".join(f"{c.name} {c.type.spark}" for c in columns)
    sql = f"CREATE TABLE IF NOT EXISTS {table} (\n  {body}\n)"
    if using:
        sql += f" USING {using}"
    if cluster_by:
        sql += f"\nCLUSTER BY ({', '.join(cluster_by)})"
    if change_data_feed:
        sql += "\nTBLPROPERTIES (delta.enableChangeDataFeed = true)"
    return sql


def dedup_sql(dataset: Dataset, source: str) -> str:
    """One row per key from `source`, the newest `_ingested_at` winning (then the newest file)."""
    columns = ", ".join(c.name for c in silver_columns(dataset))
    keys = ", ".join(dataset.key)
    return (
        f"SELECT {columns} FROM (\n"
        f"  SELECT {columns},\n"
        f"    ROW_NUMBER() OVER (PARTITION BY {keys} "
        f"ORDER BY {INGESTED_AT_COLUMN} DESC, {SOURCE_FILE} DESC) AS _row_rank\n"
        f"  FROM {source}\n"
        f") AS ranked WHERE _row_rank = 1"
    )


def _violation(dataset: Dataset) -> str:
    return " OR ".join(f"COALESCE({c.violated_sql}, FALSE)" for c in dataset.checks) or "FALSE"


def check_split_sql(dataset: Dataset, source: str) -> tuple[str, str]:
    """(rows that pass every check, rows that break one with a `_reason`) from `source`.

    Quarantine at ingest already keeps such rows out of raw/; these checks guard Silver against
    anything that reaches Bronze another way, and the rejected rows are counted and kept."""
    columns = ", ".join(c.name for c in silver_columns(dataset))
    violated = _violation(dataset)
    reasons = ", ".join(
        f"CASE WHEN COALESCE({c.violated_sql}, FALSE) THEN '{c.reason}' END" for c in dataset.checks
    )
    reason = f"concat_ws('; ', {reasons})" if reasons else "CAST(NULL AS STRING)"
    passing = f"SELECT {columns} FROM {source} WHERE NOT ({violated})"
    rejected = (
        f"SELECT '{dataset.name}' AS dataset, {columns}, {reason} AS _reason "
        f"FROM {source} WHERE {violated}"
    )
    return passing, rejected


#: The Silver MERGE updates a row only with a newer one: replays and stale copies change nothing.
SOURCE_IS_NEWER = f"s.{INGESTED_AT_COLUMN} > t.{INGESTED_AT_COLUMN}"


def merge_condition(dataset: Dataset) -> str:
    """The MERGE's join of source `s` and target `t` on the dataset's key."""
    return " AND ".join(f"t.{k} = s.{k}" for k in dataset.key)


def merge_sql(dataset: Dataset, source: str, target: str) -> str:
    """The Silver MERGE: deduplicated source rows update only older target rows; replays change
    nothing, since a replayed row is not newer than the one it already wrote."""
    columns = [c.name for c in silver_columns(dataset)]
    updates = ", ".join(f"{c} = s.{c}" for c in columns if c not in dataset.key)
    return (
        f"MERGE INTO {target} AS t\n"
        f"USING (\n{dedup_sql(dataset, source)}\n) AS s\n"
        f"ON {merge_condition(dataset)}\n"
        f"WHEN MATCHED AND {SOURCE_IS_NEWER} THEN UPDATE SET {updates}\n"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)}) "
        f"VALUES ({', '.join(f's.{c}' for c in columns)})"
    )


def keep_rejects_sql(dataset: Dataset, rejected: str, target: str) -> str:
    """Keep rejected rows once: a replayed batch finds them already there."""
    own = {c.name for c in silver_columns(dataset)} | {"dataset", REASON_COLUMN}
    row = ", ".join(f"'{c.name}', s.{c.name}" for c in silver_columns(dataset))
    values = {
        c.name: f"s.{c.name}" if c.name in own else f"CAST(NULL AS {c.type.spark.upper()})"
        for c in rejects_columns()
    }
    values["_row"] = f"to_json(named_struct({row}))"
    match = " AND ".join(
        f"t.{c} <=> s.{c}" for c in (*dataset.key, "dataset", INGESTED_AT_COLUMN, SOURCE_FILE)
    )
    return (
        f"MERGE INTO {target} AS t USING ({rejected}) AS s ON {match}\n"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(values)}) VALUES ({', '.join(values.values())})"
    )


def scd2_merge_sql(source: str, target: str) -> str:
    """The type-2 MERGE into dim_company. Every change of the tracked attributes in `source`
    becomes a version, in the order the profiles were ingested, even several in one batch (a
    catch-up after paused nights): the current row is closed at the first change (`valid_to`,
    `is_current = false`), each version ends where the next begins, the last one is current.
    Profiles no newer than the current row, or unchanged, add nothing, so replays are harmless."""
    attributes = ", ".join(COMPANY_ATTRIBUTES)
    hashed = ", ".join(f"COALESCE(CAST({a} AS STRING), '')" for a in COMPANY_ATTRIBUTES)
    columns = [c.name for c in dim_company_columns()]
    inserted = ["(m.valid_to IS NULL)" if c == "is_current" else f"m.{c}" for c in columns]
    return f"""MERGE INTO {target} AS t
USING (
  WITH profiles AS (
    SELECT symbol, {attributes}, {INGESTED_AT_COLUMN} AS valid_from,
      md5(concat_ws('|', {hashed})) AS _attr_hash, {RUN_ID_COLUMN}, {INGESTED_AT_COLUMN},
      ROW_NUMBER() OVER (PARTITION BY symbol, {INGESTED_AT_COLUMN} ORDER BY {SOURCE_FILE} DESC)
        AS _same_moment
    FROM {source}
  ), fresh AS (
    SELECT p.*, c._attr_hash AS _current_hash
    FROM profiles AS p
    LEFT JOIN {target} AS c ON c.symbol = p.symbol AND c.is_current
    WHERE p._same_moment = 1 AND (c.valid_from IS NULL OR p.valid_from > c.valid_from)
  ), changes AS (
    SELECT *,
      COALESCE(LAG(_attr_hash) OVER (PARTITION BY symbol ORDER BY valid_from), _current_hash)
        AS _previous_hash
    FROM fresh
  ), versions AS (
    SELECT *,
      LEAD(valid_from) OVER (PARTITION BY symbol ORDER BY valid_from) AS valid_to,
      ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY valid_from) AS _nth
    FROM changes
    WHERE _previous_hash IS NULL OR _previous_hash <> _attr_hash
  )
  SELECT symbol AS _merge_key, * FROM versions WHERE _nth = 1 AND _current_hash IS NOT NULL
  UNION ALL
  SELECT CAST(NULL AS STRING) AS _merge_key, * FROM versions
) AS m
ON t.symbol = m._merge_key AND t.is_current
WHEN MATCHED THEN UPDATE SET is_current = FALSE, valid_to = m.valid_from
WHEN NOT MATCHED AND m._merge_key IS NULL THEN
  INSERT ({", ".join(columns)}) VALUES ({", ".join(inserted)})"""


# --- Gold -------------------------------------------------------------------------------------


def _window(rows: int | None = None, *, order: str = "date") -> str:
    frame = (
        f" ROWS BETWEEN {rows - 1} PRECEDING AND CURRENT ROW"
        if rows
        else " ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
        if rows is None
        else ""
    )
    return f"OVER (PARTITION BY symbol ORDER BY {order}{frame})"


def _when(enough: str, expr: str) -> str:
    return f"CASE WHEN {enough} THEN {expr} END"


#: Wilder's RSI period, as TA-Lib's default and every charting tool use it.
RSI_PERIOD = 14
#: Rows per symbol one extension pass adds: keeps (13/14)^-t within a double's range and exact.
RSI_BLOCK_ROWS = 2000
RSI_TABLE = "gold_rsi_14"


def rsi_columns() -> tuple[Column, ...]:
    """`gold_rsi_14`: per symbol and session, Wilder's smoothed average gain and loss and RSI(14),
    with the close and session number they were computed from (the state the next night extends)."""
    return (
        Column("symbol", ColumnType.STRING),
        Column("date", ColumnType.DATE),
        Column("close", ColumnType.FLOAT),
        Column("session_number", ColumnType.INT),
        Column("avg_gain", ColumnType.FLOAT),
        Column("avg_loss", ColumnType.FLOAT),
        Column("rsi_14", ColumnType.FLOAT),
    )


def rsi_invalidate_sql(tables: Tables) -> str:
    """Drop the RSI rows a changed Silver price makes wrong: from the first session (at or before
    the last one computed) whose close changed or that arrived late, to the end; and every row of
    a symbol with too few sessions for an average yet, which starts over once it has them."""
    state, prices = tables.name(RSI_TABLE), tables.name("silver_prices")
    # A change at or before the seed (the 15th session) changes the seed: the symbol starts over.
    return f"""MERGE INTO {state} AS t
USING (
  SELECT c.symbol, MIN(c.since) AS since, MIN(g.seed_date) AS seed_date FROM (
    SELECT p.symbol, MIN(p.date) AS since
    FROM {prices} AS p
    JOIN (SELECT symbol, MAX(date) AS last_date FROM {state} GROUP BY symbol) AS l
      ON l.symbol = p.symbol AND p.date <= l.last_date
    LEFT JOIN {state} AS s ON s.symbol = p.symbol AND s.date = p.date
    WHERE s.date IS NULL OR s.close <> p.close
    GROUP BY p.symbol
    UNION ALL
    SELECT symbol, MIN(date) AS since FROM {state}
    GROUP BY symbol HAVING MAX(session_number) <= {RSI_PERIOD}
  ) AS c
  LEFT JOIN (
    SELECT symbol, MIN(CASE WHEN session_number = {RSI_PERIOD + 1} THEN date END) AS seed_date
    FROM {state} GROUP BY symbol
  ) AS g ON g.symbol = c.symbol
  GROUP BY c.symbol
) AS d
ON t.symbol = d.symbol
WHEN MATCHED AND (t.date >= d.since OR d.since <= d.seed_date) THEN DELETE"""


def rsi_extend_sql(tables: Tables, block_rows: int = RSI_BLOCK_ROWS) -> str:
    """Add up to `block_rows` sessions per symbol to `gold_rsi_14`, carrying Wilder's averages.

    Wilder: avg_t = (13 * avg_t-1 + x_t) / 14, seeded on a symbol's 15th session with the simple
    means of its first 14 gains and losses (TA-Lib's RSI). From an anchor a with average A, that
    recursion is exactly avg_t = r^t * (A * r^-a + sum over a < k <= t of x_k * r^-k / 14), with
    r = 13/14: a running sum, which window functions compute. The anchor is the last row computed
    (a = 0) or, for a symbol starting out, its seed (a = 15). A night adds one row per symbol;
    every term is positive, so nothing cancels and the result is exact to rounding.
    """
    state, prices = tables.name(RSI_TABLE), tables.name("silver_prices")
    # Doubles, not decimal literals: Spark would round 13.0 / 14.0 to six decimals.
    n, r = RSI_PERIOD, f"(CAST({RSI_PERIOD - 1} AS DOUBLE) / {RSI_PERIOD})"
    if not n + 1 < block_rows <= 5000:
        # Below: a new symbol's seed needs n + 1 rows. Above: r^-t nears a double's limit.
        raise ValueError(f"block_rows must be from {n + 2} to 5000, not {block_rows}")
    seed_rows = f"session_number BETWEEN 2 AND {n + 1}"
    running = (
        "OVER (PARTITION BY symbol ORDER BY t ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )
    smoothed = {
        side: f"POWER({r}, t) * (anchor_{side} * POWER({r}, -a) + COALESCE(sum_{side}, 0) / {n})"
        for side in ("gain", "loss")
    }
    columns = [c.name for c in rsi_columns()]
    return f"""MERGE INTO {state} AS t
USING (
  WITH last AS (
    SELECT symbol, date AS last_date, close AS last_close, session_number AS last_number,
      avg_gain AS last_gain, avg_loss AS last_loss
    FROM (
      SELECT *, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY date DESC) AS _recency FROM {state}
    ) AS numbered
    WHERE _recency = 1
  ), fresh AS (
    SELECT p.symbol, p.date, p.close, l.last_number, l.last_gain, l.last_loss,
      ROW_NUMBER() OVER (PARTITION BY p.symbol ORDER BY p.date) AS t,
      p.close - COALESCE(LAG(p.close) OVER (PARTITION BY p.symbol ORDER BY p.date), l.last_close)
        AS change
    FROM {prices} AS p
    LEFT JOIN last AS l ON l.symbol = p.symbol
    WHERE l.last_date IS NULL OR p.date > l.last_date
  ), block AS (
    SELECT *, COALESCE(last_number, 0) + t AS session_number,
      GREATEST(change, 0) AS gain, GREATEST(-change, 0) AS loss
    FROM fresh
    WHERE t <= {block_rows}
  ), anchored AS (
    SELECT *,
      CASE WHEN last_number IS NULL THEN {n + 1} ELSE 0 END AS a,
      COALESCE(last_gain, AVG(CASE WHEN {seed_rows} THEN gain END) OVER (PARTITION BY symbol))
        AS anchor_gain,
      COALESCE(last_loss, AVG(CASE WHEN {seed_rows} THEN loss END) OVER (PARTITION BY symbol))
        AS anchor_loss
    FROM block
  ), summed AS (
    SELECT *,
      SUM(CASE WHEN t > a THEN gain * POWER({r}, -t) END) {running} AS sum_gain,
      SUM(CASE WHEN t > a THEN loss * POWER({r}, -t) END) {running} AS sum_loss
    FROM anchored
  ), averaged AS (
    SELECT symbol, date, close, session_number,
      CASE WHEN session_number > {n} THEN {smoothed["gain"]} END AS avg_gain,
      CASE WHEN session_number > {n} THEN {smoothed["loss"]} END AS avg_loss
    FROM summed
  )
  -- TA-Lib's rule: no movement at all over the averages reads 0.
  SELECT *, CASE WHEN avg_gain + avg_loss = 0 THEN CAST(0 AS DOUBLE)
    ELSE 100 * avg_gain / (avg_gain + avg_loss) END AS rsi_14
  FROM averaged
) AS s
ON t.symbol = s.symbol AND t.date = s.date
WHEN NOT MATCHED THEN INSERT ({", ".join(columns)}) VALUES ({", ".join(f"s.{c}" for c in columns)})"""


def rsi_pending_sql(tables: Tables) -> str:
    """How many Silver prices `gold_rsi_14` has not reached yet (0: it is complete)."""
    return f"""SELECT COUNT(*) AS pending FROM {tables.name("silver_prices")} AS p
LEFT ANTI JOIN {tables.name(RSI_TABLE)} AS s ON s.symbol = p.symbol AND s.date = p.date"""


def refresh_rsi(
    run: Callable[[str], object],
    count: Callable[[str], int],
    tables: Tables,
    *,
    block_rows: int = RSI_BLOCK_ROWS,
) -> int:
    """Bring `gold_rsi_14` up to Silver on any engine (`run` executes a statement, `count` reads
    one number): drop what changed prices made wrong, then extend it a block at a time. A night
    takes one pass; returns the passes taken."""
    run(rsi_invalidate_sql(tables))
    passes, pending = 0, count(rsi_pending_sql(tables))
    while pending:
        run(rsi_extend_sql(tables, block_rows))
        passes, before, pending = passes + 1, pending, count(rsi_pending_sql(tables))
        if pending >= before:  # a pass that adds nothing would loop for ever
            raise RuntimeError(f"{RSI_TABLE} did not grow: {pending} Silver prices still pending")
    return passes


def price_features_sql(tables: Tables) -> str:
    """Daily price features; a window value is NULL until the symbol has enough history."""
    ordered = "OVER (PARTITION BY symbol ORDER BY date)"
    n = "_n"
    annualize = f"SQRT({TRADING_DAYS_PER_YEAR})"
    returns = ", ".join(
        f"{_when(f'{n} > {k}', f'close / LAG(close, {k}) {ordered} - 1')} AS return_{k}d"
        for k in (5, 20, 60)
    )
    moving = ", ".join(
        f"{_when(f'{n} >= {k}', f'AVG(close) {_window(k)}')} AS sma_{k}" for k in (20, 50, 200)
    )
    # k returns need k + 1 prices: the first row has no return.
    vol = ", ".join(
        f"{_when(f'{n} > {k}', f'STDDEV_SAMP(log_return) {_window(k)} * {annualize}')}"
        f" AS volatility_{k}d"
        for k in (20, 60)
    )
    year = TRADING_DAYS_PER_YEAR
    return f"""CREATE OR REPLACE VIEW {tables.name("price_features")} AS
WITH base AS (
  SELECT symbol, date, open, high, low, close, volume,
    ROW_NUMBER() {ordered} AS {n},
    close / LAG(close) {ordered} - 1 AS daily_return,
    LN(close / LAG(close) {ordered}) AS log_return,
    GREATEST(close - LAG(close) {ordered}, 0) AS _gain,
    GREATEST(LAG(close) {ordered} - close, 0) AS _loss
  FROM {tables.name("silver_prices")}
), windows AS (
  SELECT *,
    {returns},
    {moving},
    {vol},
    {_when(f"{n} > 14", f"AVG(_gain) {_window(14)}")} AS _avg_gain_14,
    {_when(f"{n} > 14", f"AVG(_loss) {_window(14)}")} AS _avg_loss_14,
    {_when(f"{n} >= {year}", f"MAX(high) {_window(year)}")} AS high_52w,
    {_when(f"{n} >= {year}", f"MIN(low) {_window(year)}")} AS low_52w,
    MAX(close) {_window(None)} AS _running_peak,
    {_when(f"{n} >= 20", f"AVG(close * volume) {_window(20)}")} AS avg_dollar_volume_20d,
    {_when(f"{n} >= 20", f"AVG(volume) {_window(20)}")} AS _avg_volume_20,
    {_when(f"{n} >= 20", f"STDDEV_SAMP(volume) {_window(20)}")} AS _sd_volume_20
  FROM base
)
SELECT w.symbol, w.date, open, high, low, w.close, volume, daily_return, log_return,
  return_5d, return_20d, return_60d, sma_20, sma_50, sma_200, volatility_20d, volatility_60d,
  r.rsi_14,
  CASE WHEN _avg_loss_14 = 0 AND _avg_gain_14 = 0 THEN CAST(50 AS DOUBLE)
       WHEN _avg_loss_14 = 0 THEN CAST(100 AS DOUBLE)
       ELSE 100 - 100 / (1 + _avg_gain_14 / _avg_loss_14) END AS rsi_14_cutler,
  high_52w, low_52w, w.close / high_52w - 1 AS pct_from_52w_high,
  w.close / low_52w - 1 AS pct_from_52w_low,
  w.close / _running_peak - 1 AS drawdown,
  avg_dollar_volume_20d,
  CASE WHEN _sd_volume_20 > 0 THEN (volume - _avg_volume_20) / _sd_volume_20 END AS volume_zscore_20d
FROM windows AS w
LEFT JOIN {tables.name(RSI_TABLE)} AS r ON r.symbol = w.symbol AND r.date = w.date"""


def _public_on(alias: str) -> str:
    """The New York day a statement became public: its SEC acceptance or, without one (FMP
    leaves it out now and then), its filing date. NULL with neither (which the registry's checks
    keep out of Silver, but a table may hold rows from before that check)."""
    return (
        f"COALESCE(CAST(from_utc_timestamp({alias}.accepted_date, '{NEW_YORK}') AS DATE), "
        f"{alias}.filing_date)"
    )


def fundamentals_pit_sql(tables: Tables) -> str:
    """Trailing-twelve-month fundamentals from quarterly statements, each row stamped with the
    day it became public (`known_from`): the latest SEC acceptance of the statements behind it,
    never the period end, and never earlier for a statement that lacks one."""
    quarter = "period IN ('Q1', 'Q2', 'Q3', 'Q4')"
    ttm = "OVER (PARTITION BY symbol ORDER BY date ROWS BETWEEN 3 PRECEDING AND CURRENT ROW)"
    statements = ("i", "b", "c")
    # Fail closed: GREATEST and MAX skip NULLs, which would date a quarter by its other
    # statements (or by older quarters); an undatable statement makes its rows never usable.
    days = [_public_on(a) for a in statements]
    undatable = " OR ".join(f"{day} IS NULL" for day in days)
    public_on = f"CASE WHEN {undatable} THEN NULL ELSE GREATEST({', '.join(days)}) END"
    unaccepted = " OR ".join(f"{a}.accepted_date IS NULL" for a in statements)
    return f"""CREATE OR REPLACE VIEW {tables.name("fundamentals_pit")} AS
WITH quarters AS (
  SELECT i.symbol, i.date, i.period, i.fiscal_year, i.reported_currency,
    GREATEST(i.accepted_date, b.accepted_date, c.accepted_date) AS _accepted_at,
    {public_on} AS _public_on,
    CASE WHEN {unaccepted} THEN 1 ELSE 0 END AS _by_filing_date,
    i.revenue, i.net_income, i.eps_diluted, i.weighted_average_shs_out,
    i.weighted_average_shs_out_dil,
    c.free_cash_flow, c.operating_cash_flow,
    b.total_assets, b.total_liabilities, b.total_stockholders_equity
  FROM {tables.name("silver_income_statement")} AS i
  JOIN {tables.name("silver_cash_flow")} AS c
    ON c.symbol = i.symbol AND c.date = i.date AND c.period = i.period
  JOIN {tables.name("silver_balance_sheet")} AS b
    ON b.symbol = i.symbol AND b.date = i.date AND b.period = i.period
  WHERE i.{quarter}
), trailing AS (
  SELECT *,
    COUNT(*) {ttm} AS _quarters,
    MIN(date) {ttm} AS _first_period_end,
    CASE WHEN COUNT(_public_on) {ttm} = COUNT(*) {ttm} THEN MAX(_public_on) {ttm} END
      AS _known_from,
    MAX(_accepted_at) {ttm} AS _known_at,
    MAX(_by_filing_date) {ttm} AS _any_by_filing_date,
    SUM(revenue) {ttm} AS _revenue_4q,
    SUM(net_income) {ttm} AS _net_income_4q,
    SUM(eps_diluted) {ttm} AS _eps_diluted_4q,
    SUM(free_cash_flow) {ttm} AS _free_cash_flow_4q,
    SUM(operating_cash_flow) {ttm} AS _operating_cash_flow_4q
  FROM quarters
), complete AS (
  -- Four consecutive quarters span about 9 months between the first and last period end.
  SELECT *, _quarters = 4 AND DATEDIFF(date, _first_period_end) BETWEEN 250 AND 300 AS _full_year
  FROM trailing
)
SELECT symbol, date AS period_end, period, fiscal_year, reported_currency,
  CASE WHEN _any_by_filing_date = 0 THEN _known_at END AS known_at,
  _known_from AS known_from,
  CASE WHEN _any_by_filing_date = 1 THEN 'filing_date' ELSE 'acceptance' END AS known_from_source,
  CASE WHEN _full_year THEN _revenue_4q END AS ttm_revenue,
  CASE WHEN _full_year THEN _net_income_4q END AS ttm_net_income,
  CASE WHEN _full_year THEN _eps_diluted_4q END AS ttm_eps_diluted,
  CASE WHEN _full_year THEN _free_cash_flow_4q END AS ttm_free_cash_flow,
  CASE WHEN _full_year THEN _operating_cash_flow_4q END AS ttm_operating_cash_flow,
  total_assets, total_liabilities, total_stockholders_equity,
  weighted_average_shs_out AS basic_shares,
  weighted_average_shs_out_dil AS diluted_shares
FROM complete"""


def daily_features_sql(tables: Tables) -> str:
    """Prices joined with the fundamentals known on each date: a filing counts from the day after
    it became public (acceptance is often after the close). Of the filings known on a date, the
    one for the latest period counts, so a late filing for an older quarter never replaces it.
    Market value uses the quarter's weighted average basic shares (the statements carry no
    period-end share count)."""
    market_cap = "close * basic_shares"
    return f"""CREATE OR REPLACE VIEW {tables.name("daily_features")} AS
WITH pit AS (
  SELECT *, DATE_ADD(known_from, 1) AS usable_from FROM {tables.name("fundamentals_pit")}
), matched AS (
  SELECT p.symbol, p.date, p.close, p.volume,
    f.period_end, f.known_from, f.known_from_source, f.ttm_revenue, f.ttm_net_income,
    f.ttm_eps_diluted, f.ttm_free_cash_flow, f.basic_shares, f.total_stockholders_equity,
    ROW_NUMBER() OVER (PARTITION BY p.symbol, p.date ORDER BY f.period_end DESC, f.known_from DESC)
      AS _latest
  FROM {tables.name("silver_prices")} AS p
  LEFT JOIN pit AS f ON f.symbol = p.symbol AND f.usable_from <= p.date
)
SELECT symbol, date, close, volume,
  period_end AS fundamentals_period_end, known_from AS fundamentals_known_from,
  known_from_source AS fundamentals_known_from_source,
  ttm_revenue, ttm_net_income, ttm_eps_diluted, ttm_free_cash_flow,
  {market_cap} AS market_cap,
  CASE WHEN ttm_eps_diluted > 0 THEN close / ttm_eps_diluted END AS pe_ratio,
  CASE WHEN ttm_revenue > 0 THEN {market_cap} / ttm_revenue END AS ps_ratio,
  CASE WHEN total_stockholders_equity > 0
    THEN {market_cap} / total_stockholders_equity END AS pb_ratio,
  CASE WHEN {market_cap} > 0 THEN ttm_free_cash_flow / ({market_cap}) END AS fcf_yield
FROM matched
WHERE _latest = 1"""


def data_health_sql(tables: Tables) -> str:
    """Per dataset: the newest data landed, symbols covered against the universe (the symbols of
    the newest run), session gaps against the exchange calendar, quarantined rows, last run."""
    silver = {
        name: tables.name(silver_table(d)) for name, d in DATASETS.items() if d.kind != "profile"
    }
    latest = "\n  UNION ALL\n  ".join(
        f"SELECT '{name}' AS dataset, MAX({'date' if DATASETS[name].kind == 'prices' else 'ingest_date'})"
        f" AS latest_landed, COUNT(DISTINCT symbol) AS symbols_covered, COUNT(*) AS silver_rows "
        f"FROM {table}"
        for name, table in silver.items()
    )
    latest += (
        f"\n  UNION ALL\n  SELECT 'profile' AS dataset, CAST(MAX(valid_from) AS DATE), "
        f"COUNT(DISTINCT symbol), COUNT(*) FROM {tables.name('dim_company')} WHERE is_current"
    )
    gaps = "\n  UNION ALL\n  ".join(
        f"""SELECT '{name}' AS dataset, COUNT(*) AS session_gaps FROM (
    SELECT r.symbol, s.session FROM (
      SELECT symbol, MIN(date) AS first_date, MAX(date) AS last_date FROM {silver[name]} GROUP BY symbol
    ) AS r JOIN {tables.name("ref_exchange_sessions")} AS s
      ON s.session BETWEEN r.first_date AND r.last_date
    LEFT ANTI JOIN {silver[name]} AS p ON p.symbol = r.symbol AND p.date = s.session
  ) AS missing"""
        for name, d in DATASETS.items()
        if d.kind == "prices"
    )
    return f"""CREATE OR REPLACE VIEW {tables.name("data_health")} AS
WITH latest AS (
  {latest}
), gaps AS (
  {gaps}
), quarantined AS (
  SELECT dataset, COUNT(*) AS quarantined_rows FROM {tables.name("bronze_quarantine")} GROUP BY dataset
), runs AS (
  SELECT run_id, status, finished_at, json_array_length(symbols) AS universe,
    ROW_NUMBER() OVER (ORDER BY run_id DESC) AS _recency
  FROM {tables.name("bronze_runs")}
)
SELECT l.dataset, l.latest_landed, l.symbols_covered, r.universe AS symbols_in_universe,
  l.silver_rows, COALESCE(g.session_gaps, 0) AS session_gaps,
  COALESCE(q.quarantined_rows, 0) AS quarantined_rows,
  r.run_id AS last_run_id, r.status AS last_run_status, r.finished_at AS last_run_finished_at
FROM latest AS l
LEFT JOIN gaps AS g ON g.dataset = l.dataset
LEFT JOIN quarantined AS q ON q.dataset = l.dataset
LEFT JOIN runs AS r ON r._recency = 1"""


def exchange_sessions(until: dt.date, since: dt.date = EARLIEST_SESSION) -> list[tuple[dt.date]]:
    """Rows of `ref_exchange_sessions`: every NYSE session from `since` (1990) to `until`."""
    return [(day,) for day in sessions_between(since, until)]


#: Gold views in the order they must be created (later ones read earlier ones).
GOLD_VIEWS = {
    "price_features": price_features_sql,
    "fundamentals_pit": fundamentals_pit_sql,
    "daily_features": daily_features_sql,
    "data_health": data_health_sql,
}


def gold_view_sql(name: str, tables: Tables) -> str:
    return GOLD_VIEWS[name](tables)
