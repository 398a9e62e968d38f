"""The medallion tables on a laptop: Bronze, Silver and Gold from a local lake, in one DuckDB file.

The statements are the Databricks ones from `medallion.py`, translated to DuckDB's dialect by
sqlglot, so the tables, keys, MERGE rules and Gold views are the ones analysts get on Databricks.
Loading is incremental like Auto Loader: each lake file goes into Bronze once (the loaded files are
the checkpoint), and the Silver MERGE runs on the new Bronze rows only. Each dataset's new files,
Bronze rows, Silver MERGE and checkpoint commit in one transaction, so a failed build leaves the
database as it was and the next build picks the files up again.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl
import sqlglot
from sqlglot import exp

from stock_pipeline.datasets import DATASETS, Column, Dataset
from stock_pipeline.errors import LakeError, LakehouseError, QueryError
from stock_pipeline.lake import (
    RUNS,
    LocalLake,
    dataset_files,
    read_partition_file,
)
from stock_pipeline.medallion import (
    DEFAULT_STATEMENT_BASIS,
    GOLD_VIEWS,
    RESCUED_DATA,
    RSI_BLOCK_ROWS,
    RSI_TABLE,
    SOURCE_FILE,
    SOURCE_MODIFIED_AT,
    StatementBasis,
    Tables,
    add_column_sql,
    bronze_columns,
    bronze_table,
    check_split_sql,
    create_table_sql,
    dim_company_columns,
    exchange_sessions,
    gold_view_sql,
    keep_rejects_sql,
    merge_sql,
    missing_columns,
    refresh_rsi,
    rejects_columns,
    rsi_columns,
    runs_columns,
    scd2_merge_sql,
    seed_versions_sql,
    silver_columns,
    silver_table,
    versions_columns,
    versions_merge_sql,
    versions_table,
)

__all__ = [
    "DEFAULT_DATABASE",
    "DatasetLoad",
    "LakehouseReport",
    "bronze_frame",
    "build_lakehouse",
    "manifest_files",
    "refresh_rsi_table",
    "run_query",
    "runs_frame",
    "to_duckdb",
]

DEFAULT_DATABASE = "lakehouse.duckdb"
LOADED_FILES = "_loaded_files"
TABLES = Tables()


def _utc_instant(node: exp.Expression) -> exp.Expression:
    # sqlglot reads from_utc_timestamp(ts, zone) as `CAST(ts AS TIMESTAMP) AT TIME ZONE zone`,
    # which DuckDB reads as a wall-clock time in `zone`, the opposite conversion. Spark's
    # timestamps are instants; DuckDB's TIMESTAMPTZ is the type that converts the same way.
    cast = node.this if isinstance(node, exp.AtTimeZone) else None
    if isinstance(cast, exp.Cast) and cast.to.this == exp.DataType.Type.TIMESTAMP:
        cast.set("to", exp.DataType.build("TIMESTAMPTZ"))
    return node


def to_duckdb(sql: str) -> str:
    """A Databricks SQL statement in DuckDB's dialect (with the session time zone set to UTC)."""
    statements = sqlglot.parse(sql, read="databricks")
    return ";\n".join(
        statement.transform(_utc_instant).sql(dialect="duckdb")
        for statement in statements
        if statement is not None
    )


@dataclass(frozen=True, slots=True)
class DatasetLoad:
    """What one build did for one dataset."""

    new_files: int
    new_rows: int
    rejected: int
    quarantined: int
    silver_rows: int


@dataclass(frozen=True, slots=True)
class LakehouseReport:
    database: Path
    datasets: dict[str, DatasetLoad]
    new_runs: int
    views: list[str] = field(default_factory=list)


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[object, ...]]:
    """Run one statement to the end (DuckDB wants every result read before the next statement)."""
    return con.execute(sql).fetchall()


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    rows = _run(con, sql)
    return int(str(rows[0][0])) if rows else 0


def _create(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[Column]) -> None:
    """Create a table, or add the registry's columns an older database's table lacks."""
    _run(con, to_duckdb(create_table_sql(table, columns, using=None)))
    existing = [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]
    for column in missing_columns(existing, columns):
        _run(con, to_duckdb(add_column_sql(table, column)))


def _create_tables(con: duckdb.DuckDBPyConnection) -> None:
    for dataset in DATASETS.values():
        _create(con, bronze_table(dataset), bronze_columns(dataset))
        target = silver_table(dataset)
        _create(
            con,
            target,
            dim_company_columns() if dataset.kind == "profile" else silver_columns(dataset),
        )
        if dataset.figures:
            _create(con, versions_table(dataset), versions_columns(dataset))
            if not _count(con, f"SELECT COUNT(*) FROM {versions_table(dataset)}"):
                # A database built before the table existed: Bronze holds every fetch.
                _run(con, to_duckdb(seed_versions_sql(dataset, TABLES)))
    _create(con, bronze_table("quarantine"), bronze_columns(None))
    _create(con, bronze_table("runs"), runs_columns())
    _create(con, "silver_rejects", rejects_columns())
    _run(
        con,
        f"CREATE TABLE IF NOT EXISTS {LOADED_FILES} (path VARCHAR PRIMARY KEY, loaded_at TIMESTAMPTZ)",
    )


