"""datasets.py: the registry every stage reads, its names, keys and Spark-safe types."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from stock_pipeline.datasets import (
    DATASETS,
    DEFAULT_DATASETS,
    LINEAGE_COLUMNS,
    QUARANTINE_COLUMNS,
    ColumnType,
    Dataset,
    get_dataset,
    schema_markdown,
    to_snake_case,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fmp"
SNAKE = re.compile(r"^_?[a-z][a-z0-9]*(_[a-z0-9]+)*$")
ALL = list(DATASETS.values())
IDS = list(DATASETS)


@pytest.mark.parametrize(
    ("camel", "snake"),
    [
        ("changePercent", "change_percent"),
        ("epsDiluted", "eps_diluted"),
        ("totalAssets", "total_assets"),
        ("weightedAverageShsOutDil", "weighted_average_shs_out_dil"),
        ("isEtf", "is_etf"),
        ("ebitda", "ebitda"),
        ("cik", "cik"),
        ("adjClose", "adj_close"),
        ("fullTimeEmployees", "full_time_employees"),
        ("accumulatedOtherComprehensiveIncomeLoss", "accumulated_other_comprehensive_income_loss"),
    ],
)
def test_to_snake_case(camel: str, snake: str) -> None:
    assert to_snake_case(camel) == snake


def test_the_registry_names_are_the_keys() -> None:
    assert all(name == d.name for name, d in DATASETS.items())
    assert set(DEFAULT_DATASETS) <= set(DATASETS)
    assert "prices" in DEFAULT_DATASETS
    assert "adjusted_prices" not in DEFAULT_DATASETS


def test_get_dataset_names_the_known_ones() -> None:
    assert get_dataset("prices") is DATASETS["prices"]
    with pytest.raises(KeyError, match=r"unknown dataset 'nope'.*prices"):
        get_dataset("nope")


@pytest.mark.parametrize("dataset", ALL, ids=IDS)
def test_key_columns_exist_among_table_columns(dataset: Dataset) -> None:
    names = {c.name for c in dataset.table_columns}
    assert dataset.key
    assert set(dataset.key) <= names


@pytest.mark.parametrize("dataset", ALL, ids=IDS)
def test_partition_column_is_a_date(dataset: Dataset) -> None:
    assert dataset.column(dataset.partition).type is ColumnType.DATE
    assert dataset.table_columns[-1].name == dataset.partition


@pytest.mark.parametrize("dataset", ALL, ids=IDS)
def test_file_columns_never_include_the_partition(dataset: Dataset) -> None:
    file_names = [c.name for c in dataset.file_columns]
    assert dataset.partition not in file_names
    assert dataset.partition not in dataset.arrow_schema().names
    assert dataset.partition not in dataset.polars_schema()
    assert file_names[-len(LINEAGE_COLUMNS) :] == [c.name for c in LINEAGE_COLUMNS]


def test_prices_are_partitioned_by_their_own_date() -> None:
    assert DATASETS["prices"].partition == "date"
    assert DATASETS["prices"].partition_in_data
    assert DATASETS["income_statement"].partition == "ingest_date"
    assert not DATASETS["income_statement"].partition_in_data


def _assert_spark_safe(field: pa.Field) -> None:
    assert not pa.types.is_large_string(field.type), field
    assert not pa.types.is_large_binary(field.type), field
    assert not pa.types.is_large_list(field.type), field
    if pa.types.is_timestamp(field.type):
        assert field.type.unit == "us", field
        assert field.type.tz == "UTC", field
    if pa.types.is_date(field.type):
        assert pa.types.is_date32(field.type), field


@pytest.mark.parametrize("dataset", ALL, ids=IDS)
def test_arrow_types_are_spark_safe(dataset: Dataset) -> None:
    schema = dataset.arrow_schema()
    assert len(schema) == len(dataset.file_columns)
    for field in schema:
        _assert_spark_safe(field)
    assert schema.field("_ingested_at").type == pa.timestamp("us", tz="UTC")


def test_every_column_type_has_matching_spellings() -> None:
    for column_type in ColumnType:
        _assert_spark_safe(pa.field("x", column_type.arrow))
        assert column_type.spark.isupper()
    assert ColumnType.TIMESTAMP.spark == "TIMESTAMP"
    assert ColumnType.INT.arrow == pa.int64()
    assert ColumnType.FLOAT.arrow == pa.float64()
    assert ColumnType.STRING.arrow == pa.string()
    assert ColumnType.DATE.arrow == pa.date32()


def test_quarantine_columns_are_spark_safe() -> None:
    for column in QUARANTINE_COLUMNS:
        _assert_spark_safe(pa.field(column.name, column.type.arrow))


@pytest.mark.parametrize(
    ("name", "count", "fixture"),
    [
        ("income_statement", 39, "stable_income-statement.json"),
        ("balance_sheet", 61, "stable_balance-sheet-statement.json"),
        ("cash_flow", 47, "stable_cash-flow-statement.json"),
        ("profile", 36, "stable_profile.json"),
        ("prices", 10, "stable_historical-price-eod_full.json"),
        ("adjusted_prices", 7, "stable_historical-price-eod_dividend-adjusted.json"),
    ],
)
def test_source_fields_match_fmp(name: str, count: int, fixture: str) -> None:
    sources = [c.source for c in DATASETS[name].columns if c.source]
    assert len(sources) == count
    assert len(set(sources)) == count
    example = json.loads((FIXTURES / fixture).read_text(encoding="utf-8"))[0]
    assert set(sources) == set(example)


@pytest.mark.parametrize("dataset", ALL, ids=IDS)
def test_column_names_are_unique_and_snake_case(dataset: Dataset) -> None:
    names = [c.name for c in dataset.table_columns]
    assert len(names) == len(set(names))
    for name in names:
        assert SNAKE.match(name), name
    for column in dataset.columns:
        if column.source:
            assert column.name == to_snake_case(column.source)


@pytest.mark.parametrize("dataset", ALL, ids=IDS)
def test_statements_prefer_the_newest_filing(dataset: Dataset) -> None:
    if dataset.kind == "statement":
        assert dataset.prefer_newest == "accepted_date"
        assert dataset.column("accepted_date").type is ColumnType.TIMESTAMP
        assert dataset.column("accepted_date").new_york_time
    else:
        assert dataset.prefer_newest is None


def test_schema_markdown_mentions_every_dataset_and_column() -> None:
    text = schema_markdown()
    for dataset in ALL:
        assert f"## {dataset.name}\n" in text
        assert f"`/stable/{dataset.endpoint}`" in text
        for column in dataset.table_columns:
            assert f"| `{column.name}` | {column.type.spark} |" in text
    for column in QUARANTINE_COLUMNS:
        assert f"`{column.name}`" in text
