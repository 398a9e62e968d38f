"""The medallion steps on a Spark session: what the Databricks notebooks run.

The notebooks hold widgets and one call per step; the steps live here so the very same code runs in
tests on local engines: the per-batch MERGE, the type-2 update and the Gold views on Sail (a Spark
Connect server with Delta), the streaming wiring on classic local Spark. What an engine lacks is
named in `Engine`, and Databricks has all of it.

Data flows one way: lake files -> Bronze (append-only, Auto Loader) -> Silver (MERGE per batch)
-> Gold (views). Every step is safe to rerun: streams keep checkpoints, and the MERGE only writes
a row that is newer than the one it holds.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stock_pipeline.datasets import (
    DATASETS,
    Column,
    ColumnType,
    Dataset,
)
from stock_pipeline.medallion import (
    DEFAULT_STATEMENT_BASIS,
    GOLD_CHANGES,
    GOLD_COMMENTS,
    GOLD_NEW_FILES,
    GOLD_SEEN_FILES,
    GOLD_TABLES,
    GOLD_VIEWS,
    LAYER_COLUMNS,
    RESCUED_DATA,
    RSI_TABLE,
    SOURCE_FILE,
    SOURCE_MODIFIED_AT,
    StatementBasis,
    Tables,
    bronze_columns,
    bronze_table,
    check_split_sql,
    create_table_sql,
    dim_company_columns,
    exchange_sessions,
    gold_changes_sql,
    gold_invalidate_sql,
    gold_new_files_sql,
    gold_refill_sql,
    gold_source,
    gold_source_sql,
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
    sql_string,
    table_comments,
    versions_columns,
    versions_merge_sql,
    versions_table,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

__all__ = [
    "DATABRICKS",
    "BatchCounts",
    "Engine",
    "GoldRefresh",
    "bronze_sources",
    "build_gold",
    "create_tables",
    "maintain_tables",
    "maintenance_sql",
    "merge_silver_batch",
    "refresh_gold_tables",
    "run_bronze",
    "run_silver",
    "seed_versions",
    "start_bronze_stream",
    "start_silver_stream",
]

log = logging.getLogger(__name__)

QUARANTINE = "quarantine"
RUNS = "runs"

#: Delta keeps removed files for a week, so a bad night can be read back and restored.
RETENTION_HOURS = 168


@dataclass(frozen=True, slots=True)
class Engine:
    """What the engine under the notebooks can do; Databricks can do all of it.

    Locally, classic Spark has no Delta and no Auto Loader, and Sail has Delta but no streaming,
    no liquid clustering and no change data feed, so tests name what to leave out."""

    auto_loader: bool = True
    table_format: str = "delta"
    clustering: bool = True
    change_data_feed: bool = True
    #: External tables under this folder (engines without a metastore); None: managed tables.
    location_root: str | None = None
    #: Comments of existing tables can change (`COMMENT ON`, `ALTER COLUMN ... COMMENT`); Sail
    #: only sets them when it creates a table.
    alter_comments: bool = True

    def create_table(self, table: str, columns: Iterable[Column], *, cluster_by: Iterable[str] = (),
                     change_data_feed: bool = False, comment: str | None = None,
                     column_comments: Mapping[str, str] | None = None) -> str:  # fmt: skip
        sql = create_table_sql(
            table,
            tuple(columns),
            cluster_by=tuple(cluster_by) if self.clustering else (),
            change_data_feed=change_data_feed and self.change_data_feed,
            using=self.table_format,
            comment=comment,
            column_comments=column_comments,
        )
        if self.location_root is not None:
            sql += f"\nLOCATION '{self.location_root}/{table.replace('.', '/')}'"
        return sql


DATABRICKS = Engine()


def _replace_table_sql(engine: Engine, table: str, columns: str, *, cluster_by: Iterable[str],
                       comment: str) -> str:  # fmt: skip
    """CREATE OR REPLACE TABLE with `columns` (DDL), clustered and placed as the engine does
    tables. (Not CREATE ... AS SELECT: Sail takes no COMMENT there.)"""
    sql = f"CREATE OR REPLACE TABLE {table} ({columns}) USING {engine.table_format}"
    if engine.clustering and cluster_by:
        sql += f"\nCLUSTER BY ({', '.join(cluster_by)})"
    sql += f"\nCOMMENT {sql_string(comment)}"
    if engine.location_root is not None:
        sql += f"\nLOCATION '{engine.location_root}/{table.replace('.', '/')}'"
    return sql


@dataclass(frozen=True, slots=True)
class BronzeSource:
    """One Auto Loader stream: a lake folder into a Bronze table."""

    name: str
    folder: str
    table: str
    columns: tuple[Column, ...]
    partition: str | None
    file_format: str
    dataset: str | None = None
    #: Infer and evolve the schema (data files); False reads the fixed registry columns and
    #: keeps every other field in `_rescued_data` (the manifests, whose keys vary by run).
    evolve: bool = True


def bronze_sources(lake: str) -> list[BronzeSource]:
    """Every stream Bronze runs: one per dataset, one per dataset's quarantine, one for the runs.

    Each source folder has its own stream and checkpoint (Auto Loader keeps one per location);
    the quarantined rows of all datasets share one table, told apart by its `dataset` column."""
    lake = lake.rstrip("/")
    sources = [
        BronzeSource(
            name=d.name,
            folder=f"{lake}/raw/{d.name}",
            table=bronze_table(d),
            columns=d.table_columns,
            partition=d.partition,
            file_format="parquet",
        )
        for d in DATASETS.values()
    ]
    quarantine_columns = bronze_columns(None)
    file_columns = tuple(
        c for c in quarantine_columns if c.name not in ("dataset", *_lineage_names())
    )
    sources += [
        BronzeSource(
            name=f"{QUARANTINE}_{d.name}",
            folder=f"{lake}/{QUARANTINE}/{d.name}",
            table=bronze_table(QUARANTINE),
            columns=file_columns,
            partition="ingest_date",
            file_format="parquet",
            dataset=d.name,
        )
        for d in DATASETS.values()
    ]
    sources.append(
        BronzeSource(
            name=RUNS,
            folder=f"{lake}/_runs",
            table=bronze_table(RUNS),
            columns=tuple(c for c in runs_columns() if c.name not in _lineage_names()),
            partition=None,
            file_format="json",
            evolve=False,
        )
    )
    return sources


def _lineage_names() -> tuple[str, ...]:
    return (SOURCE_FILE, SOURCE_MODIFIED_AT, RESCUED_DATA)


def _ddl(columns: Iterable[Column]) -> str:
    return ", ".join(f"{c.name} {c.type.spark}" for c in columns)


def _bronze_table_columns(source: BronzeSource) -> tuple[Column, ...]:
    if source.name == RUNS:
        return runs_columns()
    if source.dataset is not None:
        return bronze_columns(None)
    return bronze_columns(DATASETS[source.name])


# --- tables -------------------------------------------------------------------------------------


def create_tables(spark: SparkSession, tables: Tables, engine: Engine = DATABRICKS) -> list[str]:
    """Create every Bronze and Silver table that does not exist yet, and add to each existing one
    the registry's columns it lacks; returns the tables' names.

    The columns and types come from the registry, so a table created here is the table the
    ingester's files describe, and a column added to the registry reaches Silver before the
    MERGE that names it."""
    if tables.namespace:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {tables.namespace}")
    wanted: dict[str, tuple[str, tuple[Column, ...], str, dict[str, str]]] = {}

    def table(name: str, columns: Iterable[Column], notes: tuple[str, dict[str, str]],
              **options: Any) -> None:  # fmt: skip
        columns = tuple(columns)
        comment, column_comments = (
            notes[0],
            {c.name: notes[1][c.name] for c in columns if notes[1].get(c.name)},
        )
        statement = engine.create_table(
            name, columns, comment=comment, column_comments=column_comments, **options
        )
        wanted[name] = (statement, columns, comment, column_comments)

    for source in bronze_sources("unused"):
        dataset = None if source.dataset or source.name == RUNS else DATASETS[source.name]
        notes = table_comments(dataset, "Bronze")
        if source.name == RUNS:
            notes = ("Bronze: the run manifests, one row per run.", notes[1])
        table(tables.name(source.table), _bronze_table_columns(source), notes)
    for dataset in DATASETS.values():
        name = tables.name(silver_table(dataset))
        notes = table_comments(dataset, "Silver")
        if dataset.kind == "profile":
            history = (f"{notes[0]} Type 2: a row per version of a company.", notes[1])
            table(
                name, dim_company_columns(), history, cluster_by=("symbol",), change_data_feed=True
            )
            continue
        table(name, silver_columns(dataset), notes, cluster_by=dataset.key, change_data_feed=True)
        if dataset.figures:
            versions = (
                f"Every version of each {dataset.name} key's figures, as fetched.",
                notes[1],
            )
            table(
                tables.name(versions_table(dataset)),
                versions_columns(dataset),
                versions,
                cluster_by=dataset.key,
            )
    rejects = ("Rows Silver refused, with every rule they broke.", LAYER_COLUMNS)
    table(tables.name("silver_rejects"), rejects_columns(), rejects, cluster_by=("dataset",))
    for name, (statement, columns, comment, column_comments) in wanted.items():
        spark.sql(statement)
        _add_missing_columns(spark, name, columns, engine)
        if engine.alter_comments:
            _sync_comments(spark, name, comment, column_comments)
    return list(wanted)


def _sync_comments(
    spark: SparkSession, table: str, comment: str, column_comments: Mapping[str, str]
) -> None:
    """Give a table created before its comments (or with older ones) the registry's: only what
    differs is altered, so a night with nothing new commits nothing."""
    if (spark.catalog.getTable(table).description or "") != comment:
        spark.sql(f"COMMENT ON TABLE {table} IS {sql_string(comment)}")
    for column in spark.catalog.listColumns(table):
        wanted = column_comments.get(column.name)
        if wanted and (column.description or "") != wanted:
            spark.sql(
                f"ALTER TABLE {table} ALTER COLUMN {column.name} COMMENT {sql_string(wanted)}"
            )


def _add_missing_columns(
    spark: SparkSession, table: str, columns: Sequence[Column], engine: Engine
) -> None:
    """Give an existing table the registry's columns it lacks (its rows read NULL in them).

    Delta adds them when an empty batch that has them is appended with `mergeSchema`: the same
    code on Databricks and on local engines that have no `ALTER TABLE ... ADD COLUMNS`."""
    from pyspark.sql import functions as F

    existing = spark.table(table)
    missing = missing_columns(existing.columns, columns)
    if not missing:
        return
    log.warning("%s: adding the registry's new columns %s", table, [c.name for c in missing])
    empty = existing.limit(0).select(
        *existing.columns, *(F.lit(None).cast(c.type.spark).alias(c.name) for c in missing)
    )
    writer = empty.write.format(engine.table_format).mode("append").option("mergeSchema", "true")
    writer.saveAsTable(table)


def seed_versions(spark: SparkSession, tables: Tables) -> list[str]:
    """Fill each empty versions table from Bronze (a deployment whose Silver streams are past
    rows loaded before the table existed); returns the tables filled."""
    filled = []
    for dataset in (d for d in DATASETS.values() if d.figures):
        table = tables.name(versions_table(dataset))
        if spark.sql(f"SELECT 1 FROM {table} LIMIT 1").count():
            continue
        spark.sql(seed_versions_sql(dataset, tables))
        filled.append(table)
    return filled


# --- Bronze -------------------------------------------------------------------------------------


def _bronze_reader(spark: SparkSession, source: BronzeSource, schema_root: str,
                   engine: Engine) -> DataFrame:  # fmt: skip
    from pyspark.sql import functions as F

    schema = _ddl(source.columns)
    stream = spark.readStream
    if engine.auto_loader and not source.evolve:
        stream = (
            stream.format("cloudFiles")
            .option("cloudFiles.format", source.file_format)
            .schema(schema)
            .option("rescuedDataColumn", RESCUED_DATA)
        )
    elif engine.auto_loader:
        stream = (
            stream.format("cloudFiles")
            .option("cloudFiles.format", source.file_format)
            .option("cloudFiles.schemaLocation", f"{schema_root}/{source.name}")
            # Types come from the registry; a column the registry does not know yet is added
            # to the table (the stream stops once, and run_bronze restarts it with the column).
            .option("cloudFiles.schemaHints", schema)
            .option("cloudFiles.schemaEvolutionMode", "addNewColumns")
            .option("cloudFiles.inferColumnTypes", "true")
        )
        if source.partition:
            stream = stream.option("cloudFiles.partitionColumns", source.partition)
    else:
        stream = stream.format(source.file_format).schema(schema)
    if source.file_format == "json":
        stream = stream.option("multiLine", "true")  # a manifest is one indented JSON object
        # Manifests only: a stray object in `_runs/` (an older ingester's access probe) is not one.
        stream = stream.option("pathGlobFilter", "*.json")
    frame = stream.load(source.folder)
    if RESCUED_DATA not in frame.columns:
        frame = frame.withColumn(RESCUED_DATA, F.lit(None).cast("string"))
    frame = frame.withColumn(SOURCE_FILE, F.col("_metadata.file_path")).withColumn(
        SOURCE_MODIFIED_AT, F.col("_metadata.file_modification_time")
    )
    if source.dataset is not None:
        frame = frame.withColumn("dataset", F.lit(source.dataset))
    names = [c.name for c in _bronze_table_columns(source)]
    extra = [c for c in frame.columns if c not in names]
    return frame.select(*names, *extra)


def start_bronze_stream(spark: SparkSession, source: BronzeSource, tables: Tables,
                        checkpoint_root: str, engine: Engine = DATABRICKS) -> StreamingQuery:  # fmt: skip
    """Start one source's stream into its append-only Bronze table, new files only."""
    return (
        _bronze_reader(spark, source, f"{checkpoint_root}/schemas", engine)
        .writeStream.format(engine.table_format)
        .outputMode("append")
        .option("checkpointLocation", f"{checkpoint_root}/bronze/{source.name}")
        .option("mergeSchema", "true")
        .trigger(availableNow=True)
        .toTable(tables.name(source.table))
    )


