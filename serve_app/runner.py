"""JobRunner: the ingress's background worker that takes queued jobs through the generation recipe.

Submitting only records the job in the job store, where it waits; every ingress replica's runner claims queued
jobs from the store (the store's queue decides the order and never gives one job to two runners) and runs
skyreels' recipe over the stages behind Serve handles (`ServeStages`). Several jobs are in flight at once, so
the stages overlap: while the gang denoises one job, the text encoder serves the next and the decoder (the Vae
stage, or the gang itself, by configuration) decodes the previous one. The recipe owns the order, timings and
progress.

Across replicas: a claimed job is leased to its runner, which renews the lease every `job_heartbeat_s`. The
heartbeat also brings the cancels that clients asked of other replicas, and the runs this runner lost (the job
was taken over after its lease ran out: the run stops without writing). A runner that finds a job whose lease
ran out (its replica died) ends that run as an interrupted one, and the job runs again as after a restart.
Followers (SSE) of a job that another replica runs see its record as the store has it, polled every
`queue_poll_s`.

While the store is unavailable (a database restart), runs go on: their progress is not recorded, and the end of a
run waits for the store to record it. Once back, a runner takes over others' runs only after a lease of a reachable
store, so that their runners, which could not renew either, renew first.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image

from deployments.tracing import job_span
from serve_app.failures import job_error
from serve_app.metrics import JobMetrics
from serve_app.preemption import Preemptor
from serve_app.priorities import Priority
from serve_app.requests import to_generation_request
from serve_app.schemas import Attempt, ErrorCode, Job, JobError, JobStatus
from serve_app.serve_stages import ServeStages
from serve_app.store import JobChanged, JobStore, QueuePlace, StoreUnavailable
from skyreels.artifacts import INPUT_IMAGE, ArtifactStore, LatentCheckpoint, StoredVideo, VideoTarget
from skyreels.recipe import Phase, Progress, generate
from skyreels.request import GenerationRequest

logger = logging.getLogger(__name__)

T = TypeVar("T")

@dataclass(frozen=True)
class JobPolicy:
    """How the runner takes jobs through the stages (AppConfig's fields of the same names)."""

    max_queued_jobs: int = 64
    max_running_jobs: int = 4
    max_attempts: int = 3  # runs of one job cut off by infrastructure before it fails (graceful hand-backs aside)
    job_deadline_s: float = 7200.0  # from the job's first start; then it fails and frees its stages
    stage_timeout_s: float = 900.0  # one text, image or decode call, queueing behind other jobs included
    model_group_delay_s: float = 30.0  # the queue prefers jobs of the models the gangs hold, for this long at most
    default_priority: Priority = Priority.BATCH  # of a submit that names no class (within its key's allowance)
    preempt_after_s: float | None = 10.0  # an interactive job waiting this long pauses batch jobs; None: never
    max_preemptions: int = 3  # times one batch job may be paused
    job_lease_s: float = 20.0  # a running job's lease: another replica re-runs it once this passes unrenewed
    job_heartbeat_s: float = 1.0  # how often a runner renews its leases and hears of cancels (<= a third of the lease)
    queue_poll_s: float = 0.5  # how often an idle runner looks for jobs others queued, and SSE for others' updates


NOT_COUNTED = (ErrorCode.HANDED_BACK, ErrorCode.PREEMPTED)  # runs that do not count against max_attempts
QUEUE_METRICS_S = 2.0  # how often a runner reports the queue's depth and oldest wait
# a run's end waits for an unavailable store, trying again after these seconds (doubled each time, up to the last)
RECORD_RETRY_S = (0.1, 1.0)

INTERRUPTED = JobError(code=ErrorCode.INTERRUPTED, message="the server stopped while this job ran")
PREEMPTED = JobError(code=ErrorCode.PREEMPTED, message="paused at a step boundary for an interactive job; resumes "
                                                       "from that step")
# a stop reason: another runner took the job over; this run ends without writing anything
LOST = JobError(code=ErrorCode.INTERRUPTED, message="another ingress replica took this job over")


def new_runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class JobEvents:
    """Fan-out of job updates to the SSE streams that follow a job."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[asyncio.Queue[Job]]] = {}
        self._last: dict[str, Job] = {}  # of each followed job: what its followers got last

    def followed(self) -> set[str]:
        return set(self._listeners)

    def publish(self, job: Job) -> None:
        """Tells the job's followers, unless they have it already (a polled record that has not changed)."""
        if job.id not in self._listeners or self._last.get(job.id) == job:
            return
        self._last[job.id] = job
        for queue in self._listeners[job.id]:
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
                self._last.pop(job_id, None)


class JobRunner:
    """Runs jobs of the store's queue, at most `policy.max_running_jobs` at once; a run cut off by infrastructure
    goes back to the queue, up to `policy.max_attempts` runs. `runner_id` names this runner in the store's leases
    (one per ingress replica)."""

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
        runner_id: str | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.text_encoder = text_encoder
        self.denoiser = denoiser.options(stream=True)
        self.vae = vae
        self.decoder = denoiser if decode_on_gang else vae
        self.decode_on_gang = decode_on_gang
        self.policy = policy
        self.metrics = metrics
        self.on_end = on_end  # called with every job's final record (webhooks)
        self.runner_id = runner_id or new_runner_id()
        self.events = JobEvents()
        self._queued = asyncio.Event()  # set when this replica queued a job: claim now, not at the next poll
        self._slots = asyncio.Semaphore(policy.max_running_jobs)
        self._running: dict[str, asyncio.Task] = {}
        self._stop_reasons: dict[str, JobError] = {}  # why a running job's task is being cancelled, if not a cancel
        self._dispatcher: asyncio.Task | None = None
        self.preemptor = Preemptor(store, policy.preempt_after_s, policy.max_preemptions)
        self._pausing: set[str] = set()  # jobs whose gang was asked to stop (the stream ends without latents)
        self._loops: list[asyncio.Task] = []  # the lease keeper and the watcher of others' jobs
        self._store_lost_at: float | None = None  # when the store became unavailable, while it is (monotonic)
        self._store_back_at = float("-inf")  # when it was last back (monotonic): take-overs wait a lease after it
        self._closing = False  # stopping: run ends that the store cannot record now are left to their leases

    async def start(self) -> None:
        """Recovers from the last process: what was running runs again (on a store only this runner uses, every
        running job; on a shared one, those whose lease ran out), and starts taking jobs."""
        await self._take_over(every_running=not self.store.shared)
        self._dispatcher = asyncio.create_task(self._dispatch())
        self._loops = [asyncio.create_task(self._keep_leases()), asyncio.create_task(self._watch()),
                       asyncio.create_task(self._report_queue())]

    async def submit(self, job: Job, image_png: bytes | None) -> Job:
        """Queues `job` (validated at submit, its seed resolved); the image is kept for whichever replica runs it."""
        queued = self.store.count(JobStatus.QUEUED)
        if queued >= self.policy.max_queued_jobs:
            self.metrics.rejected()
            raise QueueFull(retry_after_s=self._retry_after(queued))
        if image_png is not None:
            await asyncio.to_thread(self.artifacts.put, job.id, INPUT_IMAGE, image_png)
        self.store.add(job)
        self.metrics.submitted(job)
        self._queued.set()
        return job

    def queue_place(self, job: Job) -> QueuePlace | None:
        """Position 1 for the next job to start, and the GPU-seconds up to it; None when the job is not waiting."""
        if job.status is not JobStatus.QUEUED:
            return None
        return self.store.queue_place(job.id, self.policy.model_group_delay_s)

    async def cancel(self, job_id: str) -> Job:
        """Stops a job: at once when queued, between two denoising steps when running (here, or on the replica
        that runs it: that one hears of it at its next heartbeat)."""
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return self.store.get(job_id)
        with contextlib.suppress(JobChanged):  # claimed (or ended) meanwhile
            return await self._end(job_id, JobStatus.CANCELLED, when_status=JobStatus.QUEUED)
        if self.store.request_cancel(job_id):
            return await self._ended(job_id, self.policy.job_lease_s)
        return self.store.get(job_id)

    async def shutdown(self, grace_s: float) -> None:
        """A graceful stop: no job starts any more; running jobs may finish within `grace_s`, the others go
        back to the queue (recorded, so that another replica or the next ingress process runs them first)."""
        if self._dispatcher is None:  # never started: nothing runs
            return
        self._dispatcher.cancel()
        running = list(self._running.items())
        if running:
            await asyncio.wait([task for _, task in running], timeout=grace_s)
        self._closing = True
        for job_id, task in running:
            if not task.done():
                self._stop(job_id, JobError(code=ErrorCode.HANDED_BACK,
                                            message="the server shut down gracefully before this job finished"))
        await asyncio.gather(self._dispatcher, *(task for _, task in running), return_exceptions=True)
        await self.stop()

    async def stop(self) -> None:
        """Stops at once, writing nothing more, as a killed process would: the leases of its running jobs run
        out, and those jobs run again (on another replica, or after a restart)."""
        self._closing = True
        for job_id in self._running:
            self._stop(job_id, LOST)
        tasks = [task for task in (self._dispatcher, *self._loops, *self._running.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _dispatch(self) -> None:
        """Starts the next queued job whenever fewer than max_running_jobs run."""
        while True:
            await self._slots.acquire()
            while (job := self._claim()) is None:
                with contextlib.suppress(asyncio.TimeoutError):  # others' jobs are seen by polling
                    await asyncio.wait_for(self._queued.wait(), self.policy.queue_poll_s)
            task = asyncio.create_task(self._run(job))
            self._running[job.id] = task
            task.add_done_callback(lambda _: self._slots.release())

    def _claim(self) -> Job | None:
        self._queued.clear()
        try:
            job = self.store.claim(self.runner_id, self.policy.job_lease_s, self.policy.model_group_delay_s)
        except StoreUnavailable as error:  # the next poll tries again
            self._store_lost(error)
            return None
        except Exception:  # noqa: BLE001 - the next poll tries again
            logger.exception("claiming a job failed")
            return None
        self._store_back()
        if job is not None:
            self.preemptor.track(job)
            self.events.publish(job)
        return job

    async def _keep_leases(self) -> None:
        """The heartbeat: renews this runner's leases, acts on cancels asked elsewhere and on lost runs, and takes
        over the runs of replicas that stopped."""
        while True:
            await asyncio.sleep(self.policy.job_heartbeat_s)
            try:
                leases = self.store.renew(self.runner_id, self.policy.job_lease_s, list(self._running))
                self._store_back()
                for job_id, task in list(self._running.items()):
                    if job_id in leases.lost:
                        logger.warning("job %s: another replica took it over; this run stops", job_id)
                        self._stop(job_id, LOST)
                    elif job_id in leases.cancel and not task.cancelling():
                        task.cancel()  # as a client's cancel here
                for job_id in self.preemptor.victims():
                    if job_id in self._stop_reasons or job_id in self._pausing:  # already being stopped
                        continue
                    logger.info("job %s: pausing it at the next step boundary for an interactive job", job_id)
                    if self.preemptor.on_the_gang(job_id):
                        # its gang stops after the step in flight and saves it; the run ends when its stream does
                        self._pausing.add(job_id)
                        await asyncio.to_thread(LatentCheckpoint(self.artifacts, job_id).request_stop)
                    else:  # not on a gang yet: nothing to save
                        self._stop(job_id, PREEMPTED)
                # the other runners' leases went stale while none could reach the store: they renew first
                if time.monotonic() - self._store_back_at >= self.policy.job_lease_s:
                    await self._take_over()
            except StoreUnavailable as error:  # the next heartbeat tries again
                self._store_lost(error)
            except Exception:  # noqa: BLE001 - a store hiccup: the next heartbeat tries again, within the lease
                logger.exception("heartbeat failed")

    async def _take_over(self, every_running: bool = False) -> None:
        """Ends the runs whose lease ran out (or, with `every_running`, every run: the store's only runner
        restarted): each runs again, or ends cancelled if a client asked for that meanwhile."""
        for taken in self.store.take_expired(self.runner_id, self.policy.job_lease_s, every_running):
            if taken.job.id in self._running:  # this runner's own, late with its heartbeat: renewed, runs on
                continue
            if taken.cancel_requested:
                await self._end(taken.job.id, JobStatus.CANCELLED, when_held_by=self.runner_id)
            else:
                await self._end_attempt(taken.job, INTERRUPTED)

    async def _watch(self) -> None:
        """Followers of jobs that run elsewhere (or wait) get their records as the store has them."""
        while True:
            await asyncio.sleep(self.policy.queue_poll_s)
            try:
                for job in self.store.get_many(self.events.followed() - self._running.keys()):
                    self.events.publish(job)
            except StoreUnavailable as error:
                self._store_lost(error)
            except Exception:  # noqa: BLE001 - a store hiccup: the next poll tries again
                logger.exception("polling followed jobs failed")

    async def _report_queue(self) -> None:
        """The queue's gauges, from the store (every replica reports the same)."""
        while True:
            try:
                await asyncio.to_thread(self.metrics.queue, self.store)
            except StoreUnavailable as error:
                self._store_lost(error)
            except Exception:  # noqa: BLE001 - a store hiccup: the next report tries again
                logger.exception("reporting the queue's metrics failed")
            await asyncio.sleep(QUEUE_METRICS_S)

    async def _ended(self, job_id: str, timeout_s: float) -> Job:
        """The job once it has ended, or as it is after `timeout_s`."""
        async with self.events.follow(job_id) as updates:
            job = self.store.get(job_id)
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(timeout_s):
                    while job is not None and not job.status.is_terminal:
                        job = await updates.get()
        return job

    def _stop(self, job_id: str, reason: JobError) -> None:
        """Cancels a running job's task for `reason` (a deadline, a hand-back, a lost lease) rather than a
        client's cancel."""
        task = self._running.get(job_id)
        if task is not None and not task.done():
            self._stop_reasons[job_id] = reason
            task.cancel()

    async def _run(self, job: Job) -> None:
        """One run of a claimed job (its attempt already started by the claim)."""
        job_id = job.id
        metrics: dict[str, float] = {"queued": job.attempts[-1].started_at - job.created_at}
        checkpoint = LatentCheckpoint(self.artifacts, job_id)  # _end discards it
        remaining_s = self.policy.job_deadline_s - (time.time() - job.started_at)
        deadline = asyncio.get_running_loop().call_later(max(remaining_s, 0.0), self._stop, job_id, JobError(
            code=ErrorCode.DEADLINE_EXCEEDED, message=f"the job ran longer than its {self.policy.job_deadline_s:.0f} s "
                                                      "deadline"))
        held = {"when_held_by": self.runner_id}
        try:
            await asyncio.to_thread(checkpoint.clear_stop)  # a stop asked of this job's earlier run
            request = await self._stored_request(job)
            stages = ServeStages(job_id, self.text_encoder, self.denoiser, self.vae, self.decoder,
                                 self.policy.stage_timeout_s, lambda: self.preemptor.gang_turn(job_id),
                                 VideoTarget(job_id, request.fps) if self.decode_on_gang else None)
            with job_span(job_id, model=job.model, attempt=len(job.attempts)):
                generated = await generate(request, stages, lambda progress: self._progress(job_id, progress),
                                           checkpoint)
            deadline.cancel()  # the video is made: waiting for the store to record it is no overrun
            if "checkpoint" in generated.timings:
                self.metrics.checkpointed(generated.timings["checkpoint"])
            stored: StoredVideo = generated.output
            metrics.update(generated.timings, vae_decode=stored.decode_seconds, mux=stored.mux_seconds)
            ended_at = time.time()
            await self._recorded(job_id, lambda: self._end(
                job_id, JobStatus.COMPLETED, metrics=metrics, resumed_from_checkpoint=generated.resumed,
                ended_at=ended_at, **held))
        except asyncio.CancelledError:
            reason = self._stop_reasons.pop(job_id, None)
            if reason is not LOST:  # its gang runs on, unwatched, until it reads this between two steps
                await asyncio.to_thread(checkpoint.request_stop)
            ended_at = time.time()
            if reason is None:
                await self._recorded(job_id, lambda: self._end(job_id, JobStatus.CANCELLED, metrics=metrics,
                                                               ended_at=ended_at, **held))
            elif reason.code is ErrorCode.HANDED_BACK:
                await self._recorded(job_id, lambda: self._end_attempt(self.store.get(job_id), reason))
            elif reason.code is ErrorCode.PREEMPTED:
                await self._recorded(job_id, lambda: self._requeue_preempted(self.store.get(job_id)))
            elif reason is not LOST:
                await self._recorded(job_id, lambda: self._end(job_id, JobStatus.FAILED, reason, metrics=metrics,
                                                               ended_at=ended_at, **held))
            raise
        except JobChanged:
            logger.warning("job %s: another replica took it over; this run stops", job_id)
        except Exception as error:  # noqa: BLE001 - every failure must end the run, with its reason
            if job_id in self._pausing:  # the gang stopped where it was asked to: no latents, the step saved
                await self._recorded(job_id, lambda: self._requeue_preempted(self.store.get(job_id)))
                return
            logger.warning("job %s: run %d failed: %s", job_id, len(job.attempts), error, exc_info=True)
            await self._recorded(job_id, lambda: self._end_attempt(self.store.get(job_id), job_error(error),
                                                                   metrics=metrics))
        finally:
            deadline.cancel()
            if self._running.get(job_id) is asyncio.current_task():  # a re-run may already have its own task
                del self._running[job_id]
                self.preemptor.forget(job_id)
                self._pausing.discard(job_id)

    async def _recorded(self, job_id: str, end: Callable[[], Awaitable[T]]) -> T | None:
        """`end()`, the record of how a run ended, tried again while the store is unavailable, until it is back
        (a run that ended meanwhile is recorded once, as it ended). None if this runner stops first: then the job's
        lease runs out and it runs again. Not bounded by the job's deadline: giving up could not write anything
        either, and would leave the job in progress under this runner's lease, which its heartbeat keeps renewing."""
        delay, most = RECORD_RETRY_S
        while True:
            try:
                result = await end()
            except StoreUnavailable as error:
                if self._closing:
                    logger.warning("job %s: the store cannot record how its run ended (%s) and this runner stops; "
                                   "it runs again once its lease runs out", job_id, error)
                    return None
                self._store_lost(error)
                await asyncio.sleep(delay)
                delay = min(2 * delay, most)
                continue
            self._store_back()
            return result

    def _store_lost(self, error: StoreUnavailable) -> None:
        """Logged once per outage (every poll, heartbeat and step meets it)."""
        if self._store_lost_at is None:
            self._store_lost_at = time.monotonic()
            logger.warning("the job store is unavailable (%s): runs go on without recording their progress, and "
                           "their ends wait for it", error)

    def _store_back(self) -> None:
        if self._store_lost_at is not None:
            self._store_back_at = time.monotonic()
            logger.info("the job store is back after %.1f s", self._store_back_at - self._store_lost_at)
            self._store_lost_at = None

    async def _end_attempt(self, job: Job, cause: JobError, metrics: dict[str, float] | None = None) -> None:
        """Records why the job's last run (held by this runner) ended; queues it again when infrastructure cut it
        off and attempts remain (re-runs go first), else ends it."""
        now = time.time()
        last = job.attempts[-1] if job.attempts else Attempt(number=1, started_at=job.started_at or now)
        attempts = [*job.attempts[:-1], last.model_copy(update={"ended_at": now, "error": cause})]
        counted = sum(a.error is None or a.error.code not in NOT_COUNTED for a in attempts)
        if cause.code.is_infrastructure and counted < self.policy.max_attempts:
            logger.warning("job %s: %s; running it again (%d of %d runs used)", job.id, cause.message, counted,
                           self.policy.max_attempts)
            self._update(job.id, status=JobStatus.QUEUED, phase=Phase.QUEUED, progress=0, current_step=0,
                         attempts=attempts, when_held_by=self.runner_id)
            self.metrics.rerun(cause.code)  # once written: a write the store refused is tried again
            self._queued.set()
            return
        if cause.code.is_infrastructure:
            cause = cause.model_copy(update={"message": f"{cause.message} (run {counted} of {self.policy.max_attempts}"
                                                        "; each run's cause is in `attempts`)"})
        self._update(job.id, attempts=attempts, when_held_by=self.runner_id)
        await self._end(job.id, JobStatus.FAILED, cause, metrics=metrics, when_held_by=self.runner_id)

    async def _requeue_preempted(self, job: Job) -> None:
        """The paused job back in the queue (its gang checkpointed the step it stopped at); a pause after its first
        step counts in `preemptions`."""
        last = job.attempts[-1]
        attempts = [*job.attempts[:-1], last.model_copy(update={"ended_at": time.time(), "error": PREEMPTED})]
        paused = job.phase is Phase.DENOISING and job.current_step > 0
        logger.info("job %s: paused after step %d; back in the queue", job.id, job.current_step)
        self._update(job.id, status=JobStatus.QUEUED, phase=Phase.QUEUED, attempts=attempts,
                     preemptions=job.preemptions + paused, when_held_by=self.runner_id)
        self._queued.set()

    def _progress(self, job_id: str, progress: Progress) -> None:
        try:
            self._update(job_id, phase=progress.phase, progress=progress.percent, current_step=progress.step,
                         total_steps=progress.total_steps, when_held_by=self.runner_id)
        except StoreUnavailable as error:  # the run goes on; its next update, or its end, is recorded
            self._store_lost(error)
        else:
            self._store_back()

    async def _stored_request(self, job: Job) -> GenerationRequest:
        """The job's request as recorded at submit, its image read back from the artifacts."""
        image = None
        if job.has_input_reference:
            png = await asyncio.to_thread(self.artifacts.get, job.id, INPUT_IMAGE)
            image = Image.open(io.BytesIO(png))
        return to_generation_request(job, image)

    def _update(self, job_id: str, **changes: Any) -> Job:
        job = self.store.update(job_id, **changes)
        self.preemptor.track(job)
        self.events.publish(job)
        return job

    async def _end(self, job_id: str, status: JobStatus, error: JobError | None = None,
                   metrics: dict[str, float] | None = None, when_status: JobStatus | None = None,
                   when_held_by: str | None = None, ended_at: float | None = None, **changes: Any) -> Job:
        """The job's final record (its open run closed; written only if the guards hold, see JobStore.update),
        then its latent checkpoint goes, then followers and `on_end` hear of it. `ended_at`: when it ended, if
        before now (the store was unavailable then)."""
        now = time.time() if ended_at is None else ended_at
        job = self.store.get(job_id)
        if job.attempts and job.attempts[-1].ended_at is None:
            changes["attempts"] = [*job.attempts[:-1], job.attempts[-1].model_copy(update={"ended_at": now})]
        changes.update(status=status, error=error, completed_at=now)
        if status is JobStatus.COMPLETED:
            changes.update(progress=100, phase=Phase.DONE)
        if metrics is not None:
            changes["metrics"] = metrics
        job = self.store.update(job_id, when_status=when_status, when_held_by=when_held_by, **changes)
        await asyncio.to_thread(LatentCheckpoint(self.artifacts, job_id).discard)
        self.events.publish(job)
        self.metrics.finished(job)
        if self.on_end is not None:
            self.on_end(job)
        return job

    def _retry_after(self, queued: int) -> int:
        durations = [j.completed_at - j.started_at for j in self.store.last_completed(10)
                     if j.started_at is not None and j.completed_at is not None]
        average = sum(durations) / len(durations) if durations else 30.0
        return max(1, round(average * queued / self.policy.max_running_jobs))
