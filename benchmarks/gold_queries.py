"""Benchmark: an analyst's Gold queries on views (every query computes every window) and on tables.

Runs on the DuckDB database `stock-pipeline lakehouse` builds, where Gold is views. The views are
copied into tables once (what the Databricks job keeps), and each query is timed on both.

    .venv/bin/python benchmarks/backfill.py --tickers 500 --sessions 1260 \\
        --datasets prices,income_statement,balance_sheet,cash_flow,profile,splits --keep-lake /tmp/lake
    .venv/bin/python -m stock_pipeline lakehouse --lake /tmp/lake --database /tmp/lake.duckdb
    .venv/bin/python benchmarks/gold_queries.py --database /tmp/lake.duckdb
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
from figures import report

GOLD_TABLES = ("price_features", "fundamentals_pit", "daily_features")
#: From DATABRICKS_SETUP.md, "Queries for analysts".
QUERIES = {
    "the 20 largest companies on the last session": """
        SELECT d.symbol, d.close, d.market_cap, d.pe_ratio, d.fcf_yield,
               p.return_20d, p.volatility_20d, p.rsi_14, p.drawdown
        FROM {daily_features} AS d
        JOIN {price_features} AS p USING (symbol, date)
        WHERE d.date = (SELECT MAX(date) FROM silver_prices)
        ORDER BY d.market_cap DESC NULLS LAST
        LIMIT 20""",
    "one company's P/E through time": """
        SELECT date, close, ttm_eps_diluted, pe_ratio
        FROM {daily_features}
        WHERE symbol = (SELECT MIN(symbol) FROM silver_prices) AND date >= DATE '2024-01-01'
        ORDER BY date""",
}


def timed(con: duckdb.DuckDBPyConnection, sql: str, runs: int) -> float:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        con.execute(sql).fetchall()
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        database = Path(scratch) / "gold.duckdb"
        shutil.copy(args.database, database)
        con = duckdb.connect(str(database))
        views = {name: name for name in GOLD_TABLES}
        tables = {name: f"{name}_table" for name in GOLD_TABLES}
        started = time.perf_counter()
        for name in GOLD_TABLES:
            con.execute(f"CREATE TABLE {tables[name]} AS SELECT * FROM {name}")
        materialize = round(time.perf_counter() - started, 1)
        rows = {
            name: int(con.execute(f"SELECT COUNT(*) FROM {tables[name]}").fetchone()[0])  # type: ignore[index]
            for name in GOLD_TABLES
        }
        figures = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, Python {platform.python_version()}",
            "engine": f"DuckDB {duckdb.__version__}",
            "gold_rows": rows,
            "materialize_seconds": materialize,
            "queries": {
                label: {
                    "views_seconds": timed(con, sql.format(**views), args.runs),
                    "tables_seconds": timed(con, sql.format(**tables), args.runs),
                }
                for label, sql in QUERIES.items()
            },
        }
    report(figures, args.output)


if __name__ == "__main__":
    main()
