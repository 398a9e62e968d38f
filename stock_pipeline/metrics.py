"""A run's counters and timings in the Prometheus text format, for a node-exporter textfile
collector (or a push gateway): `ingest --metrics-file PATH`.

Written with `prometheus-client`, atomically (a temporary file renamed into place), after every
run, including one that could not start or was aborted. `stock_pipeline_last_success_timestamp_seconds`
is carried over from the file a previous run wrote, so an alert can fire on how long ago the
lake last landed whole.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from stock_pipeline.errors import ExitCode

if TYPE_CHECKING:
    from stock_pipeline.pipeline import RunReport

__all__ = ["LAST_SUCCESS", "write_metrics"]

PREFIX = "stock_pipeline"
LAST_SUCCESS = f"{PREFIX}_last_success_timestamp_seconds"
#: Per dataset: (metric name, the summary's attribute, what it counts).
PER_DATASET = (
    ("requests", "requests", "requests sent"),
    ("retries", "retries", "requests sent again"),
    ("rate_limited_responses", "rate_limited", "FMP's rate-limit replies"),
    ("rows", "rows", "rows written"),
    ("rows_quarantined", "quarantined", "rows set aside in quarantine"),
    ("files", "files", "files written"),
    ("bytes", "bytes", "bytes written"),
    ("symbols_failed", "symbols_failed", "symbols that did not land"),
    ("dataset_seconds", "seconds", "seconds the dataset took"),
)


def _previous_success(path: Path) -> float | None:
    """The last success time a previous run wrote to `path`, if any."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return float(sample.value)
    except ValueError:  # not a metrics file: start over
        return None
    return None


def write_metrics(
    path: Path,
    *,
    exit_code: int,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    report: RunReport | None = None,
) -> None:
    """Write the run's metrics to `path`; `report` is None when the run could not start or was
    aborted before it had one."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, labels, registry=registry)

    gauge("run_exit_code", "Exit code of the last run (0 ok, 1 partial, 2 usage, 3 key).").set(
        exit_code
    )
    gauge("run_duration_seconds", "Wall time of the last run.").set(
        (finished_at - started_at).total_seconds()
    )
    gauge("run_finished_timestamp_seconds", "When the last run ended (Unix time).").set(
        finished_at.timestamp()
    )
    success = finished_at.timestamp() if exit_code == ExitCode.OK else _previous_success(path)
    if success is not None:
        gauge("last_success_timestamp_seconds", "When a run last landed everything.").set(success)
    if report is not None:
        for name, attribute, doc in PER_DATASET:
            metric = gauge(f"run_{name}", f"Last run: {doc}, per dataset.", ("dataset",))
            for summary in report.summaries:
                metric.labels(summary.dataset).set(float(getattr(summary, attribute)))
        responses = gauge(
            "run_responses",
            'Last run: FMP\'s responses per dataset and HTTP status ("none": no answer).',
            ("dataset", "status"),
        )
        for summary in report.summaries:
            for status, count in summary.responses.items():
                responses.labels(summary.dataset, status).set(count)
        failures = gauge(
            "run_failures", "Last run: failures per dataset and reason.", ("dataset", "reason")
        )
        counted = Counter((failure.dataset, failure.reason) for failure in report.failures)
        for (dataset, reason), count in sorted(counted.items()):
            failures.labels(dataset, reason).set(count)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
