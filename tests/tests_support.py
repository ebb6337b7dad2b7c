"""Helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np


def decode_mp4(data: bytes) -> np.ndarray:
    return iio.imread(data, extension=".mp4", plugin="FFMPEG")
