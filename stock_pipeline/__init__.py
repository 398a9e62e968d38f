"""stock_pipeline: land Financial Modeling Prep market data in a day-partitioned Parquet lake."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from stock_pipeline.errors import (
    ConfigError,
    ExitCode,
    FmpAuthError,
    FmpError,
    LakeError,
    StockPipelineError,
)

if TYPE_CHECKING:
    from stock_pipeline.datasets import DATASETS, Dataset, get_dataset
    from stock_pipeline.lake import open_lake, read_dataset

try:
    __version__ = version("stock-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "DATASETS",
    "ConfigError",
    "Dataset",
    "ExitCode",
    "FmpAuthError",
    "FmpError",
    "LakeError",
    "StockPipelineError",
    "__version__",
    "get_dataset",
    "open_lake",
    "read_dataset",
]

# Loaded on first use, so that importing one module (the CLI for `--help`, a Databricks notebook's
# medallion steps) does not import the lake's and the registry's dependencies with it.
_LAZY = {
    "DATASETS": "stock_pipeline.datasets",
    "Dataset": "stock_pipeline.datasets",
    "get_dataset": "stock_pipeline.datasets",
    "open_lake": "stock_pipeline.lake",
    "read_dataset": "stock_pipeline.lake",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stock_pipeline' has no attribute {name!r}")
