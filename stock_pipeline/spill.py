"""Normalized rows waiting to land, on local disk: what keeps a backfill's memory flat.

Price answers arrive symbol by symbol but land session by session (one file per session), so
every row waits until the last symbol is in. Rows wait here, not in memory: each normalized
batch is written as one Arrow IPC file under a scratch folder, its rows sorted into buckets of
consecutive partition values, one record batch per bucket; landing reads one bucket at a time,
reading from each file only that bucket's record batch. A bucket holds
about `BUCKET_ROWS` rows whatever the number of symbols, so memory is bounded by the bucket and
the batches in flight, not by the backfill; the number of files is the number of batches.

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
BUCKET_ROWS = 100_000
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
        #: Per bucket, where its rows are: (batch file number, record batch index), in order.
        self._index: dict[int, list[tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def bucket_of(self, day: dt.date) -> int:
        """The bucket a partition value falls in."""
        return (day - self.start).days // self.days if self.days else 0

    def add(self, frame: pl.DataFrame) -> None:
        """Keep a batch (blocking: call it in a worker thread)."""
        import polars as pl
        import pyarrow.ipc as ipc

        if not frame.height:
            return
        with self._lock:
            batch = self._batches
            self._batches += 1
            self.rows += frame.height
        if self.days:
            column = self.dataset.partition
            bucket = (pl.col(column) - pl.lit(self.start)).dt.total_days() // self.days
            parts = frame.with_columns(bucket.alias(_BUCKET)).partition_by(
                _BUCKET, as_dict=True, include_key=False, maintain_order=True
            )
            buckets = sorted((int(key), part) for (key,), part in parts.items())
        else:
            buckets = [(0, frame)]
        tables = [(key, part.to_arrow()) for key, part in buckets]
        self.folder.mkdir(parents=True, exist_ok=True)
        options = ipc.IpcWriteOptions(compression="lz4")
        written: list[tuple[int, int]] = []  # (bucket, record batch index)
        with ipc.new_file(str(self._path(batch)), tables[0][1].schema, options=options) as writer:
            for key, table in tables:
                # Record batches of one bucket each, so a bucket is read without the others.
                for record_batch in table.combine_chunks().to_batches():
                    writer.write_batch(record_batch)
                    written.append((key, len(written)))
        with self._lock:
            for key, index in written:
                self._index.setdefault(key, []).append((batch, index))

    def _path(self, batch: int) -> Path:
        return self.folder / f"{batch:08d}.arrow"

    def buckets(self) -> list[int]:
        """The buckets that hold rows, in partition order."""
        with self._lock:
            return sorted(self._index)

    def read(self, bucket: int) -> pl.DataFrame:
        """A bucket's rows, in the order their batches were added (blocking)."""
        import polars as pl
        import pyarrow as pa
        import pyarrow.ipc as ipc

        with self._lock:
            where = sorted(self._index.get(bucket, ()))
        parts = []
        for batch, index in where:
            # Read, not memory-mapped: the batch owns its buffers once the file is closed.
            with pa.OSFile(str(self._path(batch))) as source:
                parts.append(ipc.open_file(source).get_batch(index))
        frame = pl.from_arrow(pa.Table.from_batches(parts))
        assert isinstance(frame, pl.DataFrame)
        return frame.rechunk()
