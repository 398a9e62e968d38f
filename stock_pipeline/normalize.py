"""Pure transforms: FMP records -> typed polars frames that match the registry, plus quarantine.

Nothing here does I/O. Every row either lands in `rows` (typed, deduplicated, checked) or in
`quarantine` with a `_reason` and the original record; only exact duplicates are dropped, and they are
counted.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import polars as pl

from stock_pipeline.datasets import (
    EXTRA_COLUMN,
    INGESTED_AT_COLUMN,
    QUARANTINE_COLUMNS,
    RAW_COLUMN,
    REASON_COLUMN,
    RUN_ID_COLUMN,
    Column,
    ColumnType,
    Dataset,
)

__all__ = [
    "NormalizeContext",
    "Normalized",
    "empty_frame",
    "normalize_frame",
    "normalize_records",
    "parse_array",
    "read_market_answer",
]

_NULL_STRINGS = frozenset({"", "null", "None", "NaN", "nan"})
_ROW = "__row"
_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
_BYTE_ORDER_MARK = b"\xef\xbb\xbf"
_SPACED_KEY = re.compile(rb'"\s+:')


@dataclass(frozen=True, slots=True, kw_only=True)
class NormalizeContext:
    """What the run knows about the rows it asked for."""

    run_id: str
    ingested_at: dt.datetime
    #: The requested date range; price rows outside it are quarantined. None: no range check.
    start: dt.date | None = None
    end: dt.date | None = None
    #: Exchange sessions in the range; price rows on other days are quarantined.
    sessions: frozenset[dt.date] | None = None


@dataclass(frozen=True, slots=True)
class Normalized:
    """The typed rows, the quarantined ones, and how many exact duplicates were removed."""

    rows: pl.DataFrame
    quarantine: pl.DataFrame
    duplicates_dropped: int


def empty_frame(columns: Sequence[Column]) -> pl.DataFrame:
    return pl.DataFrame(schema={c.name: c.type.polars for c in columns})


def _cleaned(text: pl.Expr, column: Column) -> pl.Expr:
    """Strings stripped, FMP's placeholders for "unknown" as null."""
    nulls = sorted(_NULL_STRINGS | set(column.null_values))
    stripped = text.str.strip_chars()
    return pl.when(stripped.is_in(nulls)).then(None).otherwise(stripped)


def _dated(text: pl.Expr, column: Column) -> pl.Expr:
    """Cleaned strings read as the column's DATE or TIMESTAMP (null where they cannot be)."""
    if column.type is ColumnType.DATE:
        return text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
    if column.type is ColumnType.TIMESTAMP:
        zone = "America/New_York" if column.new_york_time else "UTC"
        return (
            text.str.to_datetime(_TIMESTAMP_FORMAT, strict=False, time_unit="us")
            .dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
            .dt.convert_time_zone("UTC")
        )
    raise AssertionError(f"unhandled column type {column.type}")


def _text(column: Column, values: list[Any]) -> pl.Series:
    """Values as stripped strings, FMP's placeholders for "unknown" as null."""
    text = pl.Series([None if v is None else str(v) for v in values], dtype=pl.String)
    return pl.select(_cleaned(pl.lit(text), column)).to_series()


def _parse(column: Column, values: list[Any]) -> tuple[pl.Series, pl.Series | None]:
    """Values as the column's type, and which sent values could not be read (None: all could)."""
    name = column.name
    kind = column.type
    if kind in (ColumnType.FLOAT, ColumnType.INT):
        try:
            # Fast path: every value already a JSON number or null (the usual case).
            numbers = pl.Series(values, dtype=pl.Float64, strict=True)
            sent = numbers.is_not_null()
        except (TypeError, OverflowError, pl.exceptions.PolarsError):
            text = _text(column, values)
            numbers = text.cast(pl.Float64, strict=False)
            sent = text.is_not_null()
        # "inf" and 1e999 parse as infinity; no price, amount or volume is infinite.
        infinite = numbers.is_infinite().fill_null(False)
        if infinite.any():
            numbers = numbers.set(infinite, None)
        if kind is ColumnType.INT:
            numbers = numbers.round(0).cast(pl.Int64, strict=False)
        return numbers.rename(name), _unreadable(sent, numbers)
    if kind is ColumnType.BOOL:
        words = {"true": True, "false": False}
        bools = [
            v if v is None or isinstance(v, bool) else words.get(str(v).lower()) for v in values
        ]
        parsed = pl.Series(name, bools, dtype=pl.Boolean)
        return parsed, _unreadable(_text(column, values).is_not_null(), parsed)
    text = _text(column, values)
    if kind is ColumnType.STRING:
        return text.rename(name), None
    parsed = pl.select(_dated(pl.lit(text), column)).to_series().rename(name)
    return parsed, _unreadable(text.is_not_null(), parsed)


