"""Orchestration: fetch a plan's requests concurrently, normalize, land files, write the manifest.

The plan comes from plan.py. `run_ingest` takes a built FMP client and lake and returns a frozen `RunReport`;
it never reads the environment, prints or exits. Per-request failures are recorded, not raised; only a
refused key (FmpAuthError) stops the run early.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import polars as pl
import pyarrow as pa

from stock_pipeline.config import PRICE_ROW_CAP
from stock_pipeline.datasets import DATASETS, Dataset
from stock_pipeline.errors import (
    ExitCode,
    FmpAuthError,
    FmpError,
    FmpPlanError,
    FmpResponseError,
    FmpTransportError,
    FmpUnreachableError,
    LakeError,
)
from stock_pipeline.fmp import FILINGS_ENDPOINT, PROBE_SYMBOL, FmpClient
from stock_pipeline.lake import (
    Lake,
    StoredFile,
    encode_parquet,
    encode_quarantine,
    partition_column,
    partition_path,
    partition_slices,
    to_arrow,
    write_manifest,
)
from stock_pipeline.market_calendar import NEW_YORK
from stock_pipeline.normalize import (
    NormalizeContext,
    Normalized,
    normalize_frame,
    normalize_records,
    parse_array,
    read_market_answer,
)
from stock_pipeline.plan import MARKET, Filing, Plan, Request
from stock_pipeline.spill import Spill

__all__ = [
    "DatasetSummary",
    "Failure",
    "ProgressEvent",
    "RunReport",
    "read_filings",
    "run_ingest",
]

#: Normalize a dataset's answers in batches of about this many values (rows x columns). A batch is
#: spilled as a file per bucket of sessions, so small batches mean many small files (at 5,000
#: tickers, 10,000-row price batches wrote 40,000 of them and cost a third more CPU); counted in
#: values, not rows, so a statement's 47 columns wait in batches as small as a price's 10.
NORMALIZE_BATCH_VALUES = 1_000_000
MANIFEST_VERSION = 1
#: Requests between being sent and having their rows in a batch, per request slot of the client.
WORK_PER_REQUEST_SLOT = 1
#: This many requests in a row that cannot connect mean FMP (or the network) is down: stop.
UNREACHABLE_AFTER = 5
#: The filings listing's largest page, and how many pages a run reads at most.
FILINGS_PAGE = 1000
MAX_FILINGS_PAGES = 50
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Failure:
    """A request, a symbol or a file that did not make it, and why."""

    dataset: str
    symbol: str | None
    reason: str
    error: str
    status: int | None = None
    #: Whether the next catch-up run should fetch it again (False: the plan or FMP refuses it).
    retryable: bool = True
    #: For plan refusals: the rule that decided whether the symbol or the whole dataset failed.
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """One dataset's line of the summary table."""

    dataset: str
    symbols_ok: int
    symbols_failed: int
    symbols_without_data: tuple[str, ...]
    rows: int
    quarantined: int
    duplicates_dropped: int
    files: int
    bytes: int
    requests: int
    retries: int
    rate_limited: int
    seconds: float
    #: FMP's responses by HTTP status ("none": no answer).
    responses: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Sent after every finished request and every file written."""

    requests_done: int
    requests_total: int
    rows: int
    errors: int


@dataclass(frozen=True, slots=True)
class FileRecord:
    dataset: str
    kind: Literal["raw", "quarantine"]
    partition: str
    rows: int
    stored: StoredFile


@dataclass(frozen=True, slots=True, repr=False)
class RunReport:
    """What a run did: the manifest's content and the summary table's source."""

    run_id: str
    status: Literal["ok", "partial", "aborted"]
    exit_code: ExitCode
    started_at: dt.datetime
    finished_at: dt.datetime
    lake: str
    plan: Plan
    summaries: tuple[DatasetSummary, ...]
    files: tuple[FileRecord, ...]
    failures: tuple[Failure, ...]
    #: Per price dataset, per symbol: sessions in range with no row.
    gaps: Mapping[str, Mapping[str, tuple[dt.date, ...]]]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    #: Per dataset with a whole-market endpoint: the endpoint used, its requests and why.
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Per symbol whose company requests all landed: why, whether everything, newest acceptance.
    companies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The filings listing this run read (from, to, rows), when it read one.
    filings: Mapping[str, Any] | None = None
    manifest: StoredFile | None = None

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.summaries)

    def __repr__(self) -> str:
        # Short, and not only for logs: asyncio.run formats its main task's result twice when it
        # restores Ctrl-C's handler (CPython issue 112559), and the full dataclass repr of a
        # 5,000-ticker run (its plan, 1,260 files) took 10 s of the run's end.
        return (
            f"RunReport({self.run_id!r}, {self.status}, {self.rows} rows, "
            f"{len(self.files)} files, {len(self.failures)} failures)"
        )

    def to_manifest(self) -> dict[str, Any]:
        """The JSON manifest: every file, every failure, request counts, the run's parameters."""
        gaps = {
            name: {
                symbol: {"missing": len(days), "sessions": [d.isoformat() for d in days[:50]]}
                for symbol, days in by_symbol.items()
            }
            for name, by_symbol in self.gaps.items()
        }
        return {
            "manifest_version": MANIFEST_VERSION,
            "run_id": self.run_id,
            "status": self.status,
            "exit_code": int(self.exit_code),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "lake": self.lake,
            "range": {
                "start": self.plan.start.isoformat(),
                "end": self.plan.end.isoformat(),
                "sessions": len(self.plan.sessions),
            },
            "symbols": list(self.plan.symbols),
            "datasets": list(self.plan.datasets),
            "parameters": dict(self.parameters),
            "sources": {name: dict(source) for name, source in self.sources.items()},
            "filings": dict(self.filings) if self.filings is not None else None,
            "companies": {symbol: dict(c) for symbol, c in self.companies.items()},
            "summary": {
                s.dataset: {**asdict(s), "symbols_without_data": list(s.symbols_without_data)}
                for s in self.summaries
            },
            "files": [
                {
                    "path": f.stored.path,
                    "dataset": f.dataset,
                    "kind": f.kind,
                    "partition": f.partition,
                    "rows": f.rows,
                    "bytes": f.stored.bytes,
                    "sha256": f.stored.sha256,
                }
                for f in self.files
            ],
            "failures": [asdict(f) for f in self.failures],
            "gaps": gaps,
        }


