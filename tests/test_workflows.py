"""The nightly workflow's own scripts, run the way a GitHub runner runs them (the step's shell and
environment, a job summary file, the checkout as the working directory) against the FMP simulator
and a local lake; and every workflow file checked against GitHub's workflow schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stock_pipeline.lake import LocalLake, read_manifests
from stock_pipeline.simulator import SimulatorConfig, SimulatorThread
from tests.support import API_KEY, REPO, TOKEN, Receiver, all_text_under, write_tickers

WORKFLOWS = REPO / ".github" / "workflows"
NIGHTLY = WORKFLOWS / "nightly-ingest.yml"
BIN = Path(sys.executable).parent
#: GitHub's shell for a `run` step that names none, on Linux.
DEFAULT_SHELL = "bash -e {0}"


def nightly_steps() -> dict[str, dict[str, Any]]:
    workflow = yaml.safe_load(NIGHTLY.read_text())
    return {step["name"]: step for step in workflow["jobs"]["ingest"]["steps"] if "name" in step}


class Runner:
    """A checkout (the tickers file), a job summary file, and the values GitHub's expressions
    would give the steps' environment."""

    def __init__(self, root: Path, fmp_url: str, lake: Path, webhook: str = "") -> None:
        self.checkout = root / "checkout"
        (self.checkout / "config").mkdir(parents=True)
        write_tickers(self.checkout / "config" / "tickers.csv", "AAPL", "MSFT")
        self.summary = root / "step-summary.md"
        self.summary.touch()
        self.scripts = root / "scripts"
        self.scripts.mkdir()
        self.fmp_url = fmp_url
        self.expressions: dict[str, str] = {
            "FMP_API_KEY": API_KEY,
            "STOCK_PIPELINE_LAKE": str(lake),
            "FMP_RATE_LIMIT": "6000",
            "STOCK_PIPELINE_SHARD": "1/1",
            # The secret, when a test sets one up (unset, GitHub renders it empty).
            "STOCK_PIPELINE_WEBHOOK_URL": webhook,
        }

    def run(self, name: str, **values: str) -> subprocess.CompletedProcess[str]:
        """Run step `name`'s script; `values` are the step's expression-valued variables (inputs
        and the like) beyond the defaults, as GitHub would render them."""
        step = nightly_steps()[name]
        env = {
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "HOME": os.environ.get("HOME", str(self.checkout)),
            "STOCK_PIPELINE_CACHE_DIR": os.environ["STOCK_PIPELINE_CACHE_DIR"],
            "GITHUB_STEP_SUMMARY": str(self.summary),
            "FMP_BASE_URL": self.fmp_url,
            "STOCK_PIPELINE_RETRY_BASE_DELAY": "0",
        }
        given = {**self.expressions, **values}
        for key, value in step.get("env", {}).items():
            if isinstance(value, str) and "${{" in value:
                # An unset input renders as an empty string.
                env[key] = given.get(key, "")
            else:
                env[key] = str(value)
        unknown = set(values) - set(step.get("env", {}))
        assert not unknown, f"step {name!r} has no variable {sorted(unknown)}"
        script = self.scripts / f"{name.replace(' ', '-')}.sh"
        script.write_text(step["run"])
        argv = step.get("shell", DEFAULT_SHELL).format(script).split()
        return subprocess.run(
            argv, cwd=self.checkout, env=env, capture_output=True, text=True, timeout=180
        )


@pytest.fixture
def receiver() -> Any:
    with Receiver([]) as server:
        yield server


def test_a_scheduled_night_catches_up_reports_and_keeps_its_run(
    tmp_path: Path, receiver: Receiver
) -> None:
    lake = tmp_path / "lake"
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        github = Runner(tmp_path, sim.url, lake, webhook=receiver.url)
        ingest = github.run("ingest")
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        status = github.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert receiver.posts == []  # a night that landed is not announced

    summary = github.summary.read_text()
    assert "## stock_pipeline run `" in summary
    assert "| prices | 2 | 0 |" in summary
    assert ": fresh\n" in summary
    assert "### Prices" in summary
    [manifest] = read_manifests(LocalLake(lake))
    saved = json.loads((github.checkout / "run" / "manifest.json").read_text())
    assert saved == manifest
    assert saved["status"] == "ok"
    assert (github.checkout / "run" / "status.md").read_text() in summary
    metrics = {
        sample.name: sample.value
        for family in text_string_to_metric_families(
            (github.checkout / "run" / "metrics.prom").read_text()
        )
        for sample in family.samples
    }
    assert metrics["stock_pipeline_run_exit_code"] == 0
    assert "stock_pipeline_last_success_timestamp_seconds" in metrics
    # The artifact is the folder the scripts wrote to.
    upload = nightly_steps()["upload the manifest, the metrics and the status report"]
    assert upload["with"]["path"] == "run/"
    assert {p.name for p in (github.checkout / "run").iterdir()} == {
        "manifest.json",
        "metrics.prom",
        "status.md",
    }


