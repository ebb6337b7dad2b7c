"""Denoiser deployment: a gang of DiT worker actors, one per GPU, in one process group.

A replica owns a placement group of one bundle for itself plus `gpus_per_replica` bundles of
{"GPU": 1}, or of a share of a GPU (Serve reserves it from `placement_group_bundles`); it starts one
`DiTWorker` actor in each GPU bundle (each wraps skyreels' Ray-free `GangRank`), joins them into one
torch.distributed group and sends them commands, request by request: every command goes to the
ranks it declares, and rank 0 answers. With `decode` on, the gang also decodes its videos (the
parallel VAE over its ranks) and stores them: at the end of the job's denoise call (`decode_to`: no
second trip through the router), or in a call of its own (a run that resumes at the decode). A lost
worker poisons the gang: the request fails with `GangWorkerDied`, `check_health` fails, and Serve
builds a fresh replica.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import ray
import torch
from ray import serve
from ray.exceptions import RayActorError
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from deployments import metrics
from deployments.config import StageConfig
from deployments.metrics import Stage
from deployments.tracing import Carrier, TracingConfig, served_span, setup_tracing
from deployments.errors import GangUnavailable, GangWorkerDied
from skyreels.artifacts import ArtifactStore, LatentCheckpoint, StoredVideo, VideoTarget, store_video
from skyreels.gang.commands import Command, Decode, Denoise, ranks_for
from skyreels.gang.rank import GangRank, RankSpec
from skyreels.parallel.group import free_port
from skyreels.progress import StepProgress
from skyreels.recipe import Decoded, Denoised
from skyreels.request import Task
from skyreels.stages.conditioning import Conditioning, ImageCondition
from skyreels.stages.denoise import DenoiseParams

logger = logging.getLogger(__name__)

HEALTH_CHECK_TIMEOUT_S = 30.0


def gang_bundles(
    gpus_per_replica: int, replica_cpus: float, worker_cpus: float, reserve_gpus: bool, gpu_fraction: float = 1.0
) -> list[dict[str, float]]:
    """Bundle 0 holds the replica actor itself; one bundle per worker follows, {"GPU": gpu_fraction} each on GPUs
    (below 1, the rest of each GPU is left to fractional stage replicas)."""
    if not 0.5 < gpu_fraction <= 1:
        # Ray packs fractional bundles best-fit: two of 0.5 or less would put two ranks on one GPU
        raise ValueError(f"gpu_fraction must be above 0.5 and at most 1, not {gpu_fraction}")
    worker = {"CPU": worker_cpus} | ({"GPU": gpu_fraction} if reserve_gpus else {})
    return [{"CPU": replica_cpus}] + [worker] * gpus_per_replica


class CommandStops:
    """The rank's stop flag, set for the command a cancel names. A threaded actor runs its calls in any order: a
    cancel may reach the rank before the command it cancels starts, and must still stop it (clearing the flag at
    the start would lose it; the other ranks would stop without this one)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._guard = threading.Lock()
        self._running = -1
        self._cancelled = -1  # the newest command a cancel named

    def begin(self, command_id: int) -> None:
        with self._guard:
            self._running = command_id
            if self._cancelled >= command_id:
                self.stop.set()
            else:
                self.stop.clear()

    def cancel(self, command_id: int) -> None:
        with self._guard:
            self._cancelled = max(self._cancelled, command_id)
            if self._running == command_id:
                self.stop.set()


class DiTWorker:
    """One rank of the gang as a Ray actor: a thin wrapper around GangRank (Ray shows it one GPU, cuda:0)."""

    def __init__(self, spec: RankSpec, rank: int, tracing: TracingConfig | None = None) -> None:
        setup_tracing(tracing or TracingConfig(), f"DiTWorker rank {rank}")
        stop = threading.Event()
        self.stops = CommandStops(stop)
        self.busy = threading.Lock()  # held while a command runs
        self.rank = GangRank(spec, rank, cuda_index=0, stop=stop)

    def rendezvous(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), free_port()

    def join(self, master_addr: str, master_port: int) -> None:
        self.rank.join(master_addr, master_port)

    def ping(self) -> int:
        return self.rank.rank

    def cancel(self, command_id: int) -> None:
        self.stops.cancel(command_id)

    def idle(self) -> None:
        """Returns once no command runs (a stopped one has saved its step)."""
        with self.busy:
            pass

    def run(self, command: Command, command_id: int, trace: Carrier | None = None) -> Iterator[Any]:
        self.stops.begin(command_id)
        with self.busy, served_span(f"DiTWorker.{type(command).__name__}", trace, rank=self.rank.rank):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            yield from self.rank.run(command)
            if torch.cuda.is_available():
                metrics.metric("skyreels_gang_peak_memory_bytes").set(
                    torch.cuda.max_memory_allocated(), tags={"rank": str(self.rank.rank)})


