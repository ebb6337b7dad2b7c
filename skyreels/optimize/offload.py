"""Offload: a stage's model on the accelerator only while it runs (model level), or DiT blocks
streamed from pinned host memory one group ahead (block level, diffusers' group offloading)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.hooks import apply_group_offloading
from torch import nn

logger = logging.getLogger(__name__)


@contextmanager
def on_device(device: torch.device | str, *models: nn.Module) -> Iterator[None]:
    """Moves `models` to `device` for the block, back to host memory after (model-level offload)."""
    for model in models:
        model.to(device)
    try:
        yield
    finally:
        for model in models:
            model.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def stream_blocks(transformer: nn.Module, device: torch.device | str, keep_pinned: bool) -> None:
    """Block-level offload: each block's weights come to `device` just before it runs.

    On CUDA the next block is prefetched on a side stream while the current one computes; with
    `keep_pinned` (--high_cpu_memory) pinned host copies stay resident instead of being re-pinned.
    """
    device = torch.device(device)
    use_stream = device.type == "cuda"
    apply_group_offloading(
        transformer,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=use_stream,
        low_cpu_mem_usage=not keep_pinned,
    )
    logger.info("DiT blocks stream from host memory to %s (prefetch on a side stream: %s)", device, use_stream)