#: How often one source's stream may stop for a new column before the run gives up.
SCHEMA_CHANGES_PER_RUN = 5


def run_bronze(
    spark: SparkSession,
    lake: str,
    tables: Tables,
    checkpoint_root: str,
    engine: Engine = DATABRICKS,
    *,
    only: Iterable[str] | None = None,
    has_files: Callable[[str], bool] | None = None,
) -> list[str]:
    """Load every new lake file into Bronze and wait until all of it is in; returns the sources.

    `has_files(folder)` says whether a folder holds files yet (a quarantine folder appears with
    its first row); the notebook passes one built on `dbutils.fs.ls`, which lists one level only.
    """
    wanted = set(only) if only is not None else None
    check = has_files or (lambda folder: _has_files(spark, folder))
    done = []
    for source in bronze_sources(lake):
        if wanted is not None and source.name not in wanted:
            continue
        if not check(source.folder):
            log.info("bronze %s: %s has no files yet", source.name, source.folder)
            continue
        for attempt in range(SCHEMA_CHANGES_PER_RUN + 1):
            try:
                start_bronze_stream(
                    spark, source, tables, checkpoint_root, engine
                ).awaitTermination()
                break
            except Exception as error:
                # Auto Loader stops a stream when files bring a new column, after recording it
                # in the schema location; started again, it loads them with the column.
                if "UNKNOWN_FIELD_EXCEPTION" not in str(error) or attempt == SCHEMA_CHANGES_PER_RUN:
                    raise
                log.warning("bronze %s: new columns, restarting the stream", source.name)
        done.append(source.name)
    return done


