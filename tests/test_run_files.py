"""What `ingest` leaves beside the lake for a CI job: the Markdown summary (`--summary-file`), the
manifest's copy (`--save-manifest`) and the metrics, for every way a run ends."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from stock_pipeline.cli import app
from stock_pipeline.errors import ExitCode
from stock_pipeline.simulator import Fault, SimulatorConfig, SimulatorThread
from tests.support import API_KEY, TOKEN, Receiver, write_tickers

runner = CliRunner()
ENV = {"FMP_API_KEY": API_KEY, "STOCK_PIPELINE_RETRY_BASE_DELAY": "0"}


def ingest(
    tmp_path: Path,
    *args: str,
    symbols: tuple[str, ...] = ("AAPL", "MSFT"),
    config: SimulatorConfig | None = None,
    env: dict[str, str] | None = None,
    summary: Path | None = None,
    metrics: Path | None = None,
) -> tuple[int, str]:
    tickers = write_tickers(tmp_path / "tickers.csv", *symbols)
    with SimulatorThread(config or SimulatorConfig(api_key=API_KEY)) as sim:
        result = runner.invoke(
            app,
            [
                "ingest", "--fmp-base-url", sim.url, "--tickers-path", str(tickers),
                "--rate-limit", "6000", "--datasets", "prices", "--prices-source", "symbol",
                "--summary-file", str(summary or tmp_path / "summary.md"),
                "--save-manifest", str(tmp_path / "run" / "manifest.json"),
                "--metrics-file", str(metrics or tmp_path / "run" / "metrics.prom"),
                *args,
            ],
            env={**ENV, **(env or {})},
            catch_exceptions=False,
        )  # fmt: skip
    return result.exit_code, result.output


def exit_code_metric(tmp_path: Path) -> float:
    text = (tmp_path / "run" / "metrics.prom").read_text()
    [value] = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "stock_pipeline_run_exit_code"
    ]
    return value


def test_input_refused_before_the_run_still_says_why_everywhere(tmp_path: Path) -> None:
    with Receiver([]) as receiver:
        code, output = ingest(
            tmp_path,
            "--lake", str(tmp_path / "lake"), "--start", "2025-3-3", "--notify-url", receiver.url,
        )  # fmt: skip
        posts = list(receiver.posts)
    assert code == ExitCode.USAGE
    assert "--start '2025-3-3' is not a date in YYYY-MM-DD form" in output
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("## stock_pipeline ingest: exit 2\n")
    assert "could not start: --start '2025-3-3' is not a date" in summary
    assert exit_code_metric(tmp_path) == 2
    [post] = posts
    assert "could not start" in post["text"]
    assert not (tmp_path / "run" / "manifest.json").exists()
    assert not (tmp_path / "lake").exists()


def test_a_start_and_a_backfill_together_are_refused_with_a_summary(tmp_path: Path) -> None:
    code, output = ingest(
        tmp_path, "--lake", str(tmp_path / "lake"), "--start", "2025-03-03", "--backfill-days", "3"
    )
    assert code == ExitCode.USAGE
    assert "--backfill-days" in output
    summary = (tmp_path / "summary.md").read_text()
    assert "could not start" in summary
    assert "--backfill-days" in summary


@pytest.mark.parametrize("days", ["abc", "0", "-3", "2.5"])
def test_a_bad_backfill_from_a_workflow_input_is_summarised(tmp_path: Path, days: str) -> None:
    code, output = ingest(tmp_path, "--lake", str(tmp_path / "lake"), "--backfill-days", days)
    assert code == ExitCode.USAGE
    assert "must be a whole number of sessions, 1 or more" in output
    summary = (tmp_path / "summary.md").read_text()
    assert f"could not start: --backfill-days {days!r} must be a whole number" in summary
    assert exit_code_metric(tmp_path) == 2


def test_a_partial_run_lists_twenty_failures_and_counts_the_rest(tmp_path: Path) -> None:
    symbols = tuple(f"T{i:02d}" for i in range(25))
    down = {s: (Fault(kind="server_error"),) for s in symbols[:23]}
    code, _ = ingest(
        tmp_path,
        "--lake", str(tmp_path / "lake"), "--start", "2025-03-10", "--end", "2025-03-14",
        symbols=symbols,
        config=SimulatorConfig(api_key=API_KEY, faults=down),
    )  # fmt: skip
    assert code == ExitCode.PARTIAL
    summary = (tmp_path / "summary.md").read_text()
    assert "## stock_pipeline run `" in summary
    assert "`: partial" in summary
    assert "**23 failures**" in summary
    assert summary.count("\n- prices T") == 20
    assert "- and 3 more, every one in the manifest" in summary
    assert "| prices | 2 | 23 | 10 |" in summary
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "partial"
    assert len(manifest["failures"]) == 23
    assert f"_runs/{manifest['run_id']}.json`" in summary
    assert API_KEY not in summary


def test_a_catch_up_with_nothing_to_fetch_says_so(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    assert ingest(tmp_path, "--lake", lake, "--backfill-days", "1")[0] == ExitCode.OK
    (tmp_path / "summary.md").unlink()
    code, _ = ingest(tmp_path, "--lake", lake)
    assert code == ExitCode.OK
    summary = (tmp_path / "summary.md").read_text()
    assert "nothing to fetch" in summary
    assert "stopped" not in summary
    assert exit_code_metric(tmp_path) == 0


def test_a_summary_that_cannot_be_written_changes_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    code, output = ingest(
        tmp_path, "--lake", str(tmp_path / "lake"), "--start", "2025-03-14", "--end", "2025-03-14",
        summary=tmp_path / "plain-file" / "summary.md",  # under a file: cannot be created
    )  # fmt: skip
    assert code == ExitCode.OK
    assert "could not write the summary" in output
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "ok"
    assert exit_code_metric(tmp_path) == 0


def test_metrics_that_cannot_be_written_keep_the_exit_code_and_the_summary(
    tmp_path: Path,
) -> None:
    (tmp_path / "plain-file").write_text("")
    code, output = ingest(
        tmp_path, "--lake", str(tmp_path / "lake"), "--start", "2025-03-14", "--end", "2025-03-14",
        metrics=tmp_path / "plain-file" / "metrics.prom",  # under a file: cannot be created
    )  # fmt: skip
    assert code == ExitCode.OK
    assert "could not write the metrics" in output
    assert "`: ok" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "ok"


def test_the_manifest_is_copied_from_an_s3_lake(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    code, output = ingest(
        tmp_path,
        "--lake", f"s3://{bucket}/fmp", "--start", "2025-03-14", "--end", "2025-03-14",
        env={"AWS_ENDPOINT_URL": s3_endpoint},
    )  # fmt: skip
    assert code == ExitCode.OK, output
    saved = (tmp_path / "run" / "manifest.json").read_bytes()
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    [key] = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="fmp/_runs/")["Contents"]]
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == saved


def test_a_dry_run_summarises_the_plan_and_saves_nothing(tmp_path: Path) -> None:
    code, _ = ingest(
        tmp_path, "--lake", str(tmp_path / "lake"), "--backfill-days", "5", "--end", "2025-03-14",
        "--dry-run",
    )  # fmt: skip
    assert code == ExitCode.OK
    summary = (tmp_path / "summary.md").read_text()
    assert "## stock_pipeline dry run" in summary
    assert "Sessions 2025-03-10 to 2025-03-14, 2 tickers, 2 requests (prices 2)" in summary
    assert not (tmp_path / "run").exists()
    assert TOKEN not in summary