def _with_lineage(frame: pl.DataFrame, lake: LocalLake, path: str) -> pl.DataFrame:
    return frame.with_columns(
        pl.lit(f"{lake.uri}/{path}").alias(SOURCE_FILE),
        pl.lit(lake.modified_at(path)).alias(SOURCE_MODIFIED_AT),
        pl.lit(None, pl.String).alias(RESCUED_DATA),
    )


def bronze_frame(
    lake: LocalLake, dataset: Dataset, paths: Sequence[str], *, quarantine: bool = False
) -> pl.DataFrame:
    """New lake files as Bronze rows: typed partition column plus the lineage columns."""
    columns = bronze_columns(None if quarantine else dataset)
    frames = [
        _with_lineage(read_partition_file(lake, dataset, path, quarantine=quarantine), lake, path)
        for path in paths
    ]
    if quarantine:
        frames = [f.with_columns(pl.lit(dataset.name).alias("dataset")) for f in frames]
    schema = {c.name: c.type.polars for c in columns}
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames, how="diagonal_relaxed").select(
        pl.col(c.name).cast(c.type.polars) for c in columns
    )


def _insert(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> None:
    arrow = frame.to_arrow()
    con.register("_incoming", arrow)
    try:
        _run(con, f"INSERT INTO {table} BY NAME SELECT * FROM _incoming")
    finally:
        con.unregister("_incoming")


def _merge_new_rows(con: duckdb.DuckDBPyConnection, dataset: Dataset, batch: str) -> int:
    """The Silver step on the new Bronze rows; returns how many broke a check."""
    target = silver_table(dataset)
    passing, rejected = check_split_sql(dataset, batch)
    _run(con, f"CREATE OR REPLACE TEMP VIEW _passing AS {to_duckdb(passing)}")
    if dataset.kind == "profile":
        _run(con, to_duckdb(scd2_merge_sql("_passing", target)))
    else:
        _run(con, to_duckdb(merge_sql(dataset, "_passing", target)))
    if dataset.figures:
        _run(con, to_duckdb(versions_merge_sql(dataset, "_passing", versions_table(dataset))))
    count = _count(con, f"SELECT COUNT(*) FROM ({to_duckdb(rejected)})")
    if count:
        _run(con, to_duckdb(keep_rejects_sql(dataset, rejected, "silver_rejects")))
    return count


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """All of the block or none of it: a load and its checkpoint commit together."""
    _run(con, "BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        _run(con, "ROLLBACK")
        raise
    _run(con, "COMMIT")


def _load_dataset(
    con: duckdb.DuckDBPyConnection, lake: LocalLake, dataset: Dataset, loaded: set[str]
) -> DatasetLoad:
    paths = [p for p in dataset_files(lake, dataset) if p not in loaded]
    quarantined_paths = [
        p for p in dataset_files(lake, dataset, quarantine=True) if p not in loaded
    ]
    frame = bronze_frame(lake, dataset, paths)
    quarantined = bronze_frame(lake, dataset, quarantined_paths, quarantine=True)
    rejected = 0
    with _transaction(con):
        if frame.height:
            _insert(con, bronze_table(dataset), frame)
            batch = frame.select(c.name for c in silver_columns(dataset) if c.name in frame.columns)
            con.register("_batch", batch.to_arrow())
            try:
                rejected = _merge_new_rows(con, dataset, "_batch")
            finally:
                con.unregister("_batch")
        if quarantined.height:
            _insert(con, bronze_table("quarantine"), quarantined)
        _mark_loaded(con, [*paths, *quarantined_paths])

    return DatasetLoad(
        new_files=len(paths),
        new_rows=frame.height,
        rejected=rejected,
        quarantined=quarantined.height,
        silver_rows=_count(con, f"SELECT COUNT(*) FROM {silver_table(dataset)}"),
    )


def _mark_loaded(con: duckdb.DuckDBPyConnection, paths: Sequence[str]) -> None:
    if paths:
        now = dt.datetime.now(dt.UTC)
        con.executemany(f"INSERT INTO {LOADED_FILES} VALUES (?, ?)", [(p, now) for p in paths])


def runs_frame(lake: LocalLake, paths: Sequence[str]) -> pl.DataFrame:
    """Run manifests as `bronze_runs` rows, the universe kept as a JSON array."""
    rows = []
    for path in paths:
        manifest = json.loads(lake.read_file(path))
        rows.append(
            {
                "run_id": manifest["run_id"],
                "status": manifest.get("status"),
                "started_at": _timestamp(manifest.get("started_at")),
                "finished_at": _timestamp(manifest.get("finished_at")),
                "symbols": json.dumps(manifest.get("symbols", [])),
                SOURCE_FILE: f"{lake.uri}/{path}",
                SOURCE_MODIFIED_AT: lake.modified_at(path),
            }
        )
    return pl.DataFrame(rows, schema={c.name: c.type.polars for c in runs_columns()})


def manifest_files(lake: LocalLake) -> list[str]:
    return [p for p in lake.list_files(RUNS) if p.endswith(".json")]


def _load_runs(con: duckdb.DuckDBPyConnection, lake: LocalLake, loaded: set[str]) -> int:
    paths = [p for p in manifest_files(lake) if p not in loaded]
    frame = runs_frame(lake, paths)
    if not frame.height:
        return 0
    with _transaction(con):
        _insert(con, bronze_table("runs"), frame)
        _mark_loaded(con, paths)
    return frame.height


def _timestamp(value: object) -> dt.datetime | None:
    return dt.datetime.fromisoformat(str(value)) if value else None


def _first_price(con: duckdb.DuckDBPyConnection) -> dt.date | None:
    union = " UNION ALL ".join(
        f"SELECT MIN(date) AS first FROM {silver_table(d)}"
        for d in DATASETS.values()
        if d.kind == "prices"
    )
    first = _run(con, f"SELECT MIN(first) FROM ({union})")[0][0]
    return first if isinstance(first, dt.date) else None


def refresh_rsi_table(con: duckdb.DuckDBPyConnection, *, block_rows: int = RSI_BLOCK_ROWS) -> int:
    """Create `gold_rsi_14` if needed and bring it up to Silver (see `medallion.refresh_rsi`);
    returns the passes it took."""
    _create(con, RSI_TABLE, rsi_columns())
    return refresh_rsi(
        lambda sql: _run(con, to_duckdb(sql)),
        lambda sql: _count(con, to_duckdb(sql)),
        TABLES,
        block_rows=block_rows,
    )


def _build_gold(con: duckdb.DuckDBPyConnection, today: dt.date, basis: StatementBasis) -> list[str]:
    _run(con, "CREATE OR REPLACE TABLE ref_exchange_sessions (session DATE)")
    # Gaps are counted between a symbol's first and last price: older sessions are not needed.
    since = _first_price(con) or today
    sessions = [day for (day,) in exchange_sessions(today + dt.timedelta(days=366), since)]
    _insert(
        con,
        "ref_exchange_sessions",
        pl.DataFrame({"session": sessions}, schema={"session": pl.Date}),
    )
    refresh_rsi_table(con)
    for name in GOLD_VIEWS:
        _run(con, to_duckdb(gold_view_sql(name, TABLES, basis)))
    return list(GOLD_VIEWS)


def build_lakehouse(
    lake: LocalLake,
    database: Path,
    *,
    today: dt.date | None = None,
    statement_basis: StatementBasis = DEFAULT_STATEMENT_BASIS,
) -> LakehouseReport:
    """Load new lake files into Bronze, merge them into Silver, and (re)create the Gold views
    (`statement_basis`: the share basis of FMP's statements, see `medallion.StatementBasis`)."""
    if not lake.list_files("raw"):
        raise LakeError(f"{lake.uri} has no raw/ folder: run `stock-pipeline ingest` into it first")
    try:
        con = duckdb.connect(str(database))
    except duckdb.Error as error:
        raise LakehouseError(f"cannot open the lakehouse database {database}: {error}") from None
    try:
        # Timestamps are UTC instants, as on Databricks; Gold converts to New York time itself.
        _run(con, "SET TimeZone = 'UTC'")
        _create_tables(con)
        loaded = {str(row[0]) for row in _run(con, f"SELECT path FROM {LOADED_FILES}")}
        datasets = {name: _load_dataset(con, lake, d, loaded) for name, d in DATASETS.items()}
        new_runs = _load_runs(con, lake, loaded)
        views = _build_gold(con, today or dt.date.today(), statement_basis)
    except duckdb.Error as error:
        raise LakehouseError(
            f"building the lakehouse in {database} failed, nothing of the failed dataset was "
            f"kept: {error}"
        ) from None
    finally:
        con.close()
    return LakehouseReport(database=database, datasets=datasets, new_runs=new_runs, views=views)


def run_query(database: Path, sql: str) -> tuple[list[str], list[tuple[object, ...]]]:
    """Run one read-only query (Databricks or DuckDB SQL) on a built lakehouse: (columns, rows)."""
    try:
        with duckdb.connect(str(database), read_only=True) as con:
            con.execute("SET TimeZone = 'UTC'")
            try:
                statement = to_duckdb(sql)
            except sqlglot.errors.ParseError:
                statement = sql
            result = con.execute(statement)
            columns = [d[0] for d in result.description or ()]
            return columns, result.fetchall()
    except duckdb.Error as error:
        raise QueryError(f"the query failed: {error}") from None
