"""Extending a video: its last frame starts an I2V continuation, and the result is both videos, stitched.

The source video is copied into the extension's artifacts at submit (so deleting the source later changes
nothing), and the stitched video is made once, on the first download after the continuation completed.
"""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
from PIL import Image

from skyreels.artifacts import VIDEO, ArtifactStore
from skyreels.video import encode_mp4

PREFIX_VIDEO = "prefix.mp4"  # the video being extended, as it was at submit
EXTENDED_VIDEO = "extended.mp4"  # prefix + continuation


def _frames(mp4: bytes) -> np.ndarray:
    return iio.imread(mp4, extension=".mp4", plugin="FFMPEG")


def last_frame(mp4: bytes) -> Image.Image:
    return Image.fromarray(_frames(mp4)[-1])


def stitched_video(artifacts: ArtifactStore, job_id: str, fps: int) -> bytes:
    """The extension's whole video: made from the prefix and the continuation once, then read back."""
    if not artifacts.exists(job_id, EXTENDED_VIDEO):
        prefix, continuation = _frames(artifacts.get(job_id, PREFIX_VIDEO)), _frames(artifacts.get(job_id, VIDEO))
        # the continuation starts on the prefix's last frame: show it once
        artifacts.put(job_id, EXTENDED_VIDEO, encode_mp4(np.concatenate([prefix, continuation[1:]]), fps))
    return artifacts.get(job_id, EXTENDED_VIDEO)
