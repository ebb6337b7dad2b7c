"""The preflight of a Serve application: what each GPU of its layout holds, before anything loads.

The layout is the application's: a Denoiser gang of `gpus_per_replica` ranks, one GPU each (every rank holds the
served DiTs, swapped in place, and the VAE when the decode runs on the gang); a TextEncoder and a Vae replica,
each on GPUs of its own when its `num_gpus` is 1 or more, else on the first GPU of a gang node with rank 0 (a
fraction of a GPU beside workers that reserve `worker_gpu_fraction`, or none reserved while CUDA is visible, as the
shipped GPU configs run them). Each process is played on fake CUDA by skyreels.preflight; the GPUs of one node are
summed. `skyreels preflight --config` (serve_app.commands) and the app's startup (build_app, when `gpu_type` is set)
use it; only the former knows the stages' `num_gpus` and replicas (Serve applies a config's `deployments:` after
build_app returns), so the app's startup plays every stage beside rank 0, the fullest case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    worker_gpu_fraction: float
    sequence_batch: bool
    decode_on: Literal["vae", "gang"]
    optimize: OptimizeConfig

    @property
    def sources(self) -> dict[Task, str]: ...

    @property
    def torch_dtype(self) -> Any: ...


class ConfigDoesNotFitError(RuntimeError):
    """The application's stages cannot fit their GPUs (the message has the figures)."""


@dataclass(frozen=True)
class StagePlacement:
    """Where the TextEncoder and Vae of one gang node run, by stage name."""

    beside_rank0: Mapping[str, int]  # on GPU 0 with gang rank 0 (a share of it, or none reserved): replicas there
    own_gpu: tuple[str, ...]  # on GPUs of their own (num_gpus 1 or more)
    shares: Mapping[str, float]  # Ray's share of a GPU for one replica of each fractional stage beside rank 0
    gpu0_share: float  # what Ray reserves of GPU 0: the worker's share and every replica's beside it


def place_stages(worker_gpu_fraction: float, stage_gpus: Mapping[str, Any] | None = None,
                 stage_replicas: Mapping[str, int] | None = None) -> StagePlacement:
    """A stage with `num_gpus` below 1 runs beside gang rank 0, the fullest rank; ValueError when the shares Ray
    would have to fit on that GPU exceed it. A fractional replica gets a gang GPU only where a worker left room,
    and Ray packs fractional requests best-fit: replicas that start before a gang share one GPU (which a worker
    then no longer fits), so every fractional replica of a node must fit beside one worker."""
    stage_gpus, stage_replicas = stage_gpus or {}, stage_replicas or {}
    gpus = {name: float(stage_gpus.get(name) or 0) for name in STAGES}
    beside = {name: int(stage_replicas.get(name, 1)) for name in STAGES if gpus[name] < 1}
    shares = {name: gpus[name] for name in beside if gpus[name] > 0}
    total = worker_gpu_fraction + sum(share * beside[name] for name, share in shares.items())
    if round(total, 4) > 1:  # Ray counts GPU shares in units of 1e-4
        parts = " + ".join([f"worker_gpu_fraction {worker_gpu_fraction:g}"] + [
            f"{name} {beside[name]} x {share:g}" if beside[name] > 1 else f"{name} {share:g}"
            for name, share in shares.items()])
        raise ValueError(
            f"the GPU shares on a gang GPU exceed 1: {parts} = {total:g}. A stage with num_gpus below 1 shares a "
            "gang GPU with a worker, and Ray packs such replicas onto one GPU: lower worker_gpu_fraction or the "
            "stages' num_gpus or replicas, or give a stage num_gpus 1 (a GPU of its own)")
    return StagePlacement(beside_rank0=beside, own_gpu=tuple(name for name in STAGES if gpus[name] >= 1),
                          shares=shares, gpu0_share=total)


def app_preflight(config: Layout, gpu: GpuType, request: GenerationRequest,
                  stage_gpus: Mapping[str, Any] | None = None,
                  stage_replicas: Mapping[str, int] | None = None) -> PreflightReport:
    """What one node of `config`'s layout holds on GPUs of type `gpu`, serving `request`'s shape. `stage_gpus`:
    the TextEncoder's and Vae's `num_gpus` (none: 0, beside rank 0); `stage_replicas`: the most replicas of each
    (none: 1), all of which may share GPU 0 when their num_gpus is below 1."""
    placement = place_stages(config.worker_gpu_fraction, stage_gpus, stage_replicas)
    common = dict(task=request.task, request=request, optimize=config.optimize, dtype=config.torch_dtype)
    world = config.gpus_per_replica
    worker_share = f" ({config.worker_gpu_fraction:g} GPU)" if config.worker_gpu_fraction < 1 else ""

    def rank(index: int) -> Tenant:
        return Tenant(f"rank {index}{worker_share}", play(ProcessPlan(
            role=Role.GANG_RANK, world_size=world, rank=index, sequence_batch=config.sequence_batch,
            decode=config.decode_on == "gang", served=tuple(config.sources), **common), gpu))

    def stage(name: str) -> Tenant:
        label = f"{name} ({placement.shares[name]:g} GPU)" if name in placement.shares else name
        return Tenant(label, play(ProcessPlan(role=STAGES[name], **common), gpu))

    stages = {name: stage(name) for name in STAGES}
    beside = [stages[name] for name, replicas in placement.beside_rank0.items() for _ in range(replicas)]
    own = [stages[name] for name in placement.own_gpu]
    gpus = [GpuPlan("GPU 0", (rank(0), *beside))]
    if world > 1:
        gpus.append(GpuPlan(other_ranks(world), (rank(1),)))
    gpus += [GpuPlan(f"{tenant.label}'s GPU", (tenant,)) for tenant in own]
    host = gpus[0].tenants[0].host_bytes + (world - 1) * (gpus[1].tenants[0].host_bytes if world > 1 else 0) + sum(
        tenant.host_bytes for tenant in beside + own)
    return PreflightReport(gpu=gpu, gpus=tuple(gpus), host_bytes=host, host_processes=world + len(beside + own))


def refuse_if_too_big(config: Layout, gpu: GpuType, request: GenerationRequest) -> PreflightReport:
    """The startup check: ConfigDoesNotFitError, with the figures, when the stages cannot fit their GPUs."""
    report = app_preflight(config, gpu, request)
    if not report.fits:
        raise ConfigDoesNotFitError("; ".join([report.verdict(), *report.lines()]))
    return report