@dataclass(frozen=True, slots=True)
class _Answer:
    """One answer's rows: parsed into columns by polars when it could, else as records."""

    symbol: str
    body: bytes
    frame: pl.DataFrame | None
    records: list[dict[str, Any]] | None

    @property
    def height(self) -> int:
        return self.frame.height if self.frame is not None else len(self.records or ())

    def as_records(self) -> list[dict[str, Any]]:
        """The answer as records (the exact path), the requested symbol where FMP left it out."""
        if self.records is not None:
            records = self.records
        elif self.body:
            records = json.loads(self.body)
        else:  # a whole-market answer: only its frame holds the plan's symbols
            assert self.frame is not None
            records = self.frame.to_dicts()
        for record in records:
            if record.get("symbol") in (None, ""):
                record["symbol"] = self.symbol
        return records

    def as_frame(self) -> pl.DataFrame | None:
        frame = self.frame
        if frame is None or not frame.width:
            return frame
        if "symbol" not in frame.columns:
            return frame.with_columns(pl.lit(self.symbol, dtype=pl.String).alias("symbol"))
        if frame.schema["symbol"] != pl.String:
            return None
        return frame.with_columns(
            pl.when(pl.col("symbol").is_null() | (pl.col("symbol") == ""))
            .then(pl.lit(self.symbol))
            .otherwise(pl.col("symbol"))
            .alias("symbol")
        )


@dataclass(frozen=True, slots=True)
class _Bucket:
    """A bucket's rows on the file schema, sorted by partition: each partition's file is a
    slice (value, offset, length); `present` holds its (symbol, date) pairs for the gaps."""

    table: pa.Table
    slices: list[tuple[dt.date, int, int]]
    present: pl.DataFrame


def _read_answer(symbol: str, body: bytes, dataset: Dataset) -> _Answer:
    """Parse an answer off the event loop: columns by polars, or records when it cannot."""
    frame = parse_array(body, dataset)
    records = None if frame is not None else json.loads(body)
    return _Answer(symbol, body, frame, records)


def _read_market(dataset: Dataset, body: bytes, symbols: frozenset[str]) -> _Answer:
    """A whole-market answer cut down to the plan's symbols (off the event loop)."""
    rows = read_market_answer(dataset, body, symbols)
    if isinstance(rows, pl.DataFrame):
        return _Answer(MARKET, b"", rows, None)
    return _Answer(MARKET, b"", None, rows)


def _shape(request: Request) -> tuple[tuple[str, str], ...]:
    """A request's parameters but the symbol: what its symbol's neighbours send alike."""
    return tuple((name, value) for name, value in request.params if name != "symbol")


@dataclass
class _DatasetState:
    dataset: Dataset
    started: float
    spill: Spill
    pending: list[_Answer] = field(default_factory=list)
    pending_rows: int = 0
    quarantined: list[pl.DataFrame] = field(default_factory=list)
    duplicates: int = 0
    ok_symbols: set[str] = field(default_factory=set)
    failed_symbols: set[str] = field(default_factory=set)
    symbols_with_rows: set[str] = field(default_factory=set)
    #: Plan refusals that cover more than their symbol: requests they cover are not sent.
    refusals: list[FmpPlanError] = field(default_factory=list)
    #: Per request shape, the one request that decides a refusal worded in a way no rule knows.
    probes: dict[tuple[tuple[str, str], ...], asyncio.Task[str]] = field(default_factory=dict)
    #: Shapes some symbol got an answer for: their endpoint and parameters are in the plan.
    answered_shapes: set[tuple[tuple[str, str], ...]] = field(default_factory=set)
    finished: float = 0.0
    #: A file of this dataset did not land: no symbol of it counts as fetched.
    write_failed: bool = False
    #: Symbols that failed for a reason that may pass (a refusal is the plan's, for good).
    retry_symbols: set[str] = field(default_factory=set)
    #: FMP's plan refused the whole-market endpoint: every symbol is fetched on its own.
    fell_back: bool = False
    tasks: dict[asyncio.Task[None], Request] = field(default_factory=dict)
    #: Tasks whose request was answered: a refusal never cancels them (their rows are landing).
    answered: set[asyncio.Task[None]] = field(default_factory=set)
    #: Batches being normalized and spilled.
    flushing: set[asyncio.Future[Normalized]] = field(default_factory=set)
    #: Sessions fetched one market file each land bucket by bucket while the rest is fetched
    #: (see `_Run._stream`): per bucket, its session requests still out; None: land at the end.
    sessions_left: dict[int, int] | None = None
    #: Per-symbol requests for what the market file leaves out, still out: no bucket lands before.
    top_ups_left: int = 0
    #: The symbols kept from market answers (those fetched per symbol instead are not).
    market_symbols: frozenset[str] | None = None
    landed: set[int] = field(default_factory=set)
    landings: list[asyncio.Task[None]] = field(default_factory=list)
    #: Per landed bucket of a price dataset: the (symbol, session) pairs in range with no row.
    missing: list[pl.DataFrame] = field(default_factory=list)

    def refusal_for(self, request: Request) -> FmpPlanError | None:
        """The refusal that already covers `request`, if any."""
        params = dict(request.params)
        return next((r for r in self.refusals if r.refuses(params)), None)

    def hold(self, request: Request) -> asyncio.Task[str] | None:
        """The probe a request of this shape must wait for before it is sent, if one is running."""
        probe = self.probes.get(_shape(request))
        return probe if probe is not None and not probe.done() else None

    def refuse(self, error: FmpPlanError) -> None:
        """FMP refused more than a symbol: stop the requests it covers that are still waiting."""
        self.refusals.append(error)
        current = asyncio.current_task()
        for task, request in self.tasks.items():
            if (
                task is not current
                and not task.done()
                and task not in self.answered
                and error.refuses(dict(request.params))
            ):
                task.cancel()


