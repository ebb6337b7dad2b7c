"""SkyReels-V1's real architectures, shipped as configs, built as fake tensors: the `fake-full` preset.

The DiT (SkyReels-V1-Hunyuan-T2V / -I2V) and the VAE take `skyreels.random_full`'s configs (the Hub's
config.json entries); the text encoders are those of hunyuanvideo-community/HunyuanVideo (text_encoder: LLaMA-3-8B
style, text_encoder_2: CLIP-L). Models are built on the meta device and then given fake storage where
`from_pretrained` would put the real weights (host memory, in the loading dtype), so the stages' own code moves,
quantises and offloads them as it does on a GPU. Only FakeTensorMode can hold them: no byte of weights exists.
The tokenizers are the tiny preset's (same special tokens and template; the vocabulary only changes token ids).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

from skyreels import random_full
from skyreels.preflight.replay import replay_by_shape
from skyreels.request import Task

FAKE_FULL = "fake-full"

# hunyuanvideo-community/HunyuanVideo text_encoder/config.json
LLAMA_CONFIG = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=128320, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="silu",
)
# hunyuanvideo-community/HunyuanVideo text_encoder_2/config.json (CLIP ViT-L/14's text tower)
CLIP_CONFIG = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=49408,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
)


class NotInFakeModeError(RuntimeError):
    """The fake-full preset was asked for outside `skyreels preflight`."""


def fake_transformer(task: Task, dtype: torch.dtype) -> HunyuanVideoTransformer3DModel:
    return _on_host(lambda: HunyuanVideoTransformer3DModel(**random_full.transformer_config(task)), dtype)


def fake_vae(dtype: torch.dtype) -> AutoencoderKLHunyuanVideo:
    """The VAE, with its tiled decode made affordable on fake tensors (skyreels.preflight.replay): the coders run
    once per tile shape, and the blends of tile overlaps, in-place arithmetic row by row that allocates only a row,
    are left out."""
    vae = _on_host(lambda: AutoencoderKLHunyuanVideo(latent_channels=random_full.LATENT_CHANNELS), dtype)
    replay_by_shape(vae.encoder)
    replay_by_shape(vae.decoder)
    for blend in ("blend_v", "blend_h", "blend_t"):
        setattr(vae, blend, _keep_tile)
    return vae


def _keep_tile(a: torch.Tensor, b: torch.Tensor, blend_extent: int) -> torch.Tensor:
    return b


def fake_llama(dtype: torch.dtype) -> LlamaModel:
    return _on_host(lambda: LlamaModel(LlamaConfig(**LLAMA_CONFIG)), dtype)


def fake_clip(dtype: torch.dtype) -> CLIPTextModel:
    return _on_host(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_CONFIG)), dtype)


def _on_host(build: Callable[[], nn.Module], dtype: torch.dtype) -> nn.Module:
    """The model as from_pretrained(torch_dtype=dtype) leaves it: in host memory, in `dtype`, in eval mode.

    Built directly as fake tensors in `dtype` (its initialisation touches no data), not on the meta device: the
    module's later .to() calls swap fake parameters, which a meta tensor the fake mode has converted refuses."""
    if not in_fake_mode():
        raise NotInFakeModeError(f"the {FAKE_FULL!r} preset exists only under `skyreels preflight` (fake CUDA)")
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cpu"):
            model = build()
    finally:
        torch.set_default_dtype(default_dtype)
    return model.eval().requires_grad_(False)


def in_fake_mode() -> bool:
    return isinstance(torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE), FakeTensorMode)
