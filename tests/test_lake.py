"""The lake: local atomic writes, S3 over real HTTP (moto server), Parquet types, the reader."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config

from stock_pipeline.datasets import DATASETS
from stock_pipeline.errors import LakeError
from stock_pipeline.lake import (
    LakeWriteError,
    LocalLake,
    S3Lake,
    encode_partition,
    open_lake,
    partition_path,
    partition_slices,
    read_dataset,
    read_manifests,
    write_manifest,
)
from stock_pipeline.normalize import NormalizeContext, normalize_records

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

UTC = dt.UTC


def price_record(symbol: str, day: str, close: float) -> dict[str, object]:
    return {
        "symbol": symbol, "date": day, "open": close, "high": close + 1, "low": close - 1,
        "close": close, "volume": 1000, "change": 0.0, "changePercent": 0.0, "vwap": close,
    }  # fmt: skip


def prices_frame(run_id: str, at: dt.datetime, records: list[dict[str, object]]) -> pl.DataFrame:
    ctx = NormalizeContext(run_id=run_id, ingested_at=at)
    return normalize_records(DATASETS["prices"], records, ctx).rows


def land(lake: LocalLake | S3Lake, run_id: str, frame: pl.DataFrame) -> list[str]:
    dataset = DATASETS["prices"]
    paths = []
    ordered, slices = partition_slices(dataset, frame, dt.date(2025, 3, 15))
    for value, offset, length in slices:
        path = partition_path(dataset, value, run_id)
        lake.write_file(path, encode_partition(dataset, ordered.slice(offset, length)))
        paths.append(path)
    return paths


def test_local_write_is_atomic_and_immutable(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake")
    stored = lake.write_file("raw/prices/date=2025-03-14/r1.parquet", b"data")
    assert stored.bytes == 4
    assert (tmp_path / "lake/raw/prices/date=2025-03-14/r1.parquet").read_bytes() == b"data"
    # No temporary file is left beside it, and a second write to the same path is refused.
    assert [p.name for p in (tmp_path / "lake/raw/prices/date=2025-03-14").iterdir()] == [
        "r1.parquet"
    ]
    with pytest.raises(LakeWriteError, match="immutable"):
        lake.write_file("raw/prices/date=2025-03-14/r1.parquet", b"other")
    assert lake.read_file("raw/prices/date=2025-03-14/r1.parquet") == b"data"


def test_local_listing_hides_temporary_files(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path)
    lake.write_file("raw/prices/date=2025-03-14/r1.parquet", b"x")
    (tmp_path / "raw/prices/date=2025-03-14/.r2.parquet.abc.tmp").write_bytes(b"partial")
    assert lake.list_files("raw/") == ["raw/prices/date=2025-03-14/r1.parquet"]


def test_local_check_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(LakeError, match="cannot write"):
        LocalLake(tmp_path / "file" / "lake").check()


def test_parquet_files_are_spark_safe_and_hold_no_partition_column(tmp_path: Path) -> None:
    at = dt.datetime(2025, 3, 15, 1, 2, 3, 456789, tzinfo=UTC)
    frame = prices_frame(
        "r1", at, [price_record("MSFT", "2025-03-14", 10), price_record("AAPL", "2025-03-14", 20)]
    )
    lake = LocalLake(tmp_path)
    [path] = land(lake, "r1", frame)
    assert path == "raw/prices/date=2025-03-14/r1.parquet"
    parquet = pq.ParquetFile(tmp_path / path)
    schema = parquet.schema_arrow
    assert "date" not in schema.names
    assert schema.field("symbol").type == pa.string()
    assert schema.field("volume").type == pa.int64()
    assert schema.field("close").type == pa.float64()
    assert schema.field("_ingested_at").type == pa.timestamp("us", tz="UTC")
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    table = parquet.read()
    assert table.column("symbol").to_pylist() == ["AAPL", "MSFT"]  # sorted by symbol
    assert table.column("_ingested_at").to_pylist()[0] == at
    # A Hive-aware reader gets the partition back as a typed date.
    hive = pl.scan_parquet(
        str(tmp_path / "raw/prices/**/*.parquet"), hive_partitioning=True
    ).collect()
    assert hive.schema["date"] == pl.Date
    assert hive["date"].unique().to_list() == [dt.date(2025, 3, 14)]


def test_reader_keeps_the_newest_ingestion_per_key(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path)
    old = dt.datetime(2025, 3, 15, tzinfo=UTC)
    new = dt.datetime(2025, 3, 16, tzinfo=UTC)
    land(
        lake,
        "r1",
        prices_frame(
            "r1",
            old,
            [price_record("AAPL", "2025-03-13", 10), price_record("AAPL", "2025-03-14", 11)],
        ),
    )
    land(lake, "r2", prices_frame("r2", new, [price_record("AAPL", "2025-03-14", 12)]))
    latest = read_dataset(lake, DATASETS["prices"])
    assert latest.select("date", "close", "_run_id").rows() == [
        (dt.date(2025, 3, 13), 10.0, "r1"),
        (dt.date(2025, 3, 14), 12.0, "r2"),
    ]
    assert read_dataset(lake, DATASETS["prices"], latest=False).height == 3


def test_reader_on_an_empty_lake_has_the_table_schema(tmp_path: Path) -> None:
    frame = read_dataset(LocalLake(tmp_path), DATASETS["income_statement"])
    assert frame.is_empty()
    assert frame.schema["ingest_date"] == pl.Date
    assert frame.schema["_ingested_at"] == pl.Datetime("us", "UTC")


def test_manifests_round_trip(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path)
    write_manifest(lake, {"run_id": "20250101T000000Z-b", "status": "ok"})
    write_manifest(lake, {"run_id": "20250101T000000Z-a", "status": "partial"})
    assert [m["run_id"] for m in read_manifests(lake)] == [
        "20250101T000000Z-a",
        "20250101T000000Z-b",
    ]


def test_open_lake_chooses_by_uri(tmp_path: Path, s3_client: S3Client) -> None:
    assert isinstance(open_lake(str(tmp_path)), LocalLake)
    s3 = open_lake("s3://bucket-name/some/prefix/", s3_client=s3_client)
    assert isinstance(s3, S3Lake)
    assert s3.uri == "s3://bucket-name/some/prefix"
    with pytest.raises(LakeError, match="no bucket"):
        open_lake("s3:///prefix")
    with pytest.raises(LakeError, match="unsupported"):
        open_lake("gs://bucket/prefix")


def test_s3_write_encrypts_verifies_and_lists(s3_client: S3Client, bucket: str) -> None:
    lake = S3Lake(s3_client, bucket, "fmp")
    lake.check()
    frame = prices_frame(
        "r1", dt.datetime(2025, 3, 15, tzinfo=UTC), [price_record("AAPL", "2025-03-14", 10)]
    )
    [path] = land(lake, "r1", frame)
    head = s3_client.head_object(Bucket=bucket, Key=f"fmp/{path}")
    assert head["ServerSideEncryption"] == "AES256"
    assert lake.list_files("raw/") == [path]
    body = s3_client.get_object(Bucket=bucket, Key=f"fmp/{path}")["Body"].read()
    assert pq.read_table(io.BytesIO(body)).num_rows == 1
    assert read_dataset(lake, DATASETS["prices"])["close"].to_list() == [10.0]


def test_the_s3_access_check_never_writes_where_the_databricks_trigger_looks(
    s3_client: S3Client, bucket: str
) -> None:
    written: list[str] = []
    s3_client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: written.append(params["Key"])
    )
    S3Lake(s3_client, bucket, "fmp").check()
    [probe] = written
    assert probe.startswith("fmp/_probes/.write-probe-")
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)  # and it was deleted


def test_s3_write_with_a_kms_key(s3_client: S3Client, bucket: str) -> None:
    key_id = "arn:aws:kms:us-east-1:123456789012:key/test"
    lake = S3Lake(s3_client, bucket, kms_key_id=key_id)
    lake.write_file("raw/x.parquet", b"x")
    head = s3_client.head_object(Bucket=bucket, Key="raw/x.parquet")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_id


def test_s3_missing_bucket_is_a_clear_error(s3_client: S3Client) -> None:
    with pytest.raises(LakeError, match="bucket does not exist"):
        S3Lake(s3_client, "no-such-bucket-here").check()


def test_s3_unreachable_endpoint_is_a_clear_error() -> None:
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(LakeError, match="Could not connect"):
        S3Lake(client, "bucket-name").check()


def test_s3_write_to_a_deleted_bucket_raises_a_write_error(
    s3_client: S3Client, bucket: str
) -> None:
    lake = S3Lake(s3_client, bucket)
    s3_client.delete_bucket(Bucket=bucket)
    with pytest.raises(LakeWriteError, match="bucket does not exist"):
        lake.write_file("raw/x.parquet", b"x")


def test_manifest_is_json_with_the_run_id_as_name(s3_client: S3Client, bucket: str) -> None:
    lake = S3Lake(s3_client, bucket, "p")
    stored = write_manifest(lake, {"run_id": "r9", "when": dt.date(2025, 1, 2)})
    assert stored.path == "_runs/r9.json"
    assert json.loads(lake.read_file("_runs/r9.json")) == {"run_id": "r9", "when": "2025-01-02"}