class _Run:
    """The mutable state of one run; `run_ingest` wraps it so callers only see the report."""

    def __init__(
        self,
        plan: Plan,
        client: FmpClient,
        lake: Lake,
        ingested_at: dt.datetime,
        progress: Callable[[ProgressEvent], None] | None,
        write_concurrency: int,
        max_price_rows: int,
        scratch: Path,
    ) -> None:
        self.plan = plan
        self.client = client
        self.lake = lake
        self.ingested_at = ingested_at
        self.progress = progress
        self.max_price_rows = max_price_rows
        self.write_concurrency = write_concurrency
        #: One dataset lands at a time: a bucket of a wide dataset (a statement's 47 columns in
        #: one file per run) is the largest thing a run holds, and several at once add up.
        self.landing = asyncio.Semaphore(1)
        self.work = asyncio.Semaphore(WORK_PER_REQUEST_SLOT * client.concurrency)
        self.context = NormalizeContext(
            run_id=plan.run_id,
            ingested_at=ingested_at,
            start=plan.start,
            end=plan.end,
            sessions=frozenset(plan.sessions),
        )
        now = time.monotonic()
        self.states = {
            name: _DatasetState(
                DATASETS[name],
                now,
                Spill(
                    scratch / name,
                    DATASETS[name],
                    start=plan.start,
                    end=plan.end,
                    symbols=len(plan.symbols),
                ),
            )
            for name in plan.datasets
        }
        self.symbols = frozenset(plan.symbols)
        #: How each dataset with a whole-market endpoint was fetched (see `Plan.sources`).
        self.sources: dict[str, dict[str, Any]] = {
            name: {"endpoint": source.endpoint, "requests": source.requests, "why": source.why}
            for name, source in plan.sources.items()
        }
        #: Per symbol and period ("annual", "quarter"), the newest SEC acceptance fetched.
        self.accepted: dict[str, dict[str, dt.datetime]] = {}
        self._accepted_lock = threading.Lock()
        self.failures: list[Failure] = []
        self.files: list[FileRecord] = []
        self.requests_total = len(plan.requests)
        self.requests_done = 0
        self.rows_fetched = 0
        self._transport_failures = 0

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(
                ProgressEvent(
                    self.requests_done, self.requests_total, self.rows_fetched, len(self.failures)
                )
            )

    def _fail(self, state: _DatasetState, symbol: str | None, error: BaseException) -> None:
        reason = type(error).__name__
        status = getattr(error, "status", None)
        # A 402 or another 4xx will be refused again tomorrow; everything else may pass.
        retryable = not isinstance(error, FmpPlanError) and not (
            type(error) is FmpError and status is not None and 400 <= status < 500
        )
        message = str(error) if isinstance(error, FmpError) else f"unexpected {reason}: {error}"
        rule = error.rule if isinstance(error, FmpPlanError) else None
        if symbol == MARKET:
            # A whole-market request stands for every symbol: catch-up reads None so.
            symbol, retryable = None, True
        self.failures.append(
            Failure(state.dataset.name, symbol, reason, message, status, retryable, rule)
        )
        if symbol is not None:
            state.failed_symbols.add(symbol)
            if retryable:
                state.retry_symbols.add(symbol)

    async def _fetch(self, request: Request, window: tuple[dt.date, ...]) -> list[_Answer]:
        """One request's answers; a price answer at FMP's cap is split in two and fetched again."""
        params = dict(request.params)
        if window:
            params["from"], params["to"] = str(window[0]), str(window[-1])
        state = self.states[request.dataset]
        dataset = state.dataset
        if request.market:
            return [await self._fetch_market(dataset, params)]
        body = await self.client.fetch_array(
            dataset.endpoint,
            params,
            dataset=dataset.name,
            symbol=request.symbol,
            gate=lambda: state.hold(request),
        )
        try:
            answer = await asyncio.to_thread(_read_answer, request.symbol, body, dataset)
        except json.JSONDecodeError:
            raise FmpResponseError(
                "FMP sent a body that is not JSON", dataset=dataset.name, symbol=request.symbol
            ) from None
        if window and answer.height >= self.max_price_rows:
            if len(window) < 2:
                raise FmpError(
                    f"FMP capped a one-session answer at {answer.height} rows",
                    dataset=dataset.name,
                    symbol=request.symbol,
                )
            half = len(window) // 2
            self.requests_total += 2
            try:
                # A task group, not gather: when one half fails, the other stops with it.
                async with asyncio.TaskGroup() as group:
                    halves = [
                        group.create_task(self._fetch(request, part))
                        for part in (window[:half], window[half:])
                    ]
            except BaseExceptionGroup as failed:
                raise _first_leaf(failed) from None
            finally:
                self.requests_done += 2
            return halves[0].result() + halves[1].result()
        return [answer]

    async def _fetch_market(self, dataset: Dataset, params: Mapping[str, str]) -> _Answer:
        market = dataset.market
        assert market is not None
        body = await self.client.fetch_array(
            market.endpoint, params, dataset=dataset.name, csv=bool(market.csv_header)
        )
        url = self.client.display_url(market.endpoint, params)
        symbols = self.states[dataset.name].market_symbols or self.symbols
        try:
            answer = await asyncio.to_thread(_read_market, dataset, body, symbols)
        except (ValueError, pl.exceptions.PolarsError) as error:
            raise FmpResponseError(
                f"FMP's {market.endpoint} answer is not what it sends: {error}",
                dataset=dataset.name,
                url=url,
            ) from None
        if market.span == "date" and not answer.height:
            # A session's file without one of our symbols: not published yet, or cut short.
            raise FmpResponseError(
                f"FMP's {market.endpoint} had no row for any of the {len(self.symbols):,} "
                f"symbols on {params.get('date')}; the next run fetches it again",
                dataset=dataset.name,
                url=url,
            )
        return answer

    async def _settle(
        self, state: _DatasetState, request: Request, error: FmpPlanError
    ) -> FmpPlanError:
        """Decide a refusal whose wording no rule knows: the symbol's, unless every request of its
        shape is refused, which one request for a symbol every plan serves tells for sure."""
        shape = _shape(request)
        if request.market:
            return error.settled("symbol", f"{state.dataset.name}'s whole-market endpoint refused")
        if shape in state.answered_shapes:
            return error.settled("symbol", "unknown wording; other symbols were answered")
        if request.symbol == PROBE_SYMBOL:
            return error.settled(
                "parameters",
                f"unknown wording; refused for {PROBE_SYMBOL}, which every plan serves",
                shape,
            )
        if shape not in state.probes:
            state.probes[shape] = asyncio.create_task(self._probe(state, request))
        # Shielded: a request cancelled while it waits must not cancel the probe the others await.
        # A refusal of the shape never returns here: the probe applies it, cancelling this task.
        rule = await asyncio.shield(state.probes[shape])
        return error.settled("symbol", rule)

    async def _probe(self, state: _DatasetState, request: Request) -> str:
        """Ask for `PROBE_SYMBOL` with the refused request's other parameters. Refused too (and
        no other symbol answered meanwhile): every request of that shape is refused. Otherwise
        return the rule that makes the refusal the symbol's."""
        dataset, shape = state.dataset, _shape(request)
        params = {**dict(request.params), "symbol": PROBE_SYMBOL}
        try:
            await self.client.fetch_records(
                dataset.endpoint, params, dataset=dataset.name, symbol=PROBE_SYMBOL, urgent=True
            )
        except FmpPlanError as refused:
            if refused.scope != "symbol" and shape not in state.answered_shapes:
                rule = f"unknown wording; probe: {PROBE_SYMBOL}, which every plan serves, was refused too"
                log.info("%s: %s is not in the plan (%s)", dataset.name, dict(shape), rule)
                state.refuse(refused.settled("parameters", rule, shape))
                return rule
            rule = f"unknown wording; probe on {PROBE_SYMBOL} inconclusive ({refused.rule})"
        except FmpAuthError:
            raise
        except FmpError as failed:
            rule = (
                f"unknown wording; probe on {PROBE_SYMBOL} inconclusive ({type(failed).__name__})"
            )
        else:
            rule = f"unknown wording; probe: {PROBE_SYMBOL} answered, so the endpoint is served"
        log.info("%s: a refusal is the symbol's (%s)", dataset.name, rule)
        return rule

    async def _fetch_or_refusal(self, state: _DatasetState, request: Request) -> list[_Answer]:
        """`_fetch`, with a plan refusal's scope decided before it is raised."""
        try:
            return await self._fetch(request, request.window)
        except FmpPlanError as error:
            if error.scope != "unknown":
                raise
            raise await self._settle(state, request, error) from None

    async def _run_request(self, request: Request) -> None:
        """Fetch one request and keep its rows (or its failure); raises only to abort the run."""
        await self._request(request)
        state = self.states[request.dataset]
        if state.sessions_left is not None:
            self._stream(state, request)

    async def _request(self, request: Request) -> None:
        state = self.states[request.dataset]
        ticket = False
        try:
            if refused := state.refusal_for(request):
                self._fail(state, request.symbol, refused)
                return
            # A ticket from before the request is sent until its rows are in a batch (and that
            # batch normalized, when this request filled it): answers never pile up faster than
            # they are normalized, whatever the number of requests.
            await self.work.acquire()
            ticket = True
            answers = await self._fetch_or_refusal(state, request)
            # Answered: from here on a refusal elsewhere must not cancel this task, whose rows
            # are on their way into a batch.
            state.answered.add(asyncio.current_task())  # type: ignore[arg-type]
            state.answered_shapes.add(_shape(request))
        except FmpAuthError:
            raise
        except asyncio.CancelledError:
            refused = state.refusal_for(request)
            if refused is None:
                raise
            self._fail(state, request.symbol, refused)  # cancelled by `refuse`
        except FmpPlanError as error:
            if request.market:
                # The endpoint, not the dataset: per-symbol requests of it still go out.
                self._fail(state, MARKET, error)
                return
            if error.scope in ("dataset", "parameters") and state.refusal_for(request) is None:
                state.refuse(error)
            self._fail(state, request.symbol, error)
        except FmpTransportError as error:
            self._fail(state, request.symbol, error)
            self._transport_failures += 1
            if self._transport_failures >= UNREACHABLE_AFTER:
                raise FmpUnreachableError(
                    f"FMP unreachable: {UNREACHABLE_AFTER} requests in a row failed to connect; "
                    f"last: {error}",
                    url=error.url,
                ) from None
        except FmpError as error:
            self._fail(state, request.symbol, error)
        except Exception as error:  # a bug or a body no rule foresaw: record it, keep the run
            log.exception("unexpected error on %s %s", request.dataset, request.symbol)
            self._fail(state, request.symbol, error)
        else:
            self._transport_failures = 0
            rows = sum(answer.height for answer in answers)
            state.pending.extend(answers)
            state.pending_rows += rows
            if request.market:
                state.ok_symbols.update(self.symbols)
                for answer in answers:
                    state.symbols_with_rows.update(_symbols_of(answer))
            else:
                state.ok_symbols.add(request.symbol)
                if rows:
                    state.symbols_with_rows.add(request.symbol)
            self.rows_fetched += rows
            if state.pending_rows * len(state.dataset.columns) >= NORMALIZE_BATCH_VALUES:
                await self._flush(state)
        finally:
            if ticket:
                self.work.release()
            self.requests_done += 1
            self._tick()

    async def _flush(self, state: _DatasetState) -> None:
        batch, state.pending, state.pending_rows = state.pending, [], 0
        if not batch:
            return

        def normalize_and_spill() -> Normalized:
            normalized = _normalize_answers(state.dataset, batch, self.context)
            state.spill.add(normalized.rows)
            if state.dataset.kind == "statement":
                self._note_accepted(normalized.rows)
            return normalized

        # Registered before any await: a row is always either pending or in a flushing batch.
        job = asyncio.ensure_future(asyncio.to_thread(normalize_and_spill))
        state.flushing.add(job)
        try:
            normalized = await job
        except Exception as error:  # nothing of this batch may land half-checked
            log.exception("could not normalize a batch of %s", state.dataset.name)
            for symbol in sorted({answer.symbol for answer in batch}):
                self._fail(state, symbol, error)  # MARKET's: every symbol's
            return
        finally:
            state.flushing.discard(job)
        if normalized.quarantine.height:
            state.quarantined.append(normalized.quarantine)
        state.duplicates += normalized.duplicates_dropped

    def _note_accepted(self, rows: pl.DataFrame) -> None:
        kind = pl.when(pl.col("period") == "FY").then(pl.lit("annual")).otherwise(pl.lit("quarter"))
        newest = (
            rows.group_by("symbol", kind.alias("kind"))
            .agg(pl.col("accepted_date").max())
            .drop_nulls()
        )
        with self._accepted_lock:  # batches normalize in several threads at once
            for symbol, period, accepted in newest.iter_rows():
                landed = self.accepted.setdefault(symbol, {})
                if accepted > landed.get(period, _EPOCH):
                    landed[period] = accepted

    def companies(self) -> dict[str, dict[str, Any]]:
        """The manifest's `companies`: every symbol whose per-symbol company requests all landed,
        why it was fetched, whether that was everything, and its newest statement acceptance."""
        landed: dict[str, dict[str, Any]] = {}
        for symbol, refresh in self.plan.companies.items():
            states = [self.states[name] for name in refresh.datasets]
            # As for the catch-up, a refusal by the plan counts as done: it will be refused again.
            if any(s.write_failed or symbol in s.retry_symbols for s in states):
                continue
            accepted = self.accepted.get(symbol, {})
            landed[symbol] = {
                "why": refresh.why,
                "full": refresh.full,
                "accepted": {period: when.isoformat() for period, when in sorted(accepted.items())},
            }
        return landed

    async def _write(
        self, dataset: str, kind: Literal["raw", "quarantine"], files: Sequence[tuple[dt.date, Any]]
    ) -> None:
        """Land files, each (partition value, data): `data` a polars frame (quarantine) or an
        Arrow table already on the dataset's file schema (raw).

        A few worker threads write a share of the files each, one after another: a trip to a
        thread and back per file costs as much as encoding a session's small file. Each thread
        holds one file's bytes at a time."""
        info = DATASETS[dataset]
        quarantine = kind == "quarantine"
        stop = threading.Event()

        def encode_and_store(value: dt.date, data: Any) -> StoredFile:
            path = partition_path(info, value, self.plan.run_id, quarantine=quarantine)
            if quarantine:
                body = encode_quarantine(data)
            else:
                # A file per partition value in the data (a session) holds each symbol once.
                body = encode_parquet(data, dictionary=not info.partition_in_data)
            return self.lake.write_file(path, body)

        def write_share(share: Sequence[tuple[dt.date, Any]]) -> list[StoredFile | Exception]:
            outcomes: list[StoredFile | Exception] = []
            for value, data in share:
                if stop.is_set():  # the run is aborting: what is written so far is recorded
                    break
                try:
                    outcomes.append(encode_and_store(value, data))
                except Exception as error:
                    outcomes.append(error)
            return outcomes

        count = min(self.write_concurrency, len(files))
        shares = [files[i::count] for i in range(count)]
        jobs = [asyncio.ensure_future(asyncio.to_thread(write_share, share)) for share in shares]
        try:
            await asyncio.wait(jobs)  # never cancels the jobs
        except asyncio.CancelledError:
            # The threads finish the file in hand, and the manifest lists every file they wrote.
            stop.set()
            await asyncio.wait(jobs)
            raise
        finally:
            for share, job in zip(shares, jobs, strict=True):
                if job.done():
                    for (value, data), outcome in zip(share, job.result(), strict=False):
                        self._record(dataset, kind, value, data, outcome)

    def _record(
        self,
        dataset: str,
        kind: Literal["raw", "quarantine"],
        value: dt.date,
        data: Any,
        outcome: StoredFile | Exception,
    ) -> None:
        """A finished write: its file in the report, or its failure."""
        quarantine = kind == "quarantine"
        if isinstance(outcome, LakeError):
            self.failures.append(Failure(dataset, None, "LakeWriteError", str(outcome)))
            self.states[dataset].write_failed = True
            return
        if isinstance(outcome, Exception):  # the file did not land; the run goes on and says so
            path = partition_path(DATASETS[dataset], value, self.plan.run_id, quarantine=quarantine)
            self.states[dataset].write_failed = True
            log.error("could not write %s", path, exc_info=outcome)
            message = f"unexpected {type(outcome).__name__} writing {path}: {outcome}"
            self.failures.append(Failure(dataset, None, type(outcome).__name__, message))
            return
        column = partition_column(DATASETS[dataset], quarantine=quarantine)
        rows = data.height if quarantine else data.num_rows
        self.files.append(FileRecord(dataset, kind, f"{column}={value}", rows, outcome))
        self._tick()

    async def _land(self, state: _DatasetState) -> dict[str, tuple[dt.date, ...]]:
        """Land the buckets not landed yet, one by one from the spill; returns the price gaps."""
        await self._flush(state)
        dataset, spill = state.dataset, state.spill
        sessions = self._sessions_by_bucket(state)
        spilled = set(spill.buckets())
        buckets = sorted((spilled | set(sessions)) - state.landed)

        def prepared(index: int) -> asyncio.Task[_Bucket] | None:
            if index >= len(buckets) or buckets[index] not in spilled:
                return None
            return asyncio.create_task(asyncio.to_thread(self._prepare, state, buckets[index]))

        # The next bucket is read and sorted while this one's files are written: two buckets
        # in memory at most, both cores busy.
        upcoming = prepared(0)
        try:
            for index, bucket in enumerate(buckets):
                current, upcoming = upcoming, prepared(index + 1)
                await self._land_bucket(state, current, sessions.get(bucket, []))
        finally:
            if upcoming is not None:
                upcoming.cancel()
        quarantine = pl.concat(state.quarantined) if state.quarantined else None
        if quarantine is not None and quarantine.height:
            await self._write(dataset.name, "quarantine", [(self.ingested_at.date(), quarantine)])
        state.finished = time.monotonic()
        return _gaps(state.missing) if dataset.kind == "prices" else {}

    def _sessions_by_bucket(self, state: _DatasetState) -> dict[int, list[dt.date]]:
        """A price dataset's sessions in range, per bucket (none for other datasets)."""
        sessions: dict[int, list[dt.date]] = defaultdict(list)
        if state.dataset.kind == "prices":
            for day in self.plan.sessions:
                sessions[state.spill.bucket_of(day)].append(day)
        return sessions

    def _prepare(self, state: _DatasetState, bucket: int) -> _Bucket:
        """A bucket's rows from the spill, deduplicated, sorted and cut per partition (blocking)."""
        dataset = state.dataset
        # Batches are deduplicated one by one; a key can only repeat across overlapping
        # answers, which fall in the same bucket (same partition value).
        rows = state.spill.read(bucket).unique(
            subset=list(dataset.key), keep="first", maintain_order=True
        )
        ordered, slices = partition_slices(dataset, rows, self.ingested_at.date())
        present = rows.select("symbol", "date") if dataset.kind == "prices" else rows.clear()
        # One conversion to the file schema per bucket; each file is a zero-copy slice.
        return _Bucket(to_arrow(ordered, dataset.arrow_schema()), slices, present)

    async def _land_bucket(
        self,
        state: _DatasetState,
        prepared: Awaitable[_Bucket] | None,
        sessions: list[dt.date],
    ) -> None:
        """Write a prepared bucket's files (None: nothing spilled in it) and note its gaps."""
        if prepared is not None:
            bucket = await prepared
            table = bucket.table
            files = [
                (value, table.slice(offset, length)) for value, offset, length in bucket.slices
            ]
            await self._write(state.dataset.name, "raw", files)
            del files, table
            present = bucket.present
            del bucket
        else:
            present = pl.DataFrame(schema={"symbol": pl.String, "date": pl.Date})
        if state.dataset.kind == "prices":
            ok = frozenset(state.ok_symbols)
            state.missing.append(await asyncio.to_thread(_missing, present, sessions, ok))

    def _streams(self, state: _DatasetState, requests: Sequence[Request]) -> bool:
        """Whether a dataset lands bucket by bucket as its sessions come: fetched one market file
        per session, and, where symbols the file leaves out are fetched per symbol, after the
        first file (sent alone) told which."""
        market, source = state.dataset.market, self.plan.sources.get(state.dataset.name)
        if (
            market is None
            or market.span != "date"
            or source is None
            or state.fell_back
            or not any(r.market for r in requests)
        ):
            return False
        return not source.fallback or bool(state.symbols_with_rows)

    def _start_stream(
        self, state: _DatasetState, requests: Sequence[Request], top_ups: Sequence[Request]
    ) -> None:
        left: dict[int, int] = defaultdict(int)
        for request in requests:
            if request.market:
                left[self._bucket_of(state, request)] += 1
        state.sessions_left = dict(left)
        state.top_ups_left = len(top_ups)
        state.market_symbols = self.symbols - {r.symbol for r in top_ups}

    @staticmethod
    def _bucket_of(state: _DatasetState, request: Request) -> int:
        return state.spill.bucket_of(dt.date.fromisoformat(dict(request.params)["date"]))

    def _stream(self, state: _DatasetState, request: Request) -> None:
        """A request of a streaming dataset is done: land every bucket now complete."""
        assert state.sessions_left is not None
        if request.market:
            state.sessions_left[self._bucket_of(state, request)] -= 1
        else:
            state.top_ups_left -= 1
        if state.top_ups_left:
            return  # their rows span every bucket
        for bucket, left in state.sessions_left.items():
            if not left and bucket not in state.landed:
                log.debug("%s: bucket %d has every session; landing it", state.dataset.name, bucket)
                state.landed.add(bucket)
                state.landings.append(asyncio.create_task(self._land_complete(state, bucket)))

    async def _land_complete(self, state: _DatasetState, bucket: int) -> None:
        """Land a bucket whose every session is in, while the others are still fetched."""
        earlier = set(state.flushing)
        await self._flush(state)  # the bucket's last rows may still wait in the batch
        if earlier:
            await asyncio.wait(earlier)
        sessions = self._sessions_by_bucket(state).get(bucket, [])
        async with self.landing:
            spilled = bucket in state.spill.buckets()
            prepared = asyncio.to_thread(self._prepare, state, bucket) if spilled else None
            await self._land_bucket(state, prepared, sessions)

    async def _market_or_fallback(
        self, state: _DatasetState, requests: list[Request]
    ) -> list[Request]:
        """The requests still to send. Where the plan may fall back from a whole-market endpoint,
        its first request goes alone: refused by FMP's plan, every market request of the dataset
        gives way to the per-symbol ones."""
        source = self.plan.sources.get(state.dataset.name)
        market = [r for r in requests if r.market]
        if source is None or not source.fallback or not market:
            return requests
        before = len(self.failures)
        await self._run_request(market[0])
        name = state.dataset.name
        # Other datasets run meanwhile: only this dataset's whole-market failure decides.
        refused = [
            f
            for f in self.failures[before:]
            if f.dataset == name and f.symbol is None and f.reason == FmpPlanError.__name__
        ]
        if not refused:
            return [r for r in requests if r is not market[0]]
        self.failures = [f for f in self.failures if all(f is not r for r in refused)]
        state.fell_back = True
        log.warning(
            "%s: FMP's plan refuses %s; fetching per symbol instead",
            state.dataset.name, source.endpoint,
        )  # fmt: skip
        # The refused request is done; the other market requests give way to the fallback.
        self.requests_total += len(source.fallback) - (len(market) - 1)
        self.sources[state.dataset.name] = {
            "endpoint": state.dataset.endpoint,
            "requests": len(source.fallback),
            "why": f"{source.endpoint} refused by FMP's plan ({refused[0].error})",
        }
        return [r for r in requests if not r.market] + list(source.fallback)

    def _top_up(self, state: _DatasetState) -> list[Request]:
        """Per-symbol requests for the symbols a whole-market price answer left out (indices,
        listings the bulk file does not carry), when the plan allows a fallback and some
        session's answer came: the newest session's, when the dataset lands as its sessions
        come (see `_streams`), else all of them."""
        name = state.dataset.name
        source = self.plan.sources.get(name)
        market = state.dataset.market
        if (
            source is None
            or not source.fallback
            or market is None
            or market.span != "date"
            or state.fell_back
            or not state.symbols_with_rows
        ):
            return []
        missing = self.symbols - state.symbols_with_rows
        if not missing:
            return []
        log.info(
            "%s: %d symbols not in %s; fetching them per symbol",
            name,
            len(missing),
            market.endpoint,
        )
        self.sources[name] = {
            **self.sources[name],
            "per_symbol": sorted(missing),
            "requests": self.sources[name]["requests"]
            + sum(1 for r in source.fallback if r.symbol in missing),
        }
        return [r for r in source.fallback if r.symbol in missing]

    async def run(self) -> tuple[list[DatasetSummary], dict[str, dict[str, tuple[dt.date, ...]]]]:
        by_dataset: dict[str, list[Request]] = defaultdict(list)
        for request in self.plan.requests:
            by_dataset[request.dataset].append(request)

        async def one_dataset(name: str) -> tuple[DatasetSummary, dict[str, tuple[dt.date, ...]]]:
            state = self.states[name]
            requests = await self._market_or_fallback(state, by_dataset[name])
            if self._streams(state, requests):
                top_ups = self._top_up(state)
                self.requests_total += len(top_ups)
                self._start_stream(state, requests, top_ups)
                requests = [*top_ups, *requests]
            async with asyncio.TaskGroup() as group:
                state.tasks = {group.create_task(self._run_request(r)): r for r in requests}
            if state.sessions_left is None and (topping := self._top_up(state)):
                self.requests_total += len(topping)
                async with asyncio.TaskGroup() as group:
                    state.tasks = {group.create_task(self._run_request(r)): r for r in topping}
            await asyncio.gather(*state.landings)
            async with self.landing:
                gaps = await self._land(state)
            stats = self.client.stats.get(name)
            files = [f for f in self.files if f.dataset == name]
            quarantined = sum(f.height for f in state.quarantined)
            duplicates = state.duplicates
            summary = DatasetSummary(
                dataset=name,
                symbols_ok=len(state.ok_symbols - state.failed_symbols),
                symbols_failed=len(state.failed_symbols),
                symbols_without_data=tuple(
                    sorted(state.ok_symbols - state.symbols_with_rows - state.failed_symbols)
                ),
                rows=sum(f.rows for f in files if f.kind == "raw"),
                quarantined=quarantined,
                duplicates_dropped=duplicates,
                files=len(files),
                bytes=sum(f.stored.bytes for f in files),
                requests=stats.requests if stats else 0,
                retries=stats.retries if stats else 0,
                rate_limited=stats.rate_limited if stats else 0,
                seconds=round(state.finished - state.started, 3),
                responses=dict(sorted(stats.responses.items())) if stats else {},
            )
            return summary, gaps

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one_dataset(name)) for name in self.plan.datasets]
        finally:
            # A probe whose waiters were all cancelled (the dataset failed for another reason, or
            # the run aborted) has nothing left to decide.
            for state in self.states.values():
                for probe in state.probes.values():
                    probe.cancel()
            # Buckets already landing when the run aborts finish, so every file written is in
            # the manifest.
            if landings := [t for state in self.states.values() for t in state.landings]:
                await asyncio.wait(landings)
        results = [t.result() for t in tasks]
        gaps = {name: g for name, (_, g) in zip(self.plan.datasets, results, strict=True) if g}
        return [s for s, _ in results], gaps


