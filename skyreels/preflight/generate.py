"""What `skyreels generate` with given flags holds on its GPUs and host."""

from __future__ import annotations

from skyreels.optimize.config import OptimizeConfig
from skyreels.preflight.budget import GpuPlan, PreflightReport, Tenant, other_ranks
from skyreels.preflight.gpus import GpuType
from skyreels.preflight.run import ProcessPlan, Role, play
from skyreels.request import GenerationRequest


def preflight_generate(request: GenerationRequest, gpu: GpuType, optimize: OptimizeConfig | None = None,
                       gpu_num: int = 1, sequence_batch: bool = False) -> PreflightReport:
    """What `skyreels generate` with these flags holds on `gpu_num` GPUs of type `gpu` (PreflightFault where CUDA
    would raise). With gpu_num > 1, rank 0 (text encoders, its share of the DiT and the VAE decode) and rank 1
    (the same without the text encoders, as every other rank) are played."""
    optimize = optimize or OptimizeConfig()

    def plan(rank: int) -> ProcessPlan:
        return ProcessPlan(role=Role.PIPELINE, task=request.task, request=request, optimize=optimize,
                           world_size=gpu_num, rank=rank, sequence_batch=sequence_batch)

    main = Tenant("rank 0" if gpu_num > 1 else "generate", play(plan(0), gpu))
    if gpu_num == 1:
        return PreflightReport(gpu=gpu, gpus=(GpuPlan("GPU 0", (main,)),), host_bytes=main.host_bytes,
                               host_processes=1)
    other = Tenant("rank 1", play(plan(1), gpu))
    return PreflightReport(gpu=gpu, gpus=(GpuPlan("GPU 0", (main,)), GpuPlan(other_ranks(gpu_num), (other,))),
                           host_bytes=main.host_bytes + (gpu_num - 1) * other.host_bytes, host_processes=gpu_num)

