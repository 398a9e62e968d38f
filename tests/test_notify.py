"""The webhook: posted when a run fails, ends partial or the lake is stale, to a local HTTP
receiver that answers as the test says; a webhook that fails never changes the exit code."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stock_pipeline.cli import app
from stock_pipeline.errors import ExitCode
from stock_pipeline.notify import SmtpSettings
from stock_pipeline.simulator import Fault, SimulatorConfig, SimulatorThread
from tests.support import API_KEY, TOKEN, Receiver, assert_no_secret, write_tickers

runner = CliRunner()
ENV = {"FMP_API_KEY": API_KEY, "STOCK_PIPELINE_RETRY_BASE_DELAY": "0"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver([]) as server:
        yield server


def ingest(tmp_path: Path, url: str, *symbols: str, down: str | None = None) -> tuple[int, str]:
    tickers = write_tickers(tmp_path / "tickers.csv", *symbols)
    faults = {down: (Fault(kind="server_error"),)} if down else {}
    with SimulatorThread(SimulatorConfig(api_key=API_KEY, faults=faults)) as sim:
        result = runner.invoke(
            app,
            [
                "ingest", "--fmp-base-url", sim.url, "--lake", str(tmp_path / "lake"),
                "--tickers-path", str(tickers), "--start", "2025-03-03", "--end", "2025-03-14",
                "--rate-limit", "6000", "--datasets", "prices", "--notify-url", url, "-v",
            ],
            env=ENV,
            catch_exceptions=False,
        )  # fmt: skip
    return result.exit_code, result.output


def test_a_partial_run_posts_its_summary_and_keeps_its_exit_code(
    tmp_path: Path, receiver: Receiver
) -> None:
    code, output = ingest(tmp_path, receiver.url, "AAPL", "IBM", down="IBM")
    assert code == ExitCode.PARTIAL
    [post] = receiver.posts
    text = post["text"]
    assert "ended partial (exit 1)" in text
    assert "prices IBM: " in text
    assert f"manifest: {tmp_path / 'lake'}/_runs/" in text
    assert_no_secret(text)
    assert TOKEN not in output  # the webhook's secret path is never printed or logged


def test_a_run_that_lands_everything_posts_nothing(tmp_path: Path, receiver: Receiver) -> None:
    code, _ = ingest(tmp_path, receiver.url, "AAPL")
    assert code == ExitCode.OK
    assert receiver.posts == []


def test_a_run_that_cannot_start_posts_why(tmp_path: Path, receiver: Receiver) -> None:
    (tmp_path / "lake").write_text("a file where the lake folder should be")
    code, _ = ingest(tmp_path, receiver.url, "AAPL")
    assert code == ExitCode.USAGE
    [post] = receiver.posts
    assert post["text"].startswith("stock_pipeline ingest could not start: cannot write")


def test_a_failing_webhook_is_retried_then_given_up_without_failing_the_run(
    tmp_path: Path,
) -> None:
    with Receiver([500, 503, 429, 500]) as failing:
        code, output = ingest(tmp_path, failing.url, "AAPL", "IBM", down="IBM")
    assert code == ExitCode.PARTIAL  # the run's own code, not the webhook's
    assert len(failing.posts) == 4  # every attempt, then it gives up
    assert "could not post to the webhook at 127.0.0.1" in output
    assert TOKEN not in output


def test_a_webhook_that_refuses_the_message_is_not_retried(tmp_path: Path) -> None:
    with Receiver([400]) as refusing:
        code, output = ingest(tmp_path, refusing.url, "AAPL", "IBM", down="IBM")
    assert code == ExitCode.PARTIAL
    assert len(refusing.posts) == 1
    assert "refused the message (HTTP 400)" in output


def test_an_unreachable_webhook_never_fails_the_run(tmp_path: Path) -> None:
    with Receiver([]) as gone:
        url = gone.url
    code, output = ingest(tmp_path, url, "AAPL", "IBM", down="IBM")
    assert code == ExitCode.PARTIAL
    assert "could not post to the webhook" in output


def test_status_posts_a_stale_lake_and_not_a_fresh_one(tmp_path: Path, receiver: Receiver) -> None:
    assert ingest(tmp_path, receiver.url, "AAPL")[0] == ExitCode.OK
    common = [
        "status", "--lake", str(tmp_path / "lake"), "--tickers-path",
        str(tmp_path / "tickers.csv"), "--notify-url", receiver.url,
    ]  # fmt: skip
    fresh = runner.invoke(app, [*common, "--as-of", "2025-03-15T12:00:00+00:00"], env=ENV)
    assert (fresh.exit_code, receiver.posts) == (ExitCode.OK, [])
    stale = runner.invoke(app, [*common, "--as-of", "2025-03-21T22:00:00+00:00"], env=ENV)
    assert stale.exit_code == ExitCode.PARTIAL
    [post] = receiver.posts
    assert "STALE or incomplete" in post["text"]
    assert "| prices | 2025-03-14 | 2025-03-14 | 5 | 0/1 | AAPL |" in post["text"]


def test_only_an_http_webhook_is_accepted(tmp_path: Path) -> None:
    code, output = ingest(tmp_path, "file:///etc/passwd", "AAPL")
    assert code == ExitCode.USAGE
    assert "--notify-url must be an http(s) URL" in output


class Inbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:  # a free port on 127.0.0.1 for the SMTP server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def smtp_env(port: int) -> dict[str, str]:
    return {
        "STOCK_PIPELINE_SMTP_HOST": "127.0.0.1",
        "STOCK_PIPELINE_SMTP_PORT": str(port),
        "STOCK_PIPELINE_SMTP_STARTTLS": "0",
        "STOCK_PIPELINE_SMTP_FROM": "pipeline@example.com",
        "STOCK_PIPELINE_SMTP_TO": "data@example.com, oncall@example.com",
    }


def test_a_partial_run_is_mailed_as_text_and_html(
    tmp_path: Path, inbox: tuple[Inbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, port = inbox
    for name, value in smtp_env(port).items():
        monkeypatch.setenv(name, value)
    with Receiver([]) as receiver:
        code, _ = ingest(tmp_path, receiver.url, "AAPL", "IBM", down="IBM")
    assert code == ExitCode.PARTIAL
    [envelope] = handler.envelopes
    assert envelope.rcpt_tos == ["data@example.com", "oncall@example.com"]
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert message["Subject"].startswith("stock_pipeline run ")
    assert "ended partial (exit 1)" in message["Subject"]
    text = message.get_body(("plain",)).get_content()
    page = message.get_body(("html",)).get_content()
    assert "prices IBM: " in text
    assert "prices IBM: " in page
    assert page.startswith("<pre>")
    assert_no_secret(envelope.content.decode())


def test_a_mail_server_that_is_down_never_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe closes
    for name, value in smtp_env(port).items():
        monkeypatch.setenv(name, value)
    with Receiver([]) as receiver:
        code, output = ingest(tmp_path, receiver.url, "AAPL", "IBM", down="IBM")
    assert code == ExitCode.PARTIAL
    assert "could not send mail through 127.0.0.1" in output
    assert len(receiver.posts) == 1  # the webhook still got its message


def test_email_settings_come_from_the_environment() -> None:
    assert SmtpSettings.from_env({}) is None  # no host: no email
    with pytest.raises(ValueError, match="STOCK_PIPELINE_SMTP_FROM and STOCK_PIPELINE_SMTP_TO"):
        SmtpSettings.from_env({"STOCK_PIPELINE_SMTP_HOST": "mail.example.com"})
    settings = SmtpSettings.from_env(
        {**smtp_env(2525), "STOCK_PIPELINE_SMTP_USER": "bot", "STOCK_PIPELINE_SMTP_PASSWORD": "pw"}
    )
    assert settings == SmtpSettings(
        host="127.0.0.1",
        port=2525,
        starttls=False,
        sender="pipeline@example.com",
        recipients=("data@example.com", "oncall@example.com"),
        user="bot",
        password="pw",
    )
    assert SmtpSettings.from_env({**smtp_env(25), "STOCK_PIPELINE_SMTP_STARTTLS": "1"}).starttls  # type: ignore[union-attr]
