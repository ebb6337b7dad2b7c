"""Several ingress replicas on one PostgreSQL job store: two JobRunners (each with its own store connection and
stand-in stages, as two replicas have) in one process, against a real PostgreSQL server; then the app through Serve
with two ingress replicas, and what an operator sees of it (metrics in a real Prometheus, traces)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image
from stand_in_stages import Stages, finished, inside, submit

from deployments.metrics import RAY_SERIES
from serve_app.client import VideoClient
from serve_app.metrics import JobMetrics
from serve_app.runner import JobPolicy, JobRunner, QueueFull
from serve_app.schemas import ErrorCode, Job, JobStatus
from serve_app.store import StoreUnavailable, open_store
from skyreels.artifacts import VIDEO, ArtifactStore
from skyreels.models import SERVED_MODEL_IDS
from skyreels.parallel.group import free_port
from skyreels.request import Task

# short leases, so that a dead replica's jobs come back within a second or two
POLICY = JobPolicy(max_queued_jobs=200, max_running_jobs=4, max_attempts=3, job_deadline_s=60.0, stage_timeout_s=10.0,
                   job_lease_s=1.0, job_heartbeat_s=0.1, queue_poll_s=0.05)
TIMEOUT_S = 60
SERVE_TIMEOUT_S = 120
SERVED_LEASE_S = 3.0  # the job lease of the app through Serve
T2V_ID, I2V_ID = SERVED_MODEL_IDS[Task.T2V], SERVED_MODEL_IDS[Task.I2V]
OBSERVABILITY = Path(__file__).resolve().parents[2] / "cluster" / "observability"


@asynccontextmanager
async def replicas(url: str, *stages: Stages, policy: JobPolicy = POLICY) -> AsyncIterator[list[JobRunner]]:
    """A started runner on the store at `url` for each of `stages`; all share the artifacts, as replicas do."""
    runners = [JobRunner(open_store("", url), s.artifacts, *s.handles(), policy, JobMetrics()) for s in stages]
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


def test_runs_ride_out_a_postgresql_restart_and_are_recorded_once(postgres_server, postgres_url: str,
                                                                  tmp_path: Path) -> None:
    """The database restarts, for longer than a lease, while each replica runs two jobs: one replica's jobs end
    during the outage and are recorded once it is back; the other's go on through it (their progress unrecorded)
    and end after. No run is taken over for the leases that went stale while neither replica could renew them."""
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    ends_during, ends_after = Stages(artifacts, steps=4), Stages(artifacts, steps=4)
    for stages in (ends_during, ends_after):
        stages.step_permits = asyncio.Queue()

    def reachable(condition: Callable[[], bool]) -> Callable[[], bool]:
        def holds() -> bool:
            try:
                return condition()
            except StoreUnavailable:  # a pooled connection from before the restart, found dead
                return False
        return holds

    async def scenario() -> tuple[list[Job], float]:
        async with replicas(postgres_url, ends_during, ends_after, policy=replace(POLICY, max_running_jobs=2)
                            ) as (a, b):
            jobs = [await submit((a, b)[i % 2], f"job {i}", steps=4) for i in range(4)]
            await until(lambda: len(a._running) == len(b._running) == 2)
            with postgres_server.stopped():
                stopped_at = time.monotonic()
                for _ in range(8):  # every step of a's two jobs, one step each of b's
                    ends_during.step_permits.put_nowait(None)
                ends_after.step_permits.put_nowait(None)
                ends_after.step_permits.put_nowait(None)
                await until(lambda: sum(ends_during.decoded.values()) == 2 and ends_after.steps_run == 2
                            and time.monotonic() > stopped_at + 2 * POLICY.job_lease_s)
                with pytest.raises(StoreUnavailable):
                    a.store.get(jobs[0].id)
                assert len(a._running) == len(b._running) == 2  # runs wait to be recorded, or go on
            back = time.time()
            await until(reachable(lambda: a.store.count(JobStatus.COMPLETED) == 2))
            for _ in range(6):
                ends_after.step_permits.put_nowait(None)
            await until(reachable(lambda: a.store.count(JobStatus.COMPLETED) == 4))
            return a.store.get_many([job.id for job in jobs]), back

    done, back = asyncio.run(scenario())
    assert [job.status for job in done] == [JobStatus.COMPLETED] * 4
    assert all(len(job.attempts) == 1 and job.attempts[0].error is None for job in done)  # no take-over, no re-run
    assert ends_during.decoded + ends_after.decoded == Counter({job.id: 1 for job in done})
    assert len(ends_during.decoded) == len(ends_after.decoded) == 2
    # the jobs that ended during the outage are recorded as they ended, not when the store came back
    assert all(job.completed_at < back for job in done if job.id in ends_during.decoded)


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


@dataclass(frozen=True)
class ServedReplicas:
    url: str
    database_url: str
    trace_dir: Path  # the app's spans (tracing: the file exporter), one file per process
    artifact_dir: Path  # the jobs' videos


@pytest.fixture(scope="module")
def served_replicas(ray_local: int, postgres_server, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[ServedReplicas]:
    """The app on the sim model with two ingress replicas on PostgreSQL, for this module's tests through Serve (one
    deploy: on 2 cores it takes a minute or two)."""
    from ray import serve

    from conftest import deploy

    sim = "sim?time_factor=0.01"
    database_url, trace_dir = postgres_server.new_database(), tmp_path_factory.mktemp("spans")
    app = deploy(ray_local, tmp_path_factory.mktemp("replicas"), "replicas", "/replicas", model=sim, i2v_model=sim,
                 database_url=database_url, ingress_replicas=2, max_running_jobs=3, job_lease_s=SERVED_LEASE_S,
                 job_heartbeat_s=0.5, queue_poll_s=0.1, tracing={"exporter": "file", "file_dir": str(trace_dir)})
    try:
        yield ServedReplicas(app.url, database_url, trace_dir, app.artifact_dir)
    finally:
        serve.delete(app.name)


@pytest.mark.slow
def test_two_ingress_replicas_on_postgresql_accept_list_and_follow_every_job(served_replicas: ServedReplicas) -> None:
    import psycopg

    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(png, format="PNG")
    url = served_replicas.url
    with VideoClient(url, timeout_s=SERVE_TIMEOUT_S) as client, ThreadPoolExecutor(12) as pool:
        jobs, following = [], []
        for i in range(12):  # a third I2V: the queue groups them
            jobs.append(client.submit(f"replica job {i}", model=(T2V_ID, I2V_ID)[i % 3 == 2], seed=i,
                                      image=png.getvalue() if i % 3 == 2 else None, size="64x64", num_frames=9,
                                      num_inference_steps=4))
            following.append(pool.submit(follow_over_sse, url, jobs[-1]["id"]))  # streams open at once:
        streams = [future.result() for future in following]  # both replicas serve some
        listings = [httpx.get(f"{url}/v1/videos", params={"limit": 100}, timeout=SERVE_TIMEOUT_S) for _ in range(8)]
    with psycopg.connect(served_replicas.database_url) as conn:  # the runner that claimed each job last
        ran_by = dict(conn.execute("SELECT id, lease_owner FROM jobs").fetchall())

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


# ---------------------------------------------------------------------- what an operator watches
# A Prometheus server (Debian's `prometheus` package, started here on loopback) scrapes the session Ray's metrics
# export while the app above runs a known set of jobs besides the ones of the test above: completed ones, one
# failed, one cancelled, one re-run after its gang lost a worker. PromQL over its HTTP API gives exactly the job
# store's counts, summed over whichever replica ran each job; each job leaves one trace with spans from the
# processes of its stages and gang rank (OpenTelemetry, the file exporter).

SMALL = dict(size="64x64", num_frames=9, num_inference_steps=4)
# the workload of record: the sim holds each step for ~0.1 s (1/100 of an A800's), a few seconds in all
LONG = dict(size="960x544", num_frames=97, num_inference_steps=30)


def poll_until(condition: Callable[[], Any], timeout_s: float = SERVE_TIMEOUT_S, every_s: float = 0.2) -> Any:
    """Polls `condition` until it returns something true; returns that."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every_s)
    return value


@dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def values(self, expr: str, by: str) -> dict[str, float]:
        return {r["metric"].get(by, ""): float(r["value"][1]) for r in self.query(expr)}

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def prometheus(ray_metrics_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Prometheus is not installed (apt-get install prometheus)")
    root = tmp_path_factory.mktemp("prometheus")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(OBSERVABILITY / "alerts.yaml")],
              "scrape_configs": [{"job_name": "ray",
                                  "static_configs": [{"targets": [f"127.0.0.1:{ray_metrics_port}"]}]}]}
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (root / "prometheus.log").open("w") as log:
        server = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return server.poll() is not None  # died: the assert below says so

        poll_until(ready, 60)
        assert server.poll() is None, (root / "prometheus.log").read_text()[-2000:]
        yield Prometheus(url)
    finally:
        server.terminate()
        server.wait(30)


@dataclass(frozen=True)
class Scenario:
    roles: dict[str, dict]  # the final record of each job of the known set, by its role
    jobs: list[dict]  # every job the app ran (the test above's too)
    ran_by: dict[str, str]  # job id -> the ingress replica (replica tag) that claimed it last


def _gang_worker() -> Any:
    """The (one) rank of the app's DiT gang: the worker actors are named after their Denoiser replica."""
    import ray

    names = ray.util.list_named_actors(all_namespaces=True)
    (replica,) = [a["name"].rsplit("#", 1)[1] for a in names if "replicas#Denoiser#" in a["name"]]
    (worker,) = [a for a in names if a["name"] == f"DiTWorker:{replica}:0"]
    return ray.get_actor(worker["name"], namespace=worker["namespace"])


