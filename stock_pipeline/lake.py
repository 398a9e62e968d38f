"""Where files go: a local folder or an S3 prefix behind one small interface, plus manifests.

Layout (the partition value lives in the path only, as Spark and Hive write it):

    raw/<dataset>/date=YYYY-MM-DD/<run_id>.parquet          prices, adjusted_prices
    raw/<dataset>/ingest_date=YYYY-MM-DD/<run_id>.parquet   statements, profile
    quarantine/<dataset>/ingest_date=YYYY-MM-DD/<run_id>.parquet
    _runs/<run_id>.json                                     the manifest, written last
    _probes/                                                S3's access check, deleted after

Files are immutable: a rerun writes new files under its own run id. Local writes go to a hidden
temporary file first and are renamed into place; S3 uploads carry a SHA-256 checksum the server
verifies, then are checked with a HEAD request.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stock_pipeline.datasets import (
    INGESTED_AT_COLUMN,
    QUARANTINE_COLUMNS,
    Dataset,
)
from stock_pipeline.errors import LakeError, LakeWriteError

# polars and pyarrow load with the first file encoded or read, boto3 with the first S3 lake: listing
# manifests for a dry run or a catch-up needs none of them.
if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa
    from mypy_boto3_s3 import S3Client

__all__ = [
    "DEFAULT_SSE",
    "Lake",
    "LakeWriteError",
    "LocalLake",
    "S3Lake",
    "StoredFile",
    "dataset_files",
    "encode_parquet",
    "encode_partition",
    "encode_quarantine",
    "manifest_path",
    "open_lake",
    "partition_column",
    "partition_path",
    "read_dataset",
    "read_manifests",
    "read_partition_file",
    "write_manifest",
]

DEFAULT_SSE = "AES256"
RAW = "raw"
QUARANTINE = "quarantine"
RUNS = "_runs"
#: Where the access check writes its probe: outside `_runs/`, whose new files start the
#: Databricks job (a file arrival trigger), and outside every folder Bronze reads.
PROBES = "_probes"


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file as it landed: lake-relative path, size and checksum."""

    path: str
    bytes: int
    sha256: str


class Lake(Protocol):
    """What the pipeline needs from storage. Methods block: call them off the event loop."""

    uri: str

    def check(self) -> None:
        """Raise LakeError unless the lake can be reached and listed (writes nothing)."""

    def write_file(self, path: str, data: bytes) -> StoredFile: ...

    def read_file(self, path: str) -> bytes: ...

    def list_files(self, prefix: str) -> list[str]:
        """Lake-relative paths under `prefix`, sorted; hidden and temporary files excluded."""
        ...


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _visible(path: str) -> bool:
    return not any(part.startswith((".", "_")) and part != RUNS for part in path.split("/"))


