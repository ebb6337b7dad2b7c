"""Applies an OptimizeConfig to the models of the stages, in the order that composes."""

from __future__ import annotations

import torch
from diffusers import HunyuanVideoTransformer3DModel
from torch import nn

from skyreels.optimize.attention import set_backend, usable_backend
from skyreels.optimize.cache import enable_step_cache
from skyreels.optimize.compile import compile_blocks
from skyreels.optimize.config import OptimizeConfig
from skyreels.optimize.offload import stream_blocks
from skyreels.optimize.quant import quantize_linears, resolve_mode
from skyreels.parallel.joint_attention import use_joint_attention


def prepare_transformer(
    transformer: HunyuanVideoTransformer3DModel, config: OptimizeConfig, device: torch.device
) -> None:
    """Mask-free joint attention, quantise, pick the attention kernel, add the step cache, place (or stream)
    it, compile.

    The model arrives on the CPU; it ends on `device`, or on the CPU when offloaded.
    """
    use_joint_attention(transformer)
    prepare_weights(transformer, config, device)
    backend = usable_backend(config.attention_backend, device)
    if backend != "native":
        set_backend(transformer, backend)
    if config.step_cache_threshold is not None:
        enable_step_cache(transformer, config.step_cache_threshold)
    if config.block_offload:
        stream_blocks(transformer, device, keep_pinned=config.high_cpu_memory)
    elif not config.offload:
        transformer.to(device)
    if config.compile:
        compile_blocks(transformer)


def prepare_weights(model: nn.Module, config: OptimizeConfig, device: torch.device) -> None:
    """What changes the weights themselves: the quantisation, as it is done for `device`. Also for the host copy
    of a transformer that one on `device` swaps in (skyreels.weights)."""
    if config.quant != "none":
        quantize_linears(model, resolve_mode(config.quant, device))


def prepare_text_encoder(llama: nn.Module, config: OptimizeConfig, device: torch.device) -> None:
    prepare_weights(llama, config, device)
