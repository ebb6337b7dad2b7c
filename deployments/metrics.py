"""The service's metrics, through Ray's metrics system (`ray.util.metrics`): the one table of them.

Every process records what it knows (the ingress: jobs and the queue; the stage replicas: their seconds; the gang's
replica: steps, weights, caches, rebuilds; each gang worker: its device memory). Each node's Ray metrics agent
sums the counters and histograms of all processes that share a label set and exports them, with Serve's own
metrics, on the node's metrics export port for Prometheus, prefixed `ray_` (`skyreels_jobs_finished_total` is
scraped as `ray_skyreels_jobs_finished_total`). The agent keeps each process's series apart by a `WorkerId`
label, and by `replica` for those recorded in a Serve replica, which also get `application` and `deployment`:
sum over them (`sum by (application, status) (...)`) for the cluster's figure; a gauge that every ingress
replica computes from the job store reads the same on each, so take `max`.

The library (`skyreels`) never imports Ray: its stages hand their figures up (`StoredVideo`, `StepProgress.seconds`,
`Denoised.figures`) and the deployments and the ingress record them here.
"""

from __future__ import annotations

from enum import Enum
from functools import cache

from pydantic import BaseModel, ConfigDict
from ray.serve import metrics as serve_metrics
from ray.util import metrics as ray_metrics

from skyreels.artifacts import StoredVideo
from skyreels.recipe import DenoiseFigures

EXPORT_PREFIX = "ray_"  # what Ray's metrics export puts before every name below


class Kind(str, Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Stage(str, Enum):
    """The `stage` label of skyreels_stage_seconds: one unit of work, timed where it ran."""

    TEXT_ENCODE = "text_encode"  # a job's prompts (positive and negative), on a TextEncoder replica
    IMAGE_ENCODE = "image_encode"  # an I2V job's first frame, on the Vae (or the gang)
    DENOISE_STEP = "denoise_step"  # one sampling step of the DiT, on gang rank 0
    WEIGHTS_SWAP = "weights_swap"  # a gang putting the other model's transformer weights in place
    LORA_LOAD = "lora_load"  # a gang loading the adapters of a job that were not loaded yet
    DECODE = "decode"  # the VAE decode of a job's latents (Vae replica, or the gang's parallel decode)
    MUX = "mux"  # mp4 + thumbnail encode and write
    CHECKPOINT = "checkpoint"  # writing a job's denoised latents to the artifact store (the ingress)


class MetricSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str  # as registered; Prometheus sees EXPORT_PREFIX + name
    kind: Kind
    description: str
    labels: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()  # histograms only: the upper bounds of the buckets

    @property
    def exported(self) -> str:
        return EXPORT_PREFIX + self.name

    @property
    def series(self) -> tuple[str, ...]:
        """The names Prometheus stores for it."""
        if self.kind is Kind.HISTOGRAM:
            return tuple(f"{self.exported}_{suffix}" for suffix in ("bucket", "count", "sum"))
        return (self.exported,)


SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
JOB_SECONDS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0, 3600.0, 7200.0)

