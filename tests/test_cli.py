"""The CLI end to end against the FMP simulator: one test per exit code, dry runs, no leaked key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pytest
from typer.testing import CliRunner

from stock_pipeline.cli import app
from stock_pipeline.config import bundled_tickers, read_tickers
from stock_pipeline.datasets import DATASETS
from stock_pipeline.errors import ExitCode
from stock_pipeline.lake import LocalLake, read_dataset, read_manifests
from stock_pipeline.plan import shard_symbols
from stock_pipeline.simulator import Fault, Refusal, SimulatorConfig, SimulatorThread
from tests.support import API_KEY, all_text_under, assert_no_secret, files_under, write_tickers

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def ingest_args(url: str, lake: Path, tickers: Path, *extra: str) -> list[str]:
    return [
        "ingest", "--fmp-base-url", url, "--lake", str(lake), "--tickers-path", str(tickers),
        "--start", "2025-03-03", "--end", "2025-03-14", "--rate-limit", "6000", *extra,
    ]  # fmt: skip


def test_full_run_exits_0_and_lands_every_dataset(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "MSFT", "BRK-B")
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        code, output = invoke(
            *ingest_args(sim.url, tmp_path / "lake", tickers), env={"FMP_API_KEY": API_KEY}
        )
    assert code == ExitCode.OK, output
    lake = LocalLake(tmp_path / "lake")
    prices = read_dataset(lake, DATASETS["prices"])
    assert prices.height == 3 * 10  # ten sessions from 3 to 14 March 2025
    assert sorted(prices["symbol"].unique()) == ["AAPL", "BRK-B", "MSFT"]
    price_files = [p for p in files_under(tmp_path / "lake" / "raw" / "prices")]
    assert len(price_files) == 10  # one file per session, never one per symbol
    for name in ("income_statement", "balance_sheet", "cash_flow", "profile"):
        assert read_dataset(lake, DATASETS[name]).height > 0, name
    [manifest] = read_manifests(lake)
    assert manifest["status"] == "ok"
    assert manifest["exit_code"] == 0
    assert {f["path"] for f in manifest["files"]} == {
        p.relative_to(tmp_path / "lake").as_posix()
        for p in files_under(tmp_path / "lake")
        if "_runs" not in p.parts
    }
    assert "Run " in output
    assert "prices" in output


def test_partial_failure_exits_1_and_keeps_the_rest(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "GATED", "MSFT")
    config = SimulatorConfig(api_key=API_KEY, plan_gated_symbols=frozenset({"GATED"}))
    with SimulatorThread(config) as sim:
        code, output = invoke(
            *ingest_args(sim.url, tmp_path / "lake", tickers, "--datasets", "prices,profile"),
            env={"FMP_API_KEY": API_KEY},
        )
    assert code == ExitCode.PARTIAL, output
    lake = LocalLake(tmp_path / "lake")
    prices = read_dataset(lake, DATASETS["prices"])
    assert sorted(prices["symbol"].unique()) == ["AAPL", "MSFT"]
    [manifest] = read_manifests(lake)
    assert manifest["status"] == "partial"
    failed = {(f["dataset"], f["symbol"]) for f in manifest["failures"]}
    assert failed == {("prices", "GATED"), ("profile", "GATED")}
    assert manifest["summary"]["prices"]["symbols_failed"] == 1
    assert "GATED" in output
    assert_no_secret(output + all_text_under(tmp_path / "lake"))


def test_a_symbol_refused_in_an_unfamiliar_wording_costs_that_symbol_alone(tmp_path: Path) -> None:
    symbols = ("MSFT", "AMZN", "KO", "JPM", "IBM", "WMT")
    tickers = write_tickers(tmp_path / "t.csv", *symbols)
    config = SimulatorConfig(
        api_key=API_KEY,
        plan_gated_symbols=frozenset({"AMZN"}),
        symbol_refusal=Refusal(text="Sorry, this ticker needs the Ultimate plan."),
    )
    with SimulatorThread(config) as sim:
        code, output = invoke(
            *ingest_args(sim.url, tmp_path / "lake", tickers), env={"FMP_API_KEY": API_KEY}
        )
    assert code == ExitCode.PARTIAL, output
    lake = LocalLake(tmp_path / "lake")
    [manifest] = read_manifests(lake)
    # Every request for AMZN failed (prices, two periods of three statements, profile, splits),
    # each with the rule that made it the symbol's; nothing else failed.
    assert [(f["dataset"], f["symbol"]) for f in manifest["failures"]].count(
        ("prices", "AMZN")
    ) == 1
    assert len(manifest["failures"]) == 9
    assert {f["symbol"] for f in manifest["failures"]} == {"AMZN"}
    assert all(f["rule"].startswith("unknown wording; ") for f in manifest["failures"])
    others = set(symbols) - {"AMZN"}
    for name in manifest["datasets"]:
        landed = set(read_dataset(lake, DATASETS[name])["symbol"])
        # Only some companies ever split: the others have no rows there.
        assert landed == others if name != "splits" else 0 < len(landed) < len(others), name
        assert manifest["summary"][name]["symbols_ok"] == len(others)
    assert "AMZN" in output
    assert_no_secret(output + all_text_under(tmp_path / "lake"))


def test_missing_key_exits_2_before_any_request(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL")
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        code, output = invoke(*ingest_args(sim.url, tmp_path / "lake", tickers))
        assert sim.simulator.requests == []
    assert code == ExitCode.USAGE
    assert "FMP_API_KEY" in output
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ticker\nAAPL\n", "needs a 'symbol' column"),
        ("symbol\n", "lists no symbols"),
        ("symbol\nAAPL\nnot a symbol!\n", "invalid symbols"),
    ],
)
def test_bad_tickers_file_exits_2(tmp_path: Path, content: str, message: str) -> None:
    tickers = tmp_path / "t.csv"
    tickers.write_text(content)
    code, output = invoke(
        "ingest", "--tickers-path", str(tickers), "--lake", str(tmp_path / "lake"),
        env={"FMP_API_KEY": API_KEY},
    )  # fmt: skip
    assert code == ExitCode.USAGE
    assert message in output
    assert not (tmp_path / "lake").exists()


def test_missing_tickers_file_exits_2(tmp_path: Path) -> None:
    code, output = invoke(
        "ingest", "--tickers-path", str(tmp_path / "nope.csv"), env={"FMP_API_KEY": API_KEY}
    )
    assert code == ExitCode.USAGE
    assert "tickers file not found" in output


def test_ingest_outside_a_clone_names_the_flag_and_the_bundled_list(tmp_path: Path) -> None:
    # The working directory (tmp_path) has no config/tickers.csv, as after `pip install`.
    code, output = invoke("ingest", "--dry-run", env={"COLUMNS": "1000"})
    assert code == ExitCode.USAGE
    assert f"tickers file not found: config/tickers.csv (looked in {tmp_path})" in output
    bundled = re.search(r"--tickers-path (\S+dow30\.csv)", output)
    assert bundled, output
    assert len(read_tickers(Path(bundled.group(1)))) == 30
    assert not (tmp_path / "lake").exists()


def test_unknown_dataset_exits_2(tmp_path: Path) -> None:
    code, output = invoke("ingest", "--datasets", "prices,options", env={"FMP_API_KEY": API_KEY})
    assert code == ExitCode.USAGE
    assert "options" in output


def test_refused_key_exits_3_after_one_request(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", *[f"S{i}" for i in range(20)])
    with SimulatorThread(SimulatorConfig(api_key="the-real-key")) as sim:
        code, output = invoke(
            *ingest_args(sim.url, tmp_path / "lake", tickers, "--concurrency", "1"),
            env={"FMP_API_KEY": API_KEY},
        )
        statuses = [r.status for r in sim.simulator.requests]
    assert code == ExitCode.AUTH, output
    assert statuses == [401]  # aborted at once, not once per symbol
    assert "refused the API key" in output
    assert not (tmp_path / "lake" / "raw").exists()
    [manifest] = read_manifests(LocalLake(tmp_path / "lake"))
    assert manifest["status"] == "aborted"
    assert_no_secret(output + json.dumps(manifest))


def test_dry_run_prints_the_plan_and_sends_nothing(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "MSFT")
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        code, output = invoke(
            *ingest_args(sim.url, tmp_path / "lake", tickers, "--dry-run"),
        )
        assert sim.simulator.requests == []
    assert code == ExitCode.OK
    assert "total" in output
    assert "estimated time" in output
    # 2 symbols: prices 2, three statements x 2 periods x 2, profile 2, splits 2
    assert re.search(r"total\W+18\b", output), output
    assert not (tmp_path / "lake").exists()


def test_transient_faults_are_retried_and_the_run_succeeds(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "MSFT")
    faults = {
        "AAPL": (Fault(kind="server_error", times=2), Fault(kind="truncated", times=1)),
        "MSFT": (Fault(kind="limit_reach_200", times=1), Fault(kind="drop_connection", times=2)),
    }
    with SimulatorThread(SimulatorConfig(api_key=API_KEY, faults=faults)) as sim:
        code, output = invoke(
            *ingest_args(sim.url, tmp_path / "lake", tickers, "--datasets", "prices"),
            env={"FMP_API_KEY": API_KEY, "STOCK_PIPELINE_RETRY_BASE_DELAY": "0"},
        )
    assert code == ExitCode.OK, output
    prices = read_dataset(LocalLake(tmp_path / "lake"), DATASETS["prices"])
    assert prices.group_by("symbol").len().sort("symbol")["len"].to_list() == [10, 10]
    [manifest] = read_manifests(LocalLake(tmp_path / "lake"))
    assert manifest["summary"]["prices"]["retries"] >= 4


def test_catch_up_starts_after_the_last_landed_session(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL")
    lake_dir = tmp_path / "lake"
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        env = {"FMP_API_KEY": API_KEY}
        first = ingest_args(sim.url, lake_dir, tickers, "--datasets", "prices")
        code, output = invoke(*first, env=env)
        assert code == ExitCode.OK, output
        # A missed night: the next run names only --end and fetches from 17 March on.
        code, output = invoke(
            "ingest", "--fmp-base-url", sim.url, "--lake", str(lake_dir), "--tickers-path",
            str(tickers), "--end", "2025-03-19", "--datasets", "prices", env=env,
        )  # fmt: skip
        assert code == ExitCode.OK, output
        second = sim.simulator.requests[-1].params
        assert (second["from"], second["to"]) == ("2025-03-17", "2025-03-19")
        # Nothing new: nothing fetched.
        before = len(sim.simulator.requests)
        code, output = invoke(
            "ingest", "--fmp-base-url", sim.url, "--lake", str(lake_dir), "--tickers-path",
            str(tickers), "--end", "2025-03-19", "--datasets", "prices", env=env,
        )  # fmt: skip
        assert code == ExitCode.OK
        assert "nothing to fetch" in output
        assert len(sim.simulator.requests) == before
    prices = read_dataset(LocalLake(lake_dir), DATASETS["prices"])
    assert prices["date"].n_unique() == 13  # 3-14 March (10 sessions) and 17-19 March


def test_lands_in_s3_through_the_standard_aws_settings(
    tmp_path: Path, s3_endpoint: str, s3_client: S3Client, bucket: str
) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "MSFT")
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        code, output = invoke(
            *ingest_args(sim.url, tmp_path / "unused", tickers, "--datasets", "prices,profile"),
            "--lake", f"s3://{bucket}/fmp",
            env={"FMP_API_KEY": API_KEY, "AWS_ENDPOINT_URL": s3_endpoint},
        )  # fmt: skip
    assert code == ExitCode.OK, output
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len([k for k in keys if k.startswith("fmp/raw/prices/date=")]) == 10
    assert len([k for k in keys if k.startswith("fmp/raw/profile/ingest_date=")]) == 1
    assert len([k for k in keys if k.startswith("fmp/_runs/")]) == 1
    assert f"s3://{bucket}/fmp" in output


def test_unreachable_lake_exits_2_before_any_request(tmp_path: Path, s3_endpoint: str) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL")
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        code, output = invoke(
            *ingest_args(sim.url, tmp_path / "unused", tickers),
            "--lake", "s3://no-such-bucket-anywhere/fmp",
            env={"FMP_API_KEY": API_KEY, "AWS_ENDPOINT_URL": s3_endpoint},
        )  # fmt: skip
        assert sim.simulator.requests == []
    assert code == ExitCode.USAGE
    assert "bucket does not exist" in output


def test_key_is_read_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"FMP_API_KEY={API_KEY}\n")  # the tests run in tmp_path
    tickers = write_tickers(tmp_path / "t.csv", "AAPL")
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        code, output = invoke(
            *ingest_args(sim.url, tmp_path / "lake", tickers, "--datasets", "profile")
        )
    assert code == ExitCode.OK, output
    assert_no_secret(output)


def test_environment_variables_configure_the_run(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL")
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        code, output = invoke(
            "ingest", "--tickers-path", str(tickers), "--start", "2025-03-14", "--end",
            "2025-03-14", "--datasets", "prices",
            env={
                "FMP_API_KEY": API_KEY, "FMP_BASE_URL": sim.url, "FMP_RATE_LIMIT": "5000",
                "STOCK_PIPELINE_LAKE": str(tmp_path / "env-lake"),
            },
        )  # fmt: skip
        assert len(sim.simulator.requests) == 1
    assert code == ExitCode.OK, output
    [manifest] = read_manifests(LocalLake(tmp_path / "env-lake"))
    assert manifest["parameters"]["rate_limit"] == 5000


@pytest.mark.parametrize(
    "argv",
    [
        ["stock-pipeline", "--help"],
        ["ingest", "--help"],
        [sys.executable, "-m", "stock_pipeline", "--help"],
    ],
)
def test_installed_entry_points_answer(argv: list[str]) -> None:
    if argv[0] != sys.executable:
        argv = [str(Path(sys.executable).parent / argv[0]), *argv[1:]]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--lake" in done.stdout or "ingest" in done.stdout


#: What `--help` and a dry run must not load: each takes a tenth of a second or more to import.
HEAVY_MODULES = ("aiohttp", "boto3", "duckdb", "numpy", "pandas", "polars", "pyarrow", "sqlglot")
_LOADED_AFTER_MAIN = """
import sys
from stock_pipeline.cli import main
sys.argv[0] = "stock-pipeline"
try:
    main()