class LocalLake:
    """A lake in a local folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def check(self) -> None:
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise LakeError(
                f"cannot write to the lake folder {self.root} ({probe} is not writable)"
            )

    def write_file(self, path: str, data: bytes) -> StoredFile:
        target = self.root / path
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            # A hard link never replaces an existing file, unlike a rename: files are immutable.
            os.link(temp, target)
        except FileExistsError:
            raise LakeWriteError(
                f"refusing to overwrite {target}: lake files are immutable"
            ) from None
        except OSError as error:
            raise LakeWriteError(f"could not write {target}: {error.strerror or error}") from None
        finally:
            temp.unlink(missing_ok=True)
        return StoredFile(path, len(data), _sha256(data))

    def read_file(self, path: str) -> bytes:
        try:
            return (self.root / path).read_bytes()
        except OSError as error:
            raise LakeError(f"could not read {self.root / path}: {error.strerror}") from None

    def modified_at(self, path: str) -> dt.datetime:
        """When a file landed (its modification time), for lineage."""
        return dt.datetime.fromtimestamp((self.root / path).stat().st_mtime, dt.UTC)

    def list_files(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        found = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(p for p in found if _visible(p))


_S3_HINTS = {
    "PreconditionFailed": "an object with this name exists already; lake files are immutable",
    "404": "the bucket does not exist",
    "NoSuchBucket": "the bucket does not exist",
    "403": "access denied; check the AWS credentials and the bucket policy",
    "AccessDenied": "access denied; check the AWS credentials and the bucket policy",
    "InvalidAccessKeyId": "the AWS access key is not valid",
    "SignatureDoesNotMatch": "the AWS secret key does not match the access key",
}


class S3Lake:
    """A lake under an S3 prefix, through a boto3 client the caller builds."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        sse: str = DEFAULT_SSE,
        kms_key_id: str | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _translate(self, error: Exception, action: str) -> LakeError:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(error, ClientError):
            info = error.response.get("Error", {})
            code = str(info.get("Code", "?"))
            detail = _S3_HINTS.get(code) or f"{code}: {info.get('Message', '')}".strip()
        elif isinstance(error, NoCredentialsError):
            detail = (
                "no AWS credentials found "
                "(set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        else:
            detail = f"{type(error).__name__}: {error}"
        return LakeError(f"S3 {action} failed on {self.uri}: {detail}", uri=self.uri)

    def check(self) -> None:
        """Reach the bucket, list it, and write (then delete) a hidden probe object with the run's
        encryption settings, so missing write or KMS permissions stop the run before any request."""
        from botocore.exceptions import BotoCoreError, ClientError

        probe = self._key(f"{PROBES}/.write-probe-{uuid.uuid4().hex}")
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(RUNS), MaxKeys=1)
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"", **self._encryption())
        except (BotoCoreError, ClientError) as error:
            raise self._translate(error, "access check") from None
        with contextlib.suppress(BotoCoreError, ClientError):
            # Without delete permission the empty probe stays; readers skip hidden files.
            self.client.delete_object(Bucket=self.bucket, Key=probe)

    def _encryption(self) -> dict[str, Any]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": self.sse}

    def write_file(self, path: str, data: bytes) -> StoredFile:
        from botocore.exceptions import BotoCoreError, ClientError

        digest = hashlib.sha256(data)
        key = self._key(path)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
                IfNoneMatch="*",  # lake files are immutable: never replace one
                **self._encryption(),
            )
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as error:
            failed = self._translate(error, f"upload of {path}")
            raise LakeWriteError(str(failed), uri=self.uri) from None
        if head["ContentLength"] != len(data):
            raise LakeWriteError(
                f"S3 upload of {path} did not verify: {head['ContentLength']} bytes stored, "
                f"{len(data)} sent",
                uri=self.uri,
            )
        return StoredFile(path, len(data), digest.hexdigest())

    def read_file(self, path: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(path))[
                "Body"
            ].read()
            return body
        except (BotoCoreError, ClientError) as error:
            raise self._translate(error, f"read of {path}") from None

    def list_files(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        out: list[str] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (BotoCoreError, ClientError) as error:
            raise self._translate(error, "listing") from None
        return sorted(p for p in out if _visible(p))


def make_s3_client() -> S3Client:
    """A boto3 S3 client from the standard AWS settings (AWS_ENDPOINT_URL included)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10)
    try:
        return boto3.client("s3", config=config)
    except ValueError as error:  # e.g. AWS_ENDPOINT_URL is not a URL
        raise LakeError(f"cannot set up the S3 client: {error}") from None


def open_lake(
    uri: str,
    *,
    s3_client: S3Client | None = None,
    sse: str = DEFAULT_SSE,
    kms_key_id: str | None = None,
) -> Lake:
    """The lake at `uri`: `s3://bucket/prefix` or a local path."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise LakeError(f"no bucket in lake URI {uri!r}; expected s3://bucket/prefix")
        return S3Lake(s3_client or make_s3_client(), bucket, prefix, sse=sse, kms_key_id=kms_key_id)
    if "://" in uri:
        raise LakeError(f"unsupported lake URI {uri!r}; use a local path or s3://bucket/prefix")
    return LocalLake(uri)


def partition_column(dataset: Dataset, *, quarantine: bool = False) -> str:
    """The column in a file's path: the dataset's partition, or the run's date for quarantine."""
    return "ingest_date" if quarantine else dataset.partition


def _area(quarantine: bool) -> str:
    return QUARANTINE if quarantine else RAW


def partition_path(
    dataset: Dataset, value: dt.date, run_id: str, *, quarantine: bool = False
) -> str:
    """The lake-relative path of one partition's file for one run."""
    column = partition_column(dataset, quarantine=quarantine)
    return f"{_area(quarantine)}/{dataset.name}/{column}={value.isoformat()}/{run_id}.parquet"


def manifest_path(run_id: str) -> str:
    return f"{RUNS}/{run_id}.json"


def encode_parquet(table: pa.Table, *, dictionary: bool = True) -> bytes:
    """A zstd-compressed Parquet file with statistics, as Spark reads it natively.

    `dictionary=False` for files that hold each symbol once (a session's prices): there,
    dictionary pages only add bytes and time (20% of each at 500 to 5,000 rows)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(
        table, buffer, compression="zstd", coerce_timestamps="us", use_dictionary=dictionary
    )
    return buffer.getvalue()


def to_arrow(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """`frame` as an Arrow table with exactly `schema` (string, not large_string or views)."""
    return frame.select(schema.names).to_arrow().cast(schema)


def partition_slices(
    dataset: Dataset, frame: pl.DataFrame, ingest_date: dt.date
) -> tuple[pl.DataFrame, list[tuple[dt.date, int, int]]]:
    """`frame` sorted by partition then symbol, and each partition's (value, offset, length)."""
    if not dataset.partition_in_data:
        return frame.sort("symbol"), ([(ingest_date, 0, frame.height)] if frame.height else [])
    ordered = frame.sort([dataset.partition, "symbol"])
    slices, offset = [], 0
    for length, value in ordered[dataset.partition].rle().struct.unnest().iter_rows():
        slices.append((value, offset, length))
        offset += length
    return ordered, slices


def encode_partition(dataset: Dataset, frame: pl.DataFrame) -> bytes:
    """One partition's rows as a Parquet file with the dataset's file schema."""
    return encode_parquet(to_arrow(frame, dataset.arrow_schema()))


@cache
def _quarantine_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([pa.field(c.name, c.type.arrow) for c in QUARANTINE_COLUMNS])


def encode_quarantine(frame: pl.DataFrame) -> bytes:
    return encode_parquet(to_arrow(frame, _quarantine_schema()))


def write_manifest(lake: Lake, manifest: dict[str, Any]) -> StoredFile:
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    return lake.write_file(manifest_path(str(manifest["run_id"])), data)


def read_manifests(lake: Lake) -> list[dict[str, Any]]:
    """Every run manifest in the lake, oldest first (run ids sort by start time)."""
    manifests = []
    for path in lake.list_files(RUNS):
        if path.endswith(".json"):
            try:
                manifests.append(json.loads(lake.read_file(path)))
            except json.JSONDecodeError:
                continue  # a manifest is written whole or not at all; skip foreign files
    return manifests


def dataset_files(lake: Lake, dataset: Dataset, *, quarantine: bool = False) -> list[str]:
    """The lake-relative paths of a dataset's Parquet files, oldest partition first."""
    return [
        path
        for path in lake.list_files(f"{_area(quarantine)}/{dataset.name}/")
        if path.endswith(".parquet")
    ]


def read_partition_file(
    lake: Lake, dataset: Dataset, path: str, *, quarantine: bool = False
) -> pl.DataFrame:
    """One lake file with its partition column typed from the path, as Hive-aware readers see it."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = partition_column(dataset, quarantine=quarantine)
    value = next(p.split("=", 1)[1] for p in path.split("/") if p.startswith(f"{column}="))
    try:
        frame = pl.from_arrow(pq.read_table(io.BytesIO(lake.read_file(path))))
    except pa.ArrowException as error:
        raise LakeError(f"{path} in {lake.uri} is not a readable Parquet file: {error}") from None
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.lit(dt.date.fromisoformat(value)).alias(column))


def read_dataset(
    lake: Lake, dataset: Dataset, *, quarantine: bool = False, latest: bool = True
) -> pl.DataFrame:
    """A dataset as readers should see it: every file, the partition column typed from the path,
    and (with `latest`) one row per key, the newest `_ingested_at` winning."""
    import polars as pl

    column = partition_column(dataset, quarantine=quarantine)
    frames = [
        read_partition_file(lake, dataset, path, quarantine=quarantine)
        for path in dataset_files(lake, dataset, quarantine=quarantine)
    ]
    if quarantine:
        schema = {c.name: c.type.polars for c in QUARANTINE_COLUMNS}
        schema[column] = pl.Date()
    else:
        schema = {c.name: c.type.polars for c in dataset.table_columns}
    if not frames:
        return pl.DataFrame(schema=schema)
    combined = pl.concat(frames, how="diagonal_relaxed")
    if quarantine or not latest:
        return combined
    return (
        combined.sort(INGESTED_AT_COLUMN, descending=True, maintain_order=True)
        .unique(subset=list(dataset.key), keep="first", maintain_order=True)
        .sort([k for k in dataset.key])
    )
