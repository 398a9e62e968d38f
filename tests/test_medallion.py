"""The medallion SQL: every statement parses as Databricks SQL and follows the registry."""

from __future__ import annotations

import pytest
import sqlglot
from sqlglot import exp

from stock_pipeline.datasets import DATASETS, Dataset
from stock_pipeline.medallion import (
    GOLD_VIEWS,
    Tables,
    check_split_sql,
    create_table_sql,
    dedup_sql,
    dim_company_columns,
    gold_view_sql,
    merge_sql,
    scd2_merge_sql,
    silver_columns,
)

TABLES = Tables("main", "fmp")
KEYED = [d for d in DATASETS.values() if d.kind != "profile"]


def parse(sql: str) -> exp.Expression:
    tree = sqlglot.parse_one(sql, read="databricks")
    assert tree is not None
    return tree


@pytest.mark.parametrize("dataset", KEYED, ids=lambda d: d.name)
def test_silver_merge_parses_and_joins_on_the_registry_key(dataset: Dataset) -> None:
    tree = parse(merge_sql(dataset, "batch", "main.fmp.silver"))
    assert isinstance(tree, exp.Merge)
    on = tree.args["on"].sql(dialect="databricks")
    for key in dataset.key:
        assert f"t.{key} = s.{key}" in on
    inserted = tree.sql(dialect="databricks")
    for column in silver_columns(dataset):
        assert column.name in inserted


@pytest.mark.parametrize("dataset", KEYED, ids=lambda d: d.name)
def test_dedup_keeps_one_row_per_key_newest_first(dataset: Dataset) -> None:
    sql = dedup_sql(dataset, "batch")
    parse(sql)
    assert f"PARTITION BY {', '.join(dataset.key)}" in sql
    assert "ORDER BY _ingested_at DESC" in sql


@pytest.mark.parametrize("dataset", list(DATASETS.values()), ids=lambda d: d.name)
def test_quality_split_covers_every_registry_check(dataset: Dataset) -> None:
    passing, rejected = check_split_sql(dataset, "batch")
    parse(passing)
    parse(rejected)
    for check in dataset.checks:
        assert check.reason in rejected
        assert check.violated_sql in passing


def test_scd2_merge_parses() -> None:
    tree = parse(scd2_merge_sql("batch", "main.fmp.dim_company"))
    assert isinstance(tree, exp.Merge)
    assert "valid_to" in tree.sql(dialect="databricks")


@pytest.mark.parametrize("dataset", KEYED, ids=lambda d: d.name)
def test_silver_tables_are_clustered_on_the_key_with_change_data_feed(dataset: Dataset) -> None:
    sql = create_table_sql(
        "main.fmp.silver", silver_columns(dataset), cluster_by=dataset.key, change_data_feed=True
    )
    parse(sql)
    assert f"CLUSTER BY ({', '.join(dataset.key)})" in sql
    assert "delta.enableChangeDataFeed = true" in sql
    for column in dataset.table_columns:
        assert f"{column.name} {column.type.spark}" in sql


def test_dim_company_has_the_type_2_columns() -> None:
    names = [c.name for c in dim_company_columns()]
    assert {"symbol", "valid_from", "valid_to", "is_current"} <= set(names)


@pytest.mark.parametrize("name", list(GOLD_VIEWS))
def test_gold_views_parse_as_databricks_sql(name: str) -> None:
    tree = parse(gold_view_sql(name, TABLES))
    assert isinstance(tree, exp.Create)
    assert tree.this.sql() == f"main.fmp.{name}"


def test_table_names_are_quoted_only_when_they_must_be() -> None:
    assert Tables("main", "stocks").name("silver_prices") == "main.stocks.silver_prices"
    assert Tables("data-eng", "stocks").name("silver_prices") == "`data-eng`.stocks.silver_prices"
    assert Tables("data-eng", "stocks").namespace == "`data-eng`.stocks"
    assert Tables().name("silver_prices") == "silver_prices"
    assert Tables().namespace is None