def _unreadable(sent: pl.Series, parsed: pl.Series) -> pl.Series | None:
    bad = sent & parsed.is_null()
    return bad if bad.any() else None


def _source_values(column: Column, records: Sequence[Mapping[str, Any]]) -> list[Any]:
    names = [n for n in (column.source, *column.aliases) if n]
    if len(names) == 1:
        only = names[0]
        return [r.get(only) for r in records]
    out: list[Any] = []
    for r in records:
        value = None
        for n in names:
            if r.get(n) is not None:
                value = r[n]
                break
        out.append(value)
    return out


def _extras(dataset: Dataset, records: Sequence[Mapping[str, Any]]) -> list[str | None]:
    known = {n for c in dataset.columns for n in (c.source, *c.aliases) if n}
    seen: set[str] = set()
    for r in records:
        seen.update(r.keys())
    if not seen - known:
        return [None] * len(records)
    out: list[str | None] = []
    for r in records:
        extra = {k: v for k, v in r.items() if k not in known}
        out.append(json.dumps(extra, sort_keys=True, default=str) if extra else None)
    return out


def _reasons(
    dataset: Dataset, frame: pl.DataFrame, unreadable: dict[str, pl.Series], ctx: NormalizeContext
) -> pl.Series:
    """Per row, every rule it breaks joined with "; " (empty when clean)."""
    rules: list[tuple[str, pl.Expr]] = [
        (f"unreadable {name}", pl.lit(mask)) for name, mask in unreadable.items()
    ]
    rules += [(f"missing {key}", pl.col(key).is_null()) for key in dataset.key]
    rules += [(check.reason, check.expression()) for check in dataset.checks]
    if dataset.kind == "prices":
        day = pl.col("date")
        if ctx.start is not None:
            rules.append(("date before requested range", day < ctx.start))
        if ctx.end is not None:
            rules.append(("date after requested range", day > ctx.end))
        if ctx.sessions is not None:
            rules.append(("not an exchange session", ~day.is_in(sorted(ctx.sessions))))
    if not rules:
        return pl.Series(REASON_COLUMN, [""] * frame.height, dtype=pl.String)
    flagged = [
        pl.when(violated.fill_null(False)).then(pl.lit(reason)).otherwise(None)
        for reason, violated in rules
    ]
    return frame.select(
        pl.concat_list(flagged).list.drop_nulls().list.join("; ").alias(REASON_COLUMN)
    ).to_series()


def _quarantine_frame(
    records: Sequence[Mapping[str, Any]],
    indices: list[int],
    reasons: list[str],
    ctx: NormalizeContext,
) -> pl.DataFrame:
    picked = [records[i] for i in indices]
    data = {
        "symbol": [None if r.get("symbol") is None else str(r.get("symbol")) for r in picked],
        "record_date": [None if r.get("date") is None else str(r.get("date")) for r in picked],
        REASON_COLUMN: reasons,
        RAW_COLUMN: [json.dumps(r, sort_keys=True, default=str) for r in picked],
        RUN_ID_COLUMN: [ctx.run_id] * len(picked),
        INGESTED_AT_COLUMN: [ctx.ingested_at] * len(picked),
    }
    return pl.DataFrame(data, schema={c.name: c.type.polars for c in QUARANTINE_COLUMNS})


