"""The DiT gang under cancel, a killed or hung worker, load and an ingress restart: every accepted job completes."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray

from serve_app.client import VideoAPIError, VideoClient
from skyreels import GenerationRequest, LocalPipeline
from tests_support import assert_same_video, decode_mp4

pytestmark = pytest.mark.slow

SMALL = dict(size="64x64", num_frames=9, num_inference_steps=4)
LONG = dict(size="64x64", num_frames=9, num_inference_steps=100)


@pytest.fixture(scope="module")
def client(serve_base_url: str) -> VideoClient:
    with VideoClient(serve_base_url, timeout_s=60) as client:
        yield client


def wait_for(predicate, timeout_s: float = 120, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError("condition not met in time")


def named_actors(contains: str) -> list[dict]:
    """Alive named actors whose name contains `contains` (no dashboard needed)."""
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if contains in a["name"]]


def is_dead(actor) -> bool:
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=5)
    except ray.exceptions.RayActorError:
        return True
    except ray.exceptions.GetTimeoutError:
        pass
    return False


def kill(actor: dict, **options) -> None:
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), **options)


def denoising(client: VideoClient, job_id: str, min_step: int = 1) -> dict | None:
    job = client.get(job_id)
    return job if job["phase"] == "denoising" and job["current_step"] >= min_step else None


def test_cancel_stops_within_one_step_and_the_gang_serves_the_next(client: VideoClient) -> None:
    job = client.submit("long running", **LONG)
    running = wait_for(lambda: denoising(client, job["id"], min_step=2))
    cancelled = client.cancel(job["id"])
    assert cancelled["status"] == "cancelled"
    # the step in flight when the cancel arrived may finish; no other step runs
    assert cancelled["current_step"] <= running["current_step"] + 2 < 100
    with pytest.raises(VideoAPIError) as again:
        client.cancel(job["id"])
    assert again.value.status_code == 409

    # the gang runs one command at a time: the next job completing means the cancelled run has stopped
    follow_up = client.submit("after the cancel", **SMALL)
    assert client.wait(follow_up["id"], timeout_s=120)["status"] == "completed"
    assert client.get(job["id"])["current_step"] == cancelled["current_step"]


def test_cancel_a_queued_job(client: VideoClient, serve_app) -> None:
    blockers = [client.submit(f"blocker {i}", **LONG) for i in range(4)]  # fill every running slot
    queued = client.submit("never runs", **SMALL)
    assert client.get(queued["id"])["queue_position"] >= 1
    assert client.cancel(queued["id"])["status"] == "cancelled"
    for blocker in blockers:
        client.cancel(blocker["id"])
    assert client.get(queued["id"])["current_step"] == 0


def test_a_killed_worker_reruns_the_job_on_the_rebuilt_gang(client: VideoClient) -> None:
    job = client.submit("survives a worker", seed=9, **LONG)
    wait_for(lambda: denoising(client, job["id"], min_step=2))
    victim = next(a for a in named_actors("DiTWorker:") if a["name"].endswith(":1"))
    kill(victim)

    # Serve replaces the unhealthy replica; the job runs again on the new gang, from the same seed
    done = client.wait(job["id"], timeout_s=300)
    assert done["status"] == "completed"
    assert [a["error"]["code"] if a["error"] else None for a in done["attempts"]] == ["worker_died", None]
    assert "DiT worker died" in done["attempts"][0]["error"]["message"]
    alive = {a["name"] for a in named_actors("DiTWorker:")}
    assert victim["name"] not in alive and len(alive) == 2
    local = LocalPipeline.from_pretrained("tiny", task="t2v").generate(GenerationRequest(
        prompt="survives a worker", seed=9, height=64, width=64, num_frames=9, num_inference_steps=100))
    assert_same_video(decode_mp4(client.content(job["id"])), decode_mp4(local.to_mp4()))


def test_a_hung_rank_is_detected_and_the_job_completes_on_a_new_gang(ray_local, tmp_path_factory) -> None:
    from ray import serve

    from conftest import deploy

    before_watchdog = {a["name"] for a in named_actors("DiTWorker:")}
    app = deploy(ray_local, tmp_path_factory.mktemp("watchdog"), "watchdog", "/watchdog", gpus_per_replica=2,
                 max_running_jobs=1, gang_hang_timeout_s=4)
    with VideoClient(app.url, timeout_s=60) as watched:
        job = watched.submit("outlives a hang", **LONG)
        wait_for(lambda: denoising(watched, job["id"], min_step=2))
        named = next(a for a in named_actors("DiTWorker:") if a["name"].endswith(":1") and
                     a["name"] not in before_watchdog)
        rank = ray.get_actor(named["name"], namespace=named["namespace"])
        os.kill(ray.get(rank.__ray_call__.remote(lambda worker: os.getpid())), signal.SIGSTOP)  # stuck, not dead

        done = watched.wait(job["id"], timeout_s=300)
    serve.delete(app.name)
    assert done["status"] == "completed"
    assert done["attempts"][0]["error"]["code"] == "worker_died"


def test_eight_concurrent_jobs_all_complete(client: VideoClient) -> None:
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda i: client.submit(f"concurrent {i}", seed=i, **SMALL), range(8)))
    finished = [client.wait(job["id"], timeout_s=300) for job in jobs]
    assert [job["status"] for job in finished] == ["completed"] * 8
    assert len({decode_mp4(client.content(job["id"])).tobytes() for job in finished}) == 8


def test_full_queue_answers_429_with_retry_after(ray_local, tmp_path_factory) -> None:
    from conftest import deploy

    tight = deploy(ray_local, tmp_path_factory.mktemp("tight"), "tight", "/tight",
                   max_queued_jobs=1, max_running_jobs=1)
    with VideoClient(tight.url) as client:
        running = client.submit("runs", **LONG)
        wait_for(lambda: client.get(running["id"])["status"] == "in_progress")
        queued = client.submit("waits", **SMALL)
        assert client.get(queued["id"])["queue_position"] == 1
        with pytest.raises(VideoAPIError) as full:
            client.submit("refused", **SMALL)
        assert full.value.status_code == 429 and full.value.code == "queue_full"
        import httpx

        response = httpx.post(f"{tight.url}/v1/videos", json={"prompt": "refused", **SMALL})
        assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
        client.cancel(running["id"])
        assert client.wait(queued["id"], timeout_s=120)["status"] == "completed"
    from ray import serve

    serve.delete("tight")


def test_ingress_restart_keeps_jobs_and_content(client: VideoClient, serve_base_url: str) -> None:
    from serve_app.launch import wait_ready

    done = client.submit("survives a restart", **SMALL)
    client.wait(done["id"], timeout_s=120)
    video = client.content(done["id"])
    interrupted = client.submit("interrupted", **LONG)
    wait_for(lambda: denoising(client, interrupted["id"]))

    named = next(a for a in named_actors("VideoIngress") if "skyreels#" in a["name"])
    ingress = ray.get_actor(named["name"], namespace=named["namespace"])
    ray.kill(ingress, no_restart=True)
    wait_for(lambda: is_dead(ingress))
    wait_ready(serve_base_url)

    assert client.get(done["id"])["status"] == "completed"
    assert client.content(done["id"]) == video
    rerun = client.wait(interrupted["id"], timeout_s=300)  # the new ingress runs the cut-off job again
    assert rerun["status"] == "completed"
    assert rerun["attempts"][0]["error"]["code"] == "interrupted" and rerun["attempts"][-1]["error"] is None
