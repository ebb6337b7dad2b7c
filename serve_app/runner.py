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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image

from serve_app.failures import job_error
from serve_app.metrics import JobMetrics
from serve_app.requests import to_generation_request
from serve_app.schemas import Attempt, ErrorCode, Job, JobError, JobStatus
from serve_app.serve_stages import ServeStages
from serve_app.store import JobStore
from skyreels.artifacts import INPUT_IMAGE, ArtifactStore, LatentCheckpoint, StoredVideo
from skyreels.recipe import Phase, Progress, generate
from skyreels.request import GenerationRequest

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class JobPolicy:
    """How the runner takes jobs through the stages (AppConfig's fields of the same names)."""

    max_queued_jobs: int = 64
    max_running_jobs: int = 4
    max_attempts: int = 3  # runs of one job cut off by infrastructure before it fails (graceful hand-backs aside)
    job_deadline_s: float = 7200.0  # from the job's first start; then it fails and frees its stages
    stage_timeout_s: float = 900.0  # one text, image or decode call, queueing behind other jobs included


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
    """The queue and the job records; each run goes through the recipe, and a run cut off by infrastructure
    goes back to the front of the queue, up to `policy.max_attempts` runs."""

    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        text_encoder: Any,
        denoiser: Any,
        vae: Any,
        policy: JobPolicy,
        metrics: JobMetrics,
        decode_on_gang: bool = False,
        on_end: Callable[[Job], None] | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.text_encoder = text_encoder
        self.denoiser = denoiser.options(stream=True)
        self.vae = vae
        self.decoder = denoiser if decode_on_gang else vae
        self.policy = policy
        self.metrics = metrics
        self.on_end = on_end  # called with every job's final record (webhooks)
        self.events = JobEvents()
        self._pending: list[str] = []
        self._requests: dict[str, GenerationRequest] = {}  # the validated request of every job not finished
        self._queued = asyncio.Event()  # set while _pending has jobs
        self._slots = asyncio.Semaphore(policy.max_running_jobs)
        self._running: dict[str, asyncio.Task] = {}
        self._stop_reasons: dict[str, JobError] = {}  # why a running job's task is being cancelled, if not a cancel
        self._dispatcher: asyncio.Task | None = None

    async def start(self) -> None:
        """Recover from the last process: what was running runs again, what was waiting still waits."""
        for job in reversed(self.store.in_status(JobStatus.IN_PROGRESS)):  # each goes to the front: keep their order
            self._requests[job.id] = await self._stored_request(job)
            await self._end_attempt(job, JobError(code=ErrorCode.INTERRUPTED,
                                                  message="the server stopped while this job ran"))
        for job in self.store.in_status(JobStatus.QUEUED):
            if job.id not in self._requests:
                self._requests[job.id] = await self._stored_request(job)
                self._pending.append(job.id)
        self._dispatcher = asyncio.create_task(self._dispatch())
        self._queue_changed()

    async def submit(self, job: Job, request: GenerationRequest, image_png: bytes | None) -> Job:
        """Queues `job`, validated as `request` (its seed resolved); the image is kept for a restart."""
        if len(self._pending) >= self.policy.max_queued_jobs:
            self.metrics.rejected.inc()
            raise QueueFull(retry_after_s=self._retry_after())
        if image_png is not None:
            await asyncio.to_thread(self.artifacts.put, job.id, INPUT_IMAGE, image_png)
        self.store.add(job)
        self._requests[job.id] = request
        self.metrics.submitted.labels(job.model).inc()
        self._enqueue(job.id)
        return job

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start; None when the job is not waiting."""
        return self._pending.index(job_id) + 1 if job_id in self._pending else None

    async def cancel(self, job_id: str) -> Job:
        """Stops a job: at once when queued, between two denoising steps when running."""
        if job_id in self._pending:
            self._pending.remove(job_id)
            self._queue_changed()
            return await self._end(job_id, JobStatus.CANCELLED)
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return self.store.get(job_id)

    async def shutdown(self, grace_s: float) -> None:
        """A graceful stop: no job starts any more; running jobs may finish within `grace_s`, the others go
        back to the queue (recorded, so that the next ingress process runs them first)."""
        if self._dispatcher is None:  # never started: nothing runs
            return
        self._dispatcher.cancel()
        running = list(self._running.items())
        if running:
            await asyncio.wait([task for _, task in running], timeout=grace_s)
        for job_id, task in running:
            if not task.done():
                self._stop(job_id, JobError(code=ErrorCode.HANDED_BACK,
                                            message="the server shut down gracefully before this job finished"))
        await asyncio.gather(self._dispatcher, *(task for _, task in running), return_exceptions=True)

    async def stop(self) -> None:
        tasks = [task for task in (self._dispatcher, *self._running.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _enqueue(self, job_id: str, first: bool = False) -> None:
        self._pending.insert(0, job_id) if first else self._pending.append(job_id)
        self._queue_changed()

    def _queue_changed(self) -> None:
        self._queued.set() if self._pending else self._queued.clear()
        self.metrics.queue_depth.set(len(self._pending))

    async def _dispatch(self) -> None:
        """Starts the next queued job whenever fewer than max_running_jobs run."""
        while True:
            await self._slots.acquire()
            await self._queued.wait()
            job_id = self._pending.pop(0)
            self._queue_changed()
            task = asyncio.create_task(self._run(job_id, self._requests[job_id]))
            self._running[job_id] = task
            task.add_done_callback(lambda _: self._slots.release())

    def _stop(self, job_id: str, reason: JobError) -> None:
        """Cancels a running job's task for `reason` (a deadline, a hand-back) rather than a client's cancel."""
        task = self._running.get(job_id)
        if task is not None and not task.done():
            self._stop_reasons[job_id] = reason
            task.cancel()

    async def _run(self, job_id: str, request: GenerationRequest) -> None:
        job = self._start_attempt(self.store.get(job_id))
        metrics: dict[str, float] = {"queued": job.attempts[-1].started_at - job.created_at}
        stages = ServeStages(job_id, self.text_encoder, self.denoiser, self.vae, self.decoder,
                             self.policy.stage_timeout_s)
        checkpoint = LatentCheckpoint(self.artifacts, job_id)  # _end discards it
        remaining_s = self.policy.job_deadline_s - (time.time() - job.started_at)
        deadline = asyncio.get_running_loop().call_later(max(remaining_s, 0.0), self._stop, job_id, JobError(
            code=ErrorCode.DEADLINE_EXCEEDED, message=f"the job ran longer than its {self.policy.job_deadline_s:.0f} s "
                                                      "deadline"))
        try:
            generated = await generate(request, stages, lambda progress: self._progress(job_id, progress), checkpoint)
            stored: StoredVideo = generated.output
            metrics.update(generated.timings, vae_decode=stored.decode_seconds, mux=stored.mux_seconds)
            await self._end(job_id, JobStatus.COMPLETED, metrics=metrics, resumed_from_checkpoint=generated.resumed)
        except asyncio.CancelledError:
            reason = self._stop_reasons.pop(job_id, None)
            if reason is None:
                await self._end(job_id, JobStatus.CANCELLED, metrics=metrics)
            elif reason.code is ErrorCode.HANDED_BACK:
                await self._end_attempt(self.store.get(job_id), reason, queue=False)  # the next process runs it
            else:
                await self._end(job_id, JobStatus.FAILED, reason, metrics=metrics)
            raise
        except Exception as error:  # noqa: BLE001 - every failure must end the run, with its reason
            logger.warning("job %s: run %d failed: %s", job_id, len(job.attempts), error, exc_info=True)
            await self._end_attempt(self.store.get(job_id), job_error(error), metrics=metrics)
        finally:
            deadline.cancel()
            if self._running.get(job_id) is asyncio.current_task():  # a re-run may already have its own task
                del self._running[job_id]

    def _start_attempt(self, job: Job) -> Job:
        now = time.time()
        attempt = Attempt(number=len(job.attempts) + 1, started_at=now)
        return self._update(job.id, status=JobStatus.IN_PROGRESS, started_at=job.started_at or now,
                            attempts=[*job.attempts, attempt])

    async def _end_attempt(self, job: Job, cause: JobError, metrics: dict[str, float] | None = None,
                           queue: bool = True) -> None:
        """Records why the job's last run ended; runs it again when infrastructure cut it off and attempts
        remain (queued again, at the front unless `queue` is off), else ends it."""
        now = time.time()
        last = job.attempts[-1] if job.attempts else Attempt(number=1, started_at=job.started_at or now)
        attempts = [*job.attempts[:-1], last.model_copy(update={"ended_at": now, "error": cause})]
        counted = sum(a.error is None or a.error.code is not ErrorCode.HANDED_BACK for a in attempts)
        if cause.code.is_infrastructure and counted < self.policy.max_attempts:
            logger.warning("job %s: %s; running it again (%d of %d runs used)", job.id, cause.message, counted,
                           self.policy.max_attempts)
            self.metrics.reruns.labels(cause.code.value).inc()
            self._update(job.id, status=JobStatus.QUEUED, phase=Phase.QUEUED, progress=0, current_step=0,
                         attempts=attempts)
            if queue:
                self._enqueue(job.id, first=True)  # accepted long ago: it goes before newer jobs
            return
        if cause.code.is_infrastructure:
            cause = cause.model_copy(update={"message": f"{cause.message} (run {counted} of {self.policy.max_attempts}"
                                                        "; each run's cause is in `attempts`)"})
        self._update(job.id, attempts=attempts)
        await self._end(job.id, JobStatus.FAILED, cause, metrics=metrics)

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

    async def _end(self, job_id: str, status: JobStatus, error: JobError | None = None,
                   metrics: dict[str, float] | None = None, **changes: Any) -> Job:
        """The job's final record (its open run closed); its latent checkpoint goes."""
        await asyncio.to_thread(LatentCheckpoint(self.artifacts, job_id).discard)
        now = time.time()
        job = self.store.get(job_id)
        if job.attempts and job.attempts[-1].ended_at is None:
            changes["attempts"] = [*job.attempts[:-1], job.attempts[-1].model_copy(update={"ended_at": now})]
        changes.update(status=status, error=error, completed_at=now)
        if status is JobStatus.COMPLETED:
            changes.update(progress=100, phase=Phase.DONE)
        if metrics is not None:
            changes["metrics"] = metrics
        job = self._update(job_id, **changes)
        self._requests.pop(job_id, None)
        self.metrics.finished.labels(status.value).inc()
        if status is JobStatus.COMPLETED and job.started_at is not None:
            self.metrics.duration.observe(job.completed_at - job.started_at)
        if self.on_end is not None:
            self.on_end(job)
        return job

    def _retry_after(self) -> int:
        durations = [j.completed_at - j.started_at for j in self.store.in_status(JobStatus.COMPLETED)[-10:]
                     if j.started_at is not None and j.completed_at is not None]
        average = sum(durations) / len(durations) if durations else 30.0
        return max(1, round(average * len(self._pending) / self.policy.max_running_jobs))
