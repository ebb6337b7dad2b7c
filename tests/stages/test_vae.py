from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from skyreels import LocalPipeline


def test_decode_gives_uint8_frames(t2v_pipeline: LocalPipeline) -> None:
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    frames = t2v_pipeline.vae.decode(latents)
    assert frames.dtype == np.uint8 and frames.shape == (9, 64, 64, 3)


def test_tiled_decode_covers_large_frames(t2v_pipeline: LocalPipeline) -> None:
    """Small tiles (blended over their overlap) cover a 160x160 video and stay near the one-tile decode.

    Tiling is approximate by design (each tile sees only its neighbourhood), so the check is loose.
    """
    assert t2v_pipeline.vae.vae.use_tiling
    vae = t2v_pipeline.vae.vae
    latents = torch.randn(1, 4, 2, 20, 20, generator=torch.Generator().manual_seed(0))
    tiled = t2v_pipeline.vae.decode(latents)
    vae.enable_tiling(tile_sample_min_height=96, tile_sample_min_width=96, tile_sample_stride_height=64,
                      tile_sample_stride_width=64)
    try:
        small_tiles = t2v_pipeline.vae.decode(latents)
    finally:
        vae.enable_tiling()
    assert tiled.shape == small_tiles.shape == (5, 160, 160, 3)
    difference = np.abs(tiled.astype(int) - small_tiles.astype(int))
    assert 0 < difference.mean() < 16


def test_encode_image_is_seeded(i2v_pipeline: LocalPipeline, first_frame: Image.Image) -> None:
    a = i2v_pipeline.vae.encode_image(first_frame, 64, 64, seed=1)
    b = i2v_pipeline.vae.encode_image(first_frame, 64, 64, seed=1)
    c = i2v_pipeline.vae.encode_image(first_frame, 64, 64, seed=2)
    assert a.latents.shape == (1, 4, 1, 8, 8)
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, c.latents)
    assert torch.equal(a.generator_state, b.generator_state)
