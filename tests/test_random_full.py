"""The random-full preset: real sizes (checked on the meta device), random weights made in place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel
from torch.utils._python_dispatch import TorchDispatchMode

from skyreels import random_full
from skyreels.optimize.flops import dit_forward_flops, video_tokens
from skyreels.tiny import TRANSFORMER_CONFIG as TINY_CONFIG


def test_full_size_architecture() -> None:
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(in_channels=16, **random_full.TRANSFORMER_CONFIG)
    assert 12.8e9 < sum(p.numel() for p in model.parameters()) < 12.9e9
    assert (len(model.transformer_blocks), len(model.single_transformer_blocks)) == (20, 40)


def test_flops_of_the_workload_of_record() -> None:
    config = dict(random_full.TRANSFORMER_CONFIG)
    tokens = video_tokens(config, 544, 960, 97)
    assert tokens == 51_000
    flops = dit_forward_flops(config, tokens, 256)
    assert 2.5e15 < flops < 2.8e15  # ~200 s for 60 forwards at 790 TFLOP/s


def test_materialize_fills_a_meta_model() -> None:
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, text_embed_dim=16,
                                               pooled_projection_dim=8, **TINY_CONFIG)
    model = random_full._materialize(model, "cpu", torch.float32, seed=0)
    weight = model.transformer_blocks[0].attn.to_q.weight
    assert weight.device.type == "cpu" and 0.015 < weight.std() < 0.025
    assert torch.equal(model.transformer_blocks[0].attn.norm_q.weight, torch.ones_like(
        model.transformer_blocks[0].attn.norm_q.weight))
    out = model(hidden_states=torch.randn(1, 4, 1, 8, 8), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 5, 16), encoder_attention_mask=torch.ones(1, 5),
                pooled_projections=torch.randn(1, 8), guidance=torch.tensor([1000.0]), return_dict=False)[0]
    assert out.shape == (1, 4, 1, 8, 8) and torch.isfinite(out).all()


class AllocatedDtypes(TorchDispatchMode):
    """The dtype of every tensor allocated off the meta device (factory ops, copies) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        allocating = func._schema.name in ("aten::empty", "aten::empty_strided", "aten::empty_like", "aten::_to_copy")
        if allocating and out.device.type != "meta":
            self.dtypes.add(out.dtype)
        return out


def test_random_weights_are_made_in_the_target_dtype() -> None:
    """No fp32 copy on the way: the full DiT in fp32 is 51 GB on the device before its conversion to bf16."""
    with AllocatedDtypes() as allocated:
        model = random_full.random_transformer(random_full.Task.T2V, "cpu", torch.bfloat16, num_layers=1,
                                               num_single_layers=1, num_refiner_layers=1)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    assert allocated.dtypes == {torch.bfloat16}


def test_random_text_encoder_shapes_and_determinism() -> None:
    stage = random_full.RandomTextEncoderStage("cpu", torch.float32)
    a, b = stage.encode("a cat", "blurry"), stage.encode("a cat", "blurry")
    assert a.positive.embeds.shape == (1, 256, 4096) and a.positive.pooled.shape == (1, 768)
    assert int(a.positive.mask.sum()) == random_full.PROMPT_TOKENS
    assert torch.equal(a.positive.embeds, b.positive.embeds)
    assert not torch.equal(a.positive.embeds, a.negative.embeds)


BENCHMARK_FLAGS = {
    "bench_dit.py": ["--measure_steps", "1", "--variants", "diffusers,lossless"],
    "bench_e2e.py": [],
    "bench_step_cache.py": ["--thresholds", "0.5", "--decode"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHMARK_FLAGS))
def test_benchmark_scripts_write_their_tables(script: str, tmp_path: Path, tiny_t2v_dir: Path) -> None:
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, f"benchmarks/{script}", "--preset", str(tiny_t2v_dir), "--height", "64",
                    "--width", "64", "--num_frames", "9", "--steps", "2", "--out", str(out), *BENCHMARK_FLAGS[script]],
                   check=True, capture_output=True, cwd=Path(__file__).parents[1])
    assert out.is_file() and out.with_suffix(".md").read_text().count("|") > 10


@pytest.mark.slow
def test_option_benchmark_stays_within_its_stated_bounds(tmp_path: Path, tiny_t2v_dir: Path) -> None:
    out = tmp_path / "options.json"
    subprocess.run([sys.executable, "benchmarks/bench_options.py", "--model", str(tiny_t2v_dir),
                    "--num_inference_steps", "8", "--out", str(out)],
                   check=True, capture_output=True, cwd=Path(__file__).parents[1])  # exit 1 below a bound
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 9 and all(row["within_bound"] for row in rows)  # fp8-dynamic is skipped on the CPU
    assert out.with_suffix(".md").read_text().count("| yes |") == 9
