"""Benchmark: a whole backfill through the CLI against the bundled FMP simulator.

The simulator runs in its own process (as FMP would be elsewhere), the ingest in another, so the
figures are the ingester's own: wall time, requests per second, peak memory (max RSS), and from the
manifest the requests sent, rows, files and rate-limit responses.

With `--floor`, the same requests are first fetched by a client that reads every answer and
throws the bytes away (aiohttp, same concurrency, same simulator, its own process): the time no
ingester can beat on this machine. The product's wall time is then reported as a ratio to it.

    .venv/bin/python benchmarks/backfill.py --tickers 500 --sessions 1260            # unthrottled
    .venv/bin/python benchmarks/backfill.py --tickers 300 --sessions 5 \\
        --rate-limit 600 --server-limit 600                                          # paced
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from figures import report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tickers", type=int, default=500)
    parser.add_argument(
        "--sessions", type=int, default=1260, help="--backfill-days (1260 = 5 years)"
    )
    parser.add_argument("--end", default="2026-11-20")
    parser.add_argument(
        "--datasets", default="prices,income_statement,balance_sheet,cash_flow,profile"
    )
    parser.add_argument("--rate-limit", type=int, default=1_000_000, help="client requests/minute")
    parser.add_argument("--server-limit", type=int, default=None, help="simulator requests/minute")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--prices-source",
        choices=("auto", "bulk", "symbol"),
        default="symbol",
        help="the ingest's --prices-source (default symbol: a backfill's usual choice)",
    )
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    parser.add_argument(
        "--keep-lake",
        type=Path,
        help="land the lake here and keep it (default: a temporary folder)",
    )
    parser.add_argument(
        "--floor", action="store_true", help="measure the fetch-and-discard floor first"
    )
    parser.add_argument(
        "--s3",
        action="store_true",
        help="land in S3: a moto server on 127.0.0.1, in a process of its own",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure floor and ingest this many times, in turns; report the median",
    )
    parser.add_argument("--floor-worker", type=int, help=argparse.SUPPRESS)  # the simulator port
    args = parser.parse_args()
    if args.keep_lake and args.repeat > 1:
        parser.error("--keep-lake keeps one run's lake: use it without --repeat")
    if args.floor_worker:
        print(json.dumps(fetch_and_discard(args, args.floor_worker)))
        return

    port = free_port()
    # The lakes stay until every run has ended: on a file system without a journal, ext4 looks
    # past every inode freed in the last minutes when it makes a file, so deleting a run's lake
    # right before the next run made that run's files slower (found with perf).
    universe = tempfile.TemporaryDirectory()
    tickers = Path(universe.name) / "tickers.csv"
    tickers.write_text("symbol\n" + "".join(f"S{i:04d}\n" for i in range(args.tickers)))
    server_cmd = [
        sys.executable, "-m", "stock_pipeline.simulator", "--port", str(port),
        "--market", str(tickers),
    ]  # fmt: skip
    if args.server_limit:
        server_cmd += ["--rate-limit", str(args.server_limit), "--window-seconds", "60"]
    server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, text=True)
    floors: list[dict[str, float]] = []
    runs: list[dict[str, Any]] = []
    try:
        assert server.stdout is not None
        server.stdout.readline()  # the "listening" line
        # Floor and product take turns, so a slow minute of a shared machine hits both alike.
        for _ in range(args.repeat):
            if args.floor:
                floors.append(measure_floor(args, port))
            lake = args.keep_lake or Path(universe.name) / f"lake-{len(runs)}"
            runs.append(measure_ingest(args, port, tickers, lake))
    finally:
        server.terminate()
        server.wait(timeout=10)
        universe.cleanup()

    figures = {
        "tickers": args.tickers,
        "sessions": args.sessions,
        "datasets": args.datasets.split(","),
        "rate_limit_per_minute": args.rate_limit,
        "server_limit_per_minute": args.server_limit,
        "concurrency": args.concurrency,
        "prices_source": args.prices_source,
        "lake": "s3 (moto on 127.0.0.1)" if args.s3 else "local",
        "date": time.strftime("%Y-%m-%d"),
        **_median_run(runs),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    if args.repeat > 1:
        figures["runs"] = runs
    if floors:
        figures["floor"] = _median_run(floors)
        ratios = sorted(
            r["wall_seconds"] / f["wall_seconds"] for r, f in zip(runs, floors, strict=True)
        )
        figures["wall_to_floor"] = round(statistics.median(ratios), 2)
        if args.repeat > 1:
            figures["floors"] = floors
            figures["wall_to_floor_each"] = [round(r, 2) for r in ratios]
    report(figures, args.output)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time (of an even number, the one just above the middle)."""
    return sorted(runs, key=lambda r: r["wall_seconds"])[len(runs) // 2]


def measure_ingest(
    args: argparse.Namespace, port: int, tickers: Path, lake: Path
) -> dict[str, Any]:
    """One ingest through the CLI, into a fresh lake: its figures and the manifest's counts."""
    s3 = start_s3() if args.s3 else None
    try:
        cpu_before = _children_cpu()
        cmd = [
            sys.executable, "-m", "stock_pipeline", "ingest",
            "--tickers-path", str(tickers), "--lake", s3.uri if s3 else str(lake),
            "--backfill-days", str(args.sessions), "--end", args.end,
            "--datasets", args.datasets, "--rate-limit", str(args.rate_limit),
            "--concurrency", str(args.concurrency),
            "--prices-source", args.prices_source,
            "--fmp-base-url", f"http://127.0.0.1:{port}",
        ]  # fmt: skip
        env = {**os.environ, "FMP_API_KEY": "demo", **(s3.env if s3 else {})}
        started = time.perf_counter()
        launched = time.time()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        # Only the ingest has ended by now: the simulator's usage is not in these figures
        # (the peak is the largest of any ended child: the floor's is far below).
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        ingest_cpu = usage.ru_utime + usage.ru_stime - cpu_before
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"ingest exited {done.returncode}")
        if s3:
            manifest = s3.manifest()
        else:
            [manifest_path] = (lake / "_runs").glob("*.json")
            manifest = json.loads(manifest_path.read_text())
    finally:
        if s3:
            s3.stop()
    summary = manifest["summary"]
    requests = sum(s["requests"] for s in summary.values())
    return {
        "wall_seconds": round(wall, 1),
        "requests": requests,
        "requests_per_second": round(requests / wall, 1),
        "achieved_share_of_limit": round(requests / wall * 60 / args.rate_limit, 3),
        "rate_limited_responses": sum(s["rate_limited"] for s in summary.values()),
        "retries": sum(s["retries"] for s in summary.values()),
        "rows": sum(s["rows"] for s in summary.values()),
        "price_files": summary.get("prices", {}).get("files"),
        "bytes": sum(s["bytes"] for s in summary.values()),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "ingest_cpu_seconds": round(ingest_cpu, 1),
        "ingest_cpu_ms_per_request": round(ingest_cpu / requests * 1000, 2),
        # From the ingest's log: when its last request ended, so the landing after the last
        # answer (one file per session needs every symbol in) shows on its own.
        **phases(done.stderr, launched, wall),
    }


