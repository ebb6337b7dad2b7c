"""How long-running work reports progress and is stopped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StepProgress:
    step: int  # 1-based: the number of denoising steps done
    total: int
    seconds: float = 0.0  # this step's time on the rank that ran it (a gang rank reports it; 0.0: not measured)


StepCallback = Callable[[StepProgress], None]


@dataclass(frozen=True)
class StepState:
    """Denoising paused between two steps: the latents (1, C, T', h, w) after `step` steps, float32, on the CPU.
    A run given it goes on from step `step + 1` and ends with the latents the uninterrupted run ends with."""

    step: int
    latents: torch.Tensor


class GenerationCancelled(Exception):
    """Raised by a step callback to stop a generation between two denoising steps."""


class Phase(str, Enum):
    QUEUED = "queued"
    ENCODING_TEXT = "encoding_text"
    ENCODING_IMAGE = "encoding_image"
    DENOISING = "denoising"
    DECODING = "decoding"
    DONE = "done"


# Where each phase starts on a 0-100 progress bar; the denoising steps fill the span up to decoding.
PHASE_PERCENT = {Phase.QUEUED: 0, Phase.ENCODING_TEXT: 1, Phase.ENCODING_IMAGE: 3, Phase.DENOISING: 5,
                 Phase.DECODING: 90, Phase.DONE: 100}


@dataclass(frozen=True)
class Progress:
    phase: Phase
    percent: int
    step: int = 0  # denoising steps done
    total_steps: int = 0

    @classmethod
    def entering(cls, phase: Phase, total_steps: int) -> Progress:
        step = total_steps if phase in (Phase.DECODING, Phase.DONE) else 0
        return cls(phase, PHASE_PERCENT[phase], step, total_steps)

    @classmethod
    def denoised(cls, step: StepProgress) -> Progress:
        start, end = PHASE_PERCENT[Phase.DENOISING], PHASE_PERCENT[Phase.DECODING]
        return cls(Phase.DENOISING, start + (end - start) * step.step // step.total, step.step, step.total)


ProgressCallback = Callable[[Progress], None]
