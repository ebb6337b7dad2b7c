"""The per-rank side of a DiT gang, shared by the local gang (spawned processes) and Serve's.

`gang_steps` runs the sampling loop on every rank and makes the ranks agree, after each step,
on whether to stop, so that no rank is left waiting in a collective.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from skyreels.parallel.group import any_rank
from skyreels.progress import StepProgress
from skyreels.stages.conditioning import Conditioning, ImageCondition
from skyreels.stages.denoise import DenoiseParams, DenoiseStage


def gang_steps(
    stage: DenoiseStage,
    conditioning: Conditioning,
    params: DenoiseParams,
    image: ImageCondition | None,
    stop_requested: Callable[[], bool],
) -> Iterator[tuple[StepProgress, torch.Tensor]]:
    """Yields after every step; ends early, on every rank together, when any rank wants to stop."""
    for progress, latents in stage.steps(conditioning, params, image):
        yield progress, latents
        if progress.step < progress.total and any_rank(stop_requested(), stage.device):
            return
