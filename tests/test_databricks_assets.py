"""Static checks of the Databricks notebooks and bundle: they parse, their SQL is Databricks SQL,
the bundle's jobs are valid job specs, widgets and parameters match, and every table and function
they name comes from the package (so the two halves cannot drift)."""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import sqlglot
import yaml
from databricks.bundles.alerts import Alert
from databricks.bundles.dashboards import Dashboard
from databricks.bundles.jobs import Job
from sqlglot import exp

from stock_pipeline.dashboard import DASHBOARD_FILE, dashboard_queries, health_dashboard
from stock_pipeline.datasets import DATASETS
from stock_pipeline.lake import PROBES, RUNS
from stock_pipeline.medallion import (
    GOLD_SEEN_FILES,
    GOLD_TABLES,
    GOLD_VIEWS,
    RSI_TABLE,
    Tables,
    create_table_sql,
    data_health_alert_sql,
    silver_columns,
    silver_table,
    sql_string,
    versions_table,
)
from stock_pipeline.medallion_spark import bronze_sources, maintenance_sql
from tests.support import REPO

BUNDLE_ROOT = REPO / "databricks"
NOTEBOOKS = sorted((BUNDLE_ROOT / "notebooks").glob("*.py"))
BUNDLE: dict[str, Any] = yaml.safe_load((BUNDLE_ROOT / "databricks.yml").read_text())
CELL = "\n# COMMAND ----------\n"
#: Top-level and per-target keys a bundle may have (Databricks' bundle configuration reference).
BUNDLE_KEYS = {
    "bundle", "variables", "artifacts", "resources", "targets", "include", "workspace", "sync",
    "permissions", "presets", "run_as", "experimental", "scripts",
}  # fmt: skip
TARGET_KEYS = {
    "mode", "default", "variables", "run_as", "workspace", "presets", "resources", "artifacts",
    "sync", "permissions", "bundle", "git", "cluster_id",
}  # fmt: skip
#: Every table the notebooks can name: what create_tables and build_gold make.
KNOWN_TABLES = (
    {s.table for s in bronze_sources("unused")}
    | {silver_table(d) for d in DATASETS.values()}
    | {"silver_rejects", "ref_exchange_sessions", GOLD_SEEN_FILES, *GOLD_VIEWS}
)


def cells(notebook: Path) -> list[str]:
    text = notebook.read_text()
    assert text.startswith("# Databricks notebook source\n"), notebook.name
    return text.split(CELL)


def sql_cells(notebook: Path) -> list[str]:
    found = []
    for cell in cells(notebook):
        lines = [
            line.removeprefix("# MAGIC").removeprefix(" ") for line in cell.strip().splitlines()
        ]
        if lines and lines[0] == "%sql":
            found.append("\n".join(lines[1:]))
    return found


def widgets(notebook: Path) -> set[str]:
    return set(re.findall(r'dbutils\.widgets\.text\("(\w+)"', notebook.read_text()))


def tasks() -> list[dict[str, Any]]:
    return [task for job in BUNDLE["resources"]["jobs"].values() for task in job["tasks"]]


def test_there_is_a_notebook_per_layer_and_for_upkeep() -> None:
    assert [n.stem for n in NOTEBOOKS] == ["bronze", "gold", "maintenance", "silver"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.stem)
def test_notebook_parses_as_python_and_imports_what_the_package_has(notebook: Path) -> None:
    tree = ast.parse(notebook.read_text())
    imported = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported
    for node in imported:
        assert node.module is not None
        assert node.module.startswith("stock_pipeline"), node.module
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
    assert len(cells(notebook)) >= 3


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.stem)
def test_sql_cells_parse_as_databricks_sql_and_name_registry_tables(notebook: Path) -> None:
    for sql in sql_cells(notebook):
        statement = sqlglot.parse_one(sql, read="databricks")
        assert not isinstance(statement, exp.Command), sql
        named = set(re.findall(r"'\.(\w+)'\)", sql))
        assert named, sql
        assert named <= KNOWN_TABLES, named - KNOWN_TABLES


