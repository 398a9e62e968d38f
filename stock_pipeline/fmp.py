"""The FMP client: one pooled aiohttp session, pacing, retries, error mapping, redacted URLs.

This is the only module that speaks HTTP. It returns parsed JSON records or raises one of the
`FmpError` subclasses from errors.py, always with the key redacted from every URL and message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp

from stock_pipeline.errors import (
    FmpAuthError,
    FmpError,
    FmpPlanError,
    FmpRateLimitError,
    FmpResponseError,
    FmpServerError,
    FmpTransportError,
    PlanScope,
)
from stock_pipeline.redaction import REDACTED, redact

__all__ = [
    "PROBE_SYMBOL",
    "FmpClient",
    "PlanRefusal",
    "RequestPacer",
    "RequestStats",
    "RetryPolicy",
    "classify_plan_refusal",
]

log = logging.getLogger(__name__)

#: A symbol every FMP plan serves on every endpoint used here (the free plan's sample symbols
#: include it). The pipeline asks for it to tell an endpoint's refusal from a symbol's.
PROBE_SYMBOL = "AAPL"
#: FMP's listing of the newest financial filings (10-K, 10-Q, 8-K, ...) by acceptance time.
FILINGS_ENDPOINT = "sec-filings-financials"

# Phrases only FMP's plan refusals use: a body with one of them is a refusal whatever its status.
_PLAN_REFUSAL = re.compile(
    r"(?i)premium query parameter|\b(?:restricted|exclusive|special) endpoint\b"
    r"|under your current subscription"
)
#: Words one of which every `_PLAN_REFUSAL` match holds: a body without them is searched no further
#: (the pattern alone takes 15 ms over a 300 KB bulk file).
_PLAN_REFUSAL_WORDS = ("premium query parameter", "endpoint", "under your current subscription")
_ENDPOINT_REFUSAL = re.compile(r"(?i)\b(restricted|exclusive) endpoint\b")
_PARAMETER_REFUSAL = re.compile(r"(?i)\bvalues? (?:set )?for '([a-z_]\w*)'")


@dataclass(frozen=True, slots=True)
class PlanRefusal:
    """What a plan refusal's wording says it covers (see `classify_plan_refusal`)."""

    scope: PlanScope
    rule: str
    #: For scope "parameters": the refused parameter values.
    parameters: tuple[tuple[str, str], ...] = ()


def classify_plan_refusal(text: str, params: Mapping[str, str]) -> PlanRefusal:
    """What a plan refusal covers, from its wording alone, and the rule that says so.

    Only a wording that names the endpoint (Restricted or Exclusive Endpoint) refuses the whole
    dataset. One that names a parameter the request sent, other than the symbol, refuses that
    value: every request that sends it (`period=quarter` refused leaves `period=annual` alone).
    One that names the symbol refuses the symbol. Any other wording is "unknown": FMP's wording
    varies between plans, endpoints and over time, so the pipeline decides those (see
    `PROBE_SYMBOL`) instead of a guess.
    """
    if match := _ENDPOINT_REFUSAL.search(text):
        return PlanRefusal("dataset", f"endpoint refusal: '{match.group(1).title()} Endpoint'")
    if match := _PARAMETER_REFUSAL.search(text):
        name = match.group(1)
        if name == "symbol":
            return PlanRefusal("symbol", "symbol refusal: the value set for 'symbol'")
        if name in params:
            value = params[name]
            return PlanRefusal(
                "parameters", f"parameter refusal: '{name}={value}'", ((name, value),)
            )
    symbol = params.get("symbol")
    if symbol and re.search(rf"['\"]{re.escape(symbol)}['\"]", text, re.IGNORECASE):
        return PlanRefusal("symbol", f"symbol refusal: names '{symbol}'")
    return PlanRefusal("unknown", "unknown wording")


class _Send:
    """One paced request: when it left, and when its answer (or failure) came back."""

    __slots__ = ("done", "finished", "sent")

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.finished: float | None = None
        self.done = asyncio.Event()


