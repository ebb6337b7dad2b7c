"""Scheduling policy: priority classes, which of them each API key may use, and what a job costs in fair sharing.

Classes, highest first: `interactive` (someone is watching: the web page submits these) and `batch` (backlogs).
The store's queue (serve_app.store.base) takes re-runs first, then higher classes, then, within a class, the key
that is served least: the estimated GPU-seconds of its running jobs and of its jobs queued ahead, each divided by
the key's weight (weighted fair queuing on job cost, not on job count: one 544x960x97 video weighs as much as a
few hundred 64x64 previews), then the grouping by model, then age. The runner preempts batch jobs at a step
boundary when an interactive job has waited too long (serve_app.runner).
"""

from __future__ import annotations

from enum import Enum
from functools import cache

from pydantic import BaseModel, ConfigDict, Field

from skyreels.request import GenerationRequest, Task
from skyreels.sim.profile import SimProfile, VideoShape, published_a800


class Priority(str, Enum):
    INTERACTIVE = "interactive"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """The queue takes lower ranks first."""
        return list(Priority).index(self)

    def at_most(self, other: Priority) -> bool:
        """Not above `other`."""
        return self.rank >= other.rank


class KeyShare(BaseModel):
    """What one API key may ask of the scheduler (AccessConfig.keys, by the key's id `key_...`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_priority: Priority | None = Field(None, description="The highest class its jobs may ask for; None: "
                                          "AccessConfig.default_max_priority.")
    weight: float = Field(1.0, gt=0, description="Its share of the GPUs against other keys of the same class: "
                          "a key of weight 2 gets twice the GPU-seconds of a key of weight 1 while both wait.")


@cache
def _profile() -> SimProfile:
    return published_a800()


def estimated_gpu_seconds(request: GenerationRequest) -> float:
    """What the job costs one A800, in seconds, from its shape, steps and model (SkyReelsInfer's published timings,
    the DiT scaled by its FLOPs and the VAE by its pixels); only ratios between jobs matter to the queue."""
    shape = VideoShape(height=request.height, width=request.width, num_frames=request.num_frames)
    seconds = _profile().job_seconds(shape, request.num_inference_steps, i2v=request.task is Task.I2V)
    if not request.uses_true_cfg:
        seconds["denoise"] /= 2  # one branch a step
    return sum(seconds.values())
