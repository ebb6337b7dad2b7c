"""Denoise stage: noise -> video latents with the HunyuanVideo DiT, flow-match Euler, true CFG."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel

from skyreels.lora.cache import DEFAULT_CAPACITY, AdapterCache
from skyreels.lora.spec import LoraSpec
from skyreels.optimize.apply import prepare_transformer
from skyreels.optimize.cache import log_step_cache_use, share_step_cache_decisions
from skyreels.optimize.config import OptimizeConfig
from skyreels.parallel.cfg import gather_branches
from skyreels.parallel.joint_attention import use_joint_attention
from skyreels.parallel.mesh import DeviceMesh
from skyreels.progress import StepCallback, StepProgress, StepState
from skyreels.request import GenerationRequest
from skyreels.stages.conditioning import Conditioning, ImageCondition, PromptEmbeds
from skyreels.upstream import reset_step_cache

logger = logging.getLogger(__name__)

CFG_BRANCHES = ("cond", "uncond")
VAE_TEMPORAL_COMPRESSION = 4
VAE_SPATIAL_COMPRESSION = 8


@dataclass(frozen=True)
class DenoiseParams:
    """The sampling settings of one video, in the units the DiT expects."""

    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float  # true CFG; > 1 needs a negative prompt in the conditioning
    embedded_guidance_scale: float
    seed: int
    loras: tuple[LoraSpec, ...] = ()  # on for this video only

    def __post_init__(self) -> None:
        if self.height % VAE_SPATIAL_COMPRESSION or self.width % VAE_SPATIAL_COMPRESSION:
            raise ValueError(f"height and width must be multiples of {VAE_SPATIAL_COMPRESSION}")
        if (self.num_frames - 1) % VAE_TEMPORAL_COMPRESSION:
            raise ValueError(f"num_frames must be {VAE_TEMPORAL_COMPRESSION}k+1")

    @classmethod
    def from_request(cls, request: GenerationRequest) -> DenoiseParams:
        """The DiT's view of a request, whose seed must be resolved (GenerationRequest.with_seed)."""
        if request.seed is None:
            raise ValueError("resolve the seed first (GenerationRequest.with_seed)")
        return cls(
            num_frames=request.num_frames,
            height=request.height,
            width=request.width,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            embedded_guidance_scale=request.embedded_guidance_scale,
            seed=request.seed,
            loras=tuple(request.loras),
        )

    @property
    def latent_frames(self) -> int:
        return (self.num_frames - 1) // VAE_TEMPORAL_COMPRESSION + 1

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // VAE_SPATIAL_COMPRESSION, self.width // VAE_SPATIAL_COMPRESSION


