"""LocalPipeline: the stages in this process (CLI, tests, and the baseline for Serve); GangPipeline: the
same contract over a local gang of processes. Both run the one recipe (skyreels.recipe)."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from skyreels.gang.local import LocalGang, LocalGangStages
from skyreels.gang.rank import RankSpec
from skyreels.loader import stage_loader
from skyreels.lora.check import check_adapters
from skyreels.lora.spec import LoraSpec
from skyreels.models import ModelSettings
from skyreels.optimize.config import OptimizeConfig
from skyreels.optimize.offload import on_device
from skyreels.parallel.mesh import MeshShape
from skyreels.progress import StepCallback, StepProgress, StepState
from skyreels.recipe import Checkpoint, Denoised, Phase, Progress, Stages, generate, run_sync
from skyreels.request import GenerationRequest, Task
from skyreels.result import GenerationResult
from skyreels.runtime import configure_process
from skyreels.stages.conditioning import Conditioning, ImageCondition
from skyreels.stages.denoise import DenoiseParams, DenoiseStage
from skyreels.stages.text import PromptEncoder
from skyreels.stages.vae import VaeStage

logger = logging.getLogger(__name__)


class VideoGenerator(ABC):
    """One video per request, or several from one; where the stages run is the subclass's."""

    task: Task

    @abstractmethod
    def stages(self) -> Stages[np.ndarray]:
        """The recipe's stages, decoding to frames."""

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        """`on_step` is called after every denoising step; raising GenerationCancelled in it stops the run."""
        if request.task is not self.task:
            raise ValueError(f"this pipeline runs {self.task.value}; the request is {request.task.value}")
        self.check_adapters(request.loras)
        request = request.with_seed()

        def report(progress: Progress) -> None:
            if on_step is not None and progress.phase is Phase.DENOISING and progress.step:
                on_step(StepProgress(progress.step, progress.total_steps))

        generated = run_sync(generate(request, self.stages(), report))
        logger.debug("generated seed %d in %s", request.seed, {k: round(v, 3) for k, v in generated.timings.items()})
        return GenerationResult(frames=generated.output, seed=request.seed, fps=request.fps,
                                timings=generated.timings, latents=generated.latents)

    @abstractmethod
    def check_adapters(self, loras: Sequence[LoraSpec]) -> None:
        """Refuses (AdapterError, with the reason) LoRA adapters that could not run, before anything runs."""

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
    """Text encoder, DiT and VAE of one task, loaded once in this process, run in order for each request."""

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
        """The stages in this process; with gpu_num > 1, a GangPipeline of that many processes.

        The library's entry point: it applies the process-wide torch settings of `optimize` (skyreels.runtime).
        """
        task = Task(task)
        optimize = optimize or OptimizeConfig()
        settings = settings or ModelSettings()
        dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
        loader = stage_loader(str(source), task, device, dtype, optimize, settings)
        if gpu_num > 1:
            MeshShape.plan(gpu_num, num_heads=loader.attention_heads(),
                           sequence_batch=sequence_batch)  # refuse a bad gpu_num before spawning
            spec = RankSpec(transformers={task: str(source)}, device=torch.device(device).type, dtype=dtype,
                            world_size=gpu_num, sequence_batch=sequence_batch, optimize=optimize, settings=settings,
                            encode_text=True, decode=True)
            return GangPipeline(task, LocalGang(spec))
        configure_process(optimize)
        logger.info("loading %s (%s) on %s as %s", source, task.value, device, dtype)
        return cls(
            task=task,
            text=loader.text(),
            # model-level offload is for GPUs too small for the models: the CFG branches one after the other too
            # (same video; batched, their activations alone take 7 GiB more at 544x960x97, past a 24 GB card)
            denoise=loader.denoiser(batch_cfg=not (sequence_batch or optimize.offload)),
            vae=loader.vae(device="cpu" if optimize.offload else None),
            offload_to=device if optimize.offload else None,
        )

    def stages(self) -> InProcessStages:
        return InProcessStages(self)

    def check_adapters(self, loras: Sequence[LoraSpec]) -> None:
        self.denoise.check_adapters(loras)


class InProcessStages:
    """The recipe's stages as plain calls on the pipeline's models."""

    def __init__(self, pipeline: LocalPipeline) -> None:
        self.pipeline = pipeline

    async def encode_text(self, prompt: str, negative_prompt: str | None) -> Conditioning:
        with self._visiting(self.pipeline.text):
            return self.pipeline.text.encode(prompt, negative_prompt)

    async def encode_image(self, request: GenerationRequest) -> ImageCondition:
        with self._visiting(self.pipeline.vae):
            return self.pipeline.vae.encode_image(request.image, request.height, request.width, request.seed)

    async def denoise(self, task: Task, conditioning: Conditioning, params: DenoiseParams,
                      image: ImageCondition | None, checkpoint: Checkpoint | None = None
                      ) -> AsyncIterator[StepProgress | Denoised]:
        latents = None
        resume = checkpoint.load_steps() if checkpoint is not None else None
        done = resume.step if resume is not None else 0
        try:
            with self._visiting(self.pipeline.denoise):
                weights_s = self.pipeline.denoise.load_adapters(params.loras)
                for progress, latents in self.pipeline.denoise.steps(conditioning, params, image, resume):
                    done = progress.step
                    yield progress
        finally:
            if checkpoint is not None and latents is not None and done < params.num_inference_steps:
                checkpoint.save_steps(StepState(done, latents.cpu()))  # closed early: paused after `done` steps
        yield Denoised(latents.cpu(), weights_s=weights_s)

    async def decode(self, latents: torch.Tensor, request: GenerationRequest) -> np.ndarray:
        with self._visiting(self.pipeline.vae):
            return self.pipeline.vae.decode(latents)

    def _visiting(self, stage: PromptEncoder | DenoiseStage | VaeStage) -> AbstractContextManager:
        """The stage's models on the accelerator for the block (only with model-level offload)."""
        offload_to = self.pipeline.offload_to
        return on_device(offload_to, *stage.models()) if offload_to is not None else nullcontext()


class GangPipeline(VideoGenerator):
    """LocalPipeline's contract over a local gang of `gpu_num` processes (CFG x Ulysses parallel)."""

    def __init__(self, task: Task, gang: LocalGang) -> None:
        self.task = task
        self.gang = gang

    def stages(self) -> LocalGangStages:
        return LocalGangStages(self.gang)

    def check_adapters(self, loras: Sequence[LoraSpec]) -> None:
        spec = self.gang.spec
        if loras:
            config = stage_loader(spec.transformers[self.task], self.task, settings=spec.settings).transformer_config()
            check_adapters(loras, config, spec.optimize, spec.settings)

    def close(self) -> None:
        self.gang.close()