def test_the_health_alert_query_parses_as_databricks_sql_and_reads_known_tables() -> None:
    sql = data_health_alert_sql(Tables("main", "stock_pipeline"))
    statement = sqlglot.parse_one(sql, read="databricks")
    ctes = {cte.alias for cte in statement.find_all(exp.CTE)}
    read = {t.name for t in statement.find_all(exp.Table)} - ctes
    assert read == {
        "data_health",
        "ref_exchange_sessions",
        "bronze_runs",
        "silver_rejects",
        "bronze_quarantine",
    }
    assert read <= KNOWN_TABLES


def test_maintenance_statements_cover_every_table() -> None:
    statements = maintenance_sql(Tables("main", "stocks"))
    analyze = [s for s in statements if s.startswith("ANALYZE")]
    for statement in analyze:
        assert isinstance(sqlglot.parse_one(statement, read="databricks"), exp.Analyze)
    # sqlglot keeps OPTIMIZE and VACUUM as opaque commands; check what they name instead.
    named = {
        re.match(r"(?:OPTIMIZE|VACUUM|ANALYZE TABLE) (\S+)", s)[1].split(".")[-1]  # type: ignore[index]
        for s in statements
    }
    # ANALYZE names scalar registry columns only (ANALYZE refuses nested ones).
    silver = maintenance_sql(Tables())
    prices = next(s for s in silver if s.startswith("ANALYZE TABLE silver_prices "))
    listed = prices.split(" FOR COLUMNS ")[1].split(", ")
    assert listed == [c.name for c in silver_columns(DATASETS["prices"])]
    # Gold's columns are its SQL's: every one of them is plain.
    gold = {
        f"ANALYZE TABLE main.stocks.{n} COMPUTE STATISTICS FOR ALL COLUMNS" for n in GOLD_TABLES
    }
    assert {s for s in analyze if " FOR COLUMNS " not in s} == gold
    expected = (
        {s.table for s in bronze_sources("unused")}
        | {silver_table(d) for d in DATASETS.values()}
        | {versions_table(d) for d in DATASETS.values() if d.figures}
    )
    assert named == expected | {"silver_rejects", RSI_TABLE, GOLD_SEEN_FILES, *GOLD_TABLES}
    assert all("RETAIN 168 HOURS" in s for s in statements if s.startswith("VACUUM"))


def test_every_notebook_task_passes_exactly_the_notebooks_widgets() -> None:
    by_path = {f"./notebooks/{n.name}": widgets(n) for n in NOTEBOOKS}
    run = set()
    for task in tasks():
        path = task["notebook_task"]["notebook_path"]
        assert path in by_path, path
        assert set(task["notebook_task"]["base_parameters"]) == by_path[path], path
        run.add(path)
    assert run == set(by_path)


def test_medallion_job_runs_bronze_then_silver_then_gold() -> None:
    job = BUNDLE["resources"]["jobs"]["medallion"]
    order = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in job["tasks"]}
    assert order == {"bronze": [], "silver": ["bronze"], "gold": ["silver"]}
    # Triggered by the manifest, which the ingester writes after all of a run's files.
    assert job["trigger"]["file_arrival"]["url"] == "${var.lake}/_runs/"


@pytest.mark.parametrize("name", sorted(BUNDLE["resources"]["jobs"]))
def test_bundle_jobs_are_valid_job_specs(name: str) -> None:
    spec = BUNDLE["resources"]["jobs"][name]
    job = Job.from_dict(spec)  # raises on a field jobs do not have
    assert job.as_dict()["tasks"]
    for task in spec["tasks"]:
        # Inside the bundle root: CLIs before about v0.270 refuse a library outside it.
        assert task["libraries"] == [{"whl": "./dist/*.whl"}]


def test_the_job_spec_check_catches_a_misspelled_field() -> None:
    spec = yaml.safe_load(yaml.safe_dump(BUNDLE["resources"]["jobs"]["medallion"]))
    spec["tasks"][0]["notebok_task"] = spec["tasks"][0].pop("notebook_task")
    with pytest.raises(ValueError, match="notebok_task"):
        Job.from_dict(spec)


