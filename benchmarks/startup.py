"""Benchmark: how long `--help` and `ingest --dry-run` take, start to exit, as a user runs them.

Each command runs in a process of its own, `--runs` times after one warm-up run, with bytecode
written as an installed package has it (PYTHONDONTWRITEBYTECODE is unset). `--pythonpath` runs
another source tree on the same interpreter and packages, to compare before and after a change:

    .venv/bin/python benchmarks/startup.py --output benchmarks/results/startup.json
    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/startup.py --pythonpath /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return elapsed


def _measure(
    argv: list[str], env: dict[str, str], cwd: Path, runs: int, fresh_cache: bool
) -> dict[str, float]:
    times = []
    for run in range(runs + 1):
        if fresh_cache:
            env = {**env, "STOCK_PIPELINE_CACHE_DIR": tempfile.mkdtemp(dir=cwd)}
        elapsed = _time(argv, env, cwd)
        if run:  # the first run only warms the file cache and writes bytecode
            times.append(elapsed)
    return {
        "median_seconds": round(statistics.median(times), 3),
        "min_seconds": round(min(times), 3),
        "max_seconds": round(max(times), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pythonpath", type=Path, help="a source tree to run instead")
    parser.add_argument("--output", type=Path, help="write the results here as JSON")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if args.pythonpath:
        env["PYTHONPATH"] = str(args.pythonpath.resolve())
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        (cwd / "tickers.csv").write_text("symbol\n" + "\n".join(f"S{i:03d}" for i in range(500)))
        env["STOCK_PIPELINE_CACHE_DIR"] = str(cwd / "cache")
        cli = [sys.executable, "-m", "stock_pipeline"]
        dry_run = [*cli, "ingest", "--tickers-path", "tickers.csv", "--backfill-days", "1260"]
        cases = {
            "stock-pipeline --help": ([*cli, "--help"], False),
            "stock-pipeline ingest --help": ([*cli, "ingest", "--help"], False),
            "ingest --dry-run, 500 tickers x 1,260 sessions": ([*dry_run, "--dry-run"], False),
            "the same dry run, calendar not cached yet": ([*dry_run, "--dry-run"], True),
        }
        results = {
            name: _measure(argv, env, cwd, args.runs, fresh)
            for name, (argv, fresh) in cases.items()
        }
    report = {
        "source": str(args.pythonpath or "this checkout"),
        "runs": args.runs,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
