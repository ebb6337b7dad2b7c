"""Quantisation of the large linears with torchao: weight-only (fp8 where the GPU has it, else int8), or fp8
weights and activations for fp8 tensor cores."""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Stay in high precision: the transformer's own input/output projections and conditioning embedders (its top-level
# modules; the blocks' attention and MLP `proj_out` are quantised like the rest of the blocks) are small and
# sensitive (norms hold no linears).
KEEP_PRECISE = ("x_embedder", "context_embedder", "time_text_embed", "proj_out", "norm_out")


FP8_COMPUTE_CAPABILITY = (8, 9)  # Ada and Hopper have fp8 tensor cores


def has_fp8_tensor_cores(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_COMPUTE_CAPABILITY


def resolve_mode(mode: str, device: torch.device) -> str:
    """auto -> fp8 on GPUs with fp8 tensor cores, int8 elsewhere; fp8-dynamic is refused where it cannot run."""
    has_fp8 = has_fp8_tensor_cores(device)
    if mode == "fp8-dynamic" and not has_fp8:
        raise ValueError(f"quant fp8-dynamic needs a GPU with fp8 tensor cores (compute capability "
                         f"{FP8_COMPUTE_CAPABILITY[0]}.{FP8_COMPUTE_CAPABILITY[1]}+: Ada, Hopper), not {device}; "
                         "fp8 and int8 (weight-only) run anywhere")
    if mode != "auto":
        return mode
    return "fp8" if has_fp8 else "int8"


def quantize_linears(model: nn.Module, mode: str) -> int:
    """Quantises the weights of every eligible nn.Linear in place; returns how many."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        Int8WeightOnlyConfig,
        PerRow,
        quantize_,
    )

    # set_inductor_config=False: torchao's default turns on coordinate-descent tuning (and more) in
    # torch._inductor.config for the whole process, every later compile included
    config = {
        "fp8": lambda: Float8WeightOnlyConfig(set_inductor_config=False),
        "int8": lambda: Int8WeightOnlyConfig(set_inductor_config=False),
        "fp8-dynamic": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(),
                                                                        set_inductor_config=False),
    }[mode]()
    chosen = set(quantisable_linears(model))
    quantize_(model, config, filter_fn=lambda module, name: name in chosen)
    logger.info("quantised %d linears of %s to %s", len(chosen), type(model).__name__, mode)
    return len(chosen)


def quantisable_linears(model: nn.Module) -> list[str]:
    """The names of the linears that are quantised: all but those under a top-level module of KEEP_PRECISE."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.split(".")[0] not in KEEP_PRECISE]
