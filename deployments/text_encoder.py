"""TextEncoder deployment: prompt + negative prompt -> Conditioning, with the stage's cache."""

from __future__ import annotations

import asyncio

from deployments.config import StageConfig
from skyreels.stages.conditioning import Conditioning
from skyreels.stages.text import TextEncoderStage


class TextEncoder:
    def __init__(self, config: StageConfig) -> None:
        self.stage = TextEncoderStage.from_pretrained(
            config.base_paths.base, device=config.device, dtype=config.torch_dtype, optimize=config.optimize
        )
        # one model, one forward at a time; concurrent requests still overlap with their I/O
        self._lock = asyncio.Lock()

    async def encode(self, prompt: str, negative_prompt: str | None) -> Conditioning:
        async with self._lock:
            conditioning = await asyncio.to_thread(self.stage.encode, prompt, negative_prompt)
        return conditioning.to("cpu", conditioning.positive.embeds.dtype)
