"""What a lake holds, and whether last night landed: `stock-pipeline status`.

Read from the run manifests and nothing else (a manifest lists every file a run wrote, its rows,
its failures and its session gaps), so a lake of 5,000 tickers x 5 years answers in seconds:
- per price dataset, the newest session landed, the session through which every ticker has
  landed, and how many sessions that is behind the last completed NYSE session;
- tickers covered through that session, and the ones that are not;
- sessions missing per symbol, as the newest run that fetched the symbol found them;
- rows quarantined per dataset and why (the manifests' quarantine counts; the reasons are read
  from the quarantine files only when asked, `read_reasons`);
- the last runs and how they ended; the age of each company's newest statement.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from stock_pipeline.datasets import DATASETS, REASON_COLUMN
from stock_pipeline.lake import Lake, read_manifests, read_partition_file
from stock_pipeline.market_calendar import NEW_YORK, last_completed_session, sessions_between
from stock_pipeline.plan import company_records, landed_through

__all__ = ["LakeStatus", "lake_status", "render_markdown", "sections"]

#: Runs listed in the report, newest first.
RUNS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class PriceStatus:
    """One price dataset against the exchange calendar and the tickers file."""

    dataset: str
    newest_session: dt.date | None
    #: Every ticker has landed through this session (None: some ticker never landed).
    complete_through: dt.date | None
    #: Completed sessions after `complete_through` (all of them when it is None).
    lag_sessions: int
    tickers_covered: int
    tickers_not_covered: tuple[str, ...]
    #: Sessions missing per symbol, as the newest run that fetched the symbol found them.
    missing_sessions: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class RunStatus:
    run_id: str
    status: str
    exit_code: int
    finished_at: str
    sessions: str
    rows: int
    failures: int
    #: How many failures of each reason, as the manifest names them (`FmpServerError`,
    #: `FmpPlanError`, `FmpAuthError`, ...).
    failure_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LakeStatus:
    """The report; `fresh` decides the exit code."""

    lake: str
    as_of: dt.datetime
    last_session: dt.date
    max_lag: int
    tickers: int
    prices: tuple[PriceStatus, ...]
    #: Rows quarantined per dataset, over every run; the reasons when they were read.
    quarantined: Mapping[str, int]
    quarantine_reasons: Mapping[str, Mapping[str, int]]
    runs: tuple[RunStatus, ...]
    #: Runs that landed files (ended ok or partial; an aborted run lands nothing).
    landed_runs: int = 0
    #: Days since each company's newest statement was accepted by the SEC (None: none landed).
    statement_age_days: Mapping[str, int | None] = field(default_factory=dict)

    @property
    def fresh(self) -> bool:
        """Every price dataset within `max_lag` sessions for every ticker, and a run landed."""
        return self.landed_runs > 0 and all(p.lag_sessions <= self.max_lag for p in self.prices)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["fresh"] = self.fresh
        return _jsonable(data)  # type: ignore[no-any-return]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def lake_status(
    lake: Lake,
    tickers: Sequence[str],
    *,
    now: dt.datetime,
    max_lag: int = 0,
    read_reasons: bool = False,
) -> LakeStatus:
    """The lake's status on `now` (timezone-aware), against `tickers`."""
    manifests = read_manifests(lake)
    last_session = last_completed_session(now)
    landed = [m for m in manifests if m.get("status") in ("ok", "partial")]
    prices = tuple(
        _price_status(name, landed, tickers, last_session)
        for name, dataset in DATASETS.items()
        if dataset.kind == "prices" and any(name in m.get("datasets", ()) for m in landed)
    )
    quarantined: Counter[str] = Counter()
    for manifest in manifests:
        for name, summary in (manifest.get("summary") or {}).items():
            quarantined[name] += int(summary.get("quarantined", 0))
    reasons = _quarantine_reasons(lake, manifests) if read_reasons else {}
    records = company_records(manifests)
    today = now.astimezone(NEW_YORK).date()
    ages: dict[str, int | None] = {}
    for symbol in tickers:
        record = records.get(symbol)
        newest = max(record.accepted.values(), default=None) if record else None
        ages[symbol] = (today - newest.astimezone(NEW_YORK).date()).days if newest else None
    return LakeStatus(
        lake=lake.uri,
        as_of=now,
        last_session=last_session,
        max_lag=max_lag,
        tickers=len(tickers),
        prices=prices,
        quarantined={k: v for k, v in sorted(quarantined.items()) if v},
        quarantine_reasons=reasons,
        runs=tuple(_run_status(m) for m in reversed(manifests[-RUNS_SHOWN:])),
        landed_runs=len(landed),
        statement_age_days=ages if any(a is not None for a in ages.values()) else {},
    )


