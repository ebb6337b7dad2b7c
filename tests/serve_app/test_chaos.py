"""Nothing accepted is lost: the chaos load test against the running app, and every replica killed at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from serve_app.client import VideoClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(size="64x64", num_frames=9, num_inference_steps=12)


def test_chaos_run_with_a_worker_and_an_ingress_kill_completes_every_job(serve_app, tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/load_test.py", "--url", serve_app.url, "--jobs", "40", "--concurrency", "6",
         "--faults", "worker,ingress", "--timeout_s", "600", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["submitted"] == report["completed"] == 40
    assert report["failed"] == report["lost"] == 0
    assert [fault["fault"] for fault in report["faults"]] == ["DiT gang worker (rank 1)", "ingress replica"]
    assert all(fault["recovered_s"] is not None for fault in report["faults"])
    assert out.with_suffix(".md").read_text().startswith("# Chaos load test")


def test_every_replica_killed_at_once_then_every_job_completes(ray_local, tmp_path_factory) -> None:
    """The whole app dies with jobs running and queued; Serve brings every replica back on the same database and
    artifacts, and the new ingress runs the cut-off jobs again."""
    from ray import serve

    from conftest import deploy

    app = deploy(ray_local, tmp_path_factory.mktemp("phoenix"), "phoenix", "/phoenix", gpus_per_replica=2,
                 max_running_jobs=2)
    with VideoClient(app.url, timeout_s=60) as client:
        jobs = [client.submit(f"phoenix {i}", seed=i, **SMALL) for i in range(5)]
        deadline = time.monotonic() + 120
        while not any(client.get(job["id"])["phase"] == "denoising" for job in jobs):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if "phoenix#" in actor["name"]:
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        finished = [client.wait(job["id"], timeout_s=400) for job in jobs]
    serve.delete(app.name)
    assert [job["status"] for job in finished] == ["completed"] * 5
    assert any(job["attempts"][0]["error"] for job in finished)  # at least one run was cut off and ran again


def test_a_graceful_stop_hands_running_jobs_back_and_the_next_deploy_runs_them(ray_local, tmp_path_factory) -> None:
    from ray import serve

    from conftest import deploy
    from serve_app.store import SqliteJobStore

    root = tmp_path_factory.mktemp("graceful")
    settings = dict(gpus_per_replica=2, shutdown_grace_s=0)  # no grace: every running job goes back
    app = deploy(ray_local, root, "graceful", "/graceful", **settings)
    with VideoClient(app.url, timeout_s=60) as client:
        job = client.submit("handed back", seed=4, size="64x64", num_frames=9, num_inference_steps=100)
        deadline = time.monotonic() + 120
        while client.get(job["id"])["phase"] != "denoising":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    serve.delete(app.name)  # Serve's graceful stop: the ingress's __del__ runs
    with SqliteJobStore(app.database_path) as store:
        handed_back = store.get(job["id"])
    assert handed_back.status.value == "queued"
    assert handed_back.attempts[-1].error.code.value == "handed_back"

    again = deploy(ray_local, root, "graceful", "/graceful", **settings)
    with VideoClient(again.url, timeout_s=60) as client:
        done = client.wait(job["id"], timeout_s=300)
    serve.delete(again.name)
    assert done["status"] == "completed" and len(done["attempts"]) == 2
