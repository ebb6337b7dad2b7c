"""Regional torch.compile: the repeated DiT blocks compile once per block type, not the whole model."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Graphs kept per block type: a service sees several video shapes, each with batches of equal and of unequal
# prompt lengths (and the step cache's variants); past dynamo's default of 8 a block would silently run eagerly.
RECOMPILE_LIMIT = 64


def compile_blocks(transformer: nn.Module, cache_dir: Path | None = None) -> None:
    """Not fullgraph: the step cache decides per step in Python, and prompts of unequal length in one batch
    attend one by one (see skyreels.parallel.joint_attention); both run eagerly between compiled pieces."""
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    # dynamic=None: the first graph is static; a prompt of another length then makes the text length symbolic
    # (one more compile), instead of one graph per prompt length, which would soon hit dynamo's recompile limit
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    transformer.compile_repeated_blocks(fullgraph=False, dynamic=None)
    logger.info("compiling the repeated transformer blocks on first use (cache: %s)", cache_dir or "default")
