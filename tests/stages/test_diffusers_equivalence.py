"""LocalPipeline reproduces diffusers' own HunyuanVideo pipelines on the same weights and seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    HunyuanSkyreelsImageToVideoPipeline,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)

from skyreels import GenerationRequest, LocalPipeline


def reference_components(pipe: LocalPipeline, model_dir: Path) -> dict:
    """`pipe`'s models for diffusers' pipeline, but the DiT as diffusers loads it (ours runs its own attention)."""
    return dict(
        text_encoder=pipe.text.llama,
        tokenizer=pipe.text.llama_tokenizer,
        text_encoder_2=pipe.text.clip,
        tokenizer_2=pipe.text.clip_tokenizer,
        transformer=HunyuanVideoTransformer3DModel.from_pretrained(model_dir / "transformer"),
        vae=pipe.vae.vae,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(pipe.denoise.scheduler_config),
    )


def reference_frames(reference, request: GenerationRequest, **extra) -> np.ndarray:
    video = reference(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        true_cfg_scale=request.guidance_scale,
        guidance_scale=request.embedded_guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
        **extra,
    ).frames[0]
    return (video * 255).round().astype(np.uint8)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.mark.parametrize("batch_cfg", [True, False], ids=["cfg-batched", "cfg-sequential"])
def test_t2v_matches_diffusers(
    t2v_pipeline: LocalPipeline, t2v_request: GenerationRequest, tiny_t2v_dir: Path, batch_cfg: bool
) -> None:
    t2v_pipeline.denoise.batch_cfg = batch_cfg
    try:
        ours = t2v_pipeline.generate(t2v_request)
    finally:
        t2v_pipeline.denoise.batch_cfg = True
    reference = reference_frames(HunyuanVideoPipeline(**reference_components(t2v_pipeline, tiny_t2v_dir)), t2v_request)
    assert ours.frames.shape == (9, 64, 64, 3)
    assert ours.seed == 42
    assert reference.std() > 5, "the reference video is flat: the comparison would prove nothing"
    assert max_abs_diff(ours.frames, reference) <= 1


def test_i2v_matches_diffusers(
    i2v_pipeline: LocalPipeline, i2v_request: GenerationRequest, tiny_i2v_dir: Path
) -> None:
    ours = i2v_pipeline.generate(i2v_request)
    reference = reference_frames(
        HunyuanSkyreelsImageToVideoPipeline(**reference_components(i2v_pipeline, tiny_i2v_dir)), i2v_request, image=i2v_request.image
    )
    assert ours.frames.shape == (9, 64, 64, 3)
    assert reference.std() > 5
    assert max_abs_diff(ours.frames, reference) <= 1


def test_seed_decides_the_video(t2v_pipeline: LocalPipeline, t2v_request: GenerationRequest) -> None:
    first = t2v_pipeline.generate(t2v_request).frames
    again = t2v_pipeline.generate(t2v_request).frames
    other = t2v_pipeline.generate(t2v_request.model_copy(update={"seed": 43})).frames
    assert np.array_equal(first, again)
    assert max_abs_diff(first, other) > 10
