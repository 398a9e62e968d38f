"""The FMP client over real HTTP on 127.0.0.1: error mapping, retries, redaction, pacing and stats.

Most tests talk to the bundled simulator; cases it cannot produce (a legacy 403, a Retry-After
header, a body echoing the request) come from a tiny aiohttp app started inside the test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
import aiotools
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from stock_pipeline.errors import (
    ExitCode,
    FmpAuthError,
    FmpError,
    FmpPlanError,
    FmpRateLimitError,
    FmpResponseError,
    FmpServerError,
    FmpTransportError,
)
from stock_pipeline.fmp import (
    FmpClient,
    PlanRefusal,
    RequestPacer,
    RequestStats,
    RetryPolicy,
    classify_plan_refusal,
)
from stock_pipeline.redaction import redact
from stock_pipeline.simulator import LEGACY_MESSAGE, Fault, FaultKind, Refusal
from tests.support import API_KEY, REPO, assert_no_secret

if TYPE_CHECKING:
    from tests.conftest import SimulatorFactory

PROFILE = "profile"
INCOME = "income-statement"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RecordingSleep:
    """An async `sleep` that returns at once and remembers what it was asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@asynccontextmanager
async def open_client(
    url: str, *, attempts: int = 3, pacer: RequestPacer | None = None, **options: Any
) -> AsyncIterator[FmpClient]:
    """A client on a fresh session; the default pacer is loose enough never to slow a test."""
    async with aiohttp.ClientSession() as session:
        yield FmpClient(
            session=session,
            base_url=url,
            api_key=API_KEY,
            pacer=pacer or RequestPacer(limit=1000, window=1.0),
            retry=RetryPolicy(attempts=attempts, base_delay=0),
            **options,
        )


