"""LocalPipeline: the three stages in one process (CLI, tests, and the baseline for Serve)."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from skyreels import random_full
from skyreels.models import ModelPaths, ModelSettings, resolve_model
from skyreels.optimize.config import OptimizeConfig
from skyreels.optimize.offload import on_device
from skyreels.parallel.local import GangSpec, LocalGang
from skyreels.parallel.mesh import MeshShape
from skyreels.progress import StepCallback
from skyreels.random_full import RANDOM_FULL
from skyreels.request import GenerationRequest, Task
from skyreels.stages.denoise import DenoiseParams, DenoiseStage
from skyreels.stages.text import PromptEncoder, TextEncoderStage
from skyreels.stages.vae import VaeStage
from skyreels.result import GenerationResult
from skyreels.timing import timed

logger = logging.getLogger(__name__)


class VideoGenerator(ABC):
    """What the CLI and Serve's baseline call: one video per request, or several from one."""

    task: Task

    @abstractmethod
    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        ...

    def generate_videos(
        self, request: GenerationRequest, video_num: int, on_step: StepCallback | None = None
    ) -> Iterator[GenerationResult]:
        """`video_num` videos from consecutive seeds, so each one can be reproduced on its own."""
        first_seed = request.with_seed().seed
        for index in range(video_num):
            seed = (first_seed + index) % 2**32
            yield self.generate(request.model_copy(update={"seed": seed}), on_step=on_step)

    def close(self) -> None:
        """Releases processes or devices held beyond the Python objects."""


class LocalPipeline(VideoGenerator):
    """Text encoder, DiT and VAE of one task, loaded once, run in order for each request."""

    def __init__(
        self,
        task: Task,
        text: PromptEncoder,
        denoise: DenoiseStage,
        vae: VaeStage,
        offload_to: torch.device | str | None = None,
    ) -> None:
        if denoise.takes_image != (task is Task.I2V):
            kind = "an I2V" if denoise.takes_image else "a T2V"
            raise ValueError(f"the transformer is {kind} model; it cannot run task {task.value}")
        self.task = task
        self.text = text
        self.denoise = denoise
        self.vae = vae
        # model-level offload: the models live in host memory and visit this device stage by stage
        self.offload_to = offload_to

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = "tiny",
        task: Task | str = Task.T2V,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        gpu_num: int = 1,
        sequence_batch: bool = False,
        settings: ModelSettings | None = None,
        optimize: OptimizeConfig | None = None,
    ) -> VideoGenerator:
        """The stages in this process; with gpu_num > 1, a GangPipeline of that many processes."""
        task = Task(task)
        optimize = optimize or OptimizeConfig()
        dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
        if gpu_num > 1:
            device_type = torch.device(device).type
            spec = GangSpec(str(source), task, device_type, dtype, gpu_num, sequence_batch,
                            settings or ModelSettings(), optimize)
            MeshShape.plan(gpu_num, num_heads=_heads(resolve_model(str(source), task, spec.settings)),
                           sequence_batch=sequence_batch)  # refuse a bad gpu_num before spawning
            return GangPipeline(task, LocalGang(spec))
        if source == RANDOM_FULL:
            return cls._random_full(task, device, dtype, sequence_batch, optimize)
        paths = resolve_model(str(source), task, settings)
        logger.info("loading %s (%s) on %s as %s", source, task.value, device, dtype)
        return cls(
            task=task,
            text=TextEncoderStage.from_pretrained(paths.base, device=device, dtype=dtype, optimize=optimize),
            denoise=DenoiseStage.from_pretrained(
                paths.transformer, paths.component("scheduler"), device=device, dtype=dtype,
                batch_cfg=not sequence_batch, optimize=optimize,
            ),
            vae=VaeStage.from_pretrained(paths.component("vae"), device="cpu" if optimize.offload else device,
                                         dtype=dtype),
            offload_to=device if optimize.offload else None,
        )

    @classmethod
    def _random_full(
        cls, task: Task, device: str | torch.device, dtype: torch.dtype, sequence_batch: bool, optimize: OptimizeConfig
    ) -> LocalPipeline:
        """The real architecture with random weights made on the device: for benchmarks only."""
        logger.info("building the random-full %s model on %s as %s", task.value, device, dtype)
        return cls(
            task=task,
            text=random_full.RandomTextEncoderStage(device, dtype),
            denoise=DenoiseStage.prepared(random_full.random_transformer(task, device, dtype),
                                          random_full.scheduler(), device, optimize, batch_cfg=not sequence_batch),
            vae=VaeStage(random_full.random_vae(device, dtype)),
        )

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        request = _checked(request, self.task)
        params = DenoiseParams.from_request(request)
        timings: dict[str, float] = {}
        with timed(timings, "text"), self._visiting(self.text):
            negative = request.negative_prompt if request.uses_true_cfg else None
            conditioning = self.text.encode(request.prompt, negative)
        image = None
        if request.image is not None:
            with timed(timings, "image_encode"), self._visiting(self.vae):
                image = self.vae.encode_image(request.image, request.height, request.width, params.seed)
        with timed(timings, "denoise"), self._visiting(self.denoise):
            latents = self.denoise.denoise(conditioning, params, image=image, on_step=on_step)
        with timed(timings, "decode"), self._visiting(self.vae):
            frames = self.vae.decode(latents)
        logger.info("generated seed %d in %s", params.seed, {k: round(v, 3) for k, v in timings.items()})
        return GenerationResult(frames=frames, seed=params.seed, fps=request.fps, timings=timings, latents=latents.cpu())


    def _visiting(self, stage: PromptEncoder | DenoiseStage | VaeStage) -> AbstractContextManager:
        """The stage's models on the accelerator for the block (only with model-level offload)."""
        return on_device(self.offload_to, *stage.models()) if self.offload_to is not None else nullcontext()


class GangPipeline(VideoGenerator):
    """LocalPipeline's contract over a local gang of `gpu_num` processes (CFG x Ulysses parallel)."""

    def __init__(self, task: Task, gang: LocalGang) -> None:
        self.task = task
        self.gang = gang

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        request = _checked(request, self.task)
        timings: dict[str, float] = {}
        with timed(timings, "total"):
            result = self.gang.generate(request, on_step)
        result.timings.update(timings)
        return result

    def close(self) -> None:
        self.gang.close()


def _checked(request: GenerationRequest, task: Task) -> GenerationRequest:
    if request.task is not task:
        raise ValueError(f"this pipeline runs {task.value}; the request is {request.task.value}")
    return request.with_seed()


def _heads(paths: ModelPaths) -> int:
    return json.loads((paths.transformer / "config.json").read_text())["num_attention_heads"]
