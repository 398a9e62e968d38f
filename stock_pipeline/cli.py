"""The command line: the only code that reads argv and the environment, prints, or picks an exit code."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stock_pipeline import __version__
from stock_pipeline.config import (
    DEFAULT_BASE_URL,
    DEFAULT_LAKE,
    DEFAULT_RATE_LIMIT,
    DEFAULT_TICKERS_PATH,
    Settings,
    bundled_tickers,
    parse_datasets,
    parse_shard,
    read_tickers,
)
from stock_pipeline.datasets import DATASETS, DEFAULT_DATASETS
from stock_pipeline.errors import (
    ConfigError,
    ExitCode,
    FmpAuthError,
    LakeError,
    StockPipelineError,
)
from stock_pipeline.lake import Lake, manifest_path, open_lake, read_manifests
from stock_pipeline.market_calendar import (
    EARLIEST_SESSION,
    NEW_YORK,
    last_completed_session,
    use_cache_dir,
)
from stock_pipeline.plan import (
    NIGHT_MINUTES,
    Filing,
    Plan,
    company_datasets,
    company_records,
    every_company,
    filings_window,
    last_landed_session,
    new_run_id,
    plan_run,
    resolve_range,
    schedule_companies,
    shard_symbols,
)
from stock_pipeline.redaction import redact

# `--help` and `--dry-run` answer without loading the HTTP client, the data frames or the local
# lakehouse; the commands that need them import them when they run.
if TYPE_CHECKING:
    from stock_pipeline.lakehouse import LakehouseReport
    from stock_pipeline.pipeline import ProgressEvent, RunReport

__all__ = ["app", "ingest_main", "main"]

log = logging.getLogger("stock_pipeline")
# Off a terminal (cron logs, CI) rich would wrap the summary at 80 columns; give it room.
out = Console(width=None if sys.stdout.isatty() else 160)
# Errors are not wrapped: a path or a URL in a message stays whole in logs and job summaries.
err = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="stock-pipeline",
    help="Land FMP prices, financial statements and profiles in a day-partitioned Parquet lake.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)

DEMO_KEY = "demo"


def _parse_date(option: str, value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not a date in YYYY-MM-DD form") from None


def _fail(error: StockPipelineError | str, code: ExitCode, secret: str | None) -> typer.Exit:
    # Escaped: a message may hold brackets (`stock-pipeline[lakehouse]`) that rich reads as markup.
    err.print(f"[bold red]error:[/] {escape(redact(str(error), secret))}", highlight=False)
    return typer.Exit(int(code))


def _check_dates(start: dt.date | None, end: dt.date, completed: dt.date) -> None:
    if end > completed:
        raise ConfigError(
            f"--end {end} is after the last completed NYSE session ({completed}); FMP has no "
            "final bars for it yet"
        )
    for name, day in (("--start", start), ("--end", end)):
        if day is not None and day < EARLIEST_SESSION:
            raise ConfigError(
                f"{name} {day} is before {EARLIEST_SESSION}, the calendar's first day"
            )
    if start is not None and start > end:
        raise ConfigError(f"the range starts on {start}, after its end {end}")


def _companies_line(plan: Plan) -> str:
    """How many companies get per-symbol requests, by reason."""
    if not plan.companies:
        return ""
    reasons = Counter(refresh.reason for refresh in plan.companies.values())
    parts = ", ".join(f"{count:,} {kind}" for kind, count in sorted(reasons.items()))
    return f"companies fetched per symbol: {len(plan.companies):,} ({parts})\n"


def _print_plan(
    plan: Plan, settings: Settings, filings: tuple[dt.date, dt.date] | None = None
) -> None:
    table = Table(title=f"Plan for run {plan.run_id}", show_lines=False)
    table.add_column("dataset")
    table.add_column("requests", justify="right")
    for name, count in plan.requests_by_dataset().items():
        table.add_row(name, f"{count:,}")
    table.add_row("[bold]total", f"[bold]{len(plan.requests):,}")
    out.print(table)
    out.print(
        f"sessions: {len(plan.sessions)} ({plan.start} to {plan.end})\n"
        f"symbols: {len(plan.symbols)} ({', '.join(plan.symbols[:8])}"
        f"{', ...' if len(plan.symbols) > 8 else ''})\n"
        f"statements period: {plan.period}\n"
        + "".join(
            f"{name}: {source.requests:,} request(s) to {source.endpoint} ({source.why})\n"
            for name, source in plan.sources.items()
        )
        + _companies_line(plan)
        + (
            f"filings: the run first reads FMP's filings listing for {filings[0]} to "
            f"{filings[1]} (a request per 1,000 filings); each company with a 10-Q newer than "
            "its statements in the lake adds 3 requests, with a 10-K 6\n"
            if filings
            else ""
        )
        + (
            f"shard: {settings.shard[0]} of {settings.shard[1]} "
            f"({settings.pace} of {settings.rate_limit} requests/minute)\n"
            if settings.shard
            else ""
        )
        + f"estimated time at {settings.pace} requests/minute: "
        f"{plan.estimated_minutes(settings.pace):.1f} minutes\n"
        f"lake: {settings.lake}",
        highlight=False,
    )


def _human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _print_summary(report: RunReport) -> None:
    table = Table(title=f"Run {report.run_id}: {report.status}")
    for heading in ("dataset", "symbols ok", "failed", "rows", "quarantined", "files", "size",
                    "requests", "retries", "rate-limited", "seconds"):  # fmt: skip
        table.add_column(heading, justify="left" if heading == "dataset" else "right")
    for s in report.summaries:
        table.add_row(
            s.dataset, f"{s.symbols_ok:,}", f"{s.symbols_failed:,}", f"{s.rows:,}",
            f"{s.quarantined:,}", f"{s.files:,}", _human_bytes(s.bytes), f"{s.requests:,}",
            f"{s.retries:,}", f"{s.rate_limited:,}", f"{s.seconds:.1f}",
        )  # fmt: skip
    out.print(table)
    for s in report.summaries:
        # Most companies never split: no events is the usual answer, not a warning.
        if s.symbols_without_data and DATASETS[s.dataset].kind != "events":
            names = ", ".join(s.symbols_without_data[:10])
            more = len(s.symbols_without_data) - 10
            out.print(
                f"[yellow]{s.dataset}: FMP had no data for {names}"
                f"{f' and {more} more' if more > 0 else ''}[/]",
                highlight=False,
            )
    if report.failures:
        out.print(f"[red]{len(report.failures)} failure(s):[/]")
        for failure in report.failures[:20]:
            out.print(
                f"  {failure.dataset} {failure.symbol or ''}: {failure.error}",
                highlight=False,
                markup=False,  # FMP's words, brackets and all
            )
        if len(report.failures) > 20:
            out.print(f"  ... and {len(report.failures) - 20} more, all listed in the manifest")
    if report.filings and "rows" in report.filings:
        f = report.filings
        out.print(
            f"filings listing {f['from']} to {f['to']}: {f['rows']:,} rows, "
            f"{f['signalled']:,} companies with a new filing",
            highlight=False,
        )
    if report.plan.companies:
        out.print(_companies_line(report.plan).rstrip(), highlight=False)
    manifest = report.manifest.path if report.manifest else "(not written)"
    out.print(f"lake: {report.lake}\nmanifest: {manifest}", highlight=False, markup=False)


@contextmanager
def _progress_reporter(total: int) -> Iterator[Callable[[ProgressEvent], None]]:
    """A live bar on a terminal; otherwise a log line every 10% of requests."""
    if err.is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows {task.fields[rows]:,} errors {task.fields[errors]}"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("requests", total=total, rows=0, errors=0)

            def update(event: ProgressEvent) -> None:
                bar.update(
                    task, completed=event.requests_done, total=event.requests_total,
                    rows=event.rows, errors=event.errors,
                )  # fmt: skip

            yield update
        return
    step = max(1, total // 10)
    logged = [-1]
    started = time.monotonic()

    def log_line(event: ProgressEvent) -> None:
        done = event.requests_done
        if done != logged[0] and (done % step == 0 or done == event.requests_total):
            logged[0] = done
            log.info(
                "progress: %d/%d requests, %d rows, %d errors, %.0f s",
                done, event.requests_total, event.rows, event.errors,
                time.monotonic() - started,
            )  # fmt: skip

    yield log_line


async def _execute(
    make_plan: Callable[[Sequence[Filing]], Plan],
    filings_span: tuple[dt.date, dt.date] | None,
    settings: Settings,
    lake: Lake,
    started: dt.datetime,
    as_of: dt.date,
) -> RunReport:
    import aiohttp

    from stock_pipeline.errors import FmpError, FmpPlanError
    from stock_pipeline.fmp import FmpClient, RequestPacer, RetryPolicy
    from stock_pipeline.pipeline import read_filings, run_ingest

    assert settings.api_key is not None
    concurrency = settings.effective_concurrency
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, raise_for_status=False) as session:
        client = FmpClient(
            session=session,
            base_url=settings.fmp_base_url,
            api_key=settings.api_key,
            pacer=RequestPacer(settings.pace),
            concurrency=concurrency,
            timeout=settings.timeout,
            retry=RetryPolicy(
                attempts=settings.retry_attempts, base_delay=settings.retry_base_delay
            ),
        )
        parameters: dict[str, Any] = {
            "datasets": list(settings.datasets),
            "period": settings.period,
            "prices_source": settings.prices_source,
            "rate_limit": settings.rate_limit,
            "pace": settings.pace,
            "shard": list(settings.shard) if settings.shard else None,
            "concurrency": concurrency,
            "fmp_base_url": settings.fmp_base_url,
            "tickers_path": str(settings.tickers_path),
            "backfill_days": settings.backfill_days,
            "refresh": settings.refresh,
            "as_of": as_of.isoformat(),
            "version": __version__,
        }
        filings: list[Filing] = []
        note: dict[str, Any] | None = None
        if filings_span is not None:
            first, last = filings_span
            note = {"from": first.isoformat(), "to": last.isoformat()}
            try:
                filings, rows = await read_filings(client, first, last)
            except FmpPlanError as refused:
                # Not in this plan: the monthly rotation alone keeps statements fresh. Said each
                # night, but not a failure of the night.
                log.warning(
                    "FMP's plan refuses the filings listing (%s): companies' statements are "
                    "refreshed on their monthly turn only; --refresh fetches them all",
                    refused,
                )
                note["refused"] = str(refused)
            except FmpError as error:
                # The rest of the night still runs (a refused key aborts it at its first request,
                # with the manifest saying so); the next run reads these days again.
                log.warning("could not read FMP's filings listing: %s", error)
                note["error"] = str(error)
            else:
                note["rows"] = rows
        plan = make_plan(filings)
        if note is not None and "rows" in note:
            note["signalled"] = sum(r.reason == "filing" for r in plan.companies.values())
        log.info(
            "run %s: %d requests for %d symbols, %s to %s, into %s",
            plan.run_id, len(plan.requests), len(plan.symbols), plan.start, plan.end, lake.uri,
        )  # fmt: skip
        with _progress_reporter(len(plan.requests)) as progress:
            return await run_ingest(
                plan,
                client=client,
                lake=lake,
                started_at=started,
                parameters=parameters,
                progress=progress,
                filings=note,
            )


def _alert(notify_url: str | None, text: str, secret: str | None) -> None:
    """Post `text` to the team's webhook and mail it, where they are set up; either failing is
    only logged."""
    from stock_pipeline.notify import SmtpSettings, post_webhook, send_email

    delay = _env_float("STOCK_PIPELINE_RETRY_BASE_DELAY", 1.0)
    if notify_url:
        post_webhook(notify_url, redact(text, secret), base_delay=delay)
    try:
        smtp = SmtpSettings.from_env()
    except ValueError as error:
        log.warning("no email sent: %s", error)
        return
    if smtp is not None:
        send_email(smtp, redact(text, secret), base_delay=delay)


@dataclass
class _Outcome:
    """What `_run_command` got to before it returned or raised, for the files written after."""

    report: RunReport | None = None
    plan: Plan | None = None
    lake: Lake | None = None
    run_id: str | None = None
    #: Why the run could not start or did not finish (what the alert and the summary say).
    problem: str | None = None
    #: What a run that had nothing to fetch said instead.
    note: str | None = None


def run_command(
    settings: Settings,
    *,
    dry_run: bool,
    now: dt.datetime | None = None,
    notify_url: str | None = None,
    metrics_file: Path | None = None,
    summary_file: Path | None = None,
    save_manifest: Path | None = None,
) -> ExitCode:
    """Everything `ingest` does after parsing options; returns the exit code. With `notify_url`,
    a run that does not end `ok` (or cannot start) is posted there; with `metrics_file`, every
    run's metrics are written there (Prometheus text format); with `summary_file`, a Markdown
    summary is appended there (a CI job summary); with `save_manifest`, the run's manifest is
    copied there (a CI artifact)."""
    started = now or dt.datetime.now(dt.UTC)
    outcome = _Outcome()
    code: int = ExitCode.PARTIAL
    try:
        code = _run_command(settings, dry_run, started, outcome)
        return code
    except typer.Exit as stop:
        code = stop.exit_code
        raise
    finally:
        _finish_run(
            outcome,
            code,
            dry_run=dry_run,
            started=started,
            secret=settings.api_key,
            notify_url=notify_url,
            metrics_file=metrics_file,
            summary_file=summary_file,
            save_manifest=save_manifest,
        )


def _finish_run(
    outcome: _Outcome,
    code: int,
    *,
    dry_run: bool,
    started: dt.datetime,
    secret: str | None,
    notify_url: str | None,
    metrics_file: Path | None,
    summary_file: Path | None,
    save_manifest: Path | None,
) -> None:
    """After a run, whichever way it ended: the alert for one that could not start, failed or
    ended partial; then the summary, the manifest's copy and the metrics, each on its own (one
    that cannot be written is logged and keeps neither the others nor the exit code from their
    course)."""
    if not dry_run:
        if outcome.report is not None and outcome.report.exit_code != ExitCode.OK:
            from stock_pipeline.notify import run_message

            _alert(notify_url, run_message(outcome.report, secret), secret)
        elif outcome.report is None and outcome.problem is not None:
            _alert(notify_url, outcome.problem, secret)
    if summary_file is not None:
        _append_summary(summary_file, outcome, code, dry_run, secret)
    if save_manifest is not None and not dry_run:
        _save_manifest(save_manifest, outcome)
    if metrics_file is not None and not dry_run:
        from stock_pipeline.metrics import write_metrics

        try:
            write_metrics(
                metrics_file,
                exit_code=code,
                started_at=started,
                finished_at=dt.datetime.now(dt.UTC),
                report=outcome.report,
            )
        except OSError as error:
            log.warning("could not write the metrics to %s: %s", metrics_file, error.strerror)


def _append_summary(
    path: Path, outcome: _Outcome, code: int, dry_run: bool, secret: str | None
) -> None:
    """Append the run's Markdown summary to `path`; a file that cannot be written is logged."""
    if outcome.report is not None:
        from stock_pipeline.notify import run_markdown

        text = run_markdown(outcome.report, secret)
    elif dry_run and outcome.plan is not None:
        plan = outcome.plan
        counts = ", ".join(f"{n} {c:,}" for n, c in plan.requests_by_dataset().items())
        text = (
            f"## stock_pipeline dry run\n\nSessions {plan.start} to {plan.end}, "
            f"{len(plan.symbols):,} tickers, {len(plan.requests):,} requests ({counts}). "
            "Nothing was fetched or written.\n"
        )
    elif outcome.note is not None:
        text = f"## stock_pipeline ingest: exit {code}\n\n{outcome.note}\n"
    else:
        problem = outcome.problem or "the run stopped before it finished"
        text = f"## stock_pipeline ingest: exit {code}\n\n{problem}\n"
    try:
        with path.open("a", encoding="utf-8") as summary:
            summary.write(redact(text, secret) + "\n")
    except OSError as error:
        log.warning("could not write the summary to %s: %s", path, error.strerror)


