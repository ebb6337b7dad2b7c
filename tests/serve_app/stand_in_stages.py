"""Stand-ins for the stage handles a JobRunner calls (no Ray): they count their calls, and fail, hang or wait
for the test as told; and helpers to submit and follow jobs."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable

import torch

from serve_app.requests import new_job
from serve_app.runner import JobRunner
from serve_app.schemas import Job, VideoCreateParams
from skyreels.artifacts import VIDEO, ArtifactStore, StoredVideo
from skyreels.models import SERVED_MODEL_IDS, ServedModel
from skyreels.progress import StepProgress, StepState
from skyreels.recipe import Decoded, Denoised
from skyreels.request import Task

SERVED = [ServedModel(SERVED_MODEL_IDS[Task.T2V], Task.T2V, "tiny")]


class Method:
    def __init__(self, function: Callable) -> None:
        self.function = function

    def remote(self, *args, **kwargs):
        return self.function(*args, **kwargs)


class Handle:
    """Stands in for a Serve DeploymentHandle: `handle.method.remote(...)`."""

    def __init__(self, **methods: Callable) -> None:
        for name, function in methods.items():
            setattr(self, name, Method(function))

    def options(self, **_) -> Handle:
        return self


class Stages:
    """Stand-in stages that count their calls and fail or hang on demand."""

    def __init__(self, artifacts: ArtifactStore, steps: int = 3) -> None:
        self.artifacts, self.steps = artifacts, steps
        self.calls = {"encode": 0, "denoise": 0, "decode": 0}
        self.decoded: Counter[str] = Counter()  # completed decodes per job id
        self.step_permits: asyncio.Queue[None] | None = None  # if set: each denoising step waits for a permit
        self.faults: dict[str, list[BaseException | None]] = {"encode": [], "denoise": [], "decode": []}
        self.hang: dict[str, asyncio.Event] = {}
        self.denoise_closed = 0
        self.started_at_step: list[int] = []  # the step each denoise began after (0: from the noise)
        self.steps_run = 0  # denoising steps run, over all jobs
        self.entered = defaultdict(asyncio.Event)

    async def _enter(self, stage: str) -> None:
        self.calls[stage] += 1
        self.entered[stage].set()
        if stage in self.hang:
            await self.hang[stage].wait()
        if self.faults[stage] and (fault := self.faults[stage].pop(0)) is not None:
            raise fault

    async def encode(self, prompt, negative, trace=None):
        await self._enter("encode")
        return "conditioning"

    async def denoise(self, task, conditioning, params, image, checkpoint=None, trace=None,
                      decode_to=None) -> AsyncIterator:
        """As the gang: goes on from the step the checkpoint holds, and saves the step it is stopped at; with
        `decode_to`, decodes at the end of the call."""
        resume = checkpoint.load_steps() if checkpoint is not None else None
        done = resume.step if resume is not None else 0
        self.started_at_step.append(done)
        try:
            await self._enter("denoise")
            for step in range(done + 1, params.num_inference_steps + 1):
                while self.step_permits is not None and self.step_permits.empty():
                    if checkpoint is not None and checkpoint.stop_requested():  # as the gang: stop, save the step
                        return
                    await asyncio.sleep(0.01)
                if self.step_permits is not None:
                    self.step_permits.get_nowait()
                done = step
                self.steps_run += 1
                yield StepProgress(step, params.num_inference_steps)
            latents = torch.full((1, 4, 3, 8, 8), 0.5)
            yield Denoised(latents)
            if decode_to is not None:
                yield Decoded(await self.decode_to_storage(decode_to.job_id, latents, decode_to.fps), seconds=0.02)
        finally:
            if checkpoint is not None and done < params.num_inference_steps:
                checkpoint.save_steps(StepState(done, torch.full((1, 4, 3, 8, 8), float(done))))
            self.denoise_closed += 1

    async def decode_to_storage(self, job_id, latents, fps, trace=None):
        await self._enter("decode")
        self.artifacts.put(job_id, VIDEO, b"mp4")
        self.decoded[job_id] += 1
        return StoredVideo(decode_seconds=0.01, mux_seconds=0.01)

    def handles(self) -> tuple[Handle, Handle, Handle]:
        """The TextEncoder, the Denoiser (it decodes too, where the runner decodes on the gang) and the Vae."""
        text = Handle(encode=self.encode)
        denoiser = Handle(denoise=self.denoise, decode_to_storage=self.decode_to_storage)
        vae = Handle(decode_to_storage=self.decode_to_storage)
        return text, denoiser, vae


async def submit(runner: JobRunner, prompt: str = "a kite", **fields) -> Job:
    """`fields`: the job's own (priority, owner, ...) beside the body's; steps: num_inference_steps (default 3)."""
    steps = fields.pop("steps", 3)
    params = VideoCreateParams(prompt=prompt, size="64x64", num_frames=9, num_inference_steps=steps, seed=5)
    job, _ = new_job(params, None, SERVED)
    return await runner.submit(job.model_copy(update=fields), None)


async def finished(runner: JobRunner, job_id: str, timeout_s: float = 20) -> Job:
    async with runner.events.follow(job_id) as updates:
        job = runner.store.get(job_id)
        async with asyncio.timeout(timeout_s):
            while not job.status.is_terminal:
                job = await updates.get()
    return job


async def inside(stages: Stages, stage: str) -> None:
    """Waits until a run has entered `stage`."""
    await asyncio.wait_for(stages.entered[stage].wait(), 20)
