"""Several ingress replicas on one PostgreSQL job store: two JobRunners (each with its own store connection and
stand-in stages, as two replicas have) in one process, against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image
from stand_in_stages import Stages, finished, inside, submit

from serve_app.client import VideoClient
from serve_app.metrics import JobMetrics
from serve_app.runner import JobPolicy, JobRunner, QueueFull
from serve_app.schemas import ErrorCode, Job, JobStatus
from serve_app.store import open_store
from skyreels.artifacts import ArtifactStore
from skyreels.models import SERVED_MODEL_IDS
from skyreels.request import Task

# short leases, so that a dead replica's jobs come back within a second or two
POLICY = JobPolicy(max_queued_jobs=200, max_running_jobs=4, max_attempts=3, job_deadline_s=60.0, stage_timeout_s=10.0,
                   job_lease_s=1.0, job_heartbeat_s=0.1, queue_poll_s=0.05)
TIMEOUT_S = 60
SERVE_TIMEOUT_S = 120
T2V_ID, I2V_ID = SERVED_MODEL_IDS[Task.T2V], SERVED_MODEL_IDS[Task.I2V]


@asynccontextmanager
async def replicas(url: str, *stages: Stages) -> AsyncIterator[list[JobRunner]]:
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


def test_two_replicas_run_a_hundred_jobs_each_exactly_once(postgres_url: str, tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    stages = [Stages(artifacts), Stages(artifacts)]

    async def scenario() -> list[Job]:
        async with replicas(postgres_url, *stages) as (a, b):
            jobs = [await submit((a, b)[i % 2], f"job {i}") for i in range(100)]
            await until(lambda: a.store.count(JobStatus.COMPLETED) == 100)
            return a.store.get_many([job.id for job in jobs])

    done = asyncio.run(scenario())
    assert len(done) == 100 and all(job.status is JobStatus.COMPLETED and len(job.attempts) == 1 for job in done)
    runs = stages[0].decoded + stages[1].decoded
    assert runs == Counter({job.id: 1 for job in done})  # each ran once, on one replica
    assert stages[0].decoded and stages[1].decoded  # both replicas took jobs


def test_a_follower_on_the_other_replica_gets_every_update(postgres_url: str, tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    runs_it, follows = Stages(artifacts, steps=3), Stages(artifacts)
    runs_it.step_permits = asyncio.Queue()

    async def scenario() -> tuple[list[int], Job]:
        async with replicas(postgres_url, runs_it) as (runner,):
            job = await submit(runner)
            await inside(runs_it, "denoise")
            async with replicas(postgres_url, follows) as (follower,):  # started after the claim
                steps: list[int] = []
                async with follower.events.follow(job.id) as updates:
                    for step in range(1, 4):  # a step runs once the follower has seen the one before
                        runs_it.step_permits.put_nowait(None)
                        while not steps or steps[-1] < step:
                            steps.append((await asyncio.wait_for(updates.get(), TIMEOUT_S)).current_step)
                return steps, await finished(follower, job.id)

    steps, end = asyncio.run(scenario())
    assert [step for step in steps if step] == [1, 2, 3]
    assert end.status is JobStatus.COMPLETED and not follows.decoded


def a_job_hung_on_one_replica(url: str, tmp_path: Path, then: Callable[[JobRunner, Job, Stages], Awaitable[Job]]
                              ) -> tuple[Stages, Stages, Job]:
    """A job running on one replica, hung in the denoiser; what `then(replica, job, stages)` gives (fresh stages
    for another replica). Both replicas' stages, and that."""
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    hung, other = Stages(artifacts), Stages(artifacts)
    hung.hang["denoise"] = asyncio.Event()

    async def scenario() -> Job:
        async with replicas(url, hung) as (first,):
            job = await submit(first)
            await inside(hung, "denoise")
            return await then(first, job, other)

    return hung, other, asyncio.run(scenario())


def test_a_dead_replicas_job_runs_again_on_the_other_after_its_lease(postgres_url: str, tmp_path: Path) -> None:
    async def die_and_survive(first: JobRunner, job: Job, stages: Stages) -> Job:
        await first.stop()  # killed: no hand-back, its lease is left to run out
        async with replicas(postgres_url, stages) as (second,):
            return await finished(second, job.id)

    dying, survivor, done = a_job_hung_on_one_replica(postgres_url, tmp_path, die_and_survive)
    assert done.status is JobStatus.COMPLETED
    assert [a.error.code if a.error else None for a in done.attempts] == [ErrorCode.INTERRUPTED, None]
    assert dying.calls["denoise"] == 1 and not dying.decoded and survivor.decoded == Counter({done.id: 1})


def test_cancel_through_the_replica_that_does_not_run_the_job(postgres_url: str, tmp_path: Path) -> None:
    async def cancel_elsewhere(_: JobRunner, job: Job, stages: Stages) -> Job:
        async with replicas(postgres_url, stages) as (elsewhere,):
            return await elsewhere.cancel(job.id)  # flagged in the store; the runner's heartbeat stops it

    runs_it, _, cancelled = a_job_hung_on_one_replica(postgres_url, tmp_path, cancel_elsewhere)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.error is None
    assert runs_it.denoise_closed == 1 and not runs_it.decoded  # stopped mid-denoise, as a cancel here would


