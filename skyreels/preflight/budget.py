"""From the peaks a played process reached to what each GPU and host must have, and the verdict.

What the allocation tracker counts is what `torch.cuda.max_memory_allocated` reports. A GPU also holds, per
process, what no tensor shows; the figures below are documented estimates until a GPU run calibrates them
(benchmarks/gpu: the measured peak next to the prediction):

- the caching allocator's reserve above the allocated peak (block rounding inside its segments, fragmentation):
  RESERVE_MARGIN of the peak;
- the CUDA context with the kernels CUDA 12 loads lazily: CUDA_CONTEXT_BYTES;
- a cuBLAS workspace per stream the process uses: CUBLAS_WORKSPACE_BYTES (Hopper's default of 32 MiB);
- NCCL's buffers per communicator of a gang: NCCL_COMMUNICATOR_BYTES, for the gang's group and its Ulysses and
  CFG subgroups.

A host holds each process's pageable and pinned peaks plus PROCESS_HOST_BYTES of Python, torch and the CUDA
runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from skyreels.preflight.gpus import GiB, GpuType
from skyreels.preflight.run import ProcessMemory

MiB = 1024**2
RESERVE_MARGIN = 0.05
CUDA_CONTEXT_BYTES = 600 * MiB
CUBLAS_WORKSPACE_BYTES = 32 * MiB
NCCL_COMMUNICATOR_BYTES = 256 * MiB
PROCESS_HOST_BYTES = int(2.5 * GiB)


def communicators(world_size: int) -> int:
    """The gang's group, plus its Ulysses and CFG subgroups when the mesh splits both ways."""
    if world_size <= 1:
        return 0
    return 3 if world_size % 2 == 0 and world_size > 2 else 1


@dataclass(frozen=True)
class Tenant:
    """One process on a GPU."""

    label: str
    memory: ProcessMemory

    @property
    def gpu_bytes(self) -> int:
        memory = self.memory
        return (int(memory.gpu_allocated * (1 + RESERVE_MARGIN)) + CUDA_CONTEXT_BYTES
                + CUBLAS_WORKSPACE_BYTES * (1 + memory.side_streams)
                + NCCL_COMMUNICATOR_BYTES * communicators(memory.world_size))

    @property
    def host_bytes(self) -> int:
        return self.memory.host_pageable + self.memory.host_pinned + PROCESS_HOST_BYTES


def other_ranks(world_size: int) -> str:
    """The name of the GPUs of a gang's ranks after rank 0 (each holds what rank 1 holds)."""
    return f"GPUs 1-{world_size - 1}" if world_size > 2 else "GPU 1"


@dataclass(frozen=True)
class GpuPlan:
    """What one GPU of the layout holds: its processes."""

    name: str
    tenants: tuple[Tenant, ...]

    @property
    def need_bytes(self) -> int:
        return sum(tenant.gpu_bytes for tenant in self.tenants)

    @property
    def allocated_bytes(self) -> int:
        return sum(tenant.memory.gpu_allocated for tenant in self.tenants)


@dataclass(frozen=True)
class PreflightReport:
    gpu: GpuType
    gpus: tuple[GpuPlan, ...]  # the distinct GPUs of one node (equal ones once, with their count in the name)
    host_bytes: int  # one node
    host_processes: int

    @property
    def worst(self) -> GpuPlan:
        return max(self.gpus, key=lambda plan: plan.need_bytes)

    @property
    def fits(self) -> bool:
        return self.worst.need_bytes <= self.gpu.memory_bytes

    def lines(self) -> list[str]:
        lines = []
        for plan in self.gpus:
            tenants = " + ".join(f"{tenant.label} {gib(tenant.memory.gpu_allocated)}" for tenant in plan.tenants)
            lines.append(f"{plan.name}: peak allocated {tenants}; with contexts, workspaces, NCCL and a "
                         f"{RESERVE_MARGIN:.0%} reserve: {gib(plan.need_bytes)} of {gib(self.gpu.memory_bytes)}")
        lines.append(f"host: {gib(self.host_bytes)} per node ({self.host_processes} process"
                     f"{'es' if self.host_processes > 1 else ''}: pageable + pinned peaks + "
                     f"{gib(PROCESS_HOST_BYTES)} each)")
        return lines

    def verdict(self) -> str:
        need, have = self.worst.need_bytes, self.gpu.memory_bytes
        if self.fits:
            return f"fits on {self.gpu.name} (need {gib(need)} on the fullest GPU, have {gib(have)})"
        return f"does not fit on {self.gpu.name} (need {gib(need)} on {self.worst.name}, have {gib(have)})"


def gib(nbytes: int) -> str:
    return f"{nbytes / GiB:.1f} GiB"
