"""stock_pipeline: land Financial Modeling Prep market data in a day-partitioned Parquet lake."""

from importlib.metadata import PackageNotFoundError, version

from stock_pipeline.datasets import DATASETS, Dataset, get_dataset
from stock_pipeline.errors import (
    ConfigError,
    ExitCode,
    FmpAuthError,
    FmpError,
    LakeError,
    StockPipelineError,
)
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
