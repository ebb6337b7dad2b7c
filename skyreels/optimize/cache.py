"""Step caching: diffusers' First-Block cache, which skips the rest of a DiT step when its first
block's output barely changed since the previous step (per CFG branch)."""

from __future__ import annotations

from diffusers.hooks import FirstBlockCacheConfig
from torch import nn


def enable_step_cache(transformer: nn.Module, threshold: float) -> None:
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