except SystemExit as exit:
    print("exit", exit.code, file=sys.stderr)
print("loaded", *sorted(m for m in HEAVY if m in sys.modules), file=sys.stderr)
"""


def _heavy_modules_loaded(*argv: str, code: int = 0) -> list[str]:
    script = f"HEAVY = {HEAVY_MODULES!r}\n{_LOADED_AFTER_MAIN}"
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60
    )
    lines = done.stderr.splitlines()
    assert lines[-2] == f"exit {code}", done.stderr
    return lines[-1].split()[1:]


@pytest.mark.parametrize("argv", [["--help"], ["ingest", "--help"], ["demo", "--help"]])
def test_help_loads_no_heavy_module(argv: list[str]) -> None:
    assert _heavy_modules_loaded(*argv) == []


def test_a_dry_run_loads_no_heavy_module_once_the_calendar_is_cached(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "MSFT")
    argv = ["ingest", "--tickers-path", str(tickers), "--backfill-days", "600", "--dry-run"]
    assert "pandas" in _heavy_modules_loaded(*argv)  # the first run computes the calendar
    assert _heavy_modules_loaded(*argv) == []


def test_ingest_shortcut_runs_a_dry_run(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ingest"), "--tickers-path", str(tickers),
         "--backfill-days", "3", "--end", "2025-03-14", "--dry-run"],
        capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sessions: 3 (2025-03-12 to 2025-03-14)" in done.stdout


def test_demo_runs_end_to_end_without_a_key(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "MSFT", "KO")
    code, output = invoke(
        "demo", "--tickers-path", str(tickers), "--lake", str(tmp_path / "demo"),
        "--backfill-days", "3",
    )  # fmt: skip
    assert code == ExitCode.OK, output
    lake = LocalLake(tmp_path / "demo")
    assert read_dataset(lake, DATASETS["prices"]).height == 9
    assert read_dataset(lake, DATASETS["balance_sheet"]).height > 0
    assert "FMP simulator listening on http://127.0.0.1:" in output
    assert str((tmp_path / "demo").resolve()) in output


def test_demo_runs_from_any_directory_on_the_bundled_dow_members(tmp_path: Path) -> None:
    # The working directory (tmp_path) holds nothing: no config/, no tickers file.
    code, output = invoke("demo", "--backfill-days", "2")
    assert code == ExitCode.OK, output
    lake = LocalLake(tmp_path / "demo-lake")
    (manifest,) = read_manifests(lake)
    assert len(manifest["symbols"]) == 30
    assert {"AAPL", "MSFT", "JPM"} <= set(manifest["symbols"])
    assert read_dataset(lake, DATASETS["prices"]).height == 60


def test_catch_up_moves_past_symbols_fmp_refuses_for_good(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "GATED")
    config = SimulatorConfig(api_key=API_KEY, plan_gated_symbols=frozenset({"GATED"}))
    env = {"FMP_API_KEY": API_KEY}
    with SimulatorThread(config) as sim:
        code, _ = invoke(
            *ingest_args(sim.url, tmp_path / "lake", tickers, "--datasets", "prices"), env=env
        )
        assert code == ExitCode.PARTIAL
        code, output = invoke(
            "ingest", "--fmp-base-url", sim.url, "--lake", str(tmp_path / "lake"), "--tickers-path",
            str(tickers), "--end", "2025-03-19", "--datasets", "prices", env=env,
        )  # fmt: skip
        assert code == ExitCode.PARTIAL, output
        aapl = [r.params for r in sim.simulator.requests if r.params.get("symbol") == "AAPL"]
    # A 402 will be refused again: the night after a partial run starts where that run ended.
    assert (aapl[-1]["from"], aapl[-1]["to"]) == ("2025-03-17", "2025-03-19")


def test_catch_up_fetches_again_what_failed_for_a_passing_reason(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "MSFT")
    env = {"FMP_API_KEY": API_KEY, "STOCK_PIPELINE_RETRY_BASE_DELAY": "0"}
    broken = SimulatorConfig(api_key=API_KEY, faults={"MSFT": (Fault(kind="server_error"),)})
    with SimulatorThread(broken) as sim:
        code, _ = invoke(
            *ingest_args(sim.url, tmp_path / "lake", tickers, "--datasets", "prices"), env=env
        )
        assert code == ExitCode.PARTIAL
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        code, output = invoke(
            "ingest", "--fmp-base-url", sim.url, "--lake", str(tmp_path / "lake"), "--tickers-path",
            str(tickers), "--end", "2025-03-19", "--datasets", "prices", env=env,
        )  # fmt: skip
        assert code == ExitCode.OK, output
        first = sim.simulator.requests[0].params
    # MSFT's 3-14 March never landed (a 503 may pass tomorrow), so the catch-up starts there.
    assert (first["from"], first["to"]) == ("2025-03-03", "2025-03-19")
    prices = read_dataset(LocalLake(tmp_path / "lake"), DATASETS["prices"])
    assert prices.filter(pl.col("symbol") == "MSFT").height == 13


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--end", "2999-01-04"], "after the last completed NYSE session"),
        (["--end", "1985-01-04"], "before 1990-01-02"),
        (["--start", "1985-01-02", "--end", "1990-03-01"], "before 1990-01-02"),
        (["--backfill-days", "5000", "--end", "1995-01-04"], "reaches before the calendar"),
        (["--fmp-base-url", "http://127.0.0.1:99999"], "--fmp-base-url must be"),
        (["--fmp-base-url", "ftp://example.com"], "--fmp-base-url must be"),
    ],
)
def test_impossible_ranges_and_urls_exit_2_before_any_request(
    tmp_path: Path, args: list[str], message: str
) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL")
    code, output = invoke(
        "ingest", "--tickers-path", str(tickers), "--lake", str(tmp_path / "lake"), *args,
        env={"FMP_API_KEY": API_KEY},
    )  # fmt: skip
    assert code == ExitCode.USAGE, output
    assert message in output
    assert not (tmp_path / "lake" / "raw").exists()


def test_an_unreachable_fmp_aborts_the_run_instead_of_retrying_for_hours(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", *[f"S{i}" for i in range(40)])
    closed_port = "http://127.0.0.1:9"
    code, output = invoke(
        *ingest_args(closed_port, tmp_path / "lake", tickers, "--datasets", "prices,profile"),
        env={"FMP_API_KEY": API_KEY, "STOCK_PIPELINE_RETRY_BASE_DELAY": "0"},
    )
    assert code == ExitCode.PARTIAL, output
    assert "FMP unreachable" in output
    [manifest] = read_manifests(LocalLake(tmp_path / "lake"))
    assert manifest["status"] == "aborted"
    assert not (tmp_path / "lake" / "raw").exists()
    assert_no_secret(output + all_text_under(tmp_path / "lake"))


def test_dotenv_sets_option_defaults_too(tmp_path: Path) -> None:
    tickers = write_tickers(tmp_path / "t.csv", "AAPL")
    (tmp_path / ".env").write_text(
        f"FMP_API_KEY={API_KEY}\nFMP_RATE_LIMIT=750\nSTOCK_PIPELINE_LAKE={tmp_path / 'dotenv-lake'}\n"
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "stock-pipeline"), "ingest", "--tickers-path",
         str(tickers), "--end", "2025-03-14", "--backfill-days", "2", "--dry-run"],
        capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "750 requests/minute" in done.stdout
    assert "dotenv-lake" in done.stdout


def test_shards_split_the_universe_with_no_symbol_twice_or_missing() -> None:
    with bundled_tickers() as dow:
        universe = read_tickers(dow) + tuple(f"S{i:04d}" for i in range(2000))
    for count in (1, 2, 3, 4, 7, 16):
        shards = [shard_symbols(universe, k, count) for k in range(1, count + 1)]
        assert sorted(s for shard in shards for s in shard) == sorted(universe), count
        sizes = [len(shard) for shard in shards]
        assert max(sizes) - min(sizes) < 0.5 * len(universe) / count, (count, sizes)
    # A new ticker joins one shard; none of the others moves.
    before = [set(shard_symbols(universe, k, 4)) for k in range(1, 5)]
    after = [set(shard_symbols((*universe, "NEWCO"), k, 4)) for k in range(1, 5)]
    assert [len(b - a) for a, b in zip(after, before, strict=True)] == [0, 0, 0, 0]
    assert sum(len(a - b) for a, b in zip(after, before, strict=True)) == 1


def test_sharded_runners_pace_at_their_share_and_catch_up_on_their_own(tmp_path: Path) -> None:
    symbols = ("AAPL", "MSFT", "KO", "JPM", "IBM", "WMT", "XOM", "CVX")
    tickers = write_tickers(tmp_path / "t.csv", *symbols)
    lake_path = tmp_path / "lake"
    env = {"FMP_API_KEY": API_KEY}

    def run(shard: str, *dates: str) -> tuple[int, str, list[dict[str, str]]]:
        with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
            code, output = invoke(
                "ingest", "--fmp-base-url", sim.url, "--lake", str(lake_path),
                "--tickers-path", str(tickers), "--datasets", "prices", "--rate-limit", "6000",
                "--shard", shard, *dates, env=env,
            )  # fmt: skip
            return code, output, [r.params for r in sim.simulator.requests]

    first = ("--start", "2025-03-03", "--end", "2025-03-07")
    for shard in ("1/2", "2/2"):
        code, output, _ = run(shard, *first)
        assert code == ExitCode.OK, output
    lake = LocalLake(lake_path)
    manifests = sorted(read_manifests(lake), key=lambda m: m["parameters"]["shard"])
    assert [m["parameters"]["shard"] for m in manifests] == [[1, 2], [2, 2]]
    assert {m["parameters"]["pace"] for m in manifests} == {3000}
    one, two = (set(m["symbols"]) for m in manifests)
    assert one | two == set(symbols)
    assert one & two == set()
    assert set(read_dataset(lake, DATASETS["prices"])["symbol"]) == set(symbols)
    # Runner 2 misses the next night; runner 1 catches up alone, then runner 2 by itself.
    code, output, sent = run("1/2", "--end", "2025-03-14")
    assert code == ExitCode.OK, output
    assert {p["symbol"] for p in sent} == one
    assert {p["from"] for p in sent} == {"2025-03-10"}
    code, output, sent = run("2/2", "--end", "2025-03-14")
    assert code == ExitCode.OK, output
    assert {p["symbol"] for p in sent} == two
    assert {p["from"] for p in sent} == {"2025-03-10"}
    code, output, sent = run("1/2", "--end", "2025-03-14")
    assert code == ExitCode.OK, output
    assert sent == []
    assert "already holds every session" in output
    prices = read_dataset(lake, DATASETS["prices"])
    assert prices.height == len(symbols) * 10  # both weeks, every symbol, no session twice


def test_companies_without_splits_are_not_warned_about(tmp_path: Path) -> None:
    # Most companies never split; a price dataset without rows for a symbol still is news.
    tickers = write_tickers(tmp_path / "t.csv", "AAPL", "MSFT", "KO", "JPM", "IBM")
    with SimulatorThread(SimulatorConfig(api_key=API_KEY)) as sim:
        code, output = invoke(
            *ingest_args(sim.url, tmp_path / "lake", tickers, "--datasets", "prices,splits"),
            env={"FMP_API_KEY": API_KEY},
        )
    assert code == ExitCode.OK, output
    [manifest] = read_manifests(LocalLake(tmp_path / "lake"))
    assert manifest["summary"]["splits"]["symbols_without_data"]  # recorded all the same
    assert "had no data" not in output


def test_status_on_a_stale_lake_loads_no_heavy_module(tmp_path: Path) -> None:
    # A stale lake is the case that alerts: without a webhook or a mail server set up, judging
    # it needs neither the HTTP client nor the data frames.
    tickers = write_tickers(tmp_path / "t.csv", "AAPL")
    (tmp_path / "lake" / "_runs").mkdir(parents=True)
    argv = ["status", "--lake", str(tmp_path / "lake"), "--tickers-path", str(tickers)]
    _heavy_modules_loaded(*argv, code=1)  # the first run computes the calendar
    assert _heavy_modules_loaded(*argv, code=1) == []
