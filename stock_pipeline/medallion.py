"""The medallion tables as SQL: Bronze and Silver DDL, the per-batch dedup + MERGE, the type-2
company history, the Silver data-quality split and the Gold views.

Everything here is text built from the dataset registry, in the Databricks SQL dialect, so the
Databricks notebooks, the local `stock-pipeline lakehouse` command and the tests run the same
statements and the two halves of the product cannot drift apart. Nothing here touches an engine.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from stock_pipeline.datasets import (
    DATASETS,
    INGESTED_AT_COLUMN,
    QUARANTINE_COLUMNS,
    REASON_COLUMN,
    RUN_ID_COLUMN,
    Column,
    ColumnType,
    Dataset,
    column_meaning,
)
from stock_pipeline.market_calendar import EARLIEST_SESSION, NEW_YORK, sessions_between

__all__ = [
    "BRONZE_LINEAGE",
    "COMPANY_ATTRIBUTES",
    "DEFAULT_STATEMENT_BASIS",
    "GOLD_CHANGES",
    "GOLD_NEW_FILES",
    "GOLD_SEEN_FILES",
    "GOLD_TABLES",
    "GOLD_VIEWS",
    "RSI_TABLE",
    "SILVER_LINEAGE",
    "SOURCE_IS_NEWER",
    "TRADING_DAYS_PER_YEAR",
    "StatementBasis",
    "Tables",
    "add_column_sql",
    "bronze_table",
    "check_split_sql",
    "create_table_sql",
    "data_health_alert_sql",
    "dedup_sql",
    "dim_company_columns",
    "exchange_sessions",
    "gold_changes_sql",
    "gold_invalidate_sql",
    "gold_new_files_sql",
    "gold_refill_sql",
    "gold_source",
    "gold_source_sql",
    "gold_view_sql",
    "keep_rejects_sql",
    "merge_condition",
    "merge_sql",
    "missing_columns",
    "refresh_rsi",
    "rejects_columns",
    "rsi_columns",
    "rsi_extend_sql",
    "rsi_invalidate_sql",
    "rsi_pending_sql",
    "runs_columns",
    "scd2_merge_sql",
    "seed_versions_sql",
    "silver_columns",
    "silver_table",
    "versions_columns",
    "versions_merge_sql",
    "versions_table",
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
    comment: str | None = None,
    column_comments: Mapping[str, str] | None = None,
) -> str:
    """CREATE TABLE IF NOT EXISTS for a Delta table, liquid-clustered on `cluster_by`, with the
    table's and its columns' comments where given."""
    notes = column_comments or {}
    body = ",\n  ".join(
        f"{c.name} {c.type.spark}"
        + (f" COMMENT {sql_string(notes[c.name])}" if c.name in notes else "")
        for c in columns
    )
    sql = f"CREATE TABLE IF NOT EXISTS {table} (\n  {body}\n)"
    if using:
        sql += f" USING {using}"
    if cluster_by:
        sql += f"\nCLUSTER BY ({', '.join(cluster_by)})"
    if comment:
        sql += f"\nCOMMENT {sql_string(comment)}"
    if change_data_feed:
        sql += "\nTBLPROPERTIES (delta.enableChangeDataFeed = true)"
    return sql


def sql_string(text: str) -> str:
    """`text` as a Spark SQL string literal (backslash escapes, as Spark reads them)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


#: What the columns the layers add mean, for the tables' column comments.
LAYER_COLUMNS: dict[str, str] = {
    SOURCE_FILE: "the lake file the row was loaded from",
    SOURCE_MODIFIED_AT: "when that file was written to the lake",
    RESCUED_DATA: "fields that did not fit the registry's types (Auto Loader), as JSON",
    "dataset": "the dataset the row belongs to",
}


def table_comments(dataset: Dataset | None, layer: str) -> tuple[str, dict[str, str]]:
    """A Bronze or Silver table's comment and its columns' comments, from the registry."""
    columns = {c.name: column_meaning(c) for c in (dataset.table_columns if dataset else ())}
    columns |= LAYER_COLUMNS
    if dataset is None:
        return f"{layer}: rows the ingester quarantined, every dataset.", columns
    if layer == "Bronze":
        return f"Bronze: {dataset.description} Every row loaded, append-only.", columns
    key = ", ".join(dataset.key)
    return f"Silver: {dataset.description} The newest fetch of each ({key}).", columns


def missing_columns(existing: Iterable[str], wanted: Sequence[Column]) -> list[Column]:
    """The registry's columns a table does not have yet (names compare as the engines do, without
    case)."""
    have = {name.lower() for name in existing}
    return [c for c in wanted if c.name.lower() not in have]


