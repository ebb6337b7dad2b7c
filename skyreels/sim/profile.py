"""The timing profile of the `sim` model source: how long each stage of one job takes on GPUs.

`benchmarks/gpu/run.sh quick` measures it on one GPU (an end-to-end video and the DiT's lossless step) and writes
it as JSON; without a file the sim uses `published_a800()`, fitted to SkyReelsInfer's published figures. One
measurement covers every video shape and gang: the DiT step scales with the FLOP count of its config
(skyreels.optimize.flops) and with the gang's CFG x Ulysses efficiency, the VAE and the mp4 mux with the
pixels they produce or read. Light on purpose (pydantic and the FLOP model; no torch), so that the GPU
benchmark's driver process can write it.

    profile = SimProfile.load(path)
    profile.job_seconds(VideoShape(height=544, width=960, num_frames=97), steps=30, i2v=False)
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from skyreels.optimize.flops import dit_forward_flops, video_tokens

# SkyReelsInfer's README: seconds per 544x960x97 video of 30 steps (true CFG) on 1/2/4/8 A800s.
PUBLISHED_A800_SECONDS = {1: 771.0, 2: 387.0, 4: 205.0, 8: 107.0}
WORKLOAD_STEPS = 30


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


WORKLOAD = VideoShape(height=544, width=960, num_frames=97)


class PixelScaledSeconds(BaseModel):
    """Seconds measured at one shape, scaled linearly with the pixels of another (VAE encode/decode, mux)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds: float = Field(ge=0)
    measured_at: VideoShape

    def at(self, shape: VideoShape) -> float:
        return self.seconds * shape.pixels / self.measured_at.pixels


class Efficiency(BaseModel):
    """Parallel efficiency (speedup / ranks) at a few rank counts, piecewise linear in log2(ranks) between them
    and extrapolated along the last segment beyond them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    points: dict[int, float] = Field(min_length=2, description="ranks -> efficiency, 1 -> 1.0 among them")

    def speedup(self, ranks: int) -> float:
        return ranks * self.at(ranks)

    def at(self, ranks: int) -> float:
        if ranks in self.points:
            return self.points[ranks]
        known = sorted(self.points)
        upper = max(1, min(len(known) - 1, bisect.bisect(known, ranks)))  # the segment around `ranks`, or the last
        (x0, y0), (x1, y1) = ((x, self.points[x]) for x in known[upper - 1:upper + 1])
        slope = (y1 - y0) / (math.log2(x1) - math.log2(x0))
        return max(0.05, min(1.0, y0 + slope * (math.log2(ranks) - math.log2(x0))))


class GangScaling(BaseModel):
    """How a gang of N GPUs divides a DiT step (cfg_degree x ulysses_degree) and, decoding on the gang, the VAE."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cfg_efficiency: float = Field(gt=0, le=1, description="the CFG split over 2 ranks (one all-gather a step)")
    ulysses: Efficiency = Field(description="sequence parallel over the Ulysses ranks (all-to-alls in attention)")
    vae: Efficiency = Field(description="the parallel VAE decode: tiles shared over the gang's ranks")

    def dit_speedup(self, cfg_degree: int, ulysses_degree: int) -> float:
        cfg = 2 * self.cfg_efficiency if cfg_degree == 2 else 1.0
        return cfg * self.ulysses.speedup(ulysses_degree)


class DitStepSeconds(BaseModel):
    """One denoising step (both CFG branches in one batch) on a gang of `gang_size` GPUs, scaled to another
    shape by the FLOP count of `transformer_config`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds_per_step: float = Field(gt=0)
    gang_size: int = Field(1, ge=1, description="GPUs of the gang that measured it (CFG split when even)")
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
    weight_swap_seconds: float = Field(
        default_factory=lambda: estimated_weight_swap_seconds(), ge=0,
        description="a gang serving several models puts another's transformer weights in place on every rank "
                    "(pinned host memory -> GPU, all ranks at once)")
    gang: GangScaling = Field(default_factory=lambda: published_gang_scaling(),
                              description="gang efficiencies; a one-GPU measurement takes the published ones")
    notes: list[str] = Field(default_factory=list, description="where a figure comes from a stand-in")

    def job_seconds(self, shape: VideoShape, steps: int, i2v: bool) -> dict[str, float]:
        """Each stage's seconds for one job of this shape on one GPU."""
        return {
            "text_encode": self.text_encode_seconds,
            "image_encode": self.vae_encode.at(shape.first_frame()) if i2v else 0.0,
            "denoise": steps * self.dit_step.at(shape),
            "decode": self.vae_decode.at(shape),
            "mux": self.mux.at(shape),
        }

    def step_seconds(self, shape: VideoShape, cfg_degree: int = 1, ulysses_degree: int = 1,
                     true_cfg: bool = True) -> float:
        """One step on a gang of cfg_degree x ulysses_degree GPUs. Without true CFG a step is one forward, and
        a CFG split has nothing to split (both halves run it)."""
        one_gpu = self.dit_step.at(shape) * self.gang.dit_speedup(*mesh_of(self.dit_step.gang_size))
        if not true_cfg:
            return one_gpu / 2 / self.gang.ulysses.speedup(ulysses_degree)
        return one_gpu / self.gang.dit_speedup(cfg_degree, ulysses_degree)

    def decode_seconds(self, shape: VideoShape, ranks: int = 1) -> float:
        return self.vae_decode.at(shape) / self.gang.vae.speedup(ranks)

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SimProfile:
        return cls.model_validate_json(path.read_text())


