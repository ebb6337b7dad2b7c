"""Vae deployment: encodes I2V first frames; decodes latents, muxes mp4 + thumbnail, stores them.

Frames never leave this deployment: callers get back timings, not pixels. (Where the app decodes on
the gang instead, the Denoiser's `decode_to_storage` does the same with the parallel VAE.)
"""

from __future__ import annotations

import asyncio
import time

import torch
from PIL import Image

from deployments import metrics
from deployments.config import StageConfig
from deployments.metrics import Stage
from deployments.tracing import Carrier, served_span, setup_tracing
from skyreels.artifacts import ArtifactStore, StoredVideo, store_video
from skyreels.stages.conditioning import ImageCondition


class Vae:
    def __init__(self, config: StageConfig, artifact_url: str) -> None:
        setup_tracing(config.tracing, "Vae")
        self.stage = config.base_loader.vae()
        self.artifacts = ArtifactStore(artifact_url)
        self._lock = asyncio.Lock()

    async def encode_image(self, image: Image.Image, height: int, width: int, seed: int,
                           trace: Carrier | None = None) -> ImageCondition:
        with served_span("Vae.encode_image", trace):
            async with self._lock:
                start = time.perf_counter()
                condition = await asyncio.to_thread(self.stage.encode_image, image, height, width, seed)
                metrics.stage_seconds(Stage.IMAGE_ENCODE, time.perf_counter() - start)
            return condition.to_cpu()

    async def decode_to_storage(self, job_id: str, latents: torch.Tensor, fps: int,
                                trace: Carrier | None = None) -> StoredVideo:
        with served_span("Vae.decode_to_storage", trace):
            start = time.perf_counter()
            async with self._lock:
                frames = await asyncio.to_thread(self.stage.decode, latents)
            stored = await asyncio.to_thread(store_video, self.artifacts, job_id, frames, fps,
                                             time.perf_counter() - start)
            metrics.stored_video(stored)
            return stored
