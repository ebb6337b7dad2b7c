"""What `quick` measures on, in each of its two modes (no torch here: the orchestrator stays light)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuickSettings:
    mode: str  # "gpu" or "dry-run"
    preset: str
    device: str
    height: int
    width: int
    num_frames: int
    video_steps: int  # the video the per-step figures are extrapolated to
    measure_steps: int  # timed steps of a DiT variant, after one warm-up step
    compile: bool  # the variants' regional compile (off in the dry run: the CPU compiles for minutes)
    cache_num_frames: int  # the step cache's short run: the workload's size with fewer frames, whole videos
    cache_steps: int
    cache_threshold: float
    e2e_steps: int
    swap_size: str  # bench_weight_swap's size: a slice of the real model on a GPU, the tiny preset in the dry run


GPU = QuickSettings(mode="gpu", preset="random-full", device="cuda", height=544, width=960, num_frames=97,
                    video_steps=30, measure_steps=1, compile=True, cache_num_frames=9, cache_steps=30,
                    cache_threshold=0.1, e2e_steps=1, swap_size="blocks-4-8")
DRY_RUN = QuickSettings(mode="dry-run", preset="tiny", device="cpu", height=64, width=64, num_frames=9,
                        video_steps=2, measure_steps=1, compile=False, cache_num_frames=9, cache_steps=2,
                        cache_threshold=0.1, e2e_steps=1, swap_size="tiny")
