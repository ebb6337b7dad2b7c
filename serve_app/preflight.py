"""The preflight of a Serve application: what each GPU of its layout holds, before anything loads.

The layout is the application's: a Denoiser gang of `gpus_per_replica` ranks, one GPU each (every rank holds the
served DiTs, swapped in place, and the VAE when the decode runs on the gang); a TextEncoder and a Vae replica,
each on GPUs of its own when its `num_gpus` is 1 or more, else on the first GPU of a gang node with rank 0 (a
fraction of a GPU, or none reserved while CUDA is visible, as the shipped GPU configs run them). Each process is
played on fake CUDA by skyreels.preflight; the GPUs of one node are summed. `skyreels preflight --config`
(serve_app.commands) and the app's startup (build_app, when `gpu_type` is set) use it.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from skyreels.preflight.budget import GpuPlan, PreflightReport, Tenant, other_ranks
from skyreels.preflight.gpus import GpuType
from skyreels.preflight.run import ProcessPlan, Role, play
from skyreels.optimize.config import OptimizeConfig
from skyreels.request import GenerationRequest, Task

STAGES = {"TextEncoder": Role.TEXT_ENCODER, "Vae": Role.VAE}


class Layout(Protocol):
    """What of an AppConfig decides what its GPUs hold."""

    gpus_per_replica: int
    sequence_batch: bool
    decode_on: Literal["vae", "gang"]
    optimize: OptimizeConfig

    @property
    def sources(self) -> dict[Task, str]: ...

    @property
    def torch_dtype(self) -> Any: ...


class ConfigDoesNotFitError(RuntimeError):
    """The application's stages cannot fit their GPUs (the message has the figures)."""


def app_preflight(config: Layout, gpu: GpuType, request: GenerationRequest,
                  stage_gpus: dict[str, Any] | None = None) -> PreflightReport:
    """What one node of `config`'s layout holds on GPUs of type `gpu`, serving `request`'s shape."""
    stage_gpus = stage_gpus or {}
    common = dict(task=request.task, request=request, optimize=config.optimize, dtype=config.torch_dtype)
    world = config.gpus_per_replica

    def rank(index: int) -> Tenant:
        return Tenant(f"rank {index}", play(ProcessPlan(
            role=Role.GANG_RANK, world_size=world, rank=index, sequence_batch=config.sequence_batch,
            decode=config.decode_on == "gang", served=tuple(config.sources), **common), gpu))

    stages = {name: Tenant(name, play(ProcessPlan(role=role, **common), gpu)) for name, role in STAGES.items()}
    first = [rank(0)] + [stages[name] for name in STAGES if float(stage_gpus.get(name) or 0) < 1]
    gpus = [GpuPlan("GPU 0", tuple(first))]
    if world > 1:
        gpus.append(GpuPlan(other_ranks(world), (rank(1),)))
    gpus += [GpuPlan(f"{name}'s GPU", (stages[name],)) for name in STAGES if float(stage_gpus.get(name) or 0) >= 1]
    host = first[0].host_bytes + (world - 1) * (gpus[1].tenants[0].host_bytes if world > 1 else 0) + sum(
        stage.host_bytes for stage in stages.values())
    return PreflightReport(gpu=gpu, gpus=tuple(gpus), host_bytes=host, host_processes=world + len(stages))


def refuse_if_too_big(config: Layout, gpu: GpuType, request: GenerationRequest) -> PreflightReport:
    """The startup check: ConfigDoesNotFitError, with the figures, when the stages cannot fit their GPUs."""
    report = app_preflight(config, gpu, request)
    if not report.fits:
        raise ConfigDoesNotFitError("; ".join([report.verdict(), *report.lines()]))
    return report
