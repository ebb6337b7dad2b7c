"""Prometheus metrics of the jobs API (served at /metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class JobMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.submitted = Counter("skyreels_jobs_submitted", "Jobs accepted", ["model"], registry=self.registry)
        self.finished = Counter("skyreels_jobs_finished", "Jobs ended", ["status"], registry=self.registry)
        self.rejected = Counter("skyreels_jobs_rejected_queue_full", "Submits refused with 429",
                                registry=self.registry)
        self.reruns = Counter("skyreels_job_reruns", "Runs cut off by infrastructure and queued again", ["cause"],
                              registry=self.registry)
        self.queue_depth = Gauge("skyreels_jobs_queued", "Jobs waiting to start", registry=self.registry)
        self.duration = Histogram(
            "skyreels_job_seconds", "Start-to-finish seconds of completed jobs", registry=self.registry,
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400),
        )