def add_column_sql(table: str, column: Column) -> str:
    """Add a registry column to an existing table (rows already there read NULL in it).

    `CREATE TABLE IF NOT EXISTS` leaves a table as it was created: a column the registry gains
    later is added this way, before any MERGE names it."""
    return f"ALTER TABLE {table} ADD COLUMN {column.name} {column.type.spark}"


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


FILED_BEFORE = "_filed_before"
LAST_SEEN_AT = "_last_seen_at"
FILED_UNTIL = "_filed_until"


def versions_table(dataset: Dataset) -> str:
    """Every version of a dataset's keys (datasets with `figures`: the statements)."""
    return f"silver_{dataset.name}_versions"


def versions_columns(dataset: Dataset) -> tuple[Column, ...]:
    """A versions table's columns: Silver's, with `_ingested_at` the fetch that first saw the
    version; `_filed_before`, the newest filing day (acceptance, else filing date) any fetch of
    the key showed before that; and, for the version that is newest, `_last_seen_at` and
    `_filed_until`, the last fetch that showed it and the newest filing day seen up to it."""
    return (
        *silver_columns(dataset),
        Column(FILED_BEFORE, ColumnType.DATE),
        Column(LAST_SEEN_AT, ColumnType.TIMESTAMP),
        Column(FILED_UNTIL, ColumnType.DATE),
    )


def versions_merge_sql(dataset: Dataset, source: str, target: str) -> str:
    """Keep each new version of a key from the fetches in `source`: a fetch whose figures differ
    from the fetch before it (in `source`, in ingest order, or else the newest version `target`
    holds). The same figures again, or with only their times changed, add nothing but bring the
    newest version's `_last_seen_at` and `_filed_until` forward; figures that change back are a
    version too (FMP reverted them). A fetch no newer than the last one seen is a replay or came
    out of order, as Silver's MERGE ignores it, and adds nothing, so a replayed batch changes
    nothing. Figures compare with `<=>`, not through a hash of their text, which would depend on
    how an engine prints a double."""
    columns = [c.name for c in silver_columns(dataset)]
    keys = ", ".join(dataset.key)
    on = " AND ".join(f"n.{k} = s.{k}" for k in dataset.key)
    window = f"PARTITION BY {keys} ORDER BY {INGESTED_AT_COLUMN}"
    same = " AND ".join(f"{f} <=> _previous_{f}" for f in dataset.figures)
    previous = ",\n      ".join(
        f"CASE WHEN _first THEN _newest_{f} ELSE LAG({f}) OVER ({window}) END AS _previous_{f}"
        for f in dataset.figures
    )
    newest_figures = [f"_newest_{f}" for f in dataset.figures]
    newest_columns = ", ".join(f"{f} AS _newest_{f}" for f in dataset.figures)
    own_day = _public_on()
    inserted = [*columns, FILED_BEFORE, LAST_SEEN_AT, FILED_UNTIL]
    return f"""MERGE INTO {target} AS t
USING (
  WITH sightings AS (
    SELECT {", ".join(columns)}, {own_day} AS _own_day,
      ROW_NUMBER() OVER (PARTITION BY {keys}, {INGESTED_AT_COLUMN} ORDER BY {SOURCE_FILE} DESC)
        AS _same_moment
    FROM {source}
  ), newest AS (
    SELECT {keys}, {INGESTED_AT_COLUMN} AS _newest_at, {LAST_SEEN_AT} AS _newest_seen,
      {FILED_UNTIL} AS _newest_filed, {newest_columns}
    FROM (
      SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {INGESTED_AT_COLUMN} DESC)
        AS _recency
      FROM {target}
    ) AS ranked WHERE _recency = 1
  ), fresh AS (
    SELECT s.*, n._newest_at, n._newest_seen, n._newest_filed,
      {", ".join(f"n.{c}" for c in newest_figures)}, n._newest_at IS NOT NULL AS _has_newest,
      ROW_NUMBER() OVER (PARTITION BY {", ".join(f"s.{k}" for k in dataset.key)}
        ORDER BY s.{INGESTED_AT_COLUMN}) = 1 AS _first
    FROM sightings AS s LEFT JOIN newest AS n ON {on}
    WHERE s._same_moment = 1 AND (n._newest_seen IS NULL OR s.{INGESTED_AT_COLUMN} > n._newest_seen)
  ), compared AS (
    SELECT *,
      {previous},
      GREATEST(MAX(_own_day) OVER ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
        _newest_filed) AS {FILED_BEFORE},
      GREATEST(MAX(_own_day) OVER ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
        _newest_filed) AS _filed_through
    FROM fresh
  ), flagged AS (
    SELECT *,
      CASE WHEN _first AND NOT _has_newest THEN 1 WHEN {same} THEN 0 ELSE 1 END AS _changed
    FROM compared
  ), grouped AS (
    SELECT *, SUM(_changed) OVER ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
      AS _group
    FROM flagged
  ), spans AS (
    SELECT *,
      MAX({INGESTED_AT_COLUMN}) OVER (PARTITION BY {keys}, _group) AS _group_seen,
      MAX(_filed_through) OVER (PARTITION BY {keys}, _group) AS _group_filed,
      ROW_NUMBER() OVER (PARTITION BY {keys}, _group ORDER BY {INGESTED_AT_COLUMN}) AS _in_group
    FROM grouped
  )
  -- New versions: the first fetch of each change.
  SELECT CAST(NULL AS TIMESTAMP) AS _match_at, {", ".join(columns)}, {FILED_BEFORE},
    _group_seen AS {LAST_SEEN_AT}, _group_filed AS {FILED_UNTIL}
  FROM spans WHERE _changed = 1
  UNION ALL
  -- Fetches that repeat the newest version held: it was seen again.
  SELECT _newest_at AS _match_at, {", ".join(columns)}, {FILED_BEFORE},
    _group_seen AS {LAST_SEEN_AT}, _group_filed AS {FILED_UNTIL}
  FROM spans WHERE _group = 0 AND _in_group = 1
) AS s
ON {" AND ".join(f"t.{k} = s.{k}" for k in dataset.key)} AND t.{INGESTED_AT_COLUMN} = s._match_at
WHEN MATCHED THEN UPDATE SET {LAST_SEEN_AT} = s.{LAST_SEEN_AT}, {FILED_UNTIL} = s.{FILED_UNTIL}
WHEN NOT MATCHED AND s._match_at IS NULL THEN
  INSERT ({", ".join(inserted)}) VALUES ({", ".join(f"s.{c}" for c in inserted)})"""