def _save_manifest(path: Path, outcome: _Outcome) -> None:
    """Copy the run's manifest, as the lake holds it, to `path` (manifests carry no secret). An
    aborted run's manifest is copied too; a run that wrote none leaves no file."""
    if outcome.lake is None or outcome.run_id is None:
        return
    try:
        data = outcome.lake.read_file(manifest_path(outcome.run_id))
    except (LakeError, FileNotFoundError):
        log.warning("no manifest to copy to %s: the run wrote none", path)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as error:
        log.warning("could not copy the manifest to %s: %s", path, error.strerror)


def _run_command(
    settings: Settings, dry_run: bool, started: dt.datetime, outcome: _Outcome
) -> ExitCode:
    secret = settings.api_key
    try:
        symbols = read_tickers(settings.tickers_path)
        if settings.shard is not None:
            # Catch-up reads every runner's manifests and looks at this runner's symbols only.
            symbols = shard_symbols(symbols, *settings.shard)
        if settings.api_key is None and not dry_run:
            raise ConfigError(
                "FMP_API_KEY is not set; export it or put it in a .env file "
                "(`stock-pipeline demo` runs without one)"
            )
        lake = open_lake(settings.lake, sse=settings.sse, kms_key_id=settings.kms_key_id)
        lake.check()
        outcome.lake = lake
        completed = last_completed_session(started)
        end = settings.end or completed
        _check_dates(settings.start, end, completed)
        last = None
        catch_up = settings.start is None and settings.backfill_days is None
        manifests = read_manifests(lake) if catch_up else []
        if catch_up:
            last = last_landed_session(manifests, symbols=symbols, datasets=settings.datasets)
            if last is not None and last >= end and not settings.refresh:
                outcome.note = (
                    f"The lake already holds every session up to {end}; nothing to fetch."
                )
                out.print(outcome.note)
                return ExitCode.OK
        start, end = resolve_range(
            end=end, start=settings.start, backfill_days=settings.backfill_days, last_landed=last
        )
        _check_dates(start, end, completed)
        # The day the run stands on: today in New York; a catch-up replayed with an --end in the
        # past stands on the day after it. (A backfill fetches statements as they are today.)
        today = started.astimezone(NEW_YORK).date()
        if catch_up:
            today = min(today, end + dt.timedelta(days=1))
        # A catch-up fetches companies per symbol only when something says they changed; a
        # backfill or --refresh fetches them all.
        selective = catch_up and not settings.refresh and bool(company_datasets(settings.datasets))
        records = company_records(manifests) if selective else {}
        known = selective and any(records.get(s) for s in symbols)
        filings_span = filings_window(manifests, today, symbols) if known else None
        run_id = new_run_id(started)
        outcome.run_id = run_id

        def make_plan(filings: Sequence[Filing]) -> Plan:
            def build(companies: Any) -> Plan:
                return plan_run(
                    run_id=run_id,
                    symbols=symbols,
                    datasets=settings.datasets,
                    start=start,
                    end=end,
                    period=settings.period,
                    today=today,
                    prices_source=settings.prices_source,
                    companies=companies,
                    splits_calendar=known,
                )

            if not selective:
                if settings.refresh:
                    return build(
                        every_company(symbols, settings.datasets, settings.period, "refresh")
                    )
                return build(None)
            fixed = len(build({}).requests)
            schedule = schedule_companies(
                symbols=symbols,
                datasets=settings.datasets,
                period=settings.period,
                records=records,
                filings=filings,
                today=today,
                budget=NIGHT_MINUTES * settings.pace - fixed,
            )
            return build(schedule)

        plan = make_plan(())
        outcome.plan = plan
    except StockPipelineError as error:
        outcome.problem = f"stock_pipeline ingest could not start: {error}"
        raise _fail(error, ExitCode.USAGE, secret) from None
    if dry_run:
        _print_plan(plan, settings, filings_span)
        return ExitCode.OK
    import asyncio

    try:
        report = asyncio.run(_execute(make_plan, filings_span, settings, lake, started, today))
    except KeyboardInterrupt:
        err.print(
            "[bold red]interrupted:[/] files already landed stay in the lake, but no manifest was "
            "written, so a catch-up run fetches this range again"
        )
        raise typer.Exit(130) from None
    except FmpAuthError as error:
        outcome.problem = f"stock_pipeline ingest aborted: {error}"
        raise _fail(f"{error}; the run was aborted", ExitCode.AUTH, secret) from None
    except StockPipelineError as error:
        outcome.problem = f"stock_pipeline ingest failed: {error}"
        raise _fail(error, error.exit_code, secret) from None
    outcome.report = report
    _print_summary(report)
    return report.exit_code


