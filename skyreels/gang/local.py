"""A local DiT gang: N spawned processes (one per GPU, or gloo ranks on CPU) in one group.

Each process loads its stages once and then serves request after request. Rank 0 encodes the
prompt (and the I2V image), broadcasts the conditioning, streams step progress back and returns the
video; every rank runs its share of the DiT through the mesh (CFG x Ulysses).
"""

from __future__ import annotations

import logging
import queue
import time
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from skyreels.models import ModelSettings, resolve_model
from skyreels.optimize.config import OptimizeConfig
from skyreels.parallel.gang import gang_steps
from skyreels.parallel.group import GroupSpec, destroy_group, free_port, init_group
from skyreels.parallel.mesh import DeviceMesh, MeshShape
from skyreels.progress import GenerationCancelled, StepCallback, StepProgress
from skyreels.request import GenerationRequest, Task
from skyreels.result import GenerationResult
from skyreels.stages.denoise import DenoiseParams, DenoiseStage
from skyreels.stages.text import TextEncoderStage
from skyreels.stages.vae import VaeStage

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600.0
DEATH_POLL_S = 2.0  # how often a silent gang is checked for dead ranks, and an idle rank for a dead driver


@dataclass(frozen=True)
class GangSpec:
    source: str
    task: Task
    device: str  # "cpu" or "cuda"
    dtype: torch.dtype
    world_size: int
    sequence_batch: bool
    settings: ModelSettings
    optimize: OptimizeConfig


@dataclass(frozen=True)
class _Ready:
    rank: int


@dataclass(frozen=True)
class _Failed:
    rank: int
    error: str


class LocalGang:
    """Drives the gang's processes; `generate` has LocalPipeline's contract."""

    def __init__(self, spec: GangSpec) -> None:
        if spec.device == "cuda" and torch.cuda.device_count() < spec.world_size:
            raise ValueError(f"gpu_num {spec.world_size} needs that many GPUs, {torch.cuda.device_count()} visible")
        self.spec = spec
        context = mp.get_context("spawn")
        self._requests = [context.Queue() for _ in range(spec.world_size)]
        self._results = context.Queue()
        self._cancel = context.Event()
        port = free_port()
        self._processes = [
            context.Process(target=_rank_main, args=(rank, port, spec, self._requests[rank], self._results,
                                                     self._cancel), daemon=True, name=f"skyreels-rank{rank}")
            for rank in range(spec.world_size)
        ]
        for process in self._processes:
            process.start()
        ready = 0
        while ready < spec.world_size:
            ready += isinstance(self._next_message(STARTUP_TIMEOUT_S), _Ready)
        logger.info("local gang of %d ranks ready", spec.world_size)

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        self._cancel.clear()
        for requests in self._requests:
            requests.put(request)
        cancelled = False
        while True:
            message = self._next_message(None)
            if isinstance(message, StepProgress) and on_step is not None and not cancelled:
                try:
                    on_step(message)
                except GenerationCancelled:
                    cancelled = True
                    self._cancel.set()  # the ranks stop together after the step in flight
            elif isinstance(message, GenerationResult):
                if cancelled:
                    raise GenerationCancelled
                return message

    def close(self) -> None:
        for requests in self._requests:
            requests.put(None)
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()

    def _next_message(self, timeout_s: float | None):
        """The next message from the ranks; a dead or failed rank (or `timeout_s` without any message) closes
        the gang. A rank killed from outside shows first as a failed collective on the others: the error
        names the ranks that exited, the cause, before the survivor's traceback."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                message = self._results.get(timeout=DEATH_POLL_S)
            except queue.Empty:
                if dead := self._exited_ranks():
                    self.close()
                    raise RuntimeError(f"gang ranks exited (name: exit code) {dead}; their stderr has the reason "
                                       "(a script that starts a gang needs an `if __name__ == '__main__':` guard)")
                if deadline is not None and time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"the local gang sent nothing for {timeout_s:.0f} s")
                continue
            if isinstance(message, _Failed):
                dead = self._exited_ranks()
                self.close()
                cause = f"gang ranks exited (name: exit code) {dead}, then " if dead else ""
                raise RuntimeError(f"{cause}gang rank {message.rank} failed:\n{message.error}")
            return message

    def _exited_ranks(self) -> dict[str, int | None]:
        return {process.name: process.exitcode for process in self._processes if not process.is_alive()}


def _next_request(requests) -> GenerationRequest | None:
    """The next request; None to stop, also when the driver is gone (killed: nobody would ever send one)."""
    while True:
        try:
            return requests.get(timeout=DEATH_POLL_S)
        except queue.Empty:
            if not mp.parent_process().is_alive():
                logger.warning("the process driving this gang exited; rank stops")
                return None


def _rank_main(rank, port, spec: GangSpec, requests, results, cancel) -> None:
    try:
        init_group(GroupSpec(rank, spec.world_size, "127.0.0.1", port, spec.device, cuda_index=rank))
        device = f"cuda:{rank}" if spec.device == "cuda" else "cpu"
        paths = resolve_model(spec.source, spec.task, spec.settings)
        denoise = DenoiseStage.from_pretrained(paths.transformer, paths.component("scheduler"), device=device,
                                               dtype=spec.dtype, batch_cfg=not spec.sequence_batch,
                                               optimize=spec.optimize)
        heads = denoise.transformer.config.num_attention_heads
        denoise.distribute(DeviceMesh(MeshShape.plan(spec.world_size, heads, sequence_batch=spec.sequence_batch)))
        # rank 0 alone encodes the prompt; every rank decodes its share of the VAE tiles
        text = TextEncoderStage.from_pretrained(paths.base, device=device, dtype=spec.dtype,
                                                optimize=spec.optimize) if rank == 0 else None
        vae = VaeStage.from_pretrained(paths.component("vae"), device=device, dtype=spec.dtype)
        results.put(_Ready(rank))
        while (request := _next_request(requests)) is not None:
            params = DenoiseParams.from_request(request)
            inputs = [None]
            if rank == 0:
                negative = request.negative_prompt if request.uses_true_cfg else None
                image = vae.encode_image(request.image, request.height, request.width, params.seed) \
                    if request.image is not None else None
                conditioning = text.encode(request.prompt, negative)
                # tensors travel pickled: send them from host memory
                inputs = [(conditioning.to("cpu", conditioning.positive.embeds.dtype), image and image.to_cpu())]
            dist.broadcast_object_list(inputs, src=0)
            conditioning, image = inputs[0]
            for progress, latents in gang_steps(denoise, conditioning, params, image, cancel.is_set):
                if rank == 0:
                    results.put(progress)
            frames = vae.decode_parallel(latents)
            if rank == 0:
                results.put(GenerationResult(frames=frames, seed=params.seed, fps=request.fps, latents=latents.cpu()))
    except Exception:  # noqa: BLE001 - report every failure to the driver, which stops the gang
        results.put(_Failed(rank, traceback.format_exc()))
    finally:
        destroy_group()
