"""Weight-only quantisation of the large linears with torchao (fp8 where the GPU has it, else int8)."""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Stay in high precision: the input/output projections and the conditioning embedders are small
# and sensitive (norms hold no linears).
KEEP_PRECISE = ("x_embedder", "context_embedder", "time_text_embed", "proj_out", "norm_out", "embed_tokens")


def resolve_mode(mode: str, device: torch.device) -> str:
    """auto -> fp8 on GPUs with fp8 tensor cores (compute capability >= 8.9), int8 elsewhere."""
    if mode != "auto":
        return mode
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        return "fp8"
    return "int8"


def quantize_linears(model: nn.Module, mode: str) -> int:
    """Quantises the weights of every eligible nn.Linear in place; returns how many."""
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = {"fp8": Float8WeightOnlyConfig, "int8": Int8WeightOnlyConfig}[mode]()
    chosen = {name for name, module in model.named_modules() if _eligible(name, module)}
    quantize_(model, config, filter_fn=lambda module, name: name in chosen)
    logger.info("quantised %d linears of %s to %s weight-only", len(chosen), type(model).__name__, mode)
    return len(chosen)


def _eligible(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and not any(part in name.split(".") for part in KEEP_PRECISE)
