# Databricks notebook source
# MAGIC %md
# MAGIC # Bronze: the lake's files into append-only Delta tables
# MAGIC
# MAGIC One Auto Loader stream per lake folder (`raw/<dataset>/`, `quarantine/<dataset>/`, `_runs/`),
# MAGIC each with its own checkpoint and schema location under the checkpoint root, run with
# MAGIC `trigger(availableNow=True)`: every file that arrived since the last run is loaded once,
# MAGIC then the stream stops. Types come from the dataset registry (schema hints); a column the
# MAGIC registry does not know yet is added to the table (the stream stops once and is started
# MAGIC again with the column), and values that do not fit land in `_rescued_data`. The manifests
# MAGIC are read with fixed columns; the rest of each manifest is kept in `_rescued_data`.
# MAGIC Each row keeps the file it came from and that file's modification time (`_source_file`,
# MAGIC `_source_modified_at`); the partition value (`date=` or `ingest_date=` in the path)
# MAGIC becomes a typed DATE column.
# MAGIC
# MAGIC Safe to rerun: the checkpoints remember which files were loaded.

# COMMAND ----------

dbutils.widgets.text("lake", "", "Lake (s3://bucket/prefix)")
dbutils.widgets.text("catalog", "main", "Catalog")
dbutils.widgets.text("schema", "stock_pipeline", "Schema")
dbutils.widgets.text("checkpoint_root", "", "Checkpoint root (s3://… or /Volumes/…)")

# COMMAND ----------

from stock_pipeline.medallion import Tables
from stock_pipeline.medallion_spark import create_tables, run_bronze

lake = dbutils.widgets.get("lake").rstrip("/")
checkpoint_root = dbutils.widgets.get("checkpoint_root").rstrip("/")
if not lake or not checkpoint_root:
    raise ValueError("set the lake and checkpoint_root parameters")
tables = Tables(dbutils.widgets.get("catalog"), dbutils.widgets.get("schema"))

# COMMAND ----------


def has_files(folder: str) -> bool:
    """One level of listing: a folder appears with its first file (quarantine often has none)."""
    try:
        return len(dbutils.fs.ls(folder)) > 0
    except Exception as error:
        if "FileNotFoundException" in str(error) or "does not exist" in str(error):
            return False
        raise


create_tables(spark, tables)
loaded = run_bronze(spark, lake, tables, checkpoint_root, has_files=has_files)
print(f"Bronze streams run: {', '.join(loaded)}")

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT _source_file, COUNT(*) AS rows, MAX(_source_modified_at) AS landed
# MAGIC FROM IDENTIFIER(:catalog || '.' || :schema || '.bronze_prices')
# MAGIC GROUP BY _source_file
# MAGIC ORDER BY landed DESC
# MAGIC LIMIT 20
