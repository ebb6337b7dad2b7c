"""Denoiser deployment: a gang of DiT worker actors, one per GPU, in one process group.

A replica owns a placement group of one bundle for itself plus `gpus_per_replica` bundles of
{"GPU": 1} (Serve reserves it from `placement_group_bundles`); it starts one `DiTWorker` actor
in each GPU bundle, joins them into one torch.distributed group and drives them request by
request. Rank 0 streams step progress and returns the latents. A lost worker poisons the gang:
the request fails with `GangWorkerDied`, `check_health` fails, and Serve builds a fresh replica.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import ray
from ray import serve
import torch
from ray.exceptions import RayActorError
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from deployments.config import StageConfig
from deployments.errors import GangUnavailable, GangWorkerDied
from skyreels.parallel.gang import gang_steps
from skyreels.parallel.group import GroupSpec, free_port, init_group
from skyreels.parallel.mesh import DeviceMesh, MeshShape
from skyreels.progress import StepProgress
from skyreels.request import Task
from skyreels.stages.conditioning import Conditioning, ImageCondition
from skyreels.stages.denoise import DenoiseParams, DenoiseStage

logger = logging.getLogger(__name__)

HEALTH_CHECK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DenoiseResult:
    latents: torch.Tensor  # on CPU
    steps_done: int


def gang_bundles(
    gpus_per_replica: int, replica_cpus: float, worker_cpus: float, reserve_gpus: bool
) -> list[dict[str, float]]:
    """Bundle 0 holds the replica actor itself; one bundle per worker follows, {"GPU": 1} each on GPUs."""
    worker = {"CPU": worker_cpus} | ({"GPU": 1} if reserve_gpus else {})
    return [{"CPU": replica_cpus}] + [worker] * gpus_per_replica


class DiTWorker:
    """One rank: loads every served transformer once, then runs the steps it is asked for."""

    def __init__(self, config: StageConfig, rank: int, world_size: int, sequence_batch: bool = False) -> None:
        self.rank = rank
        self.sequence_batch = sequence_batch
        self.world_size = world_size
        self.device = "cuda:0" if config.device == "cuda" else "cpu"
        self.stages = {
            task: DenoiseStage.from_pretrained(
                paths.transformer, paths.component("scheduler"), device=self.device, dtype=config.torch_dtype,
                batch_cfg=not sequence_batch, optimize=config.optimize,
            )
            for task, paths in ((task, config.paths(task)) for task in config.sources)
        }
        self._config = config
        self._cancel = threading.Event()

    def rendezvous(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), free_port()

    def join_group(self, master_addr: str, master_port: int) -> None:
        """Joins the gang's group and splits every served transformer over the mesh."""
        init_group(GroupSpec(self.rank, self.world_size, master_addr, master_port, self._config.device))
        heads = next(iter(self.stages.values())).transformer.config.num_attention_heads
        mesh = DeviceMesh(MeshShape.plan(self.world_size, heads, sequence_batch=self.sequence_batch))
        for stage in self.stages.values():
            stage.distribute(mesh)

    def ping(self) -> int:
        return self.rank

    def cancel(self) -> None:
        self._cancel.set()

    def denoise(
        self, task: Task, conditioning: Conditioning, params: DenoiseParams, image: ImageCondition | None
    ) -> Iterator[StepProgress | DenoiseResult]:
        """Streams StepProgress after every step (rank 0 only), then the DenoiseResult (rank 0)."""
        self._cancel.clear()
        latents, steps_done = None, 0
        for progress, latents in gang_steps(self.stages[task], conditioning, params, image, self._cancel.is_set):
            steps_done = progress.step
            if self.rank == 0:
                yield progress
        if self.rank == 0:
            yield DenoiseResult(latents=latents.cpu(), steps_done=steps_done)


class Denoiser:
    def __init__(
        self,
        config: StageConfig,
        gpus_per_replica: int = 1,
        worker_cpus: float = 1.0,
        reserve_gpus: bool = True,
        sequence_batch: bool = False,
    ) -> None:
        placement_group = get_current_placement_group()
        if placement_group is None or len(placement_group.bundle_specs) != gpus_per_replica + 1:
            raise RuntimeError(
                f"the Denoiser replica needs a placement group of 1 + {gpus_per_replica} bundles "
                "(build it with serve_app.app.build_app, which sets placement_group_bundles)"
            )
        worker_class = ray.remote(DiTWorker)
        replica = serve.get_replica_context().replica_id.unique_id
        self.workers = [
            worker_class.options(
                name=f"DiTWorker:{replica}:{rank}",
                num_cpus=worker_cpus,
                num_gpus=1 if reserve_gpus else 0,
                max_concurrency=2,  # `cancel` must get through while `denoise` runs
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group, placement_group_bundle_index=rank + 1
                ),
            ).remote(config, rank, gpus_per_replica, sequence_batch)
            for rank in range(gpus_per_replica)
        ]
        master_addr, master_port = ray.get(self.workers[0].rendezvous.remote())
        ray.get([worker.join_group.remote(master_addr, master_port) for worker in self.workers])
        self._dead: str | None = None
        self._lock = asyncio.Lock()
        logger.info("DiT gang of %d worker(s) ready", gpus_per_replica)

    async def denoise(
        self, task: Task, conditioning: Conditioning, params: DenoiseParams, image: ImageCondition | None = None
    ) -> AsyncIterator[StepProgress | DenoiseResult]:
        """Stream of StepProgress, ending with the DenoiseResult (or fewer steps when cancelled)."""
        async with self._lock:
            if self._dead:
                raise GangUnavailable(self._dead)
            streams = [
                worker.denoise.options(num_returns="streaming").remote(task, conditioning, params, image)
                for worker in self.workers
            ]
            others = asyncio.gather(*(self._drain(stream) for stream in streams[1:]))
            try:
                async for ref in streams[0]:
                    yield await ref
                await others
            except asyncio.CancelledError:
                # stop at the next step, and keep the gang until every rank has stopped
                for worker in self.workers:
                    worker.cancel.remote()
                await asyncio.shield(asyncio.gather(self._drain(streams[0]), others, return_exceptions=True))
                raise
            except Exception as error:
                others.cancel()
                # a peer's death surfaces on the survivors as a failed collective: look at the gang
                lost = await self._lost_workers()
                if not lost and not isinstance(error, RayActorError):
                    raise
                self._poison(f"a DiT worker died during denoising (rank {', '.join(map(str, lost))}): {error!r}"[:800])
                raise GangWorkerDied(self._dead) from error

    async def check_health(self) -> None:
        if self._dead:
            raise GangWorkerDied(self._dead)
        lost = await self._lost_workers()
        if lost:
            self._poison(f"DiT worker rank {', '.join(map(str, lost))} is unreachable")
            raise GangWorkerDied(self._dead)

    async def _lost_workers(self) -> list[int]:
        """Ranks that do not answer a ping."""
        async def alive(worker) -> bool:
            try:
                await asyncio.wait_for(worker.ping.remote(), HEALTH_CHECK_TIMEOUT_S)
                return True
            except (RayActorError, asyncio.TimeoutError):
                return False

        answers = await asyncio.gather(*(alive(worker) for worker in self.workers))
        return [rank for rank, ok in enumerate(answers) if not ok]

    @staticmethod
    async def _drain(stream) -> None:
        async for ref in stream:
            await ref

    def _poison(self, reason: str) -> None:
        """Stop the whole gang: survivors may be blocked in a collective with the dead rank."""
        logger.error("%s; stopping the gang", reason)
        self._dead = reason
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
