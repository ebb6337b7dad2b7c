"""The API's own shapes, beyond the stored job: the job as clients see it, errors, models, remix and extend.

Field names follow the OpenAI videos API where it has one (`Video`, `VideoDeleteResponse`, the list page), so
its official client works unchanged; our own fields sit beside them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

from serve_app.loras import LoraRef
from serve_app.schemas import Job, Seconds
from skyreels.request import Task

TIMESTAMPS = ("created_at", "started_at", "completed_at", "expires_at")


def duration(frames: int, fps: int) -> str:
    """Seconds of video, as OpenAI's `seconds` gives them: a string."""
    return f"{frames / fps:g}"


class Video(Job):
    """A video job as the API returns it: the stored job with integer unix times and what clients derive."""

    created_at: int = Field(description="Unix time (s) the job was submitted.")
    started_at: int | None = Field(None, description="Unix time (s) its run began.")
    completed_at: int | None = Field(None, description="Unix time (s) it ended, whatever the outcome.")
    expires_at: int | None = Field(None, description="Unix time (s) its files are deleted; None: kept.")
    eta_seconds: int | None = Field(None, description="Estimated seconds until the job ends: a running job's "
                                    "once its first denoising steps are timed; a queued job's from the estimated "
                                    "GPU-seconds of the queue up to it, at the pace of the last completed job, one "
                                    "job at a time (an upper bound with several gangs). None when unknown.")
    loras: list[LoraRef] = Field(default_factory=list, description="The LoRA adapters it runs with.")

    @classmethod
    def of(cls, job: Job, **derived: Any) -> Video:
        """The client's view of a stored job (the server's adapter sources left out) with the derived fields."""
        return cls.model_validate({**job.model_dump(exclude={"loras": {"__all__": {"source"}}}), **derived})

    @field_validator(*TIMESTAMPS, mode="before")
    @classmethod
    def _whole_seconds(cls, value: Any) -> Any:
        return math.floor(value) if isinstance(value, float) else value

    @computed_field(description="Duration of the video in seconds (for an extension: the stitched whole).")
    @property
    def seconds(self) -> str:
        return duration(self.total_frames, self.fps)

    @property
    def total_frames(self) -> int:
        # the continuation's first frame is the source's last one: it is shown once
        return self.prefix_frames + self.num_frames - 1 if self.prefix_frames else self.num_frames


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable: invalid_request, not_found, not_ready, queue_full, ...")
    message: str = Field(description="What went wrong and what is allowed.")


class ErrorResponse(BaseModel):
    """Every error the API answers has this one shape."""

    model_config = ConfigDict(json_schema_extra={
        "example": {"error": {"code": "not_found", "message": "no video job 'video_123'"}}})

    error: ErrorBody


class VideoList(BaseModel):
    """A page of jobs; pass `last_id` as `after` for the next one."""

    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class ModelDefaults(BaseModel):
    """What a submit that leaves these fields out gets: sized so that the model answers in reasonable time."""

    size: str
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    fps: int
    seconds: str


class ModelLimits(BaseModel):
    """The largest values a submit may ask for."""

    min_size: int
    max_size: int
    size_multiple: int
    max_frames: int
    max_inference_steps: int
    max_seconds_at_default_fps: float


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "skywork"
    task: Task
    defaults: ModelDefaults
    limits: ModelLimits


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class RemixParams(BaseModel):
    """POST /v1/videos/{id}/remix: the source job again, same seed and settings, with a new prompt."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"prompt": "the same cat, at night"}})

    prompt: str = Field(min_length=1, max_length=4000, description="The new prompt.")


class VideoReference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="A completed video job of this server.")


class ExtendParams(BaseModel):
    """POST /v1/videos/extensions: continue a completed video from its last frame (I2V), same settings and seed;
    or an uploaded clip (mp4 or webm), resized to a size the model takes, at its own frame rate.

    The new job's video is the source's frames followed by the continuation."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "example": {"prompt": "the cat jumps", "seconds": "4", "video": {"id": "video_0123"}}})

    prompt: str = Field(min_length=1, max_length=4000, description="What happens next.")
    video: VideoReference | None = Field(None, description="The completed video to extend; in a multipart body, "
                                         "an uploaded mp4 or webm file instead.")
    seconds: Seconds = Field(None, description="Length of the continuation in seconds, at the source's fps.")
    num_frames: int | None = Field(None, description="Or the continuation's frames (4k+1); default: the model's.")


class Readiness(BaseModel):
    """GET /readyz: 200 only when every stage can take work and the job store answers; 503 (same body) otherwise."""

    ready: bool
    stages: dict[str, bool] = Field(description="Each stage: Serve runs a healthy replica of it (busy or not).")
    store: bool = Field(description="The job store answered.")
