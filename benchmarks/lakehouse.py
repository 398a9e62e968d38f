"""Benchmark: `stock-pipeline lakehouse` on a lake, a first build and a build with nothing new.

Each build runs in a process of its own, so wall time and peak memory (max RSS) are the build's.

    .venv/bin/python benchmarks/backfill.py --tickers 500 --sessions 1260 --keep-lake /tmp/lake-500x5y
    .venv/bin/python benchmarks/lakehouse.py --lake /tmp/lake-500x5y
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from figures import report


def build(lake: Path, database: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "stock_pipeline", "lakehouse", "--lake", str(lake),
           "--database", str(database)]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 gives this child's own resource usage, so each build's peak memory is its own.
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        assert process.stderr is not None
        sys.stderr.write(process.stderr.read().decode())
        raise SystemExit(f"lakehouse exited {os.waitstatus_to_exitcode(status)}")
    return {"wall_seconds": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        database = Path(scratch) / "lakehouse.duckdb"
        first = build(args.lake, database)
        again = build(args.lake, database)
        with duckdb.connect(str(database), read_only=True) as con:
            rows = {
                table: con.sql(f"SELECT COUNT(*) FROM {table}").fetchall()[0][0]
                for table in (
                    "bronze_prices",
                    "silver_prices",
                    "silver_income_statement",
                    "dim_company",
                )
            }
            started = time.perf_counter()
            features = con.sql("SELECT COUNT(*), AVG(rsi_14) FROM price_features").fetchall()[0][0]
            gold_seconds = time.perf_counter() - started
        size = database.stat().st_size
    figures = {
        "lake": args.lake.name,
        "price_files": sum(1 for _ in (args.lake / "raw" / "prices").rglob("*.parquet")),
        "rows": rows,
        "first_build": first,
        "build_with_nothing_new": again,
        "price_features_rows": features,
        "price_features_full_scan_seconds": round(gold_seconds, 2),
        "database_mib": round(size / 2**20, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    report(figures, args.output)


if __name__ == "__main__":
    main()
