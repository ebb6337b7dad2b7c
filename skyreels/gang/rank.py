"""One rank of a DiT gang, Ray-free: load the stages it needs, join the group, plan the mesh, run commands.

The local gang's processes and the Serve app's DiT worker actors are thin wrappers around `GangRank`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from skyreels.gang.commands import Command, Decode, Denoise, EncodeImage, EncodeText, RunsOn
from skyreels.loader import served_denoisers, stage_loader
from skyreels.models import ModelSettings
from skyreels.optimize.config import OptimizeConfig
from skyreels.optimize.offload import on_device
from skyreels.parallel.group import GroupSpec, any_rank, destroy_group, init_group
from skyreels.parallel.mesh import DeviceMesh, MeshShape
from skyreels.optimize.cache import step_cache_use
from skyreels.progress import StepState
from skyreels.recipe import DenoiseFigures, Denoised
from skyreels.request import Task
from skyreels.runtime import configure_process
from skyreels.stages.denoise import DenoiseStage

logger = logging.getLogger(__name__)


class StopFlag(Protocol):
    """threading.Event in an actor, multiprocessing's Event across the local gang's processes."""

    def is_set(self) -> bool: ...

    def clear(self) -> None: ...


@dataclass(frozen=True)
class RankSpec:
    """What every rank of one gang loads, and where."""

    transformers: dict[Task, str]  # model source of each task the gang serves
    device: str  # "cpu" or "cuda"
    dtype: torch.dtype
    world_size: int
    sequence_batch: bool = False
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    settings: ModelSettings = field(default_factory=ModelSettings)
    encode_text: bool = False  # rank 0 holds the text encoders (and encodes the I2V image when it decodes)
    decode: bool = False  # every rank holds the VAE and decodes its share of the tiles
    collective_timeout_s: float = 300.0  # a collective waiting longer fails (NCCL: the process is torn down)
    group_backend: str | None = None  # None: NCCL on GPUs, gloo on CPU; "fake": skyreels preflight's lone rank


class GangRank:
    def __init__(self, spec: RankSpec, rank: int, cuda_index: int = 0, stop: StopFlag | None = None) -> None:
        configure_process(spec.optimize)
        self.spec, self.rank = spec, rank
        self.cuda_index = cuda_index  # Ray shows each worker one GPU (0); a local gang uses GPU `rank`
        self.device = f"cuda:{cuda_index}" if spec.device == "cuda" else "cpu"
        if spec.device == "cuda":
            # first: the CUDA context, the streams (block offload's prefetch), cuBLAS handles and compiled kernels
            # of all that follows belong to the current device, which is GPU 0 until set
            torch.cuda.set_device(cuda_index)
        self.stop = stop or threading.Event()
        loaders = {task: stage_loader(source, task, self.device, spec.dtype, spec.optimize, spec.settings)
                   for task, source in spec.transformers.items()}
        # one transformer whose weights the bank swaps between the tasks (a stage per task under block offload)
        self.denoisers, self.weights = served_denoisers(loaders, batch_cfg=not spec.sequence_batch)
        base = next(iter(loaders.values()))  # text encoders and VAE are the HunyuanVideo base of every task
        self.heads = base.attention_heads()
        self.text = base.text() if spec.encode_text and self.is_main else None
        # model-level offload (--offload): every model in host memory, visiting the GPU while a command runs on it
        self.vae = base.vae(device="cpu" if spec.optimize.offload else None) if spec.decode else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def join(self, master_addr: str, master_port: int) -> None:
        """Joins the gang's group (every rank must call it) and splits the transformer(s) over the mesh."""
        init_group(GroupSpec(self.rank, self.spec.world_size, master_addr, master_port, self.spec.device,
                             cuda_index=self.cuda_index, timeout_s=self.spec.collective_timeout_s,
                             backend_override=self.spec.group_backend))
        mesh = DeviceMesh(MeshShape.plan(self.spec.world_size, self.heads, sequence_batch=self.spec.sequence_batch))
        for stage in dict.fromkeys(self.denoisers.values()):
            stage.distribute(mesh)

    def run(self, command: Command) -> Iterator[Any]:
        """This rank's part of `command`. Rank 0 yields the answer (one item, or the Denoise stream); the other
        ranks yield nothing."""
        if command.runs_on is RunsOn.MAIN_RANK and not self.is_main:
            raise RuntimeError(f"{type(command).__name__} runs on the main rank only")
        match command:
            case EncodeText(prompt=prompt, negative_prompt=negative):
                # tensors travel pickled: hand them over in host memory
                text = self._stage(self.text, "text encoders")
                with self._visiting(text):
                    conditioning = text.encode(prompt, negative)
                yield conditioning.to("cpu", conditioning.positive.embeds.dtype)
            case EncodeImage(image=image, height=height, width=width, seed=seed):
                vae = self._stage(self.vae, "VAE")
                with self._visiting(vae):
                    image_condition = vae.encode_image(image, height, width, seed).to_cpu()
                yield image_condition
            case Denoise():
                with self._visiting(self.denoisers[command.task]):
                    yield from self._denoise(command)
            case Decode(latents=latents):
                vae = self._stage(self.vae, "VAE")
                with self._visiting(vae):
                    frames = vae.decode_parallel(latents)
                if self.is_main:
                    yield frames

    def _denoise(self, command: Denoise) -> Iterator[Any]:
        """Every rank runs the steps; after each one the ranks agree whether any was asked to stop, so that
        they stop together and none is left waiting in a collective; the main rank then saves the step and latents
        it stopped at to the command's checkpoint. The driver clears the stop flag.

        Every rank swaps to the task's weights and loads the request's LoRA adapters first (all run every Denoise,
        so they do it together)."""
        stage = self.denoisers[command.task]
        model_stage = isinstance(stage, DenoiseStage)  # the sim's stand-in keeps no adapters and no step cache
        adapters = stage.adapters if model_stage else None
        hits, misses = (adapters.hits, adapters.misses) if adapters is not None else (0, 0)
        swap_s = self.weights.activate(command.task)
        lora_s = stage.load_adapters(command.params.loras)
        if adapters is not None:  # this load's lookups (the steps look the adapters up again)
            hits, misses = adapters.hits - hits, adapters.misses - misses
        latents = None
        clock = time.perf_counter()
        for progress, latents in stage.steps(command.conditioning, command.params, command.image, command.resume):
            if self.device.startswith("cuda"):
                torch.cuda.synchronize(self.device)  # the step's kernels, not just their launches
            if self.is_main:
                yield replace(progress, seconds=time.perf_counter() - clock)
            clock = time.perf_counter()  # the next step's time starts here, not while the consumer held the answer
            if progress.step < progress.total and any_rank(self.stop.is_set(), stage.device):
                if self.is_main and command.checkpoint is not None:  # paused: where the steps stopped, once
                    command.checkpoint.save_steps(StepState(progress.step, latents.cpu()))
                return
        if self.is_main:
            figures = DenoiseFigures(swap_s=swap_s, lora_s=lora_s, adapter_hits=hits, adapter_loads=misses,
                                     **(step_cache_use(stage.transformer) if model_stage else {}))
            yield Denoised(latents.cpu(), weights_s=swap_s + lora_s, figures=figures)

    def _visiting(self, stage: Any) -> AbstractContextManager:
        """With model-level offload, the stage's models on this rank's device for the block (as LocalPipeline's)."""
        return on_device(self.device, *stage.models()) if self.spec.optimize.offload else nullcontext()

    def _stage(self, stage: Any, name: str) -> Any:
        if stage is None:
            raise RuntimeError(f"this gang was built without the {name} (RankSpec)")
        return stage

    def close(self) -> None:
        destroy_group()