def _has_files(spark: SparkSession, folder: str) -> bool:
    """Whether `folder` holds a file yet (a quarantine folder appears only with its first row)."""
    try:
        files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(folder)
        return files.select("path").limit(1).count() > 0
    except Exception as error:  # classic Spark and Spark Connect raise different types
        if "PATH_NOT_FOUND" in str(error) or "does not exist" in str(error):
            return False
        raise


# --- Silver -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchCounts:
    rows: int
    rejected: int


def merge_silver_batch(
    batch: DataFrame, batch_id: int, dataset: Dataset, tables: Tables
) -> BatchCounts:
    """The `foreachBatch` body: split off rows that break a check, then MERGE the rest.

    A replayed batch (the same `batch_id` after a failure) changes nothing: the MERGE only writes
    newer rows, and a rejected row already kept is not kept twice."""
    # The batch is read by up to four statements (the MERGEs, the rejects and the count):
    # persisted, its Bronze files are read once.
    batch = batch.persist()
    try:
        return _merge_persisted(batch, batch_id, dataset, tables)
    finally:
        batch.unpersist()


def _merge_persisted(
    batch: DataFrame, batch_id: int, dataset: Dataset, tables: Tables
) -> BatchCounts:
    spark = batch.sparkSession
    view = f"_batch_{dataset.name}"
    batch.createOrReplaceTempView(view)
    target = tables.name(silver_table(dataset))
    passing, rejected = check_split_sql(dataset, view)
    passing_view = f"{view}_passing"
    spark.sql(f"CREATE OR REPLACE TEMP VIEW {passing_view} AS {passing}")
    if dataset.kind == "profile":
        spark.sql(scd2_merge_sql(passing_view, target))
    else:
        spark.sql(merge_sql(dataset, passing_view, target))
    if dataset.figures:
        spark.sql(versions_merge_sql(dataset, passing_view, tables.name(versions_table(dataset))))
    rejected_count = spark.sql(f"SELECT COUNT(*) AS n FROM ({rejected}) AS r").first()
    count = int(rejected_count["n"]) if rejected_count else 0
    if count:
        spark.sql(keep_rejects_sql(dataset, rejected, tables.name("silver_rejects")))
        log.warning("silver %s batch %s: %d rows broke a check", dataset.name, batch_id, count)
    return BatchCounts(rows=batch.count(), rejected=count)


