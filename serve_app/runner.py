"""JobRunner: the ingress's background worker that takes queued jobs through the generation recipe.

Submitting only records the job and queues it; the runner's loops take jobs in order and run
skyreels' recipe over the stages behind Serve handles (`ServeStages`). Several jobs are in flight
at once, so the stages overlap: while the gang denoises one job, the text encoder serves the next
and the decoder (the Vae stage, or the gang itself, by configuration) decodes the previous one.
The runner owns the queue and the job records; the recipe owns the order, timings and progress.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from PIL import Image

from deployments.errors import GangUnavailable, GangWorkerDied
from serve_app.metrics import JobMetrics
from serve_app.requests import to_generation_request
from serve_app.schemas import ErrorCode, Job, JobError, JobStatus
from serve_app.store import JobStore
from skyreels.artifacts import INPUT_IMAGE, ArtifactStore, StoredVideo
from skyreels.progress import StepProgress
from skyreels.recipe import Denoised, Phase, Progress, generate
from skyreels.request import GenerationRequest, Task

logger = logging.getLogger(__name__)

# A broken gang is replaced by Serve within its health-check period plus a model load.
GANG_RETRIES, GANG_RETRY_S = 40, 3.0


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class JobEvents:
    """Fan-out of job updates to the SSE streams that follow a job."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[asyncio.Queue[Job]]] = {}

    def publish(self, job: Job) -> None:
        for queue in self._listeners.get(job.id, ()):
            queue.put_nowait(job)

    @asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[asyncio.Queue[Job]]:
        queue: asyncio.Queue[Job] = asyncio.Queue()
        self._listeners.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            self._listeners[job_id].discard(queue)
            if not self._listeners[job_id]:
                del self._listeners[job_id]


