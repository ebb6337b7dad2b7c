"""The `random-full` preset: SkyReels-V1's real architecture with random weights, made on the device.

For speed and memory benchmarks where no checkpoint can be downloaded: the 13B DiT (20 dual + 40
single blocks, 24 heads x 128) and the full VAE are allocated directly on the target device in the
target dtype (no host copy), and the text encoder is replaced by random embeddings of the real
shapes (LLaMA-3 hidden states 256 x 4096 and CLIP-L pooled 768).
"""

from __future__ import annotations

import hashlib

import torch
from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
from torch import nn

from skyreels.request import Task
from skyreels.stages.conditioning import PromptEmbeds
from skyreels.stages.text import MAX_PROMPT_TOKENS, PromptEncoder
from skyreels.tiny import FLOW_SHIFT

RANDOM_FULL = "random-full"
LATENT_CHANNELS = 16
TEXT_HIDDEN, POOLED_HIDDEN = 4096, 768
# hunyuanvideo-community/HunyuanVideo transformer/config.json (the SkyReels fine-tunes share it)
TRANSFORMER_CONFIG = dict(
    out_channels=LATENT_CHANNELS, num_attention_heads=24, attention_head_dim=128, num_layers=20,
    num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
    qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=TEXT_HIDDEN, pooled_projection_dim=POOLED_HIDDEN,
    rope_theta=256.0, rope_axes_dim=(16, 56, 56),
)
PROMPT_TOKENS = 40  # valid tokens of a typical prompt; the rest of the 256 is padding


def transformer_config(task: Task) -> dict:
    """The DiT config of the task: the I2V model takes the image latents concatenated on channels."""
    return {"in_channels": LATENT_CHANNELS * (2 if task is Task.I2V else 1), **TRANSFORMER_CONFIG}


def random_transformer(task: Task, device: torch.device | str, dtype: torch.dtype, seed: int = 0,
                       **config: object) -> nn.Module:
    """`config` overrides entries of the full config (fewer blocks, for a benchmark that fits in host memory)."""
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(**(transformer_config(task) | config))
    return _materialize(model, device, dtype, seed)


def random_vae(device: torch.device | str, dtype: torch.dtype, seed: int = 1) -> nn.Module:
    with torch.device("meta"):
        model = AutoencoderKLHunyuanVideo(latent_channels=LATENT_CHANNELS)
    return _materialize(model, device, dtype, seed)


def scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT)


class RandomTextEncoderStage(PromptEncoder):
    """A text stage whose embeddings are random but fixed per prompt (a hash seeds them)."""

    def __init__(self, device: torch.device | str, dtype: torch.dtype) -> None:
        self.device, self.dtype = torch.device(device), dtype

    def encode_prompts(self, prompts: list[str]) -> list[PromptEmbeds]:
        return [self._random_embeds(prompt) for prompt in prompts]

    def _random_embeds(self, prompt: str) -> PromptEmbeds:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed)
        mask = torch.zeros(1, MAX_PROMPT_TOKENS, dtype=torch.int64)
        mask[:, :PROMPT_TOKENS] = 1
        return PromptEmbeds(
            embeds=torch.randn(1, MAX_PROMPT_TOKENS, TEXT_HIDDEN, generator=generator).to(self.device, self.dtype),
            mask=mask.to(self.device),
            pooled=torch.randn(1, POOLED_HIDDEN, generator=generator).to(self.device, self.dtype),
        )

    def models(self) -> tuple[nn.Module, ...]:
        return ()


@torch.no_grad()
def _materialize(model: nn.Module, device: torch.device | str, dtype: torch.dtype, seed: int) -> nn.Module:
    """Allocates a meta-device model on `device` and fills it: N(0, 0.02) weights, unit norms, zero biases.

    (Neither model registers buffers: rotary frequencies are computed in forward.)
    """
    model = model.to(dtype).to_empty(device=device)  # the dtype on the meta device: nothing is made in fp32 first
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, parameter in model.named_parameters():
        if parameter.ndim == 1:
            parameter.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
        else:
            parameter.normal_(0.0, 0.02, generator=generator)
    return model.eval().requires_grad_(False)
