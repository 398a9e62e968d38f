"""Settings for a run: frozen values, flags over environment over defaults, and the tickers file."""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from stock_pipeline.datasets import DATASETS, DEFAULT_DATASETS
from stock_pipeline.errors import ConfigError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_LAKE",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_TICKERS_PATH",
    "PRICES_SOURCES",
    "Period",
    "PricesSource",
    "Settings",
    "bundled_tickers",
    "default_concurrency",
    "parse_datasets",
    "parse_shard",
    "read_tickers",
]

DEFAULT_TICKERS_PATH = Path("config/tickers.csv")
#: The 30 Dow Jones members, shipped inside the package for `demo`.
BUNDLED_TICKERS = "dow30.csv"
DEFAULT_LAKE = "./lake"
DEFAULT_TIMEOUT = 30.0
DEFAULT_BASE_URL = "https://financialmodelingprep.com"
#: Requests per minute on FMP's Starter plan.
DEFAULT_RATE_LIMIT = 300
#: FMP returns at most this many price rows per request and silently drops the rest.
PRICE_ROW_CAP = 5000
Period = Literal["annual", "quarter", "both"]
PricesSource = Literal["auto", "bulk", "symbol"]
PRICES_SOURCES: tuple[PricesSource, ...] = ("auto", "bulk", "symbol")
PERIODS: tuple[Period, ...] = ("annual", "quarter", "both")

# Letters and digits with the separators FMP uses: BRK-B, RY.TO, ^GSPC, EURUSD=X.
_SYMBOL = re.compile(r"^[A-Z0-9^][A-Z0-9.\-^=]{0,19}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything a run needs to know, resolved before the first request."""

    tickers_path: Path = DEFAULT_TICKERS_PATH
    lake: str = DEFAULT_LAKE
    start: dt.date | None = None
    end: dt.date | None = None
    backfill_days: int | None = None
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    period: Period = "both"
    rate_limit: int = DEFAULT_RATE_LIMIT
    #: Requests in flight; None: enough for the rate limit (see fmp.default_concurrency).
    concurrency: int | None = None
    fmp_base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    retry_attempts: int = 6
    #: Backoff doubles from this many seconds (jittered); 0 retries at once, as tests do.
    retry_base_delay: float = 1.0
    sse: str = "AES256"
    kms_key_id: str | None = None
    #: (K, N): this runner takes shard K of N (1-based) and paces at 1/N of `rate_limit`.
    shard: tuple[int, int] | None = None
    #: Prices from `eod-bulk` (one request per session), per symbol, or whichever costs fewer.
    prices_source: PricesSource = "auto"
    #: Fetch every company's statements, profile and splits even when nothing says they changed.
    refresh: bool = False

    def __post_init__(self) -> None:
        if self.backfill_days is not None and self.backfill_days < 1:
            raise ConfigError("--backfill-days must be at least 1")
        if self.backfill_days is not None and self.start is not None:
            raise ConfigError("use either --backfill-days or --start, not both")
        if self.start and self.end and self.start > self.end:
            raise ConfigError(f"--start {self.start} is after --end {self.end}")
        if self.rate_limit < 1:
            raise ConfigError("--rate-limit must be at least 1 request per minute")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.prices_source not in PRICES_SOURCES:
            raise ConfigError(f"--prices-source must be one of {', '.join(PRICES_SOURCES)}")
        if self.period not in PERIODS:
            raise ConfigError(f"--period must be one of {', '.join(PERIODS)}")
        if self.shard is not None:
            index, count = self.shard
            if not 1 <= index <= count:
                raise ConfigError(f"--shard {index}/{count}: K must be from 1 to N")
            if count > self.rate_limit:
                raise ConfigError(
                    f"--shard {index}/{count}: {count} runners cannot share {self.rate_limit} "
                    "requests per minute"
                )
        _check_url(self.fmp_base_url)
        unknown = [d for d in self.datasets if d not in DATASETS]
        if unknown or not self.datasets:
            raise ConfigError(
                f"unknown dataset(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(DATASETS)}"
            )

    @property
    def pace(self) -> int:
        """Requests per minute this runner sends: its share of the key's limit."""
        return self.rate_limit // self.shard[1] if self.shard else self.rate_limit

    @property
    def effective_concurrency(self) -> int:
        return self.concurrency or default_concurrency(self.pace)


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (runner K of N, 1-based) as (K, N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(
            f"--shard {text!r}: write it K/N with K from 1 to N, e.g. 2/4 for the second of 4 "
            "runners"
        )
    return int(match[1]), int(match[2])


def default_concurrency(rate_limit: int) -> int:
    """Enough requests in flight to hold `rate_limit` per minute with answers taking up to 4 s."""
    return min(64, max(8, math.ceil(rate_limit / 15)))


def _check_url(url: str) -> None:
    problem = f"--fmp-base-url must be an http(s) URL like {DEFAULT_BASE_URL}, got {url!r}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a port out of range)
    except ValueError:
        raise ConfigError(problem) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(problem)


def parse_datasets(text: str) -> tuple[str, ...]:
    """A comma list of dataset names, in registry order, duplicates removed."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - set(DATASETS))
    if unknown or not wanted:
        raise ConfigError(
            f"unknown dataset(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(DATASETS)}"
        )
    return tuple(name for name in DATASETS if name in wanted)


def bundled_tickers() -> AbstractContextManager[Path]:
    """The path of the tickers file that ships with the package (the 30 Dow members)."""
    return resources.as_file(resources.files("stock_pipeline") / "data" / BUNDLED_TICKERS)


def read_tickers(path: Path) -> tuple[str, ...]:
    """The symbols in a CSV with a `symbol` column, upper-cased and deduplicated, in file order."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        with bundled_tickers() as bundled:
            raise ConfigError(
                f"tickers file not found: {path}{where}; pass --tickers-path with a CSV that has a "
                f"'symbol' column, e.g. the 30 Dow members that ship with the package: "
                f"--tickers-path {bundled}"
            ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read tickers file {path}: {error}") from None
    reader = csv.DictReader(text.splitlines())
    columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    if "symbol" not in columns:
        found = ", ".join(repr(n) for n in reader.fieldnames or []) or "nothing"
        raise ConfigError(f"tickers file {path} needs a 'symbol' column; its header has {found}")
    symbols: dict[str, None] = {}
    bad: list[str] = []
    for row in reader:
        line_number = reader.line_num  # counts the blank lines DictReader skips
        raw = (row.get(columns["symbol"]) or "").strip()
        if not raw or raw.startswith("#"):
            continue
        symbol = raw.upper()
        if not _SYMBOL.match(symbol):
            bad.append(f"line {line_number}: {raw!r}")
            continue
        symbols.setdefault(symbol)
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ConfigError(f"tickers file {path} has invalid symbols ({shown})")
    if not symbols:
        raise ConfigError(f"tickers file {path} lists no symbols")
    return tuple(symbols)
