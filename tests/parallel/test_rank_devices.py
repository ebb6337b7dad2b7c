"""Where a gang rank puts its models: its own GPU before anything loads, and with model-level offload (--offload)
each stage's models on the rank's device while a command runs on them, in host memory otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from skyreels.gang import rank as rank_module
from skyreels.gang.commands import Decode, Denoise, EncodeText
from skyreels.gang.rank import GangRank, RankSpec
from skyreels.optimize import OptimizeConfig
from skyreels.parallel.group import free_port
from skyreels.recipe import Denoised
from skyreels.request import Task
from skyreels.stages.denoise import DenoiseParams

PARAMS = DenoiseParams(num_frames=9, height=64, width=64, num_inference_steps=1, guidance_scale=6.0,
                       embedded_guidance_scale=1.0, seed=3)


def test_a_rank_sets_its_gpu_before_it_loads(monkeypatch: pytest.MonkeyPatch, tiny_t2v_dir: Path) -> None:
    """The CUDA context, streams, cuBLAS handles and compiled kernels belong to the current device: set after the
    loading, every rank of a local gang put them on GPU 0."""
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: events.append(f"set_device({device})"))
    load = rank_module.served_denoisers

    def loading(*args, **kwargs):
        events.append("load")
        return load(*args, **kwargs)

    monkeypatch.setattr(rank_module, "served_denoisers", loading)
    spec = RankSpec({Task.T2V: str(tiny_t2v_dir)}, "cuda", torch.bfloat16, world_size=2)
    with pytest.raises(AssertionError, match="not compiled with CUDA"):  # this torch has no GPU to load onto
        GangRank(spec, rank=1, cuda_index=1)
    assert events == ["set_device(1)", "load"]


def test_with_offload_each_command_has_its_models_on_the_rank_device(monkeypatch: pytest.MonkeyPatch,
                                                                      tiny_t2v_dir: Path) -> None:
    """Model-level offload keeps the models in host memory; a gang (gpu_num > 1, a Serve gang) left the DiT there
    for the steps, and the text encoders for the prompt: the GPU never ran them."""
    visits: list[tuple[str, list[str]]] = []
    visit = rank_module.on_device

    @contextmanager
    def recorded(device: str, *models: torch.nn.Module) -> Iterator[None]:
        with visit(device, *models):
            visits.append((device, [type(model).__name__ for model in models]))
            yield

    monkeypatch.setattr(rank_module, "on_device", recorded, raising=False)
    spec = RankSpec({Task.T2V: str(tiny_t2v_dir)}, "cpu", torch.float32, world_size=1,
                    optimize=OptimizeConfig(offload=True), encode_text=True, decode=True)
    rank = GangRank(spec, rank=0)
    rank.join("127.0.0.1", free_port())
    try:
        conditioning = next(rank.run(EncodeText("a cat walks", "blurry")))
        denoised = list(rank.run(Denoise(Task.T2V, conditioning, PARAMS, None)))[-1]
        assert isinstance(denoised, Denoised)
        frames = next(rank.run(Decode(denoised.latents)))
    finally:
        rank.close()
    assert frames.shape == (9, 64, 64, 3)
    assert visits == [("cpu", ["LlamaModel", "CLIPTextModel"]), ("cpu", ["HunyuanVideoTransformer3DModel"]),
                      ("cpu", ["AutoencoderKLHunyuanVideo"])]