def phases(log: str, launched: float, wall: float) -> dict[str, float]:
    """Seconds from the ingest's launch to its last answer (its log's 100% line), and from
    there to its end."""
    import datetime as dt
    import re

    for match in re.finditer(r"^(\S+ \S+) \w+ progress: (\d+)/\2 requests", log, re.MULTILINE):
        last = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return {
            "to_last_answer_seconds": round(last - launched, 1),
            "after_last_answer_seconds": round(wall - (last - launched), 1),
        }
    return {}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class S3Server:
    """A moto S3 server in a process of its own, with one bucket for the lake."""

    def __init__(self) -> None:
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        moto = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.uri = "s3://bench/lake"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def manifest(self) -> dict[str, Any]:
        client = self.client()
        [key] = [
            o["Key"]
            for o in client.list_objects_v2(Bucket="bench", Prefix="lake/_runs/")["Contents"]
        ]
        return json.loads(client.get_object(Bucket="bench", Key=key)["Body"].read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_s3() -> S3Server:
    server = S3Server()
    for _ in range(100):
        try:
            server.client().create_bucket(Bucket="bench")
            return server
        except Exception:  # not listening yet
            time.sleep(0.1)
    server.stop()
    raise SystemExit("the moto S3 server did not start")


def measure_floor(args: argparse.Namespace, port: int) -> dict[str, float]:
    """Run the fetch-and-discard client in a process of its own; its wall time, CPU and RSS."""
    cpu_before = _children_cpu()
    cmd = [sys.executable, __file__, "--floor-worker", str(port)]
    for name in ("tickers", "sessions", "end", "datasets", "concurrency", "prices_source"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    measured = json.loads(done.stdout)
    return {
        "wall_seconds": round(wall, 1),
        "fetch_seconds": measured["seconds"],
        "requests": measured["requests"],
        "megabytes": measured["megabytes"],
        "cpu_seconds": round(_children_cpu() - cpu_before, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def fetch_and_discard(args: argparse.Namespace, port: int) -> dict[str, float]:
    """Every request the ingest would send (its own plan), each answer read and dropped."""
    import asyncio
    import datetime as dt

    import aiohttp

    from stock_pipeline.plan import plan_run, resolve_range

    end = dt.date.fromisoformat(args.end)
    start, end = resolve_range(end=end, start=None, backfill_days=args.sessions, last_landed=None)
    plan = plan_run(
        run_id="floor",
        symbols=[f"S{i:04d}" for i in range(args.tickers)],
        datasets=args.datasets.split(","),
        start=start,
        end=end,
        prices_source=args.prices_source,
    )
    from stock_pipeline.datasets import DATASETS
    from stock_pipeline.plan import Request

    def endpoint(request: Request) -> str:
        market = DATASETS[request.dataset].market
        return market.endpoint if request.market and market else DATASETS[request.dataset].endpoint

    async def run() -> tuple[float, int]:
        slots = asyncio.Semaphore(args.concurrency)
        received = 0
        async with aiohttp.ClientSession() as session:

            async def one(request: Request) -> None:
                nonlocal received
                async with slots:
                    url = f"http://127.0.0.1:{port}/stable/{endpoint(request)}"
                    query = {**dict(request.params), "apikey": "demo"}
                    async with session.get(url, params=query) as response:
                        received += len(await response.read())

            started = time.perf_counter()
            await asyncio.gather(*(one(r) for r in plan.requests))
            return time.perf_counter() - started, received

    seconds, received = asyncio.run(run())
    return {
        "seconds": round(seconds, 2),
        "requests": len(plan.requests),
        "megabytes": round(received / 1e6, 1),
    }


if __name__ == "__main__":
    main()
