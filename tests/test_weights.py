"""The weight bank: one transformer swapped in place between the served models equals fresh stages of each."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel
from peft import LoraConfig, inject_adapter_in_model
from PIL import Image

from skyreels.gang.rank import GangRank, RankSpec
from skyreels.loader import StageLoader, served_denoisers, stage_loader
from skyreels.optimize import OptimizeConfig
from skyreels.request import Task
from skyreels.stages.conditioning import Conditioning, ImageCondition
from skyreels.stages.denoise import DenoiseParams, DenoiseStage
from skyreels import random_full
from skyreels.weights import TransformerBank, pinned_footprint

PARAMS = DenoiseParams(num_frames=9, height=64, width=64, num_inference_steps=2, guidance_scale=6.0,
                       embedded_guidance_scale=1.0, seed=3)
SWAPS = (Task.T2V, Task.I2V, Task.T2V)

Inputs = tuple[Conditioning, ImageCondition]
Prepare = Callable[[DenoiseStage], None]


@pytest.fixture(scope="module")
def inputs(tiny_t2v_dir: Path, first_frame: Image.Image) -> Inputs:
    loader = stage_loader(str(tiny_t2v_dir), Task.T2V)
    image = loader.vae().encode_image(first_frame, PARAMS.height, PARAMS.width, PARAMS.seed)
    return loader.text().encode("a cat walks on the grass", "blurry, low quality"), image


def served(t2v_dir: Path, i2v_dir: Path, optimize: OptimizeConfig | None = None) -> dict[Task, StageLoader]:
    return {Task.T2V: stage_loader(str(t2v_dir), Task.T2V, optimize=optimize),
            Task.I2V: stage_loader(str(i2v_dir), Task.I2V, optimize=optimize)}


def denoise(stage: DenoiseStage, task: Task, inputs: Inputs) -> torch.Tensor:
    conditioning, image = inputs
    return stage.denoise(conditioning, PARAMS, image if task is Task.I2V else None)


def swapped_runs(loaders: dict[Task, StageLoader], inputs: Inputs, prepare: Prepare = lambda _: None
                 ) -> tuple[list[torch.Tensor], list[float]]:
    """T2V, I2V, T2V on one stage whose bank swaps the weights before each run."""
    stage = loaders[Task.T2V].denoiser()
    bank = loaders[Task.T2V].weight_bank(stage, loaders)
    prepare(stage)
    latents, seconds = [], []
    for task in SWAPS:
        seconds.append(bank.activate(task))
        assert stage.takes_image == (task is Task.I2V)
        latents.append(denoise(stage, task, inputs))
    return latents, seconds


def fresh_runs(loaders: dict[Task, StageLoader], inputs: Inputs, prepare: Prepare = lambda _: None
               ) -> list[torch.Tensor]:
    fresh = {}
    for task, loader in loaders.items():
        stage = loader.denoiser()
        prepare(stage)
        fresh[task] = denoise(stage, task, inputs)
    return [fresh[task] for task in SWAPS]


@pytest.mark.parametrize("optimize", [OptimizeConfig(), OptimizeConfig(quant="int8"),
                                      OptimizeConfig(step_cache_threshold=0.2)], ids=["plain", "int8", "step-cache"])
def test_swaps_equal_fresh_stages_and_report_seconds(optimize: OptimizeConfig, tiny_t2v_dir: Path,
                                                     tiny_i2v_dir: Path, inputs: Inputs) -> None:
    """int8: the host copies stay quantised, copied in place into the device's quantised tensors."""
    loaders = served(tiny_t2v_dir, tiny_i2v_dir, optimize)
    latents, seconds = swapped_runs(loaders, inputs)
    for swapped, fresh in zip(latents, fresh_runs(loaders, inputs), strict=True):
        assert torch.equal(swapped, fresh)
    assert seconds[0] == 0.0 and seconds[1] > 0 and seconds[2] > 0


