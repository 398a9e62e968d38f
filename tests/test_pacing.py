"""Pacing on a virtual event loop clock (aiotools.VirtualClock): minutes of traffic in moments.

FMP counts requests in any 60-second window. These tests send through `RequestPacer` as the client
does, with answers that take a while, and check the two promises: never more than the limit in any
window of the server's clock (measured at arrival and at answer), and at least 95% of the limit
over a long run.
"""

from __future__ import annotations

import asyncio
import bisect
import random

import aiotools
import pytest

from stock_pipeline.config import default_concurrency
from stock_pipeline.fmp import RequestPacer

WINDOW = 60.0


def most_in_any_window(times: list[float], window: float = WINDOW) -> int:
    """The largest number of `times` inside any half-open window [t, t + window)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


async def traffic(
    limit: int, requests: int, latency: tuple[float, float], seed: int = 7
) -> tuple[list[float], list[float], float]:
    """Send `requests` through a pacer with the client's concurrency. Each reaches the server up to
    the pacer's margin after it leaves (1 s) and is answered `latency` (uniform) after it left.
    Returns the times the server saw them, the answer times and the total elapsed time."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    pacer = RequestPacer(limit)
    slots = asyncio.Semaphore(default_concurrency(limit))
    arrived: list[float] = []
    answered: list[float] = []
    start = loop.time()

    async def one() -> None:
        async with slots, pacer.slot():
            took = rng.uniform(*latency)
            on_the_way = rng.uniform(0, min(took, pacer.latency_margin))
            await asyncio.sleep(on_the_way)
            arrived.append(loop.time())
            await asyncio.sleep(took - on_the_way)
            answered.append(loop.time())

    await asyncio.gather(*(one() for _ in range(requests)))
    return arrived, answered, loop.time() - start


@pytest.mark.parametrize(
    ("limit", "latency"),
    [
        (300, (0.02, 0.1)),
        (300, (0.2, 1.0)),
        (300, (1.0, 3.0)),
        (300, (2.0, 4.0)),
        (750, (1.0, 3.0)),
    ],
)
async def test_never_more_than_the_limit_and_at_least_95_percent_of_it(
    limit: int, latency: tuple[float, float]
) -> None:
    requests = limit * 5  # five minutes at the limit
    with aiotools.VirtualClock().patch_loop():
        arrived, _, elapsed = await traffic(limit, requests, latency)
    assert most_in_any_window(arrived) <= limit
    achieved = requests / elapsed * WINDOW
    assert achieved >= 0.95 * limit, f"{achieved:.0f}/min for a limit of {limit}/min"


async def test_the_first_minute_holds_the_limit_too() -> None:
    with aiotools.VirtualClock().patch_loop():
        arrived, _, _ = await traffic(300, 700, (0.05, 0.1))
    first = min(arrived)
    assert sum(1 for t in arrived if t < first + WINDOW) <= 300
    # Evenly spaced from the start: no burst of the whole budget at once.
    assert sum(1 for t in arrived if t < first + 1.0) <= 6


async def test_an_answer_slower_than_the_margin_delays_the_next_window_by_the_margin_only() -> None:
    with aiotools.VirtualClock().patch_loop():
        loop = asyncio.get_running_loop()
        pacer = RequestPacer(2, window=10.0, latency_margin=1.0)
        first_sent = loop.time()
        async with pacer.slot():  # an answer that takes 30 s
            await pacer.acquire()
            third = asyncio.create_task(pacer.acquire())
            await asyncio.sleep(30)
            assert third.done()
        assert pacer.sent[-1] == pytest.approx(first_sent + 1.0 + 10.0)


@pytest.mark.parametrize(("limit", "expected"), [(1, 8), (300, 20), (750, 50), (3000, 64)])
def test_default_concurrency_follows_the_rate(limit: int, expected: int) -> None:
    assert default_concurrency(limit) == expected