def _price_status(
    name: str,
    manifests: Sequence[Mapping[str, Any]],
    tickers: Sequence[str],
    last_session: dt.date,
) -> PriceStatus:
    through = landed_through(manifests, datasets=[name])
    by_symbol = {symbol: day for (_, symbol), day in through.items()}
    universe = set(tickers)
    covered = {t for t in tickers if by_symbol.get(t) is not None and by_symbol[t] >= last_session}
    days = [by_symbol.get(t) for t in tickers]
    complete = None if not days or any(d is None for d in days) else min(d for d in days if d)
    newest = max((d for d in by_symbol.values()), default=None)
    if complete is None:
        lag = len(sessions_between(last_session - dt.timedelta(days=3660), last_session))
    elif complete >= last_session:
        lag = 0
    else:
        lag = len(sessions_between(complete + dt.timedelta(days=1), last_session))
    missing: dict[str, int] = {}
    for manifest in manifests:  # oldest first: the newest run that fetched a symbol wins
        if name not in manifest.get("datasets", ()):
            continue
        gaps = (manifest.get("gaps") or {}).get(name, {})
        for symbol in manifest.get("symbols", ()):
            missing[symbol] = int(gaps.get(symbol, {}).get("missing", 0))
    return PriceStatus(
        dataset=name,
        newest_session=newest,
        complete_through=complete,
        lag_sessions=lag,
        tickers_covered=len(covered),
        tickers_not_covered=tuple(t for t in tickers if t not in covered),
        missing_sessions={s: n for s, n in sorted(missing.items()) if n and s in universe},
    )


def _run_status(manifest: Mapping[str, Any]) -> RunStatus:
    span = manifest.get("range") or {}
    summary = manifest.get("summary") or {}
    failures = manifest.get("failures") or ()
    return RunStatus(
        run_id=str(manifest.get("run_id", "?")),
        status=str(manifest.get("status", "?")),
        exit_code=int(manifest.get("exit_code", -1)),
        finished_at=str(manifest.get("finished_at", "")),
        sessions=f"{span.get('start', '?')} to {span.get('end', '?')}",
        rows=sum(int(s.get("rows", 0)) for s in summary.values()),
        failures=len(failures),
        failure_reasons=dict(Counter(str(f.get("reason", "?")) for f in failures).most_common()),
    )


def _quarantine_reasons(
    lake: Lake, manifests: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, int]]:
    """Rows quarantined per dataset and rule, read from the quarantine files the runs wrote."""
    reasons: dict[str, Counter[str]] = {}
    for manifest in manifests:
        for file in manifest.get("files") or ():
            if file.get("kind") != "quarantine" or file.get("dataset") not in DATASETS:
                continue
            frame = read_partition_file(
                lake, DATASETS[file["dataset"]], file["path"], quarantine=True
            )
            counts = reasons.setdefault(file["dataset"], Counter())
            for text in frame[REASON_COLUMN].to_list():
                for reason in str(text).split("; "):
                    counts[reason] += 1
    return {name: dict(counts.most_common()) for name, counts in sorted(reasons.items())}


