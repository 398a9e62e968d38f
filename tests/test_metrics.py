"""`ingest --metrics-file`: the run's metrics in the Prometheus text format, read back with
prometheus-client's own parser."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from stock_pipeline.cli import app
from stock_pipeline.errors import ExitCode
from stock_pipeline.simulator import Fault, SimulatorConfig, SimulatorThread
from tests.support import API_KEY, write_tickers

runner = CliRunner()
ENV = {"FMP_API_KEY": API_KEY, "STOCK_PIPELINE_RETRY_BASE_DELAY": "0"}


def ingest(tmp_path: Path, *symbols: str, down: str | None = None, lake: str = "lake") -> int:
    tickers = write_tickers(tmp_path / "tickers.csv", *symbols)
    faults = {down: (Fault(kind="server_error"),)} if down else {}
    with SimulatorThread(SimulatorConfig(api_key=API_KEY, faults=faults)) as sim:
        result = runner.invoke(
            app,
            [
                "ingest", "--fmp-base-url", sim.url, "--lake", str(tmp_path / lake),
                "--tickers-path", str(tickers), "--start", "2025-03-03", "--end", "2025-03-14",
                "--rate-limit", "6000", "--datasets", "prices,profile",
                "--metrics-file", str(tmp_path / "metrics" / "stock_pipeline.prom"),
            ],
            env=ENV,
            catch_exceptions=False,
        )  # fmt: skip
    return result.exit_code


def samples(tmp_path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (tmp_path / "metrics" / "stock_pipeline.prom").read_text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_run_writes_its_counters_and_its_success_time(tmp_path: Path) -> None:
    assert ingest(tmp_path, "AAPL", "MSFT") == ExitCode.OK
    found = samples(tmp_path)
    assert found[("stock_pipeline_run_exit_code", ())] == 0
    prices = (("dataset", "prices"),)
    assert found[("stock_pipeline_run_requests", prices)] == 2
    assert found[("stock_pipeline_run_rows", prices)] == 2 * 10  # ten sessions each
    assert found[("stock_pipeline_run_files", prices)] == 10
    assert found[("stock_pipeline_run_symbols_failed", prices)] == 0
    assert found[("stock_pipeline_run_requests", (("dataset", "profile"),))] == 2
    responses = {
        dict(labels)["status"]: value
        for (name, labels), value in found.items()
        if name == "stock_pipeline_run_responses" and dict(labels)["dataset"] == "prices"
    }
    assert responses == {"200": 2}
    assert found[("stock_pipeline_run_duration_seconds", ())] > 0
    finished = found[("stock_pipeline_run_finished_timestamp_seconds", ())]
    assert found[("stock_pipeline_last_success_timestamp_seconds", ())] == finished


def test_a_partial_run_keeps_the_last_success_and_counts_its_failures(tmp_path: Path) -> None:
    assert ingest(tmp_path, "AAPL") == ExitCode.OK
    success = samples(tmp_path)[("stock_pipeline_last_success_timestamp_seconds", ())]
    assert ingest(tmp_path, "AAPL", "IBM", down="IBM", lake="lake-2") == ExitCode.PARTIAL
    found = samples(tmp_path)
    assert found[("stock_pipeline_run_exit_code", ())] == 1
    assert found[("stock_pipeline_last_success_timestamp_seconds", ())] == success
    prices = (("dataset", "prices"),)
    assert found[("stock_pipeline_run_symbols_failed", prices)] == 1
    responses = {
        dict(labels)["status"]: value
        for (name, labels), value in found.items()
        if name == "stock_pipeline_run_responses" and dict(labels)["dataset"] == "prices"
    }
    # AAPL answered once; IBM's 503s, first try and every retry, each counted.
    requests = found[("stock_pipeline_run_requests", prices)]
    retries = found[("stock_pipeline_run_retries", prices)]
    assert responses == {"200": 1, "503": requests - 1}  # the simulator's server error
    assert requests - 1 == retries + 1
    failures = {k: v for k, v in found.items() if k[0] == "stock_pipeline_run_failures"}
    assert sum(failures.values()) >= 2  # IBM's prices and profile
    assert all(dict(labels)["reason"] for _, labels in failures)


def test_a_run_that_cannot_start_still_writes_its_exit_code(tmp_path: Path) -> None:
    (tmp_path / "lake").write_text("a file where the lake folder should be")
    assert ingest(tmp_path, "AAPL") == ExitCode.USAGE
    found = samples(tmp_path)
    assert found[("stock_pipeline_run_exit_code", ())] == 2
    assert ("stock_pipeline_last_success_timestamp_seconds", ()) not in found  # never succeeded
    assert not [k for k in found if k[0] == "stock_pipeline_run_requests"]
