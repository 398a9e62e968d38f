"""`stock-pipeline status` on lakes the ingester wrote through the FMP simulator: fresh, stale,
partial and bad input, judged against the real NYSE calendar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stock_pipeline.cli import app
from stock_pipeline.errors import ExitCode
from stock_pipeline.plan import shard_symbols
from stock_pipeline.simulator import Fault, SimulatorConfig, SimulatorThread
from tests.support import API_KEY, write_tickers

runner = CliRunner()
ENV = {"FMP_API_KEY": API_KEY, "STOCK_PIPELINE_RETRY_BASE_DELAY": "0"}
#: The Saturday after the run's last session (Friday 2025-03-14).
WEEKEND = "2025-03-15T12:00:00+00:00"
#: A week later, after Friday 2025-03-21's close: five sessions behind.
WEEK_LATER = "2025-03-21T22:00:00+00:00"


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={**ENV, **(env or {})}, catch_exceptions=False)
    return result.exit_code, result.output


def ingest(
    lake: Path | str,
    tickers: Path,
    faults: dict[str, tuple[Fault, ...]],
    env: dict[str, str] | None = None,
) -> int:
    with SimulatorThread(SimulatorConfig(api_key=API_KEY, faults=faults)) as sim:
        code, _ = invoke(
            "ingest", "--fmp-base-url", sim.url, "--lake", str(lake), "--tickers-path",
            str(tickers), "--start", "2025-03-03", "--end", "2025-03-14", "--rate-limit", "6000",
            "--datasets", "prices,income_statement", env=env,
        )  # fmt: skip
    return code


def status(
    lake: Path | str, tickers: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    code, output = invoke(
        "status", "--lake", str(lake), "--tickers-path", str(tickers), "--format", "json", *extra,
        env=env,
    )  # fmt: skip
    return code, json.loads(output)


@pytest.fixture
def landed(tmp_path: Path) -> tuple[Path, Path]:
    """A lake whose run landed every ticker, MSFT with rows FMP sent broken."""
    root = tmp_path
    tickers = write_tickers(root / "tickers.csv", "AAPL", "MSFT")
    faults = {"MSFT": (Fault(kind="bad_rows", times=1, endpoint="historical-price-eod/full"),)}
    assert ingest(root / "lake", tickers, faults) == ExitCode.OK
    return root / "lake", tickers


def test_a_fresh_lake_exits_0_with_every_ticker_covered(landed: tuple[Path, Path]) -> None:
    code, report = status(*landed, "--as-of", WEEKEND)
    assert code == ExitCode.OK
    assert report["fresh"] is True
    assert report["last_session"] == "2025-03-14"
    [prices] = report["prices"]
    assert prices["newest_session"] == prices["complete_through"] == "2025-03-14"
    assert prices["lag_sessions"] == 0
    assert (prices["tickers_covered"], prices["tickers_not_covered"]) == (2, [])
    [run] = report["runs"]
    assert (run["status"], run["exit_code"], run["failures"]) == ("ok", 0, 0)
    assert report["quarantined"]["prices"] > 0
    assert report["quarantine_reasons"] == {}  # only read when asked
    assert set(report["statement_age_days"]) == {"AAPL", "MSFT"}


def test_the_quarantine_reasons_are_read_when_asked(landed: tuple[Path, Path]) -> None:
    code, report = status(*landed, "--as-of", WEEKEND, "--reasons")
    assert code == ExitCode.OK
    reasons = report["quarantine_reasons"]["prices"]
    assert sum(reasons.values()) >= report["quarantined"]["prices"]
    assert all(reason and count > 0 for reason, count in reasons.items())


def test_a_stale_lake_exits_1_unless_the_lag_is_allowed(landed: tuple[Path, Path]) -> None:
    code, report = status(*landed, "--as-of", WEEK_LATER)
    assert code == ExitCode.PARTIAL
    assert report["fresh"] is False
    assert report["last_session"] == "2025-03-21"
    [prices] = report["prices"]
    assert prices["lag_sessions"] == 5  # 17 to 21 March
    assert prices["tickers_not_covered"] == ["AAPL", "MSFT"]
    code, _ = status(*landed, "--as-of", WEEK_LATER, "--max-lag", "5")
    assert code == ExitCode.OK


def test_a_ticker_the_run_could_not_fetch_makes_the_lake_incomplete(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "tickers.csv", "AAPL", "IBM")
    down = {"IBM": (Fault(kind="server_error", endpoint="historical-price-eod/full"),)}
    assert ingest(tmp_path / "lake", tickers, down) == ExitCode.PARTIAL
    code, report = status(tmp_path / "lake", tickers, "--as-of", WEEKEND)
    assert code == ExitCode.PARTIAL
    [prices] = report["prices"]
    assert prices["tickers_not_covered"] == ["IBM"]
    # A failed range counts as landed through the day before it, as the catch-up reads it.
    assert prices["complete_through"] == "2025-03-02"
    assert prices["lag_sessions"] == 10
    [run] = report["runs"]
    assert run["status"] == "partial"
    assert run["failures"] >= 1
    assert sum(run["failure_reasons"].values()) == run["failures"]
    assert run["failure_reasons"] == {"FmpServerError": 1}
    code, table = invoke(
        "status", "--lake", str(tmp_path / "lake"), "--tickers-path", str(tickers), "--as-of",
        WEEKEND,
    )  # fmt: skip
    assert "1 (FmpServerError 1)" in table


def test_a_ticker_added_since_the_run_is_not_covered(
    landed: tuple[Path, Path], tmp_path: Path
) -> None:
    tickers = write_tickers(tmp_path / "tickers.csv", "AAPL", "MSFT", "NVDA")
    code, report = status(landed[0], tickers, "--as-of", WEEKEND)
    assert code == ExitCode.PARTIAL
    assert report["prices"][0]["tickers_not_covered"] == ["NVDA"]


def test_the_table_and_markdown_formats_say_the_same(landed: tuple[Path, Path]) -> None:
    lake, tickers = landed
    common = ["status", "--lake", str(lake), "--tickers-path", str(tickers), "--as-of", WEEK_LATER]
    code, markdown = invoke(*common, "--format", "markdown")
    assert code == ExitCode.PARTIAL
    assert "STALE or incomplete" in markdown
    assert "| prices | 2025-03-14 | 2025-03-14 | 5 | 0/2 | AAPL, MSFT |" in markdown
    code, table = invoke(*common)
    assert code == ExitCode.PARTIAL
    assert "STALE or incomplete" in table
    assert "2025-03-14" in table


def test_a_lake_whose_only_run_was_aborted_is_not_fresh(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "tickers.csv", "AAPL")
    with SimulatorThread(SimulatorConfig(api_key="another-key")) as sim:
        code, _ = invoke(
            "ingest", "--fmp-base-url", sim.url, "--lake", str(tmp_path / "lake"),
            "--tickers-path", str(tickers), "--start", "2025-03-03", "--end", "2025-03-14",
        )  # fmt: skip
    assert code == ExitCode.AUTH
    code, report = status(tmp_path / "lake", tickers, "--as-of", WEEKEND)
    assert code == ExitCode.PARTIAL
    assert report["fresh"] is False
    assert report["landed_runs"] == 0
    [run] = report["runs"]
    assert (run["status"], run["failure_reasons"]) == ("aborted", {"FmpAuthError": 1})
    code, table = invoke("status", "--lake", str(tmp_path / "lake"), "--tickers-path",
                         str(tickers), "--as-of", WEEKEND)  # fmt: skip
    assert "no run has landed" in table


def test_a_lake_without_runs_is_not_fresh(tmp_path: Path) -> None:
    (tmp_path / "lake").mkdir()
    tickers = write_tickers(tmp_path / "tickers.csv", "AAPL")
    code, report = status(tmp_path / "lake", tickers, "--as-of", WEEKEND)
    assert code == ExitCode.PARTIAL
    assert (report["runs"], report["prices"], report["fresh"]) == ([], [], False)


@pytest.mark.parametrize(
    ("problem", "message"),
    [("no lake", "no lake at"), ("no tickers", "tickers"), ("bad time", "ISO 8601")],
)
def test_bad_input_exits_2_with_a_clear_message(
    landed: tuple[Path, Path], tmp_path: Path, problem: str, message: str
) -> None:
    lake, tickers = landed
    args = {"lake": str(lake), "tickers": str(tickers), "as_of": WEEKEND}
    if problem == "no lake":
        args["lake"] = str(tmp_path / "nowhere")
    elif problem == "no tickers":
        args["tickers"] = str(tmp_path / "missing.csv")
    else:
        args["as_of"] = "last tuesday"
    code, output = invoke(
        "status", "--lake", args["lake"], "--tickers-path", args["tickers"], "--as-of",
        args["as_of"],
    )  # fmt: skip
    assert code == ExitCode.USAGE
    assert message in output


def test_a_lake_in_s3_is_read_over_http(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    tickers = write_tickers(tmp_path / "tickers.csv", "AAPL", "MSFT")
    s3 = {"AWS_ENDPOINT_URL": s3_endpoint}
    assert ingest(f"s3://{bucket}/fmp", tickers, {}, env=s3) == ExitCode.OK
    code, report = status(f"s3://{bucket}/fmp", tickers, "--as-of", WEEKEND, env=s3)
    assert code == ExitCode.OK
    assert report["lake"] == f"s3://{bucket}/fmp"
    assert report["prices"][0]["tickers_covered"] == 2
    code, output = invoke(
        "status", "--lake", "s3://no-such-bucket-anywhere/fmp", "--tickers-path", str(tickers),
        env=s3,
    )  # fmt: skip
    assert code == ExitCode.USAGE
    assert "bucket" in output


def test_a_shard_is_judged_on_its_own_tickers(landed: tuple[Path, Path]) -> None:
    lake, tickers = landed
    write_tickers(tickers, "AAPL", "MSFT", "IBM")  # IBM joined, and no run has fetched it yet
    count = 8
    [own] = [k for k in range(1, count + 1) if shard_symbols(["IBM"], k, count)]
    others = [
        k for k in range(1, count + 1) if k != own and shard_symbols(["AAPL", "MSFT"], k, count)
    ]
    code, report = status(lake, tickers, "--as-of", WEEKEND, "--shard", f"{own}/{count}")
    assert code == ExitCode.PARTIAL
    assert report["prices"][0]["tickers_not_covered"] == ["IBM"]
    for k in others:
        code, report = status(lake, tickers, "--as-of", WEEKEND, "--shard", f"{k}/{count}")
        assert code == ExitCode.OK, report
        assert "IBM" not in report["prices"][0]["tickers_not_covered"]
    assert others  # some runner holds AAPL or MSFT and is judged fresh
