"""Helpers shared by the tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from moto.server import ThreadedMotoServer

API_KEY = "test-key-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]
#: The path of a Slack webhook is its secret.
TOKEN = "T000/B000/SECRET-TOKEN"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def all_text_under(root: Path) -> str:
    """Every file's bytes under `root`, decoded loosely, for leak checks."""
    return "\n".join(p.read_bytes().decode("latin-1") for p in files_under(root))


def assert_no_secret(text: str, secret: str = API_KEY) -> None:
    assert secret not in text, "the API key leaked"


def write_tickers(path: Path, *symbols: str) -> Path:
    """A tickers file (a `symbol` column) at `path`."""
    path.write_text("symbol\n" + "\n".join(symbols) + "\n")
    return path


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers with the next status."""

    def __init__(self, statuses: list[int]) -> None:
        self.posts: list[dict[str, str]] = []
        self.statuses = statuses
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append(json.loads(body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{TOKEN}"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server speaking real HTTP on 127.0.0.1, stopped on exit: its endpoint URL. (moto's
    state is the process's, shared by every server.)"""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