@pytest.fixture(scope="module")
def scenario(served_replicas: ServedReplicas) -> Scenario:
    import psycopg
    import ray

    with VideoClient(served_replicas.url, timeout_s=SERVE_TIMEOUT_S) as client:
        ids = {f"done {i}": client.submit(f"observed {i}", seed=i, **SMALL)["id"] for i in range(4)}
        ids["failed"] = client.submit("observed #fail-decode", seed=10, **SMALL)["id"]
        ids["cancelled"] = client.submit("observed, cancelled", seed=11, **LONG)["id"]
        poll_until(lambda: client.get(ids["cancelled"])["current_step"] >= 1)  # on the gang
        client.cancel(ids["cancelled"])
        ids["re-run"] = client.submit("observed, re-run", seed=12, **LONG)["id"]
        poll_until(lambda: client.get(ids["re-run"])["current_step"] >= 1)
        ray.kill(_gang_worker())  # the gang is torn down and rebuilt; the job runs again
        roles = {role: client.wait(job_id, timeout_s=SERVE_TIMEOUT_S, raise_on_failure=False)
                 for role, job_id in ids.items()}
        jobs = client.list(limit=100)["data"]
    with psycopg.connect(served_replicas.database_url) as conn:
        ran_by = {job_id: owner.split("#", 1)[1] for job_id, owner in
                  conn.execute("SELECT id, lease_owner FROM jobs").fetchall()}
    return Scenario(roles, jobs, ran_by)


@pytest.mark.slow
def test_prometheus_counts_each_job_once_whichever_replica_ran_it(scenario: Scenario, prometheus: Prometheus) -> None:
    roles, jobs = scenario.roles, scenario.jobs
    assert {role: job["status"] for role, job in roles.items()} == {
        **{f"done {i}": "completed" for i in range(4)}, "failed": "failed", "cancelled": "cancelled",
        "re-run": "completed"}
    assert roles["failed"]["error"]["code"] == "stage_failed"
    assert [a["error"]["code"] if a["error"] else None for a in roles["re-run"]["attempts"]] == ["worker_died", None]
    assert len(set(scenario.ran_by.values())) == 2  # both ingress replicas ran jobs

    app = 'application="replicas"'
    finished = f"ray_skyreels_jobs_finished_total{{{app}}}"
    statuses = Counter(job["status"] for job in jobs)
    completed = statuses["completed"]
    # the agent and Prometheus each take a second or so: wait for the counts, then hold them to every figure
    poll_until(lambda: prometheus.values(f"sum by (status) ({finished})", "status") == statuses, 60)
    assert prometheus.value(f"sum(ray_skyreels_jobs_submitted_total{{{app}}})") == len(jobs)
    assert prometheus.values(f"sum by (model) (ray_skyreels_jobs_submitted_total{{{app}}})", "model") == Counter(
        job["model"] for job in jobs)
    assert prometheus.values(f"sum by (cause) (ray_skyreels_job_reruns_total{{{app}}})", "cause") == {
        "worker_died": 1}
    assert prometheus.values(f'sum by (cause) (ray_skyreels_jobs_finished_total{{{app}, status="failed"}})',
                             "cause") == Counter(job["error"]["code"] for job in jobs if job["status"] == "failed")
    # each replica counted the jobs it ran: the same split as the store's record of who ran which
    assert prometheus.values(f"sum by (replica) ({finished})", "replica") == Counter(scenario.ran_by.values())
    # histogram counts: one per stage call that ran
    stages = prometheus.values(f"sum by (stage) (ray_skyreels_stage_seconds_count{{{app}}})", "stage")
    runs = sum(len(job["attempts"]) for job in jobs)  # every run got as far as its text
    assert stages["text_encode"] == runs
    assert stages.get("image_encode", 0) == sum(len(job["attempts"]) for job in jobs if job["model"] == I2V_ID)
    assert stages["decode"] == stages["mux"] == completed  # the failed decode recorded nothing
    assert stages["checkpoint"] == completed  # a run reports its checkpoint once it ends well
    assert stages["denoise_step"] >= sum(job["num_inference_steps"] for job in jobs if job["status"] != "cancelled")
    assert prometheus.value(f"sum(ray_skyreels_job_seconds_count{{{app}}})") == completed
    assert poll_until(lambda: prometheus.value(f"sum(ray_skyreels_gang_rebuilds_total{{{app}}})"), 30) == 1
    # the queue's gauges come from the store: both replicas report the same (empty) queue
    assert prometheus.values(f"ray_skyreels_queue_jobs{{{app}}}", "replica") == dict.fromkeys(
        set(scenario.ran_by.values()), 0.0)
    assert prometheus.value(f"max(ray_skyreels_queue_oldest_wait_seconds{{{app}}})") == 0