class Denoiser:
    def __init__(
        self,
        config: StageConfig,
        gpus_per_replica: int = 1,
        worker_cpus: float = 1.0,
        reserve_gpus: bool = True,
        sequence_batch: bool = False,
        artifact_url: str | None = None,
        hang_timeout_s: float = 600.0,
        gpu_fraction: float = 1.0,
    ) -> None:
        """With an `artifact_url` the gang also decodes (decode_to_storage): every rank loads the VAE.
        `hang_timeout_s`: the watchdog's limit on the silence between two answers of the gang. `gpu_fraction`: the
        share of its bundle's GPU each worker asks for, as gang_bundles reserved it."""
        placement_group = get_current_placement_group()
        if placement_group is None or len(placement_group.bundle_specs) != gpus_per_replica + 1:
            raise RuntimeError(
                f"the Denoiser replica needs a placement group of 1 + {gpus_per_replica} bundles "
                "(build it with serve_app.app.build_app, which sets placement_group_bundles)"
            )
        self.artifacts = ArtifactStore(artifact_url) if artifact_url is not None else None
        spec = RankSpec(transformers=config.sources, device=config.device, dtype=config.torch_dtype,
                        world_size=gpus_per_replica, sequence_batch=sequence_batch, optimize=config.optimize,
                        decode=self.artifacts is not None, collective_timeout_s=hang_timeout_s)
        self.hang_timeout_s = hang_timeout_s
        setup_tracing(config.tracing, "Denoiser")
        worker_class = ray.remote(DiTWorker)
        replica = serve.get_replica_context().replica_id.unique_id
        self.workers = [
            worker_class.options(
                name=f"DiTWorker:{replica}:{rank}",
                num_cpus=worker_cpus,
                num_gpus=gpu_fraction if reserve_gpus else 0,
                max_concurrency=2,  # `cancel` must get through while `run` runs
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group, placement_group_bundle_index=rank + 1
                ),
            ).remote(spec, rank, config.tracing)
            for rank in range(gpus_per_replica)
        ]
        master_addr, master_port = ray.get(self.workers[0].rendezvous.remote())
        ray.get([worker.join.remote(master_addr, master_port) for worker in self.workers])
        self._dead: str | None = None
        self._lock = asyncio.Lock()
        self._commands = 0  # commands sent so far: a cancel names the one it stops
        logger.info("DiT gang of %d worker(s) ready (decodes: %s)", gpus_per_replica, spec.decode)

    async def denoise(
        self, task: Task, conditioning: Conditioning, params: DenoiseParams, image: ImageCondition | None = None,
        checkpoint: LatentCheckpoint | None = None, decode_to: VideoTarget | None = None,
        trace: Carrier | None = None,
    ) -> AsyncIterator[StepProgress | Denoised | Decoded[StoredVideo]]:
        """Stream of StepProgress, ending with Denoised (or fewer steps and no Denoised when cancelled), then, with
        `decode_to`, Decoded: the video decoded on this gang and stored. With a checkpoint, the steps go on from the
        step it holds, and a cancelled stream saves the step the ranks stopped at there (the main rank's latents,
        written once, before the gang takes other work)."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self.holds(model_id)
        with served_span("Denoiser.denoise", trace) as ranks_trace:
            denoised = None
            async for item in self._run(Denoise(task, conditioning, params, image), checkpoint, ranks_trace):
                if isinstance(item, StepProgress) and item.seconds:
                    metrics.stage_seconds(Stage.DENOISE_STEP, item.seconds)
                elif isinstance(item, Denoised):
                    metrics.denoise_figures(item.figures)
                    denoised = item
                yield item
            if decode_to is not None and denoised is not None:
                start = time.perf_counter()
                stored = await self.decode_to_storage(decode_to.job_id, denoised.latents, decode_to.fps, ranks_trace)
                yield Decoded(stored, time.perf_counter() - start)

    @serve.multiplexed(max_num_models_per_replica=1)
    async def holds(self, model_id: str) -> str:
        """Tells Serve's router which model this gang's weights are (the last one asked for), so that a job goes
        to a gang that holds its model when one is free. The ranks swap their weights themselves, when the
        Denoise command for the other model runs: in command order, never under a running job."""
        return model_id

    async def decode_to_storage(self, job_id: str, latents: torch.Tensor, fps: int,
                                trace: Carrier | None = None) -> StoredVideo:
        """The VAE tiles shared over the gang's ranks; the video and its thumbnail written as the job's."""
        if self.artifacts is None:
            raise RuntimeError("this Denoiser does not decode (the app decodes on the Vae stage)")
        with served_span("Denoiser.decode_to_storage", trace) as ranks_trace:
            start = time.perf_counter()
            frames = [item async for item in self._run(Decode(latents), trace=ranks_trace)][0]
            stored = await asyncio.to_thread(store_video, self.artifacts, job_id, frames, fps,
                                             time.perf_counter() - start)
            metrics.stored_video(stored)
            return stored

    async def check_health(self) -> None:
        if self._dead:
            raise GangWorkerDied(self._dead)
        lost = await self._lost_workers()
        if lost:
            self._poison(f"DiT worker rank {', '.join(map(str, lost))} is unreachable")
            raise GangWorkerDied(self._dead)

    async def _run(self, command: Command, checkpoint: LatentCheckpoint | None = None,
                   trace: Carrier | None = None) -> AsyncIterator[Any]:
        """Rank 0's answer to `command`, sent to the ranks it declares; one command at a time. A Denoise goes on
        from the step `checkpoint` holds (read once the gang is this command's: a run paused on this gang has
        saved its step by then), unless the job's runner has let go of this run (then nothing runs); cancelled, or asked through the checkpoint (request_stop: the job's runner let go
        of it), the ranks stop together after a step and the main rank saves it there, before the gang takes the
        next command."""
        async with self._lock:
            if self._dead:
                raise GangUnavailable(self._dead)
            if checkpoint is not None and isinstance(command, Denoise):
                if await asyncio.to_thread(checkpoint.stop_requested):  # a request its runner let go of meanwhile
                    return
                command = replace(command, resume=await asyncio.to_thread(checkpoint.load_steps), checkpoint=checkpoint)
            workers = [self.workers[rank] for rank in ranks_for(command, len(self.workers))]
            # serialized once into the object store, not once per rank (embeddings, latents: megabytes each)
            sent = ray.put(command) if len(workers) > 1 else command
            self._commands += 1
            command_id = self._commands
            streams = [worker.run.options(num_returns="streaming").remote(sent, command_id, trace)
                       for worker in workers]
            others = asyncio.gather(*(self._drain(stream) for stream in streams[1:]))
            try:
                async for item in self._watched(streams[0], command):
                    if checkpoint is not None and await asyncio.to_thread(checkpoint.stop_requested):
                        for worker in workers:  # the job's runner let go of it: stop (and save) after this step
                            worker.cancel.remote(command_id)
                    yield item
                await others
            except (asyncio.CancelledError, GeneratorExit):
                # stop at the next step, and keep the gang until every rank has stopped
                for worker in workers:
                    worker.cancel.remote(command_id)
                # a cancelled request's streams may end before their tasks do: wait for the ranks themselves
                await asyncio.shield(asyncio.gather(self._drain(streams[0]), others,
                                                    *(worker.idle.remote() for worker in workers),
                                                    return_exceptions=True))
                raise
            except Exception as error:
                others.cancel()
                # a peer's death surfaces on the survivors as a failed collective: look at the gang
                lost = await self._lost_workers()
                if not lost and not isinstance(error, RayActorError):
                    raise
                self._poison(f"a DiT worker died during {type(command).__name__} (rank "
                             f"{', '.join(map(str, lost))}): {error!r}"[:800])
                raise GangWorkerDied(self._dead) from error

    async def _watched(self, stream, command: Command) -> AsyncIterator[Any]:
        """Rank 0's answer, item by item; a silence longer than `hang_timeout_s` means a rank is stuck (in a
        collective, a driver call): the gang is torn down and Serve builds another."""
        answers = aiter(stream)
        while True:
            try:
                ref = await asyncio.wait_for(anext(answers), self.hang_timeout_s)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                self._poison(f"the DiT gang hung: no answer to {type(command).__name__} for {self.hang_timeout_s:.0f} s")
                raise GangWorkerDied(self._dead) from None
            yield await ref

    async def _lost_workers(self) -> list[int]:
        """Ranks that do not answer a ping."""
        async def alive(worker) -> bool:
            try:
                await asyncio.wait_for(worker.ping.remote(), min(HEALTH_CHECK_TIMEOUT_S, self.hang_timeout_s))
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
        if self._dead is None:  # the first cause; Serve replaces this replica once
            metrics.metric("skyreels_gang_rebuilds_total").inc()
        self._dead = reason
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
