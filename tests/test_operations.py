"""docs/operations.md, run: every `bash` block of the runbook, in the situation its section
describes, with the exit code the runbook says. Workspace commands (Databricks CLI) cannot run
here; they are checked against the bundle they name."""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import yaml

from stock_pipeline.market_calendar import last_completed_session, recent_sessions
from stock_pipeline.simulator import Fault, SimulatorConfig, SimulatorThread
from tests.support import API_KEY, REPO

RUNBOOK = REPO / "docs" / "operations.md"
BUNDLE = REPO / "databricks" / "databricks.yml"
BIN = Path(sys.executable).parent
BLOCK = re.compile(
    r"<!-- runbook: (?P<scenario>[\w-]+)(?P<options>[^>]*?) -->\n```bash\n(?P<script>.*?)```",
    re.DOTALL,
)
NEW_KEY = "rotated-key-0123456789"


@dataclass(frozen=True)
class Block:
    scenario: str
    script: str
    expect: int | None
    fixed: str | None
    #: Text the block's output must hold (the runbook's diagnosis rests on it).
    shows: str | None


def runbook_blocks() -> list[Block]:
    text = RUNBOOK.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        options = dict(option.split("=", 1) for option in shlex.split(match["options"]))
        blocks.append(
            Block(
                scenario=match["scenario"],
                script=match["script"],
                expect=int(options["expect"]) if "expect" in options else None,
                fixed=options.get("fixed"),
                shows=options.get("shows"),
            )
        )
    return blocks


def test_every_bash_block_of_the_runbook_is_run_or_checked() -> None:
    text = RUNBOOK.read_text()
    assert text.count("```bash") == len(runbook_blocks())
    for block in runbook_blocks():
        assert block.scenario == "workspace" or block.expect is not None, block


@dataclass
class World:
    """The situation a section describes: a working directory with the tickers file, the
    environment its commands see, and what changes when the problem is fixed."""

    root: Path
    env: dict[str, str]
    fixes: dict[str, Callable[[], None]] = field(default_factory=dict)

    def ingest(self, *args: str, key: str = API_KEY, expect: int = 0) -> None:
        done = self.run(f"stock-pipeline ingest {' '.join(args)}", FMP_API_KEY=key)
        assert done.returncode == expect, done.stdout + done.stderr

    def run(self, script: str, **env: str) -> subprocess.CompletedProcess[str]:
        path = self.root / "block.sh"
        path.write_text(script)
        return subprocess.run(
            ["bash", "-eo", "pipefail", str(path)],
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )


def _world(tmp_path: Path, stack: ExitStack, config: SimulatorConfig, **env: str) -> World:
    root = tmp_path / "ops"
    (root / "config").mkdir(parents=True)
    # Two columns, as the shipped config/tickers.csv has them.
    (root / "config" / "tickers.csv").write_text("symbol,name\nAAPL,Apple\nMSFT,Microsoft\n")
    sim = stack.enter_context(SimulatorThread(config))
    base = {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(root),
        "STOCK_PIPELINE_CACHE_DIR": os.environ["STOCK_PIPELINE_CACHE_DIR"],
        "STOCK_PIPELINE_LAKE": str(root / "lake"),
        "STOCK_PIPELINE_RETRY_BASE_DELAY": "0",
        "FMP_API_KEY": API_KEY,
        "FMP_BASE_URL": sim.url,
        "FMP_RATE_LIMIT": "6000",
        "COLUMNS": "200",
    }
    return World(root, {**base, **env})


def _closed_port_url() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def _morning(world: World) -> None:
    # A catch-up on an empty lake (the last completed session), per symbol so that MSFT's broken
    # rows reach the quarantine.
    world.ingest("--prices-source", "symbol")


def _key_rejected(world: World) -> None:
    world.ingest(expect=3)  # the night, with the old key

    def rotate() -> None:
        world.env["FMP_API_KEY"] = NEW_KEY

    world.fixes["new-key"] = rotate


def _plan_limit(world: World) -> None:
    world.ingest(expect=1)  # MSFT's statements, profile and splits are refused: partial


def _fmp_down(world: World) -> None:
    down = _closed_port_url()
    done = world.run("stock-pipeline ingest", FMP_BASE_URL=down)
    assert done.returncode == 1, done.stdout + done.stderr


def _missed_night(world: World) -> None:
    # The lake stopped three sessions before the last completed one.
    three_back = recent_sessions(last_completed_session(dt.datetime.now(dt.UTC)), 4)[0]
    world.ingest("--backfill-days", "1", "--end", three_back.isoformat())


