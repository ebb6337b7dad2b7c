"""Frames -> H.264 mp4 bytes and a JPEG thumbnail."""

from __future__ import annotations

import io

import imageio.v3 as iio
import numpy as np
from PIL import Image

THUMBNAIL_MAX_SIDE = 320


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """(T, H, W, 3) uint8 -> mp4 (H.264, yuv420p: plays in every browser)."""
    _check_frames(frames)
    return iio.imwrite(
        "<bytes>",
        frames,
        extension=".mp4",
        plugin="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=8,
        # 16-pixel sizes need no rescale; keep ffmpeg from silently resizing odd ones
        macro_block_size=1,
    )


def encode_thumbnail(frames: np.ndarray) -> bytes:
    """The first frame as a JPEG whose longer side is at most THUMBNAIL_MAX_SIDE."""
    _check_frames(frames)
    image = Image.fromarray(frames[0])
    image.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
