"""TextEncoder deployment: prompt + negative prompt -> Conditioning.

Prompts of concurrent requests are encoded together: `serve.batch` gathers them for a few
milliseconds, the stage encodes those it has not cached in one forward, and a repeated prompt
(the default negative above all) costs nothing.
"""

from __future__ import annotations

import asyncio
import time

from ray import serve
from ray.serve.metrics import Histogram

from deployments import metrics
from deployments.config import StageConfig
from deployments.metrics import Stage
from deployments.tracing import Carrier, served_span, setup_tracing
from skyreels.stages.conditioning import Conditioning, PromptEmbeds

BATCH_WAIT_S = 0.005
MAX_BATCH_SIZE = 16  # the default; AppConfig.text_batch_size sets it per application


class TextEncoder:
    def __init__(self, config: StageConfig, max_batch_size: int = MAX_BATCH_SIZE) -> None:
        setup_tracing(config.tracing, "TextEncoder")
        self.stage = config.base_loader.text()
        self._encode_batch.set_max_batch_size(max_batch_size)
        self._batch_prompts = Histogram(
            "skyreels_text_encoder_batch_prompts", description="Prompts gathered into one TextEncoder batch.",
            boundaries=[1, 2, 4, 8, 16, 32, 64])

    async def encode(self, prompt: str, negative_prompt: str | None, trace: Carrier | None = None) -> Conditioning:
        """A job's prompts; `trace`: the caller's span (deployments.tracing)."""
        with served_span("TextEncoder.encode", trace):
            start = time.perf_counter()
            if negative_prompt is None:
                conditioning = Conditioning(positive=await self._encode_batch(prompt))
            else:
                positive, negative = await asyncio.gather(self._encode_batch(prompt),
                                                          self._encode_batch(negative_prompt))
                conditioning = Conditioning(positive=positive, negative=negative)
            metrics.stage_seconds(Stage.TEXT_ENCODE, time.perf_counter() - start)
            return conditioning

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _encode_batch(self, prompts: list[str]) -> list[PromptEmbeds]:
        self._batch_prompts.observe(len(prompts))
        # one batch at a time (serve.batch's default), off the event loop
        embeds = await asyncio.to_thread(self.stage.encode_prompts, prompts)
        return [e.to("cpu", e.embeds.dtype) for e in embeds]