def test_bundle_structure_and_variables() -> None:
    assert set(BUNDLE) <= BUNDLE_KEYS
    assert BUNDLE["bundle"]["name"] == "stock_pipeline"
    assert set(BUNDLE["targets"]) == {"dev", "prod"}
    for target in BUNDLE["targets"].values():
        assert set(target) <= TARGET_KEYS
        assert set(target.get("variables", {})) <= set(BUNDLE["variables"])
    assert BUNDLE["targets"]["dev"]["mode"] == "development"
    assert BUNDLE["targets"]["prod"]["mode"] == "production"
    declared = set(BUNDLE["variables"])
    used = set(re.findall(r"\$\{var\.(\w+)\}", (BUNDLE_ROOT / "databricks.yml").read_text()))
    assert used <= declared, used - declared
    assert all("description" in v for v in BUNDLE["variables"].values())
    artifact = BUNDLE["artifacts"]["stock_pipeline_wheel"]
    assert (BUNDLE_ROOT / artifact["path"] / "pyproject.toml").exists()
    # Run from the artifact's path (the repository root): the cluster's wheel, in ./dist.
    assert artifact["build"] == "python databricks/cluster_wheel.py"


@pytest.mark.parametrize("name", sorted(BUNDLE["resources"]["jobs"]))
def test_every_job_queues_times_out_and_warns_when_slow(name: str) -> None:
    job = BUNDLE["resources"]["jobs"][name]
    # A trigger or schedule while a run is going waits instead of being skipped.
    assert job["max_concurrent_runs"] == 1
    assert job["queue"] == {"enabled": True}
    [rule] = job["health"]["rules"]
    assert rule["metric"] == "RUN_DURATION_SECONDS"
    assert rule["op"] == "GREATER_THAN"
    assert 0 < rule["value"] < job["timeout_seconds"]
    assert job["email_notifications"]["on_duration_warning_threshold_exceeded"] == ["${var.notify}"]
    for task in job["tasks"]:
        assert 0 < task["timeout_seconds"] < job["timeout_seconds"], task["task_key"]


def test_the_trigger_watches_the_manifests_and_nothing_else_writes_there() -> None:
    trigger = BUNDLE["resources"]["jobs"]["medallion"]["trigger"]["file_arrival"]
    assert trigger["url"] == f"${{var.lake}}/{RUNS}/"
    assert PROBES != RUNS  # the S3 access check writes elsewhere (tests/test_lake.py)
    [runs] = [s for s in bronze_sources("s3://b/lake") if s.folder.endswith(RUNS)]
    assert runs.file_format == "json"


def test_required_variables_have_no_default() -> None:
    variables = BUNDLE["variables"]
    required = {name for name, v in variables.items() if "default" not in v}
    assert required == {"lake", "checkpoint_root", "job_principal", "warehouse_id"}
    # Dev runs as the developer; prod must be given its principal (validate fails without it).
    assert BUNDLE["targets"]["dev"]["variables"]["job_principal"] == ""
    assert "job_principal" not in BUNDLE["targets"]["prod"].get("variables", {})


def test_dev_is_per_user_and_prod_is_restricted() -> None:
    dev, prod = BUNDLE["targets"]["dev"], BUNDLE["targets"]["prod"]
    user = "${workspace.current_user.short_name}"
    assert user in dev["variables"]["schema"]
    assert user in dev["variables"]["checkpoint_folder"]
    assert BUNDLE["variables"]["checkpoint_folder"]["default"] == ""
    for task in tasks():
        parameters = task["notebook_task"]["base_parameters"]
        if "checkpoint_root" in parameters:
            expected = "${var.checkpoint_root}/${var.checkpoint_folder}"
            assert parameters["checkpoint_root"] == expected
    # The service principal's home folder, not /Workspace/Shared (every user can edit there).
    root = prod["workspace"]["root_path"]
    # Named by the principal, not the deployer: one prod deployment whoever deploys.
    assert root.startswith("/Workspace/Users/${var.job_principal}/")
    assert prod["run_as"] == {"service_principal_name": "${var.job_principal}"}
    assert {"level": "CAN_VIEW", "group_name": "${var.analysts}"} in prod["permissions"]


