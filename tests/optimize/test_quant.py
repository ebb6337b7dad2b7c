"""What the quantisation touches: which linears of the real DiT, and nothing of the process's compiler settings."""

from __future__ import annotations

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel
from torch import nn

from skyreels import random_full
from skyreels.optimize.quant import quantisable_linears, quantize_linears
from skyreels.request import Task


def test_the_blocks_are_quantised_whole_and_only_the_top_level_projections_stay_precise() -> None:
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(**random_full.transformer_config(Task.T2V))
    chosen = set(quantisable_linears(model))
    # the single-stream blocks' proj_out (attention + MLP out, 40 x 3072 x 15360) is 15 % of the model
    assert {f"single_transformer_blocks.{block}.proj_out" for block in range(40)} <= chosen
    assert "proj_out" not in chosen and not any(name.startswith(("context_embedder.", "x_embedder.")) for name in chosen)
    weights = dict(model.named_modules())
    quantised = sum(weights[name].weight.numel() for name in chosen)
    in_blocks = sum(module.weight.numel() for name, module in model.named_modules()
                    if isinstance(module, nn.Linear) and name.startswith(("transformer_blocks.", "single_transformer_blocks.")))
    total = sum(parameter.numel() for parameter in model.parameters())
    assert quantised == in_blocks
    assert quantised / total == pytest.approx(0.972, abs=0.001)  # 12.46 of 12.82 B parameters


@pytest.fixture
def compiler_settings():
    """torch._inductor.config as it was before the test, and restored after it."""
    before = torch._inductor.config.get_config_copy()
    yield before
    torch._inductor.config.load_config(before)


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantising_leaves_the_compiler_settings_of_the_process_alone(mode: str, compiler_settings: dict) -> None:
    before = compiler_settings
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    assert quantize_linears(model, mode) == 2
    changed = {key for key, value in torch._inductor.config.get_config_copy().items() if before[key] != value}
    assert changed == set()  # torchao's default would turn on coordinate_descent_tuning & co