def _redo_backfill(world: World) -> None:
    world.ingest("--start", "2025-03-03", "--end", "2025-03-14", "--datasets", "prices")


#: The environment of a lake on the moto server, as the AWS CLI and the ingester both read it.
def _s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _s3_lake(world: World, endpoint: str, *, create: bool) -> None:
    """Point the world's lake at a new bucket on the moto server; `create`: make the bucket now,
    or leave it missing with a fix that makes it."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    bucket = f"ops-lake-{os.urandom(4).hex()}"
    world.env.update(_s3_env(endpoint), STOCK_PIPELINE_LAKE=f"s3://{bucket}/fmp")
    if create:
        s3.create_bucket(Bucket=bucket)
    else:
        world.fixes["bucket"] = lambda: s3.create_bucket(Bucket=bucket) and None


#: Scenarios whose lake is on S3 (the nightly lake), with the AWS CLI's copy in their commands.
ON_S3 = frozenset({"quarantine", "databricks"})
SCENARIOS: dict[str, tuple[SimulatorConfig, Callable[[World], None]]] = {
    "morning": (
        SimulatorConfig(
            api_key=API_KEY,
            faults={"MSFT": (Fault(kind="bad_rows", endpoint="historical-price-eod/full"),)},
        ),
        _morning,
    ),
    "key-rejected": (SimulatorConfig(api_key=NEW_KEY), _key_rejected),
    "plan-limit": (
        SimulatorConfig(api_key=API_KEY, plan_gated_symbols=frozenset({"MSFT"})),
        _plan_limit,
    ),
    "fmp-down": (SimulatorConfig(api_key=API_KEY), _fmp_down),
    "missed-night": (SimulatorConfig(api_key=API_KEY), _missed_night),
    "redo-backfill": (SimulatorConfig(api_key=API_KEY), _redo_backfill),
    "quarantine": (
        SimulatorConfig(
            api_key=API_KEY,
            faults={"MSFT": (Fault(kind="bad_rows", endpoint="historical-price-eod/full"),)},
        ),
        _morning,
    ),
    "databricks": (SimulatorConfig(api_key=API_KEY), _morning),
}


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.mark.parametrize("scenario", [*SCENARIOS, "s3-broken"])
def test_the_runbook_section_runs_as_written(
    scenario: str, tmp_path: Path, stack: ExitStack, s3_endpoint: str
) -> None:
    blocks = [b for b in runbook_blocks() if b.scenario == scenario]
    assert blocks, f"the runbook has no block for {scenario}"
    if scenario == "s3-broken":
        world = _world(tmp_path, stack, SimulatorConfig(api_key=API_KEY))
        _s3_lake(world, s3_endpoint, create=False)
    else:
        config, arrange = SCENARIOS[scenario]
        world = _world(tmp_path, stack, config)
        if scenario in ON_S3:
            _s3_lake(world, s3_endpoint, create=True)
        arrange(world)
    for block in blocks:
        if block.fixed is not None:
            world.fixes.pop(block.fixed)()
        done = world.run(block.script)
        assert done.returncode == block.expect, (
            f"{scenario}: {block.script}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
        if block.shows is not None:
            assert block.shows in done.stdout + done.stderr, f"{scenario}: {done.stdout}"
        assert API_KEY not in done.stdout + done.stderr
        assert NEW_KEY not in done.stdout + done.stderr
    assert not world.fixes, f"fixes never applied: {sorted(world.fixes)}"
    if scenario == "plan-limit":  # the ticker is gone from the real two-column file, and only it
        tickers = (world.root / "config" / "tickers.csv").read_text()
        assert tickers == "symbol,name\nAAPL,Apple\n"


def test_workspace_commands_name_jobs_and_targets_the_bundle_has() -> None:
    bundle = yaml.safe_load(BUNDLE.read_text())
    jobs = set(bundle["resources"]["jobs"])
    targets = set(bundle["targets"])
    commands = [
        line.split()
        for block in runbook_blocks()
        if block.scenario == "workspace"
        for line in block.script.splitlines()
        if line.strip()
    ]
    assert commands
    for argv in commands:
        assert argv[:2] == ["databricks", "bundle"], argv
        assert argv[argv.index("-t") + 1] in targets, argv
        if argv[2] == "run":
            assert argv[3] in jobs, argv
