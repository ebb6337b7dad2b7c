"""The job runner under faults, over stand-in stage handles (no Ray): re-runs, the latent checkpoint,
deadlines, stage timeouts, restart recovery and graceful hand-back, on a real SQLite store and artifacts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ray.exceptions import ActorDiedError
from stand_in_stages import Stages, finished, inside, submit

from deployments.errors import GangUnavailable, GangWorkerDied
from serve_app.metrics import JobMetrics
from serve_app.runner import JobPolicy, JobRunner
from serve_app.schemas import ErrorCode, Job, JobStatus
from serve_app.store import SqliteJobStore
from skyreels.artifacts import LATENTS, VIDEO, ArtifactStore

FAST = dict(max_queued_jobs=8, max_running_jobs=2, max_attempts=3, job_deadline_s=30.0, stage_timeout_s=10.0)


@pytest.fixture
def place(tmp_path: Path) -> tuple[Path, ArtifactStore]:
    return tmp_path / "jobs.sqlite3", ArtifactStore(str(tmp_path / "artifacts"))


def runner_on(place, stages: Stages, decode_on_gang: bool = False, **policy) -> JobRunner:
    database, artifacts = place
    return JobRunner(SqliteJobStore(database), artifacts, *stages.handles(), JobPolicy(**(FAST | policy)), JobMetrics(),
                     decode_on_gang=decode_on_gang)


def run_one_job(place, faults: dict[str, list] | None = None, hang: tuple[str, ...] = (),
                decode_on_gang: bool = False, **policy) -> tuple[Stages, Job]:
    """One job through a fresh runner whose stages fail (`faults`) or never answer (`hang`) as told."""
    async def scenario():
        stages = Stages(place[1])
        stages.faults.update(faults or {})
        stages.hang.update({stage: asyncio.Event() for stage in hang})
        runner = runner_on(place, stages, decode_on_gang, **policy)
        await runner.start()
        job = await finished(runner, (await submit(runner)).id)
        await runner.stop()
        return stages, job

    return asyncio.run(scenario())


def test_a_decode_lost_after_denoising_resumes_from_the_checkpoint(place) -> None:
    stages, job = run_one_job(place, faults={"decode": [ActorDiedError()]})
    assert job.status is JobStatus.COMPLETED and job.resumed_from_checkpoint
    assert stages.calls == {"encode": 1, "denoise": 1, "decode": 2}  # no second denoise
    assert [a.error.code if a.error else None for a in job.attempts] == [ErrorCode.STAGE_LOST, None]
    assert not place[1].exists(job.id, LATENTS)  # the checkpoint is deleted with the job completed
    assert place[1].exists(job.id, VIDEO)


def test_on_the_gang_the_decode_is_made_in_the_denoise_call(place) -> None:
    stages, job = run_one_job(place, decode_on_gang=True)
    assert job.status is JobStatus.COMPLETED and place[1].exists(job.id, VIDEO)
    assert stages.calls == {"encode": 1, "denoise": 1, "decode": 1} and stages.decoded[job.id] == 1
    assert job.metrics["decode"] == pytest.approx(0.02)  # the gang's Decoded: no decode call of its own


@pytest.mark.parametrize(("fault", "code"), [(ActorDiedError(), ErrorCode.STAGE_LOST),
                                             (GangUnavailable("poisoned after the steps"), ErrorCode.WORKER_DIED)])
def test_a_decode_lost_on_the_gang_runs_again_from_the_checkpoint(place, fault, code) -> None:
    """Not retried as a gang that was broken before the call began: that would denoise again."""
    stages, job = run_one_job(place, faults={"decode": [fault]}, decode_on_gang=True)
    assert job.status is JobStatus.COMPLETED and job.resumed_from_checkpoint
    assert stages.calls == {"encode": 1, "denoise": 1, "decode": 2}
    assert [a.error.code if a.error else None for a in job.attempts] == [code, None]


def test_a_lost_gang_worker_runs_the_job_again_from_the_start(place) -> None:
    stages, job = run_one_job(place, faults={"denoise": [GangWorkerDied("rank 1 died")]})
    assert job.status is JobStatus.COMPLETED and not job.resumed_from_checkpoint
    assert stages.calls["denoise"] == 2 and len(job.attempts) == 2
    assert job.attempts[0].error.code is ErrorCode.WORKER_DIED and "rank 1 died" in job.attempts[0].error.message


def test_an_error_that_would_repeat_fails_at_once(place) -> None:
    stages, job = run_one_job(place, faults={"denoise": [ValueError("a T2V model takes no image")]})
    assert job.status is JobStatus.FAILED and job.error.code is ErrorCode.STAGE_FAILED
    assert len(job.attempts) == 1 and stages.calls["denoise"] == 1


def test_attempts_run_out_and_the_job_fails_with_every_cause(place) -> None:
    _, job = run_one_job(place, faults={"encode": [ActorDiedError(), ActorDiedError(), ActorDiedError()]})
    assert job.status is JobStatus.FAILED and job.error.code is ErrorCode.STAGE_LOST
    assert "run 3 of 3" in job.error.message
    assert [a.error.code for a in job.attempts] == [ErrorCode.STAGE_LOST] * 3


def test_a_stage_that_stops_answering_times_out_and_the_job_runs_again(place) -> None:
    async def scenario():
        stages = Stages(place[1])
        never = asyncio.Event()
        stages.hang["encode"] = never
        runner = runner_on(place, stages, stage_timeout_s=0.2)
        await runner.start()
        job = await submit(runner)
        async with runner.events.follow(job.id) as updates:
            while not runner.store.get(job.id).attempts or len(runner.store.get(job.id).attempts) < 2:
                await updates.get()
        del stages.hang["encode"]  # the replica answers again
        never.set()
        job = await finished(runner, job.id)
        await runner.stop()
        return job

    job = asyncio.run(scenario())
    assert job.status is JobStatus.COMPLETED
    assert job.attempts[0].error.code is ErrorCode.STAGE_TIMEOUT and "text encoding" in job.attempts[0].error.message


def test_the_deadline_ends_a_job_and_frees_the_gang(place) -> None:
    # the deadline leaves the instant stages ahead of the hanging denoise time to run on a busy machine
    stages, job = run_one_job(place, hang=("denoise",), job_deadline_s=2.0)
    assert job.status is JobStatus.FAILED and job.error.code is ErrorCode.DEADLINE_EXCEEDED
    assert stages.calls["denoise"] == 1 and stages.denoise_closed == 1  # the stream was closed: the gang stops


def test_a_restart_runs_the_interrupted_job_again_and_keeps_the_queue(place) -> None:
    async def scenario():
        first = Stages(place[1])
        first.hang["denoise"] = asyncio.Event()
        dying = runner_on(place, first, max_running_jobs=1)
        await dying.start()
        running, waiting = await submit(dying, "runs"), await submit(dying, "waits")
        await inside(first, "denoise")
        await dying.stop()  # the process dies: nothing more of it runs or writes, its records stay as they are
        second = Stages(place[1])
        restarted = runner_on(place, second)
        await restarted.start()
        jobs = [await finished(restarted, job.id) for job in (running, waiting)]
        await restarted.stop()
        return jobs

    running, waiting = asyncio.run(scenario())
    assert running.status is JobStatus.COMPLETED and waiting.status is JobStatus.COMPLETED
    assert [a.error.code if a.error else None for a in running.attempts] == [ErrorCode.INTERRUPTED, None]


def test_a_graceful_shutdown_hands_running_jobs_back(place) -> None:
    async def scenario():
        first = Stages(place[1])
        first.hang["denoise"] = asyncio.Event()
        stopping = runner_on(place, first)
        await stopping.start()
        job = await submit(stopping)
        await inside(first, "denoise")
        await stopping.shutdown(grace_s=0.05)
        handed_back = stopping.store.get(job.id)

        successor = runner_on(place, Stages(place[1]))
        await successor.start()
        done = await finished(successor, job.id)
        await successor.stop()
        return handed_back, done

    handed_back, done = asyncio.run(scenario())
    assert handed_back.status is JobStatus.QUEUED
    assert handed_back.attempts[-1].error.code is ErrorCode.HANDED_BACK
    assert done.status is JobStatus.COMPLETED and len(done.attempts) == 2
