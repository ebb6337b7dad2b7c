"""LoRA adapters under each speed/memory option that takes them, against the same adapters without the option (CPU).
The options that refuse them (block offload, fp8-dynamic) are in tests/test_lora.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skyreels import GenerationRequest, LocalPipeline
from skyreels.lora import LoraSpec
from skyreels.optimize import OptimizeConfig
from skyreels.quality import psnr_db
from skyreels.tiny import make_tiny_lora

VISIBLE = 10  # frames levels a LoRA moves, far above what the options change


@pytest.fixture(scope="module")
def requests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GenerationRequest]:
    folder = tmp_path_factory.mktemp("loras")
    plain = GenerationRequest(prompt="a cat walks", height=64, width=64, num_frames=9, num_inference_steps=4, seed=42)
    x = LoraSpec(source=str(make_tiny_lora(folder / "x", seed=1)), scale=0.8)
    y = LoraSpec(source=str(make_tiny_lora(folder / "y", seed=2, rank=2, targets=("to_q", "proj_mlp"))), scale=-1.0)
    return {"x": plain.model_copy(update={"loras": [x]}), "plain": plain,
            "x-weaker": plain.model_copy(update={"loras": [x.model_copy(update={"scale": 0.3})]}),
            "x+y": plain.model_copy(update={"loras": [x, y]})}


@pytest.fixture(scope="module")
def unoptimised(tiny_t2v_dir: Path, requests: dict) -> dict:
    pipe = LocalPipeline.from_pretrained(tiny_t2v_dir)
    return {name: pipe.generate(request) for name, request in requests.items()}


@pytest.fixture(scope="module")
def unoptimised_sequential(tiny_t2v_dir: Path, requests: dict) -> dict:
    """CFG branches one after the other, as model-level offload runs them."""
    pipe = LocalPipeline.from_pretrained(tiny_t2v_dir, sequence_batch=True)
    return {name: pipe.generate(request) for name, request in requests.items()}


def run_all(model: Path, requests: dict, **options) -> dict:
    """Every request in turn on one pipeline: adapters loaded, switched, evicted under the option."""
    pipe = LocalPipeline.from_pretrained(model, optimize=OptimizeConfig(**options))
    return {name: pipe.generate(request) for name, request in requests.items()}


def lora_visible(results: dict) -> bool:
    return np.abs(results["x"].frames.astype(int) - results["plain"].frames.astype(int)).max() > VISIBLE


@pytest.mark.parametrize("options", [{"step_cache_threshold": 0.0}, {"offload": True}], ids=["step-cache-0", "offload"])
def test_lossless_options_give_the_same_videos(tiny_t2v_dir, requests, unoptimised, unoptimised_sequential,
                                               options) -> None:
    results = run_all(tiny_t2v_dir, requests, **options)
    reference = unoptimised_sequential if options.get("offload") else unoptimised
    for name, result in results.items():
        assert torch.equal(result.latents, reference[name].latents), name
    assert lora_visible(results)


def test_step_cache_that_skips_keeps_the_adapters(tiny_t2v_dir, requests, unoptimised) -> None:
    results = run_all(tiny_t2v_dir, requests, step_cache_threshold=0.9)
    for name, result in results.items():
        assert psnr_db(result.frames, unoptimised[name].frames) > 20, name
    assert lora_visible(results)


@pytest.mark.parametrize(("mode", "min_psnr"), [("int8", 45), ("fp8", 40)])
def test_weight_only_quant_under_full_precision_adapters(tiny_t2v_dir, requests, unoptimised, mode, min_psnr) -> None:
    results = run_all(tiny_t2v_dir, requests, quant=mode)
    for name, result in results.items():
        assert (result.latents - unoptimised[name].latents).abs().max() < 0.05, name
        assert psnr_db(result.frames, unoptimised[name].frames) > min_psnr, name
    assert lora_visible(results)


@pytest.mark.slow
def test_compiled_blocks_with_adapters(tiny_t2v_dir, requests, unoptimised, tmp_path) -> None:
    """PEFT's layers in the compiled blocks: each change of adapters recompiles them (dynamo guards on the layers),
    each change of scale does not."""
    results = run_all(tiny_t2v_dir, requests, compile=True, compile_cache_dir=tmp_path / "inductor")
    for name, result in results.items():
        assert torch.allclose(result.latents, unoptimised[name].latents, atol=1e-4), name
    assert lora_visible(results)
