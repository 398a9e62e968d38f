"""Helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

API_KEY = "test-key-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]


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
