"""Every speed/memory option on the tiny preset, against the unoptimised pipeline (CPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from skyreels import GenerationRequest, LocalPipeline
from skyreels.optimize import OptimizeConfig
from skyreels.optimize.attention import usable_backend
from skyreels import pipeline as pipeline_module
from skyreels.runtime import RECOMPILE_LIMIT
from skyreels.upstream import hook_registry
from skyreels.optimize.quant import resolve_mode
from skyreels.quality import psnr_db

STEPS = 12


@pytest.fixture(scope="module")
def request_() -> GenerationRequest:
    return GenerationRequest(prompt="a cat walks", height=64, width=64, num_frames=9, num_inference_steps=STEPS,
                             seed=42)


@pytest.fixture(scope="module")
def baseline(tiny_t2v_dir: Path, request_: GenerationRequest):
    return LocalPipeline.from_pretrained(tiny_t2v_dir).generate(request_)


@pytest.fixture(scope="module")
def sequential_baseline(tiny_t2v_dir: Path, request_: GenerationRequest):
    """CFG branches one after the other, as model-level offload runs them."""
    return LocalPipeline.from_pretrained(tiny_t2v_dir, sequence_batch=True).generate(request_)


def run(model: Path, request: GenerationRequest, **options):
    pipe = LocalPipeline.from_pretrained(model, optimize=OptimizeConfig(**options))
    return pipe, pipe.generate(request)


@pytest.mark.parametrize(("mode", "tensor_type", "min_psnr"), [("int8", "Int8Tensor", 50), ("fp8", "Float8Tensor", 45)])
def test_weight_only_quant_stays_close(tiny_t2v_dir, request_, baseline, mode, tensor_type, min_psnr) -> None:
    pipe, result = run(tiny_t2v_dir, request_, quant=mode)
    transformer = pipe.denoise.transformer
    assert type(transformer.transformer_blocks[0].attn.to_q.weight).__name__ == tensor_type
    assert type(pipe.text.llama.layers[0].mlp.up_proj.weight).__name__ == tensor_type
    # the sensitive ends stay in full precision
    assert type(transformer.proj_out.weight) is torch.nn.Parameter
    assert type(transformer.x_embedder.proj.weight) is torch.nn.Parameter
    assert 0 < (result.latents - baseline.latents).abs().max() < 0.05
    assert psnr_db(result.frames, baseline.frames) > min_psnr


def test_fp8_dynamic_refused_without_fp8_tensor_cores(tiny_t2v_dir) -> None:
    with pytest.raises(ValueError, match=r"fp8-dynamic needs a GPU with fp8 tensor cores \(compute capability 8.9"):
        resolve_mode("fp8-dynamic", torch.device("cpu"))
    assert resolve_mode("auto", torch.device("cpu")) == "int8"
    with pytest.raises(ValueError, match="fp8-dynamic needs"):
        LocalPipeline.from_pretrained(tiny_t2v_dir, optimize=OptimizeConfig(quant="fp8-dynamic"))


@pytest.mark.parametrize("options", [{"offload": True}, {"block_offload": True}, {"block_offload": True,
                                                                                    "high_cpu_memory": True}])
def test_offload_is_lossless(tiny_t2v_dir, request_, baseline, sequential_baseline, options, monkeypatch) -> None:
    visits: list[str] = []
    real_on_device = pipeline_module.on_device

    def recording_on_device(device, *models):
        visits.append(type(models[0]).__name__)
        return real_on_device(device, *models)

    monkeypatch.setattr(pipeline_module, "on_device", recording_on_device)
    pipe, result = run(tiny_t2v_dir, request_, **options)
    reference = sequential_baseline if options.get("offload") else baseline
    assert torch.equal(result.latents, reference.latents)
    assert np.array_equal(result.frames, reference.frames)
    if options.get("offload"):  # each stage's models visited the device for their stage only, in recipe order
        assert visits == ["LlamaModel", "HunyuanVideoTransformer3DModel", "AutoencoderKLHunyuanVideo"]
    else:  # the blocks stream through diffusers' group-offloading hooks
        assert visits == []
        assert all(hook_registry(block) is not None for block in pipe.denoise.transformer.transformer_blocks)


@pytest.mark.parametrize("backend", ["sage", "_native_cudnn", "flash", "_flash_3"])
def test_missing_attention_backend_falls_back(tiny_t2v_dir, request_, baseline, caplog, backend) -> None:
    with caplog.at_level(logging.WARNING):
        _, result = run(tiny_t2v_dir, request_, attention_backend=backend)
    assert f"attention backend '{backend}' is not usable here (it runs on CUDA GPUs only, not cpu); using native" \
        in caplog.text
    assert torch.equal(result.latents, baseline.latents)


def test_unknown_attention_backend_refused() -> None:
    with pytest.raises(ValueError, match="attention backend must be one of"):
        usable_backend("magic", torch.device("cpu"))


def test_step_cache_skips_and_reports_its_cost(tiny_t2v_dir, request_, baseline) -> None:
    _, strict = run(tiny_t2v_dir, request_, step_cache_threshold=0.0)
    assert torch.equal(strict.latents, baseline.latents)  # a zero threshold never skips
    _, loose = run(tiny_t2v_dir, request_, step_cache_threshold=0.9)
    assert not torch.equal(loose.latents, baseline.latents)
    assert psnr_db(loose.frames, baseline.frames) > 20


def test_step_cache_resets_between_videos(tiny_t2v_dir, request_) -> None:
    pipe = LocalPipeline.from_pretrained(tiny_t2v_dir, optimize=OptimizeConfig(step_cache_threshold=0.9))
    first, second = pipe.generate(request_), pipe.generate(request_)
    assert torch.equal(first.latents, second.latents)


@pytest.mark.slow
def test_regional_compile_matches(tiny_t2v_dir, request_, baseline, tmp_path) -> None:
    pipe, result = run(tiny_t2v_dir, request_, compile=True, compile_cache_dir=tmp_path / "inductor")
    assert torch.allclose(result.latents, baseline.latents, atol=1e-4)
    assert any((tmp_path / "inductor").iterdir())
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT
    # a prompt of another length: another text length in the compiled blocks, and CFG branches of unequal length
    longer = request_.model_copy(update={"prompt": "a cat walks slowly along a garden wall at dusk"})
    expected = LocalPipeline.from_pretrained(tiny_t2v_dir).generate(longer)
    assert torch.allclose(pipe.generate(longer).latents, expected.latents, atol=1e-4)
