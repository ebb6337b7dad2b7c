from __future__ import annotations

import io

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from skyreels import GenerationRequest, LocalPipeline
from skyreels.video import encode_mp4, encode_thumbnail


def test_generated_mp4_decodes_to_the_video(t2v_pipeline: LocalPipeline, t2v_request: GenerationRequest) -> None:
    result = t2v_pipeline.generate(t2v_request)
    data = result.to_mp4()
    decoded = iio.imread(data, extension=".mp4", plugin="FFMPEG")
    assert decoded.shape == (9, 64, 64, 3)
    meta = iio.immeta(data, extension=".mp4", plugin="FFMPEG")
    assert meta["codec"] == "h264" and meta["fps"] == 24
    # lossy, but the same picture
    assert np.abs(decoded.astype(int) - result.frames.astype(int)).mean() < 12


def test_odd_sizes_are_not_rescaled() -> None:
    frames = np.random.default_rng(0).integers(0, 255, (5, 48, 80, 3), dtype=np.uint8)
    assert iio.imread(encode_mp4(frames, fps=8), extension=".mp4", plugin="FFMPEG").shape == (5, 48, 80, 3)


def test_thumbnail_is_a_small_jpeg() -> None:
    frames = np.zeros((3, 544, 960, 3), dtype=np.uint8)
    image = Image.open(io.BytesIO(encode_thumbnail(frames)))
    assert image.format == "JPEG" and max(image.size) == 320 and image.size == (320, 181)


def test_bad_frames_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((3, 16, 16, 3), dtype=np.float32), fps=24)