def normalize_records(
    dataset: Dataset, records: Sequence[Mapping[str, Any]], ctx: NormalizeContext
) -> Normalized:
    """Type, check and deduplicate one dataset's records (any number of symbols)."""
    data_columns = dataset.columns
    out_schema: dict[str, Any] = {
        c.name: c.type.polars for c in (*data_columns, *_lineage(dataset))
    }
    if not records:
        return Normalized(
            pl.DataFrame(schema=out_schema), empty_frame(QUARANTINE_COLUMNS), duplicates_dropped=0
        )

    series: list[pl.Series] = []
    unreadable: dict[str, pl.Series] = {}
    for column in data_columns:
        parsed, bad = _parse(column, _source_values(column, records))
        series.append(parsed)
        if bad is not None:
            unreadable[column.name] = bad
    frame = pl.DataFrame(series).with_columns(
        pl.Series(EXTRA_COLUMN, _extras(dataset, records), dtype=pl.String),
        pl.int_range(pl.len(), dtype=pl.Int64).alias(_ROW),
    )
    reasons = _reasons(dataset, frame, unreadable, ctx)
    frame = frame.with_columns(reasons)
    bad_rows = frame.filter(pl.col(REASON_COLUMN) != "")
    clean = frame.filter(pl.col(REASON_COLUMN) == "").drop(REASON_COLUMN)

    # Exact repeats carry nothing new; they are counted, not kept.
    content = [c.name for c in data_columns] + [EXTRA_COLUMN]
    before = clean.height
    clean = clean.unique(subset=content, keep="first", maintain_order=True)
    duplicates_dropped = before - clean.height

    # Two different rows for one key: the preferred one lands, the other goes to quarantine.
    ordered = clean
    if dataset.prefer_newest:
        ordered = clean.sort(
            dataset.prefer_newest, descending=True, nulls_last=True, maintain_order=True
        )
    ranked = ordered.with_columns(pl.int_range(pl.len()).over(list(dataset.key)).alias("__rank"))
    superseded = ranked.filter(pl.col("__rank") > 0)
    clean = ranked.filter(pl.col("__rank") == 0).drop("__rank")

    q_index = bad_rows[_ROW].to_list() + superseded[_ROW].to_list()
    q_reasons = (
        bad_rows[REASON_COLUMN].to_list()
        + ["another row for the same key was preferred"] * superseded.height
    )
    quarantine = _quarantine_frame(records, q_index, q_reasons, ctx)

    sort_by = [k for k in ("symbol", "date", "period") if k in dataset.key]
    rows = (
        clean.drop(_ROW)
        .with_columns(
            pl.lit(ctx.run_id, dtype=pl.String).alias(RUN_ID_COLUMN),
            pl.lit(ctx.ingested_at).cast(pl.Datetime("us", "UTC")).alias(INGESTED_AT_COLUMN),
        )
        .select(list(out_schema))
        .sort(sort_by)
    )
    return Normalized(rows.cast(pl.Schema(out_schema)), quarantine, duplicates_dropped)


def _lineage(dataset: Dataset) -> tuple[Column, ...]:
    return tuple(c for c in dataset.file_columns if c.name.startswith("_"))


def parse_array(body: bytes, dataset: Dataset | None = None) -> pl.DataFrame | None:
    """A JSON array of records as a frame, one column per field (polars' reader, no Python
    object per value); None when the reader cannot take it (the records path judges it).

    With `dataset`, an answer whose every key is one of the registry's fields (and with no
    true or false, for a dataset without booleans) is read on the registry's types, which is
    twice as fast as letting polars infer them; anything else is inferred."""
    if body.strip() == b"[]":
        return pl.DataFrame()
    if dataset is not None and not _misread_booleans(dataset, body):
        try:
            frame = pl.read_json(io.BytesIO(body), schema=_wire_schema(dataset))
        except Exception:  # a value not of its field's type: inferred below, and judged
            frame = None
        keys = body.count(b'":')  # every key written `"name":`
        if frame is not None and (
            _every_key_read(body, keys, frame) or _every_key_known(dataset, body, keys)
        ):
            return frame
    try:
        return pl.read_json(io.BytesIO(body), infer_schema_length=None)
    except Exception:  # any shape polars will not read: the exact path decides
        return None


@cache
def _wire_schema(dataset: Dataset) -> dict[str, pl.DataType]:
    """The polars schema FMP's answers are read on: numbers as floats (integers may be sent
    as 1.0), everything else as text, and numbers FMP sends as strings as text too (a number
    sent instead reads as its text)."""
    wire: dict[ColumnType, pl.DataType] = {
        ColumnType.FLOAT: pl.Float64(),
        ColumnType.INT: pl.Float64(),
        ColumnType.BOOL: pl.Boolean(),
    }
    return {
        c.source: pl.String() if c.sent_as_text else wire.get(c.type, pl.String())
        for c in dataset.columns
        if c.source
    }


