"""Preemption at step boundaries: which of a runner's batch jobs to pause so that an interactive job gets a gang.

A runner pauses its batch jobs that hold or wait for a gang (not those decoding) once an interactive job has waited
longer than `preempt_after_s`: queued in the store (every replica's runner sees it), or claimed by this runner but
not yet denoising. A paused job's gang stops after the step in flight and checkpoints the latents and the step
(deployments.denoiser); the job goes back to the queue and resumes from that step. While an interactive job of this
runner has not made its first step, this runner's batch jobs wait before entering the gang (`gang_turn`), so that
those it claims again do not line up at the gang ahead of it. A job is paused at most `max_preemptions` times after
its first step (no starvation); before its first step, sending it back costs nothing and is always allowed.
"""

from __future__ import annotations

import asyncio
import time

from serve_app.priorities import Priority
from serve_app.schemas import Job, JobStatus
from serve_app.store import JobStore
from skyreels.progress import Phase

BEFORE_THE_GANG = (Phase.QUEUED, Phase.ENCODING_TEXT, Phase.ENCODING_IMAGE)


def waits_for_the_gang(job: Job) -> bool:
    """Claimed, and no denoising step made in this run yet."""
    return job.phase in BEFORE_THE_GANG or (job.phase is Phase.DENOISING and job.current_step == 0)


class Preemptor:
    """Follows the jobs one runner runs (as it last wrote them) and picks those to pause."""

    def __init__(self, store: JobStore, preempt_after_s: float | None, max_preemptions: int) -> None:
        self.store, self.preempt_after_s, self.max_preemptions = store, preempt_after_s, max_preemptions
        self._jobs: dict[str, Job] = {}
        self._held: set[str] = set()  # batch jobs waiting in gang_turn
        self._gang_free = asyncio.Event()  # no interactive job of this runner waits for the gang
        self._gang_free.set()

    def track(self, job: Job) -> None:
        """The runner wrote this record of one of its jobs."""
        if job.status is JobStatus.IN_PROGRESS:
            self._jobs[job.id] = job
        else:
            self._jobs.pop(job.id, None)
        self._update_gate()

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._update_gate()

    async def gang_turn(self, job_id: str) -> None:
        """Returns when the job may enter the gang: at once for an interactive one; a batch one waits while an
        interactive job of this runner waits for the gang."""
        job = self._jobs.get(job_id)
        if job is None or job.priority is not Priority.BATCH:
            return
        self._held.add(job_id)
        try:
            while not self._gang_free.is_set():
                await self._gang_free.wait()
        finally:
            self._held.discard(job_id)

    def victims(self, now: float | None = None) -> list[str]:
        """The batch jobs to pause now (none unless an interactive job has waited longer than preempt_after_s).
        A job held in gang_turn is paused only to free its slot for an interactive job queued in the store."""
        if self.preempt_after_s is None:
            return []
        since = (time.time() if now is None else now) - self.preempt_after_s
        queued = self.store.waiting_since(Priority.INTERACTIVE.rank)
        slots_needed = queued is not None and queued <= since
        if not slots_needed and not any(self._waits(job) and job.created_at <= since for job in self._jobs.values()):
            return []
        return [job.id for job in self._jobs.values()
                if job.priority is Priority.BATCH and job.phase is not Phase.DECODING
                and job.current_step < job.total_steps  # past the last step: its latents are on their way to decode
                and (job.current_step == 0 or job.preemptions < self.max_preemptions)
                and (slots_needed or job.id not in self._held)]

    def on_the_gang(self, job_id: str) -> bool:
        """The job has made a step in this run: its gang has work to save."""
        job = self._jobs.get(job_id)
        return job is not None and job.phase is Phase.DENOISING and job.current_step > 0

    def _waits(self, job: Job) -> bool:
        return job.priority is Priority.INTERACTIVE and waits_for_the_gang(job)

    def _update_gate(self) -> None:
        if any(self._waits(job) for job in self._jobs.values()):
            self._gang_free.clear()
        else:
            self._gang_free.set()