METRICS = (
    MetricSpec(name="skyreels_jobs_submitted_total", kind=Kind.COUNTER, labels=("model", "priority"),
               description="Jobs accepted into the queue."),
    MetricSpec(name="skyreels_jobs_rejected_total", kind=Kind.COUNTER, labels=("reason",),
               description="Submits refused for want of room (reason queue_full: answered 429)."),
    MetricSpec(name="skyreels_jobs_finished_total", kind=Kind.COUNTER,
               labels=("model", "status", "priority", "cause"),
               description="Jobs that ended, by final status (completed, failed, cancelled) and, for a failed job, "
                           "its error code (stage_failed, deadline_exceeded, worker_died after the last attempt...)."),
    MetricSpec(name="skyreels_job_reruns_total", kind=Kind.COUNTER, labels=("cause",),
               description="Runs cut off by infrastructure and queued again, by cause (worker_died, stage_lost, "
                           "stage_timeout, interrupted, handed_back)."),
    MetricSpec(name="skyreels_job_seconds", kind=Kind.HISTOGRAM, labels=("model",), boundaries=JOB_SECONDS_BUCKETS,
               description="First start to end of completed jobs."),
    MetricSpec(name="skyreels_queue_jobs", kind=Kind.GAUGE,
               description="Jobs waiting to start, as the job store has them (every ingress replica reports it)."),
    MetricSpec(name="skyreels_queue_oldest_wait_seconds", kind=Kind.GAUGE,
               description="How long the oldest waiting job has waited (0 with none), from the job store."),
    MetricSpec(name="skyreels_stage_seconds", kind=Kind.HISTOGRAM, labels=("stage",), boundaries=SECONDS_BUCKETS,
               description="Seconds of one unit of stage work, timed where it ran (the `stage` label: "
                           + ", ".join(stage.value for stage in Stage) + ")."),
    MetricSpec(name="skyreels_webhook_deliveries_total", kind=Kind.COUNTER, labels=("outcome",),
               description="Webhook POST attempts, by outcome: delivered (2xx), refused (another status), "
                           "unreachable (no answer)."),
    MetricSpec(name="skyreels_step_cache_forwards_total", kind=Kind.COUNTER, labels=("outcome",),
               description="DiT forwards the step cache decided on: computed or skipped (with the cache on)."),
    MetricSpec(name="skyreels_lora_cache_lookups_total", kind=Kind.COUNTER, labels=("outcome",),
               description="A job's LoRA adapters on its gang: hit (already loaded) or miss (loaded for it)."),
    MetricSpec(name="skyreels_gang_peak_memory_bytes", kind=Kind.GAUGE, labels=("rank",),
               description="Peak device memory a gang rank allocated in its last command (CUDA only)."),
    MetricSpec(name="skyreels_gang_rebuilds_total", kind=Kind.COUNTER,
               description="DiT gangs torn down (a worker died or hung); Serve builds a fresh replica for each."),
)
BY_NAME = {spec.name: spec for spec in METRICS}
# Ray's own or Serve's series the dashboard and the rules read beside ours
RAY_SERIES = ("ray_serve_deployment_replica_healthy", "ray_serve_num_ongoing_requests_at_replicas",
              "ray_serve_deployment_processing_latency_ms_bucket")

_MAKERS = {Kind.COUNTER: serve_metrics.Counter, Kind.GAUGE: serve_metrics.Gauge}


@cache
def metric(name: str) -> ray_metrics.Metric:
    """This process's instrument of the metric `name`, made once. Serve's flavour of Ray's metrics: in a Serve
    replica it adds the labels `application`, `deployment` and `replica`; in a gang worker (a plain actor) it is
    Ray's own; outside a Ray worker recording does nothing."""
    spec = BY_NAME[name]
    if spec.kind is Kind.HISTOGRAM:
        return serve_metrics.Histogram(spec.name, spec.description, boundaries=list(spec.boundaries),
                                       tag_keys=spec.labels)
    return _MAKERS[spec.kind](spec.name, spec.description, tag_keys=spec.labels)


def stage_seconds(stage: Stage, seconds: float) -> None:
    metric("skyreels_stage_seconds").observe(seconds, tags={"stage": stage.value})


def stored_video(stored: StoredVideo) -> None:
    """A decoded and stored video's seconds."""
    stage_seconds(Stage.DECODE, stored.decode_seconds)
    stage_seconds(Stage.MUX, stored.mux_seconds)


def denoise_figures(figures: DenoiseFigures) -> None:
    """What gang rank 0 counted over one denoise: weights, adapters and the step cache."""
    if figures.swap_s:
        stage_seconds(Stage.WEIGHTS_SWAP, figures.swap_s)
    if figures.lora_s:
        stage_seconds(Stage.LORA_LOAD, figures.lora_s)
    _count("skyreels_lora_cache_lookups_total", hit=figures.adapter_hits, miss=figures.adapter_loads)
    _count("skyreels_step_cache_forwards_total", skipped=figures.forwards_skipped,
           computed=figures.forwards - figures.forwards_skipped)


def _count(name: str, **by_outcome: int) -> None:
    for outcome, n in by_outcome.items():
        if n:
            metric(name).inc(n, tags={"outcome": outcome})