BatchHandler = Callable[["DataFrame", int, Dataset, Tables], object]


def start_silver_stream(
    spark: SparkSession,
    dataset: Dataset,
    tables: Tables,
    checkpoint_root: str,
    engine: Engine = DATABRICKS,
    *,
    on_batch: BatchHandler = merge_silver_batch,
) -> StreamingQuery:
    """Stream Bronze (append-only) into Silver: `on_batch` (the MERGE) once per micro-batch."""

    def handle(batch: DataFrame, batch_id: int) -> None:
        on_batch(batch, batch_id, dataset, tables)

    return (
        spark.readStream.format(engine.table_format)
        .table(tables.name(bronze_table(dataset)))
        .writeStream.foreachBatch(handle)
        .option("checkpointLocation", f"{checkpoint_root}/silver/{dataset.name}")
        .trigger(availableNow=True)
        .start()
    )


def run_silver(
    spark: SparkSession,
    tables: Tables,
    checkpoint_root: str,
    engine: Engine = DATABRICKS,
    *,
    on_batch: BatchHandler = merge_silver_batch,
    only: Iterable[str] | None = None,
) -> list[str]:
    """Merge every new Bronze row into Silver and wait for it; returns the datasets."""
    names = list(only) if only is not None else list(DATASETS)
    for dataset in (DATASETS[name] for name in names):
        query = start_silver_stream(
            spark, dataset, tables, checkpoint_root, engine, on_batch=on_batch
        )
        query.awaitTermination()
    return names


