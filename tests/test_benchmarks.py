"""The benchmarks still run: a small smoke version of each, so a change that breaks one is seen
in CI, not the next time someone measures. The figures are the benchmarks' business, not these
tests'."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stock_pipeline.lakehouse import build_lakehouse
from tests.medallion_lake import TODAY, MedallionLake
from tests.support import REPO


def test_the_backfill_benchmark_runs_side_by_side_with_its_floor(tmp_path: Path) -> None:
    output = tmp_path / "figures.json"
    subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "backfill.py"),
            "--tickers", "3", "--sessions", "5", "--datasets", "prices,profile",
            "--floor", "--repeat", "2", "--output", str(output),
        ],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    figures = json.loads(output.read_text())
    assert figures["requests"] == 6
    assert figures["floor"]["requests"] == 6  # the floor sends what the ingest sends
    assert figures["rows"] == 3 * 5 + 3
    assert figures["rate_limited_responses"] == 0
    assert figures["wall_to_floor"] > 0
    assert len(figures["runs"]) == len(figures["floors"]) == len(figures["wall_to_floor_each"]) == 2


def test_the_nightly_benchmark_plans_a_month_of_nights(tmp_path: Path) -> None:
    output = tmp_path / "nightly.json"
    subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "nightly.py"),
            "--tickers", "40", "--start", "2025-01-02", "--end", "2025-02-14",
            "--output", str(output),
        ],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    figures = json.loads(output.read_text())
    assert figures["first_night"] == 1 + 40 * 8  # eod-bulk, then every company in full
    assert figures["before_every_night"] == 40 * 9
    assert figures["median"] < figures["before_every_night"]
    assert figures["longest_days_between_full_refreshes"] <= 31


def test_the_gold_query_benchmark_times_views_and_tables(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    database = tmp_path / "lake.duckdb"
    build_lakehouse(lakes[1].lake, database, today=TODAY)
    output = tmp_path / "gold.json"
    subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "gold_queries.py"),
            "--database", str(database), "--runs", "1", "--output", str(output),
        ],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    figures = json.loads(output.read_text())
    assert figures["gold_rows"]["price_features"] > 600
    assert len(figures["queries"]) == 2
    for timings in figures["queries"].values():
        assert timings["views_seconds"] > 0
        assert timings["tables_seconds"] > 0


def test_the_status_benchmark_reports_on_a_lake(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path: Path
) -> None:
    output = tmp_path / "status.json"
    subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "status.py"),
            "--lake", str(lakes[1].root), "--runs", "1", "--output", str(output),
        ],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    figures = json.loads(output.read_text())
    assert figures["manifests"] == 2
    assert figures["tickers"] >= 2
    assert figures["median_seconds"] > 0
    assert figures["exit_codes"] in ([0], [1])  # judged against today: most likely stale