def test_a_dispatched_backfill_takes_its_inputs_and_a_stale_lake_is_announced(
    tmp_path: Path, receiver: Receiver
) -> None:
    lake = tmp_path / "lake"
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        github = Runner(tmp_path, sim.url, lake, webhook=receiver.url)
        ingest = github.run(
            "ingest",
            INPUT_START="2025-03-03",
            INPUT_END="2025-03-14",
            INPUT_DATASETS="prices",
            INPUT_DRY_RUN="false",
        )
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        status = github.run("status")
    [manifest] = read_manifests(LocalLake(lake))
    assert manifest["range"]["start"] == "2025-03-03"
    assert manifest["range"]["end"] == "2025-03-14"
    assert manifest["datasets"] == ["prices"]
    # Sessions of March 2025 are long behind the last completed session: stale, exit 1, posted.
    assert status.returncode == 1, status.stdout + status.stderr
    [post] = receiver.posts
    assert "prices" in post["text"]
    assert "2025-03-14" in post["text"]
    assert "2025-03-14" in github.summary.read_text()


def test_a_lake_status_cannot_read_says_why_in_the_job_summary(tmp_path: Path) -> None:
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        github = Runner(tmp_path, sim.url, tmp_path / "no-lake-here")
        status = github.run("status")
    assert status.returncode == 2, status.stdout + status.stderr
    assert "no lake at" in status.stderr  # the step's log keeps the message too
    summary = github.summary.read_text()
    assert "### stock-pipeline status: exit 2" in summary
    assert f"no lake at {tmp_path / 'no-lake-here'}" in summary.replace("\n", " ")


def test_a_dispatched_dry_run_plans_and_writes_nothing(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        github = Runner(tmp_path, sim.url, lake)
        ingest = github.run(
            "ingest", INPUT_BACKFILL_DAYS="20", INPUT_END="2025-03-14", INPUT_DRY_RUN="true"
        )
        requests = list(sim.simulator.requests)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert requests == []
    assert not lake.exists()
    assert "## stock_pipeline dry run" in github.summary.read_text()
    assert "Sessions 2025-02-14 to 2025-03-14, 2 tickers" in github.summary.read_text()
    assert not (github.checkout / "run" / "manifest.json").exists()
    assert not (github.checkout / "run" / "metrics.prom").exists()


def test_a_rejected_key_fails_the_job_says_why_and_leaks_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    lake = tmp_path / "lake"
    with SimulatorThread(SimulatorConfig(api_key="another-key")) as sim:
        github = Runner(tmp_path, sim.url, lake, webhook=receiver.url)
        ingest = github.run("ingest", INPUT_END="2025-03-14", INPUT_BACKFILL_DAYS="3")
    assert ingest.returncode == 3, ingest.stdout + ingest.stderr
    summary = github.summary.read_text()
    assert "## stock_pipeline ingest: exit 3" in summary
    assert "aborted" in summary
    [post] = receiver.posts
    assert "aborted" in post["text"]
    # The aborted run's manifest is saved; nothing the runner keeps holds the key or the hook.
    assert json.loads((github.checkout / "run" / "manifest.json").read_text())["status"] == (
        "aborted"
    )
    kept = all_text_under(github.checkout / "run") + summary + ingest.stdout + ingest.stderr
    assert API_KEY not in kept
    assert TOKEN not in kept


def test_every_workflow_file_is_valid_against_githubs_schema() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) >= 3
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    workflow = yaml.safe_load(NIGHTLY.read_text())
    workflow["on"] = workflow.pop(True)  # YAML 1.1 reads the key `on` as true
    workflow["jobs"]["ingest"]["runs-on"] = {"not": "a runner"}
    workflow["jobs"]["ingest"]["timeout-minutes"] = "three hours"
    broken.write_text(yaml.safe_dump(workflow))
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "timeout-minutes" in done.stdout + done.stderr


def test_the_steps_after_the_ingest_run_when_they_should() -> None:
    """The conditions GitHub evaluates (not run here): status after any ingest that ran except a
    dry run, not after a cancel; the artifact always; the webhook for status only after an ingest
    that passed (a failed one has posted already); the ingest under the job's time limit."""
    workflow = yaml.safe_load(NIGHTLY.read_text())
    steps = nightly_steps()
    status_if = steps["status"]["if"]
    for clause in ("!cancelled()", "steps.ingest.outcome != 'skipped'", "inputs.dry_run != true"):
        assert clause in status_if, status_if
    assert (
        "steps.ingest.outcome == 'success'" in steps["status"]["env"]["STOCK_PIPELINE_WEBHOOK_URL"]
    )
    assert steps["upload the manifest, the metrics and the status report"]["if"] == (
        "${{ always() }}"
    )
    assert steps["ingest"]["timeout-minutes"] < workflow["jobs"]["ingest"]["timeout-minutes"]