def test_setup_guide_names_every_variable_and_command() -> None:
    guide = (BUNDLE_ROOT / "DATABRICKS_SETUP.md").read_text()
    for variable in BUNDLE["variables"]:
        assert f"`{variable}`" in guide, variable
    for command in (
        "databricks bundle validate",
        "databricks bundle deploy",
        "databricks bundle run",
    ):
        assert command in guide


def test_the_alert_is_the_health_alert_query_and_fires_above_zero_problems() -> None:
    spec = BUNDLE["resources"]["alerts"]["data_health"]
    alert = Alert.from_dict(spec)  # raises on a field alerts do not have
    assert alert.as_dict()["display_name"]
    generated = data_health_alert_sql(Tables("${var.catalog}", "${var.schema}"))
    assert spec["query_text"] == generated
    evaluation = spec["evaluation"]
    assert evaluation["source"]["name"] == "problems"
    assert evaluation["comparison_operator"] == "GREATER_THAN"
    assert evaluation["threshold"] == {"value": {"double_value": 0}}
    assert evaluation["notification"]["subscriptions"] == [{"user_email": "${var.notify}"}]
    assert spec["warehouse_id"] == "${var.warehouse_id}"
    assert evaluation["notification"]["retrigger_seconds"] > 0  # 0 would email only once
    # Alerts came in CLI v0.279.0, the dashboard's dataset_catalog/dataset_schema in v0.281.0.
    assert BUNDLE["bundle"]["databricks_cli_version"] == ">= 0.281.0"
    dev = BUNDLE["targets"]["dev"]["resources"]["alerts"]["data_health"]
    assert dev == {"schedule": {"pause_status": "PAUSED"}}  # a developer's copy stays quiet


def test_the_dashboard_file_is_the_generated_one_and_reads_known_tables() -> None:
    spec = BUNDLE["resources"]["dashboards"]["data_health"]
    Dashboard.from_dict(spec)
    assert (spec["dataset_catalog"], spec["dataset_schema"]) == ("${var.catalog}", "${var.schema}")
    path = BUNDLE_ROOT / spec["file_path"]
    assert path == REPO / DASHBOARD_FILE
    assert json.loads(path.read_text()) == health_dashboard()
    for name, (_, sql, columns) in dashboard_queries().items():
        statement = sqlglot.parse_one(sql, read="databricks")
        ctes = {cte.alias for cte in statement.find_all(exp.CTE)}
        assert {t.name for t in statement.find_all(exp.Table)} - ctes <= KNOWN_TABLES, name
        assert [s.alias_or_name for s in statement.selects] == list(columns), name


@pytest.mark.parametrize("text", ["plain words", "it's a \\ backslash and a 'quote'"])
def test_comments_are_spark_string_literals(text: str) -> None:
    literal = sqlglot.parse_one(f"SELECT {sql_string(text)}", read="databricks").find(exp.Literal)
    assert literal is not None
    assert literal.this == text


def test_create_table_carries_the_comments_and_parses_as_databricks_sql() -> None:
    sql = create_table_sql(
        "main.stocks.t",
        silver_columns(DATASETS["prices"]),
        comment="Silver: the prices' table",
        column_comments={"close": "FMP field close"},
    )
    statement = sqlglot.parse_one(sql, read="databricks")
    assert isinstance(statement, exp.Create)
    assert "COMMENT 'FMP field close'" in sql
    assert "COMMENT 'Silver: the prices\\' table'" in sql


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice (the CLI silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = {k for k in keys if keys.count(k) > 1}
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"repeated keys {repeated}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


def test_the_bundle_gives_no_key_twice() -> None:
    text = (BUNDLE_ROOT / "databricks.yml").read_text()
    assert yaml.load(text, Loader=_UniqueKeyLoader) == BUNDLE
    with pytest.raises(yaml.constructor.ConstructorError, match="repeated keys"):
        yaml.load("a:\n  b: 1\n  b: 2\n", Loader=_UniqueKeyLoader)
