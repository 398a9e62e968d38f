"""The workspace's data health dashboard (an AI/BI dashboard), generated from the registry.

The bundle deploys `databricks/dashboards/data_health.lvdash.json`, which `write_dashboard`
writes from `health_dashboard()`; a test keeps the file equal to it. Its queries name tables
without a catalog or schema: the bundle gives the dashboard both (`dataset_catalog`,
`dataset_schema`), so one file serves dev and prod.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stock_pipeline.datasets import DATASETS
from stock_pipeline.medallion import bronze_table

__all__ = ["DASHBOARD_FILE", "dashboard_queries", "health_dashboard", "write_dashboard"]

DASHBOARD_FILE = Path("databricks") / "dashboards" / "data_health.lvdash.json"


def dashboard_queries() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """Per dataset of the dashboard: its title, its SQL and the columns its table shows."""
    nights = "\n  UNION ALL\n  ".join(
        f"SELECT CAST(_ingested_at AS DATE) AS night, '{name}' AS dataset, COUNT(*) AS rows "
        f"FROM {bronze_table(dataset)} GROUP BY CAST(_ingested_at AS DATE)"
        for name, dataset in DATASETS.items()
    )
    return {
        "freshness": (
            "Freshness: the newest data and the last run",
            "SELECT dataset, latest_landed, last_run_id, last_run_status, last_run_finished_at\n"
            "FROM data_health ORDER BY dataset",
            ("dataset", "latest_landed", "last_run_id", "last_run_status", "last_run_finished_at"),
        ),
        "coverage": (
            "Coverage: symbols against the universe, sessions missing",
            "SELECT dataset, symbols_covered, symbols_in_universe, session_gaps, silver_rows\n"
            "FROM data_health ORDER BY dataset",
            ("dataset", "symbols_covered", "symbols_in_universe", "session_gaps", "silver_rows"),
        ),
        "rejects": (
            "Rejects: rows Silver refused or the ingester quarantined, per night",
            "SELECT night, dataset, what, COUNT(*) AS rows FROM (\n"
            "  SELECT CAST(_ingested_at AS DATE) AS night, dataset, 'rejected' AS what\n"
            "  FROM silver_rejects\n"
            "  UNION ALL\n"
            "  SELECT CAST(_ingested_at AS DATE) AS night, dataset, 'quarantined' AS what\n"
            "  FROM bronze_quarantine\n"
            ") AS r GROUP BY night, dataset, what ORDER BY night DESC, dataset, what",
            ("night", "dataset", "what", "rows"),
        ),
        "rows_per_night": (
            "Rows landed per night and dataset",
            f"SELECT night, dataset, rows FROM (\n  {nights}\n) AS n ORDER BY night DESC, dataset",
            ("night", "dataset", "rows"),
        ),
    }


def _table(name: str, title: str, columns: tuple[str, ...]) -> dict[str, Any]:
    return {
        "name": name,
        "queries": [
            {
                "name": "main_query",
                "query": {
                    "datasetName": name,
                    "fields": [{"name": c, "expression": f"`{c}`"} for c in columns],
                    "disaggregated": True,
                },
            }
        ],
        "spec": {
            "version": 2,
            "widgetType": "table",
            "encodings": {"columns": [{"fieldName": c, "displayName": c} for c in columns]},
            "frame": {"showTitle": True, "title": title},
        },
    }


def health_dashboard() -> dict[str, Any]:
    """The dashboard: one dataset and one table per query, two tables a row."""
    queries = dashboard_queries()
    layout = [
        {
            "widget": _table(name, title, columns),
            "position": {"x": 3 * (i % 2), "y": 6 * (i // 2), "width": 3, "height": 6},
        }
        for i, (name, (title, _, columns)) in enumerate(queries.items())
    ]
    return {
        "datasets": [
            {"name": name, "displayName": title, "queryLines": sql.splitlines(keepends=True)}
            for name, (title, sql, _) in queries.items()
        ],
        "pages": [{"name": "health", "displayName": "Data health", "layout": layout}],
    }


def write_dashboard(root: Path) -> Path:
    """Write the dashboard's file under the repository `root`; returns its path."""
    path = root / DASHBOARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(health_dashboard(), indent=2) + "\n")
    return path