#: A company whose newest statement is older than this has likely missed a quarter's filing.
STALE_STATEMENT_DAYS = 120
#: Symbols named in a table cell before "and N more".
NAMED = 5


def _names(symbols: Sequence[str]) -> str:
    shown = ", ".join(symbols[:NAMED])
    return shown + (f" and {len(symbols) - NAMED} more" if len(symbols) > NAMED else "")


def sections(status: LakeStatus) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as titled tables (title, header, rows), for the table and Markdown formats."""
    if status.landed_runs == 0:
        verdict = "no run has landed"
    else:
        verdict = "fresh" if status.fresh else "STALE or incomplete"
    out: list[tuple[str, list[str], list[list[str]]]] = [
        (
            f"{status.lake} on {status.as_of.isoformat(timespec='minutes')}: {verdict}",
            ["last completed session", "tickers", "max lag (sessions)"],
            [[status.last_session.isoformat(), str(status.tickers), str(status.max_lag)]],
        ),
        (
            "Prices",
            ["dataset", "newest session", "every ticker through", "lag", "covered", "not covered"],
            [
                [
                    p.dataset,
                    str(p.newest_session or "none"),
                    str(p.complete_through or "none"),
                    str(p.lag_sessions),
                    f"{p.tickers_covered}/{status.tickers}",
                    _names(p.tickers_not_covered),
                ]
                for p in status.prices
            ],
        ),
    ]
    missing = [
        [p.dataset, symbol, str(count)]
        for p in status.prices
        for symbol, count in sorted(p.missing_sessions.items(), key=lambda kv: -kv[1])[:10]
    ]
    if missing:
        out.append(
            (
                "Sessions missing (the newest run per symbol)",
                ["dataset", "symbol", "sessions"],
                missing,
            )
        )
    if status.quarantined:
        out.append(
            (
                "Quarantined rows",
                ["dataset", "rows", "why"],
                [
                    [
                        name,
                        str(rows),
                        "; ".join(
                            f"{reason} ({n})"
                            for reason, n in status.quarantine_reasons.get(name, {}).items()
                        )
                        or "(--reasons reads them)",
                    ]
                    for name, rows in status.quarantined.items()
                ],
            )
        )
    out.append(
        (
            "Last runs",
            ["run", "status", "exit", "finished", "sessions", "rows", "failures"],
            [
                [
                    r.run_id,
                    r.status,
                    str(r.exit_code),
                    r.finished_at[:16],
                    r.sessions,
                    str(r.rows),
                    _failures_cell(r),
                ]
                for r in status.runs
            ],
        )
    )
    if status.statement_age_days:
        ages = status.statement_age_days
        old = sorted(s for s, a in ages.items() if a is not None and a > STALE_STATEMENT_DAYS)
        none = sorted(s for s, a in ages.items() if a is None)
        known = [a for a in ages.values() if a is not None]
        out.append(
            (
                "Newest statement per company",
                [
                    "companies",
                    "newest accepted",
                    "oldest accepted",
                    f"older than {STALE_STATEMENT_DAYS} days",
                    "none landed",
                ],
                [
                    [
                        str(len(ages)),
                        f"{min(known)} days ago" if known else "",
                        f"{max(known)} days ago" if known else "",
                        _names(old) or "0",
                        _names(none) or "0",
                    ]
                ],
            )
        )
    return out


def _failures_cell(run: RunStatus) -> str:
    reasons = ", ".join(f"{reason} {n}" for reason, n in run.failure_reasons.items())
    return f"{run.failures} ({reasons})" if reasons else str(run.failures)


def render_markdown(status: LakeStatus) -> str:
    """The report as GitHub Markdown (a job summary, an issue comment)."""
    lines: list[str] = []
    for title, header, rows in sections(status):
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows
        ]
        lines.append("")
    return "\n".join(lines)