@asynccontextmanager
async def serve_handler(handler: Handler) -> AsyncIterator[str]:
    """A one-handler aiohttp app on a free port of 127.0.0.1, for answers the simulator never gives."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def assert_redacted(error: FmpError) -> None:
    """Neither the message, the URL nor the repr carries the key; the URL shows it masked."""
    for text in (str(error), repr(error), error.url or ""):
        assert_no_secret(text)
    assert error.url is not None
    assert "apikey=***" in error.url
    assert "apikey=***" in str(error)


# --------------------------------------------------------------------------- error classification


async def test_wrong_key_is_an_auth_error_sent_once(fmp_server: SimulatorFactory) -> None:
    async with (
        fmp_server(api_key="another-key") as (url, simulator),
        open_client(url, attempts=5) as client,
    ):
        with pytest.raises(FmpAuthError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert caught.value.status == 401
    assert caught.value.exit_code is ExitCode.AUTH
    assert len(simulator.requests) == 1
    assert client.stats["profile"] == RequestStats(
        requests=1, retries=0, rate_limited=0, failed=1, responses={"401": 1}
    )
    assert_redacted(caught.value)


async def test_requests_queued_behind_a_refused_key_are_never_sent(
    fmp_server: SimulatorFactory,
) -> None:
    # One slot: the others wait for it, and the refusal is known before it is given back.
    async with (
        fmp_server(api_key="another-key") as (url, simulator),
        open_client(url, concurrency=1) as client,
    ):
        results = await asyncio.gather(
            *(
                client.fetch_records(PROFILE, {"symbol": symbol}, dataset="profile")
                for symbol in ("AAPL", "MSFT", "KO", "IBM")
            ),
            return_exceptions=True,
        )
    assert all(isinstance(r, FmpAuthError) for r in results)
    assert len(simulator.requests) == 1
    assert client.stats["profile"].requests == 1


async def test_legacy_403_is_an_auth_error_sent_once() -> None:
    hits: list[str] = []

    async def legacy(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"Error Message": LEGACY_MESSAGE}, status=403)

    async with serve_handler(legacy) as url, open_client(url, attempts=5) as client:
        with pytest.raises(FmpAuthError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert caught.value.status == 403
    assert "stable API" in str(caught.value)
    assert hits == ["/stable/profile"]
    assert_redacted(caught.value)


@pytest.mark.parametrize(
    ("config", "endpoint", "params", "scope"),
    [
        pytest.param(
            {"plan_gated_symbols": frozenset({"TSLA"})},
            PROFILE,
            {"symbol": "TSLA"},
            "symbol",
            id="symbol-not-in-plan",
        ),
        pytest.param(
            {"gated_endpoints": frozenset({PROFILE})},
            PROFILE,
            {"symbol": "AAPL"},
            "dataset",
            id="endpoint-not-in-plan",
        ),
        pytest.param(
            {"max_statement_limit": 5},
            INCOME,
            {"symbol": "AAPL", "limit": "10"},
            "parameters",
            id="parameter-not-in-plan",
        ),
    ],
)
async def test_402_is_a_plan_error_with_its_scope(
    fmp_server: SimulatorFactory,
    config: dict[str, Any],
    endpoint: str,
    params: dict[str, str],
    scope: str,
) -> None:
    async with fmp_server(**config) as (url, simulator), open_client(url, attempts=4) as client:
        with pytest.raises(FmpPlanError) as caught:
            await client.fetch_records(endpoint, params, dataset="d", symbol=params["symbol"])

    assert caught.value.scope == scope
    assert caught.value.status == 402
    assert caught.value.symbol == params["symbol"]
    assert len(simulator.requests) == 1, "a plan error is not retried"
    assert_redacted(caught.value)


@pytest.mark.parametrize("attempts", [1, 3])
async def test_429_is_retried_then_a_rate_limit_error(
    fmp_server: SimulatorFactory, attempts: int
) -> None:
    # A limit of 0 refuses every request with FMP's 429 "Limit Reach" body.
    async with (
        fmp_server(rate_limit=0) as (url, simulator),
        open_client(url, attempts=attempts) as client,
    ):
        with pytest.raises(FmpRateLimitError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert simulator.status_counts() == {429: attempts}
    assert caught.value.status == 429
    assert f"gave up after {attempts} attempts" in str(caught.value)
    stats = client.stats["profile"]
    assert (stats.requests, stats.rate_limited, stats.retries, stats.failed) == (
        attempts,
        attempts,
        attempts - 1,
        1,
    )
    assert_redacted(caught.value)


@pytest.mark.parametrize(("kind", "status"), [("limit_reach_200", 200), ("limit_reach_402", 402)])
async def test_limit_reach_text_under_another_status_is_a_rate_limit(
    fmp_server: SimulatorFactory, kind: FaultKind, status: int
) -> None:
    faults = {"AAPL": (Fault(kind=kind),)}
    async with (
        fmp_server(faults=faults) as (url, simulator),
        open_client(url, attempts=3) as client,
    ):
        with pytest.raises(FmpRateLimitError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert simulator.status_counts() == {status: 3}
    assert caught.value.status == status
    assert client.stats["profile"].rate_limited == 3
    assert client.stats["profile"].failed == 1
    assert_redacted(caught.value)


@pytest.mark.parametrize("as_bytes", [False, True], ids=["records", "bytes"])
@pytest.mark.parametrize(
    ("kind", "times", "statuses"),
    [
        pytest.param("server_error", 2, {503: 2, 200: 1}, id="server-error"),
        pytest.param("truncated", 1, {200: 2}, id="truncated"),
    ],
)
async def test_transient_faults_are_retried_until_success(
    fmp_server: SimulatorFactory,
    kind: FaultKind,
    times: int,
    statuses: dict[int, int],
    as_bytes: bool,
) -> None:
    # An array fetched as bytes (`fetch_array`) is judged and retried as one fetched as records.
    faults = {"AAPL": (Fault(kind=kind, times=times),)}
    async with (
        fmp_server(faults=faults) as (url, simulator),
        open_client(url, attempts=3) as client,
    ):
        if as_bytes:
            body = await client.fetch_array(PROFILE, {"symbol": "AAPL"}, dataset="profile")
            records = json.loads(body)
        else:
            records = await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert [record["symbol"] for record in records] == ["AAPL"]
    assert simulator.status_counts() == statuses
    assert client.stats["profile"] == RequestStats(
        requests=times + 1,
        retries=times,
        rate_limited=0,
        failed=0,
        # The client counts every answer by status, as the server sent them.
        responses={str(status): count for status, count in statuses.items()},
    )


async def test_an_error_in_a_200_is_an_error_when_fetched_as_bytes(
    fmp_server: SimulatorFactory,
) -> None:
    faults = {"AAPL": (Fault(kind="error_in_200"),)}
    async with fmp_server(faults=faults) as (url, _), open_client(url) as client:
        with pytest.raises(FmpResponseError):
            await client.fetch_array(PROFILE, {"symbol": "AAPL"}, dataset="profile")


async def test_dropped_connections_are_retried_until_success(fmp_server: SimulatorFactory) -> None:
    # aiohttp itself resends an idempotent request once when the server hangs up without an
    # answer, so two drops in a row are what reach the client's own retry.
    faults = {"AAPL": (Fault(kind="drop_connection", times=2),)}
    async with (
        fmp_server(faults=faults) as (url, simulator),
        open_client(url, attempts=3) as client,
    ):
        records = await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert [record["symbol"] for record in records] == ["AAPL"]
    assert simulator.status_counts() == {0: 2, 200: 1}
    stats = client.stats["profile"]
    assert (stats.retries, stats.failed) == (1, 0)


async def test_a_connection_that_always_drops_is_a_transport_error(
    fmp_server: SimulatorFactory,
) -> None:
    faults = {"AAPL": (Fault(kind="drop_connection"),)}
    async with (
        fmp_server(faults=faults) as (url, simulator),
        open_client(url, attempts=2) as client,
    ):
        with pytest.raises(FmpTransportError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert "connection to FMP failed" in str(caught.value)
    assert "gave up after 2 attempts" in str(caught.value)
    # Each of the client's two attempts went out twice: once more by aiohttp's own resend.
    assert simulator.status_counts() == {0: 4}
    assert client.stats["profile"].failed == 1
    assert_redacted(caught.value)


async def test_server_error_that_persists_is_a_server_error(fmp_server: SimulatorFactory) -> None:
    faults = {"AAPL": (Fault(kind="server_error"),)}
    async with (
        fmp_server(faults=faults) as (url, simulator),
        open_client(url, attempts=2) as client,
    ):
        with pytest.raises(FmpServerError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert simulator.status_counts() == {503: 2}
    assert caught.value.status == 503
    assert_redacted(caught.value)


@pytest.mark.parametrize(
    ("kind", "wording"), [("not_json", "not JSON"), ("error_in_200", "answered 200 with an error")]
)
async def test_bad_200_bodies_fail_as_response_errors_after_retries(
    fmp_server: SimulatorFactory, kind: FaultKind, wording: str
) -> None:
    faults = {"AAPL": (Fault(kind=kind),)}
    async with (
        fmp_server(faults=faults) as (url, simulator),
        open_client(url, attempts=3) as client,
    ):
        with pytest.raises(FmpResponseError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert wording in str(caught.value)
    assert "gave up after 3 attempts" in str(caught.value)
    assert simulator.status_counts() == {200: 3}
    assert client.stats["profile"] == RequestStats(
        requests=3, retries=2, rate_limited=0, failed=1, responses={"200": 3}
    )
    assert_redacted(caught.value)


async def test_a_slow_answer_times_out_as_a_transport_error(fmp_server: SimulatorFactory) -> None:
    faults = {"AAPL": (Fault(kind="slow", delay=0.5),)}
    async with (
        fmp_server(faults=faults) as (url, simulator),
        open_client(url, attempts=2, timeout=0.1) as client,
    ):
        with pytest.raises(FmpTransportError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert "did not answer" in str(caught.value)
    assert len(simulator.requests) == 2
    assert client.stats["profile"].failed == 1
    assert_redacted(caught.value)


async def test_refused_connection_is_a_transport_error_without_the_key() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe is closed, so connecting is refused.
    async with open_client(f"http://127.0.0.1:{port}", attempts=2) as client:
        with pytest.raises(FmpTransportError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert "connection to FMP failed" in str(caught.value)
    assert client.stats["profile"] == RequestStats(
        requests=2, retries=1, rate_limited=0, failed=1, responses={"none": 2}
    )
    assert_redacted(caught.value)


@pytest.mark.parametrize(
    ("config", "symbol"),
    [
        pytest.param({"unknown_symbols": frozenset({"NOPE"})}, "NOPE", id="unknown-symbol"),
        pytest.param({}, "AAPL,MSFT", id="two-symbols"),
    ],
)
async def test_no_data_is_an_empty_list(
    fmp_server: SimulatorFactory, config: dict[str, Any], symbol: str
) -> None:
    async with fmp_server(**config) as (url, simulator), open_client(url) as client:
        records = await client.fetch_records(PROFILE, {"symbol": symbol}, dataset="profile")

    assert records == []
    assert simulator.status_counts() == {200: 1}
    assert client.stats["profile"].failed == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("{}", [], id="legacy-empty-object"),
        pytest.param('{"symbol": "AAPL"}', FmpResponseError, id="object-not-list"),
        pytest.param("[1, 2]", FmpResponseError, id="list-of-scalars"),
    ],
)
async def test_200_bodies_that_are_not_record_lists(body: str, expected: object) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body.encode(), content_type="application/json")

    async with serve_handler(answer) as url, open_client(url, attempts=1) as client:
        if expected == []:
            assert await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="d") == []
        else:
            with pytest.raises(FmpResponseError) as caught:
                await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="d")
            assert_redacted(caught.value)


# --------------------------------------------------------------------------- Retry-After and backoff


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("7", 7.0, id="seconds"),
        pytest.param("-3", 0.0, id="negative-clamped"),
        pytest.param("1000", 60.0, id="capped-at-max-delay"),
        # An HTTP date is not parsed; the policy's backoff (0 with base_delay=0) applies.
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, id="http-date-falls-back"),
    ],
)
async def test_retry_after_decides_the_wait(header: str, expected: float) -> None:
    answers = [
        web.Response(status=503, text="busy", headers={"Retry-After": header}),
        web.Response(body=b"[]", content_type="application/json"),
    ]

    async def once_busy(request: web.Request) -> web.Response:
        return answers.pop(0)

    sleep = RecordingSleep()
    async with serve_handler(once_busy) as url, open_client(url, attempts=3, sleep=sleep) as client:
        records = await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert records == []
    assert sleep.calls == [expected]
    assert answers == []
    assert client.stats["profile"] == RequestStats(
        requests=2, retries=1, rate_limited=0, failed=0, responses={"503": 1, "200": 1}
    )


async def test_a_non_numeric_retry_after_never_becomes_a_nan_wait() -> None:
    # float() accepts "nan"; a NaN delay would reach asyncio.sleep.
    answers = [
        web.Response(status=503, text="busy", headers={"Retry-After": "nan"}),
        web.Response(body=b"[]", content_type="application/json"),
    ]

    async def once_busy(request: web.Request) -> web.Response:
        return answers.pop(0)

    sleep = RecordingSleep()
    async with serve_handler(once_busy) as url, open_client(url, attempts=3, sleep=sleep) as client:
        await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")

    assert len(sleep.calls) == 1
    assert math.isfinite(sleep.calls[0])
    assert 0.0 <= sleep.calls[0] <= 60.0


def test_backoff_is_full_jitter_under_a_doubling_ceiling_capped_at_max_delay() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=10.0)
    rng = random.Random(20240601)
    for attempt in range(1, 10):
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in delays), attempt
        # Full jitter spreads over the whole range, so the ceiling is approached, not just respected.
        assert max(delays) > 0.8 * ceiling, attempt
        assert min(delays) < 0.2 * ceiling, attempt


def test_retry_after_overrides_the_backoff() -> None:
    policy = RetryPolicy(base_delay=100.0, max_delay=30.0)
    rng = random.Random(1)
    assert policy.delay(1, rng, retry_after=7.0) == 7.0
    assert policy.delay(5, rng, retry_after=90.0) == 30.0
    assert policy.delay(1, rng, retry_after=-1.0) == 0.0


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            f"https://fmp.example/stable/profile?symbol=AAPL&apikey={API_KEY}",
            "https://fmp.example/stable/profile?symbol=AAPL&apikey=***",
            id="last",
        ),
        pytest.param(
            f"https://fmp.example/stable/profile?apikey={API_KEY}&symbol=AAPL",
            "https://fmp.example/stable/profile?apikey=***&symbol=AAPL",
            id="first",
        ),
        pytest.param(
            f"GET /stable/profile?APIKEY={API_KEY} failed",
            "GET /stable/profile?APIKEY=*** failed",
            id="upper-case",
        ),
        pytest.param(
            f"/stable/profile?apiKey={API_KEY}#top", "/stable/profile?apiKey=***#top", id="fragment"
        ),
        pytest.param(
            f"url='/a?apikey={API_KEY}' then \"/b?apikey=other&x=1\"",
            "url='/a?apikey=***' then \"/b?apikey=***&x=1\"",
            id="several-quoted",
        ),
        pytest.param("/a?apikey=&x=1", "/a?apikey=***&x=1", id="empty-value"),
        pytest.param("/a?symbol=AAPL", "/a?symbol=AAPL", id="nothing-to-hide"),
    ],
)
def test_redact_masks_every_apikey_value(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_removes_the_secret_from_any_text() -> None:
    text = f"header X-Key: {API_KEY}; again {API_KEY}."
    assert redact(text, API_KEY) == "header X-Key: ***; again ***."
    assert redact(text) == text, "without a secret only apikey= values are masked"
    assert redact(text, "") == text


async def test_error_bodies_echoing_the_request_are_redacted() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=418, text=f"cannot brew {request.url}")

    async with serve_handler(echo) as url, open_client(url, attempts=1) as client:
        with pytest.raises(FmpError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="d")

    assert "cannot brew" in str(caught.value)
    assert caught.value.status == 418
    assert_redacted(caught.value)


async def test_error_in_200_echoing_the_key_is_redacted() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"Error Message": f"key {request.query['apikey']} is odd"})

    async with serve_handler(echo) as url, open_client(url, attempts=1) as client:
        with pytest.raises(FmpResponseError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="d")

    assert "key *** is odd" in str(caught.value)
    assert_redacted(caught.value)


async def test_a_long_body_cut_inside_the_key_leaks_no_part_of_it() -> None:
    # The excerpt keeps 200 characters; a key echoed across that cut must not survive in part.
    padding = "x" * (200 - len(API_KEY) + 2)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=418, text=padding + request.query["apikey"])

    async with serve_handler(echo) as url, open_client(url, attempts=1) as client:
        with pytest.raises(FmpError) as caught:
            await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="d")

    assert API_KEY[:-2] not in str(caught.value)


async def test_the_client_repr_hides_the_key(fmp_server: SimulatorFactory) -> None:
    async with fmp_server() as (url, _), open_client(url) as client:
        assert_no_secret(repr(client))
        assert client.display_url(PROFILE, {"symbol": "AAPL"}) == (
            f"{url}/stable/profile?symbol=AAPL&apikey=***"
        )


# --------------------------------------------------------------------------- pacing


async def test_pacer_refuses_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RequestPacer(limit=0, window=1.0)


async def test_pacer_never_lets_more_than_limit_through_in_any_window() -> None:
    limit, window = 5, 0.5
    pacer = RequestPacer(limit=limit, window=window)
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def send() -> None:
        await pacer.acquire()
        times.append(loop.time())

    # The loop's own clock, fast-forwarded: spacing is exact, whatever else the machine runs.
    with aiotools.VirtualClock().patch_loop():
        await asyncio.gather(*(send() for _ in range(16)))

    times.sort()
    assert len(times) == 16
    for i in range(len(times) - limit):
        assert times[i + limit] - times[i] >= window - 1e-9, f"sends {i}..{i + limit} in one window"
    spacing = window / limit * 0.9
    assert all(later - earlier >= spacing for earlier, later in itertools.pairwise(times)), (
        "a burst"
    )
    assert len(pacer.sent) == limit


async def test_paced_client_never_trips_the_simulators_sliding_window(
    fmp_server: SimulatorFactory,
) -> None:
    async with (
        fmp_server(rate_limit=5, window_seconds=0.5) as (url, simulator),
        open_client(url, attempts=1, pacer=RequestPacer(limit=5, window=0.5)) as client,
    ):
        results = await asyncio.gather(
            *(
                client.fetch_records(PROFILE, {"symbol": f"S{i}"}, dataset="profile")
                for i in range(15)
            ),
            return_exceptions=True,
        )

    assert [r for r in results if isinstance(r, BaseException)] == []
    assert simulator.status_counts() == {200: 15}
    assert client.stats["profile"].rate_limited == 0


# --------------------------------------------------------------------------- stats


async def test_stats_count_each_datasets_traffic(fmp_server: SimulatorFactory) -> None:
    faults = {
        "AAPL": (Fault(kind="server_error", times=2),),
        "MSFT": (Fault(kind="limit_reach_200"),),
    }
    async with (
        fmp_server(faults=faults, plan_gated_symbols=frozenset({"TSLA"})) as (url, simulator),
        open_client(url, attempts=3) as client,
    ):
        await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="profile")
        await client.fetch_records(PROFILE, {"symbol": "IBM"}, dataset="profile")
        with pytest.raises(FmpRateLimitError):
            await client.fetch_records(INCOME, {"symbol": "MSFT"}, dataset="income")
        with pytest.raises(FmpPlanError):
            await client.fetch_records(INCOME, {"symbol": "TSLA"}, dataset="income")

    assert client.stats == {
        "profile": RequestStats(
            requests=4, retries=2, rate_limited=0, failed=0, responses={"503": 2, "200": 2}
        ),
        # MSFT's "Limit Reach" comes under a 200, three times; TSLA's refusal is a 402.
        "income": RequestStats(
            requests=4, retries=2, rate_limited=3, failed=2, responses={"200": 3, "402": 1}
        ),
    }
    assert len(simulator.requests) == 8


async def test_pacer_counts_a_slow_request_from_when_its_answer_came_back() -> None:
    loop = asyncio.get_running_loop()
    pacer = RequestPacer(limit=2, window=0.2)
    with aiotools.VirtualClock().patch_loop():
        async with pacer.slot():  # a request whose answer takes longer than the window
            await pacer.acquire()
            third = asyncio.create_task(pacer.acquire())
            await asyncio.sleep(0.3)  # the slow answer, on the virtual clock
            assert not third.done()  # the server may not have counted the slow request yet
            answered = loop.time()
        await third
    assert pacer.sent[-1] >= answered + 0.2 - 1e-9


def test_a_short_key_is_redacted_in_urls_but_leaves_words_alone() -> None:
    assert redact("./demo-lake and ?apikey=demo&x=1", "demo") == "./demo-lake and ?apikey=***&x=1"


REFUSALS: list[dict[str, Any]] = json.loads(
    (REPO / "tests" / "fixtures" / "fmp" / "plan_refusals.json").read_text()
)["refusals"]
MARKED = [r for r in REFUSALS if r["marked"]]
UNMARKED = [r for r in REFUSALS if not r["marked"]]
STATEMENT_PARAMS = {"symbol": "AMZN", "period": "quarter", "limit": "10"}


def _refusal(entry: dict[str, Any], status: int = 402) -> Refusal:
    return Refusal(text=entry["text"], status=status, as_json=entry["as_json"])


def _body(entry: dict[str, Any], symbol: str) -> str:
    text = entry["text"].replace("{symbol}", symbol)
    return json.dumps({"Error Message": text}) if entry["as_json"] else text


@pytest.mark.parametrize("entry", REFUSALS, ids=[r["id"] for r in REFUSALS])
def test_each_wording_gets_the_scope_its_words_support(entry: dict[str, Any]) -> None:
    refusal = classify_plan_refusal(_body(entry, "AMZN"), STATEMENT_PARAMS)
    assert refusal.scope == entry["scope"]
    expected_rule = {
        "symbol": "symbol refusal",
        "parameters": "parameter refusal",
        "dataset": "endpoint refusal",
        "unknown": "unknown wording",
    }
    assert expected_rule[refusal.scope] in refusal.rule


def test_a_parameter_refusal_covers_the_value_the_request_sent() -> None:
    text = "Premium Query Parameter: The values for 'limit' must be between 0 and 5"
    assert classify_plan_refusal(text, STATEMENT_PARAMS) == PlanRefusal(
        "parameters", "parameter refusal: 'limit=10'", (("limit", "10"),)
    )
    assert classify_plan_refusal(text, {"symbol": "AMZN"}).scope == "unknown"


def test_a_refusal_covers_the_requests_that_send_what_it_refuses() -> None:
    quarter = FmpPlanError("x", scope="parameters", rule="r", parameters=(("period", "quarter"),))
    assert quarter.refuses({"symbol": "MSFT", "period": "quarter", "limit": "24"})
    assert not quarter.refuses({"symbol": "MSFT", "period": "annual", "limit": "7"})
    endpoint = FmpPlanError("x", scope="dataset", rule="r")
    assert endpoint.refuses({"symbol": "MSFT"})
    assert not FmpPlanError("x", scope="symbol", rule="r").refuses({"symbol": "MSFT"})


@given(
    st.lists(
        st.sampled_from(
            ["Premium", "Query", "Parameter:", "not available", "under your current subscription",
             "upgrade", "plan", "'AMZ'", "symbol", "Endpoint", "Special", "values", "402", ":"]
        )
        | st.text(max_size=12),
        max_size=12,
    ).map(" ".join)
)  # fmt: skip
def test_no_wording_refuses_more_than_its_symbol_unless_it_names_the_endpoint_or_a_parameter(
    text: str,
) -> None:
    scope = classify_plan_refusal(text, STATEMENT_PARAMS).scope
    assert scope != "dataset" or re.search(r"(?i)(restricted|exclusive) endpoint", text)
    assert scope != "parameters" or re.search(r"(?i)values? (set )?for '(period|limit)'", text)


@pytest.mark.parametrize("status", [402, 200, 400, 403])
@pytest.mark.parametrize("entry", MARKED, ids=[r["id"] for r in MARKED])
async def test_a_refusal_is_a_plan_error_whatever_its_status(
    fmp_server: SimulatorFactory, entry: dict[str, Any], status: int
) -> None:
    config = {"plan_gated_symbols": frozenset({"AMZN"}), "symbol_refusal": _refusal(entry, status)}
    async with fmp_server(**config) as (url, simulator), open_client(url, attempts=4) as client:
        with pytest.raises(FmpPlanError) as caught:
            await client.fetch_records(INCOME, STATEMENT_PARAMS, dataset="d", symbol="AMZN")

    assert (caught.value.scope, caught.value.status) == (entry["scope"], status)
    assert caught.value.rule in str(caught.value)
    assert len(simulator.requests) == 1, "a plan refusal is not retried"
    assert_redacted(caught.value)


@pytest.mark.parametrize("status", [429, 503])
async def test_refusal_words_in_a_rate_limit_or_server_error_are_retried(
    fmp_server: SimulatorFactory, status: int
) -> None:
    entry = MARKED[0]
    config = {"plan_gated_symbols": frozenset({"AMZN"}), "symbol_refusal": _refusal(entry, status)}
    async with fmp_server(**config) as (url, simulator), open_client(url, attempts=3) as client:
        with pytest.raises(FmpError) as caught:
            await client.fetch_records(INCOME, STATEMENT_PARAMS, dataset="d", symbol="AMZN")
    assert type(caught.value) is {429: FmpRateLimitError, 503: FmpServerError}[status]
    assert len(simulator.requests) == 3


@pytest.mark.parametrize(
    ("status", "error"),
    [(402, FmpPlanError), (403, FmpAuthError), (200, FmpResponseError), (400, FmpError)],
)
@pytest.mark.parametrize("entry", UNMARKED, ids=[r["id"] for r in UNMARKED])
async def test_an_unfamiliar_wording_is_a_plan_refusal_only_under_402(
    fmp_server: SimulatorFactory, entry: dict[str, Any], status: int, error: type[FmpError]
) -> None:
    config = {"plan_gated_symbols": frozenset({"AMZN"}), "symbol_refusal": _refusal(entry, status)}
    async with fmp_server(**config) as (url, _), open_client(url, attempts=1) as client:
        with pytest.raises(FmpError) as caught:
            await client.fetch_records(INCOME, STATEMENT_PARAMS, dataset="d", symbol="AMZN")

    assert type(caught.value) is error
    if isinstance(caught.value, FmpPlanError):
        assert (caught.value.scope, caught.value.rule) == ("unknown", "unknown wording")


async def test_an_urgent_request_does_not_queue_behind_the_others(
    fmp_server: SimulatorFactory,
) -> None:
    async with (
        fmp_server(faults={"*": (Fault(kind="slow", delay=0.3),)}) as (url, simulator),
        open_client(url, concurrency=1) as client,
    ):
        queued = [
            asyncio.create_task(client.fetch_records(PROFILE, {"symbol": s}, dataset="p"))
            for s in ("MSFT", "KO", "IBM")
        ]
        await asyncio.sleep(0)  # the queue forms: one request in flight, two waiting for a slot
        await client.fetch_records(PROFILE, {"symbol": "AAPL"}, dataset="p", urgent=True)
        order = [r.params["symbol"] for r in simulator.requests]
        await asyncio.gather(*queued)

    # KO and IBM wait for MSFT's slow answer; the urgent request went out beside it.
    assert set(order[:2]) == {"MSFT", "AAPL"}
