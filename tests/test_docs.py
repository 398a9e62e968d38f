"""The docs cannot drift: every command and option is documented, the schema doc is generated."""

from __future__ import annotations

import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from stock_pipeline.cli import app
from stock_pipeline.datasets import schema_markdown
from tests.support import REPO

README = (REPO / "README.md").read_text()
runner = CliRunner()
COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_is_in_the_readme(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output
    assert f"stock-pipeline {command}" in README


def test_every_ingest_option_is_in_the_readme() -> None:
    command = get_command(app).commands["ingest"]  # type: ignore[attr-defined]
    options = [opt for param in command.params for opt in param.opts if opt.startswith("--")]
    assert len(options) > 10
    missing = [opt for opt in options if opt != "--help" and f"`{opt}" not in README]
    assert missing == []


def test_schema_doc_is_generated_from_the_registry() -> None:
    assert (REPO / "docs" / "schemas.md").read_text() == schema_markdown()


def test_quick_start_has_exactly_two_commands() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert [b.strip() for b in blocks] == [
        "python3 -m venv .venv && .venv/bin/pip install uv && .venv/bin/uv sync --locked"
        " --all-extras && .venv/bin/stock-pipeline demo",
        ".venv/bin/python -m pytest",
    ]
    ci = (REPO / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in ci
    assert ".venv/bin/uv sync --locked --all-extras" in ci


def _uv_versions(text: str) -> set[str]:
    """uv pinned with pip (`uv==X`) or in setup-uv's `version: "X"`."""
    return set(
        re.findall(r"uv==([0-9][0-9.]*)", text)
        + re.findall(r'^\s*version: "([0-9.]+)"', text, re.M)
    )


def test_ci_the_nightly_and_the_upstream_job_install_from_the_lock_with_one_uv() -> None:
    workflows = REPO / ".github" / "workflows"
    nightly = (workflows / "nightly-ingest.yml").read_text()
    assert "uv sync --locked --no-dev --no-editable" in nightly  # the core install, locked
    assert "pip install" not in nightly
    texts = [
        (REPO / ".ci" / "run").read_text(),
        nightly,
        (workflows / "upstream.yml").read_text(),
    ]
    assert [len(_uv_versions(t)) for t in texts] == [1, 1, 1]
    assert len(set().union(*(_uv_versions(t) for t in texts))) == 1


def test_the_nightly_matrix_gives_each_runner_its_shard() -> None:
    import yaml

    nightly = yaml.safe_load((REPO / ".github" / "workflows" / "nightly-ingest.yml").read_text())
    job = nightly["jobs"]["ingest"]
    assert job["strategy"]["matrix"]["shard"] == [1]
    assert job["strategy"]["fail-fast"] is False  # one runner failing leaves the others running
    [step] = [s for s in job["steps"] if s.get("name") == "ingest"]
    assert step["env"]["STOCK_PIPELINE_SHARD"] == "${{ matrix.shard }}/${{ strategy.job-total }}"
