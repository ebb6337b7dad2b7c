"""LoRA specs, sources and the checks that refuse an adapter before anything runs (skyreels.lora)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from skyreels import GenerationRequest, LocalPipeline
from skyreels.lora import (
    AdapterError, LoraSpec, check_adapters, inspect_adapter, resolve_adapter, unsupported_with,
)
from skyreels.lora.check import _inspect_file
from skyreels.models import ModelSettings
from skyreels.optimize import OptimizeConfig
from skyreels.request import Task
from skyreels.tiny import make_tiny_lora, tiny_transformer, write_lora


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lora(tmp_path_factory.mktemp("lora") / "a", seed=1)


@pytest.fixture(scope="module")
def config(tiny_t2v_dir: Path) -> dict:
    return json.loads((tiny_t2v_dir / "transformer" / "config.json").read_text())


@pytest.mark.parametrize(("text", "source", "scale"), [
    ("a.safetensors", "a.safetensors", 1.0),
    ("a.safetensors:0.7", "a.safetensors", 0.7),
    ("s3://bucket/x.safetensors:0.7", "s3://bucket/x.safetensors", 0.7),
    ("https://host/x.safetensors", "https://host/x.safetensors", 1.0),
    ("owner/name:-1.5", "owner/name", -1.5),
])
def test_parse_splits_the_scale_off_the_last_colon(text: str, source: str, scale: float) -> None:
    assert LoraSpec.parse(text) == LoraSpec(source=source, scale=scale)


def test_spec_bounds_and_request_rules() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 4"):
        LoraSpec.parse("a:9")
    request = GenerationRequest(prompt="x", loras=["a", {"source": "b", "scale": 0.5}])
    assert request.loras == [LoraSpec(source="a"), LoraSpec(source="b", scale=0.5)]
    with pytest.raises(ValidationError, match="at most 4 items"):
        GenerationRequest(prompt="x", loras=[f"l{i}" for i in range(5)])
    with pytest.raises(ValidationError, match="each LoRA once"):
        GenerationRequest(prompt="x", loras=["a", {"source": "a", "scale": 0.5}])


def test_sources_resolve_to_one_file(lora: Path, tmp_path: Path) -> None:
    assert resolve_adapter(str(lora)) == lora
    assert resolve_adapter(str(lora.parent)) == lora  # diffusers' own file name in a directory
    (lora.parent / "other.safetensors").write_bytes(lora.read_bytes())
    try:
        assert resolve_adapter(str(lora.parent)) == lora
    finally:
        (lora.parent / "other.safetensors").unlink()
    one = tmp_path / "one"
    one.mkdir()
    (one / "style.safetensors").write_bytes(lora.read_bytes())
    assert resolve_adapter(str(one)) == one / "style.safetensors"
    (one / "more.safetensors").write_bytes(b"")
    with pytest.raises(AdapterError, match=r"must hold one \.safetensors file .*found 2 \(more.safetensors, "):
        resolve_adapter(str(one))


def test_url_downloads_once_into_the_cache(lora: Path, tmp_path: Path) -> None:
    import fsspec

    url = "memory://loras/style.safetensors"
    with fsspec.open(url, "wb") as remote:
        remote.write(lora.read_bytes())
    settings = ModelSettings(cache_dir=tmp_path)
    local = resolve_adapter(url, settings)
    assert local.parent.parent == tmp_path / "loras" and local.name == "style.safetensors"
    assert local.read_bytes() == lora.read_bytes()
    fsspec.filesystem("memory").rm("/loras/style.safetensors")
    assert resolve_adapter(url, settings) == local  # from the cache
    with pytest.raises(AdapterError, match="could not download LoRA 'memory://loras/gone.safetensors' "
                                           r"\(FileNotFoundError"):
        resolve_adapter("memory://loras/gone.safetensors", settings)


def test_hub_id_offline_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AdapterError, match="LoRA could not download 'someone/style' from the Hugging Face Hub .*"
                                           "and pass the local file instead"):
        resolve_adapter("someone/style")


def test_inspect_says_what_the_adapter_is_and_is_cached(lora: Path, config: dict) -> None:
    info = inspect_adapter(str(lora), config)
    assert (info.path, info.rank, info.size_bytes) == (lora, 4, lora.stat().st_size)
    assert "transformer_blocks.0.attn.to_q" in info.targets and "single_transformer_blocks.0.proj_mlp" in info.targets
    assert info.parameters == sum(t.numel() for t in load_file(lora).values())
    hits = _inspect_file.cache_info().hits
    assert inspect_adapter(str(lora.parent), config).targets == info.targets
    assert _inspect_file.cache_info().hits == hits + 1


def refused(source: str, config: dict, match: str) -> None:
    with pytest.raises(AdapterError, match=match):
        inspect_adapter(source, config)


def test_missing_and_unreadable_files_refused(tmp_path: Path, config: dict) -> None:
    refused(str(tmp_path / "none.safetensors"), config, "not found: use a local .safetensors file, a directory")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    refused(str(tmp_path / "weights.bin"), config, r"is not a \.safetensors file \(only safetensors are loaded")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    refused(str(tmp_path / "garbage.safetensors"), config, "is not a readable safetensors file")


def test_non_lora_and_foreign_files_refused(tmp_path: Path, lora: Path, config: dict) -> None:
    weights = tmp_path / "model.safetensors"
    save_file({"transformer.proj_out.weight": torch.zeros(2, 2)}, weights)
    refused(str(weights), config, r"is not a LoRA file: 1 of its 1 tensors are not LoRA layers "
                                  r"\(e.g. 'transformer.proj_out.weight'\)")
    bare = tmp_path / "bare.safetensors"
    save_file({k.removeprefix("transformer."): v for k, v in load_file(lora).items()}, bare)
    refused(str(bare), config, "has no layers for the transformer")
    elsewhere = tmp_path / "elsewhere.safetensors"
    save_file({"transformer.blocks.0.to_q.lora_A.weight": torch.zeros(4, 120),
               "transformer.blocks.0.to_q.lora_B.weight": torch.zeros(120, 4)}, elsewhere)
    refused(str(elsewhere), config, "targets 'blocks.0.to_q', which is not a linear or convolution of this "
                                    "transformer")


def test_lora_of_another_hidden_size_refused(tmp_path: Path, config: dict) -> None:
    other = tiny_transformer(Task.T2V, attention_head_dim=8, rope_axes_dim=(2, 2, 4))  # hidden 96, not 120
    path = write_lora(other, tmp_path / "other", rank=4, seed=0, targets=("to_q",))
    refused(str(path), config, r"does not fit this transformer \(made for another model\?\): "
                               r"context_embedder.token_refiner.refiner_blocks.0.attn.to_q.lora_A.weight has shape "
                               r"\(4, 96\), context_embedder.token_refiner.refiner_blocks.0.attn.to_q needs \(4, 120\)")


def test_one_file_twice_refused(lora: Path, config: dict) -> None:
    twice = [LoraSpec(source=str(lora)), LoraSpec(source=str(lora.parent), scale=0.5)]
    with pytest.raises(AdapterError, match="the same LoRA file twice in one request"):
        check_adapters(twice, config, OptimizeConfig())


def test_unsupported_optimisations_are_named() -> None:
    assert unsupported_with(OptimizeConfig()) is None
    for fine in [dict(compile=True), dict(quant="int8"), dict(quant="fp8"), dict(quant="auto"), dict(offload=True),
                 dict(step_cache_threshold=0.1)]:
        assert unsupported_with(OptimizeConfig(**fine)) is None, fine
    assert unsupported_with(OptimizeConfig(block_offload=True)).startswith(
        "LoRA adapters cannot run with block offload (--parameters_level)")
    assert unsupported_with(OptimizeConfig(quant="fp8-dynamic")).startswith(
        "LoRA adapters are not supported with quant fp8-dynamic")


def test_pipeline_refuses_before_running(tiny_t2v_dir: Path, lora: Path, t2v_request: GenerationRequest,
                                         tmp_path: Path) -> None:
    pipe = LocalPipeline.from_pretrained(tiny_t2v_dir, optimize=OptimizeConfig(block_offload=True))
    steps = []
    request = t2v_request.model_copy(update={"loras": [LoraSpec(source=str(lora))]})
    with pytest.raises(AdapterError, match="cannot run with block offload"):
        pipe.generate(request, on_step=steps.append)
    missing = t2v_request.model_copy(update={"loras": [LoraSpec(source=str(tmp_path / "x.safetensors"))]})
    with pytest.raises(AdapterError, match="not found"):
        LocalPipeline.from_pretrained(tiny_t2v_dir).generate(missing, on_step=steps.append)
    assert steps == []


def test_the_sim_takes_requests_with_adapters() -> None:
    """The sim's DiT has no weights: a request's adapters are taken, load in no time and change nothing."""
    pipe = LocalPipeline.from_pretrained("sim?time_factor=0.0001")
    request = GenerationRequest(prompt="a red fox", seed=7, height=64, width=64, num_frames=9, num_inference_steps=2)
    styled = request.model_copy(update={"loras": [LoraSpec(source="style.safetensors", scale=0.5)]})
    assert pipe.denoise.load_adapters(styled.loras) == 0.0
    assert np.array_equal(pipe.generate(styled).frames, pipe.generate(request).frames)
