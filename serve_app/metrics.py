"""The ingress's figures (jobs, the queue, checkpoints, webhooks), through Ray's metrics (deployments.metrics).

Every ingress replica records the jobs it handles; Ray's metrics agents sum them over the replicas, so the
cluster's counts are the same whichever replica ran a job. The queue's gauges are read from the job store, which
all replicas share: each replica reports the same figures. There is no /metrics route on the ingress any more:
Prometheus scrapes Ray's metrics export of every node (README, Observability).
"""

from __future__ import annotations

import time

from deployments import metrics
from deployments.metrics import Stage
from serve_app.schemas import ErrorCode, Job, JobStatus, WebhookDelivery
from serve_app.store import JobStore


class JobMetrics:
    def submitted(self, job: Job) -> None:
        metrics.metric("skyreels_jobs_submitted_total").inc(tags=_job_labels(job))

    def rejected(self) -> None:
        metrics.metric("skyreels_jobs_rejected_total").inc(tags={"reason": "queue_full"})

    def finished(self, job: Job) -> None:
        """A job's final record."""
        cause = job.error.code.value if job.status is JobStatus.FAILED and job.error is not None else ""
        metrics.metric("skyreels_jobs_finished_total").inc(
            tags=_job_labels(job) | {"status": job.status.value, "cause": cause})
        if job.status is JobStatus.COMPLETED and job.started_at is not None and job.completed_at is not None:
            metrics.metric("skyreels_job_seconds").observe(job.completed_at - job.started_at,
                                                           tags={"model": job.model})

    def rerun(self, cause: ErrorCode) -> None:
        metrics.metric("skyreels_job_reruns_total").inc(tags={"cause": cause.value})

    def checkpointed(self, seconds: float) -> None:
        metrics.stage_seconds(Stage.CHECKPOINT, seconds)

    def webhook_attempt(self, delivery: WebhookDelivery) -> None:
        outcome = "delivered" if delivery.delivered else "unreachable" if delivery.status_code is None else "refused"
        metrics.metric("skyreels_webhook_deliveries_total").inc(tags={"outcome": outcome})

    def queue(self, store: JobStore) -> None:
        """The queue's depth and its oldest job's wait, as the store has them."""
        waiting = store.in_status(JobStatus.QUEUED)  # oldest first; at most max_queued_jobs of them
        metrics.metric("skyreels_queue_jobs").set(len(waiting))
        metrics.metric("skyreels_queue_oldest_wait_seconds").set(
            max(0.0, time.time() - waiting[0].created_at) if waiting else 0.0)


def _job_labels(job: Job) -> dict[str, str]:
    return {"model": job.model, "priority": job.priority.value}
