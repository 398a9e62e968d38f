"""Normalized rows waiting to land, on local disk: what keeps a backfill's memory flat.

Price answers arrive symbol by symbol but land session by session (one file per session), so
every row waits until the last symbol is in. Rows wait here, not in memory: each normalized
batch is written as Arrow IPC files under a scratch folder, sorted into buckets of consecutive
partition values, and landing reads one bucket at a time. A bucket holds about
`BUCKET_ROWS` rows whatever the number of symbols, so memory is bounded by the bucket and the
batches in flight, not by the backfill.

Scratch is local (the lake may be S3) and private to the run; the caller removes it.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from stock_pipeline.datasets import Dataset

if TYPE_CHECKING:
    import polars as pl

__all__ = ["BUCKET_ROWS", "Spill"]

#: Rows of one bucket, the most a dataset holds in memory while it lands.
BUCKET_ROWS = 400_000
#: Buckets a range is cut into at least: a small backfill's first files are written while its
#: next bucket is read, not after one bucket of everything.
MIN_BUCKETS = 8
_BUCKET = "__bucket"


class Spill:
    """One dataset's normalized rows of one run, under `folder`.

    Datasets partitioned by a date in the data (prices) are bucketed by that date, `days` per
    bucket, counted from `start`; the others (one partition per run) have a single bucket.
    `add` may be called from several threads at once."""

    def __init__(
        self,
        folder: Path,
        dataset: Dataset,
        *,
        start: dt.date,
        symbols: int,
        end: dt.date | None = None,
    ) -> None:
        self.folder = folder
        self.dataset = dataset
        self.start = start
        # Sessions are about 252 of 365 days: a bucket of this many calendar days holds about
        # BUCKET_ROWS rows when every symbol has every session.
        per_symbol = max(1, BUCKET_ROWS // max(1, symbols))
        days = max(1, per_symbol * 365 // 252)
        if end is not None:
            days = min(days, max(1, -(-((end - start).days + 1) // MIN_BUCKETS)))
        self.days = days if dataset.partition_in_data else 0
        self.rows = 0
        self._batches = 0
        self._lock = threading.Lock()

    def bucket_of(self, day: dt.date) -> int:
        """The bucket a partition value falls in."""
        return (day - self.start).days // self.days if self.days else 0

    def add(self, frame: pl.DataFrame) -> None:
        """Keep a batch (blocking: call it in a worker thread)."""
        import polars as pl

        if not frame.height:
            return
        with self._lock:
            batch = self._batches
            self._batches += 1
            self.rows += frame.height
        if not self.days:
            self._write(0, batch, frame)
            return
        column = self.dataset.partition
        buckets = frame.with_columns(
            ((pl.col(column) - pl.lit(self.start)).dt.total_days() // self.days).alias(_BUCKET)
        )
        for (bucket,), part in buckets.partition_by(
            _BUCKET, as_dict=True, include_key=False, maintain_order=True
        ).items():
            self._write(int(bucket), batch, part)

    def _write(self, bucket: int, batch: int, frame: pl.DataFrame) -> None:
        target = self.folder / f"{bucket:06d}"
        target.mkdir(parents=True, exist_ok=True)
        frame.write_ipc(target / f"{batch:08d}.arrow", compression="lz4")

    def buckets(self) -> list[int]:
        """The buckets that hold rows, in partition order."""
        if not self.folder.exists():
            return []
        return sorted(int(p.name) for p in self.folder.iterdir() if p.is_dir())

    def read(self, bucket: int) -> pl.DataFrame:
        """A bucket's rows, in the order their batches were added (blocking)."""
        import polars as pl

        files = sorted((self.folder / f"{bucket:06d}").glob("*.arrow"))
        return pl.concat([pl.read_ipc(f) for f in files], rechunk=True)
