"""JobRunner: the ingress's background worker that drives each job through the three stages.

Submitting only records the job and queues it; the runner's loops take jobs in order and call
TextEncoder -> (Vae.encode_image) -> Denoiser (streaming steps) -> Vae.decode_to_storage through
Serve handles. Several jobs are in flight at once, so the stages overlap: while the gang denoises
one job, the text encoder serves the next and the VAE decodes the previous one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from deployments.errors import GangUnavailable, GangWorkerDied
from serve_app.artifacts import INPUT_IMAGE, ArtifactStore
from serve_app.metrics import JobMetrics
from serve_app.requests import to_generation_request
from serve_app.schemas import MODEL_I2V, ErrorCode, Job, JobError, JobPhase, JobStatus
from serve_app.store import JobStore
from skyreels.progress import StepProgress
from skyreels.request import GenerationRequest, Task
from skyreels.stages.denoise import DenoiseParams
from skyreels.timing import timed

logger = logging.getLogger(__name__)

# Share of the progress bar each phase ends at; denoising fills the span in between.
DENOISE_START, DENOISE_END = 5, 90
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
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.text_encoder = text_encoder
        self.denoiser = denoiser.options(stream=True)
        self.vae = vae
        self.max_queued_jobs = max_queued_jobs
        self.max_running_jobs = max_running_jobs
        self.metrics = metrics
        self.events = JobEvents()
        self._pending: list[str] = []
        self._wakeup = asyncio.Condition()
        self._running: dict[str, asyncio.Task] = {}
        self._loops: list[asyncio.Task] = []

    async def start(self) -> None:
        """Recover from the last process: fail what was running, re-queue what was waiting."""
        for job in self.store.in_status(JobStatus.IN_PROGRESS):
            self._finish(job.id, JobStatus.FAILED, JobError(
                code=ErrorCode.INTERRUPTED, message="the server stopped while this job ran; submit it again"))
        self._pending = [job.id for job in self.store.in_status(JobStatus.QUEUED)]
        self._loops = [asyncio.create_task(self._loop()) for _ in range(self.max_running_jobs)]
        self.metrics.queue_depth.set(len(self._pending))

    async def submit(self, job: Job, image_png: bytes | None) -> Job:
        if len(self._pending) >= self.max_queued_jobs:
            self.metrics.rejected.inc()
            raise QueueFull(retry_after_s=self._retry_after())
        if image_png is not None:
            await asyncio.to_thread(self.artifacts.put, job.id, INPUT_IMAGE, image_png)
        self.store.add(job)
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
            task = asyncio.create_task(self._run(job_id))
            self._running[job_id] = task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():  # the loop itself is stopping
                    raise
            finally:
                self._running.pop(job_id, None)

    async def _run(self, job_id: str) -> None:
        job = self._update(job_id, status=JobStatus.IN_PROGRESS, started_at=time.time())
        metrics: dict[str, float] = {"queued": job.started_at - job.created_at}
        try:
            request = await self._generation_request(job)
            params = DenoiseParams.from_request(request)
            task = Task.I2V if job.model == MODEL_I2V else Task.T2V

            self._update(job_id, phase=JobPhase.ENCODING_TEXT, progress=1)
            with timed(metrics, "text_encode"):
                negative = request.negative_prompt if request.uses_true_cfg else None
                conditioning = await self.text_encoder.encode.remote(request.prompt, negative)

            image = None
            if task is Task.I2V:
                self._update(job_id, phase=JobPhase.ENCODING_IMAGE, progress=3)
                png = await asyncio.to_thread(self.artifacts.get, job_id, INPUT_IMAGE)
                with timed(metrics, "image_encode"):
                    image = await self.vae.encode_image.remote(png, request.height, request.width, params.seed)

            self._update(job_id, phase=JobPhase.DENOISING, progress=DENOISE_START, total_steps=params.num_inference_steps)
            with timed(metrics, "denoise"):
                result = await self._denoise(job_id, task, conditioning, params, image)

            self._update(job_id, phase=JobPhase.DECODING, progress=DENOISE_END)
            with timed(metrics, "decode"):
                stored = await self.vae.decode_to_storage.remote(job_id, result.latents, request.fps)
            metrics.update(vae_decode=stored.decode_seconds, mux=stored.mux_seconds)
            self._finish(job_id, JobStatus.COMPLETED, metrics=metrics)
        except asyncio.CancelledError:
            self._finish(job_id, JobStatus.CANCELLED, metrics=metrics)
            raise
        except Exception as error:  # noqa: BLE001 - every failure must end the job, with its reason
            logger.exception("job %s failed", job_id)
            self._finish(job_id, JobStatus.FAILED, _job_error(error), metrics=metrics)

    async def _denoise(self, job_id: str, task: Task, conditioning: Any, params: Any, image: Any) -> Any:
        """Streams the gang's steps into the job; waits out a gang that is being replaced."""
        for attempt in range(GANG_RETRIES + 1):
            try:
                result = None
                async for event in self.denoiser.denoise.remote(task, conditioning, params, image):
                    if isinstance(event, StepProgress):
                        span = DENOISE_END - DENOISE_START
                        self._update(job_id, current_step=event.step,
                                     progress=DENOISE_START + span * event.step // event.total)
                    else:
                        result = event
                return result
            except GangUnavailable:
                if attempt == GANG_RETRIES:
                    raise
                logger.warning("job %s: the DiT gang is being replaced; retrying in %.0f s", job_id, GANG_RETRY_S)
                await asyncio.sleep(GANG_RETRY_S)

    async def _generation_request(self, job: Job) -> GenerationRequest:
        image_png = None
        if job.model == MODEL_I2V:
            image_png = await asyncio.to_thread(self.artifacts.get, job.id, INPUT_IMAGE)
        return to_generation_request(job, image_png)

    def _update(self, job_id: str, **changes: Any) -> Job:
        job = self.store.update(job_id, **changes)
        self.events.publish(job)
        return job

    def _finish(self, job_id: str, status: JobStatus, error: JobError | None = None,
                metrics: dict[str, float] | None = None) -> Job:
        changes: dict[str, Any] = dict(status=status, error=error, completed_at=time.time())
        if status is JobStatus.COMPLETED:
            changes.update(progress=100, phase=JobPhase.DONE)
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
