"""The jobs' names as the outside sees them — service, loggers, tracer, span, metrics — in one place:
dashboards, alerts (k8s/jobs) and log filters depend on them, so they change here or nowhere."""

from __future__ import annotations

from typing import Final

SERVICE: Final = "outboxkit-jobs"  # the dispatcher's OTEL_SERVICE_NAME unless set
LOGGER: Final = "outboxkit.jobs"
INBOX_LOGGER: Final = "outboxkit.jobs.inbox"
TRACER: Final = "outboxkit.jobs"
# The worker's CONSUMER span is "<actor name> process", as the messaging conventions name spans.
PROCESS_SPAN: Final = "{actor} process"

DISPATCHED: Final = (
    "outboxkit_jobs_dispatched_total",
    "Jobs the broker accepted and whose offsets were committed.",
)
FAILURES: Final = (
    "outboxkit_jobs_delivery_failures_total",
    "Deliveries the job broker refused or did not answer.",
)
BATCHES: Final = ("outboxkit_jobs_dispatch_batches_total", "Batches delivered and committed.")
READY: Final = ("outboxkit_jobs_ready", "1 while the dispatcher can deliver jobs, else 0.")
DEAD_LETTERS: Final = (
    "outboxkit_jobs_dead_letters",
    "Jobs Dramatiq gave up on, waiting in the dead-letter queues of OUTBOXKIT_JOBS_QUEUES and of every "
    "queue this dispatcher delivered to (read from the broker at scrape time).",
)
