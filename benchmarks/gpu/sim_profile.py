"""The timing profile of the `sim` model source: how long each stage of one job takes on one GPU.

`benchmarks/gpu/run.sh quick` measures it (an end-to-end video and the DiT's lossless step) and writes it as
JSON; the sim preset's stand-ins hold their Ray resources for these times. One measurement covers every video
shape: the DiT step scales with the FLOP count of its config (skyreels.optimize.flops), the VAE and the mp4
mux with the pixels they produce or read. Self-contained on purpose (pydantic + the FLOP model), so that the
sim preset can take this file over as it is.

    profile = SimProfile.load(path)
    profile.job_seconds(VideoShape(height=544, width=960, num_frames=97), steps=30, i2v=False)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from skyreels.optimize.flops import dit_forward_flops, video_tokens


class VideoShape(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    num_frames: int = Field(gt=0)

    @property
    def pixels(self) -> int:
        return self.height * self.width * self.num_frames

    def first_frame(self) -> VideoShape:
        return self.model_copy(update={"num_frames": 1})


class PixelScaledSeconds(BaseModel):
    """Seconds measured at one shape, scaled linearly with the pixels of another (VAE encode/decode, mux)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds: float = Field(ge=0)
    measured_at: VideoShape

    def at(self, shape: VideoShape) -> float:
        return self.seconds * shape.pixels / self.measured_at.pixels


class DitStepSeconds(BaseModel):
    """One denoising step (both CFG branches in one batch) on a gang of `gang_size` GPUs, scaled to another
    shape by the FLOP count of `transformer_config`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds_per_step: float = Field(gt=0)
    gang_size: int = Field(1, ge=1, description="GPUs of the gang that measured it; larger gangs are the sim's model.")
    measured_at: VideoShape
    prompt_tokens: int = Field(ge=0, description="valid prompt tokens of the measurement (the text in the FLOPs)")
    transformer_config: dict[str, Any] = Field(description="diffusers config of the DiT: the FLOP model's input")
    path: str = Field(description="what ran: variant, attention kernel, compile")

    def flops_per_step(self, shape: VideoShape) -> float:
        video = video_tokens(self.transformer_config, shape.height, shape.width, shape.num_frames)
        return 2 * dit_forward_flops(self.transformer_config, video, self.prompt_tokens)  # two CFG branches

    def at(self, shape: VideoShape) -> float:
        return self.seconds_per_step * self.flops_per_step(shape) / self.flops_per_step(self.measured_at)


class SimProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    device: str = Field(description="the GPU that measured it")
    measured_by: str = Field(description="the command that wrote this file")
    text_encode_seconds: float = Field(ge=0, description="prompt and negative prompt of one job")
    dit_step: DitStepSeconds
    vae_encode: PixelScaledSeconds = Field(description="the I2V first frame (num_frames 1)")
    vae_decode: PixelScaledSeconds = Field(description="tiled decode of the whole video")
    mux: PixelScaledSeconds = Field(description="frames to mp4 bytes")
    notes: list[str] = Field(default_factory=list, description="where a figure comes from a stand-in")

    def job_seconds(self, shape: VideoShape, steps: int, i2v: bool) -> dict[str, float]:
        """Each stage's seconds for one job of this shape."""
        return {
            "text_encode": self.text_encode_seconds,
            "image_encode": self.vae_encode.at(shape.first_frame()) if i2v else 0.0,
            "denoise": steps * self.dit_step.at(shape),
            "decode": self.vae_decode.at(shape),
            "mux": self.mux.at(shape),
        }

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SimProfile:
        return cls.model_validate_json(path.read_text())