class _RedactingFormatter(logging.Formatter):
    """Log lines (tracebacks included) with every URL's key, and the key itself, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), os.environ.get("FMP_API_KEY"))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _configure(verbose: bool) -> None:
    """Logging, and where the NYSE calendar is cached, for a command that runs."""
    handler = _StderrHandler()
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    use_cache_dir(_cache_dir())


def _cache_dir() -> Path | None:
    """STOCK_PIPELINE_CACHE_DIR, else the XDG cache folder (~/.cache/stock-pipeline)."""
    if chosen := os.environ.get("STOCK_PIPELINE_CACHE_DIR"):
        return Path(chosen)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "stock-pipeline"
    try:
        return Path.home() / ".cache" / "stock-pipeline"
    except RuntimeError:  # no home directory (some service accounts): compute, do not cache
        return None


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        message = f"{name} must be a number of seconds, got {value!r}"
        raise _fail(message, ExitCode.USAGE, None) from None


def _settings(**values: Any) -> Settings:
    """Settings from option values as typer gives them (plain strings): Settings itself checks
    the choices (period, prices source) and raises ConfigError."""
    return Settings(**values)


TickersOption = Annotated[
    Path, typer.Option("--tickers-path", help="CSV with a `symbol` column.", dir_okay=False)
]
LakeOption = Annotated[
    str,
    typer.Option(
        "--lake", envvar="STOCK_PIPELINE_LAKE", help="Local folder or s3://bucket/prefix."
    ),
]
NotifyOption = Annotated[
    str | None,
    typer.Option(
        "--notify-url",
        envvar="STOCK_PIPELINE_WEBHOOK_URL",
        help="Slack-compatible webhook posted when a run fails, ends partial or the lake is stale.",
        show_default=False,
    ),
]


class NotifyUrlError(ConfigError):
    """--notify-url is not a URL the webhook can be posted to."""


def _check_notify_url(url: str | None) -> None:
    if url and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise NotifyUrlError("--notify-url must be an http(s) URL")


BackfillOption = Annotated[
    int | None,
    typer.Option(
        "--backfill-days", min=1, help="The N most recent completed NYSE sessions ending at --end."
    ),
]


#: `ingest` parses the number itself, so that a bad value (a workflow's free-text input) is
#: reported in the run's summary and alert like every other refused input.
BackfillText = Annotated[
    str | None,
    typer.Option(
        "--backfill-days",
        metavar="N",
        help="The N most recent completed NYSE sessions ending at --end.",
        show_default=False,
    ),
]


def _parse_backfill(value: str | None) -> int | None:
    if not value:
        return None
    try:
        days = int(value)
    except ValueError:
        days = 0
    if days < 1:
        raise ConfigError(
            f"--backfill-days {value!r} must be a whole number of sessions, 1 or more"
        )
    return days


@app.command()
def ingest(
    tickers_path: TickersOption = DEFAULT_TICKERS_PATH,
    lake: LakeOption = DEFAULT_LAKE,
    backfill_days: BackfillText = None,
    start: Annotated[
        str | None, typer.Option("--start", help="First day, YYYY-MM-DD (inclusive).")
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            "--end", help="Last day, YYYY-MM-DD (inclusive); default: last completed session."
        ),
    ] = None,
    datasets: Annotated[
        str, typer.Option("--datasets", help="Comma list of datasets to fetch.")
    ] = ",".join(DEFAULT_DATASETS),
    period: Annotated[
        str, typer.Option("--period", help="Statements: annual, quarter or both.")
    ] = "both",
    rate_limit: Annotated[
        int,
        typer.Option("--rate-limit", envvar="FMP_RATE_LIMIT", min=1, help="Requests per minute."),
    ] = DEFAULT_RATE_LIMIT,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            help="Most requests in flight [default: rate-limit / 15, from 8 to 64].",
        ),
    ] = None,
    fmp_base_url: Annotated[
        str, typer.Option("--fmp-base-url", envvar="FMP_BASE_URL", help="FMP API root.")
    ] = DEFAULT_BASE_URL,
    kms_key_id: Annotated[
        str | None,
        typer.Option(
            "--kms-key-id",
            envvar="STOCK_PIPELINE_KMS_KEY_ID",
            help="Encrypt S3 objects with this KMS key instead of AES256.",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            envvar="STOCK_PIPELINE_SHARD",
            help="K/N: take shard K of N of the tickers (by a hash of the symbol) and pace at "
            "1/N of --rate-limit, for N runners sharing one key.",
        ),
    ] = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Fetch every company's statements, profile and splits, not only those FMP "
            "lists a new filing for or whose monthly turn it is.",
        ),
    ] = False,
    prices_source: Annotated[
        str,
        typer.Option(
            "--prices-source",
            envvar="STOCK_PIPELINE_PRICES_SOURCE",
            help="Prices from eod-bulk (one request per session for the whole market), per "
            "symbol, or auto: whichever costs fewer requests, per symbol if the plan refuses "
            "eod-bulk.",
        ),
    ] = "auto",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; send no request, write nothing.")
    ] = False,
    notify_url: NotifyOption = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            envvar="STOCK_PIPELINE_METRICS_FILE",
            dir_okay=False,
            help="Write the run's counters and timings here, in the Prometheus text format.",
            show_default=False,
        ),
    ] = None,
    summary_file: Annotated[
        Path | None,
        typer.Option(
            "--summary-file",
            envvar="STOCK_PIPELINE_SUMMARY_FILE",
            dir_okay=False,
            help="Append the run's summary here, in Markdown (e.g. $GITHUB_STEP_SUMMARY).",
            show_default=False,
        ),
    ] = None,
    save_manifest: Annotated[
        Path | None,
        typer.Option(
            "--save-manifest",
            envvar="STOCK_PIPELINE_SAVE_MANIFEST",
            dir_okay=False,
            help="Copy the run's manifest here once it is written (e.g. for a CI artifact).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Fetch FMP data for every ticker and land it in the lake (key from FMP_API_KEY or .env).

    Without --start or --backfill-days: catch up from the session after the last one landed.

    Exit codes: 0 all landed, 1 partial, 2 usage or config error, 3 FMP refused the key.
    """
    _configure(verbose)
    _load_dotenv()  # also here for callers that invoke `app` directly (tests, embedding)
    api_key = os.environ.get("FMP_API_KEY") or None
    started = dt.datetime.now(dt.UTC)
    try:
        _check_notify_url(notify_url)
        settings = _settings(
            tickers_path=tickers_path,
            lake=lake,
            start=_parse_date("--start", start),
            end=_parse_date("--end", end),
            backfill_days=_parse_backfill(backfill_days),
            datasets=parse_datasets(datasets),
            period=period,
            rate_limit=rate_limit,
            concurrency=concurrency,
            fmp_base_url=fmp_base_url,
            api_key=api_key,
            kms_key_id=kms_key_id,
            retry_base_delay=_env_float("STOCK_PIPELINE_RETRY_BASE_DELAY", 1.0),
            shard=parse_shard(shard) if shard is not None else None,
            prices_source=prices_source,
            refresh=refresh,
        )
    except StockPipelineError as error:
        # Refused before it started (a workflow's inputs, say): the same summary, metrics and
        # alert as a run that could not start, so the job summary says why.
        _finish_run(
            _Outcome(problem=f"stock_pipeline ingest could not start: {error}"),
            ExitCode.USAGE,
            dry_run=dry_run,
            started=started,
            secret=api_key,
            # A URL that is not http(s) is not posted to.
            notify_url=None if isinstance(error, NotifyUrlError) else notify_url,
            metrics_file=metrics_file,
            summary_file=summary_file,
            save_manifest=save_manifest,
        )
        raise _fail(error, ExitCode.USAGE, api_key) from None
    code = _guarded(
        lambda: run_command(
            settings,
            dry_run=dry_run,
            notify_url=notify_url,
            metrics_file=metrics_file,
            summary_file=summary_file,
            save_manifest=save_manifest,
        ),
        settings.api_key,
    )
    raise typer.Exit(int(code))