class RequestPacer:
    """At most `limit` requests in any `window` seconds, as the server counts them, from the first.

    Requests leave on a fixed schedule, one every `window / limit` seconds, so they never burst (a
    token bucket that starts full would send twice the limit in the first minute). On top of that,
    request number k + limit leaves only `window` seconds after the server can have counted
    request k: when its answer came back, or `latency_margin` seconds after it left, whichever is
    first. So time spent queued or in flight cannot put more than `limit` requests into one window
    on the server's clock, and a slow answer delays the next send by at most the margin. Build it
    inside the running loop.
    """

    def __init__(self, limit: int, window: float = 60.0, *, latency_margin: float = 1.0) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self.latency_margin = latency_margin
        self._interval = window / limit
        self._next_send = -math.inf
        self._log: deque[_Send] = deque(maxlen=limit)
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()

    @property
    def sent(self) -> tuple[float, ...]:
        """Loop times of the most recent sends (at most `limit`)."""
        return tuple(entry.sent for entry in self._log)

    async def _counted_at(self, entry: _Send) -> float:
        """The latest moment the server can have counted `entry`."""
        latest = entry.sent + self.latency_margin
        if entry.finished is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.done.wait(), max(0.0, latest - self._loop.time()))
        return latest if entry.finished is None else min(entry.finished, latest)

    async def _wait_turn(self) -> _Send:
        async with self._lock:
            # The schedule is kept as a sum of exact steps, not a leaking level, so it never drifts
            # and can be checked on a fast-forwarded clock.
            now = self._loop.time()
            if self._next_send > now:
                await asyncio.sleep(self._next_send - now)
            if len(self._log) == self.limit:
                wait = await self._counted_at(self._log[0]) + self.window - self._loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            entry = _Send(self._loop.time())
            # On schedule (or a timer's fraction late): the next slot follows this one's, so small
            # delays do not add up. Held back longer (by the window): spacing restarts from now.
            on_time = entry.sent - self._next_send < self._interval
            self._next_send = (self._next_send if on_time else entry.sent) + self._interval
            self._log.append(entry)
            return entry

    @staticmethod
    def _finish(entry: _Send, at: float) -> None:
        entry.finished = at
        entry.done.set()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for the turn to send; the request goes inside the block."""
        entry = await self._wait_turn()
        try:
            yield
        finally:
            self._finish(entry, self._loop.time())

    async def acquire(self) -> None:
        """Wait for the turn to send a request that is over as soon as it leaves."""
        entry = await self._wait_turn()
        self._finish(entry, entry.sent)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a Retry-After header, when FMP sends one, wins."""

    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return rng.uniform(0, ceiling)


@dataclass(slots=True)
class RequestStats:
    """Counters for one dataset's HTTP traffic."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    failed: int = 0
    #: Responses by HTTP status ("none": the request got no answer: a timeout, a dropped
    #: connection).
    responses: dict[str, int] = field(default_factory=dict)

    def answered(self, status: int | None) -> None:
        key = "none" if status is None else str(status)
        self.responses[key] = self.responses.get(key, 0) + 1


#: Wordings that mean the rate limit or a refused key under any status, even inside an array.
_LIMIT_REACHED = "Limit Reach"
_KEY_REFUSED = "Invalid API KEY"


def _no_limit_or_key_words(text: str) -> bool:
    """Nothing in `text` that means the rate limit or a refused key, whatever else it is."""
    return _LIMIT_REACHED not in text and _KEY_REFUSED not in text


def _plain_array(text: str) -> bool:
    """A data answer with nothing the error rules look for, closed (not cut off)."""
    stripped = text.strip()
    return stripped.startswith("[") and stripped.endswith("]") and _no_limit_or_key_words(text)


def _plain_csv(text: str) -> bool:
    """A CSV data answer: no JSON document, nothing the error rules look for (a refusal's words
    too: in CSV they cannot be a value inside an array)."""
    stripped = text.lstrip("\ufeff \t\r\n")
    return (
        bool(stripped)
        and not stripped.startswith(("[", "{"))
        and _no_limit_or_key_words(text)
        and not _plan_refusal_words(text)
    )


def _plan_refusal_words(text: str) -> bool:
    """Whether `text` holds a phrase of FMP's plan refusals."""
    lowered = text.lower()
    return any(word in lowered for word in _PLAN_REFUSAL_WORDS) and bool(_PLAN_REFUSAL.search(text))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to backoff
    return seconds if math.isfinite(seconds) else None


