"""config.py: settings validated before any request, and the tickers file."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from stock_pipeline.config import Settings, parse_datasets, parse_shard, read_tickers
from stock_pipeline.datasets import DATASETS, DEFAULT_DATASETS
from stock_pipeline.errors import ConfigError, ExitCode

REPO = Path(__file__).resolve().parents[1]
SYMBOL = re.compile(r"^[A-Z0-9^][A-Z0-9.\-^=]*$")


def write(text: str, name: str = "tickers.csv") -> Path:
    path = Path(name)  # relative to tmp_path: the autouse fixture chdirs there
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_symbols_in_file_order() -> None:
    assert read_tickers(write("symbol,name\nMSFT,Microsoft\nAAPL,Apple\n")) == ("MSFT", "AAPL")


def test_a_utf8_bom_is_ignored() -> None:
    path = Path("bom.csv")
    path.write_bytes(b"\xef\xbb\xbfsymbol,name\nAAPL,Apple\n")
    assert read_tickers(path) == ("AAPL",)


def test_symbols_are_upper_cased_and_deduplicated_in_order() -> None:
    path = write("symbol\nmsft\naapl\nMSFT\n  Aapl  \nibm\n")
    assert read_tickers(path) == ("MSFT", "AAPL", "IBM")


def test_blank_lines_and_comments_are_skipped() -> None:
    path = write("symbol,name\n# the Dow\n\nAAPL,Apple\n   ,\n#MSFT,commented out\nIBM,IBM\n")
    assert read_tickers(path) == ("AAPL", "IBM")


def test_the_symbol_column_is_found_by_name() -> None:
    path = write("name,Symbol\nApple,AAPL\n")
    assert read_tickers(path) == ("AAPL",)


def test_share_classes_listings_and_indices_are_accepted() -> None:
    path = write("symbol\nBRK-B\nRY.TO\n^GSPC\nbf-b\nEURUSD=X\n")
    assert read_tickers(path) == ("BRK-B", "RY.TO", "^GSPC", "BF-B", "EURUSD=X")


def test_bad_symbols_are_reported_with_line_numbers() -> None:
    path = write("symbol\nAAPL\nAPP LE\nMSFT\nB@D\n")
    with pytest.raises(ConfigError) as info:
        read_tickers(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3: 'APP LE'" in message
    assert "line 5: 'B@D'" in message
    assert "MSFT" not in message
    assert info.value.exit_code is ExitCode.USAGE


def test_line_numbers_count_blank_and_comment_lines() -> None:
    # Line 1 header, 2 AAPL, 3 blank, 4 comment, 5 the bad symbol.
    path = write("symbol\nAAPL\n\n# note\nBAD SYMBOL\n")
    with pytest.raises(ConfigError, match=r"line 5: 'BAD SYMBOL'"):
        read_tickers(path)


def test_many_bad_symbols_are_summarised() -> None:
    path = write("symbol\n" + "".join(f"B@D{i}\n" for i in range(8)))
    with pytest.raises(ConfigError, match=r"and 3 more"):
        read_tickers(path)


def test_a_missing_symbol_column_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"needs a 'symbol' column; its header has 'ticker'"):
        read_tickers(write("ticker,name\nAAPL,Apple\n"))


def test_an_empty_file_is_reported() -> None:
    path = write("")
    with pytest.raises(ConfigError, match=r"'symbol' column") as info:
        read_tickers(path)
    assert str(path) in str(info.value)


def test_a_header_without_symbols_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"lists no symbols"):
        read_tickers(write("symbol,name\n\n# nothing yet\n"))


def test_a_missing_file_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"tickers file not found: .*absent\.csv"):
        read_tickers(Path("absent.csv"))


def test_a_file_that_is_not_utf8_is_reported() -> None:
    path = Path("latin1.csv")
    path.write_bytes(b"symbol\n\xff\xfe\xfa\n")
    with pytest.raises(ConfigError, match=r"cannot read tickers file"):
        read_tickers(path)


def test_the_shipped_tickers_file_is_valid() -> None:
    symbols = read_tickers(REPO / "config" / "tickers.csv")
    assert len(symbols) == 30
    assert len(set(symbols)) == 30
    assert all(SYMBOL.match(s) for s in symbols)
    assert "AAPL" in symbols


def test_default_settings_are_valid() -> None:
    settings = Settings()
    assert settings.datasets == DEFAULT_DATASETS
    assert settings.rate_limit >= 1
    assert settings.fmp_base_url.startswith("https://")


def test_api_key_is_not_in_the_repr() -> None:
    assert "s3cret" not in repr(Settings(api_key="s3cret"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"start": dt.date(2025, 3, 14), "end": dt.date(2025, 3, 13)},
            r"--start 2025-03-14 is after",
        ),
        ({"start": dt.date(2025, 3, 1), "backfill_days": 5}, r"either --backfill-days or --start"),
        ({"backfill_days": 0}, r"--backfill-days must be at least 1"),
        ({"rate_limit": 0}, r"--rate-limit must be at least 1"),
        ({"rate_limit": -5}, r"--rate-limit"),
        ({"concurrency": 0}, r"--concurrency"),
        ({"period": "monthly"}, r"--period must be one of"),
        ({"fmp_base_url": "ftp://example.com"}, r"--fmp-base-url must be an http\(s\) URL"),
        ({"fmp_base_url": "financialmodelingprep.com/stable"}, r"--fmp-base-url"),
        ({"datasets": ("prices", "nope")}, r"unknown dataset\(s\) nope; choose from prices"),
        ({"datasets": ()}, r"unknown dataset\(s\) \(none given\)"),
    ],
)
def test_settings_reject_bad_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**options)


def test_settings_accept_a_one_day_range_and_a_backfill() -> None:
    day = dt.date(2025, 3, 14)
    assert Settings(start=day, end=day).start == day
    assert Settings(backfill_days=1, end=day).backfill_days == 1
    assert Settings(fmp_base_url="http://127.0.0.1:8080/stable").fmp_base_url.startswith("http://")


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.rate_limit = 5  # type: ignore[misc]


def test_parse_datasets_keeps_registry_order_and_drops_repeats() -> None:
    assert parse_datasets("profile, prices,profile") == ("prices", "profile")
    assert parse_datasets(",".join(reversed(DATASETS))) == tuple(DATASETS)
    assert parse_datasets("cash_flow,income_statement") == ("income_statement", "cash_flow")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prices,nope", r"unknown dataset\(s\) nope; choose from prices"),
        ("zeta,alpha", r"unknown dataset\(s\) alpha, zeta"),
        ("", r"\(none given\)"),
        (" , ", r"\(none given\)"),
    ],
)
def test_parse_datasets_rejects_unknown_names(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_datasets(text)


@pytest.mark.parametrize(("text", "expected"), [("2/4", (2, 4)), (" 1 / 1 ", (1, 1))])
def test_a_shard_is_k_of_n(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["2", "two/4", "2/0", "2-4", "", "0/1", "5/4", "2/1"])
def test_a_malformed_shard_says_how_to_write_it(text: str) -> None:
    with pytest.raises(ConfigError, match="K/N"):
        parse_shard(text)


def test_a_shard_paces_at_its_share_of_the_limit() -> None:
    assert Settings(shard=(3, 4), rate_limit=750).pace == 187
    assert Settings(rate_limit=750).pace == 750
    with pytest.raises(ConfigError, match="K must be from 1 to N"):
        Settings(shard=(5, 4))
    with pytest.raises(ConfigError, match="cannot share"):
        Settings(shard=(1, 400), rate_limit=300)
