"""How fast each GPU type runs the stages, and what an hour of it costs: the sim profile scaled from the A800 that
SkyReelsInfer measured, by each type's published peak figures; a measured profile of the type replaces it.

Scaling (documented assumptions, to be replaced by `benchmarks/gpu/run.sh quick` on each type):
- the DiT is compute-bound: its step scales with dense BF16 tensor TFLOPS times the fraction of peak the type
  reaches on the same kernels relative to the A800 (`dit_efficiency`; Hopper reaches less of its larger peak
  with FlashAttention-2-class kernels: about 2.3x an A100 on HunyuanVideo rather than 3.2x);
- the VAE decode and the text encoders mix convolutions and bandwidth: they scale with the geometric mean of the
  TFLOPS and memory-bandwidth ratios;
- a gang without NVLink (PCIe cards) loses part of its Ulysses efficiency to all-to-alls over PCIe
  (`ulysses_penalty`);
- the mux runs on the CPU: the same everywhere.

Prices: on-demand $ per GPU-hour as public price pages listed them in 2025 (Lambda, RunPod, AWS, GCP, Azure);
`skyreels plan --prices FILE` (JSON {type: $/h}) overrides them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from skyreels.preflight.gpus import GPU_TYPES, GpuType
from skyreels.sim.profile import Efficiency, GangScaling, SimProfile, published_a800

REFERENCE = "A800-80GB"  # the type of published_a800()


@dataclass(frozen=True)
class GpuSpeed:
    dense_bf16_tflops: float  # NVIDIA datasheet, dense (no sparsity)
    memory_tb_s: float
    nvlink: bool
    dollars_per_hour: float
    dit_efficiency: float = 1.0  # fraction of peak reached, relative to the A800's fraction
    source: str = ""

    @property
    def ulysses_penalty(self) -> float:
        return 1.0 if self.nvlink else 0.85


GPU_SPEEDS: dict[str, GpuSpeed] = {
    "A800-80GB": GpuSpeed(312, 2.04, True, 1.79, source="A800 SXM datasheet; priced as an A100 80GB"),
    "A100-80GB": GpuSpeed(312, 2.04, True, 1.79, source="A100 SXM datasheet; Lambda on-demand 2025"),
    "A100-40GB": GpuSpeed(312, 1.56, True, 1.29, source="A100 SXM datasheet; Lambda on-demand 2025"),
    "H100-80GB": GpuSpeed(989, 3.35, True, 2.99, dit_efficiency=0.73,
                          source="H100 SXM datasheet; Lambda on-demand 2025; ~2.3x A100 on HunyuanVideo (xDiT, "
                                 "FastVideo reports)"),
    "H200-141GB": GpuSpeed(989, 4.8, True, 3.79, dit_efficiency=0.76,
                           source="H200 SXM datasheet (H100's compute, more bandwidth); on-demand 2025"),
    "L40S-48GB": GpuSpeed(362, 0.864, False, 1.49, dit_efficiency=0.9, source="L40S datasheet; RunPod 2025"),
    "L4-24GB": GpuSpeed(121, 0.3, False, 0.80, dit_efficiency=0.9, source="L4 datasheet; GCP g2 on-demand 2025"),
    "RTX4090-24GB": GpuSpeed(165, 1.01, False, 0.69, dit_efficiency=0.9,
                             source="Ada whitepaper (BF16, FP32 accumulate); RunPod 2025"),
    "A10G-24GB": GpuSpeed(70, 0.6, False, 1.01, dit_efficiency=0.9, source="AWS g5 (A10G); on-demand 2025"),
}


def speed(name: str) -> GpuSpeed:
    try:
        return GPU_SPEEDS[name]
    except KeyError:
        raise ValueError(f"no speed figures for GPU type {name!r}; known: {', '.join(GPU_SPEEDS)}") from None


def gpu(name: str) -> GpuType:
    speed(name)
    return GPU_TYPES[name]


def scaled_profile(name: str, reference: SimProfile | None = None) -> SimProfile:
    """`reference` (default: the published A800 figures) as it would run on GPU type `name`."""
    reference = reference or published_a800()
    base, target = speed(REFERENCE), speed(name)
    dit = target.dense_bf16_tflops * target.dit_efficiency / (base.dense_bf16_tflops * base.dit_efficiency)
    mixed = math.sqrt(target.dense_bf16_tflops / base.dense_bf16_tflops * target.memory_tb_s / base.memory_tb_s)
    gang = reference.gang
    penalty = target.ulysses_penalty / base.ulysses_penalty
    ulysses = Efficiency(points={ranks: (1.0 if ranks == 1 else value * penalty)
                                 for ranks, value in gang.ulysses.points.items()})
    return reference.model_copy(update={
        "device": f"{name} (scaled from {reference.device})",
        "text_encode_seconds": reference.text_encode_seconds / mixed,
        "dit_step": reference.dit_step.model_copy(
            update={"seconds_per_step": reference.dit_step.seconds_per_step / dit}),
        "vae_encode": reference.vae_encode.model_copy(update={"seconds": reference.vae_encode.seconds / mixed}),
        "vae_decode": reference.vae_decode.model_copy(update={"seconds": reference.vae_decode.seconds / mixed}),
        "gang": GangScaling(cfg_efficiency=gang.cfg_efficiency, ulysses=ulysses, vae=gang.vae),
        "notes": [*reference.notes, f"scaled to {name}: DiT x{dit:.2f}, VAE and text x{mixed:.2f} "
                                    f"({target.source})"],
    })


def profile_for(name: str, measured: dict[str, Path] | None = None) -> SimProfile:
    """A measured profile of the type when one is given, else the scaled published one."""
    if measured and name in measured:
        return SimProfile.load(measured[name])
    return scaled_profile(name)
