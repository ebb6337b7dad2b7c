"""The GPU types a preflight plans for: memory, compute capability, and what follows from them."""

from __future__ import annotations

from dataclasses import dataclass

GB = 1000**3
GiB = 1024**3


@dataclass(frozen=True)
class GpuType:
    name: str
    memory_bytes: int  # what torch.cuda.get_device_properties(...).total_memory reports
    capability: tuple[int, int]

    @property
    def has_fp8(self) -> bool:
        """fp8 tensor cores: Ada (8.9) and Hopper (9.0) or newer."""
        return self.capability >= (8, 9)

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB


# total_memory as CUDA reports it (a little under the marketing figure: ECC and firmware reserve some)
GPU_TYPES: dict[str, GpuType] = {gpu.name: gpu for gpu in (
    GpuType("H100-80GB", int(79.19 * GiB), (9, 0)),
    GpuType("H200-141GB", int(139.8 * GiB), (9, 0)),
    GpuType("A100-80GB", int(79.15 * GiB), (8, 0)),
    GpuType("A800-80GB", int(79.15 * GiB), (8, 0)),
    GpuType("A100-40GB", int(39.39 * GiB), (8, 0)),
    GpuType("L40S-48GB", int(44.39 * GiB), (8, 9)),
    GpuType("L4-24GB", int(22.05 * GiB), (8, 9)),
    GpuType("RTX4090-24GB", int(23.53 * GiB), (8, 9)),
    GpuType("A10G-24GB", int(22.06 * GiB), (8, 6)),
)}


def gpu_type(name: str) -> GpuType:
    try:
        return GPU_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown GPU type {name!r}; known: {', '.join(GPU_TYPES)}") from None
