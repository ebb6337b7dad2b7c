"""LocalPipeline: the three stages in one process (CLI, tests, and the baseline for Serve)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from skyreels.models import ModelSettings, resolve_model
from skyreels.progress import StepCallback
from skyreels.request import GenerationRequest, Task
from skyreels.stages.denoise import DenoiseParams, DenoiseStage
from skyreels.stages.text import TextEncoderStage
from skyreels.stages.vae import VaeStage
from skyreels.timing import timed
from skyreels.video import encode_mp4

logger = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    frames: np.ndarray  # (T, H, W, 3) uint8
    seed: int  # the seed actually used
    fps: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def to_mp4(self) -> bytes:
        return encode_mp4(self.frames, self.fps)


def denoise_params(request: GenerationRequest) -> DenoiseParams:
    """The DiT's view of a request (whose seed must be resolved)."""
    if request.seed is None:
        raise ValueError("resolve the seed first (GenerationRequest.with_seed)")
    return DenoiseParams(
        num_frames=request.num_frames,
        height=request.height,
        width=request.width,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        embedded_guidance_scale=request.embedded_guidance_scale,
        seed=request.seed,
    )


class LocalPipeline:
    """Text encoder, DiT and VAE of one task, loaded once, run in order for each request."""

    def __init__(self, task: Task, text: TextEncoderStage, denoise: DenoiseStage, vae: VaeStage) -> None:
        if denoise.takes_image != (task is Task.I2V):
            kind = "an I2V" if denoise.takes_image else "a T2V"
            raise ValueError(f"the transformer is {kind} model; it cannot run task {task.value}")
        self.task = task
        self.text = text
        self.denoise = denoise
        self.vae = vae

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = "tiny",
        task: Task | str = Task.T2V,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        gpu_num: int = 1,
        batch_cfg: bool = True,
        settings: ModelSettings | None = None,
    ) -> LocalPipeline:
        if gpu_num != 1:
            raise NotImplementedError("gpu_num > 1 (context + CFG parallel) is not available yet")
        task = Task(task)
        dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
        paths = resolve_model(str(source), task, settings)
        logger.info("loading %s (%s) on %s as %s", source, task.value, device, dtype)
        return cls(
            task=task,
            text=TextEncoderStage.from_pretrained(paths.base, device=device, dtype=dtype),
            denoise=DenoiseStage.from_pretrained(
                paths.transformer, paths.component("scheduler"), device=device, dtype=dtype, batch_cfg=batch_cfg
            ),
            vae=VaeStage.from_pretrained(paths.component("vae"), device=device, dtype=dtype),
        )

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        if request.task is not self.task:
            raise ValueError(f"this pipeline runs {self.task.value}; the request is {request.task.value}")
        request = request.with_seed()
        params = denoise_params(request)
        timings: dict[str, float] = {}
        with timed(timings, "text"):
            negative = request.negative_prompt if request.uses_true_cfg else None
            conditioning = self.text.encode(request.prompt, negative)
        image = None
        if request.image is not None:
            with timed(timings, "image_encode"):
                image = self.vae.encode_image(request.image, request.height, request.width, params.seed)
        with timed(timings, "denoise"):
            latents = self.denoise.denoise(conditioning, params, image=image, on_step=on_step)
        with timed(timings, "decode"):
            frames = self.vae.decode(latents)
        logger.info("generated seed %d in %s", params.seed, {k: round(v, 3) for k, v in timings.items()})
        return GenerationResult(frames=frames, seed=params.seed, fps=request.fps, timings=timings)

    def generate_videos(
        self, request: GenerationRequest, video_num: int, on_step: StepCallback | None = None
    ) -> Iterator[GenerationResult]:
        """`video_num` videos from consecutive seeds, so each one can be reproduced on its own."""
        first_seed = request.with_seed().seed
        for index in range(video_num):
            seed = (first_seed + index) % 2**32
            yield self.generate(request.model_copy(update={"seed": seed}), on_step=on_step)

