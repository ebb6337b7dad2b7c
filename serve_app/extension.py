"""Extending a video: its last frame starts an I2V continuation, and the result is both videos, stitched.

The source is a completed job's video, or a clip the client uploads (mp4 or webm, the official client's way),
resized to a size the model takes and kept at its own frame rate. It is copied into the extension's artifacts
at submit (so deleting the source later changes nothing), and the stitched video is made once, on the first
download after the continuation completed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import imageio.v3 as iio
import numpy as np
from PIL import Image

from serve_app.requests import InvalidRequest, UploadLimits
from skyreels.artifacts import VIDEO, ArtifactStore
from skyreels.request import MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE
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


# A container is told by its first bytes: ISO media (mp4) names its type at 4, Matroska (webm) opens with EBML.
SIGNATURES = {"mp4": lambda data: data[4:8] == b"ftyp", "webm": lambda data: data[:4] == b"\x1a\x45\xdf\xa3"}


@dataclass(frozen=True)
class Clip:
    """An uploaded video to extend, as the extension keeps it."""

    mp4: bytes  # resized, re-encoded
    fps: int
    size: str  # WIDTHxHEIGHT, one the model takes
    frames: int
    last_frame: Image.Image


def read_clip(data: bytes, limits: UploadLimits, area: int) -> Clip:
    """An uploaded mp4 or webm within `limits` (bytes; pixels, duration and frame rate read from its header before
    decoding), resized to sides that are multiples of 16 and about `area` pixels at most (the model's default)."""
    if len(data) > limits.max_bytes:
        raise InvalidRequest(f"video is {len(data)} bytes; at most {limits.max_bytes}", 413, "video_too_large")
    container = next((name for name, signed in SIGNATURES.items() if signed(data)), None)
    if container not in limits.video_formats:
        raise InvalidRequest(f"video is not {' or '.join(limits.video_formats)}: upload one of those", 422,
                             "unsupported_video_format")
    try:
        meta = iio.immeta(data, extension=f".{container}", plugin="FFMPEG")
        width, height = meta["size"]
        fps, seconds = float(meta["fps"]), float(meta["duration"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InvalidRequest(f"video is not a readable {container} file ({error})") from error
    if width * height > limits.max_pixels:
        raise InvalidRequest(f"video is {width}x{height} pixels; at most {limits.max_pixels} pixels a frame", 413,
                             "video_too_large")
    if seconds > limits.max_video_seconds:
        raise InvalidRequest(f"video is {seconds:g} s long; at most {limits.max_video_seconds:g} s", 413,
                             "video_too_large")
    if not 1 <= round(fps) <= 60:
        raise InvalidRequest(f"video runs at {fps:g} frames a second; 1 to 60 are taken")
    try:
        frames = iio.imread(data, extension=f".{container}", plugin="FFMPEG")
    except (OSError, ValueError) as error:
        raise InvalidRequest(f"video is not a readable {container} file ({error})") from error
    if len(frames) == 0:
        raise InvalidRequest("video has no frames")
    new_width, new_height = _model_size(width, height, area)
    resized = np.stack([np.asarray(Image.fromarray(frame).convert("RGB").resize((new_width, new_height),
                                                                                Image.Resampling.LANCZOS))
                        for frame in frames])
    return Clip(mp4=encode_mp4(resized, round(fps)), fps=round(fps), size=f"{new_width}x{new_height}",
                frames=len(resized), last_frame=Image.fromarray(resized[-1]))


def _model_size(width: int, height: int, area: int) -> tuple[int, int]:
    """The clip's shape at about `area` pixels at most (never enlarged), each side a multiple of 16 in range."""
    scale = min(1.0, math.sqrt(area / (width * height)))
    return tuple(min(MAX_SIZE, max(MIN_SIZE, round(side * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE))
                 for side in (width, height))
