"""Process-wide torch settings. Set once per process by its entry point, never as a side effect of a stage:
`LocalPipeline.from_pretrained` (the library and the CLI) and `GangRank` (each rank process of a local gang
and each DiT worker actor of the Serve app) call `configure_process` before loading anything.
"""

from __future__ import annotations

import logging
import os

import torch

from skyreels.optimize.config import OptimizeConfig

logger = logging.getLogger(__name__)

# Graphs kept per block type: a service sees several video shapes, each with batches of equal and of unequal
# prompt lengths (and the step cache's variants); past dynamo's default of 8 a block would silently run eagerly.
RECOMPILE_LIMIT = 64


def configure_process(optimize: OptimizeConfig) -> None:
    """With compile on: inductor's cache directory (`TORCHINDUCTOR_CACHE_DIR`, reused across processes and
    restarts) and dynamo's recompile limit raised to RECOMPILE_LIMIT. Nothing otherwise."""
    if not optimize.compile:
        return
    if optimize.compile_cache_dir is not None:
        optimize.compile_cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(optimize.compile_cache_dir)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    logger.debug("inductor cache %s, recompile limit %d", os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"),
                 torch._dynamo.config.recompile_limit)