# --- Gold ---------------------------------------------------------------------------------------


def build_gold(spark: SparkSession, tables: Tables, engine: Engine = DATABRICKS, *,
               today: dt.date | None = None,
               statement_basis: StatementBasis = DEFAULT_STATEMENT_BASIS) -> GoldRefresh:  # fmt: skip
    """The exchange calendar table, `gold_rsi_14`, the Gold tables (refreshed where this night's
    files change them) and the `data_health` view; returns what the refresh did.
    `statement_basis` is the share basis of FMP's statements (`medallion.StatementBasis`)."""
    until = (today or dt.date.today()) + dt.timedelta(days=366)
    sessions = tables.name("ref_exchange_sessions")
    spark.sql(engine.create_table(sessions, (Column("session", ColumnType.DATE),)))
    frame = spark.createDataFrame(exchange_sessions(until), "session date")
    frame.write.format(engine.table_format).mode("overwrite").insertInto(sessions, overwrite=True)
    rsi = tables.name(RSI_TABLE)
    spark.sql(engine.create_table(rsi, rsi_columns(), cluster_by=("symbol", "date")))
    refresh_rsi(spark.sql, lambda sql: int(spark.sql(sql).collect()[0][0]), tables)
    refreshed = refresh_gold_tables(spark, tables, engine, statement_basis=statement_basis)
    for name in GOLD_VIEWS.keys() - GOLD_TABLES.keys():
        spark.sql(gold_view_sql(name, tables, statement_basis))
    return refreshed


