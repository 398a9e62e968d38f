"""Keeping the FMP key out of every message: it rides in the query string of every request URL."""

from __future__ import annotations

import re

__all__ = ["REDACTED", "redact"]

REDACTED = "***"
#: Keys shorter than this are only redacted where they follow `apikey=`.
MIN_SECRET_LENGTH = 8

_KEY_IN_URL = re.compile(r"(?i)(apikey=)[^&\s\"'#]*")


def redact(text: str, secret: str | None = None) -> str:
    """`text` with every `apikey=` value and every occurrence of `secret` replaced by ***."""
    text = _KEY_IN_URL.sub(rf"\g<1>{REDACTED}", text)
    # A very short "key" (a demo value) would mangle ordinary words; URLs are covered above.
    if secret and len(secret) >= MIN_SECRET_LENGTH:
        text = text.replace(secret, REDACTED)
    return text
