"""What a gang's driver asks its ranks to do, each command declaring where it runs.

The declaration replaces `rank == 0` branches: a driver sends a MAIN_RANK command to rank 0 alone and an
EVERY_RANK command to all ranks, and always reads the answer from rank 0 (`GangRank.run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch
from PIL import Image

from skyreels.progress import StepState
from skyreels.recipe import Checkpoint
from skyreels.request import Task
from skyreels.stages.conditioning import Conditioning, ImageCondition
from skyreels.stages.denoise import DenoiseParams


class RunsOn(Enum):
    MAIN_RANK = "main rank only"  # one process's work (the text encoders, the I2V image): rank 0 alone
    EVERY_RANK = "every rank"  # the ranks share the work through collectives; rank 0 answers


@dataclass(frozen=True)
class EncodeText:
    """-> Conditioning."""

    runs_on: ClassVar[RunsOn] = RunsOn.MAIN_RANK
    prompt: str
    negative_prompt: str | None


@dataclass(frozen=True)
class EncodeImage:
    """-> ImageCondition (CPU)."""

    runs_on: ClassVar[RunsOn] = RunsOn.MAIN_RANK
    image: Image.Image
    height: int
    width: int
    seed: int


@dataclass(frozen=True)
class Denoise:
    """-> StepProgress after every step, then Denoised; stopped between two steps, the main rank saves the step and
    its latents to `checkpoint` (once, for the whole gang). The mesh splits the CFG branches and the video tokens."""

    runs_on: ClassVar[RunsOn] = RunsOn.EVERY_RANK
    task: Task
    conditioning: Conditioning
    params: DenoiseParams
    image: ImageCondition | None
    resume: StepState | None = None  # go on from this paused step
    checkpoint: Checkpoint | None = None  # where a stopped run's step goes


@dataclass(frozen=True)
class Decode:
    """-> frames (T, H, W, 3) uint8. Every rank decodes its share of the VAE tiles."""

    runs_on: ClassVar[RunsOn] = RunsOn.EVERY_RANK
    latents: torch.Tensor


Command = EncodeText | EncodeImage | Denoise | Decode


def ranks_for(command: Command, world_size: int) -> range:
    """The ranks that take part in `command`."""
    return range(1) if command.runs_on is RunsOn.MAIN_RANK else range(world_size)
