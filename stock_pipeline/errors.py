"""One exception tree for the whole package, each error carrying the exit code the CLI returns.

    StockPipelineError                 base; never raised itself
    ├── ConfigError           exit 2   bad options, tickers file, missing key; found before any request
    ├── LakeError             exit 2   the lake cannot be reached, listed or read (raised by lake.py)
    │   └── LakeWriteError    exit 1   a file could not be written after the run started
    ├── LakehouseError        exit 1   the local lakehouse build failed; its database is unchanged
    │   └── QueryError        exit 2   a --query that does not run on the built tables
    └── FmpError              exit 1   one FMP request failed (raised by fmp.py, recorded per request)
        ├── FmpAuthError      exit 3   the key was refused (401, or 403 on a legacy endpoint): abort
        ├── FmpPlanError      exit 1   a plan refusal (402): a symbol, a parameter or an endpoint
        ├── FmpRateLimitError exit 1   429 or a "Limit Reach" body, after retries
        ├── FmpServerError    exit 1   5xx after retries
        ├── FmpTransportError exit 1   timeouts and dropped connections after retries
        │   └── FmpUnreachableError    several requests in a row could not connect: abort
        └── FmpResponseError  exit 1   a body that is not what the endpoint promises (not JSON,
                                       truncated, an error object inside a 200, a capped window)

Messages name what failed and on what, and never contain the API key: every URL in them is redacted
by fmp.py before an error is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Literal

__all__ = [
    "ConfigError",
    "ExitCode",
    "FmpAuthError",
    "FmpError",
    "FmpPlanError",
    "FmpRateLimitError",
    "FmpResponseError",
    "FmpServerError",
    "FmpTransportError",
    "FmpUnreachableError",
    "LakeError",
    "LakeWriteError",
    "LakehouseError",
    "PlanScope",
    "QueryError",
    "StockPipelineError",
]


class ExitCode(IntEnum):
    """Process exit codes, part of the CLI's interface."""

    OK = 0
    PARTIAL = 1
    USAGE = 2
    AUTH = 3


class StockPipelineError(Exception):
    """Base of every error the package raises on purpose."""

    exit_code: ExitCode = ExitCode.PARTIAL


class ConfigError(StockPipelineError):
    """Options, environment or input files that cannot work; nothing has been requested yet."""

    exit_code = ExitCode.USAGE


class LakeError(StockPipelineError):
    """The lake could not be reached, listed, read or written."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class LakeWriteError(LakeError):
    """A write failed after the run started: what landed before it stays, the run is partial."""

    exit_code = ExitCode.PARTIAL


class LakehouseError(StockPipelineError):
    """Building the local lakehouse failed; each dataset's load commits whole or not at all."""

    exit_code = ExitCode.PARTIAL


class QueryError(LakehouseError):
    """A query on the built lakehouse did not run (bad SQL, an unknown table)."""

    exit_code = ExitCode.USAGE


class FmpError(StockPipelineError):
    """One FMP request failed for good; `url` is always redacted."""

    exit_code = ExitCode.PARTIAL
    #: Whether a retry could succeed (rate limits, server errors, timeouts, truncated bodies).
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        dataset: str | None = None,
        symbol: str | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.dataset = dataset
        self.symbol = symbol

    def __str__(self) -> str:
        where = " ".join(
            part
            for part in (
                f"dataset={self.dataset}" if self.dataset else "",
                f"symbol={self.symbol}" if self.symbol else "",
                f"status={self.status}" if self.status is not None else "",
                f"url={self.url}" if self.url else "",
            )
            if part
        )
        base = super().__str__()
        return f"{base} ({where})" if where else base


class FmpAuthError(FmpError):
    """FMP refused the key: every further request would fail the same way."""

    exit_code = ExitCode.AUTH


#: What a plan refusal covers: one symbol; every request that sends certain parameter values (a
#: refused `period=quarter`, or what a probe found refused); the whole dataset (its endpoint); or
#: not known yet (a wording no rule recognizes, which the pipeline decides).
PlanScope = Literal["symbol", "parameters", "dataset", "unknown"]


class FmpPlanError(FmpError):
    """A plan refusal (usually a 402): the symbol, a parameter value or the whole endpoint is not
    in the subscription. `scope` is what it covers, `parameters` the refused values when the scope
    is "parameters", and `rule` the rule that decided it."""

    def __init__(
        self,
        message: str,
        *,
        scope: PlanScope,
        rule: str,
        parameters: tuple[tuple[str, str], ...] = (),
        url: str | None = None,
        status: int | None = None,
        dataset: str | None = None,
        symbol: str | None = None,
    ) -> None:
        super().__init__(
            f"{message} [{rule}]", url=url, status=status, dataset=dataset, symbol=symbol
        )
        self.refusal = message
        self.scope = scope
        self.rule = rule
        self.parameters = parameters

    def settled(
        self, scope: PlanScope, rule: str, parameters: tuple[tuple[str, str], ...] = ()
    ) -> FmpPlanError:
        """The same refusal with its scope decided by `rule`."""
        return FmpPlanError(
            self.refusal,
            scope=scope,
            rule=rule,
            parameters=parameters,
            url=self.url,
            status=self.status,
            dataset=self.dataset,
            symbol=self.symbol,
        )

    def refuses(self, params: Mapping[str, str]) -> bool:
        """Whether a request with `params` (of the same dataset) is refused by this too."""
        if self.scope == "dataset":
            return True
        if self.scope == "parameters":
            return all(params.get(name) == value for name, value in self.parameters)
        return False


class FmpRateLimitError(FmpError):
    """FMP said "Limit Reach" (429, or the same text under another status)."""

    transient = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        url: str | None = None,
        status: int | None = None,
        dataset: str | None = None,
        symbol: str | None = None,
    ) -> None:
        super().__init__(message, url=url, status=status, dataset=dataset, symbol=symbol)
        self.retry_after = retry_after


class FmpServerError(FmpError):
    """A 5xx from FMP."""

    transient = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        url: str | None = None,
        status: int | None = None,
        dataset: str | None = None,
        symbol: str | None = None,
    ) -> None:
        super().__init__(message, url=url, status=status, dataset=dataset, symbol=symbol)
        self.retry_after = retry_after


class FmpTransportError(FmpError):
    """The request timed out or the connection dropped."""

    transient = True


class FmpUnreachableError(FmpTransportError):
    """FMP could not be reached for several requests in a row: the run stops instead of spending
    hours on retries. Nothing of the run is written; the manifest records the abort."""

    transient = False


class FmpResponseError(FmpError):
    """The body is not what the endpoint promises; retried, since truncation is usually transient."""

    transient = True