def _normalize_answers(
    dataset: Dataset, answers: Sequence[_Answer], ctx: NormalizeContext
) -> Normalized:
    """A batch of answers, column at a time when every answer is plain (see
    `normalize_frame`), else record by record: the same rows either way."""
    frames = [answer.as_frame() for answer in answers]
    if all(frame is not None for frame in frames):
        present = [f for f in frames if f is not None and f.width]
        try:
            combined = pl.concat(present, how="diagonal_relaxed") if present else None
        except pl.exceptions.PolarsError:
            combined = None
        if combined is not None:
            fast = normalize_frame(dataset, combined, ctx)
            if fast is not None:
                return fast
    records = [record for answer in answers for record in answer.as_records()]
    return normalize_records(dataset, records, ctx)


def _symbols_of(answer: _Answer) -> set[str]:
    if answer.frame is not None:
        return set(answer.frame["symbol"].to_list()) if answer.frame.height else set()
    return {str(record.get("symbol")) for record in answer.records or ()}


def _missing(
    present: pl.DataFrame, sessions: Sequence[dt.date], symbols: Iterable[str]
) -> pl.DataFrame:
    """(symbol, date) of every session in `sessions` without a row in `present`, per symbol
    that answered (listings start and stop)."""
    expected = pl.DataFrame({"symbol": sorted(symbols)}, schema={"symbol": pl.String}).join(
        pl.DataFrame({"date": sessions}, schema={"date": pl.Date}), how="cross"
    )
    return expected.join(present, on=["symbol", "date"], how="anti")


