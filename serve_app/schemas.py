"""The HTTP API's data: what a client submits and the job record it gets back."""

from __future__ import annotations

import time
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from skyreels.request import DEFAULT_NEGATIVE_PROMPT

MODEL_T2V = "skyreels-v1-t2v"
MODEL_I2V = "skyreels-v1-i2v"


class JobStatus(str, Enum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobPhase(str, Enum):
    QUEUED = "queued"
    ENCODING_TEXT = "encoding_text"
    ENCODING_IMAGE = "encoding_image"
    DENOISING = "denoising"
    DECODING = "decoding"
    DONE = "done"


class ErrorCode(str, Enum):
    WORKER_DIED = "worker_died"  # a DiT gang worker was lost mid-run
    STAGE_FAILED = "stage_failed"  # a stage raised
    INTERRUPTED = "interrupted"  # the ingress stopped while the job ran
    INTERNAL = "internal_error"


class JobError(BaseModel):
    code: ErrorCode
    message: str


class VideoCreateParams(BaseModel):
    """POST /v1/videos (JSON body, or the form fields of a multipart body)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(MODEL_T2V, description=f"{MODEL_T2V} or {MODEL_I2V}")
    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    size: str = Field("960x544", description="WIDTHxHEIGHT, e.g. 960x544, 544x960, 720x720")
    num_frames: int = 97
    num_inference_steps: int = 30
    guidance_scale: float = 6.0
    embedded_guidance_scale: float = 1.0
    seed: int | None = Field(None, description="-1 or absent: random; the job reports the seed used")
    fps: int = 24
    input_reference: str | None = Field(None, description="I2V first frame as a data URL (JSON bodies)")


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
    progress: int = Field(0, ge=0, le=100)
    phase: JobPhase = JobPhase.QUEUED
    current_step: int = 0
    total_steps: int = 0
    queue_position: int | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    error: JobError | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="seconds per stage")


class JobList(BaseModel):
    object: str = "list"
    data: list[Job]
    has_more: bool
    next_cursor: str | None = None
