"""Shared fixtures: the FMP simulator and a moto S3 server on 127.0.0.1, a clean environment, and
lakes the ingester wrote for the medallion tests."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from stock_pipeline import market_calendar
from stock_pipeline.lake import LocalLake
from stock_pipeline.simulator import FmpSimulator, SimulatorConfig, serve
from tests.medallion_lake import MedallionLake, write_run_1, write_run_2

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

from tests.support import API_KEY, moto_server

_ENV = (
    "FMP_API_KEY",
    "FMP_BASE_URL",
    "FMP_RATE_LIMIT",
    "STOCK_PIPELINE_LAKE",
    "STOCK_PIPELINE_KMS_KEY_ID",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SESSION_TOKEN",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's keys, lake or AWS profile, nor a .env in the repo."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("COLUMNS", "200")
    # The CLI caches the NYSE calendar; never in the developer's home, never across tests.
    monkeypatch.setenv("STOCK_PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(market_calendar, "_cache_dir", None)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server speaking real HTTP on 127.0.0.1, for the whole test session."""
    with moto_server() as endpoint:
        # moto imports its S3 backend on the first request. Doing that now, before any test
        # runs, keeps the import from racing the main thread's own imports (CPython 3.11's parser
        # is not safe to use from two threads at once: "AST constructor recursion depth
        # mismatch").
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        ).list_buckets()  # fmt: skip
        yield endpoint


@pytest.fixture
def s3_client(s3_endpoint: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3_client: S3Client) -> str:
    """A fresh, empty bucket per test."""
    name = f"lake-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


SimulatorFactory = Callable[..., AbstractAsyncContextManager[tuple[str, FmpSimulator]]]


@pytest.fixture
def fmp_server() -> SimulatorFactory:
    """`async with fmp_server(rate_limit=..., faults=...) as (url, simulator)`: an FMP simulator."""

    @asynccontextmanager
    async def start(**config: Any) -> AsyncIterator[tuple[str, FmpSimulator]]:
        config.setdefault("api_key", API_KEY)
        simulator = FmpSimulator(SimulatorConfig(**config))
        async with serve(simulator) as url:
            yield url, simulator

    return start


@pytest.fixture(scope="session")
def lakes(tmp_path_factory: pytest.TempPathFactory) -> tuple[MedallionLake, MedallionLake]:
    """(run 1 only, run 1 + run 2 with corrections): lakes the ingester wrote, once per session.
    Tests copy them before changing anything."""
    base = tmp_path_factory.mktemp("lakes")
    first = write_run_1(base / "one")
    shutil.copytree(first.root, base / "two")
    second = MedallionLake(base / "two", LocalLake(base / "two"), first.run_1_files)
    write_run_2(second)
    return first, second
