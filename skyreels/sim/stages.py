"""Stand-ins for the three stages, with their interfaces, that hold the caller for the time the real stage
takes on GPUs (SimOptions.timings, scaled by its time_factor) and make a small deterministic video.

Payloads are real-sized (prompt embeddings, latents of the requested shape), so that what crosses processes
weighs what it would; the frames are 64x64 whatever the size asked, so that the mp4 mux costs little.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from cachetools import LRUCache
from PIL import Image

from skyreels.lora.spec import LoraSpec
from skyreels.parallel.mesh import DeviceMesh, MeshShape
from skyreels.progress import StepProgress, StepState
from skyreels.random_full import LATENT_CHANNELS, RandomTextEncoderStage
from skyreels.request import Task
from skyreels.sim.faults import FaultPlan
from skyreels.sim.profile import VideoShape
from skyreels.sim.source import SimOptions
from skyreels.stages.conditioning import Conditioning, ImageCondition, PromptEmbeds
from skyreels.stages.denoise import VAE_SPATIAL_COMPRESSION, VAE_TEMPORAL_COMPRESSION, DenoiseParams, DenoiseStage
from skyreels.stages.vae import to_frames

FRAME_SIZE = 64  # pixels, square
ONE_RANK = MeshShape(world_size=1, cfg_degree=1, ulysses_degree=1)


class SimTextEncoderStage(RandomTextEncoderStage):
    """Embeddings of the real shapes, fixed per prompt; a prompt not seen lately costs its share of the
    profile's text time (a job's two prompts take `text_encode_seconds`), a repeated one nothing."""

    def __init__(self, options: SimOptions, dtype: torch.dtype, cache_size: int = 64) -> None:
        super().__init__("cpu", dtype)
        self.options = options
        self._seen: LRUCache[str, None] = LRUCache(maxsize=cache_size)

    def encode_prompts(self, prompts: list[str]) -> list[PromptEmbeds]:
        new = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._seen]
        for prompt in new:
            FaultPlan.from_prompt(prompt).strike("text", self.options.fail_rate)
        self.options.hold(len(new) * self.options.timings.text_encode_seconds / 2)
        self._seen.update(dict.fromkeys(new))
        embeds = super().encode_prompts(prompts)
        for prompt, embed in zip(prompts, embeds, strict=True):
            FaultPlan.from_prompt(prompt).mark(embed.pooled)
        return embeds


class SimDenoiseStage:
    """DenoiseStage's interface: each step holds the gang for the profile's step time on its mesh."""

    device = torch.device("cpu")
    latent_channels = LATENT_CHANNELS
    initial_noise = DenoiseStage.initial_noise  # the noise the real stage draws, of the real latent shape

    def __init__(self, task: Task, options: SimOptions) -> None:
        self.task = task
        self.options = options
        self.mesh: DeviceMesh | None = None
        self._calls = 0  # the same on every rank of a gang: they run the same commands

    @property
    def takes_image(self) -> bool:
        return self.task is Task.I2V

    def models(self) -> tuple[torch.nn.Module, ...]:
        return ()

    def distribute(self, mesh: DeviceMesh) -> None:
        self.mesh = mesh

    # The sim's DiT has no weights to adapt: a request's LoRA adapters are taken and change nothing.
    def check_adapters(self, loras: Sequence[LoraSpec]) -> None:
        pass

    def load_adapters(self, loras: Sequence[LoraSpec]) -> float:
        return 0.0

    def steps(
        self, conditioning: Conditioning, params: DenoiseParams, image: ImageCondition | None = None,
        resume: StepState | None = None,
    ) -> Iterator[tuple[StepProgress, torch.Tensor]]:
        if self.takes_image != (image is not None):
            raise ValueError(f"the sim's {self.task.value} DiT {'needs' if self.takes_image else 'takes no'} image")
        true_cfg = params.guidance_scale > 1.0
        if true_cfg and conditioning.negative is None:
            raise ValueError("guidance_scale > 1 (true CFG) needs a negative prompt")
        mesh = self.mesh.shape if self.mesh is not None else ONE_RANK
        rank = self.mesh.rank if self.mesh is not None else 0
        seconds = self.options.timings.step_seconds(
            VideoShape(height=params.height, width=params.width, num_frames=params.num_frames),
            mesh.cfg_degree, mesh.ulysses_degree, true_cfg)
        plan = FaultPlan.read(conditioning.positive.pooled)
        # every rank draws the same chance, so that the gang fails together instead of waiting on a failed rank
        chance = random.Random(f"{params.seed}:{self._calls}")
        self._calls += 1
        noise = self.initial_noise(params, image)
        total = params.num_inference_steps
        for step in range(1 + (resume.step if resume is not None else 0), total + 1):
            self.options.hold(seconds)
            if step == (total + 1) // 2:
                plan.strike("denoise", self.options.fail_rate, chance, crashes_here=rank == mesh.world_size - 1)
            latents = noise if step < total else plan.mark(0.5 * noise + conditioning.positive.pooled[0, 1:].mean())
            yield StepProgress(step=step, total=total), latents


class SimVaeStage:
    """VaeStage's interface: holds the GPU(s) for the profile's encode and decode times."""

    device = torch.device("cpu")

    def __init__(self, options: SimOptions) -> None:
        self.options = options

    def models(self) -> tuple[torch.nn.Module, ...]:
        return ()

    def encode_image(self, image: Image.Image, height: int, width: int, seed: int) -> ImageCondition:
        self.options.hold(self.options.timings.vae_encode.at(VideoShape(height=height, width=width, num_frames=1)))
        FaultPlan().strike("image", self.options.fail_rate)
        generator = torch.Generator("cpu").manual_seed(seed)
        latent_size = (height // VAE_SPATIAL_COMPRESSION, width // VAE_SPATIAL_COMPRESSION)
        latents = torch.randn((1, LATENT_CHANNELS, 1, *latent_size), generator=generator)
        return ImageCondition(latents=latents, generator_state=generator.get_state())

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        return self._decode(latents, ranks=1, crashes_here=True)

    def decode_parallel(self, latents: torch.Tensor, group: dist.ProcessGroup | None = None) -> np.ndarray | None:
        """The gang's ranks share the decode: frames on rank 0, None elsewhere."""
        rank, ranks = (dist.get_rank(group), dist.get_world_size(group)) if dist.is_initialized() else (0, 1)
        frames = self._decode(latents, ranks, crashes_here=rank == ranks - 1)
        return frames if rank == 0 else None

    def _decode(self, latents: torch.Tensor, ranks: int, crashes_here: bool) -> np.ndarray:
        latent_frames, height, width = latents.shape[2:]
        num_frames = (latent_frames - 1) * VAE_TEMPORAL_COMPRESSION + 1
        shape = VideoShape(height=height * VAE_SPATIAL_COMPRESSION, width=width * VAE_SPATIAL_COMPRESSION,
                           num_frames=num_frames)
        self.options.hold(self.options.timings.decode_seconds(shape, ranks))
        FaultPlan.read(latents).strike("decode", self.options.fail_rate, crashes_here=crashes_here)
        colours = F.interpolate(latents[:, :3].float(), size=(num_frames, FRAME_SIZE, FRAME_SIZE), mode="trilinear")
        return to_frames(colours.tanh())