@dataclass(frozen=True, slots=True)
class GoldRefresh:
    """What a night's refresh did: the new Bronze files, the symbols they touch, and per Gold
    table the rows written (None: built in full)."""

    new_files: int
    symbols: int
    rows: dict[str, int | None]

    def __str__(self) -> str:
        written = ", ".join(
            f"{name} {'built in full' if n is None else f'{n} rows'}"
            for name, n in self.rows.items()
        )
        return f"{self.new_files} new files, {self.symbols} symbols: {written}"


def refresh_gold_tables(
    spark: SparkSession,
    tables: Tables,
    engine: Engine = DATABRICKS,
    *,
    statement_basis: StatementBasis = DEFAULT_STATEMENT_BASIS,
) -> GoldRefresh:
    """Bring each Gold table up to Silver: per symbol that the Bronze files not taken in yet touch,
    delete its rows from the first date they can change and compute them again from the table's
    source view. A table that does not exist yet (or is still a view, or whose columns changed)
    is built in full. The files are then marked as taken in, so a failed night is redone."""
    seen = tables.name(GOLD_SEEN_FILES)
    spark.sql(engine.create_table(seen, (Column(SOURCE_FILE, ColumnType.STRING),)))
    files = [row[0] for row in spark.sql(gold_new_files_sql(tables)).collect()]
    spark.createDataFrame([(f,) for f in files], f"{SOURCE_FILE} string").createOrReplaceTempView(
        GOLD_NEW_FILES
    )
    changes = [tuple(row) for row in spark.sql(gold_changes_sql(tables)).collect()]
    spark.createDataFrame(changes, "symbol string, since date").createOrReplaceTempView(
        GOLD_CHANGES
    )
    rows: dict[str, int | None] = {}
    for name, column in GOLD_TABLES.items():  # in order: daily_features reads fundamentals_pit
        table, source = tables.name(name), tables.name(gold_source(name))
        spark.sql(gold_source_sql(name, tables, statement_basis))
        kind = _table_type(spark, table)
        if kind not in (None, "VIEW") and spark.table(table).columns == spark.table(source).columns:
            spark.sql(gold_invalidate_sql(name, tables))
            spark.sql(gold_refill_sql(name, tables))
            if engine.alter_comments:
                _sync_comments(spark, table, GOLD_COMMENTS[name], {})
            rows[name] = spark.sql(
                f"SELECT COUNT(*) FROM {table} AS t JOIN {GOLD_CHANGES} AS c "
                f"ON t.symbol = c.symbol AND t.{column} >= c.since"
            ).collect()[0][0]
            continue
        if kind == "VIEW":
            spark.sql(f"DROP VIEW {table}")  # a deployment from before the tables
        columns = ", ".join(
            f"{f.name} {f.dataType.simpleString()}" for f in spark.table(source).schema.fields
        )
        spark.sql(
            _replace_table_sql(
                engine, table, columns, cluster_by=("symbol", column), comment=GOLD_COMMENTS[name]
            )
        )
        spark.sql(f"INSERT INTO {table} SELECT * FROM {source}")
        rows[name] = None
    spark.sql(f"INSERT INTO {seen} SELECT {SOURCE_FILE} FROM {GOLD_NEW_FILES}")
    return GoldRefresh(len(files), len(changes), rows)


