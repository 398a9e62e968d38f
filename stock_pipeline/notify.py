"""Telling a team that a night did not land: a Slack-compatible webhook (`{"text": ...}`), or
email for teams without Slack.

A post is retried with backoff; one that never gets through is logged and given up on, and never
changes the command's exit code. The message carries the run's summary and the manifest's path,
never the FMP key; the webhook URL (whose path is its secret) is never logged, only its host, and
neither is the SMTP password.

Email is configured from the environment (`SmtpSettings.from_env`): STOCK_PIPELINE_SMTP_HOST,
_PORT (587), _STARTTLS (1), _USER, _PASSWORD, _FROM and _TO (comma-separated).
"""

from __future__ import annotations

import html
import json
import logging
import os
import smtplib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING

from stock_pipeline.redaction import redact

# Only for annotations: `status` alerts without loading the HTTP client and the data frames.
if TYPE_CHECKING:
    from stock_pipeline.pipeline import RunReport

__all__ = [
    "SmtpSettings",
    "post_webhook",
    "run_markdown",
    "run_message",
    "send_email",
]

log = logging.getLogger(__name__)

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


#: Failures listed in a Markdown summary; the manifest lists every one.
LISTED_FAILURES = 20


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def run_markdown(report: RunReport, secret: str | None = None) -> str:
    """A run's summary as GitHub-flavoured Markdown (a CI job summary): the per-dataset table,
    the failures and the manifest's path."""
    lines = [
        f"## stock_pipeline run `{report.run_id}`: {report.status}",
        "",
        f"Exit {int(report.exit_code)}. Sessions {report.plan.start} to {report.plan.end}, "
        f"{len(report.plan.symbols):,} tickers, {report.rows:,} rows in {len(report.files):,} "
        f"files, {(report.finished_at - report.started_at).total_seconds():,.0f} s.",
        "",
        "| dataset | symbols ok | failed | rows | quarantined | files | bytes | requests "
        "| retries | rate-limited | seconds |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in report.summaries:
        lines.append(
            f"| {s.dataset} | {s.symbols_ok:,} | {s.symbols_failed:,} | {s.rows:,} "
            f"| {s.quarantined:,} | {s.files:,} | {s.bytes:,} | {s.requests:,} | {s.retries:,} "
            f"| {s.rate_limited:,} | {s.seconds:.1f} |"
        )
    if report.failures:
        lines += ["", f"**{len(report.failures):,} failures**", ""]
        for failure in report.failures[:LISTED_FAILURES]:
            who = f"{failure.dataset} {failure.symbol or '(every symbol)'}"
            lines.append(f"- {_cell(who)}: {_cell(failure.reason)}: {_cell(failure.error)}")
        if len(report.failures) > LISTED_FAILURES:
            more = len(report.failures) - LISTED_FAILURES
            lines.append(f"- and {more:,} more, every one in the manifest")
    manifest = f"`{report.lake}/{report.manifest.path}`" if report.manifest else "(not written)"
    lines += ["", f"Lake `{report.lake}`; manifest {manifest}.", ""]
    return redact("\n".join(lines), secret)


class _Passing(Exception):
    """A failure that trying again may mend (a server error, a dropped connection)."""


class _Final(Exception):
    """A refusal that trying again will not change."""


def _retried(
    attempt: Callable[[], None],
    *,
    recipient: str,
    gave_up: str,
    attempts: int,
    base_delay: float,
    sleep: Callable[[float], None],
) -> bool:
    """Call `attempt` until it returns, with exponential backoff between tries; whether it got
    through. A final refusal is logged as `recipient` refusing, the last failure as `gave_up`
    (both name a host, never a URL)."""
    reason = "no attempt"
    for number in range(attempts):
        try:
            attempt()
            return True
        except _Final as refusal:
            log.warning("%s refused the message (%s)", recipient, refusal)
            return False
        except _Passing as failure:
            reason = str(failure)
        if number + 1 < attempts:
            sleep(base_delay * 2**number)
    log.warning("%s (%s, %d attempts)", gave_up, reason, attempts)
    return False


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

    def post() -> None:
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS):
                return
        except urllib.error.HTTPError as error:
            final = error.code < 500 and error.code != 429
            raise (_Final if final else _Passing)(f"HTTP {error.code}") from None
        except (urllib.error.URLError, OSError) as error:
            raise _Passing(type(error).__name__) from None

    return _retried(
        post,
        recipient=f"the webhook at {host}",
        gave_up=f"could not post to the webhook at {host}",
        attempts=attempts,
        base_delay=base_delay,
        sleep=sleep,
    )


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    starttls: bool
    sender: str
    recipients: tuple[str, ...]
    user: str | None = None
    password: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SmtpSettings | None:
        """The settings, or None when STOCK_PIPELINE_SMTP_HOST is not set (no email)."""
        host = env.get("STOCK_PIPELINE_SMTP_HOST")
        if not host:
            return None
        recipients = tuple(
            r.strip() for r in env.get("STOCK_PIPELINE_SMTP_TO", "").split(",") if r.strip()
        )
        sender = env.get("STOCK_PIPELINE_SMTP_FROM", "")
        if not recipients or not sender:
            raise ValueError("STOCK_PIPELINE_SMTP_FROM and STOCK_PIPELINE_SMTP_TO must be set")
        return cls(
            host=host,
            port=int(env.get("STOCK_PIPELINE_SMTP_PORT", "587")),
            starttls=env.get("STOCK_PIPELINE_SMTP_STARTTLS", "1") not in ("0", "false", "no"),
            sender=sender,
            recipients=recipients,
            user=env.get("STOCK_PIPELINE_SMTP_USER") or None,
            password=env.get("STOCK_PIPELINE_SMTP_PASSWORD") or None,
        )


def send_email(
    settings: SmtpSettings,
    text: str,
    *,
    attempts: int = ATTEMPTS,
    base_delay: float = BASE_DELAY_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Mail `text` (its first line the subject) as plain text and HTML; retried with backoff on
    connection and temporary (4xx) SMTP errors. Returns whether it was sent; never raises."""
    subject = text.partition("\n")[0].lstrip("# ")  # a Markdown report's heading too
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.recipients)
    message.set_content(text)
    message.add_alternative(f"<pre>{html.escape(text)}</pre>", subtype="html")

    def send() -> None:
        try:
            with smtplib.SMTP(settings.host, settings.port, timeout=TIMEOUT_SECONDS) as smtp:
                if settings.starttls:
                    smtp.starttls()
                if settings.user:
                    smtp.login(settings.user, settings.password or "")
                smtp.send_message(message)
        except smtplib.SMTPResponseException as error:
            final = not 400 <= error.smtp_code < 500
            raise (_Final if final else _Passing)(f"SMTP {error.smtp_code}") from None
        except (smtplib.SMTPException, OSError) as error:
            raise _Passing(type(error).__name__) from None

    return _retried(
        send,
        recipient=f"the mail server {settings.host}",
        gave_up=f"could not send mail through {settings.host}",
        attempts=attempts,
        base_delay=base_delay,
        sleep=sleep,
    )