def _guarded(action: Callable[[], ExitCode], secret: str | None) -> ExitCode:
    """Run `action`; an error nobody foresaw ends with a one-line message and exit 1, not a
    traceback (which --verbose logs, redacted)."""
    try:
        return action()
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except Exception as error:
        log.debug("unexpected error", exc_info=True)
        message = f"unexpected {type(error).__name__}: {error}; rerun with --verbose for details"
        raise _fail(message, ExitCode.PARTIAL, secret) from None


@app.command()
def demo(
    tickers_path: Annotated[
        Path | None,
        typer.Option(
            "--tickers-path",
            help="CSV with a `symbol` column [default: the 30 Dow members shipped with the package].",
            dir_okay=False,
        ),
    ] = None,
    lake: Annotated[str, typer.Option("--lake", help="Where the demo lake goes.")] = "./demo-lake",
    backfill_days: BackfillOption = 60,
    rate_limit: Annotated[
        int, typer.Option("--rate-limit", min=1, help="Requests per minute (simulator and client).")
    ] = 3000,
) -> None:
    """Run a real ingestion against the bundled FMP simulator into a local lake: no key, no network."""
    from stock_pipeline.simulator import SimulatorConfig, SimulatorThread

    _configure(False)
    config = SimulatorConfig(api_key=DEMO_KEY, rate_limit=rate_limit)
    with ExitStack() as stack:
        tickers = tickers_path or stack.enter_context(bundled_tickers())
        simulator = stack.enter_context(SimulatorThread(config))
        out.print(f"FMP simulator listening on {simulator.url}", highlight=False)
        try:
            settings = _settings(
                tickers_path=tickers,
                lake=lake,
                backfill_days=backfill_days,
                rate_limit=rate_limit,
                concurrency=16,
                fmp_base_url=simulator.url,
                api_key=DEMO_KEY,
            )
        except StockPipelineError as error:
            raise _fail(error, ExitCode.USAGE, DEMO_KEY) from None
        code = _guarded(lambda: run_command(settings, dry_run=False), DEMO_KEY)
    if code in (ExitCode.OK, ExitCode.PARTIAL):
        root = Path(lake).resolve()
        out.print(
            f"\nFiles are under {root}/raw/<dataset>/ (read them with "
            f"`stock_pipeline.read_dataset`), run manifests under {root}/_runs/.",
            highlight=False,
        )
    raise typer.Exit(int(code))


