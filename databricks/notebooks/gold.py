# Databricks notebook source
# MAGIC %md
# MAGIC # Gold: the views analysts query
# MAGIC
# MAGIC Refreshes `ref_exchange_sessions` (the NYSE calendar), extends `gold_rsi_14` (Wilder's RSI,
# MAGIC carried night to night: only new sessions are computed) and (re)creates the Gold views, all
# MAGIC generated from the dataset registry: `price_features`, `fundamentals_pit` (trailing twelve
# MAGIC months as known on each date, dated by the SEC acceptance time, never the period end),
# MAGIC `daily_features` (market cap, P/E, P/S, P/B, FCF yield) and `data_health`. Views read
# MAGIC Silver as it is now.

# COMMAND ----------

dbutils.widgets.text("catalog", "main", "Catalog")
dbutils.widgets.text("schema", "stock_pipeline", "Schema")

# COMMAND ----------

from stock_pipeline.medallion import Tables
from stock_pipeline.medallion_spark import build_gold

tables = Tables(dbutils.widgets.get("catalog"), dbutils.widgets.get("schema"))
views = build_gold(spark, tables)
print(f"Gold views: {', '.join(views)}")

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