def mesh_of(gang_size: int) -> tuple[int, int]:
    """cfg_degree x ulysses_degree of a gang with true CFG (skyreels.parallel.mesh.MeshShape.plan's rule)."""
    cfg_degree = 2 if gang_size % 2 == 0 else 1
    return cfg_degree, gang_size // cfg_degree


# One transformer's weights in bf16 (12.8 B parameters), each rank copies all of them: the gang shards none.
TRANSFORMER_BYTES = 25.6e9
# Pinned host -> GPU copies over PCIe Gen4 x16 reach ~25 GB/s of its 32 (CUDA's bandwidthTest on A100/A800 hosts);
# on DGX-A100-like hosts two GPUs share each x16 uplink to the CPU, so a gang swapping at once gets about half.
PCIE4_PINNED_GB_S = 25.0
GPUS_PER_HOST_LINK = 2


def estimated_weight_swap_seconds() -> float:
    """25.6 GB at 12.5 GB/s: ~2 s (a GPU alone on its link: ~1 s). benchmarks/bench_weight_swap.py measures it."""
    return TRANSFORMER_BYTES / (PCIE4_PINNED_GB_S * 1e9 / GPUS_PER_HOST_LINK)


# What the published totals do not say, assumed for one A800 at the workload of record.
A800_TEXT_ENCODE_S = 0.5  # LLaMA-3-8B + CLIP-L over two 256-token prompts
A800_VAE_DECODE_S = 45.0  # tiled 3D VAE decode of 97 frames at 544x960
A800_VAE_ENCODE_S = 0.5
A800_MUX_S = 1.0


def published_gang_scaling() -> GangScaling:
    """The efficiencies that make 2/4/8 A800s (CFG 2 x Ulysses 1/2/4) take SkyReelsInfer's seconds, once the
    parts that do not parallelise (text, mux) are set aside; the parallel VAE is assumed to scale as the DiT."""
    serial = A800_TEXT_ENCODE_S + A800_MUX_S
    parallel = PUBLISHED_A800_SECONDS[1] - serial
    efficiency = {n: parallel / (n * (seconds - serial)) for n, seconds in PUBLISHED_A800_SECONDS.items()}
    cfg = efficiency[2]
    return GangScaling(cfg_efficiency=cfg,
                       ulysses=Efficiency(points={1: 1.0, 2: efficiency[4] / cfg, 4: efficiency[8] / cfg}),
                       vae=Efficiency(points=efficiency))


def published_a800() -> SimProfile:
    """SkyReelsInfer's one-A800 time split into stages: the assumptions above, and the DiT step is the rest."""
    from skyreels.random_full import PROMPT_TOKENS, transformer_config
    from skyreels.request import Task

    dit_seconds = PUBLISHED_A800_SECONDS[1] - A800_TEXT_ENCODE_S - A800_MUX_S - A800_VAE_DECODE_S
    return SimProfile(
        device="A800 (SkyReelsInfer's published figures)",
        measured_by="skyreels.sim.profile.published_a800",
        text_encode_seconds=A800_TEXT_ENCODE_S,
        dit_step=DitStepSeconds(seconds_per_step=dit_seconds / WORKLOAD_STEPS, measured_at=WORKLOAD,
                                prompt_tokens=PROMPT_TOKENS, transformer_config=transformer_config(Task.T2V),
                                path="SkyReelsInfer (published)"),
        vae_encode=PixelScaledSeconds(seconds=A800_VAE_ENCODE_S, measured_at=WORKLOAD.first_frame()),
        vae_decode=PixelScaledSeconds(seconds=A800_VAE_DECODE_S, measured_at=WORKLOAD),
        mux=PixelScaledSeconds(seconds=A800_MUX_S, measured_at=WORKLOAD),
        notes=[f"assumed on one A800: text {A800_TEXT_ENCODE_S} s, VAE decode {A800_VAE_DECODE_S} s, "
               f"encode {A800_VAE_ENCODE_S} s, mux {A800_MUX_S} s; the rest of the published seconds is the DiT"],
    )