def test_a_lora_adapter_stays_across_swaps(tiny_t2v_dir: Path, tiny_i2v_dir: Path, inputs: Inputs) -> None:
    def inject(stage: DenoiseStage) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same adapter weights in every stage
            inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                                               target_modules=["to_q", "to_k", "to_v", "proj_mlp"]),
                                    stage.transformer)
        assert any(".base_layer." in name for name, _ in stage.transformer.named_parameters())

    loaders = served(tiny_t2v_dir, tiny_i2v_dir)
    latents, _ = swapped_runs(loaders, inputs, inject)
    for swapped, fresh in zip(latents, fresh_runs(loaders, inputs, inject), strict=True):
        assert torch.equal(swapped, fresh)
    assert not torch.equal(latents[0], fresh_runs(loaders, inputs)[0])  # the adapter does change the video


def test_a_merged_lora_adapter_is_refused(tiny_t2v_dir: Path, tiny_i2v_dir: Path) -> None:
    """Merged into the base weights, an adapter would be overwritten by the swap, and unmerging it later would
    subtract it from the other model's weights."""
    loaders = served(tiny_t2v_dir, tiny_i2v_dir)
    stage = loaders[Task.T2V].denoiser()
    bank = loaders[Task.T2V].weight_bank(stage, loaders)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["to_q"]), stage.transformer)
    next(module for module in stage.transformer.modules() if hasattr(module, "base_layer")).merge()
    with pytest.raises(RuntimeError, match="merged"):
        bank.activate(Task.I2V)


@pytest.mark.slow  # compiles the tiny DiT's blocks on the CPU
def test_compiled_blocks_stay_valid_across_swaps(tiny_t2v_dir: Path, tiny_i2v_dir: Path, inputs: Inputs,
                                                 tmp_path: Path) -> None:
    """Swapped T2V -> I2V -> T2V -> I2V -> T2V under regional compile equal fresh uncompiled stages. The blocks
    see the same shapes for both models; only the patch embedding (which diffusers compiles as a repeated block
    too) takes twice the channels for I2V: one recompile on the first I2V job, none after."""
    from torch._dynamo.utils import counters

    compiled = served(tiny_t2v_dir, tiny_i2v_dir, OptimizeConfig(compile=True, compile_cache_dir=tmp_path))
    stage = compiled[Task.T2V].denoiser()
    bank = compiled[Task.T2V].weight_bank(stage, compiled)
    expected = dict(zip(SWAPS, fresh_runs(served(tiny_t2v_dir, tiny_i2v_dir), inputs), strict=False))
    graphs = []
    for task in SWAPS + SWAPS[1:]:
        bank.activate(task)
        assert torch.allclose(denoise(stage, task, inputs), expected[task], atol=1e-4)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[2:] == [graphs[2]] * 3


def test_a_rank_holds_one_transformer_and_host_copies_of_each(tiny_t2v_dir: Path, tiny_i2v_dir: Path) -> None:
    gc.collect()
    before = _transformers_alive()
    rank = GangRank(RankSpec(transformers={Task.T2V: str(tiny_t2v_dir), Task.I2V: str(tiny_i2v_dir)},
                             device="cpu", dtype=torch.float32, world_size=1), rank=0)
    gc.collect()
    assert _transformers_alive() - before == 1
    stage = rank.denoisers[Task.T2V]
    assert rank.denoisers[Task.I2V] is stage
    bank = rank.weights
    assert isinstance(bank, TransformerBank) and bank.transformer is stage.transformer
    assert set(bank.host) == {Task.T2V, Task.I2V}
    device_storage = {parameter.data_ptr() for parameter in stage.transformer.parameters()}
    for weights in bank.host.values():
        assert all(tensor.device.type == "cpu" for tensor in weights.tensors.values())
        assert not device_storage & {tensor.data_ptr() for tensor in weights.tensors.values()}
    i2v_bytes = bank.host[Task.I2V].nbytes
    assert bank.host_bytes == bank.host[Task.T2V].nbytes + i2v_bytes > i2v_bytes


