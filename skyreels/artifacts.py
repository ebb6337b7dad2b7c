"""Job outputs through fsspec: a local directory by default, any fsspec URL on a cluster.

Layout: ``{root}/{job_id}/{name}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from skyreels.progress import StepState
from skyreels.video import encode_mp4, encode_thumbnail

logger = logging.getLogger(__name__)

VIDEO = "video.mp4"
THUMBNAIL = "thumbnail.jpg"
INPUT_IMAGE = "input.png"
LATENTS = "latents.safetensors"  # the checkpoint between the DiT and the decode
STEPS = "steps.safetensors"  # the checkpoint of a denoising paused between two steps (preempted)
STOP = "stop"  # the job's runner let go of its run (paused, cancelled): its gang stops after a step, or never starts

# One path segment: starts with a letter or digit, no separators, no "..", bounded length.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _check_segment(kind: str, value: str) -> str:
    if not _SEGMENT.fullmatch(value) or ".." in value:
        raise ValueError(f"invalid {kind} {value!r}: use letters, digits, '.', '_', '-' only")
    return value


class ArtifactStore:
    """Bytes per (job id, name) under one root URL (a path, ``s3://...``, ``memory://...``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = url_to_fs(url)
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            self.fs.makedirs(self.root or "/", exist_ok=True)
        logger.info("artifacts at %s", url)

    def __reduce__(self) -> tuple[type[ArtifactStore], tuple[str]]:
        """Travels (to a gang's driver) as its URL."""
        return ArtifactStore, (self.url,)

    def _dir(self, job_id: str) -> str:
        return f"{self.root}/{_check_segment('job id', job_id)}"

    def _path(self, job_id: str, name: str) -> str:
        return f"{self._dir(job_id)}/{_check_segment('artifact name', name)}"

    def put(self, job_id: str, name: str, data: bytes) -> None:
        """Write an artifact, replacing any previous one; atomic on a local filesystem."""
        path = self._path(job_id, name)
        if not self._local:
            # Object stores publish an object whole or not at all.
            self.fs.pipe_file(path, data)
            return
        job_dir = self._dir(job_id)
        self.fs.makedirs(job_dir, exist_ok=True)
        # A leading dot: never a valid artifact name, so a half-written file is never served.
        tmp = f"{job_dir}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get(self, job_id: str, name: str) -> bytes:
        """The artifact's bytes; FileNotFoundError if it is missing."""
        return self.fs.cat_file(self._path(job_id, name))

    def exists(self, job_id: str, name: str) -> bool:
        return self.fs.isfile(self._path(job_id, name))

    def size(self, job_id: str, name: str) -> int:
        """Size in bytes; FileNotFoundError if it is missing."""
        return int(self.fs.size(self._path(job_id, name)))

    def remove(self, job_id: str, name: str) -> None:
        """Remove one artifact; nothing happens if it is missing."""
        try:
            self.fs.rm(self._path(job_id, name))
        except FileNotFoundError:
            pass

    def delete(self, job_id: str) -> None:
        """Remove all of a job's artifacts; nothing happens if it has none."""
        try:
            self.fs.rm(self._dir(job_id), recursive=True)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class StoredVideo:
    decode_seconds: float  # VAE decode, by whichever stage decoded
    mux_seconds: float  # mp4 + thumbnail encode and write


@dataclass(frozen=True)
class VideoTarget:
    """Where a stage that decodes a job's latents stores the video: the job's artifacts, at the request's rate."""

    job_id: str
    fps: int


def store_video(artifacts: ArtifactStore, job_id: str, frames: np.ndarray, fps: int,
                decode_seconds: float) -> StoredVideo:
    """A job's decoded frames as its video and thumbnail artifacts."""
    start = time.perf_counter()
    artifacts.put(job_id, VIDEO, encode_mp4(frames, fps))
    artifacts.put(job_id, THUMBNAIL, encode_thumbnail(frames))
    return StoredVideo(decode_seconds=decode_seconds, mux_seconds=time.perf_counter() - start)


class LatentCheckpoint:
    """A job's denoised latents in its artifacts, written before the decode: a run cut off after the DiT
    resumes at the decode instead of denoising again. Also the latents of a denoising paused between two steps
    (`save_steps`, by the gang's driver, from the main rank's latents): the next run goes on from that step."""

    def __init__(self, artifacts: ArtifactStore, job_id: str) -> None:
        self.artifacts, self.job_id = artifacts, job_id

    def load(self) -> torch.Tensor | None:
        try:
            return load_tensors(self.artifacts.get(self.job_id, LATENTS))["latents"]
        except FileNotFoundError:
            return None

    def save(self, latents: torch.Tensor) -> None:
        self.artifacts.put(self.job_id, LATENTS, save_tensors({"latents": latents.contiguous()}))

    def load_steps(self) -> StepState | None:
        try:
            tensors = load_tensors(self.artifacts.get(self.job_id, STEPS))
        except FileNotFoundError:
            return None
        return StepState(step=int(tensors["step"]), latents=tensors["latents"])

    def save_steps(self, state: StepState) -> None:
        self.artifacts.put(self.job_id, STEPS, save_tensors({"latents": state.latents.contiguous(),
                                                             "step": torch.tensor(state.step)}))

    def request_stop(self) -> None:
        """Asks the gang that runs the job's steps, unwatched, to stop after the step in flight (Serve does not
        stop a replica's stream when its caller stops reading it)."""
        self.artifacts.put(self.job_id, STOP, b"")

    def stop_requested(self) -> bool:
        return self.artifacts.exists(self.job_id, STOP)

    def clear_stop(self) -> None:
        self.artifacts.remove(self.job_id, STOP)

    def discard(self) -> None:
        self.artifacts.remove(self.job_id, LATENTS)
        self.artifacts.remove(self.job_id, STEPS)