def _misread_booleans(dataset: Dataset, body: bytes) -> bool:
    """Whether `body` may hold a true or false that a schema without booleans reads as 1.0."""
    if any(c.type is ColumnType.BOOL for c in dataset.columns if c.source):
        return False
    return b"true" in body or b"false" in body


def _every_key_read(body: bytes, keys: int, frame: pl.DataFrame) -> bool:
    """Whether `frame`, read on a schema, holds every key of `body`: a check in a few scans of
    the bytes that suits FMP's usual answer (every field in every row, no escapes).

    Without a backslash, a quote never sits inside a string, so `":` ends a key, and when every
    colon follows a quote no key is written `"name" :`: the count of `":` is then the number of
    keys. Every cell filled means every row sent every schema field at least once; the counts
    being equal leaves room for no other key."""
    return (
        b"\\" not in body
        and body.count(b":") == keys == frame.height * frame.width
        and not any(frame.null_count().row(0))
    )


def _every_key_known(dataset: Dataset, body: bytes, keys: int) -> bool:
    """Whether every key of `body` is one of the registry's fields, counted over the whole body
    (with a schema, polars drops any other key silently): for answers with empty fields."""
    if _SPACED_KEY.search(body):
        return False  # a key written `"name" :` would escape the count
    known = sum(body.count(b'"%s":' % source.encode()) for source in _wire_schema(dataset))
    return keys == known


def read_market_answer(
    dataset: Dataset, body: bytes, symbols: Collection[str]
) -> pl.DataFrame | list[dict[str, Any]]:
    """A whole-market answer's rows for `symbols`, shaped like the per-symbol endpoint's answer:
    a frame, or records when polars cannot read the JSON. Raises ValueError for a body the
    endpoint does not send."""
    market = dataset.market
    assert market is not None, f"{dataset.name} has no whole-market endpoint"
    wanted = pl.DataFrame({"symbol": list(symbols)}, schema={"symbol": pl.String})
    if market.csv_header:
        rows = _read_csv(body, market.csv_header).join(wanted, on="symbol", how="semi")
        return _bulk_bars(dataset, rows)
    frame = parse_array(body)
    if frame is None:
        records = json.loads(body)
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError("not a JSON array of records")
        keep = set(symbols)
        return [r for r in records if r.get("symbol") in keep]
    if not frame.width:
        return frame
    if frame.schema.get("symbol") != pl.String:
        raise ValueError("its records have no symbol")
    return frame.join(wanted, on="symbol", how="semi")


def _read_csv(body: bytes, header: Sequence[str]) -> pl.DataFrame:
    """FMP's bulk CSV as text columns: the byte-order mark and a trailing comma's empty column
    dropped; every header field required."""
    try:
        frame = pl.read_csv(io.BytesIO(body.removeprefix(_BYTE_ORDER_MARK)), infer_schema=False)
    except pl.exceptions.PolarsError as error:
        raise ValueError(f"not CSV ({type(error).__name__})") from None
    frame = frame.select([name for name in frame.columns if name.strip()])
    missing = [name for name in header if name not in frame.columns]
    if missing:
        raise ValueError(f"a CSV header without {', '.join(missing)}")
    return frame


def _bulk_bars(dataset: Dataset, frame: pl.DataFrame) -> pl.DataFrame:
    """eod-bulk rows as the dataset's per-symbol endpoint sends them: its fields in its order,
    `adjClose` dropped, and the three fields bulk leaves out derived the way FMP defines them
    (change = close - open, rounded to cents; changePercent = change / open x 100, to 5 places;
    vwap = the mean of open, high, low and close, to 4 places)."""

    def number(name: str) -> pl.Expr:
        return pl.col(name).str.strip_chars().cast(pl.Float64, strict=False)

    open_, high, low, close = (number(name) for name in ("open", "high", "low", "close"))
    change = (close - open_).round(2)
    derived = {
        "change": change,
        "changePercent": (change / open_ * 100.0).round(5),
        "vwap": ((open_ + high + low + close) / 4.0).round(4),
    }
    sources = [c.source for c in dataset.columns if c.source]
    return frame.select(derived[f].alias(f) if f in derived else pl.col(f) for f in sources)


