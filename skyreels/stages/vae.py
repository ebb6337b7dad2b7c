"""VAE stage: encode the I2V first frame; decode latents to uint8 frames (tiled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from diffusers import AutoencoderKLHunyuanVideo
from diffusers.video_processor import VideoProcessor
from PIL import Image

from skyreels.parallel.vae import parallel_decode
from skyreels.stages.conditioning import ImageCondition


class VaeStage:
    def __init__(self, vae: AutoencoderKLHunyuanVideo, tiling: bool = True) -> None:
        self.vae = vae.eval().requires_grad_(False)
        if tiling:
            # Decoding 544x960x97 whole needs tens of GB of activations; tiles bound it.
            self.vae.enable_tiling()
        self.video_processor = VideoProcessor(vae_scale_factor=vae.config.spatial_compression_ratio)

    @classmethod
    def from_pretrained(
        cls,
        vae_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        tiling: bool = True,
    ) -> VaeStage:
        return cls(AutoencoderKLHunyuanVideo.from_pretrained(vae_dir, torch_dtype=dtype).to(device), tiling=tiling)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def models(self) -> tuple[torch.nn.Module, ...]:
        return (self.vae,)

    @torch.inference_mode()
    def encode_image(self, image: Image.Image, height: int, width: int, seed: int) -> ImageCondition:
        """The first frame's latents, sampled from the seed's generator as diffusers' I2V does."""
        pixels = self.video_processor.preprocess(image, height=height, width=width).to(self.device, self.vae.dtype)
        generator = torch.Generator("cpu").manual_seed(seed)
        posterior = self.vae.encode(pixels.unsqueeze(2)).latent_dist
        latents = posterior.sample(generator).to(torch.float32) * self.vae.config.scaling_factor
        return ImageCondition(latents=latents, generator_state=generator.get_state())

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (1, C, T', h, w) -> frames (T, H, W, 3) uint8."""
        return to_frames(self.vae.decode(self.unscaled(latents), return_dict=False)[0])

    def decode_parallel(self, latents: torch.Tensor, group: dist.ProcessGroup | None = None) -> np.ndarray | None:
        """`decode` with the tiles shared over the group's ranks: frames on rank 0, None elsewhere."""
        video = parallel_decode(self.vae, self.unscaled(latents), group)
        return to_frames(video) if video is not None else None

    def unscaled(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor


def to_frames(video: torch.Tensor) -> np.ndarray:
    """A decoded video (1, 3, T, H, W) in [-1, 1] -> frames (T, H, W, 3) uint8."""
    video = (video[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0)
    return (video * 255).round().to(torch.uint8).cpu().numpy()
