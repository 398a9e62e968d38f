# Databricks notebook source
# MAGIC %md
# MAGIC # Upkeep: OPTIMIZE, VACUUM, ANALYZE
# MAGIC
# MAGIC For every Bronze and Silver table: `OPTIMIZE` (Silver is liquid-clustered on its key, so
# MAGIC this reclusters incrementally), `VACUUM … RETAIN 168 HOURS` (a week of time travel stays
# MAGIC possible) and `ANALYZE TABLE … COMPUTE STATISTICS FOR ALL COLUMNS`.
# MAGIC
# MAGIC Auditing a bad night (see docs/medallion.md): `DESCRIBE HISTORY <table>` lists the versions
# MAGIC with the MERGE metrics of each run; `SELECT … FROM <table> VERSION AS OF <v>` or
# MAGIC `TIMESTAMP AS OF '<time>'` reads the table as it was; `RESTORE TABLE <table> TO VERSION AS OF
# MAGIC <v>` puts it back. All of it only within the retention kept here.

# COMMAND ----------

dbutils.widgets.text("catalog", "main", "Catalog")
dbutils.widgets.text("schema", "stock_pipeline", "Schema")

# COMMAND ----------

from stock_pipeline.medallion import Tables
from stock_pipeline.medallion_spark import maintain_tables

tables = Tables(dbutils.widgets.get("catalog"), dbutils.widgets.get("schema"))
for statement in maintain_tables(spark, tables):
    print(statement)