_PLAIN_TYPES: Mapping[ColumnType, tuple[type[pl.DataType], ...]] = {
    # FMP sends some numbers as text (`fiscalYear`, `fullTimeEmployees`): read as the exact
    # path reads them.
    ColumnType.FLOAT: (pl.Float64, pl.Int64, pl.String, pl.Null),
    ColumnType.INT: (pl.Int64, pl.Float64, pl.String, pl.Null),
    ColumnType.STRING: (pl.String, pl.Null),
    ColumnType.DATE: (pl.String, pl.Null),
    ColumnType.TIMESTAMP: (pl.String, pl.Null),
    ColumnType.BOOL: (pl.Boolean, pl.Null),
}


def normalize_frame(
    dataset: Dataset, frame: pl.DataFrame, ctx: NormalizeContext
) -> Normalized | None:
    """`normalize_records` for the common answer, column at a time: every field one the registry
    names (no legacy name, nothing extra), of its plain JSON type, and every row clean, unique
    and alone on its key. Anything else returns None, and `normalize_records` on the parsed
    records decides it, so both give the same rows for the same answer."""
    columns = {c.source: c for c in dataset.columns if c.source}
    if not set(frame.columns) <= set(columns):
        return None
    for name in frame.columns:
        if not isinstance(frame.schema[name], _PLAIN_TYPES[columns[name].type]):
            return None
    typed: list[pl.Expr] = []
    sent: dict[str, pl.Expr] = {}
    for column in dataset.columns:
        if column.source not in frame.columns or frame.schema[column.source] == pl.Null:
            typed.append(pl.lit(None, dtype=column.type.polars).alias(column.name))
            continue
        value = pl.col(column.source)
        kind = column.type
        if kind in (ColumnType.FLOAT, ColumnType.INT):
            if frame.schema[column.source] == pl.String:
                value = _cleaned(value, column)
            number = value.cast(pl.Float64, strict=False)
            # Unreadable or infinite: quarantined by the exact path.
            sent[column.name] = value.is_not_null() & (number.is_null() | number.is_infinite())
            if kind is ColumnType.INT:
                number = number.round(0).cast(pl.Int64, strict=False)
            typed.append(number.alias(column.name))
            continue
        if kind is ColumnType.BOOL:
            typed.append(value.alias(column.name))
            continue
        text = _cleaned(value, column)
        if kind is ColumnType.STRING:
            typed.append(text.alias(column.name))
            continue
        parsed = _dated(text, column)
        sent[column.name] = text.is_not_null() & parsed.is_null()  # unreadable: the slow path
        typed.append(parsed.alias(column.name))
    checked = frame.select(
        *typed,
        pl.any_horizontal(list(sent.values()) or [pl.lit(False)]).alias("__unplain"),
    )
    if checked.height and checked["__unplain"].any():
        return None
    rows = checked.drop("__unplain").with_columns(pl.lit(None, dtype=pl.String).alias(EXTRA_COLUMN))
    if (_reasons(dataset, rows, {}, ctx) != "").any():
        return None
    content = [c.name for c in dataset.columns]
    if (
        rows.select(content).is_duplicated().any()
        or rows.select(list(dataset.key)).is_duplicated().any()
    ):
        return None
    out_schema: dict[str, Any] = {
        c.name: c.type.polars for c in (*dataset.columns, *_lineage(dataset))
    }
    sort_by = [k for k in ("symbol", "date", "period") if k in dataset.key]
    rows = (
        rows.with_columns(
            pl.lit(ctx.run_id, dtype=pl.String).alias(RUN_ID_COLUMN),
            pl.lit(ctx.ingested_at).cast(pl.Datetime("us", "UTC")).alias(INGESTED_AT_COLUMN),
        )
        .select(list(out_schema))
        .sort(sort_by)
    )
    return Normalized(
        rows.cast(pl.Schema(out_schema)), empty_frame(QUARANTINE_COLUMNS), duplicates_dropped=0
    )