def test_one_served_model_keeps_no_host_copy_and_refuses_another(tiny_t2v_dir: Path) -> None:
    loaders = {Task.T2V: stage_loader(str(tiny_t2v_dir), Task.T2V)}
    bank = loaders[Task.T2V].weight_bank(loaders[Task.T2V].denoiser(), loaders)
    assert bank.host_bytes == 0 and bank.activate(Task.T2V) == 0.0
    with pytest.raises(ValueError, match="this gang serves t2v, not i2v"):
        bank.activate(Task.I2V)


def test_models_of_another_architecture_are_refused(tiny_t2v_dir: Path) -> None:
    stage = stage_loader(str(tiny_t2v_dir), Task.T2V).denoiser()
    other = HunyuanVideoTransformer3DModel(**{**stage.transformer.config, "num_layers": 2})
    with pytest.raises(ValueError, match="one architecture"):
        TransformerBank.load(stage.transformer, Task.T2V, {Task.I2V: other})


def test_block_offload_streams_each_model_from_its_own_host_weights(tiny_t2v_dir: Path, tiny_i2v_dir: Path,
                                                                     inputs: Inputs) -> None:
    """Diffusers' group offloading uploads each block from its own host copies: a stage per model, nothing to
    swap, and no whole set on the device."""
    loaders = served(tiny_t2v_dir, tiny_i2v_dir, OptimizeConfig(block_offload=True))
    stages, bank = served_denoisers(loaders)
    assert stages[Task.T2V] is not stages[Task.I2V]
    expected = fresh_runs(loaders, inputs)
    for task, fresh in zip(SWAPS, expected, strict=True):
        assert bank.activate(task) == 0.0
        assert torch.equal(denoise(stages[task], task, inputs), fresh)


def _transformers_alive() -> int:
    return sum(type(thing) is HunyuanVideoTransformer3DModel for thing in gc.get_objects())


def test_host_copies_live_in_slabs_whose_sizes_are_powers_of_two(tiny_t2v_dir: Path, tiny_i2v_dir: Path) -> None:
    """Pinned host memory comes from torch's caching host allocator, which rounds every block up to a power of two:
    the bank asks for slabs of such sizes (its tensors views into them) so the rounding adds nothing. The same
    layout holds for pageable copies, which a CPU machine can check (it has no pinned memory)."""
    stage = stage_loader(str(tiny_t2v_dir), Task.T2V).denoiser()
    i2v = stage_loader(str(tiny_i2v_dir), Task.I2V).host_transformer()
    bank = TransformerBank.load(stage.transformer, Task.T2V, {Task.I2V: i2v}, pin=False)
    copies = bank.host[Task.T2V].tensors  # copied: the stage's own transformer keeps its tensors
    slabs = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in copies.values()}
    assert all(size & (size - 1) == 0 for size in slabs.values()) and len(slabs) < len(copies)
    sizes = [tensor.nbytes for tensor in copies.values()]
    assert sum(slabs.values()) == pinned_footprint(sizes)
    for name, parameter in stage.transformer.named_parameters():
        assert torch.equal(copies[name], parameter) and copies[name].stride() == parameter.stride()


def test_the_pinned_footprint_of_the_full_dit() -> None:
    """25.6 GB of bf16 DiT: 26.1 GB of slabs; pinned tensor by tensor, the rounding made it 40.2 GB."""
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(**random_full.transformer_config(Task.T2V)).to(torch.bfloat16)
    sizes = [parameter.nbytes for parameter in model.parameters()]
    assert sum(sizes) == pytest.approx(25.64e9, rel=1e-3)
    assert sum(sizes) < pinned_footprint(sizes) < 1.02 * sum(sizes)
    assert sum(1 << (size - 1).bit_length() for size in sizes) == pytest.approx(40.19e9, rel=1e-3)
    assert pinned_footprint([3 * 2**28, 5, 0]) == 2**30 + 512  # larger than a slab: its own, the power of two above