@pytest.mark.slow
def test_dashboard_queries_and_alert_rules_run_on_the_real_series(scenario: Scenario, prometheus: Prometheus) -> None:
    for name in RAY_SERIES:  # Serve's series that the dashboard and the rules read exist under these names
        assert prometheus.query(f'count({name}{{application="replicas"}})'), name
    dashboard = json.loads((OBSERVABILITY / "skyreels-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            prometheus.query(target["expr"].replace("$application", "replicas").replace("$__rate_interval", "1m"))
    rules = poll_until(lambda: [rule for group in httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()[
        "data"]["groups"] for rule in group["rules"] if rule.get("lastEvaluation", "0001").startswith("20")], 30)
    assert {rule["name"]: rule["health"] for rule in rules} == {
        "SkyReelsQueueWaitOverTarget": "ok", "SkyReelsJobFailureRate": "ok", "SkyReelsGangRebuilds": "ok",
        "SkyReelsStageWithoutHealthyReplica": "ok"}


@pytest.mark.slow
def test_a_job_is_one_trace_across_the_processes_of_its_stages(scenario: Scenario,
                                                               served_replicas: ServedReplicas) -> None:
    job_id = scenario.roles["done 0"]["id"]
    spans = [json.loads(line) for path in served_replicas.trace_dir.glob("spans-*.jsonl")
             for line in path.read_text().splitlines()]
    spans = [s for s in spans if s["attributes"].get("skyreels.job_id") == job_id]
    (trace_id,) = {s["context"]["trace_id"] for s in spans}  # one trace
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {"job", "text_encode", "TextEncoder.encode", "denoise", "Denoiser.denoise",
                            "DiTWorker.Denoise", "decode", "Vae.decode_to_storage"}
    assert by_name["DiTWorker.Denoise"]["attributes"]["rank"] == 0

    def process(name: str) -> tuple[str, int]:
        resource = by_name[name]["resource"]["attributes"]
        return resource["skyreels.process"], resource["process.pid"]

    def parent(span: dict) -> dict:
        return next(s for s in spans if s["context"]["span_id"] == span["parent_id"])

    processes = {name: process(name) for name in ("job", "TextEncoder.encode", "Denoiser.denoise",
                                                  "DiTWorker.Denoise", "Vae.decode_to_storage")}
    assert [kind for kind, _ in processes.values()] == ["VideoIngress", "TextEncoder", "Denoiser", "DiTWorker rank 0",
                                                        "Vae"]
    assert len({pid for _, pid in processes.values()}) == 5  # five processes
    # each served span hangs under its caller's span, under the job's; the rank's under its gang's
    for name, caller in (("TextEncoder.encode", "text_encode"), ("Denoiser.denoise", "denoise"),
                         ("Vae.decode_to_storage", "decode")):
        assert parent(by_name[name])["name"] == caller and parent(parent(by_name[name]))["name"] == "job"
    assert parent(by_name["DiTWorker.Denoise"])["name"] == "Denoiser.denoise"
    assert by_name["job"]["parent_id"] is None and trace_id


# ---------------------------------------------------------------------- the database restarts under load
# Each job holds the gang ~3 s (the sim at 1/100 of an A800), and the gang runs one at a time: four jobs span the
# outage, which lasts until one of them has ended in it and for more than a lease.
THROUGH_THE_OUTAGE = dict(size="960x544", num_frames=97, num_inference_steps=12)


@pytest.mark.slow
def test_two_ingress_replicas_ride_out_a_postgresql_restart(served_replicas: ServedReplicas,
                                                             postgres_server) -> None:
    import psycopg

    url = served_replicas.url
    videos = ArtifactStore(str(served_replicas.artifact_dir))

    def made(ids: list[str]) -> set[str]:
        """The jobs whose video is stored."""
        return {job_id for job_id in ids if videos.exists(job_id, VIDEO)}

    def owners(ids: list[str]) -> set[str]:
        with psycopg.connect(served_replicas.database_url) as conn:
            return {owner for (owner,) in conn.execute(
                "SELECT lease_owner FROM jobs WHERE status = 'in_progress' AND id = ANY(%s)", (ids,))}

    def answers_from_both(request: Callable[[], httpx.Response], status: int) -> list[httpx.Response]:
        """`request` made until both replicas have answered it (all with `status`); the answers."""
        answers: list[httpx.Response] = []
        while len({answer.headers["x-ingress-replica"] for answer in answers}) < 2:
            assert len(answers) < 40, [(a.status_code, a.headers.get("x-ingress-replica")) for a in answers]
            answers.append(request())
            assert answers[-1].status_code == status, answers[-1].text
        return answers

    with VideoClient(url, timeout_s=SERVE_TIMEOUT_S) as client:
        ids = [client.submit(f"through the restart {i}", seed=30 + i, **THROUGH_THE_OUTAGE)["id"] for i in range(4)]
        poll_until(lambda: len(owners(ids)) == 2, every_s=0.1)  # each replica runs some (at most 3 each)
        poll_until(lambda: any(client.get(job_id)["current_step"] >= 1 for job_id in ids), every_s=0.1)
        submitted = client.list(limit=100)["data"]
        made_before = made(ids)
        with postgres_server.stopped():
            stopped_at = time.monotonic()
            with pytest.raises(psycopg.OperationalError):  # down indeed (pg_ctl's failures are not checked)
                psycopg.connect(served_replicas.database_url, connect_timeout=5).close()
            refused = answers_from_both(lambda: httpx.post(f"{url}/v1/videos", json={
                "prompt": "during the outage", **SMALL}, timeout=SERVE_TIMEOUT_S), 503)
            assert all(int(answer.headers["retry-after"]) > 0 for answer in refused)
            assert {answer.json()["error"]["code"] for answer in refused} == {"store_unavailable"}
            ready = httpx.get(f"{url}/readyz", timeout=SERVE_TIMEOUT_S)
            assert ready.status_code == 503 and ready.json()["store"] is False
            # a run ends while the store is away, and the leases of the others go stale
            poll_until(lambda: made(ids) - made_before and time.monotonic() > stopped_at + 1.5 * SERVED_LEASE_S,
                       timeout_s=30, every_s=0.1)
            ended_in_the_outage = made(ids) - made_before
        back = time.time()
        ends = {job_id: client.wait(job_id, timeout_s=SERVE_TIMEOUT_S, raise_on_failure=False) for job_id in ids}
        reads = answers_from_both(lambda: httpx.get(f"{url}/v1/videos/{ids[0]}", timeout=SERVE_TIMEOUT_S), 200)
        after = [client.submit(f"after the restart {i}", seed=40 + i, **SMALL)["id"] for i in range(2)]
        after_ends = [client.wait(job_id, timeout_s=SERVE_TIMEOUT_S, raise_on_failure=False) for job_id in after]
        listed = client.list(limit=100)["data"]
        videos_kept = [client.content(job_id) for job_id in ids]

    assert [end["status"] for end in ends.values()] == ["completed"] * 4
    # one run each: the runs went on through the outage (their progress unrecorded), their ends waited for the
    # store, and no replica took over the other's runs for the leases that went stale meanwhile
    assert all([a["error"] for a in end["attempts"]] == [None] for end in ends.values())
    assert all(ends[job_id]["completed_at"] < back for job_id in ended_in_the_outage)  # recorded as it ended
    assert all(video for video in videos_kept)
    # nothing lost, nothing added by the refused submits; both replicas answer and take work again
    assert {job["id"] for job in listed} == {job["id"] for job in submitted} | set(after)
    assert {answer.headers["x-ingress-replica"] for answer in reads} == {
        answer.headers["x-ingress-replica"] for answer in refused}
    assert [end["status"] for end in after_ends] == ["completed"] * 2
