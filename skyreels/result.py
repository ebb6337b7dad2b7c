"""What a generation returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from skyreels.video import encode_mp4


@dataclass
class GenerationResult:
    frames: np.ndarray  # (T, H, W, 3) uint8
    seed: int  # the seed actually used
    fps: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    latents: torch.Tensor | None = None  # the denoised latents (CPU, float32), before the VAE

    def to_mp4(self) -> bytes:
        return encode_mp4(self.frames, self.fps)