@dataclass(slots=True)
class FmpClient:
    """Fetches FMP stable endpoints through a session the caller owns."""

    session: aiohttp.ClientSession
    base_url: str
    api_key: str = field(repr=False)
    pacer: RequestPacer
    concurrency: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    stats: dict[str, RequestStats] = field(default_factory=dict)
    _slots: asyncio.Semaphore = field(init=False)
    #: Set by the first refusal of the key: nothing else is sent after it.
    _refused: FmpAuthError | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._slots = asyncio.Semaphore(self.concurrency)

    def display_url(self, endpoint: str, params: Mapping[str, str]) -> str:
        """The request's URL as it may appear in logs and messages: the key redacted."""
        query = urlencode({**params, "apikey": REDACTED}, safe="*")
        return f"{self.base_url}/stable/{endpoint}?{query}"

    async def fetch_array(
        self,
        endpoint: str,
        params: Mapping[str, str],
        *,
        dataset: str,
        symbol: str | None = None,
        gate: Callable[[], asyncio.Future[Any] | None] | None = None,
        csv: bool = False,
    ) -> bytes:
        """Like `fetch_records`, but a data answer comes back as the JSON array's bytes, unparsed
        (the caller parses it off the event loop); an answer that is not a plain array, or that
        ends before its closing bracket (cut off), is judged as `fetch_records` judges it.
        `csv`: the endpoint answers CSV; any 200 that is not JSON or an error's wording is data."""
        answer = await self._fetch_with_retries(
            endpoint,
            params,
            dataset=dataset,
            symbol=symbol,
            urgent=False,
            gate=gate,
            raw="csv" if csv else True,
        )
        if isinstance(answer, list):  # JSON where CSV was expected: `[]` is no data
            if answer:
                raise FmpResponseError(
                    "FMP sent JSON records where CSV was expected",
                    dataset=dataset,
                    symbol=symbol,
                    url=self.display_url(endpoint, params),
                )
            return b""
        return answer

    async def fetch_records(
        self,
        endpoint: str,
        params: Mapping[str, str],
        *,
        dataset: str,
        symbol: str | None = None,
        urgent: bool = False,
        gate: Callable[[], asyncio.Future[Any] | None] | None = None,
    ) -> list[dict[str, Any]]:
        """The endpoint's JSON array, retried on transient failures; [] means "no data".

        `urgent` skips the queue for a request slot (it is still paced): for the one request whose
        answer decides whether the queued ones are sent at all. `gate`, when given, returns a
        future the request must wait for before it is sent (or None): the caller holds requests
        there, without them holding a slot.
        """
        answer = await self._fetch_with_retries(
            endpoint, params, dataset=dataset, symbol=symbol, urgent=urgent, gate=gate, raw=False
        )
        assert isinstance(answer, list)
        return answer

    async def _fetch_with_retries(
        self,
        endpoint: str,
        params: Mapping[str, str],
        *,
        dataset: str,
        symbol: str | None,
        urgent: bool,
        gate: Callable[[], asyncio.Future[Any] | None] | None,
        raw: bool | Literal["csv"],
    ) -> list[dict[str, Any]] | bytes:
        stats = self.stats.setdefault(dataset, RequestStats())
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._request_slot(urgent, gate), self.pacer.slot():
                    if self._refused is not None:
                        # Queued before the key was refused: a second 401 would tell nothing.
                        raise self._refused
                    stats.requests += 1
                    try:
                        answer = await self._fetch_once(endpoint, params, dataset, symbol, raw)
                    except FmpError as failed:
                        stats.answered(failed.status)
                        if isinstance(failed, FmpAuthError):
                            # Before the slot is released, so no queued request goes out after it.
                            self._refused = failed
                        raise
                    stats.answered(200)
                    return answer
            except FmpError as error:
                if isinstance(error, FmpRateLimitError):
                    stats.rate_limited += 1
                if not error.transient or attempt >= self.retry.attempts:
                    stats.failed += 1
                    if error.transient:
                        error.args = (f"{error.args[0]} (gave up after {attempt} attempts)",)
                    raise
                retry_after = getattr(error, "retry_after", None)
                wait = self.retry.delay(attempt, self.rng, retry_after)
                stats.retries += 1
                log.info("retry %d in %.1f s after: %s", attempt, wait, error)
                await self.sleep(wait)

    @asynccontextmanager
    async def _request_slot(
        self, urgent: bool, gate: Callable[[], asyncio.Future[Any] | None] | None
    ) -> AsyncIterator[None]:
        """A place among the requests in flight, once nothing holds this request back."""
        while True:
            if gate is not None and (hold := gate()) is not None:
                await asyncio.wait([hold])
                continue
            if urgent:
                yield
                return
            async with self._slots:
                # A hold may have begun while this request queued for its slot: if so, give the
                # slot back to the requests that can use it and wait.
                if gate is None or gate() is None:
                    yield
                    return

    async def _fetch_once(
        self,
        endpoint: str,
        params: Mapping[str, str],
        dataset: str,
        symbol: str | None,
        raw: bool | Literal["csv"] = False,
    ) -> list[dict[str, Any]] | bytes:
        url = self.display_url(endpoint, params)
        where: dict[str, Any] = {"url": url, "dataset": dataset, "symbol": symbol}
        try:
            async with self.session.get(
                f"{self.base_url}/stable/{endpoint}",
                params={**params, "apikey": self.api_key},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                headers = response.headers
                body = await response.read()
        except TimeoutError:
            raise FmpTransportError(
                f"FMP did not answer within {self.timeout:g} s", **where
            ) from None
        except aiohttp.ClientError as error:
            detail = redact(f"{type(error).__name__}: {error}", self.api_key)
            raise FmpTransportError(f"connection to FMP failed: {detail}", **where) from None
        text = body.decode("utf-8", errors="replace")
        if raw and status == 200 and (_plain_csv(text) if raw == "csv" else _plain_array(text)):
            return body
        return self._interpret(status, headers, text, params, where)

    def _interpret(
        self,
        status: int,
        headers: Mapping[str, str],
        text: str,
        params: Mapping[str, str],
        where: dict[str, Any],
    ) -> list[dict[str, Any]]:
        def excerpt() -> str:
            # Redact before cutting: a cut inside the key would let its first characters through.
            return redact(" ".join(text.split()), self.api_key)[:200]

        if _LIMIT_REACHED in text:
            raise FmpRateLimitError(
                "FMP rate or quota limit reached",
                status=status,
                retry_after=_retry_after(headers),
                **where,
            )
        if status == 401 or _KEY_REFUSED in text:
            raise FmpAuthError("FMP refused the API key; check FMP_API_KEY", status=status, **where)
        # Error wording counts under any status but never inside a data answer (a JSON array).
        data = text.lstrip().startswith("[")
        legacy = not data and "Legacy Endpoint" in text  # keys made after 2025-08-31
        # A refusal's wording counts under a 200, 400 or 403 too, but not over a 429 or a 5xx:
        # those are retried.
        if not legacy and (
            status == 402 or (status in (200, 400, 403) and not data and _PLAN_REFUSAL.search(text))
        ):
            refusal = classify_plan_refusal(text, params)
            raise FmpPlanError(
                f"not in the FMP plan: {excerpt()}",
                scope=refusal.scope,
                rule=refusal.rule,
                parameters=refusal.parameters,
                status=status,
                **where,
            )
        if status == 403 or legacy:
            raise FmpAuthError(
                f"FMP refused access ({excerpt()}); keys created after 2025-08-31 only work on the "
                "stable API",
                status=status,
                **where,
            )
        if status == 429:
            raise FmpRateLimitError(
                "FMP rate limit (429)", status=status, retry_after=_retry_after(headers), **where
            )
        if status >= 500:
            raise FmpServerError(
                f"FMP server error {status}",
                status=status,
                retry_after=_retry_after(headers),
                **where,
            )
        if status != 200:
            raise FmpError(f"unexpected FMP response {status}: {excerpt()}", status=status, **where)
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            kind = "truncated JSON" if text.lstrip().startswith(("[", "{")) else "not JSON"
            raise FmpResponseError(
                f"FMP sent a body that is {kind}: {excerpt()}", status=status, **where
            ) from None
        if isinstance(payload, dict):
            message = payload.get("Error Message") or payload.get("error")
            if message:
                raise FmpResponseError(
                    f"FMP answered 200 with an error: {redact(str(message), self.api_key)[:200]}",
                    status=status,
                    **where,
                )
            if not payload:
                return []  # the legacy API's "unknown symbol"
            raise FmpResponseError(
                f"FMP sent an object where a list was expected: {excerpt()}", status=status, **where
            )
        if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
            raise FmpResponseError(
                f"FMP sent something other than a list of records: {excerpt()}",
                status=status,
                **where,
            )
        return payload
