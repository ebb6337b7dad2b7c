"""A local gang (gloo ranks) with LoRA adapters reproduces one process: every rank applies the request's adapters,
under CFG parallel and Ulysses alike, and switches them off after the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skyreels import GenerationRequest, LocalPipeline
from skyreels.lora import AdapterError, LoraSpec
from skyreels.tiny import make_tiny_lora

pytestmark = pytest.mark.slow

LATENT_TOLERANCE = 1e-4
LAYOUTS = [(2, (64, 64, 5)), (3, (64, 64, 5)), (4, (64, 64, 5))]  # CFG 2; Ulysses 3 (padded); CFG 2 x Ulysses 2


@pytest.mark.parametrize(("gpu_num", "shape"), LAYOUTS, ids=[f"n{n}" for n, _ in LAYOUTS])
def test_gang_with_loras_equals_one_process(gpu_num: int, shape: tuple[int, int, int], tiny_t2v_dir: Path,
                                            tmp_path: Path) -> None:
    height, width, frames = shape
    plain = GenerationRequest(prompt="a boat on a lake", height=height, width=width, num_frames=frames,
                              num_inference_steps=2, seed=11)
    styled = plain.model_copy(update={"loras": [
        LoraSpec(source=str(make_tiny_lora(tmp_path / "x", seed=1)), scale=0.8),
        LoraSpec(source=str(make_tiny_lora(tmp_path / "y", seed=2, rank=2, targets=("to_k", "proj_mlp"))), scale=-1.2),
    ]})
    single = LocalPipeline.from_pretrained(tiny_t2v_dir)
    expected = [single.generate(request) for request in (styled, plain)]
    gang = LocalPipeline.from_pretrained(tiny_t2v_dir, gpu_num=gpu_num)
    try:
        results = [gang.generate(request) for request in (styled, plain)]
        with pytest.raises(AdapterError, match="not found"):
            gang.generate(plain.model_copy(update={"loras": [LoraSpec(source=str(tmp_path / "none.safetensors"))]}))
    finally:
        gang.close()
    for result, reference in zip(results, expected, strict=True):
        difference = (result.latents - reference.latents).abs().max()
        print(f"gang of {gpu_num}: max latent difference {difference:.2e}, max frame difference "
              f"{np.abs(result.frames.astype(int) - reference.frames.astype(int)).max()}/255")
        assert torch.allclose(result.latents, reference.latents, rtol=0, atol=LATENT_TOLERANCE)
        assert np.abs(result.frames.astype(int) - reference.frames.astype(int)).max() <= 1
    # the adapters matter: the comparisons above would catch a rank that skipped them
    assert np.abs(expected[0].frames.astype(int) - expected[1].frames.astype(int)).max() > 4
