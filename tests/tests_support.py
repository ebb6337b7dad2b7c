"""Helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np

from skyreels.quality import psnr_db

# Two h264 encodings of frames that differ by one level in a few pixels (a parallel gang's, whose latents
# match one process to ~1e-6) can differ by up to ~12 levels where the encoder chose other blocks; they
# still sit near 46 dB apart, where two seeds of the tiny model sit near 16 dB.
SAME_VIDEO_MIN_PSNR_DB = 35.0


def decode_mp4(data: bytes) -> np.ndarray:
    return iio.imread(data, extension=".mp4", plugin="FFMPEG")


def assert_same_video(served: np.ndarray, local: np.ndarray) -> None:
    """Two decoded encodings show the same picture (see SAME_VIDEO_MIN_PSNR_DB)."""
    psnr = psnr_db(served, local)
    print(f"served vs local: PSNR {psnr:.1f} dB, max difference {np.abs(served.astype(int) - local.astype(int)).max()}")
    assert psnr >= SAME_VIDEO_MIN_PSNR_DB
