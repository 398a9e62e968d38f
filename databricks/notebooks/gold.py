# Databricks notebook source
# MAGIC %md
# MAGIC # Gold: the tables analysts query
# MAGIC
# MAGIC Refreshes `ref_exchange_sessions` (the NYSE calendar), extends `gold_rsi_14` (Wilder's RSI,
# MAGIC carried night to night: only new sessions are computed) and refreshes the Gold tables, all
# MAGIC generated from the dataset registry: `price_features` (on one share basis across splits),
# MAGIC `fundamentals_pit` (trailing twelve months from every version of each quarter, each known
# MAGIC from its SEC acceptance time, never the period end), `daily_features` (market cap, P/E, P/S,
# MAGIC P/B, FCF yield on each session's own share basis), and the `data_health` view. A night
# MAGIC recomputes only each touched symbol's rows from the first date its new files can change;
# MAGIC `_<table>_source` views hold the full computation.

# COMMAND ----------

dbutils.widgets.text("catalog", "main", "Catalog")
dbutils.widgets.text("schema", "stock_pipeline", "Schema")
dbutils.widgets.text("statement_basis", "fetched", "Share basis of FMP's statements")

# COMMAND ----------

from stock_pipeline.medallion import Tables
from stock_pipeline.medallion_spark import build_gold

tables = Tables(dbutils.widgets.get("catalog"), dbutils.widgets.get("schema"))
basis = dbutils.widgets.get("statement_basis")
if basis not in ("fetched", "filed"):
    raise ValueError(f"statement_basis must be 'fetched' or 'filed', not {basis!r}")
refreshed = build_gold(spark, tables, statement_basis=basis)
print(f"Gold refreshed: {refreshed}")

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT * FROM IDENTIFIER(:catalog || '.' || :schema || '.data_health') ORDER BY dataset

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT symbol, date, close, pe_ratio, ps_ratio, pb_ratio, fcf_yield, market_cap
# MAGIC FROM IDENTIFIER(:catalog || '.' || :schema || '.daily_features')
# MAGIC WHERE date = (SELECT MAX(date) FROM IDENTIFIER(:catalog || '.' || :schema || '.daily_features'))
# MAGIC ORDER BY market_cap DESC NULLS LAST
# MAGIC LIMIT 20