def test_the_queue_limit_counts_every_replicas_jobs(postgres_url: str, tmp_path: Path) -> None:
    stages = Stages(ArtifactStore(str(tmp_path / "artifacts")))
    policy = replace(POLICY, max_queued_jobs=2)
    a, b = (JobRunner(open_store("", postgres_url), stages.artifacts, *stages.handles(), policy, JobMetrics())
            for _ in range(2))  # not started: nothing leaves the queue

    async def scenario() -> None:
        first = await submit(a)
        await submit(b)
        with pytest.raises(QueueFull):
            await submit(a)
        assert a.queue_place(first).position == b.queue_place(first).position == 1

    asyncio.run(scenario())
    a.store.close()
    b.store.close()


def test_several_ingress_replicas_need_postgresql(tmp_path: Path) -> None:
    from serve_app.app import AppConfig
    from serve_app.ingress import _check_replicas

    with pytest.raises(ValueError, match="needs database_url"):
        AppConfig(ingress_replicas=2)
    assert AppConfig(ingress_replicas=2, database_url="postgresql://db/jobs").ingress_replicas == 2
    with pytest.raises(ValueError, match="at most a third"):
        AppConfig(job_lease_s=2.0, job_heartbeat_s=1.0)
    # a Serve config's deployments: entry can ask for more replicas than the app's args: refused at startup
    with open_store(str(tmp_path / "jobs.sqlite3")) as sqlite:
        with pytest.raises(ValueError, match="set database_url"):
            _check_replicas(sqlite, SimpleNamespace(num_replicas=1, autoscaling_config=SimpleNamespace(max_replicas=3)))
        _check_replicas(sqlite, SimpleNamespace(num_replicas=1, autoscaling_config=None))


# ---------------------------------------------------------------------- through Serve


def follow_over_sse(url: str, job_id: str) -> tuple[str, list[dict]]:
    """The replica that served the stream, and every job update it sent until the job ended."""
    with httpx.stream("GET", f"{url}/v1/videos/{job_id}/events", timeout=SERVE_TIMEOUT_S) as response:
        response.raise_for_status()
        updates = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    return response.headers["x-ingress-replica"], updates


@pytest.mark.slow
def test_two_ingress_replicas_on_postgresql_accept_list_and_follow_every_job(
        ray_local: int, postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    import psycopg
    from ray import serve

    from conftest import deploy

    sim = "sim?time_factor=0.01"
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(png, format="PNG")
    app = deploy(ray_local, tmp_path_factory.mktemp("replicas"), "replicas", "/replicas", model=sim, i2v_model=sim,
                 database_url=postgres_url, ingress_replicas=2, max_running_jobs=3, job_lease_s=3.0,
                 job_heartbeat_s=0.5, queue_poll_s=0.1)
    try:
        with VideoClient(app.url, timeout_s=SERVE_TIMEOUT_S) as client, ThreadPoolExecutor(12) as pool:
            jobs, following = [], []
            for i in range(12):  # a third I2V: the queue groups them
                jobs.append(client.submit(f"replica job {i}", model=(T2V_ID, I2V_ID)[i % 3 == 2], seed=i,
                                          image=png.getvalue() if i % 3 == 2 else None, size="64x64", num_frames=9,
                                          num_inference_steps=4))
                following.append(pool.submit(follow_over_sse, app.url, jobs[-1]["id"]))  # streams open at once:
            streams = [future.result() for future in following]  # both replicas serve some
            listings = [httpx.get(f"{app.url}/v1/videos", params={"limit": 100}, timeout=SERVE_TIMEOUT_S)
                        for _ in range(8)]
        with psycopg.connect(postgres_url) as conn:  # the runner that claimed each job last
            ran_by = dict(conn.execute("SELECT id, lease_owner FROM jobs").fetchall())
    finally:
        serve.delete(app.name)

    finals = [updates[-1] for _, updates in streams]
    assert [final["status"] for final in finals] == ["completed"] * 12
    assert all(len(final["attempts"]) == 1 for final in finals)  # each job ran exactly once
    assert all([u["progress"] for u in updates] == sorted(u["progress"] for u in updates) for _, updates in streams)
    replicas = {replica for replica, _ in streams}
    assert len(replicas) == 2 and set(ran_by.values()) == replicas  # both served streams, both ran jobs
    # streams that followed a job the other replica ran saw it change, to its end
    crossed = [updates for (replica, updates), job in zip(streams, jobs, strict=True) if replica != ran_by[job["id"]]]
    assert crossed and any(len({u["progress"] for u in updates}) > 1 for updates in crossed)
    for listing in listings:
        assert {video["id"] for video in listing.json()["data"]} == {job["id"] for job in jobs}
    assert {listing.headers["x-ingress-replica"] for listing in listings} <= replicas
