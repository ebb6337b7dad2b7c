"""LocalPipeline with LoRA adapters reproduces diffusers' pipelines after load_lora_weights + set_adapters, and a
request's adapters never leak into the next one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import HunyuanSkyreelsImageToVideoPipeline, HunyuanVideoPipeline
from safetensors.torch import load_file, save_file

from skyreels import GenerationRequest, LocalPipeline
from skyreels.lora import LoraSpec
from skyreels.stages.denoise import DenoiseParams
from skyreels.tiny import make_tiny_lora
from test_diffusers_equivalence import max_abs_diff, reference_components, reference_frames

pytestmark = pytest.mark.slow  # diffusers' pipelines beside ours, each video twice or more

VISIBLE = 10  # a LoRA moves the frames by far more than the 1/255 the comparisons allow


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    return {
        "x": make_tiny_lora(folder / "x", seed=1),
        "y": make_tiny_lora(folder / "y", seed=2, rank=2, targets=("to_q", "to_v", "proj_mlp")),
        "i2v": make_tiny_lora(folder / "i2v", task="i2v", seed=3),
    }


def with_loras(request: GenerationRequest, *loras: tuple[Path, float]) -> GenerationRequest:
    return request.model_copy(update={"loras": [LoraSpec(source=str(path), scale=scale) for path, scale in loras]})


def diffusers_frames(pipeline_class, pipe: LocalPipeline, model_dir: Path, request: GenerationRequest,
                     **extra) -> np.ndarray:
    reference = pipeline_class(**reference_components(pipe, model_dir))
    names = [f"adapter{index}" for index in range(len(request.loras))]
    for name, lora in zip(names, request.loras, strict=True):
        reference.load_lora_weights(lora.source, adapter_name=name)
    reference.set_adapters(names, [lora.scale for lora in request.loras])
    return reference_frames(reference, request, **extra)


@pytest.mark.parametrize("adapters", [(("x", 0.8),), (("x", 0.7), ("y", -1.5))], ids=["one", "two"])
def test_t2v_with_loras_matches_diffusers(t2v_pipeline: LocalPipeline, t2v_request: GenerationRequest,
                                          tiny_t2v_dir: Path, loras: dict, adapters: tuple) -> None:
    request = with_loras(t2v_request, *((loras[name], scale) for name, scale in adapters))
    ours = t2v_pipeline.generate(request).frames
    reference = diffusers_frames(HunyuanVideoPipeline, t2v_pipeline, tiny_t2v_dir, request)
    print(f"t2v {adapters}: max difference {max_abs_diff(ours, reference)}/255")
    assert max_abs_diff(ours, reference) <= 1
    assert max_abs_diff(ours, t2v_pipeline.generate(t2v_request).frames) > VISIBLE


def test_i2v_with_a_lora_matches_diffusers(i2v_pipeline: LocalPipeline, i2v_request: GenerationRequest,
                                           tiny_i2v_dir: Path, loras: dict) -> None:
    request = with_loras(i2v_request, (loras["i2v"], 0.6))
    ours = i2v_pipeline.generate(request).frames
    reference = diffusers_frames(HunyuanSkyreelsImageToVideoPipeline, i2v_pipeline, tiny_i2v_dir, request,
                                 image=request.image)
    print(f"i2v: max difference {max_abs_diff(ours, reference)}/255")
    assert max_abs_diff(ours, reference) <= 1
    assert max_abs_diff(ours, i2v_pipeline.generate(i2v_request).frames) > VISIBLE


def test_original_hunyuan_video_keys_are_converted(t2v_pipeline: LocalPipeline, t2v_request: GenerationRequest,
                                                   tiny_t2v_dir: Path, loras: dict, tmp_path: Path) -> None:
    """The original HunyuanVideo names under ComfyUI's `diffusion_model.` prefix (fused qkv): diffusers' converter
    runs for us as for its pipeline."""
    layers = load_file(loras["x"])
    block = "transformer.transformer_blocks.0.attn"
    original = {
        "diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight": layers[f"{block}.to_q.lora_A.weight"],
        "diffusion_model.double_blocks.0.img_attn_qkv.lora_B.weight": torch.cat(
            [layers[f"{block}.to_{p}.lora_B.weight"] for p in "qkv"]),
        "diffusion_model.double_blocks.0.img_attn_proj.lora_A.weight": layers[f"{block}.to_out.0.lora_A.weight"],
        "diffusion_model.double_blocks.0.img_attn_proj.lora_B.weight": layers[f"{block}.to_out.0.lora_B.weight"],
    }
    save_file(original, tmp_path / "comfy.safetensors")
    request = with_loras(t2v_request, (tmp_path / "comfy.safetensors", 1.0))
    ours = t2v_pipeline.generate(request).frames
    assert max_abs_diff(ours, diffusers_frames(HunyuanVideoPipeline, t2v_pipeline, tiny_t2v_dir, request)) <= 1
    assert max_abs_diff(ours, t2v_pipeline.generate(t2v_request).frames) > VISIBLE


@pytest.fixture(scope="module")
def fresh(tiny_t2v_dir: Path) -> Callable[[GenerationRequest], torch.Tensor]:
    """The latents of a request on a pipeline that ran nothing before, computed once per request."""
    results: dict[str, torch.Tensor] = {}

    def latents(request: GenerationRequest) -> torch.Tensor:
        key = request.model_dump_json()
        if key not in results:
            results[key] = LocalPipeline.from_pretrained(tiny_t2v_dir).generate(request).latents
        return results[key]

    return latents


def test_no_leak_into_the_next_request(tiny_t2v_dir: Path, t2v_request: GenerationRequest, loras: dict,
                                       fresh: Callable) -> None:
    pipe = LocalPipeline.from_pretrained(tiny_t2v_dir)
    for request in [with_loras(t2v_request, (loras["x"], 0.8)), t2v_request, with_loras(t2v_request, (loras["x"], 0.3)),
                    with_loras(t2v_request, (loras["y"], 1.0))]:
        assert torch.equal(pipe.generate(request).latents, fresh(request))


def test_lru_of_one_evicts_and_reloads(tiny_t2v_dir: Path, t2v_request: GenerationRequest, loras: dict,
                                       fresh: Callable) -> None:
    pipe = LocalPipeline.from_pretrained(tiny_t2v_dir)
    pipe.denoise.adapters.capacity = 1
    x, y = with_loras(t2v_request, (loras["x"], 0.8)), with_loras(t2v_request, (loras["y"], 0.8))
    for request, name in [(x, "x"), (y, "y"), (x, "x")]:
        assert torch.equal(pipe.generate(request).latents, fresh(request))
        assert pipe.denoise.adapters.loaded == [loras[name]]
    assert pipe.denoise.load_adapters(x.loras) == 0.0  # loaded already
    both = with_loras(t2v_request, (loras["x"], 0.7), (loras["y"], -1.5))
    assert pipe.denoise.load_adapters(both.loras) > 0.0
    assert pipe.denoise.adapters.loaded == [loras["x"], loras["y"]]  # a request's own adapters stay together


def test_cancelled_run_switches_its_adapters_off(tiny_t2v_dir: Path, t2v_request: GenerationRequest,
                                                 loras: dict, fresh: Callable) -> None:
    pipe = LocalPipeline.from_pretrained(tiny_t2v_dir)
    conditioning = pipe.text.encode(t2v_request.prompt, t2v_request.negative_prompt)
    request = with_loras(t2v_request, (loras["x"], 0.8))
    steps = pipe.denoise.steps(conditioning, DenoiseParams.from_request(request))
    next(steps)
    steps.close()  # a cancel between two steps
    assert torch.equal(pipe.generate(t2v_request).latents, fresh(t2v_request))


def test_adapters_loaded_in_inference_mode(tiny_t2v_dir: Path, t2v_request: GenerationRequest, loras: dict,
                                           fresh: Callable) -> None:
    """A caller holding inference mode (a gang rank, a Serve worker) may load them; they still switch on and off."""
    pipe = LocalPipeline.from_pretrained(tiny_t2v_dir)
    request = with_loras(t2v_request, (loras["x"], 0.8))
    with torch.inference_mode():
        assert pipe.denoise.load_adapters(request.loras) > 0.0
    assert torch.equal(pipe.generate(request).latents, fresh(request))
    with torch.inference_mode():
        assert torch.equal(pipe.generate(t2v_request).latents, fresh(t2v_request))
