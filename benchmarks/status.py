"""Benchmark: `stock-pipeline status` on a lake, through the CLI, as a cron would run it.

The tickers are the lake's own (every symbol its manifests name), so the report covers them all.
`--nights N` adds N nightly runs after the lake's last one, as a year of cron runs would leave
them: copies of its newest manifest, one session each, in a scratch copy of `_runs/` (status
reads nothing else).

    .venv/bin/python benchmarks/backfill.py --tickers 5000 --sessions 1260 --prices-source auto \\
        --datasets prices,income_statement --keep-lake /tmp/lake-5000
    .venv/bin/python benchmarks/status.py --lake /tmp/lake-5000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from figures import report


def add_nights(runs: Path, nights: int) -> None:
    """`nights` nightly manifests after the newest one: one session each, a file per dataset, and
    the 5% of companies a night refreshes (its filings and its share of the monthly rotation)."""
    from stock_pipeline.market_calendar import sessions_between

    newest = json.loads(max(runs.glob("*.json")).read_text())
    end = dt.date.fromisoformat(newest["range"]["end"])
    days = sessions_between(end + dt.timedelta(days=1), end + dt.timedelta(days=nights * 2))
    companies = sorted(newest.get("companies") or {})
    for n, day in enumerate(days[:nights]):
        run_id = f"{day:%Y%m%d}T233000Z-nightly"
        files = newest["files"][:2]
        night = {
            **newest,
            "run_id": run_id,
            "range": {"start": day.isoformat(), "end": day.isoformat(), "sessions": 1},
            "files": [{**f, "path": f["path"].replace(newest["run_id"], run_id)} for f in files],
            "companies": {s: newest["companies"][s] for s in companies[n % 20 :: 20]},
            "gaps": {},
        }
        (runs / f"{run_id}.json").write_text(json.dumps(night, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nights", type=int, default=0, help="nightly manifests to add")
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        lake = args.lake
        if args.nights:
            lake = Path(scratch) / "lake"
            shutil.copytree(args.lake / "_runs", lake / "_runs")
            add_nights(lake / "_runs", args.nights)
        manifests = sorted((lake / "_runs").glob("*.json"))
        symbols = sorted({s for m in manifests for s in json.loads(m.read_text())["symbols"]})
        tickers = Path(scratch) / "tickers.csv"
        tickers.write_text("symbol\n" + "".join(f"{s}\n" for s in symbols))
        cmd = [sys.executable, "-m", "stock_pipeline", "status", "--lake", str(lake),
               "--tickers-path", str(tickers), "--format", "json"]  # fmt: skip
        seconds, exit_codes = [], set()
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            seconds.append(time.perf_counter() - started)
            exit_codes.add(done.returncode)
            result = json.loads(done.stdout)
        megabytes = round(sum(m.stat().st_size for m in manifests) / 1e6, 1)
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "tickers": len(symbols),
        "manifests": len(manifests),
        "manifest_megabytes": megabytes,
        "median_seconds": round(statistics.median(seconds), 2),
        "max_seconds": round(max(seconds), 2),
        "exit_codes": sorted(exit_codes),
        "last_session": result["last_session"],
        "fresh": result["fresh"],
    }
    report(figures, args.output)


if __name__ == "__main__":
    main()
