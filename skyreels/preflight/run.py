"""One process of a GPU run, played on fake CUDA at full size: its faults, and the memory it holds.

A process is what a GPU run starts: `skyreels generate` (every stage in one process), a rank of a DiT gang (the
local gang of `--gpu_num N` or a Serve Denoiser worker), or a Serve TextEncoder or Vae replica. Each runs the
project's own code, the same functions a GPU run calls (LocalPipeline, GangRank and its commands, the stages), on
the `fake-full` preset; a gang's rank plays rank 0 of a fake process group of the gang's size, so its Ulysses and
CFG collectives and its share of the parallel VAE decode run as on N GPUs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from skyreels.gang.commands import Command, Decode
from skyreels.gang.local import LocalGangStages
from skyreels.gang.rank import GangRank, RankSpec
from skyreels.loader import stage_loader
from skyreels.models import TINY, resolve_model
from skyreels.optimize.config import OptimizeConfig
from skyreels.parallel.group import FAKE_BACKEND
from skyreels.preflight.architecture import FAKE_FULL
from skyreels.preflight.fake_cuda import fake_cuda
from skyreels.preflight.gpus import GpuType
from skyreels.pipeline import LocalPipeline
from skyreels.random_full import LATENT_CHANNELS, POOLED_HIDDEN, TEXT_HIDDEN
from skyreels.preflight.memory import PINNED
from skyreels.recipe import generate, run_sync
from skyreels.request import GenerationRequest, Task
from skyreels.stages.conditioning import Conditioning, ImageCondition, PromptEmbeds
from skyreels.stages.denoise import DenoiseParams
from skyreels.stages.text import MAX_PROMPT_TOKENS

logger = logging.getLogger(__name__)

# Steps played: the first step allocates all a step ever holds (the step cache's residuals included, kept from
# step 1 on); step 2 is the first the cache may skip. Later steps repeat step 2.
PLAYED_STEPS = 2


class Role(Enum):
    PIPELINE = "generate (every stage in one process)"
    GANG_RANK = "DiT gang rank"
    TEXT_ENCODER = "TextEncoder replica"
    VAE = "Vae replica"


@dataclass(frozen=True)
class ProcessPlan:
    """One process of a GPU run and what it is asked to do."""

    role: Role
    task: Task
    request: GenerationRequest
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    world_size: int = 1  # the gang's size (GANG_RANK); PIPELINE with more than one: a local gang's rank
    rank: int = 0  # which rank of the gang this process is (rank 0 holds what only the main rank needs)
    sequence_batch: bool = False
    encode_text: bool = False  # a gang rank holding the text encoders (rank 0 of a monolithic gang)
    decode: bool = False  # a gang rank holding the VAE and decoding its share
    served: tuple[Task, ...] = ()  # the models a gang serves (weights swapped in place); default: the task's
    dtype: torch.dtype = torch.bfloat16


@dataclass(frozen=True)
class ProcessMemory:
    """What one process held at its peak, in bytes, as the allocators would count it."""

    gpu_allocated: int  # torch.cuda.max_memory_allocated of its GPU
    host_pageable: int
    host_pinned: int
    side_streams: int  # CUDA streams it made besides the default one (each has a cuBLAS workspace)
    world_size: int  # > 1: it holds NCCL communicators


class PreflightFault(Exception):
    """What CUDA would have raised in this process, with where."""


def play(plan: ProcessPlan, gpu: GpuType) -> ProcessMemory:
    """Runs `plan`'s process on fake CUDA of type `gpu`; its peak memory, or PreflightFault."""
    for task in (plan.task, *plan.served):
        resolve_model(TINY, task)  # the tokenizers, made before fake mode (real files, real tensors)
    request = plan.request.with_seed().model_copy(
        update={"num_inference_steps": min(plan.request.num_inference_steps, PLAYED_STEPS)})
    with fake_cuda(gpu, device_count=max(plan.world_size, 1)) as state:
        try:
            _run(plan, request)
        except Exception as error:  # noqa: BLE001 - every error of the played run is the report
            raise PreflightFault(f"{plan.role.value}: {type(error).__name__}: {_first_line(error)}") from error
        tracker = state.tracker
        return ProcessMemory(
            gpu_allocated=max((usage.peak for device, usage in tracker.usage.items() if device.startswith("cuda")),
                              default=0),
            host_pageable=tracker.peak("cpu"),
            host_pinned=tracker.peak(PINNED),
            side_streams=state.streams_made,
            world_size=plan.world_size,
        )


