"""The HTTP API's data: what a client submits and the job record it gets back."""

from __future__ import annotations

import time
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from serve_app.loras import AppliedLora, LoraRef
from serve_app.priorities import Priority
from skyreels.lora import MAX_LORAS
from skyreels.models import SERVED_MODEL_IDS
from skyreels.progress import Phase
from skyreels.request import GenerationRequest, Task


class JobStatus(str, Enum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class ErrorCode(str, Enum):
    # a run cut off by infrastructure: the job runs again, up to the configured attempts
    WORKER_DIED = "worker_died"  # a DiT gang worker was lost (or hung) mid-run
    STAGE_LOST = "stage_lost"  # a stage replica died, or its node
    STAGE_TIMEOUT = "stage_timeout"  # a stage call did not answer in time
    INTERRUPTED = "interrupted"  # the ingress stopped (killed) while the job ran
    HANDED_BACK = "handed_back"  # the ingress shut down gracefully and gave the job back to the queue
    PREEMPTED = "preempted"  # paused at a step boundary for an interactive job; resumes from that step
    # errors that would repeat: the job ends at once
    STAGE_FAILED = "stage_failed"  # a stage raised (a model error, bad input found late)
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the job ran longer than its deadline
    INTERNAL = "internal_error"

    @property
    def is_infrastructure(self) -> bool:
        """The run was cut off from outside: the same request may simply run again."""
        return self in (ErrorCode.WORKER_DIED, ErrorCode.STAGE_LOST, ErrorCode.STAGE_TIMEOUT,
                        ErrorCode.INTERRUPTED, ErrorCode.HANDED_BACK)


class JobError(BaseModel):
    code: ErrorCode
    message: str


class WebhookDelivery(BaseModel):
    """One POST of the job's final record to its webhook_url; `status_code` None when no answer came."""

    attempt: int
    attempted_at: float
    status_code: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Attempt(BaseModel):
    """One run of a job; `error` says why it was cut off (None while it runs, or when it completed)."""

    number: int
    started_at: float
    ended_at: float | None = None
    error: JobError | None = None


def _request_field(name: str) -> Any:
    """A submit field with GenerationRequest's type, limits, default and description: the one vocabulary (the
    limits are in the OpenAPI document, so what it calls valid is valid)."""
    field = GenerationRequest.model_fields[name]
    return _limited(field), Field(field.default, description=field.description,
                                  json_schema_extra=DOCUMENTED_RULES.get(name))


def _limited(field: FieldInfo) -> Any:
    """The field's type with its limits (ge, max_length, ...)."""
    return Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation


# Rules GenerationRequest's validators check, as the document states them (a blank prompt is refused).
DOCUMENTED_RULES = {"prompt": {"pattern": r"\S"}}
# Fields a submit body and a stored job share with GenerationRequest, under the same names.
SHARED_FIELDS = (
    "prompt", "negative_prompt", "num_frames", "num_inference_steps",
    "guidance_scale", "embedded_guidance_scale", "seed", "fps",
)

_REQUEST_FIELDS = GenerationRequest.model_fields
# OpenAI's `seconds` is a string ("4"); a number is welcome too
Seconds = Annotated[float, Field(gt=0)] | Annotated[str, Field(pattern=r"^\s*\d+(\.\d+)?\s*$")] | None
PriorityName = Literal[tuple(priority.value for priority in Priority)]  # a body's text, strict or not
# Submit fields whose default is the model's (GET /v1/models): a small preset gets small videos.
MODEL_DEFAULTED = ("num_frames", "num_inference_steps")


def _model_defaulted_field(name: str) -> Any:
    field = _REQUEST_FIELDS[name]
    return _limited(field) | None, Field(None, description=f"{field.description} Default: the model's.")


VideoCreateParams = create_model(
    "VideoCreateParams",
    __config__=ConfigDict(extra="forbid", json_schema_extra={"example": {
        "prompt": "a cat walks on the grass", "model": SERVED_MODEL_IDS[Task.T2V], "size": "960x544",
        "seconds": 4, "seed": 42}}),
    __doc__="POST /v1/videos (JSON body, or the form fields of a multipart body). The limits are "
            "GenerationRequest's; a value outside them, or a combination the model cannot run, is refused with "
            "422 and the rule it broke. Fields left out get the model's defaults (GET /v1/models).",
    model=(str, Field(SERVED_MODEL_IDS[Task.T2V], description="A model id of GET /v1/models.",
                      json_schema_extra={"enum": list(SERVED_MODEL_IDS.values())})),
    size=(str | None, Field(None, pattern=r"^\s*\d+x\d+\s*$",
                            description="WIDTHxHEIGHT, e.g. 960x544, 544x960, 720x720: "
                                        f"{_REQUEST_FIELDS['width'].description} Default: the model's.")),
    seconds=(Seconds, Field(None, examples=[4],
                            description="Duration (OpenAI's field): frames = seconds x fps, rounded to 4k+1. "
                                        "Give seconds or num_frames, not both.")),
    input_reference=(str | None, Field(None, description="I2V first frame as a data URL (JSON bodies), or a "
                                                         "file (multipart bodies).")),
    webhook_url=(str | None, Field(None, max_length=2048, pattern=r"^https?://[^\s/?#]+([/?#]\S*)?$",
                                   description="POSTed the job, signed (Standard Webhooks), once it completes, "
                                               "fails or is cancelled. Default: the server's, if it has one.")),
    priority=(PriorityName | None, Field(None, description="The scheduling class: interactive (someone waits for "
                                     "it; may pause batch jobs) or batch. Default: the server's, within what the "
                                     "API key may use (a class above it is refused with 403).")),
    loras=(list[LoraRef], Field(default_factory=list, max_length=MAX_LORAS,
                                description="LoRA adapters (GET /v1/loras), each at a scale, for this video only. "
                                            "In a multipart body: a JSON array.")),
    **{name: _request_field(name) for name in SHARED_FIELDS if name not in MODEL_DEFAULTED},
    **{name: _model_defaulted_field(name) for name in MODEL_DEFAULTED},
)


class Job(BaseModel):
    """One video job, as stored and as returned by the API."""

    id: str
    object: str = "video"
    status: JobStatus = JobStatus.QUEUED
    model: str
    prompt: str
    negative_prompt: str
    size: str
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    embedded_guidance_scale: float
    seed: int
    fps: int
    has_input_reference: bool = False
    remixed_from_video_id: str | None = None
    extended_from_video_id: str | None = None
    prefix_frames: int = Field(0, description="An extension's frames taken from the video it continues.")
    loras: list[AppliedLora] = Field(default_factory=list, description="The LoRA adapters it runs with.")
    progress: int = Field(0, ge=0, le=100)
    phase: Phase = Phase.QUEUED
    current_step: int = 0
    total_steps: int = 0
    queue_position: int | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    error: JobError | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="seconds per stage")
    attempts: list[Attempt] = Field(default_factory=list, description="Every run of the job, oldest first: a run "
                                    "cut off by infrastructure is run again (same seed, same video).")
    owner: str | None = Field(None, description="The API key's id (key_...) that submitted the job; None "
                              "without keys or from a trusted in-cluster caller.")
    webhook_url: str | None = None
    webhook_deliveries: list[WebhookDelivery] = Field(default_factory=list, description="Every POST of the "
                                                      "final job to webhook_url, oldest first.")
    resumed_from_checkpoint: bool = Field(False, description="The last run started at decode, from the latents "
                                          "a previous run had checkpointed.")
    priority: Priority = Field(Priority.BATCH, description="Its scheduling class.")
    estimated_gpu_s: float = Field(0.0, ge=0, description="Its estimated cost, in seconds of one A800, from its "
                                   "shape, steps and model: what fair sharing between API keys charges it.")
    share_weight: float = Field(1.0, gt=0, description="Its API key's weight in fair sharing, at submit.")
    preemptions: int = Field(0, ge=0, description="Times it was paused at a step boundary for an interactive job "
                             "(each a `preempted` run in `attempts`; it resumed from that step).")
