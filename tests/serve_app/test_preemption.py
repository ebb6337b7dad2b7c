"""Priorities in the job runner, over stand-in stage handles that behave as the gang does on a stop (no Ray): a
batch job paused at a step boundary for an interactive job resumes from its step; the limits on pausing; which
class a key may ask for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from stand_in_stages import Stages, finished, submit

from serve_app.limits import PriorityPolicy, PriorityRefused
from serve_app.metrics import JobMetrics
from serve_app.preemption import Preemptor
from serve_app.priorities import KeyShare, Priority
from serve_app.runner import JobPolicy, JobRunner
from serve_app.schemas import ErrorCode, Job, JobStatus
from serve_app.store import SqliteJobStore
from skyreels.artifacts import STEPS, ArtifactStore
from skyreels.progress import Phase

QUICK = dict(max_running_jobs=1, job_heartbeat_s=0.05, job_lease_s=1.0, queue_poll_s=0.05, preempt_after_s=0.0)


def runner_on(tmp_path: Path, stages: Stages, **policy) -> JobRunner:
    return JobRunner(SqliteJobStore(tmp_path / "jobs.sqlite3"), stages.artifacts, *stages.handles(),
                     JobPolicy(**(QUICK | policy)), JobMetrics())


async def until(runner: JobRunner, job_id: str, holds: Callable[[Job], bool], timeout_s: float = 20) -> Job:
    async with runner.events.follow(job_id) as updates:
        job = runner.store.get(job_id)
        async with asyncio.timeout(timeout_s):
            while not holds(job):
                job = await updates.get()
    return job


def batch_then_interactive(tmp_path: Path, **policy) -> tuple[Stages, Job, Job, Job]:
    """A 6-step batch job makes 2 steps, then an interactive job is submitted; steps go on once the batch job is
    paused (or, when it may not be, at once). Returns the stages, the batch job when the interactive one was
    submitted, and both jobs at their end."""
    async def scenario():
        stages = Stages(ArtifactStore(str(tmp_path / "artifacts")))
        stages.step_permits = asyncio.Queue()
        runner = runner_on(tmp_path, stages, **policy)
        await runner.start()
        batch = await submit(runner, "backlog", steps=6, priority=Priority.BATCH, owner="key_b")
        for _ in range(2):
            stages.step_permits.put_nowait(None)
        await until(runner, batch.id, lambda job: job.current_step == 2)
        interactive = await submit(runner, "watched", priority=Priority.INTERACTIVE, owner="key_a")
        paused = await until(runner, batch.id, lambda job: job.status is JobStatus.QUEUED or policy.get(
            "max_preemptions") == 0)
        if paused.status is JobStatus.QUEUED:
            assert stages.artifacts.exists(batch.id, STEPS)  # the step it stopped at, checkpointed
        for _ in range(20):
            stages.step_permits.put_nowait(None)
        ends = [await finished(runner, job.id) for job in (batch, interactive)]
        await runner.stop()
        return stages, paused, *ends

    return asyncio.run(scenario())


def test_a_batch_job_pauses_for_an_interactive_one_and_resumes_from_its_step(tmp_path: Path) -> None:
    stages, paused, batch, interactive = batch_then_interactive(tmp_path, max_attempts=1)
    assert paused.status is JobStatus.QUEUED and paused.current_step == 2 and paused.preemptions == 1
    assert interactive.status is batch.status is JobStatus.COMPLETED
    assert interactive.completed_at < batch.completed_at
    # batch from the noise, interactive from the noise, batch again from its step 2: no step runs twice
    assert stages.started_at_step == [0, 0, 2] and stages.steps_run == 6 + 3
    # the preempted run is recorded and does not count against max_attempts (1 here)
    assert [a.error.code if a.error else None for a in batch.attempts] == [ErrorCode.PREEMPTED, None]
    assert batch.preemptions == 1 and interactive.preemptions == 0
    assert not stages.artifacts.exists(batch.id, STEPS)  # discarded with the job completed


def test_a_job_paused_its_most_times_runs_to_its_end(tmp_path: Path) -> None:
    stages, _, batch, interactive = batch_then_interactive(tmp_path, max_preemptions=0)
    assert batch.preemptions == 0 and len(batch.attempts) == 1
    assert batch.completed_at < interactive.completed_at
    assert stages.started_at_step == [0, 0]


def test_without_preemption_the_interactive_job_waits(tmp_path: Path) -> None:
    _, _, batch, interactive = batch_then_interactive(tmp_path, preempt_after_s=None, max_preemptions=0)
    assert batch.preemptions == 0 and batch.completed_at < interactive.completed_at


def test_a_key_asks_for_at_most_its_class() -> None:
    policy = PriorityPolicy(Priority.BATCH, Priority.INTERACTIVE,
                            {"key_b": KeyShare(max_priority=Priority.BATCH, weight=2.0)})
    assert policy.admit(None, Priority.INTERACTIVE) == (Priority.INTERACTIVE, 1.0)  # no keys: every class
    assert policy.admit("key_a", None) == (Priority.BATCH, 1.0)  # the server's default
    assert policy.admit("key_a", Priority.INTERACTIVE) == (Priority.INTERACTIVE, 1.0)
    assert policy.admit("key_b", Priority.BATCH) == (Priority.BATCH, 2.0)
    with pytest.raises(PriorityRefused, match="allowed: batch") as refused:
        policy.admit("key_b", Priority.INTERACTIVE)
    assert refused.value.status_code == 403
    # a default above the key's allowance falls to the allowance
    assert PriorityPolicy(Priority.INTERACTIVE, Priority.BATCH, {}).admit("key_c", None) == (Priority.BATCH, 1.0)


def test_batch_jobs_wait_at_the_gang_while_an_interactive_job_of_the_runner_waits(tmp_path: Path) -> None:
    async def scenario():
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        preemptor = Preemptor(store, preempt_after_s=0.0, max_preemptions=3)
        base = dict(model="skyreels-v1-t2v", prompt="p", negative_prompt="", size="64x64", num_frames=9,
                    num_inference_steps=4, guidance_scale=6.0, embedded_guidance_scale=1.0, seed=1, fps=24,
                    total_steps=4, status=JobStatus.IN_PROGRESS, created_at=1.0)
        watched = Job(id="watched", priority=Priority.INTERACTIVE, phase=Phase.ENCODING_TEXT, **base)
        held, on_gang = (Job(id=name, priority=Priority.BATCH, phase=Phase.DENOISING, **base)
                         for name in ("held", "on-gang"))
        for job in (watched, held, on_gang.model_copy(update={"current_step": 2})):
            preemptor.track(job)
        turn = asyncio.create_task(preemptor.gang_turn("held"))
        await asyncio.sleep(0.01)
        assert not turn.done()
        # the job on the gang is paused; the one held at its door keeps its slot (no interactive job is queued)
        assert preemptor.victims(now=10.0) == ["on-gang"]
        preemptor.track(watched.model_copy(update={"phase": Phase.DENOISING, "current_step": 1}))
        await asyncio.wait_for(turn, 1)
        assert preemptor.victims(now=10.0) == []  # the interactive job is on the gang: nothing waits
        store.close()

    asyncio.run(scenario())