class ServeStages:
    """The recipe's stages behind Serve handles, for one job. `decoder` is the Vae or the Denoiser deployment:
    both decode latents to the job's stored video (`decode_to_storage`)."""

    def __init__(self, job_id: str, text_encoder: Any, denoiser: Any, vae: Any, decoder: Any) -> None:
        self.job_id = job_id
        self.text_encoder, self.denoiser, self.vae, self.decoder = text_encoder, denoiser, vae, decoder

    async def encode_text(self, prompt: str, negative_prompt: str | None) -> Any:
        return await self.text_encoder.encode.remote(prompt, negative_prompt)

    async def encode_image(self, request: GenerationRequest) -> Any:
        return await self.vae.encode_image.remote(request.image, request.height, request.width, request.seed)

    async def denoise(self, task: Task, conditioning: Any, params: Any, image: Any
                      ) -> AsyncIterator[StepProgress | Denoised]:
        """The gang's stream; waits out a gang that is being replaced (nothing ran on it yet)."""
        for attempt in range(GANG_RETRIES + 1):
            try:
                async for event in self.denoiser.denoise.remote(task, conditioning, params, image):
                    yield event
                return
            except GangUnavailable:
                if attempt == GANG_RETRIES:
                    raise
                logger.warning("job %s: the DiT gang is being replaced; retrying in %.0f s", self.job_id, GANG_RETRY_S)
                await asyncio.sleep(GANG_RETRY_S)

    async def decode(self, latents: Any, request: GenerationRequest) -> StoredVideo:
        return await self.decoder.decode_to_storage.remote(self.job_id, latents, request.fps)


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        text_encoder: Any,
        denoiser: Any,
        vae: Any,
        max_queued_jobs: int,
        max_running_jobs: int,
        metrics: JobMetrics,
        decode_on_gang: bool = False,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.text_encoder = text_encoder
        self.denoiser = denoiser.options(stream=True)
        self.vae = vae
        self.decoder = denoiser if decode_on_gang else vae
        self.max_queued_jobs = max_queued_jobs
        self.max_running_jobs = max_running_jobs
        self.metrics = metrics
        self.events = JobEvents()
        self._pending: list[str] = []
        self._requests: dict[str, GenerationRequest] = {}  # the validated request of every waiting job
        self._wakeup = asyncio.Condition()
        self._running: dict[str, asyncio.Task] = {}
        self._loops: list[asyncio.Task] = []

    async def start(self) -> None:
        """Recover from the last process: fail what was running, re-queue what was waiting."""
        for job in self.store.in_status(JobStatus.IN_PROGRESS):
            self._finish(job.id, JobStatus.FAILED, JobError(
                code=ErrorCode.INTERRUPTED, message="the server stopped while this job ran; submit it again"))
        for job in self.store.in_status(JobStatus.QUEUED):
            self._requests[job.id] = await self._stored_request(job)
            self._pending.append(job.id)
        self._loops = [asyncio.create_task(self._loop()) for _ in range(self.max_running_jobs)]
        self.metrics.queue_depth.set(len(self._pending))

    async def submit(self, job: Job, request: GenerationRequest, image_png: bytes | None) -> Job:
        """Queues `job`, validated as `request` (its seed resolved); the image is kept for a restart."""
        if len(self._pending) >= self.max_queued_jobs:
            self.metrics.rejected.inc()
            raise QueueFull(retry_after_s=self._retry_after())
        if image_png is not None:
            await asyncio.to_thread(self.artifacts.put, job.id, INPUT_IMAGE, image_png)
        self.store.add(job)
        self._requests[job.id] = request
        self._pending.append(job.id)
        self.metrics.submitted.labels(job.model).inc()
        self.metrics.queue_depth.set(len(self._pending))
        async with self._wakeup:
            self._wakeup.notify()
        return job

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start; None when the job is not waiting."""
        return self._pending.index(job_id) + 1 if job_id in self._pending else None

    async def cancel(self, job_id: str) -> Job:
        """Stops a job: at once when queued, between two denoising steps when running."""
        if job_id in self._pending:
            self._pending.remove(job_id)
            self._requests.pop(job_id, None)
            return self._finish(job_id, JobStatus.CANCELLED)
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return self.store.get(job_id)

    async def stop(self) -> None:
        for task in [*self._loops, *self._running.values()]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._running.values(), return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            async with self._wakeup:
                await self._wakeup.wait_for(lambda: bool(self._pending))
                job_id = self._pending.pop(0)
            self.metrics.queue_depth.set(len(self._pending))
            task = asyncio.create_task(self._run(job_id, self._requests.pop(job_id)))
            self._running[job_id] = task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():  # the loop itself is stopping
                    raise
            finally:
                self._running.pop(job_id, None)

    async def _run(self, job_id: str, request: GenerationRequest) -> None:
        job = self._update(job_id, status=JobStatus.IN_PROGRESS, started_at=time.time())
        metrics: dict[str, float] = {"queued": job.started_at - job.created_at}
        stages = ServeStages(job_id, self.text_encoder, self.denoiser, self.vae, self.decoder)
        try:
            generated = await generate(request, stages, lambda progress: self._progress(job_id, progress))
            stored: StoredVideo = generated.output
            metrics.update(generated.timings, vae_decode=stored.decode_seconds, mux=stored.mux_seconds)
            self._finish(job_id, JobStatus.COMPLETED, metrics=metrics)
        except asyncio.CancelledError:
            self._finish(job_id, JobStatus.CANCELLED, metrics=metrics)
            raise
        except Exception as error:  # noqa: BLE001 - every failure must end the job, with its reason
            logger.exception("job %s failed", job_id)
            self._finish(job_id, JobStatus.FAILED, _job_error(error), metrics=metrics)

    def _progress(self, job_id: str, progress: Progress) -> None:
        self._update(job_id, phase=progress.phase, progress=progress.percent, current_step=progress.step,
                     total_steps=progress.total_steps)

    async def _stored_request(self, job: Job) -> GenerationRequest:
        """The request of a job recorded by an earlier process, its image read back from the artifacts."""
        image = None
        if job.has_input_reference:
            png = await asyncio.to_thread(self.artifacts.get, job.id, INPUT_IMAGE)
            image = Image.open(io.BytesIO(png))
        return to_generation_request(job, image)

    def _update(self, job_id: str, **changes: Any) -> Job:
        job = self.store.update(job_id, **changes)
        self.events.publish(job)
        return job

    def _finish(self, job_id: str, status: JobStatus, error: JobError | None = None,
                metrics: dict[str, float] | None = None) -> Job:
        changes: dict[str, Any] = dict(status=status, error=error, completed_at=time.time())
        if status is JobStatus.COMPLETED:
            changes.update(progress=100, phase=Phase.DONE)
        if metrics is not None:
            changes["metrics"] = metrics
        job = self._update(job_id, **changes)
        self.metrics.finished.labels(status.value).inc()
        if status is JobStatus.COMPLETED and job.started_at is not None:
            self.metrics.duration.observe(job.completed_at - job.started_at)
        return job

    def _retry_after(self) -> int:
        durations = [j.completed_at - j.started_at for j in self.store.in_status(JobStatus.COMPLETED)[-10:]
                     if j.started_at is not None and j.completed_at is not None]
        average = sum(durations) / len(durations) if durations else 30.0
        return max(1, round(average * len(self._pending) / self.max_running_jobs))


def _job_error(error: BaseException) -> JobError:
    # a stage's exception arrives wrapped in Ray's RayTaskError, whose text is Ray's traceback
    cause = getattr(error, "cause", None)
    cause = cause if isinstance(cause, BaseException) else error
    if isinstance(error, GangWorkerDied) or isinstance(cause, GangWorkerDied):
        return JobError(code=ErrorCode.WORKER_DIED, message=str(cause)[:500])
    return JobError(code=ErrorCode.STAGE_FAILED, message=f"{type(cause).__name__}: {str(cause)[:500]}")
