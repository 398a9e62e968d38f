"""The notebooks' streaming wiring on classic local Spark, run by test_databricks_streaming.py.

It runs in its own process: a pyspark process that has opened a Spark Connect session (the Sail
tests) cannot start classic Spark any more. Classic Spark has no Delta or Auto Loader without jars
from Maven, so the tables are Parquet and the source is Spark's file stream, with the schema from
the registry: the checkpoints, `availableNow` and the Silver `foreachBatch` are the real ones.

    python tests/spark_streaming_job.py <lake> <new-files-lake> <work-folder> <result.json>

Runs Bronze and Silver three times: on the lake as it is, after copying in the files of the second
lake that it lacks, and once more with nothing new. Writes what each run saw as JSON.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from stock_pipeline.datasets import Dataset
from stock_pipeline.medallion import Tables
from stock_pipeline.medallion_spark import Engine, create_tables, run_bronze, run_silver

ENGINE = Engine(auto_loader=False, table_format="parquet", clustering=False, change_data_feed=False)
TABLES = Tables()
#: A few sources keep the run short; the wiring is the same for every dataset.
SOURCES = ("prices", "income_statement", "quarantine_prices", "runs")
BRONZE = ("bronze_prices", "bronze_income_statement", "bronze_runs")


def snapshot(spark: SparkSession) -> dict[str, Any]:
    counts = {t: spark.table(t).count() for t in BRONZE}
    files = spark.sql("SELECT COUNT(DISTINCT _source_file) AS n FROM bronze_prices").first()
    lineage = spark.sql(
        "SELECT MIN(_source_file) AS f, COUNT(_source_modified_at) AS m, "
        "COUNT(_rescued_data) AS r, MIN(date) AS d FROM bronze_prices"
    ).first()
    types = {
        row["col_name"]: row["data_type"] for row in spark.sql("DESCRIBE bronze_prices").collect()
    }
    return {
        "counts": counts,
        "price_files": files["n"] if files else 0,
        "first_source_file": lineage["f"] if lineage else None,
        "modified_at_rows": lineage["m"] if lineage else 0,
        "rescued_rows": lineage["r"] if lineage else 0,
        "date_type": types.get("date"),
    }


def main(lake: str, new_files: str, work: str, result: str) -> None:
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.sql.warehouse.dir", f"{work}/warehouse")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    checkpoints = f"{work}/checkpoints"
    batches: list[dict[str, Any]] = []

    def record(batch: DataFrame, batch_id: int, dataset: Dataset, tables: Tables) -> None:
        batches.append({"dataset": dataset.name, "batch_id": batch_id, "rows": batch.count()})

    runs = []
    created = create_tables(spark, TABLES, ENGINE)
    for step in ("first", "second", "nothing new"):
        if step == "second":
            for source in Path(new_files).rglob("*"):
                target = Path(lake) / source.relative_to(new_files)
                if source.is_file() and not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)
        batches.clear()
        sources = run_bronze(spark, lake, TABLES, checkpoints, ENGINE, only=SOURCES)
        run_silver(
            spark, TABLES, checkpoints, ENGINE, on_batch=record, only=("prices", "income_statement")
        )
        runs.append({"step": step, "sources": sources, "batches": list(batches), **snapshot(spark)})
    Path(result).write_text(json.dumps({"tables": created, "runs": runs}, default=str, indent=2))
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:5])