def _table_type(spark: SparkSession, name: str) -> str | None:
    """The catalog's type of `name` (MANAGED, EXTERNAL, VIEW, ...), or None when it does not exist."""
    if not spark.catalog.tableExists(name):
        return None
    return str(spark.catalog.getTable(name).tableType)


# --- upkeep -------------------------------------------------------------------------------------


def maintenance_sql(tables: Tables) -> list[str]:
    """Per table: OPTIMIZE (compacts small files; reclusters Silver on its key), VACUUM keeping
    a week of time travel, and ANALYZE of the registry's columns for the optimizer (only those:
    a column Bronze gained later may be nested, which ANALYZE refuses)."""
    columns: dict[str, tuple[Column, ...]] = {}
    for source in bronze_sources("unused"):
        columns[tables.name(source.table)] = _bronze_table_columns(source)
    for dataset in DATASETS.values():
        silver = dim_company_columns() if dataset.kind == "profile" else silver_columns(dataset)
        columns[tables.name(silver_table(dataset))] = silver
        if dataset.figures:
            columns[tables.name(versions_table(dataset))] = versions_columns(dataset)
    columns[tables.name("silver_rejects")] = rejects_columns()
    columns[tables.name(RSI_TABLE)] = rsi_columns()
    columns[tables.name(GOLD_SEEN_FILES)] = (Column(SOURCE_FILE, ColumnType.STRING),)
    statements = []
    for name, table_columns in columns.items():
        statements += [
            f"OPTIMIZE {name}",
            f"VACUUM {name} RETAIN {RETENTION_HOURS} HOURS",
            f"ANALYZE TABLE {name} COMPUTE STATISTICS FOR COLUMNS "
            + ", ".join(c.name for c in table_columns),
        ]
    # The Gold tables' columns are their SQL's, all of them plain.
    for name in (tables.name(n) for n in GOLD_TABLES):
        statements += [
            f"OPTIMIZE {name}",
            f"VACUUM {name} RETAIN {RETENTION_HOURS} HOURS",
            f"ANALYZE TABLE {name} COMPUTE STATISTICS FOR ALL COLUMNS",
        ]
    return statements


def maintain_tables(spark: SparkSession, tables: Tables) -> list[str]:
    """Run `maintenance_sql`; returns the statements run."""
    statements = maintenance_sql(tables)
    for statement in statements:
        spark.sql(statement)
    return statements
