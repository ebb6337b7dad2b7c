"""Vae deployment: encodes I2V first frames; decodes latents, muxes mp4 + thumbnail, stores them.

Frames never leave this deployment: callers get back artifact sizes, not pixels.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass

import torch
from PIL import Image

from deployments.config import StageConfig
from serve_app.artifacts import THUMBNAIL, VIDEO, ArtifactStore
from skyreels.stages.conditioning import ImageCondition
from skyreels.stages.vae import VaeStage
from skyreels.video import encode_mp4, encode_thumbnail


@dataclass(frozen=True)
class StoredVideo:
    video_bytes: int
    thumbnail_bytes: int
    decode_seconds: float
    mux_seconds: float


class Vae:
    def __init__(self, config: StageConfig, artifact_url: str) -> None:
        self.stage = VaeStage.from_pretrained(
            config.base_paths.component("vae"), device=config.device, dtype=config.torch_dtype
        )
        self.artifacts = ArtifactStore(artifact_url)
        self._lock = asyncio.Lock()

    async def encode_image(self, image_png: bytes, height: int, width: int, seed: int) -> ImageCondition:
        image = Image.open(io.BytesIO(image_png)).convert("RGB")
        async with self._lock:
            condition = await asyncio.to_thread(self.stage.encode_image, image, height, width, seed)
        return condition.to_cpu()

    async def decode_to_storage(self, job_id: str, latents: torch.Tensor, fps: int) -> StoredVideo:
        start = time.perf_counter()
        async with self._lock:
            frames = await asyncio.to_thread(self.stage.decode, latents)
        decoded = time.perf_counter()
        video, thumbnail = await asyncio.to_thread(lambda: (encode_mp4(frames, fps), encode_thumbnail(frames)))
        await asyncio.to_thread(self.artifacts.put, job_id, VIDEO, video)
        await asyncio.to_thread(self.artifacts.put, job_id, THUMBNAIL, thumbnail)
        return StoredVideo(
            video_bytes=len(video),
            thumbnail_bytes=len(thumbnail),
            decode_seconds=decoded - start,
            mux_seconds=time.perf_counter() - decoded,
        )
