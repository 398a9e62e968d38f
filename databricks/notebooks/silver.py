# Databricks notebook source
# MAGIC %md
# MAGIC # Silver: one MERGE per dataset and micro-batch
# MAGIC
# MAGIC Bronze is append-only, so a streaming read of each Bronze table sees exactly the rows that
# MAGIC arrived since the last run. Each micro-batch (`foreachBatch`) is first split by the
# MAGIC registry's checks (rows that break one go to `silver_rejects` with every reason, counted,
# MAGIC never silently dropped), then deduplicated on the dataset's key keeping the newest
# MAGIC `_ingested_at`, then merged: a row updates Silver only when it is newer, so a replayed batch
# MAGIC changes nothing and a late correction wins. Keys: prices on (symbol, date), statements on
# MAGIC (symbol, date, period). Profiles become `dim_company`, a type-2 history
# MAGIC (`valid_from`, `valid_to`, `is_current`).
# MAGIC
# MAGIC Statements also keep every version (`silver_<statement>_versions`), for point-in-time Gold.
# MAGIC A column added to the registry is added to the tables first (rows already there read NULL).
# MAGIC
# MAGIC The Silver tables have the change data feed on: read what changed with `table_changes`.

# COMMAND ----------

dbutils.widgets.text("catalog", "main", "Catalog")
dbutils.widgets.text("schema", "stock_pipeline", "Schema")
dbutils.widgets.text("checkpoint_root", "", "Checkpoint root (s3://… or /Volumes/…)")

# COMMAND ----------

from stock_pipeline.medallion import Tables
from stock_pipeline.medallion_spark import create_tables, run_silver, seed_versions

checkpoint_root = dbutils.widgets.get("checkpoint_root").rstrip("/")
if not checkpoint_root:
    raise ValueError("set the checkpoint_root parameter")
tables = Tables(dbutils.widgets.get("catalog"), dbutils.widgets.get("schema"))

# COMMAND ----------

create_tables(spark, tables)
seeded = seed_versions(spark, tables)  # once, on a deployment older than the versions tables
if seeded:
    print(f"Filled from Bronze: {', '.join(seeded)}")
merged = run_silver(spark, tables, checkpoint_root)
print(f"Silver merged: {', '.join(merged)}")

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT dataset, _reason, COUNT(*) AS rows, MAX(_ingested_at) AS latest
# MAGIC FROM IDENTIFIER(:catalog || '.' || :schema || '.silver_rejects')
# MAGIC GROUP BY dataset, _reason
# MAGIC ORDER BY rows DESC
