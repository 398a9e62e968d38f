"""Benchmark: a whole backfill through the CLI against the bundled FMP simulator.

The simulator runs in its own process (as FMP would be elsewhere), the ingest in another, so the
figures are the ingester's own: wall time, requests per second, peak memory (max RSS), and from the
manifest the requests sent, rows, files and rate-limit responses.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    parser.add_argument(
        "--keep-lake",
        type=Path,
        help="land the lake here and keep it (default: a temporary folder)",
    )
    args = parser.parse_args()

    port = free_port()
    server_cmd = [sys.executable, "-m", "stock_pipeline.simulator", "--port", str(port)]
    if args.server_limit:
        server_cmd += ["--rate-limit", str(args.server_limit), "--window-seconds", "60"]
    server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()  # the "listening" line
        with tempfile.TemporaryDirectory() as scratch:
            tickers = Path(scratch) / "tickers.csv"
            tickers.write_text("symbol\n" + "".join(f"S{i:04d}\n" for i in range(args.tickers)))
            lake = args.keep_lake or Path(scratch) / "lake"
            cmd = [
                sys.executable, "-m", "stock_pipeline", "ingest",
                "--tickers-path", str(tickers), "--lake", str(lake),
                "--backfill-days", str(args.sessions), "--end", args.end,
                "--datasets", args.datasets, "--rate-limit", str(args.rate_limit),
                "--concurrency", str(args.concurrency),
                "--fmp-base-url", f"http://127.0.0.1:{port}",
            ]  # fmt: skip
            env = {**os.environ, "FMP_API_KEY": "demo"}
            started = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            # Only the ingest has ended by now: the simulator's usage is not in these figures.
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            peak_kib = usage.ru_maxrss
            ingest_cpu = usage.ru_utime + usage.ru_stime
            if done.returncode != 0:
                sys.stderr.write(done.stdout + done.stderr)
                raise SystemExit(f"ingest exited {done.returncode}")
            [manifest_path] = (lake / "_runs").glob("*.json")
            manifest = json.loads(manifest_path.read_text())
    finally:
        server.terminate()
        server.wait(timeout=10)

    summary = manifest["summary"]
    requests = sum(s["requests"] for s in summary.values())
    figures = {
        "tickers": args.tickers,
        "sessions": args.sessions,
        "datasets": args.datasets.split(","),
        "rate_limit_per_minute": args.rate_limit,
        "server_limit_per_minute": args.server_limit,
        "concurrency": args.concurrency,
        "wall_seconds": round(wall, 1),
        "requests": requests,
        "requests_per_second": round(requests / wall, 1),
        "achieved_share_of_limit": round(requests / wall * 60 / args.rate_limit, 3),
        "rate_limited_responses": sum(s["rate_limited"] for s in summary.values()),
        "retries": sum(s["retries"] for s in summary.values()),
        "rows": sum(s["rows"] for s in summary.values()),
        "price_files": summary.get("prices", {}).get("files"),
        "bytes": sum(s["bytes"] for s in summary.values()),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "ingest_cpu_seconds": round(ingest_cpu, 1),
        "ingest_cpu_ms_per_request": round(ingest_cpu / requests * 1000, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
