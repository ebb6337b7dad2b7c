"""The application builder: `serve run serve_app.app:build_app model=tiny` or a cluster/*.yaml.

The only place that turns the plain deployment classes into Serve deployments. Resources and
autoscaling of each stage come from the Serve config's `deployments:` list; the defaults below
suit the local CPU run.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from ray import serve
from ray.serve import Application

from deployments.config import StageConfig
from deployments.denoiser import Denoiser, gang_bundles
from deployments.text_encoder import MAX_BATCH_SIZE, TextEncoder
from deployments.vae import Vae
from serve_app.auth import AccessConfig
from serve_app.ingress import VideoIngress
from serve_app.preflight import refuse_if_too_big
from serve_app.priorities import Priority
from serve_app.requests import UploadLimits
from serve_app.retention import RetentionConfig
from serve_app.runner import JobPolicy
from serve_app.webhooks import WebhookConfig
from skyreels.lora import unsupported_with
from skyreels.preflight.gpus import gpu_type
from skyreels.request import GenerationRequest

logger = logging.getLogger(__name__)


class AppConfig(StageConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_type: str | None = Field(
        None, description="The GPUs the app runs on (skyreels preflight's names: H100-80GB, L4-24GB, ...). When "
        "set, build_app plays the layout on fake CUDA first (skyreels.preflight, about a minute) and refuses a "
        "config whose stages cannot fit their GPUs, with the figures, before anything loads.")
    @field_validator("gpu_type")
    @classmethod
    def _known_gpu_type(cls, name: str | None) -> str | None:
        return name if name is None else gpu_type(name).name

    gpus_per_replica: Literal[1, 2, 3, 4, 6, 8] = Field(
        1, description="DiT gang size: GPU worker actors per Denoiser replica (CFG 2 x Ulysses N/2 when even).")
    sequence_batch: bool = Field(
        False, description="Run the CFG branches one after the other on all gang ranks (long videos) "
        "instead of splitting them over two halves of the gang.")
    text_batch_size: int = Field(
        MAX_BATCH_SIZE, ge=1, description="Prompts a TextEncoder replica encodes in one forward, gathered across "
        "requests. On GPUs a batch's kernels may round differently from a single prompt's; 1 makes every job's "
        "embeddings independent of the jobs beside it.")
    decode_on: Literal["vae", "gang"] = Field(
        "vae", description="Which stage decodes the latents: 'vae' (the Vae deployment, one GPU per decode, "
        "while the gang denoises the next job: the staged layout) or 'gang' (the parallel VAE over the gang's ranks "
        "right after its steps, as SkyReelsInfer does: the monolithic layout). Same video either way.")
    worker_cpus: float = Field(0.5, gt=0, description="CPUs reserved for each DiT worker.")
    reserve_gpus: bool | None = Field(
        None,
        description="Reserve a GPU for each DiT worker (default: when device is cuda). True on a CPU host with "
        "fake GPU resources exercises the GPU scheduling path.",
    )
    worker_gpu_fraction: float = Field(
        1.0, gt=0.5, le=1, description="The share of its GPU each DiT worker reserves from Ray (its bundle's "
        "{'GPU': fraction}); needs reserved GPUs (device cuda, or reserve_gpus). Below 1, the rest of each gang GPU "
        "takes TextEncoder or Vae replicas whose ray_actor_options.num_gpus is a fraction (e.g. 0.25): Ray packs "
        "them onto a gang GPU and shows them that GPU alone. A share is Ray's bookkeeping, not a memory limit: a "
        "worker still holds its whole DiT (26 GB in bf16 on every rank, plus activations and, with decode_on gang, "
        "the VAE), and each replica beside it adds its own (TextEncoder: LLaMA-3-8B + CLIP-L, 15 GB; Vae: 0.5 GB "
        "plus a decode's activations), so co-locate on 80 GB GPUs and set gpu_type to have the startup check the "
        "sum. Above 0.5: Ray packs fractional bundles best-fit, so two workers of one gang at 0.5 would share a "
        "GPU. `skyreels preflight --config` refuses a config whose fractional replicas cannot all fit beside one "
        "worker.")
    database_path: str = Field(
        "/tmp/skyreels-serve/jobs.sqlite3", description="SQLite file of the job records and queue, when "
        "database_url is not set: for one ingress replica.")
    database_url: str | None = Field(
        None, description="PostgreSQL job store (postgresql://user:password@host:5432/db; needs the `postgres` "
        "extra), shared by several ingress replicas: any replica accepts, lists and follows any job, and each "
        "queued job is claimed by exactly one (FOR UPDATE SKIP LOCKED). Wins over database_path when set.")
    ingress_replicas: int = Field(
        1, ge=1, description="VideoIngress replicas (a Serve config's `deployments:` entry overrides it). More than "
        "one needs database_url.")
    artifact_url: str = Field("/tmp/skyreels-serve/artifacts", description="fsspec URL where videos are written.")
    max_queued_jobs: int = Field(64, ge=1, description="Submits beyond this many waiting jobs get 429.")
    max_running_jobs: int = Field(4, ge=1, description="Jobs in flight across the stages at once.")
    max_attempts: int = Field(
        3, ge=1, description="Runs of one job cut off by infrastructure (a lost worker, replica or node, a stage "
        "that stopped answering, an ingress restart) before the job fails; each run gives the same video.")
    job_deadline_s: float = Field(
        7200.0, gt=0, description="A job still running this long after its first start fails (deadline_exceeded) "
        "and frees its stages.")
    model_group_delay_s: float = Field(
        30.0, ge=0, description="The queue groups jobs by model so that the gangs swap transformers (T2V/I2V) "
        "rarely: a job of a model the gangs hold (that of a running job, or of the job started last) goes before "
        "older jobs of the other model, unless the oldest waiting job has waited longer than this. 0: strictly "
        "oldest first. Re-runs of cut-off jobs always go first.")
    default_priority: Priority = Field(
        Priority.BATCH, description="The class of a submit that names none (within its API key's allowance: "
        "access.default_max_priority, access.keys). The web page asks for interactive.")
    preempt_after_s: float | None = Field(
        10.0, ge=0, description="An interactive job that has waited this long (queued, or claimed but not yet "
        "denoising) pauses the batch jobs this replica runs at their next step boundary: their latents and step "
        "are checkpointed, they go back to the queue and resume from that step later (the same video). None: "
        "never preempt.")
    max_preemptions: int = Field(
        3, ge=0, description="A batch job is paused at most this many times; then it runs to its end (no "
        "starvation). Preempted runs are not counted in max_attempts.")
    job_lease_s: float = Field(
        20.0, gt=0, description="A running job is leased to the ingress replica that runs it; a replica that stops "
        "renewing (it died) loses its jobs this long after its last heartbeat, and another replica runs them again "
        "(an interrupted attempt, counted in max_attempts).")
    job_heartbeat_s: float = Field(
        1.0, gt=0, description="How often a replica renews its leases; it also hears then of cancels asked through "
        "other replicas. At most a third of job_lease_s.")
    queue_poll_s: float = Field(
        0.5, gt=0, description="How often an idle replica looks in the store for jobs that other replicas queued, "
        "and how often a progress stream (SSE) of a job running on another replica reads its record.")
    stage_timeout_s: float = Field(
        900.0, gt=0, description="A text, image or decode call (queueing included) that takes longer is cut off "
        "and the job runs again.")
    gang_hang_timeout_s: float = Field(
        600.0, gt=0, description="The gang's watchdog: a denoise or decode with no answer from the gang for this "
        "long (a rank stuck in a collective) tears the gang down; Serve rebuilds it and the job runs again. Keep it "
        "above the first step's compile time.")
    shutdown_grace_s: float = Field(
        15.0, ge=0, description="On a graceful stop, how long running jobs may take to finish before they go back "
        "to the queue.")
    access: AccessConfig = Field(default_factory=AccessConfig, description="API keys (also from the environment: "
                                 "SKYREELS_API_KEYS, SKYREELS_API_KEYS_FILE) and per-key limits.")
    uploads: UploadLimits = Field(default_factory=UploadLimits, description="What an input image may be.")
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig, description="Signed job notifications.")
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="When finished jobs expire.")
    lora_url: str | None = Field(
        None, description="The LoRA adapter registry: a directory or fsspec URL (s3://, gs://) of .safetensors "
        "adapters that submits name in `loras` (GET /v1/loras lists them). Every DiT worker must be able to read "
        "it: on a cluster, use object storage. None: no adapters.")

    @model_validator(mode="after")
    def _shared_store_for_replicas(self) -> AppConfig:
        if self.ingress_replicas > 1 and self.database_url is None:
            raise ValueError(f"ingress_replicas={self.ingress_replicas} needs database_url (PostgreSQL): on SQLite "
                             "each replica would keep its own jobs")
        if self.job_heartbeat_s * 3 > self.job_lease_s:
            raise ValueError(f"job_heartbeat_s ({self.job_heartbeat_s}) must be at most a third of job_lease_s "
                             f"({self.job_lease_s})")
        return self

    @property
    def reserves_gpus(self) -> bool:
        """Whether each DiT worker reserves (a share of) a GPU from Ray."""
        return self.device == "cuda" if self.reserve_gpus is None else self.reserve_gpus

    @model_validator(mode="after")
    def _gpu_fraction_needs_gpus(self) -> AppConfig:
        if self.worker_gpu_fraction < 1 and not self.reserves_gpus:
            raise ValueError(f"worker_gpu_fraction={self.worker_gpu_fraction:g} needs workers that reserve GPUs: "
                             "device cuda, or reserve_gpus true")
        return self

    @model_validator(mode="after")
    def _adapters_can_run(self) -> AppConfig:
        refusal = unsupported_with(self.optimize) if self.lora_url is not None else None
        if refusal is not None:
            raise ValueError(f"lora_url is set, but {refusal}")
        return self


def build_app(args: dict[str, Any] | AppConfig | None = None) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    if config.gpu_type is not None and config.device == "cuda":
        report = refuse_if_too_big(config, gpu_type(config.gpu_type), GenerationRequest(prompt="preflight"))
        logger.info("preflight: %s", report.verdict())
    stage_config = StageConfig(**config.model_dump(include=set(StageConfig.model_fields)))
    reserve_gpus = config.reserves_gpus
    text = serve.deployment(TextEncoder, name="TextEncoder", ray_actor_options={"num_cpus": 0.25},
                            max_ongoing_requests=config.text_batch_size)
    vae = serve.deployment(Vae, name="Vae", ray_actor_options={"num_cpus": 0.25})
    denoiser = serve.deployment(
        Denoiser,
        name="Denoiser",
        ray_actor_options={"num_cpus": 0.1},
        placement_group_bundles=gang_bundles(config.gpus_per_replica, 0.1, config.worker_cpus, reserve_gpus,
                                             config.worker_gpu_fraction),
        placement_group_strategy="STRICT_PACK",  # one node: NCCL over NVLink, not the network
        max_ongoing_requests=2,
        health_check_period_s=2,
    )
    ingress = serve.deployment(VideoIngress, name="VideoIngress", num_replicas=config.ingress_replicas,
                               ray_actor_options={"num_cpus": 0.25},
                               max_ongoing_requests=1000, graceful_shutdown_timeout_s=config.shutdown_grace_s + 10)
    decode_on_gang = config.decode_on == "gang"
    return ingress.bind(
        text.bind(stage_config, config.text_batch_size),
        denoiser.bind(stage_config, config.gpus_per_replica, config.worker_cpus, reserve_gpus, config.sequence_batch,
                      config.artifact_url if decode_on_gang else None, config.gang_hang_timeout_s,
                      config.worker_gpu_fraction),
        vae.bind(stage_config, config.artifact_url),
        stage_config.served_models,
        config.database_path,
        config.database_url,
        config.artifact_url,
        JobPolicy(**config.model_dump(include=set(JobPolicy.__dataclass_fields__))),
        decode_on_gang,
        config.shutdown_grace_s,
        config.access,
        config.uploads,
        config.webhooks,
        config.retention,
        config.lora_url,
        config.tracing,
    )
