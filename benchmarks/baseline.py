"""diffusers' own models for the preset a benchmark runs: the baselines, with nothing of ours installed."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel

from skyreels import random_full
from skyreels.models import resolve_model
from skyreels.request import Task
from skyreels.stages.text import PromptEncoder, TextEncoderStage


def diffusers_transformer(preset: str, task: Task, device: str, dtype: torch.dtype) -> HunyuanVideoTransformer3DModel:
    """The preset's DiT as diffusers builds it (its forward, its attention processor); random-full gets the same
    random weights as the preset's own pipeline."""
    if preset == random_full.RANDOM_FULL:
        return random_full.random_transformer(task, device, dtype)
    paths = resolve_model(preset, task)
    return HunyuanVideoTransformer3DModel.from_pretrained(paths.transformer, torch_dtype=dtype).to(device).eval()


def diffusers_transformer_config(preset: str, task: Task) -> dict:
    if preset == random_full.RANDOM_FULL:
        return random_full.transformer_config(task)
    return dict(HunyuanVideoTransformer3DModel.load_config(resolve_model(preset, task).transformer))


def diffusers_scheduler(preset: str, task: Task) -> FlowMatchEulerDiscreteScheduler:
    if preset == random_full.RANDOM_FULL:
        return random_full.scheduler()
    return FlowMatchEulerDiscreteScheduler.from_pretrained(resolve_model(preset, task).component("scheduler"))


def diffusers_vae(preset: str, device: str, dtype: torch.dtype) -> AutoencoderKLHunyuanVideo:
    """With tiling on, as diffusers' HunyuanVideo docs set it (and as our VAE stage runs): decoding 544x960x97
    whole takes more memory than a GPU has."""
    if preset == random_full.RANDOM_FULL:
        vae = random_full.random_vae(device, dtype)
    else:
        vae_dir = resolve_model(preset, Task.T2V).component("vae")
        vae = AutoencoderKLHunyuanVideo.from_pretrained(vae_dir, torch_dtype=dtype).to(device).eval()
    vae.enable_tiling()
    return vae


def text_stage(preset: str, device: str, dtype: torch.dtype) -> PromptEncoder:
    if preset == random_full.RANDOM_FULL:
        return random_full.RandomTextEncoderStage(device, dtype)
    return TextEncoderStage.from_pretrained(resolve_model(preset, Task.T2V).base, device=device, dtype=dtype)