def _gaps(missing: Sequence[pl.DataFrame]) -> dict[str, tuple[dt.date, ...]]:
    """Sessions in range without a row, per symbol, from every bucket's missing pairs."""
    if not missing:
        return {}
    pairs = pl.concat(missing).sort("symbol", "date")
    return {
        str(symbol): tuple(days)
        for symbol, days in pairs.group_by("symbol", maintain_order=True).agg("date").iter_rows()
    }


async def read_filings(client: FmpClient, start: dt.date, end: dt.date) -> tuple[list[Filing], int]:
    """FMP's listing of financial filings accepted from `start` to `end`, page by page, and the
    number of rows it had (8-Ks and other forms included)."""
    filings: list[Filing] = []
    rows = 0
    for page in range(MAX_FILINGS_PAGES):
        params = {"from": str(start), "to": str(end), "page": str(page), "limit": str(FILINGS_PAGE)}
        records = await client.fetch_records(FILINGS_ENDPOINT, params, dataset="filings")
        rows += len(records)
        filings += filter(None, map(_filing, records))
        if len(records) < FILINGS_PAGE:
            return filings, rows
    raise FmpResponseError(
        f"FMP's filings listing from {start} to {end} goes on past {MAX_FILINGS_PAGES} pages of "
        f"{FILINGS_PAGE}",
        dataset="filings",
    )


