"""Several ingress replicas on one PostgreSQL job store: two JobRunners (each with its own store connection and
stand-in stages, as two replicas have) in one process, against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from stand_in_stages import Stages, finished, inside, submit

from serve_app.metrics import JobMetrics
from serve_app.runner import JobPolicy, JobRunner
from serve_app.schemas import ErrorCode, Job, JobStatus
from serve_app.store import open_store
from skyreels.artifacts import ArtifactStore

# short leases, so that a dead replica's jobs come back within a second or two
POLICY = JobPolicy(max_queued_jobs=200, max_running_jobs=4, max_attempts=3, job_deadline_s=60.0, stage_timeout_s=10.0,
                   job_lease_s=1.0, job_heartbeat_s=0.1, queue_poll_s=0.05)
TIMEOUT_S = 60


@asynccontextmanager
async def replicas(url: str, tmp_path: Path, *stages: Stages) -> AsyncIterator[list[JobRunner]]:
    """A started runner on the store at `url` for each of `stages`; all share the artifacts, as replicas do."""
    runners = [JobRunner(open_store("", url), s.artifacts, *s.handles(), POLICY, JobMetrics()) for s in stages]
    for runner in runners:
        await runner.start()
    try:
        yield runners
    finally:
        for runner in runners:
            await runner.stop()
            runner.store.close()


async def until(condition: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    """Waits (polling) until `condition()` holds."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


def run(scenario: Callable[[], Awaitable]) -> object:
    return asyncio.run(scenario())


def test_two_replicas_run_a_hundred_jobs_each_exactly_once(postgres_url: str, tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    stages = [Stages(artifacts), Stages(artifacts)]

    async def scenario() -> list[Job]:
        async with replicas(postgres_url, tmp_path, *stages) as (a, b):
            jobs = [await submit((a, b)[i % 2], f"job {i}") for i in range(100)]
            await until(lambda: a.store.count(JobStatus.COMPLETED) == 100)
            return a.store.get_many([job.id for job in jobs])

    done = run(scenario)
    assert len(done) == 100 and all(job.status is JobStatus.COMPLETED and len(job.attempts) == 1 for job in done)
    runs = stages[0].decoded + stages[1].decoded
    assert runs == Counter({job.id: 1 for job in done})  # each ran once, on one replica
    assert stages[0].decoded and stages[1].decoded  # both replicas took jobs


def test_a_follower_on_the_other_replica_gets_every_update(postgres_url: str, tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    runs_it, follows = Stages(artifacts, steps=3), Stages(artifacts)
    runs_it.step_permits = asyncio.Queue()

    async def scenario() -> tuple[list[int], Job]:
        async with replicas(postgres_url, tmp_path, runs_it) as (runner,):
            job = await submit(runner)
            await inside(runs_it, "denoise")
            async with replicas(postgres_url, tmp_path, follows) as (follower,):  # started after the claim
                steps: list[int] = []
                async with follower.events.follow(job.id) as updates:
                    for step in range(1, 4):  # a step runs once the follower has seen the one before
                        runs_it.step_permits.put_nowait(None)
                        while not steps or steps[-1] < step:
                            steps.append((await asyncio.wait_for(updates.get(), TIMEOUT_S)).current_step)
                return steps, await finished(follower, job.id)

    steps, end = run(scenario)
    assert [step for step in steps if step] == [1, 2, 3]
    assert end.status is JobStatus.COMPLETED and not follows.decoded


def test_a_dead_replicas_job_runs_again_on_the_other_after_its_lease(postgres_url: str, tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    dying, survivor = Stages(artifacts), Stages(artifacts)
    dying.hang["denoise"] = asyncio.Event()

    async def scenario() -> Job:
        async with replicas(postgres_url, tmp_path, dying) as (first,):
            job = await submit(first)
            await inside(dying, "denoise")
            await first.stop()  # killed: no hand-back, its lease is left to run out
            async with replicas(postgres_url, tmp_path, survivor) as (second,):
                return await finished(second, job.id)

    done = run(scenario)
    assert done.status is JobStatus.COMPLETED
    assert [a.error.code if a.error else None for a in done.attempts] == [ErrorCode.INTERRUPTED, None]
    assert dying.calls["denoise"] == 1 and not dying.decoded and survivor.decoded == Counter({done.id: 1})


def test_cancel_through_the_replica_that_does_not_run_the_job(postgres_url: str, tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    runs_it, other = Stages(artifacts), Stages(artifacts)
    runs_it.hang["denoise"] = asyncio.Event()

    async def scenario() -> Job:
        async with replicas(postgres_url, tmp_path, runs_it) as (runner,):
            job = await submit(runner)
            await inside(runs_it, "denoise")
            async with replicas(postgres_url, tmp_path, other) as (elsewhere,):
                return await elsewhere.cancel(job.id)  # flagged in the store; the runner's heartbeat stops it

    cancelled = run(scenario)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.error is None
    assert runs_it.denoise_closed == 1 and not runs_it.decoded  # stopped mid-denoise, as a cancel here would
