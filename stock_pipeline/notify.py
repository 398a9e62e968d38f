"""Telling a team that a night did not land: a Slack-compatible webhook (`{"text": ...}`).

A post is retried with backoff; one that never gets through is logged and given up on, and never
changes the command's exit code. The message carries the run's summary and the manifest's path,
never the FMP key; the webhook URL (whose path is its secret) is never logged, only its host.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from stock_pipeline.pipeline import RunReport
from stock_pipeline.redaction import redact

__all__ = ["WEBHOOK_ENV", "post_webhook", "run_message"]

log = logging.getLogger(__name__)

WEBHOOK_ENV = "STOCK_PIPELINE_WEBHOOK_URL"
ATTEMPTS = 4
BASE_DELAY_SECONDS = 1.0
TIMEOUT_SECONDS = 10.0
#: Failures named in a message before "and N more".
NAMED_FAILURES = 5


def run_message(report: RunReport, secret: str | None = None) -> str:
    """A run that did not end `ok`, in a few lines: what landed, what failed, where the manifest is."""
    lines = [
        f"stock_pipeline run {report.run_id} ended {report.status} (exit {int(report.exit_code)}) "
        f"on {report.lake}",
        f"sessions {report.plan.start} to {report.plan.end}, {report.rows} rows, "
        f"{len(report.files)} files, {len(report.failures)} failures",
    ]
    for summary in report.summaries:
        if summary.symbols_failed or summary.quarantined:
            lines.append(
                f"- {summary.dataset}: {summary.symbols_failed} symbols failed, "
                f"{summary.quarantined} rows quarantined"
            )
    for failure in report.failures[:NAMED_FAILURES]:
        who = f"{failure.dataset} {failure.symbol or '(every symbol)'}"
        lines.append(f"- {who}: {failure.reason}: {failure.error}")
    if len(report.failures) > NAMED_FAILURES:
        lines.append(f"- and {len(report.failures) - NAMED_FAILURES} more failures")
    if report.manifest is not None:
        lines.append(f"manifest: {report.lake}/{report.manifest.path}")
    return redact("\n".join(lines), secret)


def post_webhook(
    url: str,
    text: str,
    *,
    attempts: int = ATTEMPTS,
    base_delay: float = BASE_DELAY_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST `{"text": text}` to `url`; retries server errors, 429s and network errors with
    exponential backoff. Returns whether it got through; never raises."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc or "the webhook"
    if parts.scheme not in ("http", "https"):
        log.warning("not posting to a %r URL: the webhook must be http(s)", parts.scheme)
        return False
    body = json.dumps({"text": text}).encode()
    for attempt in range(attempts):
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS):
                return True
        except urllib.error.HTTPError as error:
            if error.code < 500 and error.code != 429:
                log.warning("the webhook at %s refused the message (HTTP %d)", host, error.code)
                return False
            reason = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            reason = type(error).__name__
        if attempt + 1 < attempts:
            sleep(base_delay * 2**attempt)
    log.warning("could not post to the webhook at %s (%s, %d attempts)", host, reason, attempts)
    return False