class DenoiseStage:
    """Runs the DiT over the sampling schedule. Between calls it keeps only the LoRA adapters it loaded (off)."""

    def __init__(
        self,
        transformer: HunyuanVideoTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        batch_cfg: bool = True,
        mesh: DeviceMesh | None = None,
        device: torch.device | str | None = None,
        optimize: OptimizeConfig | None = None,
        lora_capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        """`optimize`: what `prepared` applied to the transformer (LoRA adapters are refused under some of it)."""
        self.transformer = transformer.eval().requires_grad_(False)
        self.adapters = AdapterCache(self.transformer, lora_capacity, optimize)
        # where the steps run: the transformer's device, unless its weights are offloaded to the host
        self._device = torch.device(device) if device is not None else None
        self.mesh: DeviceMesh | None = None
        if mesh is not None:
            self.distribute(mesh)
        self.scheduler_config = scheduler.config
        # Both CFG branches in one forward (batch 2) is faster; one after the other halves activations.
        self.batch_cfg = batch_cfg

    @classmethod
    def from_pretrained(
        cls,
        transformer_dir: str | Path,
        scheduler_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_cfg: bool = True,
        mesh: DeviceMesh | None = None,
        optimize: OptimizeConfig | None = None,
    ) -> DenoiseStage:
        transformer = HunyuanVideoTransformer3DModel.from_pretrained(transformer_dir, torch_dtype=dtype)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(scheduler_dir)
        return cls.prepared(transformer, scheduler, device, optimize, batch_cfg=batch_cfg, mesh=mesh)

    @classmethod
    def prepared(
        cls,
        transformer: HunyuanVideoTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        device: str | torch.device,
        optimize: OptimizeConfig | None = None,
        batch_cfg: bool = True,
        mesh: DeviceMesh | None = None,
    ) -> DenoiseStage:
        """A stage over a model already built, with the optimisations applied."""
        optimize = optimize or OptimizeConfig()
        prepare_transformer(transformer, optimize, torch.device(device))
        execution_device = device if optimize.block_offload else None
        return cls(transformer, scheduler, batch_cfg=batch_cfg, mesh=mesh, device=execution_device, optimize=optimize)

    def distribute(self, mesh: DeviceMesh) -> None:
        """Run over `mesh` from now on: CFG branches split, video tokens sharded (Ulysses)."""
        use_joint_attention(self.transformer, mesh)
        if self.transformer.is_cache_enabled:
            share_step_cache_decisions(self.transformer, mesh)
        self.mesh = mesh

    @property
    def device(self) -> torch.device:
        return self._device or self.transformer.device

    def models(self) -> tuple[torch.nn.Module, ...]:
        return (self.transformer,)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def latent_channels(self) -> int:
        return self.transformer.config.out_channels

    @property
    def takes_image(self) -> bool:
        """SkyReels-V1-I2V: the image latents are concatenated to the noise on channels."""
        return self.transformer.config.in_channels == 2 * self.latent_channels

    def initial_noise(self, params: DenoiseParams, image: ImageCondition | None = None) -> torch.Tensor:
        """Noise for the full latent shape, drawn on a CPU generator as diffusers draws it.

        Drawn once for the whole video, whatever the device or the later sharding, so a seed gives
        the same video everywhere.
        """
        generator = torch.Generator("cpu")
        if image is None:
            generator.manual_seed(params.seed)
        else:
            generator.set_state(image.generator_state)
        shape = (1, self.latent_channels, params.latent_frames, *params.latent_size)
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def denoise(
        self,
        conditioning: Conditioning,
        params: DenoiseParams,
        image: ImageCondition | None = None,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Returns the denoised latents (1, C, T', H/8, W/8), float32, on the stage's device."""
        for progress, latents in self.steps(conditioning, params, image):
            if on_step is not None:
                on_step(progress)
        return latents

    def check_adapters(self, loras: Sequence[LoraSpec]) -> None:
        """Refuses (AdapterError, with the reason) LoRA adapters that could not run here, loading nothing."""
        self.adapters.check(loras)

    def load_adapters(self, loras: Sequence[LoraSpec]) -> float:
        """Loads the LoRA adapters not loaded yet; returns the seconds spent (0.0 when all were)."""
        return self.adapters.load(loras)

    def steps(
        self, conditioning: Conditioning, params: DenoiseParams, image: ImageCondition | None = None,
        resume: StepState | None = None,
    ) -> Iterator[tuple[StepProgress, torch.Tensor]]:
        """The sampling loop, one step per iteration: the caller may stop between any two steps, and a later call
        given `resume` (the step and latents it stopped at) goes on from there to the same latents. The request's
        LoRA adapters are on from the first step to the last, or until the caller stops."""
        self.load_adapters(params.loras)
        with self.adapters.applied(params.loras):
            yield from self._steps(conditioning, params, image, resume)

    @torch.inference_mode()
    def _steps(
        self, conditioning: Conditioning, params: DenoiseParams, image: ImageCondition | None,
        resume: StepState | None,
    ) -> Iterator[tuple[StepProgress, torch.Tensor]]:
        if self.takes_image != (image is not None):
            raise ValueError(
                "this transformer is an I2V model and needs an image" if self.takes_image
                else "this transformer is a T2V model and takes no image"
            )
        use_cfg = params.guidance_scale > 1.0
        if use_cfg and conditioning.negative is None:
            raise ValueError("guidance_scale > 1 (true CFG) needs a negative prompt")

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        sigmas = np.linspace(1.0, 0.0, params.num_inference_steps + 1)[:-1]
        scheduler.set_timesteps(sigmas=sigmas, device=self.device)
        first = resume.step if resume is not None else 0
        scheduler.set_begin_index(first)

        if self.transformer.is_cache_enabled:
            # the cache compares steps of this video only; a resumed run computes its first step in full
            reset_step_cache(self.transformer)
        latents = (resume.latents if resume is not None else self.initial_noise(params, image)).to(self.device)
        image_latents = self._padded_image_latents(image, params) if image is not None else None
        conditioning = conditioning.to(self.device, self.dtype)
        guidance = torch.tensor([params.embedded_guidance_scale * 1000.0], dtype=self.dtype, device=self.device)

        total = len(scheduler.timesteps)
        for index, timestep in enumerate(scheduler.timesteps[first:], start=first):
            model_input = latents.to(self.dtype)
            if image_latents is not None:
                model_input = torch.cat([model_input, image_latents], dim=1)
            noise_pred = self._predict_noise(model_input, timestep, conditioning, guidance, params, use_cfg)
            latents = scheduler.step(noise_pred, timestep, latents, return_dict=False)[0]
            if index + 1 == total and self.transformer.is_cache_enabled:
                log_step_cache_use(self.transformer)
            yield StepProgress(step=index + 1, total=total), latents

    def _predict_noise(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: Conditioning,
        guidance: torch.Tensor,
        params: DenoiseParams,
        use_cfg: bool,
    ) -> torch.Tensor:
        if not use_cfg:
            return self._forward(model_input, timestep, [conditioning.positive], guidance, "cond")
        branches = [conditioning.positive, conditioning.negative]
        if self.mesh is not None and self.mesh.cfg_degree == 2:
            mine = self._forward(model_input, timestep, [branches[self.mesh.cfg_rank]], guidance,
                                 CFG_BRANCHES[self.mesh.cfg_rank])
            positive, negative = gather_branches(mine, self.mesh)
        elif self.batch_cfg:
            batched = model_input.repeat(2, 1, 1, 1, 1)
            positive, negative = self._forward(batched, timestep, branches, guidance, "cond+uncond").chunk(2)
        else:
            positive, negative = (self._forward(model_input, timestep, [branch], guidance, name)
                                  for branch, name in zip(branches, CFG_BRANCHES, strict=True))
        return negative + params.guidance_scale * (positive - negative)

    def _forward(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        prompts: list[PromptEmbeds],
        guidance: torch.Tensor,
        cache_name: str,
    ) -> torch.Tensor:
        """One DiT forward; `cache_name` keeps the step cache's history per CFG branch."""
        batch = model_input.shape[0]
        with self.transformer.cache_context(cache_name):
            return self.transformer(
                hidden_states=model_input,
                timestep=timestep.expand(batch).to(torch.float32),
                encoder_hidden_states=torch.cat([p.embeds for p in prompts]),
                encoder_attention_mask=torch.cat([p.mask for p in prompts]),
                pooled_projections=torch.cat([p.pooled for p in prompts]),
                guidance=guidance.expand(batch),
                return_dict=False,
            )[0]

    def _padded_image_latents(self, image: ImageCondition, params: DenoiseParams) -> torch.Tensor:
        """The first-frame latents followed by zeros over the remaining latent frames."""
        first = image.latents.to(self.device, torch.float32)
        padding = first.new_zeros(1, first.shape[1], params.latent_frames - 1, *params.latent_size)
        return torch.cat([first, padding], dim=2).to(self.dtype)