class StatementBasisChoice(StrEnum):
    """`medallion.StatementBasis` as a command-line choice."""

    FETCHED = "fetched"
    FILED = "filed"

    @property
    def basis(self) -> Literal["fetched", "filed"]:
        return "fetched" if self is StatementBasisChoice.FETCHED else "filed"


@app.command()
def lakehouse(
    lake: Annotated[
        str,
        typer.Option(
            "--lake", envvar="STOCK_PIPELINE_LAKE", help="The local lake folder to build from."
        ),
    ] = DEFAULT_LAKE,
    database: Annotated[
        Path, typer.Option("--database", help="The DuckDB file the tables and views go in.")
    ] = Path("lakehouse.duckdb"),
    query: Annotated[
        str | None,
        typer.Option("--query", help="SQL to run once the tables are built; prints the rows."),
    ] = None,
    statement_basis: Annotated[
        StatementBasisChoice,
        typer.Option(
            "--statement-basis",
            help="Share basis of FMP's per-share statement figures: fetched (restated for every "
            "split up to the fetch, as FMP's payloads show) or filed (as filed with the SEC).",
        ),
    ] = StatementBasisChoice.FETCHED,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Build the Databricks Bronze, Silver and Gold tables from a local lake, in a DuckDB file."""
    from stock_pipeline.lake import LocalLake

    _configure(verbose)
    try:
        from stock_pipeline.lakehouse import build_lakehouse, run_query
    except ModuleNotFoundError as error:
        raise _fail(
            f"the lakehouse command needs the lakehouse extra ({error.name} is not installed): "
            "pip install 'stock-pipeline[lakehouse]'",
            ExitCode.USAGE,
            None,
        ) from None
    if "://" in lake:
        raise _fail(
            f"{lake} is not a local folder: the lakehouse command builds from a local lake "
            "(copy it first, e.g. `aws s3 sync`)",
            ExitCode.USAGE,
            None,
        )

    def build() -> ExitCode:
        try:
            _print_lakehouse(
                build_lakehouse(LocalLake(lake), database, statement_basis=statement_basis.basis)
            )
            if query:
                _print_rows(*run_query(database, query))
        except StockPipelineError as error:
            raise _fail(error, error.exit_code, None) from None
        return ExitCode.OK

    raise typer.Exit(int(_guarded(build, None)))


class StatusFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"


@app.command()
def status(
    lake: LakeOption = DEFAULT_LAKE,
    tickers_path: TickersOption = DEFAULT_TICKERS_PATH,
    max_lag: Annotated[
        int,
        typer.Option(
            "--max-lag", min=0, help="Completed sessions a price dataset may be behind and pass."
        ),
    ] = 0,
    output: Annotated[
        StatusFormat, typer.Option("--format", help="table, json or markdown.")
    ] = StatusFormat.TABLE,
    reasons: Annotated[
        bool,
        typer.Option("--reasons", help="Read the quarantine files for why rows were set aside."),
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Judge freshness at this time (ISO 8601; default: now)."),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            envvar="STOCK_PIPELINE_SHARD",
            help="K/N: report on shard K of N of the tickers, as `ingest --shard K/N` takes them.",
        ),
    ] = None,
    notify_url: NotifyOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """How fresh and complete the lake is, from its run manifests.

    Exit 0 when every ticker's prices reach the last completed NYSE session (give or take
    --max-lag sessions), 1 when they do not or no run landed, 2 on bad input."""
    from stock_pipeline.lake import LocalLake
    from stock_pipeline.status import lake_status, render_markdown, sections

    _configure(verbose)
    try:
        _check_notify_url(notify_url)
    except ConfigError as error:
        raise _fail(error, ExitCode.USAGE, None) from None
    try:
        now = dt.datetime.fromisoformat(as_of) if as_of else dt.datetime.now(dt.UTC)
    except ValueError:
        raise _fail(f"--as-of {as_of!r} is not an ISO 8601 time", ExitCode.USAGE, None) from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)

    def report() -> ExitCode:
        try:
            tickers = read_tickers(tickers_path)
            if shard is not None:
                tickers = shard_symbols(tickers, *parse_shard(shard))
            store = open_lake(lake)
            if isinstance(store, LocalLake) and not store.root.is_dir():
                raise _fail(f"no lake at {store.root}", ExitCode.USAGE, None)
            found = lake_status(store, tickers, now=now, max_lag=max_lag, read_reasons=reasons)
        except StockPipelineError as error:
            raise _fail(error, ExitCode.USAGE, None) from None
        if output is StatusFormat.JSON:
            typer.echo(json.dumps(found.to_json(), indent=2))
        elif output is StatusFormat.MARKDOWN:
            typer.echo(render_markdown(found))
        else:
            for title, header, rows in sections(found):
                table = Table(title=title, title_justify="left")
                for name in header:
                    table.add_column(name)
                for row in rows:
                    table.add_row(*row)
                out.print(table)
        if not found.fresh:
            _alert(notify_url, render_markdown(found), None)
        return ExitCode.OK if found.fresh else ExitCode.PARTIAL

    raise typer.Exit(int(_guarded(report, None)))


def _print_lakehouse(report: LakehouseReport) -> None:
    table = Table(title=f"Lakehouse {report.database}")
    for name in ("dataset", "new files", "new rows", "rejected", "quarantined", "silver rows"):
        table.add_column(name, justify="left" if name == "dataset" else "right")
    for name, load in report.datasets.items():
        table.add_row(
            name, *(str(v) for v in (load.new_files, load.new_rows, load.rejected,
                                     load.quarantined, load.silver_rows))
        )  # fmt: skip
    out.print(table)
    out.print(
        f"{report.new_runs} new run manifests; Gold views: {', '.join(report.views)}. "
        f'Query them with --query "SELECT * FROM daily_features LIMIT 5".',
        highlight=False,
    )


def _print_rows(columns: list[str], rows: list[tuple[object, ...]]) -> None:
    table = Table()
    for name in columns:
        table.add_column(name)
    for row in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    out.print(table)
    out.print(f"{len(rows)} rows", highlight=False)


@app.command()
def schema() -> None:
    """Print every dataset's columns and types (Markdown), from the dataset registry."""
    from stock_pipeline.datasets import schema_markdown

    typer.echo(schema_markdown(), nl=False)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


def _load_dotenv() -> None:
    # Before typer reads the environment, so a .env sets --lake and --rate-limit defaults too.
    path = Path.cwd() / ".env"
    if path.is_file():
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


def main() -> None:
    """`stock-pipeline` and `python -m stock_pipeline`."""
    _load_dotenv()
    app()


shortcut = typer.Typer(
    add_completion=False, pretty_exceptions_enable=False, pretty_exceptions_show_locals=False
)
shortcut.command(name="ingest")(ingest)


def ingest_main() -> None:
    """`ingest`: a shortcut for `stock-pipeline ingest`."""
    _load_dotenv()
    shortcut()
