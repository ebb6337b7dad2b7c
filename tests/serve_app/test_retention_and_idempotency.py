"""Retention (expiry sweeps finished jobs, never running ones) and Idempotency-Key, over a real JobStore."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.contract import Video
from serve_app.idempotency import fingerprint, once
from serve_app.requests import ApiError
from serve_app.retention import expires_at, sweep
from serve_app.schemas import Job, JobStatus
from serve_app.store import JobStore, SqliteJobStore
from skyreels.artifacts import VIDEO, ArtifactStore

FIELDS = dict(model="m", prompt="p", negative_prompt="", size="64x64", num_frames=9, num_inference_steps=1,
              guidance_scale=1.0, embedded_guidance_scale=1.0, seed=1, fps=24)
TTL_S = 3600.0


@pytest.fixture
def store(tmp_path) -> JobStore:
    with SqliteJobStore(tmp_path / "jobs.sqlite3") as store:
        yield store


def test_sweep_deletes_expired_finished_jobs_and_files_never_running_ones(store: JobStore, tmp_path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    now = time.time()
    long_ago = now - TTL_S - 1
    jobs = {
        "done_old": Job(id="done_old", status=JobStatus.COMPLETED, created_at=long_ago, completed_at=long_ago, **FIELDS),
        "failed_old": Job(id="failed_old", status=JobStatus.FAILED, created_at=long_ago, completed_at=long_ago,
                          **FIELDS),
        "done_recent": Job(id="done_recent", status=JobStatus.COMPLETED, created_at=now, completed_at=now - 5, **FIELDS),
        # running and queued for longer than the TTL (and a stale completed_at from an earlier run): kept
        "running": Job(id="running", status=JobStatus.IN_PROGRESS, created_at=long_ago, completed_at=long_ago,
                       **FIELDS),
        "queued": Job(id="queued", status=JobStatus.QUEUED, created_at=long_ago, **FIELDS),
    }
    for job in jobs.values():
        store.add(job)
        artifacts.put(job.id, VIDEO, b"mp4")
    assert sorted(asyncio.run(sweep(store, artifacts, TTL_S, now=now))) == ["done_old", "failed_old"]
    assert {job.id for job in store.in_status()} == {"done_recent", "running", "queued"}
    assert not artifacts.exists("done_old", VIDEO) and artifacts.exists("running", VIDEO)
    assert expires_at(jobs["done_recent"], TTL_S) == now - 5 + TTL_S
    assert expires_at(jobs["running"], TTL_S) is None and expires_at(jobs["done_recent"], None) is None


def _video(job_id: str) -> Video:
    return Video.model_validate({**Job(id=job_id, **FIELDS).model_dump(), "created_at": 1})


def test_a_retried_post_with_the_same_key_gets_the_first_job(store: JobStore) -> None:
    made: list[str] = []

    async def submit() -> Video:
        made.append(f"video_{len(made)}")
        store.add(Job(id=made[-1], owner="key_a", **FIELDS))
        return _video(made[-1])

    def call(owner: str | None, key: str | None, body: dict) -> Video:
        return asyncio.run(once(store, owner, key, fingerprint("/v1/videos", body), submit, _video))

    first = call("key_a", "k1", {"prompt": "cat"})
    assert call("key_a", "k1", {"prompt": "cat"}).id == first.id and made == [first.id]
    assert call("key_b", "k1", {"prompt": "cat"}).id != first.id  # keys are per owner
    assert call("key_a", None, {"prompt": "cat"}).id != first.id
    with pytest.raises(ApiError) as reused:
        call("key_a", "k1", {"prompt": "dog"})
    assert (reused.value.status_code, reused.value.code) == (422, "idempotency_key_reused")
    store.delete(first.id)  # the key goes with its job
    assert call("key_a", "k1", {"prompt": "dog"}).id == made[-1] != first.id


def test_a_refused_submit_frees_its_key_and_a_racing_one_gets_409(store: JobStore) -> None:
    async def refused() -> Video:
        raise ApiError("queue full", 429, "queue_full")

    request_fp = fingerprint("/v1/videos", {"image": b"\x89PNG"})
    with pytest.raises(ApiError):
        asyncio.run(once(store, None, "k", request_fp, refused, _video))
    assert store.claim_key(None, "k", request_fp) is None  # free again, now claimed by this "racing" request
    with pytest.raises(ApiError) as racing:
        asyncio.run(once(store, None, "k", request_fp, refused, _video))
    assert (racing.value.status_code, racing.value.code) == (409, "idempotency_key_in_use")