def seed_versions_sql(dataset: Dataset, tables: Tables) -> str:
    """Fill a versions table from Bronze, which holds every fetch: for a lake whose Silver was
    built before the table existed (its stream is past those rows). Safe on a table that has
    rows: fetches it has seen add nothing."""
    passing, _ = check_split_sql(dataset, tables.name(bronze_table(dataset)))
    return versions_merge_sql(
        dataset, f"({passing}) AS bronze", tables.name(versions_table(dataset))
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

#: Which share basis FMP's statements carry for per-share figures and share counts: "fetched",
#: the basis of the day they were fetched (FMP restates past quarters for every later split, as
#: its AAPL statements show), or "filed", the basis of their SEC filing (as filed, ASC 260
#: restating only for splits before the filing). docs/medallion.md has the evidence.
StatementBasis = Literal["fetched", "filed"]
DEFAULT_STATEMENT_BASIS: StatementBasis = "fetched"


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
    state, prices = tables.name(RSI_TABLE), adjusted_prices_sql(tables)
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
    state, prices = tables.name(RSI_TABLE), adjusted_prices_sql(tables)
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
    return f"""SELECT COUNT(*) AS pending FROM {adjusted_prices_sql(tables)} AS p
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


def price_features_sql(tables: Tables, basis: StatementBasis = DEFAULT_STATEMENT_BASIS) -> str:
    """Daily price features; a window value is NULL until the symbol has enough history."""
    del basis  # prices only
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
  FROM {adjusted_prices_sql(tables)} AS p
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


_QUARTERS = "period IN ('Q1', 'Q2', 'Q3', 'Q4')"


def _new_york_day(timestamp: str) -> str:
    return f"CAST(from_utc_timestamp({timestamp}, '{NEW_YORK}') AS DATE)"


def _public_on(alias: str | None = None) -> str:
    """The New York day a statement became public: its SEC acceptance or, without one (FMP
    leaves it out now and then), its filing date. NULL with neither (which the registry's checks
    keep out of Silver, but a table may hold rows from before that check)."""
    of = f"{alias}." if alias else ""
    return f"COALESCE({_new_york_day(f'{of}accepted_date')}, {of}filing_date)"


def _split_steps(tables: Tables) -> str:
    """Per symbol, from each split's date until the next: the log of the shares one original
    share had become by then. A value on one day's share basis times exp(log at b - log at d) is
    on day d's basis (prices and per-share figures; share counts the other way round)."""
    return f"""SELECT symbol, date AS since,
    LEAD(date) OVER (PARTITION BY symbol ORDER BY date) AS until,
    SUM(LN(numerator / denominator)) OVER (PARTITION BY symbol ORDER BY date
      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS log_shares
  FROM {tables.name("silver_splits")}
  WHERE date <= CURRENT_DATE"""


def _split_log(alias: str, symbol: str, day: str, steps: str = "split_steps") -> str:
    """A LEFT JOIN of `steps` (the CTE, or `_split_steps` as a subquery) as `alias` on the step
    holding `day`."""
    return (
        f"LEFT JOIN {steps} AS {alias} ON {alias}.symbol = {symbol} AND {alias}.since <= {day}"
        f" AND ({alias}.until IS NULL OR {day} < {alias}.until)"
    )


def adjusted_prices_sql(tables: Tables) -> str:
    """Silver prices on one share basis, after every split `silver_splits` knows (a subquery).

    FMP adjusts prices for the splits up to the day they are fetched, so a lake fetched night by
    night holds sessions before a split on the old basis and later ones on the new: each row is
    brought from the basis of its fetch to the newest, prices divided and volume multiplied by
    the splits after that fetch. A new split changes every older row here, which the windows and
    `gold_rsi_14` then recompute."""
    steps = f"(\n  {_split_steps(tables)}\n)"
    fetched_on = _new_york_day(f"p.{INGESTED_AT_COLUMN}")
    # The newest step's own value, not a second sum: the same number when no split followed.
    factor = "EXP(COALESCE(f.log_shares, 0) - COALESCE(n.log_shares, 0))"
    adjusted = ", ".join(f"p.{c} * {factor} AS {c}" for c in ("open", "high", "low", "close"))
    return f"""(
  SELECT p.symbol, p.date, {adjusted},
    CAST(ROUND(p.volume / {factor}) AS BIGINT) AS volume
  FROM {tables.name("silver_prices")} AS p
  {_split_log("f", "p.symbol", fetched_on, steps)}
  LEFT JOIN (SELECT * FROM {steps} AS s WHERE s.until IS NULL) AS n ON n.symbol = p.symbol
)"""


def _statement_known(alias: str, table: str, basis: StatementBasis) -> str:
    """CTE `{alias}_known`: each quarterly version of one statement with the day it became
    known (`_known_from`), why (`_source_rank`) and the day of its share basis (`_basis_day`)."""
    seen_on = _new_york_day(INGESTED_AT_COLUMN)
    own = _public_on("v")
    basis_day = "_seen_on" if basis == "fetched" else "COALESCE(_own_day, _seen_on)"
    # Newly filed: its own filing day is later than any an earlier fetch of the key showed.
    # Otherwise FMP changed the figures under an old acceptance time: the version is known from
    # the run that first saw it, never from the older filing's day.
    refiled = f"COALESCE(_own_day > {FILED_BEFORE}, FALSE)"
    return f"""{alias}_numbered AS (
  SELECT v.*, {own} AS _own_day, {seen_on} AS _seen_on,
    ROW_NUMBER() OVER (PARTITION BY v.symbol, v.date, v.period ORDER BY v.{INGESTED_AT_COLUMN})
      AS _version
  FROM {table} AS v
  WHERE v.{_QUARTERS}
), {alias}_known AS (
  SELECT *,
    CASE WHEN _version = 1 OR {refiled} THEN _own_day ELSE _seen_on END AS _known_from,
    CASE WHEN _version > 1 AND NOT {refiled} THEN 3
      WHEN accepted_date IS NULL THEN 2 ELSE 1 END AS _source_rank,
    {basis_day} AS _basis_day
  FROM {alias}_numbered
)"""


def _statement_at(alias: str) -> str:
    """CTE `{alias}_at`: on each event day of a quarter, the newest version known that day."""
    return f"""{alias}_at AS (
  SELECT * FROM (
    SELECT e.as_of, k.*, s.log_shares AS _basis_log,
      ROW_NUMBER() OVER (PARTITION BY e.symbol, e.date, e.period, e.as_of ORDER BY k._version DESC)
        AS _pick
    FROM events AS e
    JOIN {alias}_known AS k ON k.symbol = e.symbol AND k.date = e.date AND k.period = e.period
      AND k._known_from <= e.as_of
    {_split_log("s", "k.symbol", "k._basis_day")}
  ) AS picked WHERE _pick = 1
)"""


#: known_from_source by rank: the most cautious reason among the statements that dated a row.
_SOURCES = {1: "acceptance", 2: "filing_date", 3: "ingest"}


def fundamentals_pit_sql(tables: Tables, basis: StatementBasis = DEFAULT_STATEMENT_BASIS) -> str:
    """Trailing-twelve-month fundamentals from every version of the quarterly statements: a row
    per quarter and per day something behind it became known (`known_from`), so a restated
    quarter has its original rows and its restated ones, each from its own day. Per-share
    figures and share counts are on the share basis of `known_from`."""
    statements = {
        "i": versions_table(DATASETS["income_statement"]),
        "b": versions_table(DATASETS["balance_sheet"]),
        "c": versions_table(DATASETS["cash_flow"]),
    }
    events = "\n  UNION\n  ".join(
        f"SELECT symbol, date, period, _known_from AS as_of FROM {a}_known "
        "WHERE _known_from IS NOT NULL"
        for a in statements
    )
    known_ctes = ", ".join(
        _statement_known(a, tables.name(t), basis) for a, t in statements.items()
    )
    at_ctes = ", ".join(_statement_at(a) for a in statements)
    row = "symbol, _row_date, _row_period, _row_as_of"
    this_quarter = "date = _row_date AND period = _row_period"

    def own(expression: str, name: str) -> str:
        return f"MAX(CASE WHEN {this_quarter} THEN {expression} END) AS {name}"

    def on_the_day(alias: str, expression: str) -> str:
        return f"CASE WHEN {alias}._known_from = {alias}.as_of THEN {expression} END"

    ranks = ",\n    ".join(
        f"{on_the_day(a, f'{a}._source_rank')} AS _{a}_rank,\n    "
        + on_the_day(
            a,
            f"CASE {a}._source_rank WHEN 1 THEN {a}.accepted_date "
            f"WHEN 3 THEN {a}.{INGESTED_AT_COLUMN} END",
        )
        + f" AS _{a}_at"
        for a in statements
    )
    rank = ", ".join(f"_{a}_rank" for a in statements)
    known_at = ", ".join(f"CASE WHEN _{a}_rank = _source_rank THEN _{a}_at END" for a in statements)
    changed = ", ".join(f"{a}._known_from" for a in statements)
    source = (
        "CASE _source_rank "
        + " ".join(f"WHEN {r} THEN '{name}'" for r, name in _SOURCES.items())
        + " END"
    )
    # Per-share figures go to the basis of one original share (exp(+log)) to be summed, then to
    # the basis of the row's day.
    to_origin = "EXP(COALESCE(i._basis_log, 0))"
    # The quarters a trailing year can hold: those ending in the 13 months up to the row's.
    recent = "s.date <= {q}.date AND s.date > DATE_SUB({q}.date, 400)"
    return f"""CREATE OR REPLACE VIEW {tables.name("fundamentals_pit")} AS
WITH split_steps AS (
  {_split_steps(tables)}
), {known_ctes}, events AS (
  {events}
), {at_ctes}, states AS (
  -- Each quarter as known on each day one of its statements got a version known that day.
  SELECT i.symbol, i.date, i.period, i.as_of, i.fiscal_year, i.reported_currency,
    {ranks},
    GREATEST(i._version, b._version, c._version) > 1 AS _revised,
    i.revenue, i.net_income, i.eps_diluted * {to_origin} AS eps_diluted,
    i.weighted_average_shs_out / {to_origin} AS basic_shares,
    i.weighted_average_shs_out_dil / {to_origin} AS diluted_shares,
    c.free_cash_flow, c.operating_cash_flow,
    b.total_assets, b.total_liabilities, b.total_stockholders_equity
  FROM i_at AS i
  JOIN b_at AS b ON b.symbol = i.symbol AND b.date = i.date AND b.period = i.period
    AND b.as_of = i.as_of
  JOIN c_at AS c ON c.symbol = i.symbol AND c.date = i.date AND c.period = i.period
    AND c.as_of = i.as_of
  -- A day on which the newest versions known were all known earlier changes nothing.
  WHERE GREATEST({changed}) = i.as_of
), ranked AS (
  SELECT *, GREATEST({rank}) AS _source_rank FROM states
), dated AS (
  SELECT *, GREATEST({known_at}) AS _known_at FROM ranked
), candidates AS (
  -- A quarter's trailing row can change on any day it or a quarter before it changed.
  SELECT DISTINCT q.symbol, q.date, q.period, s.as_of
  FROM (
    SELECT symbol, date, period, MIN(as_of) AS _first_known FROM dated
    GROUP BY symbol, date, period
  ) AS q
  JOIN dated AS s ON s.symbol = q.symbol AND {recent.format(q="q")} AND s.as_of >= q._first_known
), members AS (
  -- On that day: each of those quarters as then known, the newest four first.
  SELECT c.date AS _row_date, c.period AS _row_period, c.as_of AS _row_as_of, s.*,
    ROW_NUMBER() OVER (PARTITION BY c.symbol, c.date, c.period, c.as_of, s.date, s.period
      ORDER BY s.as_of DESC) AS _latest
  FROM candidates AS c
  JOIN dated AS s ON s.symbol = c.symbol AND {recent.format(q="c")} AND s.as_of <= c.as_of
), newest_four AS (
  SELECT * FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY {row} ORDER BY date DESC, period DESC) AS _recency
    FROM members WHERE _latest = 1
  ) AS ordered WHERE _recency <= 4
), behind AS (
  SELECT *, MAX(CASE WHEN as_of = _row_as_of THEN _source_rank END) OVER (PARTITION BY {row})
    AS _row_rank
  FROM newest_four
), trailing AS (
  SELECT {row},
    COUNT(*) AS _quarters, MIN(date) AS _first_period_end, MAX(as_of) AS _changed_on,
    {own("period", "period")}, {own("fiscal_year", "fiscal_year")},
    {own("reported_currency", "reported_currency")},
    {own("total_assets", "total_assets")}, {own("total_liabilities", "total_liabilities")},
    {own("total_stockholders_equity", "total_stockholders_equity")},
    {own("basic_shares", "basic_shares")}, {own("diluted_shares", "diluted_shares")},
    MAX(_row_rank) AS _source_rank,
    MAX(CASE WHEN as_of = _row_as_of AND _source_rank = _row_rank THEN _known_at END)
      AS _known_at,
    MAX(CASE WHEN _revised THEN 1 ELSE 0 END) AS _revised,
    SUM(revenue) AS _revenue_4q, SUM(net_income) AS _net_income_4q,
    SUM(eps_diluted) AS _eps_diluted_4q, SUM(free_cash_flow) AS _free_cash_flow_4q,
    SUM(operating_cash_flow) AS _operating_cash_flow_4q
  FROM behind
  GROUP BY {row}
), complete AS (
  -- Only days when one of the four changed; four consecutive quarters span about 9 months
  -- between the first and last period end.
  SELECT t.*, EXP(COALESCE(k.log_shares, 0)) AS _shares_per_original,
    _quarters = 4 AND DATEDIFF(_row_date, _first_period_end) BETWEEN 250 AND 300 AS _full_year
  FROM trailing AS t
  {_split_log("k", "t.symbol", "t._row_as_of")}
  WHERE _changed_on = _row_as_of
)
SELECT symbol, _row_date AS period_end, period, fiscal_year, reported_currency,
  CASE WHEN _source_rank <> 2 THEN _known_at END AS known_at,
  _row_as_of AS known_from,
  {source} AS known_from_source,
  _revised = 1 AS revised,
  CASE WHEN _full_year THEN _revenue_4q END AS ttm_revenue,
  CASE WHEN _full_year THEN _net_income_4q END AS ttm_net_income,
  CASE WHEN _full_year THEN _eps_diluted_4q / _shares_per_original END AS ttm_eps_diluted,
  CASE WHEN _full_year THEN _free_cash_flow_4q END AS ttm_free_cash_flow,
  CASE WHEN _full_year THEN _operating_cash_flow_4q END AS ttm_operating_cash_flow,
  total_assets, total_liabilities, total_stockholders_equity,
  basic_shares * _shares_per_original AS basic_shares,
  diluted_shares * _shares_per_original AS diluted_shares
FROM complete"""


def daily_features_sql(tables: Tables, basis: StatementBasis = DEFAULT_STATEMENT_BASIS) -> str:
    """Prices joined with the fundamentals known on each date: a row counts from the day after it
    became known (acceptance is often after the close). Of the rows known on a date, the one for
    the latest period counts, so a late filing for an older quarter never replaces it, and of
    that period's rows the latest known, so a restatement counts from its own day.

    Every per-share figure and share count is on the session's own share basis, as traded that
    day: Silver's close (split-adjusted by FMP as of the day it was fetched) and the statements'
    figures (on the basis of `known_from`) are both brought to it with the splits between. So
    market cap, P/E and the other ratios are continuous across a split and no later split
    changes a past session's figures. Market value uses the quarter's weighted average basic
    shares (the statements carry no period-end share count)."""
    del basis  # fundamentals_pit has already put its figures on the basis of their own day
    market_cap = "close * basic_shares"
    fetched_on = _new_york_day(f"p.{INGESTED_AT_COLUMN}")
    return f"""CREATE OR REPLACE VIEW {tables.name("daily_features")} AS
WITH split_steps AS (
  {_split_steps(tables)}
), pit AS (
  SELECT f.*, DATE_ADD(f.known_from, 1) AS usable_from, COALESCE(k.log_shares, 0) AS _known_log
  FROM {tables.name("fundamentals_pit")} AS f
  {_split_log("k", "f.symbol", "f.known_from")}
), sessions AS (
  SELECT p.symbol, p.date, COALESCE(d.log_shares, 0) AS _session_log,
    p.close * EXP(COALESCE(t.log_shares, 0) - COALESCE(d.log_shares, 0)) AS close,
    CAST(ROUND(p.volume * EXP(COALESCE(d.log_shares, 0) - COALESCE(t.log_shares, 0))) AS BIGINT)
      AS volume
  FROM {tables.name("silver_prices")} AS p
  {_split_log("t", "p.symbol", fetched_on)}
  {_split_log("d", "p.symbol", "p.date")}
), matched AS (
  SELECT p.symbol, p.date, p.close, p.volume,
    f.period_end, f.known_from, f.known_from_source, f.revised, f.ttm_revenue, f.ttm_net_income,
    f.ttm_eps_diluted * EXP(f._known_log - p._session_log) AS ttm_eps_diluted,
    f.ttm_free_cash_flow,
    f.basic_shares * EXP(p._session_log - f._known_log) AS basic_shares,
    f.total_stockholders_equity,
    ROW_NUMBER() OVER (PARTITION BY p.symbol, p.date ORDER BY f.period_end DESC, f.known_from DESC)
      AS _latest
  FROM sessions AS p
  LEFT JOIN pit AS f ON f.symbol = p.symbol AND f.usable_from <= p.date
)
SELECT symbol, date, close, volume,
  period_end AS fundamentals_period_end, known_from AS fundamentals_known_from,
  known_from_source AS fundamentals_known_from_source, revised AS fundamentals_revised,
  ttm_revenue, ttm_net_income, ttm_eps_diluted, ttm_free_cash_flow, basic_shares,
  {market_cap} AS market_cap,
  CASE WHEN ttm_eps_diluted > 0 THEN close / ttm_eps_diluted END AS pe_ratio,
  CASE WHEN ttm_revenue > 0 THEN {market_cap} / ttm_revenue END AS ps_ratio,
  CASE WHEN total_stockholders_equity > 0
    THEN {market_cap} / total_stockholders_equity END AS pb_ratio,
  CASE WHEN {market_cap} > 0 THEN ttm_free_cash_flow / ({market_cap}) END AS fcf_yield
FROM matched
WHERE _latest = 1"""


def data_health_sql(tables: Tables, basis: StatementBasis = DEFAULT_STATEMENT_BASIS) -> str:
    """Per dataset: the newest data landed, symbols covered against the universe (the symbols of
    the newest run), session gaps against the exchange calendar, quarantined rows, last run."""
    del basis  # counts only
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


def data_health_alert_sql(tables: Tables, today: str = "current_date()") -> str:
    """One row: how many problems `data_health` and the last run show (`problems`), and what they
    are (`details`). The workspace's SQL alert fires when `problems` is above 0.

    A problem is: a price dataset whose data ends before the last exchange session before `today`
    (a night that did not land), session gaps, a last run that did not end `ok`, no run that
    ended on or after that session's day (the nightly runs each session's evening), or rows
    fetched since yesterday that Silver rejected or the ingester quarantined.
    `today` is a SQL date expression (tests pass a literal)."""
    health, runs = tables.name("data_health"), tables.name("bronze_runs")
    prices = ", ".join(f"'{n}'" for n, d in DATASETS.items() if d.kind == "prices")

    def since_yesterday(table: str, what: str) -> str:
        return f"""SELECT x.dataset || ': ' || CAST(COUNT(*) AS STRING) || ' rows {what} since '
    || CAST(date_sub({today}, 1) AS STRING)
  FROM {tables.name(table)} AS x
  WHERE CAST(x._ingested_at AS DATE) >= date_sub({today}, 1)
  GROUP BY x.dataset"""

    return f"""WITH last_session AS (
  SELECT MAX(session) AS session FROM {tables.name("ref_exchange_sessions")} WHERE session < {today}
), last_run AS (
  SELECT run_id, status, finished_at FROM {runs} ORDER BY run_id DESC LIMIT 1
), problems AS (
  SELECT h.dataset || ': data ends ' || COALESCE(CAST(h.latest_landed AS STRING), 'nowhere')
    || ', the last session was ' || CAST(s.session AS STRING) AS problem
  FROM {health} AS h CROSS JOIN last_session AS s
  WHERE h.dataset IN ({prices}) AND (h.dataset = 'prices' OR h.silver_rows > 0)
    AND (h.latest_landed IS NULL OR h.latest_landed < s.session)
  UNION ALL
  SELECT h.dataset || ': ' || CAST(h.session_gaps AS STRING) || ' sessions missing'
  FROM {health} AS h WHERE h.session_gaps > 0
  UNION ALL
  SELECT 'the last run, ' || r.run_id || ', ended ' || r.status FROM last_run AS r
  WHERE r.status <> 'ok'
  UNION ALL
  SELECT 'no run since ' || CAST(r.finished_at AS STRING) FROM last_run AS r
  CROSS JOIN last_session AS s WHERE CAST(r.finished_at AS DATE) < s.session
  UNION ALL
  SELECT 'no run has landed' WHERE NOT EXISTS (SELECT 1 FROM {runs})
  UNION ALL
  {since_yesterday("silver_rejects", "rejected by Silver")}
  UNION ALL
  {since_yesterday("bronze_quarantine", "quarantined")}
)
SELECT COUNT(*) AS problems, array_join(collect_list(problem), '; ') AS details FROM problems"""


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


#: The Gold views analysts query that the job keeps as tables (same names), each with the date
#: column from which a change to a symbol's inputs can reach its rows. `data_health` stays a
#: view: a row per dataset.
GOLD_TABLES: dict[str, str] = {
    "price_features": "date",
    "fundamentals_pit": "known_from",
    "daily_features": "date",
}
#: The Gold tables' comments.
GOLD_COMMENTS: dict[str, str] = {
    "price_features": "Gold: every session of every symbol on the newest share basis: returns, "
    "moving averages, volatility, RSI(14), 52-week range, drawdown, volume features.",
    "fundamentals_pit": "Gold: trailing-twelve-month fundamentals per quarter, each row as known "
    "from known_from (SEC acceptance), every version.",
    "daily_features": "Gold: each session with the fundamentals known that day: market cap, "
    "P/E, P/S, P/B, FCF yield, on the session's own share basis.",
}
#: Bronze files whose rows the Gold tables have taken in.
GOLD_SEEN_FILES = "gold_seen_files"
#: Session views a refresh fills with this night's new files and changed symbols.
GOLD_NEW_FILES = "_gold_new_files"
GOLD_CHANGES = "_gold_changes"
#: Before every session: a split re-bases a symbol's whole history.
_WHOLE_HISTORY = dt.date(1900, 1, 1)


def gold_source(name: str) -> str:
    """The view that computes a Gold table in full: what a refresh copies from."""
    return f"_{name}_source"


def gold_source_sql(
    name: str, tables: Tables, basis: StatementBasis = DEFAULT_STATEMENT_BASIS
) -> str:
    """The CREATE VIEW of a Gold table's full computation, under its source name."""
    sql = gold_view_sql(name, tables, basis)
    header = f"CREATE OR REPLACE VIEW {tables.name(name)} AS"
    if not sql.startswith(header):
        raise ValueError(f"{name}: the Gold SQL does not start with {header!r}")
    return f"CREATE OR REPLACE VIEW {tables.name(gold_source(name))} AS" + sql[len(header) :]


def _gold_inputs() -> list[Dataset]:
    """The datasets whose Bronze rows can change a Gold table (profiles do not)."""
    return [d for d in DATASETS.values() if d.kind in ("prices", "statement", "events")]


def gold_new_files_sql(tables: Tables) -> str:
    """The Bronze files of Gold's inputs whose rows the Gold tables have not taken in yet."""
    seen = tables.name(GOLD_SEEN_FILES)
    return "\nUNION\n".join(
        f"SELECT DISTINCT b.{SOURCE_FILE} FROM {tables.name(bronze_table(d))} AS b "
        f"LEFT ANTI JOIN {seen} AS f ON f.{SOURCE_FILE} = b.{SOURCE_FILE}"
        for d in _gold_inputs()
    )


def gold_changes_sql(tables: Tables) -> str:
    """Per symbol, the first date from which its Gold rows may change, from the rows of the new
    files (`GOLD_NEW_FILES`): the earliest session of a price, the earliest period end of a
    statement (no version is known before its period ends), and for a split the whole history.
    Windows look back only, so rows before that date stay as they are."""
    parts = []
    for d in _gold_inputs():
        since = f"DATE'{_WHOLE_HISTORY}'" if d.kind == "events" else "MIN(b.date)"
        parts.append(
            f"SELECT b.symbol, {since} AS since FROM {tables.name(bronze_table(d))} AS b "
            f"JOIN {GOLD_NEW_FILES} AS n ON n.{SOURCE_FILE} = b.{SOURCE_FILE} GROUP BY b.symbol"
        )
    union = "\n  UNION ALL\n  ".join(parts)
    return f"SELECT symbol, MIN(since) AS since FROM (\n  {union}\n) AS c GROUP BY symbol"


def gold_invalidate_sql(name: str, tables: Tables) -> str:
    """Delete a Gold table's rows that this night's changes can alter."""
    return (
        f"MERGE INTO {tables.name(name)} AS t USING {GOLD_CHANGES} AS c ON t.symbol = c.symbol\n"
        f"WHEN MATCHED AND t.{GOLD_TABLES[name]} >= c.since THEN DELETE"
    )


def gold_refill_sql(name: str, tables: Tables) -> str:
    """Compute those rows again from the table's source view."""
    column = GOLD_TABLES[name]
    return (
        f"INSERT INTO {tables.name(name)}\n"
        f"SELECT s.* FROM {tables.name(gold_source(name))} AS s\n"
        f"JOIN {GOLD_CHANGES} AS c ON s.symbol = c.symbol AND s.{column} >= c.since"
    )


def gold_view_sql(
    name: str, tables: Tables, basis: StatementBasis = DEFAULT_STATEMENT_BASIS
) -> str:
    """The CREATE VIEW of one Gold view; `basis` is the share basis of FMP's statements."""
    return GOLD_VIEWS[name](tables, basis)