def _filing(record: Mapping[str, Any]) -> Filing | None:
    """A listing row as a Filing; None for a row without a symbol, a form or a readable time."""
    symbol, form, accepted = (record.get(k) for k in ("symbol", "formType", "acceptedDate"))
    if not (isinstance(symbol, str) and symbol and isinstance(form, str) and accepted):
        return None
    try:
        when = dt.datetime.strptime(str(accepted)[:19].replace("T", " "), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        log.warning(
            "filings listing: %s %s has an unreadable acceptedDate %r", symbol, form, accepted
        )
        return None
    return Filing(symbol.upper(), form.strip(), when.replace(tzinfo=NEW_YORK).astimezone(dt.UTC))


_E = TypeVar("_E", bound=BaseException)


def _first_leaf(group: BaseExceptionGroup[_E]) -> _E:
    """The first error in a (nested) group from task groups."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def run_ingest(
    plan: Plan,
    *,
    client: FmpClient,
    lake: Lake,
    started_at: dt.datetime,
    parameters: Mapping[str, Any] | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    write_concurrency: int = 8,
    max_price_rows: int = PRICE_ROW_CAP,
    scratch: Path | None = None,
    filings: Mapping[str, Any] | None = None,
) -> RunReport:
    """Fetch, normalize and land every request of `plan`, then write the manifest last.

    A refused key (FmpAuthError) or an unreachable FMP (FmpUnreachableError) aborts the run: the
    manifest records the abort and the error propagates. No data file is written after it;
    sessions of a whole-market dataset that were already landing finish and are listed.

    Normalized rows wait for landing in `scratch` (a local folder; default: a temporary one),
    which is removed when the run ends. `filings`: the filings listing read before planning
    (see `read_filings`), recorded in the manifest.
    """
    with tempfile.TemporaryDirectory(prefix="stock-pipeline-", dir=scratch) as folder:
        run = _Run(
            plan,
            client,
            lake,
            started_at,
            progress,
            write_concurrency,
            max_price_rows,
            Path(folder),
        )
        params = dict(parameters or {})
        if filings is not None and "error" in filings:
            run.failures.append(
                Failure(
                    "filings",
                    None,
                    "FilingsListingError",
                    f"{filings['error']}; companies that filed since {filings['from']} wait for "
                    "the next run, which reads the listing again",
                )
            )

        def report(
            status: Literal["ok", "partial", "aborted"],
            exit_code: ExitCode,
            summaries: Sequence[DatasetSummary],
            gaps: Mapping[str, Any],
        ) -> RunReport:
            return RunReport(
                run_id=plan.run_id,
                status=status,
                exit_code=exit_code,
                started_at=started_at,
                finished_at=dt.datetime.now(dt.UTC),
                lake=lake.uri,
                plan=plan,
                summaries=tuple(summaries),
                files=tuple(sorted(run.files, key=lambda f: f.stored.path)),
                failures=tuple(run.failures),
                gaps=gaps,
                parameters=params,
                sources=run.sources,
                companies=run.companies() if status != "aborted" else {},
                filings=filings,
            )

        try:
            summaries, gaps = await run.run()
        except* (FmpAuthError, FmpUnreachableError) as group:
            error = _first_leaf(group)
            run.failures.append(
                Failure(
                    error.dataset or "",
                    error.symbol,
                    type(error).__name__,
                    str(error),
                    error.status,
                )
            )
            aborted = report("aborted", error.exit_code, [], {})
            await asyncio.to_thread(write_manifest, lake, aborted.to_manifest())
            raise error from None
        partial = bool(run.failures)
        final = report(
            "partial" if partial else "ok",
            ExitCode.PARTIAL if partial else ExitCode.OK,
            summaries,
            gaps,
        )
        stored = await asyncio.to_thread(write_manifest, lake, final.to_manifest())
        return RunReport(
            **{**{f: getattr(final, f) for f in final.__dataclass_fields__}, "manifest": stored}
        )
