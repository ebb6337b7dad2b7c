"""Regional torch.compile: the repeated DiT blocks compile once per block type, not the whole model."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

logger = logging.getLogger(__name__)


def compile_blocks(transformer: nn.Module, cache_dir: Path | None = None, fullgraph: bool = True) -> None:
    """`fullgraph=False` where hooks branch on data (the step cache decides per step in Python)."""
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    # dynamic=False: one graph per video shape, which a service sees few of
    transformer.compile_repeated_blocks(fullgraph=fullgraph, dynamic=False)
    logger.info("compiling the repeated transformer blocks on first use (cache: %s)", cache_dir or "default")
