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

from stock_pipeline.pipeline import RunReport
from stock_pipeline.redaction import redact

__all__ = ["WEBHOOK_ENV", "SmtpSettings", "post_webhook", "run_message", "send_email"]

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
    reason = "no attempt"
    for attempt in range(attempts):
        try:
            with smtplib.SMTP(settings.host, settings.port, timeout=TIMEOUT_SECONDS) as smtp:
                if settings.starttls:
                    smtp.starttls()
                if settings.user:
                    smtp.login(settings.user, settings.password or "")
                smtp.send_message(message)
            return True
        except smtplib.SMTPResponseException as error:
            if not 400 <= error.smtp_code < 500:
                log.warning(
                    "the mail server %s refused the message (%d)", settings.host, error.smtp_code
                )
                return False
            reason = f"SMTP {error.smtp_code}"
        except (smtplib.SMTPException, OSError) as error:
            reason = type(error).__name__
        if attempt + 1 < attempts:
            sleep(base_delay * 2**attempt)
    log.warning("could not send mail through %s (%s, %d attempts)", settings.host, reason, attempts)
    return False