def _run(plan: ProcessPlan, request: GenerationRequest) -> None:
    if plan.role is Role.PIPELINE and plan.world_size == 1:
        pipe = LocalPipeline.from_pretrained(FAKE_FULL, plan.task, device="cuda", dtype=plan.dtype,
                                             sequence_batch=plan.sequence_batch, optimize=plan.optimize)
        pipe.generate(request)
        return
    if plan.role in (Role.PIPELINE, Role.GANG_RANK):
        _run_rank(plan, request)
        return
    loader = stage_loader(FAKE_FULL, plan.task, "cuda", plan.dtype, plan.optimize)
    if plan.role is Role.TEXT_ENCODER:
        loader.text().encode(request.prompt, request.negative_prompt if request.uses_true_cfg else None)
        return
    vae = loader.vae()
    if request.image is not None:
        vae.encode_image(request.image, request.height, request.width, request.seed)
    vae.decode(_latents(request))


def _run_rank(plan: ProcessPlan, request: GenerationRequest) -> None:
    """A rank of a gang of `plan.world_size`: loads as GangRank does, joins a fake group, runs the commands the
    gang's driver sends (LocalGangStages) to this rank, in this process."""
    served = plan.served or (plan.task,)
    spec = RankSpec(transformers=dict.fromkeys(served, FAKE_FULL), device="cuda", dtype=plan.dtype,
                    world_size=plan.world_size, sequence_batch=plan.sequence_batch, optimize=plan.optimize,
                    encode_text=plan.encode_text or plan.role is Role.PIPELINE,
                    decode=plan.decode or plan.role is Role.PIPELINE, group_backend=FAKE_BACKEND)
    rank = GangRank(spec, rank=plan.rank)
    rank.join("127.0.0.1", 0)
    try:
        stages = LocalGangStages(_InProcessGang(rank))
        if spec.encode_text and spec.decode and rank.is_main:
            run_sync(generate(request, stages))
            return
        if spec.encode_text and rank.is_main:
            run_sync(stages.encode_text(request.prompt, request.negative_prompt))
        conditioning = _fake_conditioning(request)
        run_sync(_drain(stages, plan.task, conditioning, request))
        if spec.decode:  # every rank decodes its share; only rank 0 answers
            list(rank.run(Decode(_latents(request))))
    finally:
        rank.close()


async def _drain(stages: LocalGangStages, task: Task, conditioning: Conditioning, request: GenerationRequest) -> None:
    image = None
    if task is Task.I2V:
        first_frame = _latents(request)[:, :, :1]
        image = ImageCondition(latents=first_frame, generator_state=torch.Generator().get_state())
    async for _ in stages.denoise(task, conditioning, DenoiseParams.from_request(request), image):
        pass


def _latents(request: GenerationRequest) -> torch.Tensor:
    """The denoised latents of `request`'s video, as the DiT hands them to the decode (host, float32)."""
    params = DenoiseParams.from_request(request)
    return torch.empty(1, LATENT_CHANNELS, params.latent_frames, *params.latent_size)


def _fake_conditioning(request: GenerationRequest) -> Conditioning:
    """What the TextEncoder stage hands a gang that does not encode: the embeddings' real shapes, on the host."""
    def embeds() -> PromptEmbeds:
        return PromptEmbeds(embeds=torch.empty(1, MAX_PROMPT_TOKENS, TEXT_HIDDEN, dtype=torch.bfloat16),
                            mask=torch.ones(1, MAX_PROMPT_TOKENS, dtype=torch.int64),
                            pooled=torch.empty(1, POOLED_HIDDEN, dtype=torch.bfloat16))

    return Conditioning(positive=embeds(), negative=embeds() if request.uses_true_cfg else None)


class _InProcessGang:
    """A gang of one rank in this process, as LocalGangStages drives a LocalGang."""

    def __init__(self, rank: GangRank) -> None:
        self.rank = rank

    def run(self, command: Command) -> Iterator[Any]:
        self.rank.stop.clear()
        yield from self.rank.run(command)

    def stop_steps(self) -> None:
        self.rank.stop.set()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else repr(error)
